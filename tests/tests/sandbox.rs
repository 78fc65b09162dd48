//! The kernel sandbox against escape attempts: the built-in `shell` with `git`, `find` and
//! `python3` allowed (under a network namespace and under seccomp alone), and npm
//! `server-filesystem` confined to a root. A planted secret outside the root must never be read,
//! nothing outside may be written, and no connection may leave; ordinary work inside still works.

use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use kestrel::mcp::{HostOptions, McpConfig, McpHost};
use kestrel_tests::{kestrel_tools, node, npm_server};
use serde_json::{Value, json};

const SECRET: &str = "TOPSECRET-4417";

async fn host(servers: Value, root: &Path, logs: &Path) -> McpHost {
    let text = json!({"roots": [root], "mcpServers": servers}).to_string();
    let config = McpConfig::parse(&text, false, Path::new("test.json")).expect("config");
    let options = HostOptions {
        log_dir: logs.to_path_buf(),
        sandbox_helper: Some(kestrel_tools()),
        ..HostOptions::from_config(&config)
    };
    McpHost::start(&config, options).await
}

/// Runs `command` on shell server `server`; returns (output, is_error).
async fn run(host: &McpHost, server: &str, command: &str) -> (String, bool) {
    match host
        .call(server, "run", json!({"command": command}), None)
        .await
    {
        Ok(out) => (out.rendered.text, out.rendered.is_error),
        Err(e) => (e.to_string(), true),
    }
}

fn git(root: &Path, args: &[&str]) {
    let status = std::process::Command::new("git")
        .args(args)
        .current_dir(root)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .status()
        .expect("git");
    assert!(status.success(), "git {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_cannot_escape_its_root_or_reach_the_network() {
    let root = tempfile::tempdir().expect("root");
    let outside = tempfile::tempdir().expect("outside");
    let logs = tempfile::tempdir().expect("logs");
    let (root_path, out_path) = (root.path(), outside.path());
    std::fs::write(out_path.join("secret.txt"), SECRET).expect("secret");
    std::fs::write(root_path.join("data.txt"), "inside data\n").expect("data");
    std::fs::write(
        root_path.join("read.py"),
        "print(open('data.txt').read().strip().upper())\n",
    )
    .expect("script");
    std::os::unix::fs::symlink(out_path.join("secret.txt"), root_path.join("link")).expect("link");
    git(root_path, &["init", "-q"]);

    // Services outside the sandbox that nothing inside may reach.
    let tcp = TcpListener::bind("127.0.0.1:0").expect("tcp");
    tcp.set_nonblocking(true).expect("nonblocking");
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.set_nonblocking(true).expect("nonblocking");
    let unix = UnixListener::bind(out_path.join("agent.sock")).expect("unix");
    unix.set_nonblocking(true).expect("nonblocking");
    let (tcp_port, udp_port) = (
        tcp.local_addr().expect("addr").port(),
        udp.local_addr().expect("addr").port(),
    );

    let allow = json!(["git", "find", "python3", "cat", "ls"]);
    let host = host(
        json!({
            "ns": {"builtin": "shell", "options": {"allow": allow}},
            "sc": {"builtin": "shell", "options": {"allow": allow, "sandbox": {"isolation": "seccomp"}}},
        }),
        root_path,
        logs.path(),
    )
    .await;
    let status = host.status().await;
    for (server, network) in [("ns", "own namespace"), ("sc", "seccomp")] {
        let s = status.iter().find(|s| s.name == server).expect("listed");
        assert_eq!(s.status, "connected", "{:?}", s.error);
        let sandbox = s.sandbox.as_deref().unwrap_or("none");
        assert!(
            sandbox.contains("Landlock ABI") && sandbox.contains(network),
            "{server}: {sandbox}"
        );
    }

    let out = out_path.display();
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let planted_home = Path::new(&home).join(format!("kestrel-escape-{}", std::process::id()));
    let py = |code: &str| format!("python3 -c \"{code}\"");
    let escapes = [
        format!("git -c 'alias.x=!cat {out}/secret.txt' x"),
        format!("git -c 'alias.y=!touch {out}/from-git' y"),
        format!("find {out} -name secret.txt -exec cat {{}} ;"),
        format!(
            "find / -maxdepth 3 -name secret.txt -path '*{}*'",
            out_path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ),
        py(&format!("print(open('{out}/secret.txt').read())")),
        py(&format!("open('{out}/from-python', 'w').write('x')")),
        py(&format!(
            "open('{}', 'w').write('x')",
            planted_home.display()
        )),
        "cat link".to_string(),
        format!("cat /proc/self/root{out}/secret.txt"),
        format!("ls /proc/1/root{out}"),
        py(&format!(
            "import socket; s = socket.create_connection(('127.0.0.1', {tcp_port}), 2); print('connected')"
        )),
        py(&format!(
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'{SECRET}', ('127.0.0.1', {udp_port})); print('sent')"
        )),
        py(&format!(
            "import socket; s = socket.socket(socket.AF_UNIX); s.connect('{out}/agent.sock'); print('connected')"
        )),
        py(
            "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); print('raw')",
        ),
        py("import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); print('packet')"),
    ];
    for server in ["ns", "sc"] {
        for command in &escapes {
            let (text, _) = run(&host, server, command).await;
            assert!(
                !text.contains(SECRET),
                "{server}: `{command}` read the secret:\n{text}"
            );
            for success in ["\nconnected", "\nsent", "\nraw", "\npacket"] {
                assert!(
                    !text.contains(&format!("--- stdout ---{success}")),
                    "{server}: `{command}` reached the network:\n{text}"
                );
            }
            assert!(
                !text.starts_with("exit code 0"),
                "{server}: `{command}` should fail:\n{text}"
            );
        }
        // Ordinary work inside the root.
        let (text, is_error) = run(&host, server, "git status --short").await;
        assert!(
            !is_error && text.starts_with("exit code 0"),
            "{server}: {text}"
        );
        assert!(text.contains("data.txt"), "{server}: {text}");
        let (text, _) = run(&host, server, "find . -name data.txt").await;
        assert!(text.contains("./data.txt"), "{server}: {text}");
        let (text, _) = run(&host, server, "python3 read.py").await;
        assert!(text.contains("INSIDE DATA"), "{server}: {text}");
        let (text, _) = run(
            &host,
            server,
            &py(&format!(
                "import tempfile; open('made-by-{server}.txt', 'w').write('ok'); tempfile.mkstemp()"
            )),
        )
        .await;
        assert!(text.starts_with("exit code 0"), "{server}: {text}");
        assert!(root_path.join(format!("made-by-{server}.txt")).is_file());
    }
    host.shutdown().await;

    for planted in ["from-git", "from-python"] {
        assert!(
            !out_path.join(planted).exists(),
            "{planted} was written outside"
        );
    }
    assert!(!planted_home.exists(), "the home directory was written");
    assert!(tcp.accept().is_err(), "a TCP connection arrived");
    let mut buf = [0u8; 64];
    assert!(udp.recv_from(&mut buf).is_err(), "a UDP datagram arrived");
    assert!(unix.accept().is_err(), "a Unix-socket connection arrived");
    // The listeners were reachable all along: from here they answer.
    let mut probe = std::net::TcpStream::connect(("127.0.0.1", tcp_port)).expect("reachable");
    probe.set_read_timeout(Some(Duration::from_millis(10))).ok();
    let _ = probe.read(&mut buf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confined_filesystem_server_cannot_read_outside_its_root() {
    let root = tempfile::tempdir().expect("root");
    let outside = tempfile::tempdir().expect("outside");
    let logs = tempfile::tempdir().expect("logs");
    std::fs::write(root.path().join("notes.txt"), "inside notes").expect("notes");
    std::fs::write(outside.path().join("secret.txt"), SECRET).expect("secret");
    // The server itself is told both directories (and no roots, which would replace them): only
    // the sandbox keeps it in the root.
    let server = |sandbox: Value| {
        json!({"command": node(), "args": [npm_server("server-filesystem"), root.path(), outside.path()],
               "sandbox": sandbox})
    };
    let text = json!({"mcpServers": {
        "open": server(json!(false)),
        "boxed": server(json!({"write": [root.path()]})),
    }})
    .to_string();
    let config = McpConfig::parse(&text, false, Path::new("test.json")).expect("config");
    let options = HostOptions {
        log_dir: logs.path().to_path_buf(),
        sandbox_helper: Some(kestrel_tools()),
        ..HostOptions::from_config(&config)
    };
    let host = McpHost::start(&config, options).await;
    let status = host.status().await;
    for s in &status {
        assert_eq!(s.status, "connected", "{}: {:?}", s.name, s.error);
    }
    let boxed = status.iter().find(|s| s.name == "boxed").expect("boxed");
    assert!(
        boxed
            .sandbox
            .as_deref()
            .is_some_and(|s| s.contains("Landlock")),
        "{boxed:?}"
    );
    let read = |server: &'static str, path: std::path::PathBuf| {
        let host = &host;
        async move {
            match host
                .call(server, "read_text_file", json!({"path": path}), None)
                .await
            {
                Ok(out) => (out.rendered.text, out.rendered.is_error),
                Err(e) => (e.to_string(), true),
            }
        }
    };
    let secret = outside.path().join("secret.txt");
    let (text, _) = read("open", secret.clone()).await;
    assert!(
        text.contains(SECRET),
        "unconfined, the server reads it: {text}"
    );
    let (text, is_error) = read("boxed", secret).await;
    assert!(is_error && !text.contains(SECRET), "{text}");
    let (text, is_error) = read("boxed", root.path().join("notes.txt")).await;
    assert!(!is_error && text.contains("inside notes"), "{text}");
    host.shutdown().await;
}

/// Not root: the network namespace comes from a user namespace that maps only the caller's ids.
/// Run as `nobody` (through `setpriv`) when the tests run as root.
#[test]
fn an_unprivileged_user_is_confined_through_a_user_namespace() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    let open = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(dir.path(), open.clone()).expect("chmod");
    let helper = dir.path().join("kestrel-tools");
    std::fs::copy(kestrel_tools(), &helper).expect("copy");
    std::fs::set_permissions(&helper, open).expect("chmod");
    std::fs::write(dir.path().join("secret.txt"), SECRET).expect("secret");
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .expect("id");
    let as_root = String::from_utf8_lossy(&root.stdout).trim() == "0";
    let policy = json!({"read": ["/usr", "/bin", "/lib", "/lib64", "/etc/ld.so.cache", &helper],
                        "write": ["/dev/null"], "network": false, "isolation": "namespace"})
    .to_string();
    let confined = |args: &[&str]| {
        let mut command = if as_root {
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&helper);
            c
        } else {
            std::process::Command::new(&helper)
        };
        let out = command
            .arg("__sandbox")
            .arg(&policy)
            .args(args)
            .output()
            .expect("helper");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let status = confined(&[]);
    assert!(status.contains(r#""network":"namespace""#), "{status}");
    let secret = dir.path().join("secret.txt").display().to_string();
    let read = confined(&["cat", &secret]);
    assert!(
        read.contains("Permission denied") && !read.contains(SECRET),
        "{read}"
    );
    let connect = confined(&[
        "python3",
        "-c",
        "import os, socket; print('uid', os.getuid()); socket.create_connection(('127.0.0.1', 9), 1)",
    ]);
    assert!(connect.contains("Error"), "{connect}");
    if as_root {
        assert!(connect.contains("uid 65534"), "{connect}");
    }
}
