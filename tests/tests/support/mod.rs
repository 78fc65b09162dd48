//! Shared by the tests that run `kestrel` on scripted Qwen3 checkpoints (see
//! `kestrel_tests::scripted`): the scripts, and running a command on them.

#![allow(dead_code, unused_imports)] // each test crate uses its own part

pub use kestrel_prompts::thinking::EARLY_STOP_TEXT;
pub use kestrel_tests::scripted::Script;
pub use kestrel_tests::{kestrel, time_server};
pub use serde_json::{Value, json};

/// The answer every script ends with.
pub const ANSWER: &[&str] = &["The", " answer", " is", " 4", "2", "<|im_end|>"];
pub const ANSWER_TEXT: &str = "The answer is 42";

/// Thinking that never ends: `<think>Hmm, let me think Hmm, let me think ...`.
pub const ENDLESS_THINKING: &[&str] =
    &["\n", "<think>", "Hmm", ",", " let", " me", " think", "Hmm"];

/// A script whose thinking never ends, and which answers after Qwen's early-stop text or after a
/// prompt with thinking off (both end with the same token).
pub fn endless_thinker() -> Script {
    let script = Script::new().path(ENDLESS_THINKING);
    let after_stop = *script.ids(EARLY_STOP_TEXT).last().expect("early stop");
    let no_think = *script.ids("</think>\n\n").last().expect("no-think end");
    answers_after(script, &[after_stop, no_think])
}

/// `script`, answering [`ANSWER`] after each of `starts`.
pub fn answers_after(mut script: Script, starts: &[u32]) -> Script {
    let answer: Vec<u32> = ANSWER.iter().flat_map(|p| script.ids(p)).collect();
    for &start in starts {
        script = script.path_ids(&[&[start], &answer[..]].concat());
    }
    script
}

pub struct Run {
    pub events: Vec<Value>,
    pub stderr: String,
}

impl Run {
    pub fn of(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["event"] == kind).collect()
    }

    pub fn answer(&self) -> String {
        let finals = self.of("final");
        assert_eq!(finals.len(), 1, "{:?}", self.events);
        finals[0]["text"].as_str().expect("text").to_string()
    }

    pub fn thinking(&self) -> String {
        self.of("thinking")
            .iter()
            .filter_map(|e| e["text"].as_str())
            .collect()
    }

    pub fn notes(&self) -> Vec<String> {
        self.of("note")
            .iter()
            .filter_map(|e| e["message"].as_str().map(str::to_owned))
            .collect()
    }
}

/// `kestrel run --json` on `script` with `servers`; the run must succeed.
pub fn run(script: &Script, servers: Value, args: &[&str], task: &str) -> Run {
    let dir = tempfile::tempdir().expect("tmp");
    run_in(dir.path(), script, servers, args, task)
}

/// [`run`] with its files (model, config) in `dir`.
pub fn run_in(
    dir: &std::path::Path,
    script: &Script,
    servers: Value,
    args: &[&str],
    task: &str,
) -> Run {
    let model = dir.join("model");
    if !model.is_dir() {
        script.write(&model);
    }
    let config = dir.join("mcp.json");
    std::fs::write(&config, json!({ "mcpServers": servers }).to_string()).expect("config");
    let out = kestrel()
        .args(["run", "--json", "--model"])
        .arg(&model)
        .arg("--config")
        .arg(&config)
        .args(args)
        .arg(task)
        .env("XDG_CACHE_HOME", dir)
        .output()
        .expect("kestrel run");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let events = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    Run { events, stderr }
}

pub fn time() -> Value {
    json!({"time": {"command": time_server(), "args": ["--local-timezone", "UTC"]}})
}

pub fn endless_thinker_that_stops() -> Script {
    let script = Script::new().path(&["\n", "<think>", "Hmm", "</think>", "<|im_end|>"]);
    let no_think = *script.ids("</think>\n\n").last().expect("no-think end");
    answers_after(script, &[no_think])
}

/// A bare `{"name": ..., "arguments": {...}}` answer, which small models write instead of a
/// tagged call.
pub fn bare_json_caller() -> Script {
    caller_writing("{\"name\":\"get_current_time\",\"arguments\":{\"timezone\": \"UTC\"}}")
}

/// A bare call written arguments first, without the required `timezone`. The parser takes it as
/// a call; the constraint, which follows a call from its `name`, does not hold it to the schema,
/// so the agent's own check of the arguments answers it.
pub fn unchecked_caller() -> Script {
    caller_writing("{\"arguments\":{},\"name\":\"get_current_time\"}")
}

/// A script whose answer is `answer` (after an empty thinking block), then the end of the turn.
pub fn caller_writing(answer: &str) -> Script {
    let script = Script::new();
    let start = *script.ids("</think>\n\n").last().expect("end");
    let mut ids = vec![start];
    ids.extend(script.ids(answer));
    ids.push(kestrel_tests::scripted::IM_END);
    script.path_ids(&ids)
}

/// Thinks without end. When an engine closes the thinking at its budget (its text ends with
/// `</think>`), calls `get_current_time` for UTC (a call without newlines: a bigram script cannot
/// follow `\n` two ways); after Kestrel's own early-stop text (which ends `</think>.\n\n`), or a
/// prompt with thinking off, answers [`ANSWER`].
pub fn thinking_caller() -> Script {
    let script = Script::new().path(ENDLESS_THINKING);
    let mut ids = script.ids("</think><tool_call>");
    ids.extend(script.ids(r#"{"name":"get_current_time","arguments":{"timezone": "UTC"}}"#));
    ids.extend(script.ids("</tool_call>"));
    ids.push(kestrel_tests::scripted::IM_END);
    let no_think = *script.ids("</think>\n\n").last().expect("no-think end");
    let after_stop = *script.ids(EARLY_STOP_TEXT).last().expect("early stop");
    answers_after(script.path_ids(&ids), &[no_think, after_stop])
}
