//! Kestrel on a remote engine: llama.cpp's real `llama-server` serving the test GGUF on loopback,
//! driven in token mode. Greedy ids equal the embedded engine's; the agent's prompts are the ids
//! the embedded engine renders; the thinking budget, the constrained calls and the engine's
//! prompt cache work over the wire; and a stand-in in front of the server (the faults are the
//! point) shows retries, resumed streams and clear errors.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kestrel::backend::{
    Backend, FinishReason, Finished, Remote, RemoteOptions, StreamItem, Submission,
};
use kestrel_engine::{GeneratedToken, SamplingParams, Tokenizer};
use kestrel_prompts::constrain::{GrammarTokenizer, NamedFunction, ToolCallHook, ToolChoice};
use kestrel_prompts::messages::ChatRequest;
use kestrel_prompts::template::ChatTemplate;
use kestrel_prompts::thinking::{EARLY_STOP_TEXT, ThinkingBudgetHook};
use kestrel_prompts::xml_calls::{CallFormat, parameter_schemas, parse_xml_call};
use kestrel_tests::engine::LlamaServer;
use kestrel_tests::{
    coder_gguf, fixtures, hf_cache, ids, kestrel, mcp_servers, node, npm_server, qwen3_tokenizer,
    time_server,
};
use serde_json::{Value, json};

const HAIKU: &str =
    "<|im_start|>user\nWrite a haiku about rust.<|im_end|>\n<|im_start|>assistant\n";

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    }
}

fn connect(url: &str) -> Remote {
    let tokenizer = Tokenizer::load(&coder_gguf()).expect("the GGUF's tokenizer");
    Remote::connect(tokenizer, RemoteOptions::new(url)).expect("connects")
}

/// Every token of a generation, and how it ended.
fn collect(backend: &dyn Backend, submission: Submission) -> (Vec<GeneratedToken>, Finished) {
    let mut stream = backend.submit(submission).expect("submitted");
    let mut tokens = Vec::new();
    loop {
        match stream.next_blocking().expect("an item").expect("no error") {
            StreamItem::Token(t) => tokens.push(t),
            StreamItem::Finished(f) => return (tokens, f),
        }
    }
}

fn generate_json(args: &[&str]) -> Value {
    let out = kestrel()
        .arg("generate")
        .arg("--model")
        .arg(coder_gguf())
        .args([
            "--prompt",
            HAIKU,
            "--max-tokens",
            "24",
            "--temperature",
            "0",
            "--json",
        ])
        .args(args)
        .output()
        .expect("generate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn generate_on_the_engine_gives_the_embedded_engines_greedy_ids() {
    let server = LlamaServer::start(&coder_gguf(), 1, 1024);
    let local = generate_json(&[]);
    let remote = generate_json(&["--engine", &server.url()]);
    assert_eq!(remote["prompt_ids"], local["prompt_ids"]);
    let (local_ids, remote_ids) = (ids(&local["ids"]), ids(&remote["ids"]));
    assert!(local_ids.len() >= 10, "{local}");
    assert_eq!(remote_ids, local_ids, "greedy ids differ");
    assert_eq!(remote["text"], local["text"]);
    assert_eq!(remote["finish_reason"], local["finish_reason"]);
    // The same prompt again comes from the engine's cache (all but the position it recomputes).
    let again = generate_json(&["--engine", &server.url()]);
    let (reused, prompt) = (
        again["reused_tokens"].as_u64().expect("reused"),
        again["prompt_tokens"].as_u64().expect("prompt"),
    );
    assert!(reused + 1 >= prompt, "{again}");
}

#[test]
fn log_probabilities_come_back_with_each_token_as_the_embedded_engine_gives_them() {
    let server = LlamaServer::start(&coder_gguf(), 1, 1024);
    let remote = connect(&server.url());
    let model = std::sync::Arc::new(
        kestrel_engine::Model::load(&coder_gguf(), &kestrel_engine::LoadOptions::default())
            .expect("model"),
    );
    let embedded =
        kestrel::backend::Embedded::start(model, kestrel_engine::EngineOptions::default())
            .expect("engine");
    let with_logprobs = |backend: &dyn Backend| {
        let mut submission = haiku(&remote);
        submission.max_tokens = 8;
        submission.sampling.logprobs = Some(2);
        collect(backend, submission).0
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
        assert!(t.top[0].1 >= t.top[1].1);
        // Two engines' kernels on the same 4-bit weights: close, not equal (0.16 measured).
        assert!((t.logprob - o.logprob).abs() < 0.3, "{t:?} vs {o:?}");
    }
}

#[test]
fn the_tokyo_task_runs_on_the_engine_with_the_embedded_engines_prompts() {
    let server = LlamaServer::start(&coder_gguf(), 2, 2048);
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("mcp.json");
    let servers = json!({"mcpServers": {"time": {
        "command": time_server(), "args": ["--local-timezone", "UTC"], "exclude": ["convert_time"],
        "autoApprove": ["get_current_time"]}}});
    std::fs::write(&config, servers.to_string()).expect("config");
    let transcript = dir.path().join("run.jsonl");
    let out = kestrel()
        .args(["run", "--model"])
        .arg(coder_gguf())
        .args(["--engine", &server.url(), "--config"])
        .arg(&config)
        .args([
            "--json",
            "--temperature",
            "0",
            "--tool-choice",
            "get_current_time",
        ])
        .args(["--max-rounds", "1", "--transcript"])
        .arg(&transcript)
        .arg("What time is it in Tokyo?")
        .env("XDG_CACHE_HOME", dir.path())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("engine: llama-server at"), "{stderr}");
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let of = |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["event"] == kind).collect() };
    let calls = of("tool_call");
    assert_eq!(calls.len(), 1, "{events:#?}");
    assert_eq!(calls[0]["arguments"]["timezone"], "Asia/Tokyo");
    let result: Value = serde_json::from_str(of("tool_result")[0]["text"].as_str().expect("text"))
        .expect("time JSON");
    let hh_mm = &result["datetime"].as_str().expect("datetime")[11..16];
    let answer = of("final")[0]["text"].as_str().unwrap_or("").to_string();
    assert!(answer.contains(hh_mm), "{hh_mm} in {answer}");
    // The second turn's prompt came from the engine's cache up to the first turn's answer.
    let turns = of("turn");
    assert_eq!(turns.len(), 2);
    let first_prompt = turns[0]["prompt_tokens"].as_u64().expect("tokens");
    let reused = turns[1]["reused_tokens"].as_u64().expect("reused");
    assert!(reused >= first_prompt, "{turns:?}");
    // Every turn sent exactly the ids the embedded engine renders for its request.
    let replay = kestrel()
        .arg("replay")
        .arg(&transcript)
        .arg("--model")
        .arg(coder_gguf())
        .arg("--json")
        .output()
        .expect("replay");
    let checks: Vec<Value> = String::from_utf8_lossy(&replay.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let turns: Vec<&Value> = checks.iter().filter_map(|c| c.get("turn")).collect();
    assert_eq!(
        turns.len(),
        2,
        "{checks:?} {}",
        String::from_utf8_lossy(&replay.stderr)
    );
    for turn in turns {
        assert_eq!(turn["prompt_differs_at"], Value::Null, "{turn}");
    }
}

#[test]
fn the_thinking_budget_closes_the_thinking_and_the_continuation_reuses_the_cache() {
    let server = LlamaServer::start(&coder_gguf(), 1, 1024);
    let remote = connect(&server.url());
    let tokenizer = remote.tokenizer();
    let prompt = tokenizer
        .encode_raw(
            "<|im_start|>user\nPlan a week in Kyoto.<|im_end|>\n<|im_start|>assistant\n<think>\n",
        )
        .expect("prompt");
    let mut budget = ThinkingBudgetHook::new(tokenizer, Some(12), true).expect("budget");
    budget.set_limit(Some(12));
    let early_stop = budget.early_stop_ids().to_vec();
    let counted = budget.thinking_count();
    let before = server.metric("prompt_tokens_total");
    let submission = Submission {
        thinking: Some(budget),
        ..Submission::new(prompt.clone(), 48, greedy())
    };
    let (tokens, finished) = collect(&remote, submission);
    let forced: Vec<u32> = tokens.iter().filter(|t| t.forced).map(|t| t.id).collect();
    assert_eq!(forced, early_stop, "the early-stop text is forced once");
    let first_forced = tokens.iter().position(|t| t.forced).expect("forced");
    assert_eq!(first_forced, 12, "forced after exactly the budget");
    assert_eq!(counted.get(), 12);
    assert!(
        tokens.len() > 12 + early_stop.len(),
        "the answer goes on after it"
    );
    let text: String = tokens.iter().map(|t| t.text.as_str()).collect();
    assert!(text.contains(EARLY_STOP_TEXT), "{text}");
    assert_eq!(finished.generated.len(), tokens.len());
    // The engine computed the prompt once: the continuation prefilled only the forced ids (and
    // the last token it had not yet run).
    let prefilled = server.metric("prompt_tokens_total") - before;
    let at_most = (prompt.len() + early_stop.len() + 2) as f64;
    eprintln!(
        "prompt tokens the engine computed: {prefilled} (prompt {}, forced {}; without its cache {})",
        prompt.len(),
        early_stop.len(),
        2 * prompt.len() + 12 + early_stop.len()
    );
    assert!(
        prefilled <= at_most,
        "{prefilled} prompt tokens computed, at most {at_most} expected"
    );
}

fn weather_tools() -> Vec<Value> {
    vec![json!({"type": "function", "function": {
        "name": "get_temperature", "description": "The temperature in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "kelvin"]}},
        "required": ["city", "unit"]}}})]
}

/// The Qwen2.5 prompt asking for a call the schema forbids (Fahrenheit).
fn weather_prompt(remote: &Remote) -> Vec<u32> {
    let mut request = ChatRequest::from_json(
        r#"{"messages": [{"role": "user", "content": "What is the temperature in Oslo in fahrenheit? Use the tool with unit fahrenheit."}]}"#,
    )
    .expect("request");
    request.tools = weather_tools();
    let template = ChatTemplate::new(remote.tokenizer().chat_template().expect("a template"))
        .expect("template");
    template
        .prompt(&request, remote.tokenizer())
        .expect("prompt")
        .ids
}

/// The arguments of the call in `text`, written with tags or without (the whole answer).
fn call_arguments(text: &str) -> Value {
    let body = match text.split_once("<tool_call>") {
        Some((_, rest)) => rest.split("</tool_call>").next().unwrap_or(rest),
        None => text,
    };
    let call: Value = serde_json::from_str(body.trim())
        .unwrap_or_else(|e| panic!("the call is not JSON ({e}): {text:?}"));
    call["arguments"].clone()
}

#[test]
fn calls_follow_the_schema_over_the_wire_and_none_forbids_them() {
    let server = LlamaServer::start(&coder_gguf(), 1, 2048);
    let remote = connect(&server.url());
    let grammar = GrammarTokenizer::new(remote.tokenizer(), remote.vocab_size()).expect("grammar");
    let prompt = weather_prompt(&remote);
    let run = |choice: ToolChoice, constrain: bool| {
        let hook =
            ToolCallHook::new(&grammar, &weather_tools(), &choice, false, false).expect("hook");
        let submission = Submission {
            tool_calls: constrain.then_some(hook),
            ..Submission::new(prompt.clone(), 64, greedy())
        };
        let (tokens, _) = collect(&remote, submission);
        tokens.iter().map(|t| t.text.as_str()).collect::<String>()
    };
    // Unconstrained, the model writes the unit it was asked for, which the schema forbids.
    let free = run(ToolChoice::Unset, false);
    assert_eq!(call_arguments(&free)["unit"], "fahrenheit", "{free}");
    // Under the engine's lazy grammar, the call is in the schema.
    let constrained = run(ToolChoice::Unset, true);
    let arguments = call_arguments(&constrained);
    assert!(
        ["celsius", "kelvin"].contains(&arguments["unit"].as_str().unwrap_or("")),
        "{constrained}"
    );
    assert_eq!(arguments["city"], "Oslo");
    // A named choice makes the answer the call.
    let named = run(
        ToolChoice::Named {
            kind: "function".into(),
            function: NamedFunction {
                name: "get_temperature".into(),
            },
        },
        true,
    );
    assert!(named.starts_with("<tool_call>"), "{named}");
    // `none`: no call starts.
    let none = run(
        ToolChoice::Mode(kestrel_prompts::constrain::ToolChoiceMode::None),
        true,
    );
    assert!(!none.contains("<tool_call>"), "{none}");
}

/// Qwen3-Coder's XML form over the wire: the same request rendered with Qwen3-Coder's template
/// (its XML instructions); under the engine's grammar in that form a named call is an XML call of
/// the tool with a unit from the enum, and a call the model opens itself is one too.
#[test]
fn xml_calls_follow_the_schema_over_the_wire() {
    let server = LlamaServer::start(&coder_gguf(), 1, 2048);
    let remote = connect(&server.url());
    let grammar = GrammarTokenizer::new(remote.tokenizer(), remote.vocab_size()).expect("grammar");
    let template = ChatTemplate::new(&kestrel_tests::llama_cpp_template("Qwen3-Coder.jinja"))
        .expect("Qwen3-Coder's template");
    let mut request = ChatRequest::from_json(
        r#"{"messages": [{"role": "user", "content": "What is the temperature in Oslo in fahrenheit? Use the tool with unit fahrenheit."}]}"#,
    )
    .expect("request");
    request.tools = weather_tools();
    let prompt = template
        .prompt(&request, remote.tokenizer())
        .expect("prompt")
        .ids;
    let schemas = parameter_schemas(&weather_tools());
    let named = ToolChoice::Named {
        kind: "function".into(),
        function: NamedFunction {
            name: "get_temperature".into(),
        },
    };
    for choice in [named, ToolChoice::Unset] {
        let hook = ToolCallHook::for_format(
            CallFormat::Xml,
            &grammar,
            &weather_tools(),
            &choice,
            false,
            false,
        )
        .expect("hook");
        let errors = hook.errors();
        let submission = Submission {
            tool_calls: Some(hook),
            ..Submission::new(prompt.clone(), 80, greedy())
        };
        let (tokens, _) = collect(&remote, submission);
        let text: String = tokens.iter().map(|t| t.text.as_str()).collect();
        assert!(errors.take().is_empty(), "the grammar was taken: {text}");
        let Some((_, rest)) = text.split_once("<tool_call>") else {
            assert_eq!(choice, ToolChoice::Unset, "a named choice calls: {text}");
            continue;
        };
        if choice != ToolChoice::Unset {
            // The whole answer is the call, in the XML form (this model was taught JSON).
            assert!(
                text.starts_with("<tool_call>\n<function=get_temperature>\n<parameter=city>\n"),
                "{text:?}"
            );
        }
        let body = rest.split("</tool_call>").next().unwrap_or(rest);
        let (name, arguments) = parse_xml_call(body, &schemas)
            .unwrap_or_else(|e| panic!("not an XML call ({e}): {text:?}"));
        assert_eq!(name, "get_temperature", "{text}");
        let unit = arguments.get("unit").and_then(Value::as_str).unwrap_or("");
        assert!(["celsius", "kelvin"].contains(&unit), "{text}");
        assert!(arguments.contains_key("city"), "{text}");
    }
}

#[test]
fn an_engine_with_another_tokenizer_is_refused_naming_both() {
    let server = LlamaServer::start(&coder_gguf(), 1, 512);
    let qwen3 = Tokenizer::load(&qwen3_tokenizer()).expect("qwen3 tokenizer");
    let error = Remote::connect(qwen3, RemoteOptions::new(server.url()))
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains(&server.root()), "{error}");
    assert!(
        error.contains("qwen2.5-coder-0.5b-instruct.gguf"),
        "{error}"
    );
    assert!(error.contains("qwen3-tokenizer"), "{error}");
    assert!(error.contains("tokenizes differently"), "{error}");
    // Something that is not llama-server is named as such.
    let nothing = RemoteOptions {
        attempts: 1,
        ..RemoteOptions::new(format!(
            "http://127.0.0.1:{}/v1",
            kestrel_tests::engine::free_port()
        ))
    };
    let error = Remote::connect(Tokenizer::load(&coder_gguf()).expect("tokenizer"), nothing)
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("is not llama.cpp's llama-server"), "{error}");
}

/// The stand-in in front of `server`, and its port.
struct Proxy {
    child: Child,
    url: String,
}

impl Proxy {
    fn start(server: &LlamaServer, mode: &[&str], log: Option<&Path>) -> Self {
        let mut command = Command::new("python3");
        command
            .arg(fixtures().join("engine/faulty_proxy.py"))
            .arg(server.root())
            .args(mode)
            .stdout(Stdio::piped());
        if let Some(log) = log {
            command.env("PROXY_LOG", log);
        }
        let mut child = command.spawn().expect("proxy");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("port");
        let url = format!("http://127.0.0.1:{}/v1", line.trim());
        Self { child, url }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn haiku(remote: &Remote) -> Submission {
    let prompt = remote.tokenizer().encode_raw(HAIKU).expect("prompt");
    Submission::new(prompt, 24, greedy())
}

#[test]
fn busy_cut_and_silent_engines_are_retried_and_nothing_is_lost() {
    let server = LlamaServer::start(&coder_gguf(), 2, 1024);
    let direct = connect(&server.url());
    let (_, reference) = collect(&direct, haiku(&direct));
    assert_eq!(reference.reason, FinishReason::Stop);
    let dir = tempfile::tempdir().expect("tmp");
    for mode in [&["busy", "2"][..], &["cut", "5"], &["hang", "3"]] {
        let log = dir.path().join(format!("{}.jsonl", mode[0]));
        let proxy = Proxy::start(&server, mode, Some(&log));
        let tokenizer = Tokenizer::load(&coder_gguf()).expect("tokenizer");
        let options = RemoteOptions {
            idle_timeout: Duration::from_secs(2),
            backoff: Duration::from_millis(10),
            ..RemoteOptions::new(proxy.url.clone())
        };
        let remote = Remote::connect(tokenizer, options).expect("connects");
        let (_, finished) = collect(&remote, haiku(&remote));
        assert_eq!(finished.reason, FinishReason::Stop, "{mode:?}");
        assert_eq!(finished.generated, reference.generated, "{mode:?}");
        let requests: Vec<Value> = std::fs::read_to_string(&log)
            .expect("log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("request"))
            .collect();
        let prompt = ids(&requests[0]["prompt"]);
        match mode[0] {
            "busy" => assert_eq!(requests.len(), 3, "two refusals, then the generation"),
            _ => {
                // The second request continues after the tokens the broken stream brought.
                assert_eq!(requests.len(), 2, "{mode:?}");
                let brought = mode[1].parse::<usize>().expect("events");
                let second = ids(&requests[1]["prompt"]);
                assert_eq!(second[..prompt.len()], prompt[..]);
                assert_eq!(
                    second[prompt.len()..],
                    reference.generated[..brought],
                    "{mode:?}"
                );
                assert_eq!(
                    requests[1]["n_predict"].as_u64(),
                    Some((24 - brought) as u64)
                );
            }
        }
    }
}

#[test]
fn an_older_server_is_refused_or_runs_unconstrained_and_says_so() {
    let server = LlamaServer::start(&coder_gguf(), 1, 2048);
    // Without token ids in its answers, Kestrel cannot drive it.
    let no_tokens = Proxy::start(&server, &["no-tokens"], None);
    let error = Remote::connect(
        Tokenizer::load(&coder_gguf()).expect("tokenizer"),
        RemoteOptions::new(no_tokens.url.clone()),
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(error.contains("does not return token ids"), "{error}");
    // A server still loading its model (503) is waited for.
    let loading = Proxy::start(&server, &["loading", "3"], None);
    let options = RemoteOptions {
        backoff: Duration::from_millis(10),
        ..RemoteOptions::new(loading.url.clone())
    };
    Remote::connect(Tokenizer::load(&coder_gguf()).expect("tokenizer"), options)
        .expect("connects once the model is loaded");
    // Without Kestrel's grammars, it generates unconstrained, and says so at the start.
    let no_grammars = Proxy::start(&server, &["no-grammars"], None);
    let remote = Remote::connect(
        Tokenizer::load(&coder_gguf()).expect("tokenizer"),
        RemoteOptions::new(no_grammars.url.clone()),
    )
    .expect("connects");
    assert!(
        remote.info().tool_calls.starts_with("NOT constrained"),
        "{:?}",
        remote.info()
    );
    let grammar = GrammarTokenizer::new(remote.tokenizer(), remote.vocab_size()).expect("grammar");
    let hook = ToolCallHook::new(&grammar, &weather_tools(), &ToolChoice::Unset, false, false)
        .expect("hook");
    let submission = Submission {
        tool_calls: Some(hook),
        ..Submission::new(weather_prompt(&remote), 64, greedy())
    };
    let (tokens, _) = collect(&remote, submission);
    let text: String = tokens.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(call_arguments(&text)["unit"], "fahrenheit", "{text}");
}

#[test]
fn an_engine_that_keeps_failing_is_an_error_naming_it_and_the_run_keeps_its_turns() {
    let server = LlamaServer::start(&coder_gguf(), 1, 2048);
    let down = Proxy::start(&server, &["down"], None);
    let tokenizer = Tokenizer::load(&coder_gguf()).expect("tokenizer");
    let options = RemoteOptions {
        attempts: 3,
        backoff: Duration::from_millis(10),
        ..RemoteOptions::new(down.url.clone())
    };
    let remote = Remote::connect(tokenizer, options).expect("connects");
    let mut stream = remote.submit(haiku(&remote)).expect("submitted");
    let error = loop {
        match stream.next_blocking().expect("an item") {
            Ok(StreamItem::Token(_)) => {}
            Ok(StreamItem::Finished(f)) => panic!("finished: {:?}", f.reason),
            Err(e) => break e.to_string(),
        }
    };
    let root = down.url.trim_end_matches("/v1");
    assert!(
        error.contains(&format!("engine {root}/completion")),
        "{error}"
    );
    assert!(
        error.contains("HTTP 500") && error.contains("the engine is down"),
        "{error}"
    );
    assert!(error.contains("gave up after 3 attempts"), "{error}");
    drop(down);

    // A run whose engine refuses its second turn fails naming the engine and what it said, and
    // its transcript keeps the first turn.
    let refusing = Proxy::start(&server, &["fail-after", "1"], None);
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("mcp.json");
    let servers = json!({"mcpServers": {"time": {
        "command": time_server(), "args": ["--local-timezone", "UTC"],
        "autoApprove": ["get_current_time"]}}});
    std::fs::write(&config, servers.to_string()).expect("config");
    let transcript = dir.path().join("run.jsonl");
    let out = kestrel()
        .args(["run", "--model"])
        .arg(coder_gguf())
        .args(["--engine", &refusing.url, "--config"])
        .arg(&config)
        .args([
            "--json",
            "--temperature",
            "0",
            "--tool-choice",
            "get_current_time",
        ])
        .arg("--transcript")
        .arg(&transcript)
        .arg("What time is it in Tokyo?")
        .env("XDG_CACHE_HOME", dir.path())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("HTTP 400") && stderr.contains("refused on purpose"),
        "{stderr}"
    );
    let lines: Vec<Value> = std::fs::read_to_string(&transcript)
        .expect("transcript")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let event = |kind: &str| lines.iter().any(|l| l["event"]["event"] == kind);
    assert!(
        event("tool_call") && event("tool_result") && event("turn"),
        "{lines:#?}"
    );
    let end = lines.last().expect("an end line");
    assert_eq!(end["kind"], "end");
    assert!(
        end["error"]
            .as_str()
            .unwrap_or("")
            .contains("refused on purpose"),
        "{end}"
    );
}

/// `kestrel serve --engine` on `server` with `model`'s tokenizer, on a free port: the process
/// and its base URL.
fn serve_on(model: &Path, server: &LlamaServer, extra: &[&str]) -> (Child, String) {
    let mut served = kestrel()
        .args(["serve", "--model"])
        .arg(model)
        .args(["--engine", &server.url(), "--port", "0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kestrel serve");
    let mut lines = BufReader::new(served.stderr.take().expect("stderr")).lines();
    let line = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("serving "))
        .expect("the server says where it listens");
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    let base_url = line.rsplit(' ').next().expect("address").trim().to_string();
    (served, base_url)
}

#[test]
fn serve_on_the_engine_answers_the_openai_sdk_and_batch_runs_its_tasks_at_once() {
    let server = LlamaServer::start(&coder_gguf(), 4, 1024);
    let (mut served, base_url) = serve_on(&coder_gguf(), &server, &["--parallel", "4"]);
    let out = Command::new(mcp_servers().join("py/bin/python"))
        .args(["-W", "ignore"])
        .arg(fixtures().join("engine/openai_over_engine.py"))
        .arg(&base_url)
        .output()
        .expect("python");
    let _ = served.kill();
    let _ = served.wait();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");

    // Three tasks, two at a time, each answered.
    let dir = tempfile::tempdir().expect("tmp");
    let tasks = dir.path().join("tasks.jsonl");
    let lines: Vec<String> = ["2 + 2", "3 + 3", "4 + 4"]
        .iter()
        .enumerate()
        .map(|(i, q)| {
            json!({"id": i, "task": format!("What is {q}? Answer with the number.")}).to_string()
        })
        .collect();
    std::fs::write(&tasks, lines.join("\n") + "\n").expect("tasks");
    let out = kestrel()
        .args(["batch", "--model"])
        .arg(coder_gguf())
        .args([
            "--engine",
            &server.url(),
            "--concurrency",
            "2",
            "--temperature",
            "0",
        ])
        .args(["--max-tokens", "64"])
        .arg(&tasks)
        .env("XDG_CACHE_HOME", dir.path())
        .output()
        .expect("batch");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = std::fs::read_to_string(dir.path().join("tasks.results.jsonl"))
        .expect("results")
        .lines()
        .map(|l| serde_json::from_str(l).expect("result"))
        .collect();
    assert_eq!(results.len(), 3);
    for result in &results {
        let id = result["id"].as_u64().expect("id") as usize;
        let answer = result["answer"].as_str().unwrap_or("");
        assert!(answer.contains(["4", "6", "8"][id]), "{result}");
    }
}

/// A scripted Qwen3 (the real Qwen3 tokenizer, `<think>` a token) as a GGUF that llama-server
/// serves, and its model directory (for Kestrel's tokenizer).
fn scripted_server(script: &support::Script, dir: &Path) -> LlamaServer {
    script.write(&dir.join("model"));
    let gguf = dir.join("scripted.gguf");
    script.write_gguf(&gguf);
    LlamaServer::start(&gguf, 1, 2048)
}

#[test]
fn a_scripted_qwen3_on_the_engine_thinks_within_its_budget_as_on_the_embedded_engine() {
    let script = support::endless_thinker();
    let dir = tempfile::tempdir().expect("tmp");
    let server = scripted_server(&script, dir.path());
    // Kestrel's tokenizer check passes: the GGUF tokenizes as the Qwen3 tokenizer does.
    let args = ["--temperature", "0", "--thinking-budget", "10"];
    let remote = support::run_in(
        dir.path(),
        &script,
        json!({}),
        &[&args[..], &["--engine", &server.url()]].concat(),
        "What?",
    );
    let local = support::run_in(dir.path(), &script, json!({}), &args, "What?");
    assert_eq!(remote.of("turn")[0]["thinking_tokens"], 10);
    assert_eq!(remote.answer(), support::ANSWER_TEXT);
    assert_eq!(remote.thinking(), local.thinking());
    assert_eq!(remote.answer(), local.answer());
}

#[test]
fn a_response_format_holds_after_the_thinking_over_the_wire() {
    // The thinking closed by the budget (the grammar then applies from the next token), and by
    // the model itself (the engine's grammar is triggered by `</think>`).
    for script in [
        support::endless_thinker(),
        support::endless_thinker_that_stops(),
    ] {
        answer_in_format(&script);
    }
}

fn answer_in_format(script: &support::Script) {
    let dir = tempfile::tempdir().expect("tmp");
    let server = scripted_server(script, dir.path());
    let (mut served, base_url) = serve_on(&dir.path().join("model"), &server, &[]);
    let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}},
                        "required": ["ok"], "additionalProperties": false});
    let (status, answer) = kestrel_tests::engine::post_json(
        &format!("{base_url}/chat/completions"),
        &json!({"model": "m", "messages": [{"role": "user", "content": "What?"}],
                "temperature": 0, "max_tokens": 80,
                "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}}),
    );
    let _ = served.kill();
    let _ = served.wait();
    assert_eq!(status, 200, "{answer}");
    let message = &answer["choices"][0]["message"];
    // The model thought, then the answer followed the schema.
    assert!(
        message["reasoning_content"]
            .as_str()
            .unwrap_or("")
            .contains("Hmm"),
        "{answer}"
    );
    let content: Value = serde_json::from_str(message["content"].as_str().expect("content"))
        .unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {answer}"));
    assert!(content["ok"].is_boolean(), "{content}");
    assert_eq!(content.as_object().map(|o| o.len()), Some(1), "{content}");
}

#[test]
fn a_servers_sampling_request_is_answered_by_the_remote_engine() {
    use kestrel::agent::{ApprovalPolicy, ModelSamplingHandler};
    use kestrel::mcp::{HostOptions, McpConfig, McpHost, SamplingHandle};
    let server = LlamaServer::start(&coder_gguf(), 1, 1024);
    let remote = connect(&server.url());
    let policy = ApprovalPolicy {
        allow: vec!["e/sampling".into()],
        ..ApprovalPolicy::default()
    };
    let sampler =
        ModelSamplingHandler::new(std::sync::Arc::new(remote), policy, None).expect("sampler");
    let include = ["trigger-sampling-request"];
    let text = json!({"mcpServers": {"e": {"command": node(),
        "args": [npm_server("server-everything"), "stdio"],
        "include": include, "alwaysAllow": include}}})
    .to_string();
    let config = McpConfig::parse(&text, false, Path::new("agent.json")).expect("config");
    let logs = tempfile::tempdir().expect("tmp");
    let options = HostOptions {
        log_dir: logs.path().to_path_buf(),
        sampling: Some(SamplingHandle(std::sync::Arc::new(sampler))),
        ..HostOptions::from_config(&config)
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (text, is_error) = runtime.block_on(async {
        let host = McpHost::start(&config, options).await;
        let args = json!({"prompt": "Say hello.", "maxTokens": 12});
        let result = host
            .call("e", "trigger-sampling-request", args, None)
            .await
            .map(|o| (o.rendered.text, o.rendered.is_error))
            .expect("call");
        host.shutdown().await;
        result
    });
    assert!(!is_error, "{text}");
    let answer: Value = serde_json::from_str(&text[text.find('{').expect("JSON")..]).expect("JSON");
    assert_eq!(answer["role"], "assistant");
    assert_eq!(answer["model"], "qwen2.5-coder-0.5b-instruct");
    assert!(
        !answer["content"]["text"]
            .as_str()
            .unwrap_or("")
            .trim()
            .is_empty(),
        "{answer}"
    );
}

#[test]
fn the_engine_needs_only_the_tokenizer_of_a_hub_model() {
    let server = LlamaServer::start(&coder_gguf(), 1, 512);
    let home = tempfile::tempdir().expect("tmp");
    hf_cache(
        home.path(),
        "kestrel-test/coder-GGUF",
        &[("coder-0.5b-Q5_0.gguf", coder_gguf())],
    );
    // Nothing listens on the hub endpoint: what is used comes from the cache, and no weights
    // are fetched for a model the engine serves.
    let generate = |model: &str| {
        kestrel()
            .args([
                "generate",
                "--json",
                "--max-tokens",
                "4",
                "--temperature",
                "0",
            ])
            .args([
                "--prompt",
                HAIKU,
                "--engine",
                &server.url(),
                "--model",
                model,
            ])
            .env("HF_HOME", home.path())
            .env("HF_ENDPOINT", "http://127.0.0.1:9")
            .env_remove("HF_TOKEN")
            .output()
            .expect("generate")
    };
    let out = generate("kestrel-test/coder-GGUF:q5_0");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(ids(&value["ids"]).len(), 4);
    // A repo whose tokenizer cannot be had says what to do.
    let out = generate("kestrel-test/other-GGUF:q4_k_m");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("kestrel-test/other-GGUF") && stderr.contains("--tokenizer"),
        "{stderr}"
    );
    // No --model: the engine's tokenizer must be named.
    let out = kestrel()
        .args(["generate", "--prompt", "Hi", "--engine", &server.url()])
        .output()
        .expect("generate");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--engine needs --model"), "{stderr}");
}

#[test]
fn a_cancelled_or_timed_out_generation_ends_at_once_while_the_engine_is_silent() {
    let server = LlamaServer::start(&coder_gguf(), 1, 1024);
    let silent = Proxy::start(&server, &["hang", "3"], None);
    let remote = Remote::connect(
        Tokenizer::load(&coder_gguf()).expect("tokenizer"),
        RemoteOptions::new(silent.url.clone()),
    )
    .expect("connects");
    let submitted = std::time::Instant::now();
    let mut stream = remote.submit(haiku(&remote)).expect("submitted");
    let canceller = stream.canceller();
    let mut tokens = 0;
    let finished = loop {
        match stream.next_blocking().expect("an item").expect("no error") {
            StreamItem::Token(_) => {
                tokens += 1;
                if tokens == 3 {
                    // The engine now sends nothing (for the default ten minutes of idle time).
                    let canceller = canceller.clone();
                    std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(500));
                        canceller.cancel();
                    });
                }
            }
            StreamItem::Finished(f) => break f,
        }
    };
    assert_eq!(finished.reason, FinishReason::Cancelled);
    assert_eq!(finished.generated.len(), 3);
    assert!(
        submitted.elapsed() < Duration::from_secs(30),
        "{:?}",
        submitted.elapsed()
    );

    // `run` on Ctrl-C (SIGINT) stops waiting for the silent engine and says it was cancelled.
    let silent = Proxy::start(&server, &["hang", "3"], None);
    let started = std::time::Instant::now();
    let mut run = kestrel()
        .args(["run", "--json", "--model"])
        .arg(coder_gguf())
        .args([
            "--engine",
            &silent.url,
            "--temperature",
            "0",
            "Write a haiku about rust.",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run");
    let mut lines = BufReader::new(run.stdout.take().expect("stdout")).lines();
    let mut texts = 0;
    while texts < 3 {
        let line = lines.next().expect("a line").expect("read");
        texts += usize::from(line.contains("\"event\":\"text\""));
    }
    let interrupted = Command::new("kill")
        .args(["-INT", &run.id().to_string()])
        .status()
        .expect("kill");
    assert!(interrupted.success());
    let status = run.wait().expect("exit");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(!status.success());
    assert!(rest.iter().any(|l| l.contains("cancelled")), "{rest:?}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );

    // `--max-time` cuts the turn while the engine is silent (it would otherwise be waited for up
    // to --engine-timeout), says so, and the run ends with what was written.
    let silent = Proxy::start(&server, &["hang", "3"], None);
    let started = std::time::Instant::now();
    let out = kestrel()
        .args(["run", "--json", "--model"])
        .arg(coder_gguf())
        .args(["--engine", &silent.url, "--engine-timeout", "120"])
        .args(["--max-time", "3", "--temperature", "0"])
        .arg("Write a haiku about rust.")
        .output()
        .expect("run");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("cut: the task's wall time (--max-time) ran out"),
        "{stdout}"
    );
    assert!(stdout.contains("\"event\":\"final\""), "{stdout}");
    assert!(elapsed < Duration::from_secs(60), "{elapsed:?}");
}
