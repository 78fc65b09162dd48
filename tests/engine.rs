//! A real llama.cpp `llama-server` on loopback, for the remote-engine tests: built by
//! `LLAMA_CPP_SERVER=1 scripts/build-llama-cpp` from the same sources as the benchmarks' peers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `llama-server`: `$KESTREL_LLAMA_SERVER`, or where scripts/build-llama-cpp builds it. Missing:
/// the test fails, naming the script.
pub fn llama_server_binary() -> PathBuf {
    let path = std::env::var_os("KESTREL_LLAMA_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::kestrel_cache().join("llama-cpp-0.3.36/build/bin/llama-server"));
    assert!(
        path.is_file(),
        "{} missing: run LLAMA_CPP_SERVER=1 scripts/build-llama-cpp",
        path.display()
    );
    path
}

/// A running `llama-server`, killed on drop.
pub struct LlamaServer {
    child: Child,
    port: u16,
}

impl LlamaServer {
    /// Serves `model` on a free loopback port with `slots` sequences of `ctx` positions each,
    /// one thread, and its metrics on; waits until it is ready.
    pub fn start(model: &Path, slots: usize, ctx: usize) -> Self {
        Self::start_with(model, slots, ctx, &[])
    }

    /// [`LlamaServer::start`] with more of its flags (`--jinja` for its Chat Completions with
    /// tools and reasoning).
    pub fn start_with(model: &Path, slots: usize, ctx: usize, extra: &[&str]) -> Self {
        let binary = llama_server_binary();
        let port = free_port();
        let child = Command::new(&binary)
            .env(
                "LD_LIBRARY_PATH",
                binary.parent().expect("the binary's folder"),
            )
            .arg("-m")
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-t", "1", "-np", &slots.to_string()])
            .args(["-c", &(ctx * slots).to_string(), "--metrics", "--no-webui"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("llama-server starts");
        let mut server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(120);
        while get(port, "/health").map(|(status, _)| status) != Some(200) {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("llama-server exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "llama-server not ready in 120 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// Its OpenAI-compatible base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Its root URL.
    pub fn root(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A counter of its Prometheus `/metrics` (`llamacpp:NAME`).
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = get(self.port, "/metrics").expect("metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("llamacpp:{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no llamacpp:{name} in {body}"))
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The python of the virtualenv scripts/fetch-vllm installs vLLM's CPU build into:
/// `$KESTREL_VLLM_PYTHON`, or its default place. Missing: the test fails, naming the script.
pub fn vllm_python() -> PathBuf {
    let path = std::env::var_os("KESTREL_VLLM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::kestrel_cache().join("vllm-0.32.0/bin/python"));
    assert!(
        path.is_file(),
        "{} missing: run scripts/fetch-vllm",
        path.display()
    );
    path
}

/// A running vLLM OpenAI-compatible server (the CPU build), killed on drop.
pub struct VllmServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl VllmServer {
    /// Serves the checkpoint in `model` (a model directory) on a free loopback port, with
    /// `extra` flags; waits until it is ready (its start takes about a minute on two cores).
    pub fn start(model: &Path, log_dir: &Path, extra: &[&str]) -> Self {
        let port = free_port();
        let log = log_dir.join("vllm.log");
        let out = std::fs::File::create(&log).expect("vLLM log");
        let child = Command::new(vllm_python())
            // Its own process group: vLLM runs its engine and workers as child processes, which
            // must stop with it (see `Drop`).
            .process_group(0)
            .args(["-m", "vllm.entrypoints.openai.api_server", "--model"])
            .arg(model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--max-model-len",
                "2048",
                "--enforce-eager",
                "--dtype",
                "float32",
            ])
            .args(extra)
            // 1 GiB of KV cache is plenty for a tiny model; the default takes 4.
            .env("VLLM_CPU_KVCACHE_SPACE", "1")
            .env("VLLM_LOGGING_LEVEL", "WARNING")
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("vLLM starts");
        let mut server = Self { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(400);
        while get(port, "/health").map(|(status, _)| status) != Some(200) {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("vLLM exited at start: {status}\n{}", server.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "vLLM not ready in 400 s\n{}",
                server.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        server
    }

    /// Its OpenAI-compatible base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// The end of its log, for a failing test's message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for VllmServer {
    /// Stops the server and its engine and worker processes (killing the server alone would
    /// leave them running, holding their memory): the group is asked to stop, then killed.
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let signal = |name: &str| {
            let _ = Command::new("kill")
                .args([name, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Whatever of the group is left (the workers may outlive the server by a moment).
        signal("-KILL");
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A plain HTTP/1.0 GET on loopback: the status and body, `None` when nothing answers.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let status = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// A plain HTTP/1.0 POST of `body` (JSON) to `url` (`http://127.0.0.1:PORT/PATH`): the status
/// and the answer's JSON.
pub fn post_json(url: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (address, path) = rest.split_once('/').expect("a path");
    let mut stream = TcpStream::connect(address).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(300)))
        .expect("timeout");
    let body = body.to_string();
    write!(
        stream,
        "POST /{path} HTTP/1.0\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let (_, json) = answer.split_once("\r\n\r\n").expect("a body");
    (status, serde_json::from_str(json).expect("JSON body"))
}
