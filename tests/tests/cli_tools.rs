//! `kestrel tools list` and `kestrel tools call` end to end: the binary, a configuration file, the
//! fault server and server-everything; output and exit codes.

use std::path::Path;
use std::process::Output;

use kestrel_tests::{fault_server, kestrel, node, npm_server};
use serde_json::{Value, json};

/// Writes a configuration into `dir` and runs `kestrel` with its cache (server logs) there too.
fn run(dir: &Path, servers: Value, args: &[&str]) -> (Output, String, String) {
    let config = dir.join("mcp.json");
    std::fs::write(&config, json!({"mcpServers": servers}).to_string()).expect("write");
    let out = kestrel()
        .args(args)
        .arg("--config")
        .arg(&config)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .output()
        .expect("run kestrel");
    let clean = |b: &[u8]| String::from_utf8_lossy(b).replace(&dir.display().to_string(), "[DIR]");
    let (stdout, stderr) = (clean(&out.stdout), clean(&out.stderr));
    (out, stdout, stderr)
}

fn fault(extra: &[&str]) -> Value {
    let mut args = vec![fault_server().display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    json!({"command": "python3", "args": args})
}

#[test]
fn list_shows_each_server_and_exits_2_when_one_failed() {
    let dir = tempfile::tempdir().expect("tmp");
    let servers = json!({
        "faulty": fault(&[]),
        "missing": {"command": "/no/such/server"},
        "off": {"command": "x", "disabled": true},
    });
    let (out, stdout, _) = run(dir.path(), servers.clone(), &["tools", "list"]);
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!("tools_list", stdout);

    let (out, stdout, _) = run(dir.path(), servers, &["tools", "list", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_str(&stdout).expect("json");
    let statuses: Vec<&str> = v["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| s["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(statuses, ["connected", "failed", "disabled"]);
    assert_eq!(v["offered"].as_array().map(Vec::len), Some(9));
}

#[test]
fn call_prints_results_and_fails_clearly() {
    let dir = tempfile::tempdir().expect("tmp");
    let servers = json!({
        "everything": {"command": node(), "args": [npm_server("server-everything"), "stdio"]},
        "faulty": fault(&[]),
    });
    let d = dir.path();
    let (out, stdout, _) = run(
        d,
        servers.clone(),
        &[
            "tools",
            "call",
            "everything",
            "get-sum",
            "--args",
            r#"{"a": 20, "b": 22}"#,
        ],
    );
    assert!(out.status.success());
    assert!(stdout.contains("42"), "{stdout}");

    let (out, stdout, stderr) = run(
        d,
        servers.clone(),
        &[
            "tools",
            "call",
            "everything",
            "trigger-long-running-operation",
            "--args",
            r#"{"duration": 1, "steps": 2}"#,
        ],
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("Long running operation completed"),
        "{stdout}"
    );
    assert!(
        stderr.contains("everything: progress 1/2") && stderr.contains("progress 2/2"),
        "{stderr}"
    );

    let (_, stdout, _) = run(
        d,
        servers.clone(),
        &[
            "tools",
            "call",
            "everything",
            "echo",
            "--args",
            r#"{"message": "m"}"#,
            "--json",
        ],
    );
    let raw: Value = serde_json::from_str(&stdout).expect("raw result");
    assert_eq!(raw["content"][0]["text"], "Echo: m");

    let failures = [
        ("unknown_server", vec!["tools", "call", "nobody", "echo"]),
        ("unknown_tool", vec!["tools", "call", "faulty", "nope"]),
        (
            "bad_args",
            vec!["tools", "call", "faulty", "ok", "--args", "{not json"],
        ),
        (
            "args_not_object",
            vec!["tools", "call", "faulty", "ok", "--args", "[1]"],
        ),
        (
            "bad_timeout",
            vec!["tools", "call", "faulty", "ok", "--timeout", "0"],
        ),
        (
            "timeout",
            vec!["tools", "call", "faulty", "hang", "--timeout", "0.5"],
        ),
        (
            "tool_error",
            vec![
                "tools",
                "call",
                "everything",
                "get-sum",
                "--args",
                r#"{"a": "x"}"#,
            ],
        ),
    ];
    for (name, args) in failures {
        let (out, stdout, stderr) = run(d, servers.clone(), &args);
        assert_eq!(out.status.code(), Some(1), "{name}: {stdout} {stderr}");
        let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        insta::assert_snapshot!(format!("tools_call_{name}"), error.join("\n"));
    }
}

#[test]
fn missing_default_config_says_where_it_looked() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = kestrel()
        .args(["tools", "list"])
        .env_remove("KESTREL_CONFIG")
        .env("XDG_CONFIG_HOME", dir.path())
        .env("HOME", dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr =
        String::from_utf8_lossy(&out.stderr).replace(&dir.path().display().to_string(), "[DIR]");
    insta::assert_snapshot!("tools_no_config", stderr);
}

#[test]
fn list_shows_what_confines_each_server_and_the_binary_is_its_own_helper() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("root");
    std::fs::create_dir(&root).expect("root");
    std::fs::write(dir.path().join("secret.txt"), "planted").expect("secret");
    let everything = |sandbox: Value| json!({"command": node(), "args": [npm_server("server-everything"), "stdio"], "sandbox": sandbox});
    let servers = json!({
        "sh": {"builtin": "shell", "options": {"allow": ["cat"], "cwd": root}},
        "boxed": everything(Value::Null),
        "open": everything(json!(false)),
    });
    let (out, stdout, stderr) = run(
        dir.path(),
        servers.clone(),
        &["tools", "list", "--sandbox-servers"],
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let sandbox_of = |server: &str| {
        let mut lines = stdout
            .lines()
            .skip_while(|l| !l.starts_with(&format!("{server}  ")));
        lines.next();
        lines
            .next()
            .and_then(|l| l.strip_prefix("  sandbox: "))
            .map(str::to_string)
    };
    for server in ["sh", "boxed"] {
        let sandbox = sandbox_of(server).unwrap_or_default();
        assert!(
            sandbox.starts_with("Landlock ABI") && sandbox.contains("no network"),
            "{server}: {stdout}"
        );
    }
    assert_eq!(sandbox_of("open"), None, "{stdout}");

    let (out, stdout, _) = run(
        dir.path(),
        servers,
        &[
            "tools",
            "call",
            "sh",
            "run",
            "--args",
            r#"{"command": "cat ../secret.txt"}"#,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("Permission denied") && !stdout.contains("planted"),
        "{stdout}"
    );
}
