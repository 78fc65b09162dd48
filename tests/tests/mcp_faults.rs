//! The MCP host against a server that fails on purpose (`tests/fixtures/mcp/fault_server.py`):
//! each fault ends within its limit, the way the host promises, and leaves no process behind.

use std::path::Path;
use std::time::{Duration, Instant};

use kestrel::mcp::{CallError, HostOptions, McpConfig, McpHost};
use kestrel_tests::fault_server;
use serde_json::{Value, json};

fn fault(extra_args: &[&str], settings: Value) -> Value {
    let mut args = vec![fault_server().display().to_string()];
    args.extend(extra_args.iter().map(|s| s.to_string()));
    let mut server = json!({"command": "python3", "args": args, "call_timeout_secs": 2});
    if let (Some(s), Some(extra)) = (server.as_object_mut(), settings.as_object()) {
        s.extend(extra.clone());
    }
    server
}

async fn start(servers: Value, logs: &Path, tune: impl FnOnce(&mut HostOptions)) -> McpHost {
    let text = json!({"mcpServers": servers}).to_string();
    let config = McpConfig::parse(&text, false, Path::new("faults.json")).expect("config");
    let mut options = HostOptions {
        log_dir: logs.to_path_buf(),
        restart_backoff: Duration::from_millis(200),
        ..HostOptions::from_config(&config)
    };
    tune(&mut options);
    McpHost::start(&config, options).await
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(marker) && pid != std::process::id() {
            found.push(pid);
        }
    }
    found
}

async fn wait_until_gone(marker: &str) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_with(marker);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn log_of(logs: &Path, server: &str) -> String {
    std::fs::read_to_string(logs.join(format!("{server}.log"))).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_server_answers_with_an_error_then_restarts_and_leaves_no_orphans() {
    let logs = tempfile::tempdir().expect("tmp");
    let marker = format!("kestrel-crash-{}", std::process::id());
    // Through a shell, like `npx` chains: the whole process group must go.
    let command = format!("python3 {} --grandchild {marker}", fault_server().display());
    let host = start(
        json!({"f": {"command": "sh", "args": ["-c", command]}}),
        logs.path(),
        |_| {},
    )
    .await;
    let first_pid = host
        .call("f", "pid", json!({}), None)
        .await
        .expect("pid")
        .rendered
        .text;
    // sh, the server and its grandchild.
    let generation = processes_with(&marker);
    assert_eq!(generation.len(), 3, "{generation:?}");

    let started = Instant::now();
    let e = host
        .call("f", "crash", json!({}), None)
        .await
        .expect_err("crash");
    assert!(started.elapsed() < Duration::from_secs(3));
    let CallError::Failed { message, .. } = &e else {
        panic!("{e}")
    };
    assert!(
        message.contains("crashing on purpose"),
        "the server's last words are shown: {e}"
    );

    // The next call restarts it.
    let second_pid = host
        .call("f", "pid", json!({}), None)
        .await
        .expect("restarted")
        .rendered
        .text;
    assert_ne!(first_pid, second_pid);
    let now = processes_with(&marker);
    assert_eq!(now.len(), 3, "the new generation only: {now:?}");
    assert!(
        generation.iter().all(|p| !now.contains(p)),
        "the first generation went with its group: {generation:?} {now:?}"
    );

    host.shutdown().await;
    assert_eq!(
        wait_until_gone(&marker).await,
        Vec::<u32>::new(),
        "no orphans after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_call_times_out_and_is_cancelled() {
    let logs = tempfile::tempdir().expect("tmp");
    let host = start(
        json!({"f": fault(&[], json!({"call_timeout_secs": 1}))}),
        logs.path(),
        |_| {},
    )
    .await;
    let started = Instant::now();
    let e = host
        .call("f", "hang", json!({}), None)
        .await
        .expect_err("hang");
    let took = started.elapsed();
    assert!(matches!(e, CallError::Timeout { .. }), "{e}");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let ok = host
        .call("f", "ok", json!({"text": "after"}), None)
        .await
        .expect("still usable");
    assert_eq!(ok.rendered.text, "ok: after");
    host.shutdown().await;
    let log = log_of(logs.path(), "f");
    assert!(
        log.contains("cancelled request"),
        "notifications/cancelled reached the server: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_on_stdout_is_skipped_and_logged() {
    let logs = tempfile::tempdir().expect("tmp");
    let host = start(json!({"f": fault(&[], json!({}))}), logs.path(), |_| {}).await;
    let out = host
        .call("f", "flood", json!({"lines": 20000}), None)
        .await
        .expect("flood");
    assert_eq!(out.rendered.text, "survived the flood");
    assert_eq!(
        host.call("f", "ok", json!({}), None)
            .await
            .expect("ok")
            .rendered
            .text,
        "ok: "
    );
    host.shutdown().await;
    let log = log_of(logs.path(), "f");
    assert!(
        log.contains("ignored a non-JSON line on stdout: junk line 0"),
        "{log}"
    );
    assert!(
        log.contains("ignored 20000 non-JSON lines on stdout in a row"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_errors_and_long_results_are_cut() {
    let logs = tempfile::tempdir().expect("tmp");
    let host = start(
        json!({"f": fault(&[], json!({"call_timeout_secs": 20}))}),
        logs.path(),
        |o| o.max_result_bytes = 4096,
    )
    .await;
    let started = Instant::now();
    let e = host
        .call("f", "huge", json!({"mb": 20}), None)
        .await
        .expect_err("20 MB");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "reported, not timed out"
    );
    assert!(
        e.to_string().contains("over the 16777216-byte limit"),
        "{e}"
    );
    let ok = host
        .call("f", "ok", json!({"text": "next"}), None)
        .await
        .expect("session intact");
    assert_eq!(ok.rendered.text, "ok: next");

    let big = host
        .call("f", "big", json!({"kb": 100}), None)
        .await
        .expect("big");
    assert_eq!(big.rendered.cut_bytes, 100 * 1024 - 4096);
    assert!(
        big.rendered
            .text
            .ends_with("[output cut: 98304 of 102400 bytes not shown]")
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_broken_servers_are_reported_by_name_while_others_work() {
    let logs = tempfile::tempdir().expect("tmp");
    let servers = json!({
        "slow": fault(&["--slow-start", "5"], json!({"startup_timeout_secs": 1})),
        "patient": fault(&["--slow-start", "1"], json!({"startup_timeout_secs": 10})),
        "missing": {"command": "/no/such/server"},
        "dies": {"command": "python3", "args": ["-c", "import sys; sys.stderr.write('bad flag --x\\n'); sys.exit(2)"]},
        "good": fault(&[], json!({})),
    });
    let started = Instant::now();
    let host = start(servers, logs.path(), |_| {}).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "started concurrently: {:?}",
        started.elapsed()
    );
    let status: Vec<(String, &str, String)> = host
        .status()
        .await
        .into_iter()
        .map(|s| (s.name, s.status, s.error.unwrap_or_default()))
        .collect();
    assert_eq!(status[0].1, "failed");
    assert!(
        status[0].2.contains("did not finish starting within 1 s"),
        "{status:?}"
    );
    assert_eq!(status[1].1, "connected", "{status:?}");
    assert!(
        status[2].2.contains("cannot start `/no/such/server`"),
        "{status:?}"
    );
    assert!(
        status[3].2.contains("bad flag --x"),
        "stderr is quoted: {status:?}"
    );
    assert_eq!(status[4].1, "connected");
    assert_eq!(
        host.call("good", "ok", json!({}), None)
            .await
            .expect("good")
            .rendered
            .text,
        "ok: "
    );

    // A failed server is retried on a call, after its backoff.
    let e = host
        .call("missing", "ok", json!({}), None)
        .await
        .expect_err("still missing");
    assert!(matches!(e, CallError::Unavailable { .. }), "{e}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_lists_are_paginated_and_relisted_when_they_change() {
    let logs = tempfile::tempdir().expect("tmp");
    let host = start(
        json!({"f": fault(&["--page-size", "2"], json!({}))}),
        logs.path(),
        |_| {},
    )
    .await;
    let names =
        |tools: Vec<kestrel::mcp::HostTool>| tools.into_iter().map(|t| t.name).collect::<Vec<_>>();
    let before = names(host.tools().await);
    assert_eq!(
        before.len(),
        9,
        "all pages, the last one partial: {before:?}"
    );
    let mut events = host.subscribe();
    host.call("f", "add_tool", json!({}), None)
        .await
        .expect("add");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = names(host.tools().await);
        if now.contains(&"extra".to_string()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new tool never appeared: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(
        events.try_recv(),
        Ok(kestrel::mcp::HostEvent::ToolsChanged { .. })
    ));
    let extra = host.call_named("extra", json!({})).await.expect("extra");
    assert_eq!(extra.rendered.text, "extra tool called");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarting_slowly_does_not_delay_calls_to_another() {
    let logs = tempfile::tempdir().expect("tmp");
    let slow = fault(&["--slow-start", "3"], json!({"startup_timeout_secs": 20}));
    let servers = json!({"slow": slow, "quick": fault(&[], json!({}))});
    let host = std::sync::Arc::new(start(servers, logs.path(), |_| {}).await);
    let crashed = host.call("slow", "crash", json!({}), None).await;
    assert!(crashed.is_err(), "{crashed:?}");

    // The next call to `slow` restarts it, which takes three seconds.
    let restarting = {
        let host = host.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = host.call("slow", "ok", json!({"text": "back"}), None).await;
            (outcome, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Meanwhile the tool list (as a turn takes it) and calls to `quick` answer at once.
    let started = Instant::now();
    let snapshot = host.snapshot().await;
    assert!(
        snapshot.names().contains(&"slow__ok".to_string()),
        "a restarting server keeps offering its tools: {:?}",
        snapshot.names()
    );
    let quick = host
        .call_named("quick__ok", json!({"text": "hi"}))
        .await
        .expect("quick");
    assert!(
        quick.rendered.text.contains("hi"),
        "{}",
        quick.rendered.text
    );
    let offered = snapshot.resolve("quick__ok").expect("offered");
    host.call_offered(offered, json!({"text": "again"}))
        .await
        .expect("quick again");
    let status = host.status().await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "calls to a healthy server waited {elapsed:?} on another's restart"
    );
    assert_eq!(
        status.iter().find(|s| s.name == "slow").map(|s| s.status),
        Some("starting")
    );

    let (outcome, took) = restarting.await.expect("join");
    assert!(outcome.is_ok(), "{outcome:?}");
    assert!(took >= Duration::from_secs(2), "the restart took {took:?}");
    host.shutdown().await;
}
