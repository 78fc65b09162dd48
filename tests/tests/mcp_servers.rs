//! The MCP host against real third-party servers, installed by `scripts/fetch-mcp-servers`:
//! npm `server-everything` (stdio and Streamable HTTP), `server-filesystem`, PyPI `mcp-server-time`.

use std::path::Path;
use std::time::{Duration, Instant};

use kestrel::mcp::{CallError, HostEvent, HostOptions, McpConfig, McpHost, READ_RESOURCE_TOOL};
use kestrel_tests::{node, npm_server, time_server};
use serde_json::{Value, json};

fn config(servers: Value, roots: &[&Path]) -> McpConfig {
    let text = json!({"roots": roots, "mcpServers": servers}).to_string();
    McpConfig::parse(&text, false, Path::new("test.json")).expect("config")
}

fn everything() -> Value {
    json!({"command": node(), "args": [npm_server("server-everything"), "stdio"]})
}

fn options(config: &McpConfig, logs: &Path) -> HostOptions {
    HostOptions {
        log_dir: logs.to_path_buf(),
        sandbox_helper: Some(kestrel_tests::kestrel_tools()),
        ..HostOptions::from_config(config)
    }
}

/// Starts a host on `servers`, with `roots`, logging into `logs`.
async fn start(servers: Value, roots: &[&Path], logs: &Path) -> McpHost {
    let config = config(servers, roots);
    McpHost::start(&config, options(&config, logs)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_over_stdio_lists_calls_reports_progress_and_cancels() {
    let logs = tempfile::tempdir().expect("tmp");
    let host = start(
        json!({"everything": everything()}),
        &[logs.path()],
        logs.path(),
    )
    .await;
    let status = host.status().await;
    assert_eq!(status[0].status, "connected", "{:?}", status[0].error);
    let tools = host.tools().await;
    for name in [
        "echo",
        "get-sum",
        "get-structured-content",
        "trigger-long-running-operation",
    ] {
        let t = tools
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("{name}"));
        assert!(t.input_schema.get("type").is_some(), "{name} has a schema");
        assert_eq!(t.to_openai()["function"]["name"], name);
    }

    let echo = host
        .call("everything", "echo", json!({"message": "héllo"}), None)
        .await
        .expect("echo");
    assert_eq!(echo.rendered.text, "Echo: héllo");
    assert!(!echo.rendered.is_error);
    let sum = host
        .call_named("get-sum", json!({"a": 2, "b": 3}))
        .await
        .expect("sum");
    assert!(sum.rendered.text.contains('5'), "{}", sum.rendered.text);

    // Structured content reaches the model as JSON text.
    let s = host
        .call(
            "everything",
            "get-structured-content",
            json!({"location": "Chicago"}),
            None,
        )
        .await
        .expect("structured");
    let shown: Value = serde_json::from_str(s.rendered.text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {}", s.rendered.text));
    assert_eq!(Some(&shown), s.raw.get("structuredContent"));
    // It matches the output schema it declares, which the model is told of.
    assert!(!s.rendered.is_error);
    let offered = tools
        .iter()
        .find(|t| t.name == "get-structured-content")
        .and_then(|t| t.description.clone())
        .unwrap_or_default();
    assert!(
        offered.contains("Returns JSON matching this schema: {") && offered.contains("humidity"),
        "{offered}"
    );

    // Images become placeholders.
    let img = host
        .call("everything", "get-tiny-image", json!({}), None)
        .await
        .expect("image");
    assert!(
        img.rendered.text.contains("[image: image/png,"),
        "{}",
        img.rendered.text
    );
    assert!(
        !img.rendered.text.contains("iVBOR"),
        "no base64 in the model's text"
    );

    // Roots: the server sees the configured directory.
    let roots = host
        .call("everything", "get-roots-list", json!({}), None)
        .await
        .expect("roots");
    let uri = format!("file://{}", logs.path().display());
    assert!(
        roots.rendered.text.contains(&uri),
        "{}",
        roots.rendered.text
    );

    // Progress notifications arrive as events tagged with the call.
    let mut events = host.subscribe();
    let long = host
        .call(
            "everything",
            "trigger-long-running-operation",
            json!({"duration": 1, "steps": 3}),
            None,
        )
        .await
        .expect("long");
    let mut steps = Vec::new();
    // The last notification may be handled just after the response.
    while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_secs(2), events.recv()).await {
        if let HostEvent::Progress {
            call,
            progress,
            total,
            ..
        } = e
        {
            assert_eq!(call, Some(long.call));
            assert_eq!(total, Some(3.0));
            steps.push(progress);
            if steps.len() == 3 {
                break;
            }
        }
    }
    assert_eq!(steps, [1.0, 2.0, 3.0]);

    // Calls run concurrently: two 1-second operations take about one second.
    let started = Instant::now();
    let slow = json!({"duration": 1, "steps": 1});
    let (a, b) = tokio::join!(
        host.call(
            "everything",
            "trigger-long-running-operation",
            slow.clone(),
            None
        ),
        host.call("everything", "trigger-long-running-operation", slow, None),
    );
    assert!(a.is_ok() && b.is_ok());
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );

    // A call over its limit is cancelled and reported; the session stays usable.
    let started = Instant::now();
    let e = host
        .call(
            "everything",
            "trigger-long-running-operation",
            json!({"duration": 10, "steps": 10}),
            Some(Duration::from_millis(300)),
        )
        .await
        .expect_err("timeout");
    assert!(matches!(e, CallError::Timeout { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let again = host
        .call("everything", "echo", json!({"message": "still here"}), None)
        .await;
    assert_eq!(
        again.expect("after cancel").rendered.text,
        "Echo: still here"
    );

    // Resources and prompts.
    let resources = host.resources().await;
    assert!(!resources.is_empty());
    let uri = resources[0].1["uri"].as_str().expect("uri").to_string();
    let read = host.read_resource("everything", &uri).await.expect("read");
    assert!(read["contents"].as_array().is_some_and(|c| !c.is_empty()));
    let prompts = host.prompts().await;
    let simple = prompts
        .iter()
        .find(|(_, p)| p["name"] == "simple-prompt")
        .expect("simple-prompt");
    let got = host
        .get_prompt(&simple.0, "simple-prompt", Default::default())
        .await
        .expect("prompt");
    assert!(got["messages"].as_array().is_some_and(|m| !m.is_empty()));

    // Bad arguments and names are errors naming the problem.
    let e = host
        .call("everything", "echo", json!([1]), None)
        .await
        .expect_err("array");
    assert!(e.to_string().contains("JSON object"), "{e}");
    let e = host
        .call("everything", "no-such-tool", json!({}), None)
        .await
        .expect_err("tool");
    assert!(
        e.to_string().contains("no-such-tool") && e.to_string().contains("echo"),
        "{e}"
    );
    let e = host
        .call("nobody", "echo", json!({}), None)
        .await
        .expect_err("server");
    assert!(
        e.to_string().contains("nobody") && e.to_string().contains("everything"),
        "{e}"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_is_minimal_and_stderr_goes_to_the_log() {
    let logs = tempfile::tempdir().expect("tmp");
    let mut server = everything();
    server["env"] = json!({"KESTREL_CONFIGURED": "yes"});
    let marker = "KESTREL_HOST_ONLY_SECRET";
    let host = {
        let config = config(json!({"everything": server}), &[]);
        // The variable is set through the command's own environment instead of the test
        // process's (setting it process-wide would race other tests).
        let mut config = config;
        if let kestrel::mcp::Transport::Stdio { command, args, .. } =
            &mut config.servers[0].transport
        {
            let node = std::mem::take(command);
            *command = "env".into();
            args.splice(0..0, [format!("{marker}=1"), node]);
        }
        McpHost::start(&config, options(&config, logs.path())).await
    };
    let env = host
        .call("everything", "get-env", json!({}), None)
        .await
        .expect("env");
    let text = env.rendered.text;
    assert!(
        text.contains("KESTREL_CONFIGURED"),
        "configured variables are passed: {text}"
    );
    assert!(
        text.contains(marker),
        "the command's own environment is the server's: {text}"
    );
    assert!(text.contains("\"PATH\""), "{text}");
    assert!(
        !text.contains("CARGO_MANIFEST_DIR"),
        "the host environment is not passed: {text}"
    );
    host.shutdown().await;
    let log = std::fs::read_to_string(logs.path().join("everything.log")).expect("log");
    assert!(!log.is_empty(), "the server's stderr was captured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_over_streamable_http() {
    let logs = tempfile::tempdir().expect("tmp");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut server = tokio::process::Command::new(node())
        .arg(npm_server("server-everything"))
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the HTTP server");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the HTTP server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("http://127.0.0.1:{port}/mcp");
    let host = start(
        json!({"web": {"url": url, "headers": {"X-Kestrel-Test": "1"}}}),
        &[],
        logs.path(),
    )
    .await;
    let status = host.status().await;
    assert_eq!(status[0].status, "connected", "{:?}", status[0].error);
    assert_eq!(status[0].transport, "http");
    let echo = host
        .call("web", "echo", json!({"message": "over http"}), None)
        .await
        .expect("echo");
    assert_eq!(echo.rendered.text, "Echo: over http");
    let mut events = host.subscribe();
    let long = host
        .call(
            "web",
            "trigger-long-running-operation",
            json!({"duration": 1, "steps": 2}),
            None,
        )
        .await
        .expect("long");
    let mut progress = 0;
    while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_secs(2), events.recv()).await {
        if matches!(e, HostEvent::Progress { call, .. } if call == Some(long.call)) {
            progress += 1;
            if progress == 2 {
                break;
            }
        }
    }
    assert_eq!(progress, 2);
    let e = host
        .call(
            "web",
            "trigger-long-running-operation",
            json!({"duration": 10, "steps": 5}),
            Some(Duration::from_millis(300)),
        )
        .await
        .expect_err("timeout");
    assert!(matches!(e, CallError::Timeout { .. }), "{e}");
    host.shutdown().await;
    let _ = server.kill().await;

    // Nothing listening: reported by name, with the URL.
    let host = start(
        json!({"gone": {"url": url, "startup_timeout_secs": 5}}),
        &[],
        logs.path(),
    )
    .await;
    let status = host.status().await;
    assert_eq!(status[0].status, "failed");
    assert!(
        status[0].error.as_deref().is_some_and(|e| e.contains(&url)),
        "{:?}",
        status[0].error
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_and_time_servers_with_collisions_and_filters() {
    let logs = tempfile::tempdir().expect("tmp");
    let root = tempfile::tempdir().expect("root");
    std::fs::write(root.path().join("notes.txt"), "kestrels hover\n").expect("write");
    let servers = json!({
        "fs": {"command": node(), "args": [npm_server("server-filesystem"), root.path()]},
        "time": {"command": time_server(), "args": ["--local-timezone", "UTC"]},
        "e1": {"command": node(), "args": [npm_server("server-everything"), "stdio"], "include": ["echo", "get-sum"]},
        "e2": {"command": node(), "args": [npm_server("server-everything"), "stdio"], "exclude": ["get-sum"]},
    });
    let host = start(servers, &[root.path()], logs.path()).await;
    for s in host.status().await {
        assert_eq!(s.status, "connected", "{}: {:?}", s.name, s.error);
    }
    let tools = host.tools().await;
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    // `echo` is offered by both everything servers: prefixed. `get-sum` only by e1: bare.
    assert!(
        names.contains(&"e1__echo") && names.contains(&"e2__echo"),
        "{names:?}"
    );
    assert!(
        names.contains(&"get-sum") && !names.contains(&"e2__get-sum"),
        "{names:?}"
    );
    assert!(
        !names.contains(&"e1__get-tiny-image"),
        "e1 includes only echo and get-sum"
    );
    assert!(names.contains(&"read_text_file") && names.contains(&"get_current_time"));
    let e = host
        .call("e2", "get-sum", json!({"a": 1, "b": 2}), None)
        .await
        .expect_err("excluded");
    assert!(e.to_string().contains("get-sum"), "{e}");
    let echo = host
        .call_named("e2__echo", json!({"message": "two"}))
        .await
        .expect("e2 echo");
    assert_eq!(
        (echo.server.as_str(), echo.rendered.text.as_str()),
        ("e2", "Echo: two")
    );

    let path = root.path().join("notes.txt");
    let read = host
        .call_named("read_text_file", json!({"path": path}))
        .await
        .expect("read");
    assert_eq!(read.rendered.text.trim(), "kestrels hover");
    let outside = host
        .call_named("read_text_file", json!({"path": "/etc/hostname"}))
        .await
        .expect("answered");
    assert!(
        outside.rendered.is_error,
        "outside the root: {}",
        outside.rendered.text
    );

    let time = host
        .call_named("get_current_time", json!({"timezone": "Asia/Tokyo"}))
        .await
        .expect("time");
    let v: Value = serde_json::from_str(&time.rendered.text).expect("json text");
    assert_eq!(v["timezone"], "Asia/Tokyo");
    assert!(
        v["datetime"]
            .as_str()
            .is_some_and(|d| d.ends_with("+09:00")),
        "{v}"
    );
    let bad = host
        .call_named("get_current_time", json!({"timezone": "Mars/Olympus"}))
        .await
        .expect("answered");
    assert!(bad.rendered.is_error && bad.rendered.text.contains("Mars/Olympus"));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_reading_can_be_offered_as_a_tool() {
    let logs = tempfile::tempdir().expect("tmp");
    let mut config = config(json!({"everything": everything()}), &[]);
    // The configuration's switch turns the tool on.
    config.resource_tool = true;
    let host = McpHost::start(&config, options(&config, logs.path())).await;
    let tools = host.tools().await;
    let tool = tools
        .iter()
        .find(|t| t.name == READ_RESOURCE_TOOL)
        .expect("offered");
    assert_eq!(
        tool.input_schema["properties"]["server"]["enum"],
        json!(["everything"])
    );
    let (_, first) = host
        .resources()
        .await
        .into_iter()
        .next()
        .expect("a resource");
    let out = host
        .call_named(
            READ_RESOURCE_TOOL,
            json!({"server": "everything", "uri": first["uri"]}),
        )
        .await
        .expect("read");
    assert!(
        out.rendered.text.starts_with("[resource <"),
        "{}",
        out.rendered.text
    );
    // Without a URI: the server's resources, so the model can find one to read.
    let listing = host
        .call_named(READ_RESOURCE_TOOL, json!({"server": "everything"}))
        .await
        .expect("list");
    let listed: Value = serde_json::from_str(&listing.rendered.text).expect("JSON listing");
    assert_eq!(listed["resources"][0]["uri"], first["uri"], "{listed}");

    // A result's resource links say how to read them, and can be read.
    let links = host
        .call(
            "everything",
            "get-resource-links",
            json!({"count": 1}),
            None,
        )
        .await
        .expect("links");
    let text = &links.rendered.text;
    assert!(
        text.ends_with("[read_resource with server \"everything\" and a link's URI reads it]"),
        "{text}"
    );
    let uri = links.raw["content"]
        .as_array()
        .and_then(|c| c.iter().find(|b| b["type"] == "resource_link"))
        .map(|b| b["uri"].clone())
        .expect("a link");
    assert!(text.contains(uri.as_str().expect("uri")), "{text}");
    let read = host
        .call_named(
            READ_RESOURCE_TOOL,
            json!({"server": "everything", "uri": uri}),
        )
        .await
        .expect("read the link");
    assert!(
        read.rendered.text.starts_with("[resource <"),
        "{}",
        read.rendered.text
    );
    host.shutdown().await;
}

/// Python's own `http.server` on a free port of 127.0.0.1, serving `dir`; killed on drop.
struct WebServer {
    child: std::process::Child,
    port: u16,
}

impl WebServer {
    fn start(dir: &Path) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                "0",
                "--directory",
            ])
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the server's first line");
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Self { child, port }
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_fetch_reads_allowed_hosts_only_and_turns_html_into_text() {
    let site = tempfile::tempdir().expect("site");
    std::fs::write(
        site.path().join("page.html"),
        "<html><head><title>T</title><style>p {color: red}</style></head><body><h1>Kestrel notes</h1><p>Hello <b>world</b>, from a <a href=\"/x\">page</a>.</p></body></html>",
    )
    .expect("page");
    std::fs::write(site.path().join("big.txt"), "z".repeat(5000)).expect("big");
    std::fs::write(site.path().join("pixel.png"), [0x89, b'P', b'N', b'G']).expect("png");
    let web = WebServer::start(site.path());
    let logs = tempfile::tempdir().expect("logs");
    let host = start(
        json!({"web": {"builtin": "fetch", "options": {"allow_hosts": ["127.0.0.1"], "allow_private": ["127.0.0.1"], "max_bytes": 1000}}}),
        &[],
        logs.path(),
    )
    .await;
    let base = format!("http://127.0.0.1:{}", web.port);
    let fetch = |url: String| {
        let host = &host;
        async move {
            host.call("web", "fetch", json!({"url": url}), None)
                .await
                .map(|o| (o.rendered.text, o.rendered.is_error))
                .unwrap_or_else(|e| (e.to_string(), true))
        }
    };
    let (page, is_error) = fetch(format!("{base}/page.html")).await;
    assert!(!is_error, "{page}");
    assert!(
        page.contains("Kestrel notes") && page.contains("world"),
        "{page}"
    );
    assert!(
        !page.contains("<p>") && !page.contains("color: red"),
        "{page}"
    );
    let (big, is_error) = fetch(format!("{base}/big.txt")).await;
    assert!(!is_error);
    assert!(big.starts_with(&"z".repeat(1000)), "{big}");
    assert!(
        big.ends_with("[cut: only the first 1000 bytes were read]"),
        "{big}"
    );
    for (url, needle) in [
        (format!("{base}/pixel.png"), "`image/png`, not text"),
        (format!("{base}/missing.txt"), "HTTP 404"),
        (
            format!("http://localhost:{}/page.html", web.port),
            "`localhost` is not on the allow-list (127.0.0.1)",
        ),
        ("file:///etc/passwd".to_string(), "only http and https"),
        ("not a url".to_string(), "is not a URL"),
    ] {
        let (text, is_error) = fetch(url.clone()).await;
        assert!(is_error, "{url}: {text}");
        assert!(text.contains(needle), "{url}: {text}");
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_shell_runs_allowed_programs_in_process_and_over_stdio() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("marker.txt"), "x").expect("marker");
    let logs = tempfile::tempdir().expect("logs");
    let options = json!({"allow": ["ls", "sleep"], "timeout_secs": 1});
    let host = start(
        json!({
            "sh": {"builtin": "shell", "options": options},
            "sh2": {"command": kestrel_tests::kestrel_tools(),
                    "args": ["shell", "--root", dir.path(), "--options", options.to_string()]}
        }),
        &[dir.path()],
        logs.path(),
    )
    .await;
    for server in ["sh", "sh2"] {
        let out = host
            .call(server, "run", json!({"command": "ls"}), None)
            .await
            .expect("ls");
        assert!(!out.rendered.is_error, "{}", out.rendered.text);
        assert!(
            out.rendered.text.starts_with("exit code 0"),
            "{}",
            out.rendered.text
        );
        assert!(
            out.rendered.text.contains("marker.txt"),
            "{server}: runs in the root"
        );
        let refused = host
            .call(server, "run", json!({"command": "rm marker.txt"}), None)
            .await
            .expect("answered");
        assert!(refused.rendered.is_error);
        assert!(
            refused
                .rendered
                .text
                .contains("`rm` is not allowed (allowed: ls, sleep)"),
            "{}",
            refused.rendered.text
        );
        let slow = host
            .call(server, "run", json!({"command": "sleep 20"}), None)
            .await
            .expect("answered");
        assert!(
            slow.rendered.text.contains("stopped after 1 s"),
            "{}",
            slow.rendered.text
        );
    }
    assert!(dir.path().join("marker.txt").exists());
    host.shutdown().await;

    // Bad options are configuration errors naming the server and the field.
    let text = json!({"mcpServers": {"sh": {"builtin": "shell", "options": {"allow": ["ls"], "shel": 1}}}}).to_string();
    let e = McpConfig::parse(&text, false, Path::new("bad.json")).expect_err("unknown field");
    let e = e.to_string();
    assert!(
        e.contains("bad.json") && e.contains("sh") && e.contains("shel"),
        "{e}"
    );
}
