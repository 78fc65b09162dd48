//! A model whose template is Qwen3-Coder's writes its calls in the XML form: `kestrel run` keeps
//! them inside the tool's schema while they are written, parses them (values typed by the
//! schema), dispatches them to a real MCP server, and renders the call and its result back in the
//! template's own form for the next turn.
//!
//! The model is the tiny random Qwen3 fixture given Qwen3-Coder's template (llama.cpp's copy)
//! through `--tokenizer`; `--tool-choice get-env` makes its first turn a call of
//! server-everything's `get-env`, which only the constraint can make well-formed. (Typed values
//! on this model are checked through `serve` in serve.rs: a random model given an unbounded
//! number writes digits until its limit.)

use kestrel_tests::{fixtures, kestrel, node, npm_server, qwen3_coder_tokenizer};
use serde_json::{Value, json};

#[test]
fn an_xml_call_reaches_the_server_and_comes_back_in_the_templates_form() {
    let dir = tempfile::tempdir().expect("tmp");
    let tokenizer = qwen3_coder_tokenizer(dir.path());
    let config = dir.path().join("mcp.json");
    let servers = json!({"mcpServers": {"e": {"command": node(),
        "args": [npm_server("server-everything"), "stdio"], "include": ["get-env"],
        "alwaysAllow": ["get-env"]}}});
    std::fs::write(&config, servers.to_string()).expect("config");
    let transcript = dir.path().join("transcript.jsonl");
    let out = kestrel()
        .args(["run", "--json", "--model"])
        .arg(fixtures().join("models/qwen3-tiny-fullvocab"))
        .arg("--tokenizer")
        .arg(&tokenizer)
        .arg("--config")
        .arg(&config)
        .arg("--transcript")
        .arg(&transcript)
        .args(["--tool-choice", "get-env", "--max-rounds", "2"])
        .args(["--temperature", "0", "--max-turn-tokens", "60"])
        .arg("Show the server's environment.")
        .env("XDG_CACHE_HOME", dir.path())
        .output()
        .expect("kestrel run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("event"))
        .collect();
    let of = |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["event"] == kind).collect() };
    let calls = of("tool_call");
    assert!(!calls.is_empty(), "{events:?}");
    assert_eq!(calls[0]["name"], "get-env");
    let results = of("tool_result");
    assert_eq!(results[0]["is_error"], false, "{results:?}");
    // The server's environment: the variables it was started with.
    let result = results[0]["text"].as_str().expect("text");
    assert!(result.contains("PATH"), "{result}");

    // The second turn's prompt holds the call in the XML form and its result.
    let lines: Vec<Value> = std::fs::read_to_string(&transcript)
        .expect("transcript")
        .lines()
        .map(|l| serde_json::from_str(l).expect("line"))
        .collect();
    let end = lines.iter().find(|l| l["kind"] == "end").expect("end line");
    let second = end["records"]
        .as_array()
        .and_then(|records| records.iter().find(|r| r["turn"] == 2))
        .unwrap_or_else(|| panic!("a second turn: {end}"));
    let messages = second["request"]["messages"].as_array().expect("messages");
    assert!(messages.iter().any(|m| m["role"] == "tool"), "{messages:?}");
    let ids: Vec<u32> = second["prompt_ids"]
        .as_array()
        .expect("prompt ids")
        .iter()
        .map(|v| v.as_u64().expect("id") as u32)
        .collect();
    let text = kestrel_engine::Tokenizer::from_dir(&tokenizer)
        .expect("tokenizer")
        .decode(&ids)
        .expect("decode");
    assert!(
        text.contains("<tool_call>\n<function=get-env>\n</function>\n</tool_call>"),
        "{text}"
    );
    assert!(text.contains("<tool_response>\n"), "{text}");
}
