//! The agent never loses an answer: `kestrel run` on scripted Qwen3 checkpoints (see
//! `kestrel_tests::scripted`) that think without end, stop right after thinking, write a call the
//! token limit cuts, or write a bare JSON call; thinking defaults, soft switches, presets and the
//! finish reasons each turn reports.

mod support;

use support::*;

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
    // Nor is the call written as the answer: the turn cannot call, so the tokens that would make
    // the answer a bare call are masked.
    assert!(
        !none.answer().contains("{\"name\":\"get_current_time\""),
        "{}",
        none.answer()
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
    assert!(text.contains("\"datetime\""), "dispatched: {text}");
    // Allowed, but arguments that fail the schema are an error result naming the field.
    let unchecked = run(&unchecked_caller(), time(), &allowed_args, "Time?");
    let text = unchecked.of("tool_result")[0]["text"]
        .as_str()
        .expect("text")
        .to_string();
    assert!(
        text.starts_with("Error: invalid arguments for `get_current_time`")
            && text.contains("timezone"),
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

/// Ctrl-C while a tool call runs in `chat` cancels that call on its server (MCP's
/// `notifications/cancelled`, which the fault server logs) and the chat goes on.
#[test]
fn ctrl_c_during_a_chat_tool_call_cancels_it_on_the_server() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;

    let dir = tempfile::tempdir().expect("tmp");
    let model = dir.path().join("model");
    caller_writing("{\"name\":\"hang\",\"arguments\":{}}").write(&model);
    let config = dir.path().join("mcp.json");
    let servers = json!({"mcpServers": {"f": {"command": "python3",
        "args": [kestrel_tests::fault_server()], "include": ["hang"], "alwaysAllow": ["hang"]}}});
    std::fs::write(&config, servers.to_string()).expect("config");
    let mut child = kestrel_tests::kestrel()
        .args(["chat", "--json", "--no-think", "--model"])
        .arg(&model)
        .arg("--config")
        .arg(&config)
        .env("XDG_CACHE_HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chat");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"Wait for it.\n").expect("input");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut next_line = || {
        let mut line = String::new();
        let read = out.read_line(&mut line).expect("stdout");
        assert!(read > 0, "chat ended early");
        line
    };
    while !next_line().contains("\"event\":\"tool_call\"") {}
    // The call is sent as soon as it is parsed; give it a moment to reach the server.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let kill = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    while next_line().trim() != r#"{"event":"cancelled"}"# {}
    // The server hears of it while the chat goes on.
    let log_file = dir.path().join("kestrel/mcp-logs/f.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(&log_file).unwrap_or_default();
        if log.contains("cancelled request") || std::time::Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        log.contains("cancelled request"),
        "notifications/cancelled reached the server: {log}"
    );
    // Still chatting: the next input line is read.
    stdin.write_all(b"/exit\n").expect("exit");
    drop(stdin);
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
}
