//! Chat mode (`--engine-mode chat`) against real engines: llama.cpp's llama-server with its Jinja
//! templates, and vLLM's CPU build with its Qwen3 reasoning parser and Hermes tool-call parser
//! (the engine renders the prompt and parses the reply; Kestrel sends messages and rebuilds the
//! model's text from the reply's fields); and vLLM in token mode, which `auto` picks there.

mod support;

use std::sync::Arc;

use kestrel::backend::{Backend, Embedded, Remote, RemoteOptions, StreamItem, Submission};
use kestrel_engine::{EngineOptions, LoadOptions, Model, SamplingParams, Tokenizer};
use kestrel_prompts::thinking::EARLY_STOP_TEXT;
use kestrel_tests::engine::{LlamaServer, VllmServer};
use kestrel_tests::{coder_gguf, kestrel, time_server};
use serde_json::{Value, json};

/// Qwen's early-stop text up to and with `</think>`: what an engine writes at the budget.
fn early_stop_through_close() -> String {
    let end = EARLY_STOP_TEXT.find("</think>").expect("</think>") + "</think>".len();
    EARLY_STOP_TEXT[..end].to_string()
}

fn events(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn the_tokyo_task_runs_in_chat_mode_on_llama_server() {
    let server = LlamaServer::start_with(&coder_gguf(), 1, 4096, &["--jinja"]);
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("mcp.json");
    let servers = json!({"mcpServers": {"time": {
        "command": time_server(), "args": ["--local-timezone", "UTC"], "exclude": ["convert_time"],
        "autoApprove": ["get_current_time"]}}});
    std::fs::write(&config, servers.to_string()).expect("config");
    let out = kestrel()
        .args(["run", "--model"])
        .arg(coder_gguf())
        .args([
            "--engine",
            &server.url(),
            "--engine-mode",
            "chat",
            "--config",
        ])
        .arg(&config)
        .args(["--json", "--temperature", "0"])
        .args(["--tool-choice", "get_current_time", "--max-rounds", "1"])
        .arg("What time is it in Tokyo?")
        .env("XDG_CACHE_HOME", dir.path())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("engine: llama-server at") && stderr.contains("(chat mode)"),
        "{stderr}"
    );
    let events = events(&out.stdout);
    let of = |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["event"] == kind).collect() };
    // The engine's template offered the tools, its grammar held the named call, its parser read
    // it back as `tool_calls`, and the agent called the real server.
    let calls = of("tool_call");
    assert_eq!(calls.len(), 1, "{events:#?}");
    assert_eq!(calls[0]["name"], "get_current_time");
    assert_eq!(calls[0]["arguments"]["timezone"], "Asia/Tokyo");
    let result = of("tool_result")[0];
    let text = result["text"].as_str().expect("text");
    if result["is_error"] == true {
        // The engine's grammar does not hold every part of the schema; Kestrel's check does.
        assert!(text.contains("invalid arguments"), "{result}");
    } else {
        assert!(text.contains("Asia/Tokyo"), "{result}");
    }
    assert!(!of("final")[0]["text"].as_str().unwrap_or("").is_empty());
    // The second turn's prompt came from the engine's cache (as the engine reports it).
    let turns = of("turn");
    assert_eq!(turns.len(), 2, "{events:#?}");
    let first_prompt = turns[0]["prompt_tokens"].as_u64().expect("tokens");
    let reused = turns[1]["reused_tokens"].as_u64().expect("reused");
    assert!(reused >= first_prompt / 2, "{turns:?}");
}

#[test]
fn the_engines_budget_closes_the_thinking_in_chat_mode_on_llama_server() {
    let script = support::thinking_caller();
    let dir = tempfile::tempdir().expect("tmp");
    let gguf = dir.path().join("scripted.gguf");
    script.write_gguf(&gguf);
    let server = LlamaServer::start_with(&gguf, 1, 2048, &["--jinja"]);
    let args = [
        "--temperature",
        "0",
        "--thinking-budget",
        "10",
        "--max-rounds",
        "1",
        "--allow",
        "time/get_current_time",
    ];
    let run = support::run_in(
        dir.path(),
        &script,
        support::time(),
        &[
            &args[..],
            &["--engine", &server.url(), "--engine-mode", "chat"],
        ]
        .concat(),
        "What time is it?",
    );
    budget_then_call(&run);
}

/// The scripted thinker's run: the engine closed its thinking at the budget with Qwen's text
/// (reported as forced, so the turn counts only the model's thinking), and the call after it
/// reached the time server. (The script then calls again in the final turn, which offers no
/// tools: an engine in chat mode does not hold `tool_choice: none`, so that text is the answer.)
fn budget_then_call(run: &support::Run) {
    let turn = run.of("turn")[0];
    let thinking = turn["thinking_tokens"].as_u64().expect("thinking tokens");
    assert!((10..=12).contains(&thinking), "{turn}");
    let thought = run.thinking();
    assert!(thought.starts_with("Hmm, let me think"), "{thought:?}");
    assert!(
        thought.contains(early_stop_through_close().trim_end_matches("</think>")),
        "{thought:?}"
    );
    let calls = run.of("tool_call");
    assert_eq!(calls[0]["name"], "get_current_time", "{:?}", run.events);
    assert_eq!(calls[0]["arguments"]["timezone"], "UTC");
    let result = run.of("tool_result")[0];
    assert_eq!(result["is_error"], false, "{result}");
    assert!(result["text"].as_str().unwrap_or("").contains("UTC"));
    assert_eq!(run.of("turn").len(), 2, "{:?}", run.events);
    assert!(!run.answer().is_empty());
}

#[test]
fn vllm_runs_the_agent_in_token_mode_and_in_chat_mode() {
    let script = support::thinking_caller();
    let dir = tempfile::tempdir().expect("tmp");
    let model = dir.path().join("model");
    script.write(&model);
    let reasoning = json!({"reasoning_end_str": early_stop_through_close()}).to_string();
    let server = VllmServer::start(
        &model,
        dir.path(),
        &[
            "--reasoning-parser",
            "qwen3",
            "--reasoning-config",
            &reasoning,
            "--enable-auto-tool-choice",
            "--tool-call-parser",
            "hermes",
            "--enable-prompt-tokens-details",
        ],
    );

    // Token mode (`auto` picks it: vLLM returns token ids): Kestrel's prompt ids, its budget by
    // segments, the same greedy ids, thinking and answer as the embedded engine.
    // Long enough to fill cache blocks, so that a repeat is served from vLLM's prefix cache.
    let prompt = format!(
        "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
        "Tell me more. ".repeat(100)
    );
    let generate = |extra: &[&str]| -> Value {
        let out = kestrel()
            .args(["generate", "--model"])
            .arg(&model)
            .args(["--prompt", &prompt, "--max-tokens", "12"])
            .args(["--temperature", "0", "--json"])
            .args(extra)
            .output()
            .expect("generate");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}\n{}", server.log_tail());
        serde_json::from_slice(&out.stdout).expect("one JSON object")
    };
    let local = generate(&[]);
    let remote = generate(&["--engine", &server.url()]);
    assert_eq!(remote["ids"], local["ids"], "greedy ids differ");
    assert_eq!(remote["text"], local["text"]);
    let again = generate(&["--engine", &server.url()]);
    assert!(again["reused_tokens"].as_u64() > Some(0), "{again}");
    // Log-probabilities come back with each token as the embedded engine gives them (both of the
    // raw logits).
    let tokenizer = Tokenizer::from_dir(&model).expect("tokenizer");
    let prompt_ids = tokenizer.encode_raw(&prompt).expect("ids");
    let remote = Remote::connect(tokenizer, RemoteOptions::new(server.url())).expect("connects");
    let loaded = Model::load(&model, &LoadOptions::default()).expect("model");
    let embedded = Embedded::start(Arc::new(loaded), EngineOptions::default()).expect("engine");
    let with_logprobs = |backend: &dyn Backend| {
        let sampling = SamplingParams {
            temperature: 0.0,
            logprobs: Some(2),
            ..SamplingParams::default()
        };
        let mut stream = backend
            .submit(Submission::new(prompt_ids.clone(), 6, sampling))
            .expect("submitted");
        let mut tokens = Vec::new();
        while let Some(item) = stream.next_blocking() {
            if let StreamItem::Token(token) = item.expect("no error") {
                tokens.push(token);
            }
        }
        tokens
    };
    let (theirs, ours) = (with_logprobs(&remote), with_logprobs(&embedded));
    assert_eq!(theirs.len(), ours.len());
    for (t, o) in theirs.iter().zip(&ours) {
        assert_eq!(t.id, o.id);
        let (t, o) = (
            t.logprobs.as_ref().expect("logprobs"),
            o.logprobs.as_ref().expect("logprobs"),
        );
        assert_eq!(t.top.len(), 2);
        assert_eq!(t.top[0].0, o.top[0].0, "the most likely token");
        assert!((t.logprob - o.logprob).abs() < 0.01, "{t:?} vs {o:?}");
    }
    drop(embedded);
    let args = ["--temperature", "0", "--thinking-budget", "10"];
    let on_vllm = support::run_in(
        dir.path(),
        &script,
        json!({}),
        &[&args[..], &["--engine", &server.url()]].concat(),
        "What?",
    );
    assert!(
        on_vllm.stderr.contains("engine: vLLM at") && on_vllm.stderr.contains("(token mode)"),
        "{}",
        on_vllm.stderr
    );
    assert!(
        on_vllm.stderr.contains("structural tag"),
        "{}",
        on_vllm.stderr
    );
    let local = support::run_in(dir.path(), &script, json!({}), &args, "What?");
    assert_eq!(on_vllm.of("turn")[0]["thinking_tokens"], 10);
    assert_eq!(on_vllm.thinking(), local.thinking());
    assert_eq!(on_vllm.answer(), support::ANSWER_TEXT);

    // Chat mode: vLLM's template, its Qwen3 reasoning parser, its budget (closing with Qwen's
    // text, set by --reasoning-config) and its Hermes tool parser.
    let args = [
        "--temperature",
        "0",
        "--thinking-budget",
        "10",
        "--max-rounds",
        "1",
        "--allow",
        "time/get_current_time",
    ];
    let run = support::run_in(
        dir.path(),
        &script,
        support::time(),
        &[
            &args[..],
            &["--engine", &server.url(), "--engine-mode", "chat"],
        ]
        .concat(),
        "What time is it?",
    );
    assert!(
        run.stderr.contains("engine: vLLM at") && run.stderr.contains("(chat mode)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("the engine's thinking_token_budget"),
        "{}",
        run.stderr
    );
    budget_then_call(&run);

    // A raw prompt needs ids: `generate` in chat mode is refused, naming why.
    let out = kestrel()
        .args(["generate", "--model"])
        .arg(&model)
        .args(["--engine", &server.url(), "--engine-mode", "chat"])
        .args(["--prompt", "Hi", "--max-tokens", "4"])
        .output()
        .expect("generate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("raw prompts need an engine in token mode"),
        "{stderr}"
    );
}
