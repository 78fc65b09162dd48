//! The agent loop end to end: a tiny random Qwen3 (real tokenizer) driven through several rounds
//! of grammar-forced calls against server-everything, limits, denial and a failing server; and
//! the real Qwen2.5-Coder GGUF answering "What time is it in Tokyo?" through `mcp-server-time`
//! with `kestrel run --json`.

use std::path::Path;
use std::sync::Arc;

use kestrel::agent::{Agent, AgentEvent, AgentOptions, ApprovalPolicy, ModelSamplingHandler};
use kestrel::backend::Embedded;
use kestrel::mcp::{HostOptions, McpConfig, McpHost, SamplingHandle};
use kestrel_engine::{EngineOptions, LoadOptions, Model, SamplingParams};
use kestrel_prompts::constrain::{ToolChoice, ToolChoiceMode};
use kestrel_prompts::messages::Role;
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
        sampling: Some(SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..SamplingParams::default()
        }),
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
    run_task_on(tiny_qwen3(), servers, options)
}

fn run_task_on(model: Arc<Model>, servers: Value, options: AgentOptions) -> Run {
    let logs = tempfile::tempdir().expect("tmp");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let text = json!({"mcpServers": servers}).to_string();
    let config = McpConfig::parse(&text, false, Path::new("agent.json")).expect("config");
    let host_options = HostOptions {
        log_dir: logs.path().to_path_buf(),
        ..HostOptions::from_config(&config)
    };
    let host = Arc::new(runtime.block_on(McpHost::start(&config, host_options)));
    let mut agent =
        Agent::new(model, host.clone(), runtime.handle().clone(), options).expect("agent");
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
    // Not trusted: the tools a test offers are allowed by name, as a user's file would.
    json!({"e": {"command": node(), "args": [npm_server("server-everything"), "stdio"],
        "include": include, "alwaysAllow": include}})
}

#[test]
fn several_rounds_reuse_the_cache_and_end_with_an_answer() {
    // Tools whose arguments are enums: a random model's free text would run to the token limit.
    // Few choices repeat often; repetition has its own test.
    let options = AgentOptions {
        max_repeats: usize::MAX,
        resend_answered: true,
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
        .filter(|m| m.role == Role::Tool)
        .count();
    assert_eq!(tool_messages, results.len());
}

#[test]
fn denied_tools_are_not_called_and_the_model_is_told() {
    let mut options = forced_options(1, 3);
    options.first_tool_choice = ToolChoice::Named {
        kind: "function".into(),
        function: kestrel_prompts::constrain::NamedFunction {
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
    let run = run_task(fault(&["crash"]), forced_options(2, 5));
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
/// `kestrel run --json` on the real model: its events, and its log lines (JSON, Kestrel's at
/// info level) in `dir/log.jsonl`.
fn run_real(dir: &Path, config: Value, tool: &str, task: &str, transcript: &Path) -> Vec<Value> {
    let path = dir.join("mcp.json");
    std::fs::write(&path, config.to_string()).expect("config");
    let out = kestrel()
        .env("KESTREL_LOG", "kestrel=info")
        .args(["--log-format", "json", "run", "--model"])
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
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let logs: String = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.join("log.jsonl"), logs).expect("log");
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[test]
fn the_real_model_tells_the_time_in_tokyo() {
    let dir = tempfile::tempdir().expect("tmp");
    let servers = json!({"mcpServers": {"time": {
        "command": time_server(), "args": ["--local-timezone", "UTC"], "exclude": ["convert_time"],
        "autoApprove": ["get_current_time"]}}});
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
    // The log names the task, turn and tool call of each line, parent to child.
    let logs: Vec<Value> = std::fs::read_to_string(dir.path().join("log.jsonl"))
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON log line"))
        .collect();
    let call_done = logs
        .iter()
        .find(|l| l["fields"]["message"] == "tool call done")
        .unwrap_or_else(|| panic!("a tool call line in {logs:#?}"));
    let names: Vec<&Value> = call_done["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| &s["name"])
        .collect();
    assert_eq!(names, ["task", "turn", "tool_call"], "{call_done}");
    assert_eq!(call_done["span"]["tool"], "get_current_time");
    assert_eq!(call_done["spans"][1]["number"], 1);
    let turn_lines = logs
        .iter()
        .filter(|l| l["fields"]["message"] == "turn done");
    assert_eq!(turn_lines.count(), 2, "{logs:#?}");

    let lines: Vec<Value> = std::fs::read_to_string(&transcript)
        .expect("transcript")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines[0]["kind"], "start");
    let end = lines.last().expect("end");
    assert_eq!(end["kind"], "end");
    assert_eq!(end["records"].as_array().map(Vec::len), Some(2));
    // The real model, greedy: both turns replay, with the second turn's cache reuse.
    let replayed = kestrel()
        .arg("replay")
        .arg(&transcript)
        .output()
        .expect("replay");
    let out = String::from_utf8_lossy(&replayed.stdout);
    assert!(
        replayed.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    assert!(out.ends_with("2 of 2 turns reproduce\n"), "{out}");
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

fn fault(include: &[&str]) -> Value {
    json!({"f": {"command": "python3", "args": [fault_server()], "include": include,
        "alwaysAllow": include}})
}

fn notes(run: &Run) -> Vec<&str> {
    run.events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::Note { message } => Some(message.as_str()),
            _ => None,
        })
        .collect()
}

fn tool_results(run: &Run) -> Vec<(&String, bool)> {
    run.events
        .iter()
        .filter_map(|e| match e {
            AgentEvent::ToolResult { text, is_error, .. } => Some((text, *is_error)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_repeat_of_a_call_that_succeeded_is_refused_left_out_and_answered() {
    // `pid` takes no arguments (additionalProperties: false), so every call is the same call.
    let run = run_task(fault(&["pid"]), forced_options(8, 11));
    let results = tool_results(&run);
    assert!(results.len() >= 2, "{results:?}");
    assert!(!results[0].1, "{results:?}");
    assert!(
        results[1]
            .0
            .starts_with("Not called: this exact call (pid with the same arguments) was just made"),
        "the second identical call is refused: {results:?}"
    );
    assert!(
        notes(&run).iter().any(|n| n.contains("repeats itself")),
        "{:?}",
        notes(&run)
    );
    // The refused call is not in the conversation: one call and its result, then the request
    // for the answer, then the answer.
    let messages = &run.outcome.messages;
    let calls: usize = messages.iter().map(|m| m.tool_calls.len()).sum();
    let tool_messages = messages.iter().filter(|m| m.role == Role::Tool).count();
    assert_eq!((calls, tool_messages), (1, 1), "{messages:#?}");
    assert_eq!(run.outcome.turns.len(), 3, "{:#?}", run.outcome.turns);
    assert_eq!(run.outcome.turns.last().map(|t| t.tool_calls), Some(0));
    assert!(matches!(run.events.last(), Some(AgentEvent::Final { .. })));
}

#[test]
fn a_call_that_fails_is_retried_once_then_refused() {
    // `crash` fails every time (the server exits mid-call; the host starts it again).
    let run = run_task(fault(&["crash"]), forced_options(8, 11));
    let results = tool_results(&run);
    assert!(results.len() >= 3, "{results:?}");
    assert!(results[0].1 && results[1].1, "two failures: {results:?}");
    assert!(
        !results[1].0.starts_with("Not called"),
        "the retry is sent: {results:?}"
    );
    assert!(
        results[2].0.starts_with("Not called: this exact call (crash with the same arguments) was already made 2 times in a row"),
        "{results:?}"
    );
    assert!(matches!(run.events.last(), Some(AgentEvent::Final { .. })));
}

#[test]
fn the_token_limit_ends_tool_rounds_with_a_tool_free_answer() {
    let options = AgentOptions {
        max_total_tokens: 60,
        max_turn_tokens: 40,
        max_repeats: usize::MAX,
        resend_answered: true,
        ..forced_options(10, 13)
    };
    let run = run_task(fault(&["pid"]), options);
    assert_eq!(
        run.outcome.limited_by.as_deref(),
        Some("60 generated tokens")
    );
    let turns = &run.outcome.turns;
    assert!(turns.len() < 10, "{turns:#?}");
    let before_last: usize = turns[..turns.len() - 1]
        .iter()
        .map(|t| t.generated_tokens)
        .sum();
    assert!(before_last >= 60, "{turns:#?}");
    assert_eq!(turns.last().map(|t| t.tool_calls), Some(0));
    assert!(
        notes(&run)
            .iter()
            .any(|n| n.contains("limit reached (60 generated tokens)"))
    );
}

#[test]
fn the_wall_time_limit_ends_with_an_answer_instead_of_stopping() {
    let options = AgentOptions {
        max_wall: Some(std::time::Duration::from_nanos(1)),
        ..forced_options(10, 17)
    };
    let run = run_task(fault(&["pid"]), options);
    assert!(
        run.outcome
            .limited_by
            .as_deref()
            .is_some_and(|l| l.ends_with("s of wall time")),
        "{:?}",
        run.outcome.limited_by
    );
    assert_eq!(run.outcome.turns.len(), 1);
    assert_eq!(run.outcome.turns[0].tool_calls, 0);
    assert!(matches!(run.events.last(), Some(AgentEvent::Final { .. })));
}

#[test]
fn old_tool_results_are_dropped_to_fit_a_small_context() {
    // The tiny model with a 1100-token context: each `ballast` result is about 400 tokens, so
    // the third round's prompt only fits once the oldest results are dropped.
    let dir = tempfile::tempdir().expect("tmp");
    let source = fixtures().join("models/qwen3-tiny-fullvocab");
    for file in ["model.safetensors", "generation_config.json"] {
        std::fs::copy(source.join(file), dir.path().join(file)).expect("copy");
    }
    let mut config = kestrel_tests::json(source.join("config.json"));
    config["max_position_embeddings"] = json!(1100);
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("config");
    let model = Arc::new(
        Model::load(
            dir.path(),
            &LoadOptions {
                tokenizer: Some(assets().join("qwen3-tokenizer")),
                ..LoadOptions::default()
            },
        )
        .expect("model"),
    );
    let options = AgentOptions {
        max_turn_tokens: 60,
        max_repeats: usize::MAX,
        resend_answered: true,
        system: Some("Use the tools.".into()),
        ..forced_options(4, 19)
    };
    let run = run_task_on(model, fault(&["ballast"]), options);
    assert!(
        notes(&run)
            .iter()
            .any(|n| n.contains("old tool result(s) to fit the 1100-token context")),
        "{:?}",
        notes(&run)
    );
    let dropped = run
        .outcome
        .messages
        .iter()
        .filter(|m| {
            m.role == Role::Tool
                && m.content
                    .as_ref()
                    .is_some_and(|c| c.text().starts_with("[tool result dropped"))
        })
        .count();
    assert!(dropped >= 1);
    // The system prompt and the task are kept.
    assert_eq!(run.outcome.messages[0].role, Role::System);
    assert_eq!(
        run.outcome.messages[1]
            .content
            .as_ref()
            .map(|c| c.text().to_string()),
        Some("Use the tools.".to_string())
    );
    assert!(run.outcome.turns.iter().all(|t| t.prompt_tokens <= 1100));
    assert!(matches!(run.events.last(), Some(AgentEvent::Final { .. })));
}

/// server-everything's `trigger-sampling-request` through a host whose sampling requests the tiny
/// model answers under `policy`; returns the tool names offered and the call's result.
fn sample(policy: ApprovalPolicy, sampler: bool) -> (Vec<String>, Result<(String, bool), String>) {
    let logs = tempfile::tempdir().expect("tmp");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let text = json!({"mcpServers": everything(&["trigger-sampling-request", "echo"])}).to_string();
    let config = McpConfig::parse(&text, false, Path::new("agent.json")).expect("config");
    let sampler = sampler.then(|| {
        let backend = Embedded::start(tiny_qwen3(), EngineOptions::default()).expect("engine");
        let local = ModelSamplingHandler::new(Arc::new(backend), policy, None).expect("sampler");
        SamplingHandle(Arc::new(local))
    });
    let options = HostOptions {
        log_dir: logs.path().to_path_buf(),
        sampling: sampler,
        ..HostOptions::from_config(&config)
    };
    runtime.block_on(async {
        let host = McpHost::start(&config, options).await;
        let names = host.tools().await.into_iter().map(|t| t.name).collect();
        let args = json!({"prompt": "Say hello.", "maxTokens": 12});
        let result = host
            .call("e", "trigger-sampling-request", args, None)
            .await
            .map(|o| (o.rendered.text, o.rendered.is_error))
            .map_err(|e| e.to_string());
        host.shutdown().await;
        (names, result)
    })
}

#[test]
fn servers_sampling_requests_are_answered_by_the_local_model_when_allowed() {
    let allow = ApprovalPolicy {
        allow: vec!["e/sampling".into()],
        ..ApprovalPolicy::default()
    };
    let (names, result) = sample(allow, true);
    assert!(
        names.contains(&"trigger-sampling-request".to_string()),
        "{names:?}"
    );
    let (text, is_error) = result.expect("call");
    assert!(!is_error, "{text}");
    let json_start = text
        .find('{')
        .expect("the result quotes the sampling answer");
    let answer: Value = serde_json::from_str(&text[json_start..]).expect("answer JSON");
    assert_eq!(answer["role"], "assistant");
    assert_eq!(answer["model"], "qwen3-tiny-fullvocab");
    assert_eq!(answer["content"]["type"], "text");
    assert!(
        ["endTurn", "maxTokens"].contains(&answer["stopReason"].as_str().unwrap_or("")),
        "{answer}"
    );

    // Without a rule, sampling asks; nobody can answer in a non-interactive run.
    let (_, refused) = sample(ApprovalPolicy::default(), true);
    let refusal = match refused {
        Ok((text, true)) => text,
        Err(e) => e,
        Ok(other) => panic!("sampling ran without approval: {other:?}"),
    };
    assert!(refusal.contains("sampling refused"), "{refusal}");
    assert!(refusal.contains("non-interactive"), "{refusal}");

    // A host without a sampling handler does not offer the capability, so the tool is not registered.
    let (names, _) = sample(ApprovalPolicy::default(), false);
    assert!(
        !names.contains(&"trigger-sampling-request".to_string()),
        "{names:?}"
    );
}

/// `kestrel chat` on the tiny model with `input` on stdin; returns stdout, stderr and the
/// transcript lines.
fn chat(config: &Value, extra: &[&str], input: &str) -> (String, String, Vec<Value>) {
    use std::io::Write as _;
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("mcp.json");
    std::fs::write(&path, config.to_string()).expect("config");
    let transcript = dir.path().join("chat.jsonl");
    let mut child = kestrel()
        .args(["chat", "--model"])
        .arg(fixtures().join("models/qwen3-tiny-fullvocab"))
        .arg("--tokenizer")
        .arg(assets().join("qwen3-tokenizer"))
        .arg("--config")
        .arg(&path)
        .arg("--transcript")
        .arg(&transcript)
        .args(["--seed", "5", "--max-tokens", "40", "--max-rounds", "1"])
        .args(extra)
        .env("XDG_CACHE_HOME", dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("chat");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("input");
    let out = child.wait_with_output().expect("chat output");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let lines = std::fs::read_to_string(&transcript)
        .expect("transcript")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    (stdout, stderr, lines)
}

#[test]
fn chat_keeps_the_conversation_and_switches_thinking() {
    let config = json!({"mcpServers": {}});
    let (_, stderr, lines) = chat(
        &config,
        &["--json"],
        "/no_think\nHello there.\n/bogus\nAnd a second message.\n/exit\nnot read\n",
    );
    assert!(stderr.contains("thinking off"), "{stderr}");
    assert!(stderr.contains("unknown command /bogus"), "{stderr}");
    let users: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "user").collect();
    assert_eq!(users.len(), 2, "/exit ends the session: {lines:?}");
    let answers: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "answer").collect();
    assert_eq!(answers.len(), 2);
    // The second message's prompt holds the first exchange, reused from the cache (all but the
    // 4 tokens of the empty think block, which the template drops once the answer is history).
    let first = &answers[0]["turns"][0];
    let second = &answers[1]["turns"][0];
    let reused = second["reused_tokens"].as_u64().unwrap_or(0);
    assert!(
        reused + 4 >= first["prompt_tokens"].as_u64().unwrap_or(u64::MAX),
        "{first} {second}"
    );
    let prompt: Vec<u32> = kestrel_tests::ids(&answers[1]["records"][0]["prompt_ids"]);
    let first_prompt: Vec<u32> = kestrel_tests::ids(&answers[0]["records"][0]["prompt_ids"]);
    assert_eq!(prompt[..reused as usize], first_prompt[..reused as usize]);
    // Thinking off: the template's empty think block closes every generation prompt.
    let text = kestrel_engine::Tokenizer::from_dir(&assets().join("qwen3-tokenizer"))
        .expect("tokenizer")
        .decode(&prompt)
        .expect("decode");
    assert!(text.ends_with("<think>\n\n</think>\n\n"), "{text}");
    assert!(text.contains("Hello there.") && text.contains("And a second message."));
}

#[test]
fn chat_asks_before_a_tool_and_respects_the_answer() {
    let config = json!({"mcpServers": {"f": {"command": "python3", "args": [fault_server()], "include": ["pid"]}}});
    let forced = ["--no-think", "--tool-choice", "pid", "--ask", "f/pid"];
    let result = |lines: &[Value]| {
        lines
            .iter()
            .find(|l| l["event"]["event"] == "tool_result")
            .map(|l| l["event"].clone())
            .expect("a result")
    };
    let (_, stderr, lines) = chat(&config, &forced, "Which process?\nn\n");
    assert!(
        stderr.contains("approve pid (f/pid) with {}? [y]es, [N]o, [a]lways"),
        "{stderr}"
    );
    let declined = result(&lines);
    let text = declined["text"].as_str().unwrap_or("");
    assert!(text.contains("the user declined"), "{text}");
    assert_eq!(declined["elapsed_ms"], 0);
    // The answer was not taken for a message.
    assert_eq!(lines.iter().filter(|l| l["kind"] == "user").count(), 1);

    // "always" answers for the rest of the chat: the second message's call is not asked about.
    let (_, stderr, lines) = chat(&config, &forced, "Which process?\na\nAnd now?\n");
    assert_eq!(stderr.matches("approve pid").count(), 1, "{stderr}");
    let results: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event"]["event"] == "tool_result")
        .collect();
    assert_eq!(results.len(), 2, "{lines:?}");
    assert!(
        results.iter().all(|r| r["event"]["is_error"] == false),
        "{results:?}"
    );

    let (_, _, lines) = chat(&config, &forced, "Which process?\nyes\n");
    let approved = result(&lines);
    assert_eq!(approved["is_error"], false, "{approved}");
    assert!(
        approved["text"]
            .as_str()
            .unwrap_or("")
            .parse::<u32>()
            .is_ok(),
        "{approved}"
    );
}

#[test]
fn chat_attaches_resources_and_adds_servers_prompts() {
    let config = json!({"mcpServers": {"e": {"command": node(),
        "args": [npm_server("server-everything"), "stdio"], "include": []}}});
    let uri = "demo://resource/static/document/architecture.md";
    let input = format!(
        "/prompts\nSummarise @e:{uri} please\n@e:demo://resource/nothing-here\n/prompt e args-prompt city=Oslo\n/prompt e args-prompt\n"
    );
    let (_, stderr, lines) = chat(&config, &["--no-think"], &input);
    assert!(stderr.contains("e args-prompt(city*, state)"), "{stderr}");
    let users: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "user").collect();
    assert_eq!(
        users.len(),
        2,
        "the unreadable resource and the bad prompt add nothing: {users:?}"
    );
    let attached = users[0]["messages"][0]["content"].as_str().expect("text");
    assert!(attached.starts_with(&format!(
        "Summarise @e:{uri} please\n\n[resource e:{uri}]\n"
    )));
    assert!(
        attached.contains("Architecture"),
        "the document's text: {attached}"
    );
    assert!(
        stderr.contains("cannot attach @e:demo://resource/nothing-here"),
        "{stderr}"
    );
    assert_eq!(
        users[1]["messages"][0]["content"],
        "What's weather in Oslo?"
    );
    assert!(stderr.contains("prompt args-prompt of e"), "{stderr}");
    let answers = lines.iter().filter(|l| l["kind"] == "answer").count();
    assert_eq!(answers, 2, "each added user message is answered");
}
