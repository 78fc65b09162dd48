//! OAuth against `oauth_desk` (tests/examples/oauth_desk.rs: an rmcp Streamable HTTP server with
//! its own authorization server, whose first access token lives one second and which issues
//! refresh tokens): `kestrel mcp login`, then a later command whose stored token has expired
//! refreshes it and calls a tool. (The conformance suite's servers issue no refresh tokens; its
//! scenarios are in mcp_conformance.rs.)

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use kestrel_tests::{kestrel, workspace_example};

/// A child process killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kestrel` with its config and cache directories in `dir`.
fn kestrel_in(dir: &Path) -> Command {
    let mut cmd = kestrel();
    cmd.env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_CACHE_HOME", dir.join("cache"));
    cmd
}

#[test]
fn a_login_is_kept_and_its_expired_token_refreshed_by_a_later_command() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut desk = Command::new(workspace_example("oauth_desk"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("oauth_desk");
    let mut first = String::new();
    BufReader::new(desk.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("its address");
    let _desk = Running(desk);
    let url = first
        .trim()
        .strip_prefix("listening on ")
        .expect("address")
        .to_string();
    let config = dir.path().join("mcp.json");
    let servers = serde_json::json!({"mcpServers": {"desk": {"url": url}}});
    std::fs::write(&config, servers.to_string()).expect("config");
    let call = || {
        kestrel_in(dir.path())
            .args(["tools", "call", "desk", "token_stats", "--config"])
            .arg(&config)
            .output()
            .expect("kestrel tools call")
    };

    let before = call();
    assert!(!before.status.success());
    let said = String::from_utf8_lossy(&before.stderr);
    assert!(said.contains("run `kestrel mcp login desk` once"), "{said}");

    let mut login = kestrel_in(dir.path())
        .args(["mcp", "login", "desk", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kestrel mcp login");
    let stderr = BufReader::new(login.stderr.take().expect("stderr"));
    let mut shown = Vec::new();
    for line in stderr.lines().map_while(Result::ok) {
        shown.push(line.clone());
        if let Some(page) = line.strip_prefix("  http") {
            // The browser: follow the authorization page's redirect to the login's port.
            let page = format!("http{page}");
            let opened = Command::new("python3")
                .args([
                    "-c",
                    "import sys, urllib.request; urllib.request.urlopen(sys.argv[1]).read()",
                ])
                .arg(&page)
                .status()
                .expect("python3");
            assert!(opened.success(), "{page}");
        }
    }
    assert!(login.wait().expect("login").success(), "{shown:?}");
    assert!(
        shown.iter().any(|l| l.starts_with("logged in to `desk`")),
        "{shown:?}"
    );
    assert!(
        !shown.iter().any(|l| l.contains("desk-token")),
        "a token was printed: {shown:?}"
    );

    // The first token lived a second: the next command refreshes it before calling.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let after = call();
    let out = String::from_utf8_lossy(&after.stdout);
    assert!(
        after.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&after.stderr)
    );
    assert!(out.contains("issued 2, refreshed 1"), "{out}");
    // And the refreshed token was kept: another command uses it as it is.
    let again = call();
    let out = String::from_utf8_lossy(&again.stdout);
    assert!(out.contains("issued 2, refreshed 1"), "{out}");
}
