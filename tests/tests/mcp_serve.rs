//! `kestrel mcp serve`: Kestrel's agent as an MCP server, used by Kestrel's own MCP host (which
//! speaks 2026-07-28, so a tool approval comes back as an input-required result and the task
//! waits for the answer) and by the Python MCP SDK's client (PyPI `mcp`, an earlier protocol,
//! where the approval is an elicitation request sent in the middle of the call). The served agent
//! is a scripted Qwen3 that calls `get_current_time` of PyPI's `mcp-server-time`, a tool that
//! needs approval.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use kestrel::mcp::{
    ElicitPolicy, ElicitationAnswer, ElicitationHandle, ElicitationHandler, ElicitationRequest,
    HostEvent, HostOptions, McpConfig, McpHost,
};
use serde_json::{Value, json};

/// The arguments of `kestrel mcp serve` for the scripted agent, its files in `dir`.
fn serve_args(dir: &Path) -> Vec<String> {
    let model = dir.join("model");
    support::bare_json_caller().write(&model);
    let inner = dir.join("inner.json");
    std::fs::write(&inner, json!({"mcpServers": support::time()}).to_string()).expect("config");
    let path = |p: PathBuf| p.to_string_lossy().into_owned();
    let mut args: Vec<String> = ["mcp", "serve", "--model"].map(String::from).to_vec();
    args.extend([path(model), "--config".into(), path(inner)]);
    args.extend(["--no-think", "--max-turn-tokens", "60"].map(String::from));
    args
}

/// Says yes to every approval.
struct Approve;

impl ElicitationHandler for Approve {
    fn elicit(
        &self,
        _server: &str,
        request: ElicitationRequest,
    ) -> BoxFuture<'static, ElicitationAnswer> {
        assert!(
            request
                .message()
                .contains("`get_current_time` (server `time`)"),
            "{}",
            request.message()
        );
        let yes = json!({"approve": true})
            .as_object()
            .cloned()
            .unwrap_or_default();
        Box::pin(std::future::ready(ElicitationAnswer::Accept(yes)))
    }
}

async fn outer_host(dir: &Path, elicitation: ElicitationHandle) -> McpHost {
    let kestrel = kestrel_tests::kestrel()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let server = json!({"command": kestrel, "args": serve_args(dir),
                        "env": {"KESTREL_LOG": "off", "XDG_CACHE_HOME": dir},
                        "call_timeout_secs": 120});
    let text = json!({"mcpServers": {"kestrel": server}}).to_string();
    let config = McpConfig::parse(&text, false, Path::new("outer.json")).expect("config");
    let options = HostOptions {
        log_dir: dir.to_path_buf(),
        elicitation,
        ..HostOptions::from_config(&config)
    };
    let host = McpHost::start(&config, options).await;
    let status = &host.status().await[0];
    assert_eq!(status.status, "connected", "{:?}", status.error);
    host
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kestrels_host_hands_a_task_over_and_answers_its_approvals() {
    let dir = tempfile::tempdir().expect("tmp");
    let host = outer_host(dir.path(), ElicitationHandle(Arc::new(Approve))).await;
    // The approval comes back inside a result, and the parked task goes on when it is answered.
    assert_eq!(
        host.status().await[0].protocol.as_deref(),
        Some("2026-07-28")
    );
    let tools = host.tools().await;
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0].name, "run_task");
    assert_eq!(tools[0].input_schema["required"], json!(["task"]));
    let mut events = host.subscribe();
    let task = json!({"task": "What time is it in UTC?", "max_rounds": 1});
    let out = host
        .call("kestrel", "run_task", task, None)
        .await
        .expect("run_task");
    assert!(!out.rendered.is_error, "{}", out.rendered.text);
    let report = &out.raw["structuredContent"];
    let call = &report["tool_calls"][0];
    assert_eq!(call["tool"], "get_current_time", "{report}");
    assert_eq!(call["arguments"], json!({"timezone": "UTC"}));
    assert_eq!(call["is_error"], false, "{report}");
    let time: Value = serde_json::from_str(call["result"].as_str().unwrap_or("")).expect("JSON");
    assert_eq!(time["timezone"], "UTC", "{report}");
    assert_eq!(
        report["limited_by"].as_str().map(|s| s.contains("rounds")),
        Some(true),
        "{report}"
    );
    let mut turns = 0;
    while let Ok(event) = events.try_recv() {
        if let HostEvent::Progress {
            message: Some(m), ..
        } = event
        {
            turns += usize::from(m.starts_with("turn "));
        }
    }
    assert_eq!(
        turns,
        report["turns"].as_u64().unwrap_or(0) as usize,
        "{report}"
    );
    host.shutdown().await;

    // Declined (the form's default is no): the call is refused and the agent reads why.
    let host = outer_host(dir.path(), ElicitPolicy::Defaults.into()).await;
    let task = json!({"task": "What time is it in UTC?", "max_rounds": 1});
    let out = host
        .call("kestrel", "run_task", task, None)
        .await
        .expect("run_task");
    let call = &out.raw["structuredContent"]["tool_calls"][0];
    assert_eq!(call["is_error"], true, "{call}");
    assert!(
        call["result"]
            .as_str()
            .is_some_and(|r| r.starts_with("Not called")),
        "{call}"
    );
    host.shutdown().await;
}

/// A task cancelled by its caller stops: the agent behind `kestrel mcp serve` thinks without end
/// (no token limit that would end it soon), the call is cancelled after its time limit, and the
/// next task (a thinking budget makes it answer) gets the one engine sequence at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_task_stops_and_the_next_one_runs() {
    let dir = tempfile::tempdir().expect("tmp");
    let model = dir.path().join("model");
    support::endless_thinker().write(&model);
    let kestrel = kestrel_tests::kestrel()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let args = json!([
        "mcp",
        "serve",
        "--model",
        model,
        "--think",
        "--max-tokens",
        "1000000",
        "--max-turn-tokens",
        "1000000"
    ]);
    let server = json!({"command": kestrel, "args": args,
                        "env": {"KESTREL_LOG": "off", "XDG_CACHE_HOME": dir.path()}});
    let text = json!({"mcpServers": {"kestrel": server}}).to_string();
    let config = McpConfig::parse(&text, false, Path::new("outer.json")).expect("config");
    let options = HostOptions {
        log_dir: dir.path().to_path_buf(),
        ..HostOptions::from_config(&config)
    };
    let host = McpHost::start(&config, options).await;
    let endless = json!({"task": "What?"});
    let limit = std::time::Duration::from_secs(2);
    let cut = host.call("kestrel", "run_task", endless, Some(limit)).await;
    assert!(
        matches!(cut, Err(kestrel::mcp::CallError::Timeout { .. })),
        "{cut:?}"
    );
    let budgeted = json!({"task": "What?", "thinking_budget": 4});
    let next = std::time::Duration::from_secs(30);
    let out = host
        .call("kestrel", "run_task", budgeted, Some(next))
        .await
        .expect("the next task runs");
    assert_eq!(out.raw["structuredContent"]["answer"], support::ANSWER_TEXT);
    host.shutdown().await;
}

#[test]
fn the_python_sdk_hands_a_task_over_on_an_earlier_protocol() {
    let dir = tempfile::tempdir().expect("tmp");
    let python = kestrel_tests::mcp_servers().join("py/bin/python");
    let out = std::process::Command::new(python)
        .arg(kestrel_tests::fixtures().join("mcp/run_task_client.py"))
        .arg(kestrel_tests::kestrel().get_program())
        .args(serve_args(dir.path()))
        .env("KESTREL_LOG", "off")
        .env("XDG_CACHE_HOME", dir.path())
        .output()
        .expect("python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).expect("the client's JSON");
    assert!(report["protocol"].as_str() < Some("2026-07-28"), "{report}");
    assert_eq!(report["elicited"], json!(["approve"]), "{report}");
    let call = &report["structured"]["tool_calls"][0];
    assert_eq!(
        (&call["tool"], &call["is_error"]),
        (&json!("get_current_time"), &json!(false)),
        "{report}"
    );
}

/// `kestrel mcp serve --port 0` on the scripted agent; killed on drop.
struct HttpServe {
    child: std::process::Child,
    url: String,
}

impl HttpServe {
    fn start(dir: &Path) -> Self {
        use std::io::BufRead as _;
        let mut child = kestrel_tests::kestrel()
            .args(serve_args(dir))
            .args(["--port", "0"])
            .env("XDG_CACHE_HOME", dir)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("kestrel mcp serve");
        let stderr = std::io::BufReader::new(child.stderr.take().expect("stderr"));
        let url = stderr
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("serving MCP on ").map(str::to_owned))
            .expect("the address on stderr");
        Self { child, url }
    }
}

impl Drop for HttpServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The conformance suite's server scenarios over Streamable HTTP; those a one-tool server cannot
/// pass are listed, with reasons, in `tests/fixtures/mcp/conformance-server-baseline.yml`.
#[test]
fn streamable_http_passes_the_conformance_scenarios_for_a_tools_only_server_and_runs_tasks() {
    let dir = tempfile::tempdir().expect("tmp");
    let serve = HttpServe::start(dir.path());
    let suite = kestrel_tests::mcp_servers()
        .join("npm/node_modules/@modelcontextprotocol/conformance/dist/index.js");
    let results = tempfile::tempdir().expect("tmp");
    let out = std::process::Command::new(kestrel_tests::node())
        .arg(suite)
        .args(["server", "--url", &serve.url, "--expected-failures"])
        .arg(kestrel_tests::fixtures().join("mcp/conformance-server-baseline.yml"))
        .arg("-o")
        .arg(results.path())
        .output()
        .expect("run the conformance suite");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.split("=== SUMMARY ===").nth(1).unwrap_or(&stdout);
    assert!(
        out.status.success(),
        "{summary}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for passing in [
        "✓ server-initialize",
        "✓ ping",
        "✓ tools-list",
        "✓ server-sse-multiple-streams",
        "✓ dns-rebinding-protection",
    ] {
        assert!(summary.contains(passing), "{passing}: {summary}");
    }

    // And a task over HTTP, its approval asked of Kestrel's host.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let text = json!({"mcpServers": {"kestrel": {"url": serve.url}}}).to_string();
        let config = McpConfig::parse(&text, false, Path::new("http.json")).expect("config");
        let options = HostOptions {
            log_dir: dir.path().to_path_buf(),
            elicitation: ElicitationHandle(Arc::new(Approve)),
            ..HostOptions::from_config(&config)
        };
        let host = McpHost::start(&config, options).await;
        let task = json!({"task": "What time is it in UTC?", "max_rounds": 1});
        let out = host
            .call("kestrel", "run_task", task, None)
            .await
            .expect("run_task");
        let call = &out.raw["structuredContent"]["tool_calls"][0];
        assert_eq!(
            (&call["tool"], &call["is_error"]),
            (&json!("get_current_time"), &json!(false)),
            "{call}"
        );
        host.shutdown().await;
    });
}
