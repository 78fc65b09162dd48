//! Every way out of every command stops MCP servers gracefully: the server sees EOF on its stdin
//! (and exits by itself) before any signal, whether the command ends normally, fails, or is
//! interrupted. The server is the real `mcp-server-time`, run by `fixtures/mcp/record_exit.py`,
//! which records `started`, then `eof` when its input closed or `sigterm` when SIGTERM came first;
//! a SIGKILL leaves no second line.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kestrel_tests::{assets, fixtures, kestrel, mcp_servers};
use serde_json::json;

/// A config with one recording server, and where it records.
struct Recorder {
    dir: tempfile::TempDir,
}

impl Recorder {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let config = json!({"mcpServers": {"clock": {
            "command": mcp_servers().join("py/bin/python"),
            "args": [fixtures().join("mcp/record_exit.py"), dir.path().join("record")],
        }}});
        std::fs::write(dir.path().join("mcp.json"), config.to_string()).expect("config");
        Self { dir }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("mcp.json")
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("record"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits until the server has started.
    fn wait_started(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.lines().is_empty() {
            assert!(Instant::now() < deadline, "the server never started");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The record once the server has stopped (the command may return a moment before the
    /// server writes its last line).
    fn after_stop(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.lines().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.lines()
    }
}

/// The graceful stop: started, then EOF on stdin; no SIGTERM, and not killed.
fn assert_saw_eof(recorder: &Recorder, path: &str) {
    assert_eq!(
        recorder.after_stop(),
        ["started", "eof"],
        "{path}: the server must see EOF on stdin before any signal"
    );
}

/// The command succeeded, and its servers stopped gracefully.
fn assert_success_then_eof(out: &std::process::Output, recorder: &Recorder, path: &str) {
    assert!(
        out.status.success(),
        "{path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_saw_eof(recorder, path);
}

/// `kestrel CMD` on the tiny model with the recording server.
fn command(cmd: &str, recorder: &Recorder) -> Command {
    let mut c = kestrel();
    c.arg(cmd)
        .arg("--model")
        .arg(fixtures().join("models/qwen3-tiny-fullvocab"))
        .arg("--tokenizer")
        .arg(assets().join("qwen3-tokenizer"))
        .arg("--config")
        .arg(recorder.config())
        .env("XDG_CACHE_HOME", recorder.dir.path());
    c
}

fn wait(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "the command did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn interrupt(child: &Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// `kestrel run --json` with a task that generates until it is stopped; returns the child once
/// the task is running (its first event has been printed), with the rest of stdout.
fn running_task(recorder: &Recorder) -> (Child, BufReader<std::process::ChildStdout>) {
    let mut child = command("run", recorder)
        .args([
            "--json",
            "--no-think",
            "--max-tokens",
            "100000",
            "--seed",
            "3",
        ])
        .arg("Count to a million.")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("first event");
    assert!(first.contains("\"event\""), "{first}");
    (child, out)
}

#[test]
fn run_stops_servers_gracefully_at_its_normal_end() {
    let recorder = Recorder::new();
    let out = command("run", &recorder)
        .args([
            "--no-think",
            "--max-tokens",
            "8",
            "--seed",
            "1",
            "What time is it?",
        ])
        .output()
        .expect("run");
    assert_success_then_eof(&out, &recorder, "run, normal end");
}

#[test]
fn run_stops_servers_gracefully_when_it_fails() {
    // Output that cannot be written is an error of the command, after the task ran.
    let recorder = Recorder::new();
    let mut child = command("run", &recorder)
        .args([
            "--json",
            "--no-think",
            "--max-tokens",
            "8",
            "--seed",
            "1",
            "Hi",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run");
    drop(child.stdout.take());
    let status = wait(&mut child);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot write the output"), "{stderr}");
    assert_saw_eof(&recorder, "run, error");
}

#[test]
fn the_first_ctrl_c_cancels_the_task_and_run_exits_through_the_shutdown_path() {
    let recorder = Recorder::new();
    let (mut child, mut out) = running_task(&recorder);
    interrupt(&child);
    let status = wait(&mut child);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("stdout");
    assert_eq!(status.code(), Some(130));
    assert!(
        rest.lines().any(|l| l == r#"{"event":"cancelled"}"#),
        "the task reports that it was cancelled: {rest}"
    );
    assert_saw_eof(&recorder, "run, Ctrl-C");
}

#[test]
fn chat_stops_servers_gracefully_at_the_end_of_input() {
    let recorder = Recorder::new();
    let mut child = command("chat", &recorder)
        .args(["--no-think", "--max-tokens", "8", "--seed", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chat");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"hello\n").expect("input");
    drop(stdin);
    let out = child.wait_with_output().expect("chat");
    assert_success_then_eof(&out, &recorder, "chat, end of input");
}

#[test]
fn ctrl_c_at_the_chat_prompt_exits_through_the_shutdown_path() {
    let recorder = Recorder::new();
    let mut child = command("chat", &recorder)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chat");
    recorder.wait_started();
    // The prompt is reached once the servers are up; give the command a moment to get there.
    std::thread::sleep(Duration::from_millis(500));
    interrupt(&child);
    let status = wait(&mut child);
    assert_eq!(status.code(), Some(130));
    assert_saw_eof(&recorder, "chat, Ctrl-C at the prompt");
    drop(child.stdin.take());
}

#[test]
fn ctrl_c_during_a_chat_answer_cancels_it_and_the_conversation_goes_on() {
    let recorder = Recorder::new();
    let mut child = command("chat", &recorder)
        .args([
            "--json",
            "--no-think",
            "--max-tokens",
            "100000",
            "--seed",
            "3",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chat");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"Count to a million.\n").expect("input");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("first event");
    interrupt(&child);
    loop {
        line.clear();
        assert!(out.read_line(&mut line).expect("stdout") > 0, "no cancel");
        if line.trim() == r#"{"event":"cancelled"}"# {
            break;
        }
    }
    // Still at the prompt: the servers are up until the input ends.
    assert_eq!(recorder.lines(), ["started"]);
    stdin.write_all(b"/exit\n").expect("exit");
    drop(stdin);
    let status = wait(&mut child);
    assert!(status.success(), "{status:?}");
    assert_saw_eof(&recorder, "chat, Ctrl-C during an answer, then /exit");
}

#[test]
fn batch_stops_servers_gracefully_at_its_normal_end() {
    let recorder = Recorder::new();
    let tasks = recorder.dir.path().join("tasks.jsonl");
    std::fs::write(&tasks, "{\"id\": 1, \"task\": \"Hi\"}\n").expect("tasks");
    let out = command("batch", &recorder)
        .args(["--no-think", "--max-tokens", "8", "--seed", "1"])
        .arg(&tasks)
        .output()
        .expect("batch");
    assert_success_then_eof(&out, &recorder, "batch, normal end");
}

#[test]
fn tools_call_stops_servers_gracefully() {
    let recorder = Recorder::new();
    let out = kestrel()
        .args(["tools", "call", "clock", "get_current_time", "--args"])
        .arg(r#"{"timezone": "UTC"}"#)
        .arg("--config")
        .arg(recorder.config())
        .env("XDG_CACHE_HOME", recorder.dir.path())
        .output()
        .expect("tools call");
    assert_success_then_eof(&out, &recorder, "tools call");
}
