//! `kestrel serve` driven by the official OpenAI SDK (PyPI `openai`, installed by
//! scripts/fetch-mcp-servers) with the Qwen2.5-Coder GGUF: tool calls in `tool_calls` (whole and
//! streamed, reassembled by the SDK's helper), a tool result round trip reusing the cache, streamed
//! text with usage, stop sequences, errors as the SDK's exception types, the API key, concurrent
//! clients. The checks live in tests/fixtures/serve/openai_client.py; the official Anthropic SDK
//! (PyPI `anthropic`) does the same through the Messages API (anthropic_client.py), and LangGraph's
//! ReAct agent runs a two-call task through it (langgraph_agent.py).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};

use kestrel_tests::{coder_gguf, fixtures, kestrel, mcp_servers, time_server};
use serde_json::Value;

/// A running server, killed when dropped.
struct Served {
    child: Child,
    base_url: String,
    /// The server's stderr lines after the one saying where it listens.
    logs: Arc<Mutex<Vec<String>>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(extra: &[&str]) -> Served {
    serve_logging(extra, "off")
}

/// A server whose logs are filtered by `filter` (`KESTREL_LOG`).
fn serve_logging(extra: &[&str], filter: &str) -> Served {
    let model = coder_gguf();
    serve_model(&[OsStr::new("--model"), model.as_os_str()], extra, filter)
}

/// A server of the model `model_args` name.
fn serve_model(model_args: &[&OsStr], extra: &[&str], filter: &str) -> Served {
    let mut child = kestrel()
        .env("KESTREL_LOG", filter)
        .arg("serve")
        .args(model_args)
        .args(["--port", "0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kestrel serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let line = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("serving "))
        .expect("the server says where it listens");
    // Keep draining stderr so the server never blocks on it.
    let logs = Arc::new(Mutex::new(Vec::new()));
    let kept = logs.clone();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            kept.lock().expect("logs").push(line);
        }
    });
    let base_url = line.rsplit(' ').next().expect("address").trim().to_string();
    Served {
        child,
        base_url,
        logs,
    }
}

/// Runs a Python fixture of tests/fixtures/serve (the SDKs' venv) with `args`; the JSON summary
/// it prints once every check in it passed.
fn run_fixture(script: &str, args: &[&str]) -> Value {
    let out = std::process::Command::new(mcp_servers().join("py/bin/python"))
        .args(["-W", "ignore"])
        .arg(fixtures().join("serve").join(script))
        .args(args)
        .output()
        .expect("python");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{script}: {stdout}\n{stderr}");
    serde_json::from_str(stdout.trim()).expect("results JSON")
}

#[test]
fn the_openai_sdk_gets_calls_streams_errors_and_cached_prefixes() {
    let served = serve(&["--api-key", "test-key", "--parallel", "8"]);
    let results = run_fixture("openai_client.py", &[&served.base_url, "test-key"]);
    assert_eq!(results["call"]["name"], "get_weather");
    assert_eq!(results["call"]["arguments"]["city"], "Paris");
    assert!(
        results["cached_tokens"].as_u64().is_some_and(|n| n > 100),
        "{results}"
    );
}

/// A model whose template is Qwen3-Coder's (a tiny random Qwen3 given that template): its calls
/// are constrained in the XML form and reach the OpenAI SDK as ordinary `tool_calls`, whole and
/// streamed, with typed arguments in their schemas; a round trip renders them back.
#[test]
fn qwen3_coder_xml_calls_reach_the_openai_sdk_as_tool_calls() {
    let dir = tempfile::tempdir().expect("tmp");
    let tokenizer = kestrel_tests::qwen3_coder_tokenizer(dir.path());
    let model = fixtures().join("models/qwen3-tiny-fullvocab");
    let served = serve_model(
        &[
            OsStr::new("--model"),
            model.as_os_str(),
            OsStr::new("--tokenizer"),
            tokenizer.as_os_str(),
        ],
        &[],
        "off",
    );
    let results = run_fixture("openai_coder_calls.py", &[&served.base_url]);
    assert_eq!(results["call"]["name"], "get_weather", "{results}");
}

/// Every request gets an id (the client's `x-request-id` when it sends one, else the server's),
/// returned in the response and named by each of its log lines, its generation's included; with
/// `--log-format json` the lines are JSON with the request's span.
#[test]
fn a_request_id_names_the_log_lines_of_its_request() {
    let served = serve_logging(&["--log-format", "json"], "info");
    let script = "import sys, urllib.request as u\n\
        body = b'{\"messages\": [{\"role\": \"user\", \"content\": \"Say hi.\"}], \"max_tokens\": 4}'\n\
        for given in ['trace-me-7', None]:\n\
        \x20   h = {'content-type': 'application/json'}\n\
        \x20   if given: h['x-request-id'] = given\n\
        \x20   r = u.urlopen(u.Request(sys.argv[1] + '/chat/completions', data=body, headers=h))\n\
        \x20   print(r.headers['x-request-id'])\n";
    let out = std::process::Command::new(mcp_servers().join("py/bin/python"))
        .args(["-c", script])
        .arg(&served.base_url)
        .output()
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        ids.first(),
        Some(&"trace-me-7"),
        "the client's id comes back"
    );
    assert!(
        ids.get(1).is_some_and(|id| id.starts_with("req_")),
        "the server makes one otherwise: {ids:?}"
    );
    // The answer is sent before the request's last line is written.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lines_of = |id: &str| -> Vec<Value> {
        served
            .logs
            .lock()
            .expect("logs")
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| {
                l["spans"]
                    .as_array()
                    .is_some_and(|spans| spans.iter().any(|s| s["id"] == id))
            })
            .collect()
    };
    loop {
        let mine = lines_of("trace-me-7");
        let message = |m: &str| mine.iter().find(|l| l["fields"]["message"] == m).cloned();
        if let (Some(generation), Some(answered)) =
            (message("generation done"), message("answered"))
        {
            assert_eq!(
                generation["spans"][0]["path"], "/v1/chat/completions",
                "{generation}"
            );
            assert_eq!(generation["span"]["name"], "generation", "{generation}");
            assert!(
                generation["fields"]["completion_tokens"]
                    .as_u64()
                    .is_some_and(|n| n >= 1)
            );
            assert!(
                generation["fields"]["prompt_tokens"]
                    .as_u64()
                    .is_some_and(|n| n > 5)
            );
            assert_eq!(answered["fields"]["status"], 200, "{answered}");
            assert!(
                !lines_of(ids[1]).is_empty(),
                "the server's own id names its lines too"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no generation and answer lines for trace-me-7 in {:#?}",
            served.logs.lock().expect("logs")
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// With `--otlp-endpoint`, a request's span and its generation's reach an OTLP/HTTP collector
/// as one trace, the generation the request's child, the request carrying its id; a request
/// whose tools the server runs has a turn span per round, parent of its generation and of each
/// tool call (which names its server and tool).
#[test]
fn traces_reach_an_otlp_collector_parent_to_child() {
    let dir = tempfile::tempdir().expect("temp dir");
    let received = dir.path().join("traces.jsonl");
    let mut collector = Killed(
        std::process::Command::new(mcp_servers().join("py/bin/python"))
            .arg(fixtures().join("serve/otlp_receiver.py"))
            .arg(&received)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("collector"),
    );
    let mut port = String::new();
    BufReader::new(collector.0.stdout.take().expect("stdout"))
        .read_line(&mut port)
        .expect("port");
    let endpoint = format!("http://127.0.0.1:{}", port.trim());
    let config = time_config(dir.path());
    let served = serve(&["--otlp-endpoint", &endpoint, "--config", &config]);
    let script = "import sys, urllib.request as u\n\
        body = b'{\"messages\": [{\"role\": \"user\", \"content\": \"Say hi.\"}], \"max_tokens\": 3}'\n\
        h = {'content-type': 'application/json', 'x-request-id': 'traced-1'}\n\
        u.urlopen(u.Request(sys.argv[1] + '/chat/completions', data=body, headers=h)).read()\n\
        body = b'{\"input\": \"What time is it in Tokyo? Use the tool.\", \"max_output_tokens\": 100, \"temperature\": 0, \"tools\": [{\"type\": \"mcp\", \"server_label\": \"time\", \"allowed_tools\": [\"get_current_time\"], \"require_approval\": \"never\"}]}'\n\
        h['x-request-id'] = 'traced-2'\n\
        u.urlopen(u.Request(sys.argv[1] + '/responses', data=body, headers=h)).read()\n";
    let out = std::process::Command::new(mcp_servers().join("py/bin/python"))
        .args(["-c", script])
        .arg(&served.base_url)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Spans are sent in batches, every few seconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (request, generation) = loop {
        let spans: Vec<Value> = std::fs::read_to_string(&received)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .flat_map(|export| {
                let mut spans = Vec::new();
                for resource in export["resourceSpans"].as_array().into_iter().flatten() {
                    for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                        spans.extend(scope["spans"].as_array().into_iter().flatten().cloned());
                    }
                }
                spans
            })
            .collect();
        let attribute = |span: &Value, key: &str| {
            span["attributes"]
                .as_array()
                .and_then(|a| a.iter().find(|kv| kv["key"] == key))
                .map(|kv| kv["value"].clone())
        };
        let request = spans.iter().find(|s| {
            s["name"] == "request"
                && attribute(s, "id").is_some_and(|v| v["stringValue"] == "traced-1")
        });
        let generation = request.and_then(|r| {
            spans
                .iter()
                .find(|s| s["name"] == "generation" && s["parentSpanId"] == r["spanId"])
        });
        // With server-run tools: request -> turn -> generation and tool call.
        let child = |parent: &Value, name: &str| {
            spans
                .iter()
                .find(|s| s["name"] == name && s["parentSpanId"] == parent["spanId"])
                .cloned()
        };
        let looped = spans.iter().find(|s| {
            s["name"] == "request"
                && attribute(s, "id").is_some_and(|v| v["stringValue"] == "traced-2")
        });
        let turn = looped.and_then(|r| child(r, "turn"));
        let call = turn.as_ref().and_then(|t| child(t, "tool_call"));
        let turn_generation = turn.as_ref().and_then(|t| child(t, "generation"));
        if let (Some(request), Some(generation), Some(call), Some(_)) =
            (request, generation, &call, turn_generation)
        {
            assert_eq!(
                attribute(call, "tool").map(|v| v["stringValue"].clone()),
                Some(Value::from("get_current_time")),
                "{call:#}"
            );
            assert_eq!(
                attribute(call, "server").map(|v| v["stringValue"].clone()),
                Some(Value::from("time"))
            );
            break (request.clone(), generation.clone());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no request span with its generation, or request -> turn -> tool call, in {spans:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    assert_eq!(request["traceId"], generation["traceId"]);
}

/// A helper process, killed when the test ends (passed or not).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An agent framework drives the tool loop through the server: LangGraph's prebuilt ReAct agent
/// (PyPI `langgraph` and `langchain-openai`) makes two dependent calls, the second with the
/// first one's result (the checks are in langgraph_agent.py).
#[test]
fn langgraphs_react_agent_makes_dependent_tool_calls() {
    let served = serve(&["--parallel", "2"]);
    let results = run_fixture("langgraph_agent.py", &[&served.base_url]);
    assert!(
        results["outputs"]
            .as_array()
            .is_some_and(|o| o.iter().any(|o| o == "-7 degrees Celsius")),
        "{results}"
    );
}

/// An `mcpServers` file with the real `mcp-server-time` as server `time`, in `dir`.
fn time_config(dir: &std::path::Path) -> String {
    let path = dir.join("mcp.json");
    let config = serde_json::json!({"mcpServers": {"time": {
        "command": time_server(), "args": ["--local-timezone", "UTC"]}}});
    std::fs::write(&path, config.to_string()).expect("config");
    path.to_string_lossy().into_owned()
}

/// With `--config`, requests run MCP tools on the server (openai_mcp.py has the checks): the
/// Responses API's `mcp` tools with listing, calls, streaming, approvals and stateless resends,
/// and Chat Completions' `mcp_rounds`; the real model answers from the real `mcp-server-time`.
#[test]
fn mcp_tools_run_on_the_server_for_both_apis() {
    let dir = tempfile::tempdir().expect("temp dir");
    let served = serve(&["--parallel", "2", "--config", &time_config(dir.path())]);
    let plain = serve(&[]);
    let results = run_fixture("openai_mcp.py", &[&served.base_url, &plain.base_url]);
    for key in ["whole", "streamed", "approved"] {
        let time = results[key].as_str().unwrap_or_default();
        assert!(
            time.len() == 5 && time.as_bytes()[2] == b':',
            "{key}: {results}"
        );
    }
}

#[test]
fn the_openai_sdk_drives_the_responses_api_stored_and_stateless() {
    let served = serve(&["--parallel", "2"]);
    let results = run_fixture("openai_responses.py", &[&served.base_url]);
    assert_eq!(results["call"]["name"], "get_weather");
    assert_eq!(results["call"]["arguments"]["city"], "Paris");
    assert!(
        results["cached_tokens"].as_u64().is_some_and(|n| n > 100),
        "{results}"
    );
}

#[test]
fn the_anthropic_sdk_gets_tool_use_streams_errors_and_cached_prefixes() {
    let served = serve(&["--api-key", "test-key", "--parallel", "2"]);
    let root = served.base_url.trim_end_matches("/v1");
    let results = run_fixture("anthropic_client.py", &[root, "test-key"]);
    assert_eq!(results["call"]["name"], "get_weather");
    assert_eq!(results["call"]["input"]["city"], "Paris");
    assert!(
        results["cache_read_input_tokens"]
            .as_u64()
            .is_some_and(|n| n > 100),
        "{results}"
    );
}

#[test]
fn bad_requests_get_openai_errors_naming_the_field() {
    let served = serve(&[]);
    // Python's own HTTP client (the body on stdin: it may be longer than an argument may be).
    let post_to = |path: &str, body: &str| -> (u16, Value) {
        let script = "import sys, urllib.request as u\n\
            r = u.Request(sys.argv[1], data=sys.stdin.buffer.read(), headers={'content-type': 'application/json'})\n\
            try:\n    resp = u.urlopen(r); print(resp.status); print(resp.read().decode())\n\
            except u.HTTPError as e:\n    print(e.code); print(e.read().decode())\n";
        let mut child = std::process::Command::new(mcp_servers().join("py/bin/python"))
            .args(["-c", script])
            .arg(format!("{}/{path}", served.base_url))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(body.as_bytes())
            .expect("body");
        let out = child.wait_with_output().expect("python output");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (code, json) = text.split_once('\n').expect("status line");
        (
            code.trim().parse().expect("status"),
            serde_json::from_str(json).unwrap_or(Value::Null),
        )
    };
    let post = |body: &str| post_to("chat/completions", body);
    for (body, param) in [
        ("{not json", Value::Null),
        (r#"{"messages": "hi"}"#, "messages".into()),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}"#,
            "max_tokens".into(),
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": []}"#,
            "tool_choice".into(),
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "xml"}}"#,
            "response_format.type".into(),
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}"#,
            "top_logprobs".into(),
        ),
        (
            r#"{"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 21}"#,
            "top_logprobs".into(),
        ),
    ] {
        let (status, v) = post(body);
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert_eq!(v["error"]["param"], param, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // A prompt longer than the context is the client's error, with OpenAI's code for it.
    let long = format!(
        r#"{{"messages": [{{"role": "user", "content": "{}"}}]}}"#,
        "word ".repeat(40_000)
    );
    let (status, v) = post(&long);
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["code"], "context_length_exceeded", "{v}");
    // Raw completions check their prompt the same way.
    for body in [
        r#"{"prompt": [4000000000]}"#,
        r#"{"prompt": ["a", "b"]}"#,
        r#"{"prompt": ""}"#,
    ] {
        let (status, v) = post_to("completions", body);
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], "prompt", "{v}");
    }
}

/// A full server answers 429 with `Retry-After`, and a client that leaves mid-stream frees its
/// sequence at once: with one sequence, the next request is served in seconds instead of after the
/// abandoned 3,000 tokens (minutes on a CPU). The metrics count both.
#[test]
fn a_full_server_says_429_and_a_client_that_leaves_frees_its_place() {
    let served = serve(&["--parallel", "1", "--queue", "0"]);
    let out = std::process::Command::new(mcp_servers().join("py/bin/python"))
        .arg(fixtures().join("serve/disconnect.py"))
        .arg(&served.base_url)
        .output()
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (seconds, metrics) = stdout.split_once('\n').expect("seconds, then metrics");
    let seconds: f64 = seconds.trim().parse().expect("seconds");
    assert!(seconds < 60.0, "the short request waited {seconds} s");
    // The short request may itself meet a 429 (and retry) if it comes before the abandoned
    // one's slot is given back.
    let rejected = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kestrel_requests_total{status=\"rejected\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(rejected.is_some_and(|n| n >= 1), "{metrics}");
    for line in [
        "kestrel_requests_total{status=\"ok\"} 1",
        "kestrel_requests_in_flight 0",
        "kestrel_requests_capacity 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
}
