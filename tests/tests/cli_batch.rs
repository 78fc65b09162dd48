//! `kestrel batch` end to end on the tiny Qwen3 with the real tokenizer: results per task, the
//! shared prompt prefix prefilled once, per-task overrides, and resuming.

use kestrel_tests::{assets, fault_server, fixtures, kestrel};
use serde_json::{Value, json};

fn results(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("results")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[test]
fn batch_runs_each_task_once_shares_the_prefix_and_resumes() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("mcp.json");
    let servers = json!({"mcpServers": {"f": {"command": "python3", "args": [fault_server()], "include": ["pid"]}}});
    std::fs::write(&config, servers.to_string()).expect("config");
    let tasks = dir.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        [
            json!({"task": "First task.", "id": "a"}),
            json!({"task": "Second task.", "tool_choice": "pid", "max_rounds": 1}),
            json!({"task": "Third task.", "id": "c", "max_tokens": 16}),
        ]
        .map(|t| t.to_string())
        .join("\n"),
    )
    .expect("tasks");
    let out = dir.path().join("results.jsonl");
    let batch = || {
        kestrel()
            .arg("batch")
            .arg(&tasks)
            .arg("--model")
            .arg(fixtures().join("models/qwen3-tiny-fullvocab"))
            .arg("--tokenizer")
            .arg(assets().join("qwen3-tokenizer"))
            .arg("--config")
            .arg(&config)
            .args(["--no-think", "--temperature", "0", "--max-tokens", "40"])
            // The server is not trusted: without this the call is refused.
            .args(["--allow", "pid"])
            .arg("--out")
            .arg(&out)
            .env("XDG_CACHE_HOME", dir.path())
            .output()
            .expect("run")
    };
    let first = batch();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let lines = results(&out);
    let ids: Vec<&Value> = lines.iter().map(|l| &l["id"]).collect();
    assert_eq!(ids, [&json!("a"), &json!(2), &json!("c")]);
    assert!(lines.iter().all(|l| l["error"].is_null()));
    // The second task was forced to call `pid` once, then answered without tools.
    let calls = lines[1]["tool_calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["name"], "pid");
    assert!(
        calls[0]["result"]
            .as_str()
            .is_some_and(|r| r.parse::<u32>().is_ok())
    );
    assert_eq!(lines[1]["limited_by"], "1 tool rounds");
    // Tasks after the first reuse the cached system prompt and tool schemas.
    let first_prompt = lines[0]["turns"][0]["prompt_tokens"].as_u64().expect("n");
    for l in &lines[1..] {
        let reused = l["turns"][0]["reused_tokens"].as_u64().expect("n");
        assert!(
            reused > 100 && reused < first_prompt,
            "{reused} of {first_prompt}"
        );
    }

    // Nothing left to do: the results stay as they are.
    let again = batch();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("3 already in"));
    assert_eq!(results(&out).len(), 3);

    // A cut last line (an interrupted write) is repaired and that task runs again.
    let text = std::fs::read_to_string(&out).expect("read");
    let cut = &text[..text.len() - 10];
    std::fs::write(&out, cut).expect("cut");
    let resumed = batch();
    assert!(resumed.status.success());
    assert!(String::from_utf8_lossy(&resumed.stderr).contains("1 to run"));
    let lines = results(&out);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2]["id"], "c");
}

#[test]
fn bad_task_lines_name_the_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let tasks = dir.path().join("tasks.jsonl");
    std::fs::write(&tasks, "{\"task\": \"ok\"}\n{\"tsak\": \"typo\"}\n").expect("tasks");
    let out = kestrel()
        .arg("batch")
        .arg(&tasks)
        .args(["--model", "/nonexistent"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("tasks.jsonl:2") && stderr.contains("tsak"),
        "{stderr}"
    );
}
