//! The agent flags, each through `kestrel run` (or `batch`) on a scripted Qwen3 checkpoint.

mod support;

use support::*;

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
    // The first turn is cut where the time ran out (before its call), and the task ends with an
    // answer turn, without tools, in the grace that follows.
    assert_eq!(timed.of("tool_call").len(), 0, "{:?}", timed.events);
    let notes = timed.notes();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("turn 1 cut: the task's wall time (--max-time) ran out")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("limit reached (0.001 s of wall time)")),
        "{notes:?}"
    );
    assert_eq!(timed.of("final").len(), 1, "{:?}", timed.events);
}

#[test]
fn the_system_prompt_flag_sets_one_and_kestrel_adds_none() {
    let dir = tempfile::tempdir().expect("tmp");
    let transcript = dir.path().join("run.jsonl");
    // The first message of the conversation the transcript's end line holds, with `--system`.
    let first_message = |system: Option<&str>| {
        let path = transcript.to_str().expect("path");
        let mut args = vec![
            "--no-think",
            "--max-turn-tokens",
            "20",
            "--transcript",
            path,
        ];
        if let Some(system) = system {
            args.extend(["--system", system]);
        }
        run_in(dir.path(), &endless_thinker(), json!({}), &args, "What?");
        let end: Value = std::fs::read_to_string(&transcript)
            .expect("transcript")
            .lines()
            .last()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .expect("end line");
        end["messages"][0].clone()
    };
    let given = first_message(Some("Be terse."));
    assert_eq!(
        (&given["role"], &given["content"]),
        (&json!("system"), &json!("Be terse."))
    );
    let none = first_message(Some(""));
    assert_eq!(none["role"], "user", "--system \"\" is no system prompt");
    // Without the flag the template's own default applies (Qwen3's has none).
    let default = first_message(None);
    assert_eq!(default["role"], "user", "{default}");
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
