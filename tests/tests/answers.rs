//! The agent never loses an answer: `kestrel run` on scripted Qwen3 checkpoints (see
//! `kestrel_tests::scripted`) that think without end, stop right after thinking, write a call the
//! token limit cuts, or write a bare JSON call; thinking defaults, soft switches, presets and the
//! finish reasons each turn reports.

use kestrel_prompts::thinking::EARLY_STOP_TEXT;
use kestrel_tests::scripted::Script;
use kestrel_tests::{kestrel, time_server};
use serde_json::{Value, json};

/// The answer every script ends with.
const ANSWER: &[&str] = &["The", " answer", " is", " 4", "2", "<|im_end|>"];
const ANSWER_TEXT: &str = "The answer is 42";

/// Thinking that never ends: `<think>Hmm, let me think Hmm, let me think ...`.
const ENDLESS_THINKING: &[&str] = &["\n", "<think>", "Hmm", ",", " let", " me", " think", "Hmm"];

/// A script whose thinking never ends, and which answers after Qwen's early-stop text or after a
/// prompt with thinking off (both end with the same token).
fn endless_thinker() -> Script {
    let script = Script::new().path(ENDLESS_THINKING);
    let after_stop = *script.ids(EARLY_STOP_TEXT).last().expect("early stop");
    let no_think = *script.ids("</think>\n\n").last().expect("no-think end");
    answers_after(script, &[after_stop, no_think])
}

/// `script`, answering [`ANSWER`] after each of `starts`.
fn answers_after(mut script: Script, starts: &[u32]) -> Script {
    let answer: Vec<u32> = ANSWER.iter().flat_map(|p| script.ids(p)).collect();
    for &start in starts {
        script = script.path_ids(&[&[start], &answer[..]].concat());
    }
    script
}

struct Run {
    events: Vec<Value>,
    stderr: String,
}

impl Run {
    fn of(&self, kind: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["event"] == kind).collect()
    }

    fn answer(&self) -> String {
        let finals = self.of("final");
        assert_eq!(finals.len(), 1, "{:?}", self.events);
        finals[0]["text"].as_str().expect("text").to_string()
    }

    fn thinking(&self) -> String {
        self.of("thinking")
            .iter()
            .filter_map(|e| e["text"].as_str())
            .collect()
    }

    fn notes(&self) -> Vec<String> {
        self.of("note")
            .iter()
            .filter_map(|e| e["message"].as_str().map(str::to_owned))
            .collect()
    }
}

/// `kestrel run --json` on `script` with `servers`; the run must succeed.
fn run(script: &Script, servers: Value, args: &[&str], task: &str) -> Run {
    let dir = tempfile::tempdir().expect("tmp");
    run_in(dir.path(), script, servers, args, task)
}

/// [`run`] with its files (model, config) in `dir`.
fn run_in(
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

fn time() -> Value {
    json!({"time": {"command": time_server(), "args": ["--local-timezone", "UTC"]}})
}

#[test]
fn thinking_that_never_ends_is_closed_in_time_for_an_answer() {
    let limit = 200;
    let run = run(
        &endless_thinker(),
        json!({}),
        &["--max-turn-tokens", &limit.to_string()],
        "What is the answer?",
    );
    assert_eq!(run.answer(), ANSWER_TEXT, "{}", run.stderr);
    let turns = run.of("turn");
    assert_eq!(turns.len(), 1);
    let generated = turns[0]["generated_tokens"].as_u64().expect("generated");
    assert!(
        generated <= limit,
        "{generated} tokens in a {limit}-token turn"
    );
    assert_eq!(turns[0]["finish_reason"], "stop");
    assert!(
        run.thinking().contains("Hmm, let me think"),
        "thinking is on by default"
    );
    let text: String = run
        .of("text")
        .iter()
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert_eq!(
        text.trim(),
        ANSWER_TEXT,
        "the early-stop text is not shown as the answer"
    );
    assert!(
        run.notes()
            .iter()
            .any(|n| n.contains("thinking closed early"))
    );
}

#[test]
fn a_turn_that_only_thinks_is_asked_again_without_thinking() {
    // Thinks a little, closes the thinking and stops: no answer in the turn.
    let script = endless_thinker_that_stops();
    let run = run(&script, json!({}), &[], "What is the answer?");
    assert_eq!(run.answer(), ANSWER_TEXT);
    assert!(
        run.notes()
            .iter()
            .any(|n| n.contains("ended without an answer")),
        "{:?}",
        run.notes()
    );
    assert_eq!(run.of("turn").len(), 2);
}

fn endless_thinker_that_stops() -> Script {
    let script = Script::new().path(&["\n", "<think>", "Hmm", "</think>", "<|im_end|>"]);
    let no_think = *script.ids("</think>\n\n").last().expect("no-think end");
    answers_after(script, &[no_think])
}

#[test]
fn soft_switches_follow_qwen_and_the_hard_switch_wins() {
    let script = endless_thinker();
    let args = ["--max-turn-tokens", "120"];
    let quick = run(&script, json!({}), &args, "What is the answer? /no_think");
    assert_eq!(quick.answer(), ANSWER_TEXT);
    assert_eq!(quick.thinking(), "", "/no_think turns thinking off");
    assert_eq!(quick.of("turn")[0]["thinking_tokens"], 0);

    let hard_off = [&args[..], &["--no-think"]].concat();
    let off = run(&script, json!({}), &hard_off, "What is the answer? /think");
    assert_eq!(off.thinking(), "", "the hard switch off ignores /think");

    let again = run(
        &script,
        json!({}),
        &args,
        "Read /thinking/notes first. /no_think ... actually, /think",
    );
    assert!(again.thinking().contains("Hmm"), "the latest switch wins");
}

#[test]
fn greedy_thinking_is_warned_about_and_presets_apply_otherwise() {
    let script = endless_thinker();
    let greedy = run(
        &script,
        json!({}),
        &["--max-turn-tokens", "100", "--temperature", "0"],
        "What is the answer?",
    );
    assert!(
        greedy
            .notes()
            .iter()
            .any(|n| n.contains("greedy decoding while thinking")),
        "{:?}",
        greedy.notes()
    );
    let preset = run(&script, json!({}), &["--max-turn-tokens", "100"], "What?");
    assert!(
        !preset.notes().iter().any(|n| n.contains("greedy")),
        "{:?}",
        preset.notes()
    );
    // The script's margin makes the preset's sampling follow it too.
    assert_eq!(preset.answer(), ANSWER_TEXT);
}

#[test]
fn a_call_cut_by_the_token_limit_is_not_dispatched() {
    // Thinking off, the model opens a call; the schema constraint then leaves it only tokens the
    // script does not prefer, and greedy decoding takes the first allowed one: the timezone
    // string goes on (`"!!!!...`) until the turn's limit.
    let script = Script::new();
    let start = *script.ids("</think>\n\n").last().expect("end");
    let call_open = script.ids("<tool_call>");
    let script = script.path_ids(&[&[start], &call_open[..]].concat());
    let run = run(
        &script,
        time(),
        &[
            "--no-think",
            "--temperature",
            "0",
            "--max-turn-tokens",
            "80",
            "--max-rounds",
            "1",
        ],
        "What time is it in Tokyo?",
    );
    assert!(run.of("tool_call").is_empty(), "{:?}", run.events);
    let results = run.of("tool_result");
    assert_eq!(results.len(), 1, "{:?}", run.events);
    let text = results[0]["text"].as_str().expect("text");
    assert!(
        text.starts_with("Not called: this call was cut off"),
        "{text}"
    );
    assert!(run.notes().iter().any(|n| n.contains("cut off")));
    assert_eq!(run.of("turn")[0]["finish_reason"], "max_tokens");
}

/// A bare `{"name": ..., "arguments": {}}` answer, which small models write instead of a tagged
/// call.
fn bare_json_caller() -> Script {
    let script = Script::new();
    let start = *script.ids("</think>\n\n").last().expect("end");
    let mut ids = vec![start];
    ids.extend(script.ids("{\"name\":\"get_current_time\",\"arguments\":{}}"));
    ids.push(kestrel_tests::scripted::IM_END);
    script.path_ids(&ids)
}

#[test]
fn tool_choice_none_never_dispatches_a_call() {
    let args = ["--no-think", "--max-rounds", "1", "--max-turn-tokens", "60"];
    let auto = run(&bare_json_caller(), time(), &args, "Time?");
    assert_eq!(
        auto.of("tool_call").len(),
        1,
        "the bare call is recognised: {:?}",
        auto.events
    );

    let none_args = [&args[..], &["--tool-choice", "none"]].concat();
    let none = run(&bare_json_caller(), time(), &none_args, "Time?");
    assert!(none.of("tool_call").is_empty(), "{:?}", none.events);
    assert!(none.of("tool_result").is_empty());
    assert!(
        none.answer().contains("get_current_time"),
        "the text stays the answer"
    );
}

#[test]
fn an_untrusted_servers_tool_runs_only_when_allowed() {
    let args = ["--no-think", "--max-rounds", "1", "--max-turn-tokens", "60"];
    let refused = run(&bare_json_caller(), time(), &args, "Time?");
    let text = refused.of("tool_result")[0]["text"]
        .as_str()
        .expect("text")
        .to_string();
    assert!(
        text.starts_with(
            "Not called: `get_current_time` is a tool of `time`, a server not marked trusted"
        ),
        "{text}"
    );
    assert!(
        text.contains("--allow"),
        "the refusal says how to allow it: {text}"
    );

    let allowed_args = [&args[..], &["--allow", "time/get_current_time"]].concat();
    let allowed = run(&bare_json_caller(), time(), &allowed_args, "Time?");
    let text = allowed.of("tool_result")[0]["text"]
        .as_str()
        .expect("text")
        .to_string();
    // Dispatched: the schema check answers (the script's call has no timezone), not the policy.
    assert!(
        text.contains("invalid arguments") && text.contains("timezone"),
        "{text}"
    );

    let listed = json!({"time": {"command": time_server(), "alwaysAllow": ["get_current_time"]}});
    let listed = run(&bare_json_caller(), listed, &args, "Time?");
    let text = listed.of("tool_result")[0]["text"]
        .as_str()
        .expect("text")
        .to_string();
    assert!(!text.starts_with("Not called"), "{text}");
}

#[test]
fn a_servers_progress_shows_while_its_call_runs() {
    let script = Script::new();
    let start = *script.ids("</think>\n\n").last().expect("end");
    let mut ids = vec![start];
    ids.extend(
        script.ids("{\"name\":\"trigger-long-running-operation\",\"arguments\":{\"duration\":1}}"),
    );
    ids.push(kestrel_tests::scripted::IM_END);
    let script = script.path_ids(&ids);
    let tool = "trigger-long-running-operation";
    let servers = json!({"e": {"command": kestrel_tests::node(),
        "args": [kestrel_tests::npm_server("server-everything"), "stdio"],
        "include": [tool], "alwaysAllow": [tool]}});
    let args = ["--no-think", "--max-rounds", "1", "--max-turn-tokens", "60"];
    let run = run(&script, servers, &args, "Run the operation.");
    let progress = run.of("progress");
    // One per step, shown while the call runs (the last may cross the result on the way).
    assert!(progress.len() >= 4, "{:?}", run.events);
    for (step, event) in progress.iter().enumerate() {
        assert_eq!(event["progress"], (step + 1) as f64);
        assert_eq!(
            (&event["total"], &event["server"]),
            (&json!(5.0), &json!("e"))
        );
    }
    let result = run.of("tool_result")[0]["text"]
        .as_str()
        .expect("text")
        .to_string();
    assert!(
        result.starts_with("Long running operation completed"),
        "{result}"
    );
}

// The agent flags, each through `kestrel run` (or `batch`) on a scripted model.

#[test]
fn thinking_budgets_per_turn_and_per_task_cut_the_thinking() {
    let script = endless_thinker();
    let per_turn = run(&script, json!({}), &["--thinking-budget", "10"], "What?");
    assert_eq!(per_turn.of("turn")[0]["thinking_tokens"], 10);
    assert_eq!(per_turn.answer(), ANSWER_TEXT);
    let per_task = run(
        &script,
        json!({}),
        &["--task-thinking-budget", "7"],
        "What?",
    );
    assert_eq!(per_task.of("turn")[0]["thinking_tokens"], 7);
    assert_eq!(per_task.answer(), ANSWER_TEXT);
}

#[test]
fn deny_beats_allow_and_max_time_ends_the_rounds() {
    let args = ["--no-think", "--max-turn-tokens", "60", "--allow", "time/*"];
    let denied_args = [&args[..], &["--deny", "get_current_time"]].concat();
    let denied = run(&bare_json_caller(), time(), &denied_args, "Time?");
    let text = denied.of("tool_result")[0]["text"]
        .as_str()
        .expect("text")
        .to_string();
    assert_eq!(
        text,
        "Not called: the approval policy denies `get_current_time`"
    );

    let timed_args = [&args[..], &["--max-time", "0.001", "--max-rounds", "5"]].concat();
    let timed = run(&bare_json_caller(), time(), &timed_args, "Time?");
    assert_eq!(timed.of("tool_call").len(), 1, "{:?}", timed.events);
    assert!(
        timed
            .notes()
            .iter()
            .any(|n| n.contains("limit reached (0.001 s of wall time)")),
        "{:?}",
        timed.notes()
    );
}

#[test]
fn the_system_prompt_flag_replaces_kestrels() {
    let dir = tempfile::tempdir().expect("tmp");
    let transcript = dir.path().join("run.jsonl");
    let args = [
        "--no-think",
        "--max-turn-tokens",
        "20",
        "--system",
        "Be terse.",
        "--transcript",
    ];
    let args = [&args[..], &[transcript.to_str().expect("path")]].concat();
    run_in(dir.path(), &endless_thinker(), json!({}), &args, "What?");
    let end: Value = std::fs::read_to_string(&transcript)
        .expect("transcript")
        .lines()
        .last()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .expect("end line");
    assert_eq!(end["messages"][0]["role"], "system");
    assert_eq!(end["messages"][0]["content"], "Be terse.");
    let none_args = [
        "--no-think",
        "--max-turn-tokens",
        "20",
        "--system",
        "",
        "--transcript",
    ];
    let none_args = [&none_args[..], &[transcript.to_str().expect("path")]].concat();
    run_in(
        dir.path(),
        &endless_thinker(),
        json!({}),
        &none_args,
        "What?",
    );
    let end: Value = std::fs::read_to_string(&transcript)
        .expect("transcript")
        .lines()
        .last()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .expect("end line");
    assert_eq!(
        end["messages"][0]["role"], "user",
        "--system \"\" is no system prompt"
    );
}

#[test]
fn batch_runs_tasks_concurrently_each_to_its_answer() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = dir.path().join("model");
    endless_thinker().write(&model);
    let config = dir.path().join("mcp.json");
    std::fs::write(&config, r#"{"mcpServers": {}}"#).expect("config");
    let tasks = dir.path().join("tasks.jsonl");
    let lines: Vec<String> = (0..4)
        .map(|i| json!({"id": i, "task": format!("Question {i}?")}).to_string())
        .collect();
    std::fs::write(&tasks, lines.join("\n")).expect("tasks");
    let batch = |concurrency: &str| {
        kestrel()
            .args(["batch", "--model"])
            .arg(&model)
            .arg("--config")
            .arg(&config)
            .args(["--max-turn-tokens", "60", "--concurrency", concurrency])
            .arg(&tasks)
            .env("XDG_CACHE_HOME", dir.path())
            .output()
            .expect("batch")
    };
    let zero = batch("0");
    assert!(!zero.status.success());
    assert!(String::from_utf8_lossy(&zero.stderr).contains("--concurrency must be at least 1"));
    let out = batch("3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results = std::fs::read_to_string(dir.path().join("tasks.results.jsonl")).expect("results");
    let mut ids: Vec<u64> = results
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("result"))
        .inspect(|r| assert_eq!(r["answer"], ANSWER_TEXT, "{r}"))
        .map(|r| r["id"].as_u64().expect("id"))
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [0, 1, 2, 3], "each task once");
}

/// `kestrel replay TRANSCRIPT` with `extra` flags: exit code and stdout.
fn replay(transcript: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let out = kestrel()
        .arg("replay")
        .args(extra)
        .arg(transcript)
        .output()
        .expect("replay");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let code = out.status.code().unwrap_or(-1);
    (
        code,
        format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn a_greedy_transcript_replays_and_another_model_diverges_where_it_differs() {
    let dir = tempfile::tempdir().expect("tmp");
    let transcript = dir.path().join("run.jsonl");
    let path = transcript.to_str().expect("path");
    // Thinking closed by the early stop (forced tokens), then the answer.
    let args = [
        "--temperature",
        "0",
        "--max-turn-tokens",
        "80",
        "--transcript",
        path,
    ];
    run_in(dir.path(), &endless_thinker(), json!({}), &args, "What?");
    let start: Value = std::fs::read_to_string(&transcript)
        .expect("transcript")
        .lines()
        .next()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .expect("start line");
    assert_eq!(
        start["options"]["max_turn_tokens"], 80,
        "options as JSON: {start}"
    );
    assert_eq!(start["options"]["first_tool_choice"], Value::Null);
    let (code, out) = replay(&transcript, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("turn 1: prompt re-renders to the recorded ids"),
        "{out}"
    );
    assert!(out.contains("greedy tokens regenerate") && out.contains("1 of 1 turns reproduce"));

    // A model that answers 43: the replay stops agreeing at the last digit.
    let other = dir.path().join("other");
    let script = Script::new().path(ENDLESS_THINKING);
    let after_stop = *script.ids(EARLY_STOP_TEXT).last().expect("early stop");
    let mut answer = vec![after_stop];
    answer.extend(
        ["The", " answer", " is", " 4", "3", "<|im_end|>"]
            .iter()
            .flat_map(|p| script.ids(p)),
    );
    script.path_ids(&answer).write(&other);
    let (code, out) = replay(&transcript, &["--model", other.to_str().expect("path")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("diverges at generated token"), "{out}");
    assert!(
        out.contains("\"2\"") && out.contains("\"3\""),
        "names both tokens: {out}"
    );

    // A transcript whose conversation was edited no longer renders to its ids.
    let edited = std::fs::read_to_string(&transcript)
        .expect("transcript")
        .replace("What?", "Why?");
    std::fs::write(&transcript, edited).expect("edit");
    let (code, out) = replay(&transcript, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("prompt differs from the recorded ids at"),
        "{out}"
    );
}

#[test]
fn turns_after_a_tool_call_replay_with_the_recorded_cache_reuse() {
    let dir = tempfile::tempdir().expect("tmp");
    let transcript = dir.path().join("run.jsonl");
    let args = [
        "--no-think",
        "--temperature",
        "0",
        "--max-turn-tokens",
        "60",
        "--allow",
        "time/*",
        "--max-rounds",
        "1",
        "--transcript",
        transcript.to_str().expect("path"),
    ];
    run_in(dir.path(), &bare_json_caller(), time(), &args, "Time?");
    let (code, out) = replay(&transcript, &["--json"]);
    assert_eq!(code, 0, "{out}");
    let turns: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(turns.len(), 2, "{out}");
    let reused = &turns[1]["turn"]["reused"];
    assert!(
        reused[0].as_u64().expect("reused") > 0,
        "the second turn reused the cache: {out}"
    );
    assert_eq!(reused[0], reused[1]);
}
