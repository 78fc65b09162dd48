//! Servers that need the user's or the model's help in the middle of a call: elicitation,
//! sampling and roots, asked by requests (protocols up to 2025-11-25: npm `server-everything`,
//! and the `booking_desk` example in that mode) or inside input-required results that the host
//! answers and sends again (2026-07-28: `booking_desk`, built on rmcp's server). Both ways give
//! the same answers. Results are also checked against their tools' output schemas here.

mod support;

use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use kestrel::mcp::{
    CallError, ElicitPolicy, ElicitationAnswer, ElicitationHandle, ElicitationHandler,
    ElicitationRequest, HostEvent, HostOptions, McpConfig, McpHost, SamplingHandle,
    SamplingHandler, SamplingReply, SamplingRequest, SamplingStop,
};
use kestrel_tests::{node, npm_server, workspace_example};
use serde_json::{Map, Value, json};

/// The local model's stand-in for sampling: the host's side of sampling is what is tested here
/// (the model's side is in agent_loop.rs), so the answer is fixed and the request is checked.
struct Welcomer;

impl SamplingHandler for Welcomer {
    fn create_message(
        &self,
        _server: &str,
        request: SamplingRequest,
    ) -> BoxFuture<'static, Result<SamplingReply, String>> {
        let asked = request.transcript();
        Box::pin(async move {
            assert!(asked.contains("one-line welcome"), "{asked}");
            Ok(SamplingReply {
                text: "Welcome aboard.".into(),
                model: "qwen3".into(),
                stop: SamplingStop::EndTurn,
            })
        })
    }
}

async fn start(server: Value, root: &Path, elicitation: ElicitationHandle) -> McpHost {
    let text = json!({"roots": [root], "mcpServers": {"desk": server}}).to_string();
    let config = McpConfig::parse(&text, false, Path::new("test.json")).expect("config");
    let options = HostOptions {
        log_dir: root.to_path_buf(),
        sampling: Some(SamplingHandle(Arc::new(Welcomer))),
        elicitation,
        ..HostOptions::from_config(&config)
    };
    let host = McpHost::start(&config, options).await;
    let status = &host.status().await[0];
    assert_eq!(status.status, "connected", "{:?}", status.error);
    host
}

fn desk(protocol: &str) -> Value {
    json!({"command": workspace_example("booking_desk"), "args": [protocol]})
}

fn text_of(raw: &Value) -> String {
    let mut out = String::new();
    for item in raw["content"].as_array().into_iter().flatten() {
        out.push_str(item["text"].as_str().unwrap_or_default());
    }
    for item in raw["contents"].as_array().into_iter().flatten() {
        out.push_str(item["text"].as_str().unwrap_or_default());
    }
    for item in raw["messages"].as_array().into_iter().flatten() {
        out.push_str(item["content"]["text"].as_str().unwrap_or_default());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_protocols_answer_elicitation_sampling_and_roots_mid_call() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = format!("file://{}", dir.path().display());
    let mut outcomes = Vec::new();
    for protocol in ["2026-07-28", "2025-11-25"] {
        let host = start(desk(protocol), dir.path(), ElicitPolicy::Defaults.into()).await;
        assert_eq!(host.status().await[0].protocol.as_deref(), Some(protocol));
        let mut events = host.subscribe();

        let booked = host
            .call("desk", "book_table", json!({"restaurant": "Noma"}), None)
            .await
            .unwrap_or_else(|e| panic!("{protocol}: {e}"));
        let booked = booked.rendered.text;
        assert_eq!(
            booked,
            format!("booked 2 seats for Ada at Noma; roots: {root}; welcome: Welcome aboard."),
            "{protocol}"
        );
        let mut seen = Vec::new();
        while let Ok(event) = events.try_recv() {
            seen.push(event);
        }
        for expected in [
            HostEvent::Elicitation {
                server: "desk".into(),
            },
            HostEvent::Sampling {
                server: "desk".into(),
            },
        ] {
            assert!(seen.contains(&expected), "{protocol}: {seen:?}");
        }

        let prompt = host
            .get_prompt("desk", "welcome", Map::new())
            .await
            .unwrap_or_else(|e| panic!("{protocol}: {e}"));
        assert_eq!(text_of(&prompt), "Welcome, Ada!", "{protocol}");
        let roots = host
            .read_resource("desk", "desk://roots")
            .await
            .unwrap_or_else(|e| panic!("{protocol}: {e}"));
        assert_eq!(text_of(&roots), root, "{protocol}");
        outcomes.push(booked);
        host.shutdown().await;

        let declining = start(desk(protocol), dir.path(), ElicitPolicy::Decline.into()).await;
        let declined = declining
            .call("desk", "book_table", json!({"restaurant": "Noma"}), None)
            .await
            .unwrap_or_else(|e| panic!("{protocol}: {e}"));
        assert_eq!(
            declined.rendered.text, "no booking at Noma: the guest's details were declined",
            "{protocol}"
        );
        declining.shutdown().await;
    }
    assert_eq!(outcomes[0], outcomes[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_stops_asking_is_cut_off_by_name() {
    let dir = tempfile::tempdir().expect("tmp");
    let host = start(desk("2026-07-28"), dir.path(), ElicitPolicy::Decline.into()).await;
    let error = host
        .call("desk", "stall", json!({}), None)
        .await
        .expect_err("never finishes");
    assert!(
        matches!(&error, CallError::Failed { message, .. } if message.contains("asked for input 10 times")),
        "{error}"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_structured_result_outside_its_output_schema_is_an_error_naming_the_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let host = start(desk("2026-07-28"), dir.path(), ElicitPolicy::Decline.into()).await;
    let out = host
        .call("desk", "forecast", json!({}), None)
        .await
        .expect("a result");
    assert!(out.rendered.is_error);
    assert_eq!(
        out.rendered.text,
        "the tool's result does not match its output schema: `celsius`: \"mild\" is not of type \"number\"\n{\"celsius\":\"mild\"}"
    );
    host.shutdown().await;
}

/// A person at a form: fills `name`, takes the defaults, or gives `integer` out of range.
struct FormFiller {
    integer: Option<i64>,
}

impl ElicitationHandler for FormFiller {
    fn elicit(
        &self,
        _server: &str,
        request: ElicitationRequest,
    ) -> BoxFuture<'static, ElicitationAnswer> {
        let mut fields = kestrel::mcp::elicitation::schema_defaults(&ElicitationRequest::Form {
            message: String::new(),
            schema: match &request {
                ElicitationRequest::Form { schema, .. } => {
                    let mut schema = schema.clone();
                    schema["required"] = json!([]);
                    schema
                }
                ElicitationRequest::Url { .. } => json!({}),
            },
            order: match &request {
                ElicitationRequest::Form { order, .. } => order.clone(),
                ElicitationRequest::Url { .. } => Vec::new(),
            },
        })
        .expect("no required fields");
        fields.insert("name".into(), json!("Ada"));
        if let Some(integer) = self.integer {
            fields.insert("integer".into(), json!(integer));
        }
        Box::pin(std::future::ready(ElicitationAnswer::Accept(fields)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_elicits_over_the_earlier_protocol_and_gets_checked_answers() {
    let dir = tempfile::tempdir().expect("tmp");
    let everything = json!({"command": node(), "args": [npm_server("server-everything"), "stdio"]});
    let ask = async |handler: ElicitationHandle| {
        let host = start(everything.clone(), dir.path(), handler).await;
        let out = host
            .call("desk", "trigger-elicitation-request", json!({}), None)
            .await
            .expect("call");
        host.shutdown().await;
        out.rendered.text
    };
    // Its form requires `name`, which has no default: the policy declines.
    let by_policy = ask(ElicitPolicy::Defaults.into()).await;
    assert!(by_policy.contains("declined"), "{by_policy}");
    let filled = ask(ElicitationHandle(Arc::new(FormFiller { integer: None }))).await;
    assert!(filled.contains("- Name: Ada"), "{filled}");
    assert!(filled.contains("- Favorite Integer: 42"), "{filled}");
    // 500 is outside the form's 1..=100: the host declines rather than send it.
    let out_of_range = ask(ElicitationHandle(Arc::new(FormFiller {
        integer: Some(500),
    })))
    .await;
    assert!(out_of_range.contains("declined"), "{out_of_range}");
}

/// A scripted Qwen3 that books a table at Noma, with the configuration for `booking_desk` on
/// 2026-07-28 (the call and its sampling allowed), in `dir`; returns the arguments for `--model` and
/// `--config`.
fn booking_agent(dir: &Path) -> [std::ffi::OsString; 4] {
    let model = dir.join("model");
    support::caller_writing(r#"{"name":"book_table","arguments":{"restaurant": "Noma"}}"#)
        .write(&model);
    let config = dir.join("mcp.json");
    let mut desk = desk("2026-07-28");
    desk["alwaysAllow"] = json!(["book_table"]);
    let servers = json!({"roots": [dir], "mcpServers": {"desk": desk}});
    std::fs::write(&config, servers.to_string()).expect("config");
    [
        "--model".into(),
        model.into(),
        "--config".into(),
        config.into(),
    ]
}

/// The text of each `tool_result` event in JSON Lines output.
fn tool_results(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "tool_result")
        .map(|e| e["text"].as_str().unwrap_or_default().to_string())
        .collect()
}

const AGENT_FLAGS: [&str; 6] = [
    "--json",
    "--no-think",
    "--max-rounds",
    "1",
    "--allow",
    "desk/sampling",
];

#[test]
fn run_answers_a_form_by_the_elicit_policy() {
    let dir = tempfile::tempdir().expect("tmp");
    let agent = booking_agent(dir.path());
    let run = |policy: Option<&str>| {
        let mut cmd = kestrel_tests::kestrel();
        cmd.arg("run").args(&agent).args(AGENT_FLAGS);
        if let Some(policy) = policy {
            cmd.args(["--elicit", policy]);
        }
        let out = cmd
            .arg("Book a table at Noma.")
            .env("XDG_CACHE_HOME", dir.path())
            .output()
            .expect("kestrel run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        tool_results(&out.stdout)
    };
    let by_defaults = run(Some("defaults"));
    assert!(
        by_defaults[0].starts_with("booked 2 seats for Ada at Noma; roots: file://"),
        "{by_defaults:?}"
    );
    let declined = run(None);
    assert_eq!(
        declined[0],
        "no booking at Noma: the guest's details were declined"
    );

    let bad = kestrel_tests::kestrel()
        .args(["run", "--elicit", "ask", "x"])
        .output()
        .expect("kestrel run");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        stderr.contains("unknown elicitation policy `ask`"),
        "{stderr}"
    );
}

#[test]
fn chat_asks_the_form_on_the_terminal() {
    use std::io::Write;
    use std::process::Stdio;

    let dir = tempfile::tempdir().expect("tmp");
    let agent = booking_agent(dir.path());
    let mut child = kestrel_tests::kestrel()
        .arg("chat")
        .args(&agent)
        .args(AGENT_FLAGS)
        .env("XDG_CACHE_HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chat");
    // The message, then the form: accept, a name, 12 seats (too many), then 3.
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(b"Book a table at Noma.\ny\nBea\n12\n3\n")
        .expect("input");
    drop(stdin);
    let out = child.wait_with_output().expect("chat");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("server `desk` asks: Who is the booking for?"),
        "{stderr}"
    );
    assert!(stderr.contains("  name (Guest name) [Ada]: "), "{stderr}");
    assert!(
        stderr.contains("12 is greater than the maximum of 8"),
        "{stderr}"
    );
    let results = tool_results(&out.stdout);
    assert!(
        results[0].starts_with("booked 3 seats for Bea at Noma"),
        "{results:?}"
    );
}
