//! The agent loop end to end: a tiny random Qwen3 (real tokenizer) driven through several rounds
//! of grammar-forced calls against server-everything, limits, denial and a failing server; and
//! the real Qwen2.5-Coder GGUF answering "What time is it in Tokyo?" through `mcp-server-time`
//! with `kestrel run --json`.

use std::path::Path;
use std::sync::Arc;

use kestrel::agent::{Agent, AgentEvent, AgentOptions, ApprovalPolicy};
use kestrel::constrain::{ToolChoice, ToolChoiceMode};
use kestrel::mcp::{HostOptions, McpConfig, McpHost};
use kestrel_engine::{LoadOptions, Model, SamplingParams};
use kestrel_tests::{
    assets, coder_gguf, fault_server, fixtures, kestrel, node, npm_server, time_server,
};
use serde_json::{Value, json};

fn tiny_qwen3() -> Arc<Model> {
    let options = LoadOptions {
        tokenizer: Some(assets().join("qwen3-tokenizer")),
        ..LoadOptions::default()
    };
    Arc::new(Model::load(&fixtures().join("models/qwen3-tiny-fullvocab"), &options).expect("model"))
}

fn forced_options(rounds: usize, seed: u64) -> AgentOptions {
    let required = ToolChoice::Mode(ToolChoiceMode::Required);
    AgentOptions {
        max_rounds: rounds,
        max_turn_tokens: 120,
        thinking: Some(false),
        sampling: SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..SamplingParams::default()
        },
        first_tool_choice: required.clone(),
        later_tool_choice: required,
        ..AgentOptions::default()
    }
}

struct Run {
    events: Vec<AgentEvent>,
    outcome: kestrel::agent::TaskOutcome,
}

fn run_task(servers: Value, options: AgentOptions) -> Run {
    let logs = tempfile::tempdir().expect("tmp");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let text = json!({"mcpServers": servers}).to_string();
    let config = McpConfig::parse(&text, false, Path::new("agent.json")).expect("config");
    let host_options = HostOptions {
        log_dir: logs.path().to_path_buf(),
        ..HostOptions::from_config(&config)
    };
    let host = Arc::new(runtime.block_on(McpHost::start(&config, host_options)));
    let mut agent = Agent::new(
        tiny_qwen3(),
        host.clone(),
        runtime.handle().clone(),
        options,
    )
    .expect("agent");
    let mut events = Vec::new();
    let outcome = agent
        .run("Use the tools.", &mut |e| events.push(e.clone()))
        .expect("task");
    drop(agent);
    if let Ok(host) = Arc::try_unwrap(host) {
        runtime.block_on(host.shutdown());
    }
    Run { events, outcome }
}

fn everything(include: &[&str]) -> Value {
    json!({"e": {"command": node(), "args": [npm_server("server-everything"), "stdio"], "include": include}})
}

#[test]
fn several_rounds_reuse_the_cache_and_end_with_an_answer() {
    // Tools whose arguments are enums: a random model's free text would run to the token limit.
    // Few choices repeat often; repetition has its own test.
    let options = AgentOptions {
        max_repeats: usize::MAX,
        ..forced_options(3, 7)
    };
    let run = run_task(
        everything(&["get-structured-content", "get-annotated-message"]),
        options,
    );
    let turns = &run.outcome.turns;
    assert_eq!(
        turns.len(),
        4,
        "three tool rounds, then the answer: {turns:#?}"
    );
    for pair in turns.windows(2) {
        // Only the new messages are prefilled, plus the few tokens of the previous generation
        // header that Qwen3's template renders differently once the turn is in the history
        // (with thinking off: the empty `<think>\n\n</think>\n\n` block, 4 tokens).
        assert!(
            pair[1].reused_tokens + 4 >= pair[0].prompt_tokens,
            "{pair:#?}"
        );
        assert_eq!(
            pair[1].prefilled_tokens,
            pair[1].prompt_tokens - pair[1].reused_tokens
        );
        assert!(pair[1].prompt_tokens > pair[0].prompt_tokens);
    }
    assert!(turns[..3].iter().all(|t| t.tool_calls >= 1));
    assert_eq!(turns[3].tool_calls, 0);
    assert_eq!(run.outcome.limited_by.as_deref(), Some("3 tool rounds"));
    // Every call got its result, in order, and the results are real server answers.
    let calls = run
        .events
        .iter()
        .filter(|e| matches!(e, AgentEvent::ToolCall { .. }))
        .count();
    let results: Vec<&AgentEvent> = run
        .events
        .iter()
        .filter(|e| matches!(e, AgentEvent::ToolResult { .. }))
        .collect();
    assert_eq!(calls, results.len());
    assert!(
        results.iter().any(
            |r| matches!(r, AgentEvent::ToolResult { text, is_error: false, .. }
            if text.contains("temperature") || text.contains("message"))
        ),
        "{results:#?}"
    );
    assert!(matches!(run.events.last(), Some(AgentEvent::Final { .. })));
    // The conversation holds each call and its result.
    let tool_messages = run
        .outcome
        .messages
        .iter()
        .filter(|m| m.role == kestrel::chat::Role::Tool)
        .count();
    assert_eq!(tool_messages, results.len());
}

#[test]
fn denied_tools_are_not_called_and_the_model_is_told() {
    let mut options = forced_options(1, 3);
    options.first_tool_choice = ToolChoice::Named {
        kind: "function".into(),
        function: kestrel::constrain::NamedFunction {
            name: "get-structured-content".into(),
        },
    };
    options.approval = ApprovalPolicy {
        deny: vec!["e/get-structured-content".into()],
        ..ApprovalPolicy::default()
    };
    let run = run_task(everything(&["get-structured-content"]), options);
    let result = run
        .events
        .iter()
        .find_map(|e| match e {
            AgentEvent::ToolResult {
                text,
                is_error,
                elapsed_ms,
                ..
            } => Some((text, *is_error, *elapsed_ms)),
            _ => None,
        })
        .expect("a result");
    assert!(
        result
            .0
            .contains("Not called: the approval policy denies `get-structured-content`"),
        "{result:?}"
    );
    assert!(result.1 && result.2 == 0);
}

#[test]
fn a_failing_server_is_a_tool_error_and_the_task_still_ends() {
    let servers =
        json!({"f": {"command": "python3", "args": [fault_server()], "include": ["crash"]}});
    let run = run_task(servers, forced_options(2, 5));
    let errors: Vec<&String> = run
        .events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::ToolResult {
                text,
                is_error: true,
                ..
            } => Some(text),
            _ => None,
        })
        .collect();
    assert!(!errors.is_empty());
    assert!(errors[0].contains("crashing on purpose"), "{errors:?}");
    assert_eq!(run.outcome.turns.len(), 3);
    assert!(matches!(run.events.last(), Some(AgentEvent::Final { .. })));
}

/// `kestrel run --json` with the real GGUF, greedy, the first turn forced to call `tool`, one
/// tool round, a transcript; returns the JSON events.
fn run_real(dir: &Path, config: Value, tool: &str, task: &str, transcript: &Path) -> Vec<Value> {
    let path = dir.join("mcp.json");
    std::fs::write(&path, config.to_string()).expect("config");
    let out = kestrel()
        .args(["run", "--model"])
        .arg(coder_gguf())
        .arg("--config")
        .arg(&path)
        .args([
            "--json",
            "--temperature",
            "0",
            "--tool-choice",
            tool,
            "--max-rounds",
            "1",
        ])
        .arg("--transcript")
        .arg(transcript)
        .arg(task)
        .env("XDG_CACHE_HOME", dir)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[test]
fn the_real_model_tells_the_time_in_tokyo() {
    let dir = tempfile::tempdir().expect("tmp");
    let servers = json!({"mcpServers": {"time": {
        "command": time_server(), "args": ["--local-timezone", "UTC"], "exclude": ["convert_time"]}}});
    let transcript = dir.path().join("run.jsonl");
    let events = run_real(
        dir.path(),
        servers,
        "get_current_time",
        "What time is it in Tokyo?",
        &transcript,
    );
    let call = events
        .iter()
        .find(|e| e["event"] == "tool_call")
        .expect("a call");
    assert_eq!(call["name"], "get_current_time");
    assert_eq!(call["arguments"]["timezone"], "Asia/Tokyo");
    let result = events
        .iter()
        .find(|e| e["event"] == "tool_result")
        .expect("a result");
    let result: Value =
        serde_json::from_str(result["text"].as_str().expect("text")).expect("time JSON");
    let datetime = result["datetime"].as_str().expect("datetime");
    assert!(datetime.ends_with("+09:00"), "{datetime}");
    let hh_mm = &datetime[11..16];
    let answer = events
        .iter()
        .find(|e| e["event"] == "final")
        .expect("final")["text"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        answer.contains(hh_mm),
        "the answer states the time from the result ({hh_mm}): {answer}"
    );
    let turns: Vec<&Value> = events.iter().filter(|e| e["event"] == "turn").collect();
    assert_eq!(turns.len(), 2);
    assert_eq!(
        turns[1]["reused_tokens"], turns[0]["prompt_tokens"],
        "{turns:?}"
    );

    let lines: Vec<Value> = std::fs::read_to_string(&transcript)
        .expect("transcript")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines[0]["kind"], "start");
    let end = lines.last().expect("end");
    assert_eq!(end["kind"], "end");
    assert_eq!(end["records"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        end["records"][0]["prompt_ids"].as_array().map(Vec::len),
        turns[0]["prompt_tokens"].as_u64().map(|n| n as usize)
    );
}

#[test]
fn the_real_model_reads_a_file_through_the_builtin_fs_server() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("work");
    std::fs::create_dir_all(root.join("docs")).expect("mkdir");
    std::fs::write(
        root.join("docs/notes.txt"),
        "The launch code is KESTREL-4711.\n",
    )
    .expect("write");
    let servers = json!({"roots": [root], "mcpServers": {"files": {"builtin": "fs"}}});
    let events = run_real(
        dir.path(),
        servers,
        "read_file",
        "What does the file docs/notes.txt say?",
        &dir.path().join("run.jsonl"),
    );
    let call = events
        .iter()
        .find(|e| e["event"] == "tool_call")
        .expect("a call");
    assert_eq!(call["arguments"], json!({"path": "docs/notes.txt"}));
    let result = events
        .iter()
        .find(|e| e["event"] == "tool_result")
        .expect("a result");
    assert_eq!(result["is_error"], false, "{result}");
    let answer = events
        .iter()
        .find(|e| e["event"] == "final")
        .expect("final")["text"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        answer.contains("KESTREL-4711"),
        "the answer reports the content: {answer}"
    );
}
