//! `shell`: run allow-listed commands, without a shell.
//!
//! The server exists only when a configuration names it, and runs only the programs on its
//! allow-list. The command line is split into words like a POSIX shell would (quotes, escapes), but
//! nothing else of a shell applies: no pipes, redirections, globs, variables or `;`, so an allowed
//! `ls` cannot become `ls; rm -rf ~`. Each command runs in its own process group in the working
//! directory, with a minimal environment and no input; at the timeout the whole group is killed.
//! Output past the limit is counted but not kept.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use process_wrap::tokio::{CommandWrap, ProcessGroup};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Settings, from the `options` of a `{"builtin": "shell"}` server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellOptions {
    /// Programs that may run (`git`, `ls`, or a full path); nothing else can.
    pub allow: Vec<String>,
    /// Working directory (default: the first root, else the current directory).
    pub cwd: Option<PathBuf>,
    /// Seconds a command may run (default 30).
    #[serde(default = "default_timeout")]
    pub timeout_secs: f64,
    /// Most bytes kept of stdout and of stderr each (default 64 KiB).
    #[serde(default = "default_max_output")]
    pub max_output_bytes: usize,
}

fn default_timeout() -> f64 {
    30.0
}

fn default_max_output() -> usize {
    64 * 1024
}

/// A command to run.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// The command line, e.g. `git log -n 3`. Words are split like a shell does, but pipes,
    /// redirections, globs and variables are not interpreted.
    pub command: String,
}

/// The shell server.
#[derive(Clone)]
pub struct ShellServer {
    options: ShellOptions,
    cwd: PathBuf,
}

/// Environment variables a command keeps; everything else of Kestrel's environment is dropped.
const PASSED_THROUGH: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "TERM"];

impl ShellServer {
    /// A server with `options`; `roots` supply the default working directory.
    pub fn new(options: ShellOptions, roots: &[PathBuf]) -> Result<Self, String> {
        if options.allow.is_empty() {
            return Err("shell needs `allow`: the programs it may run".into());
        }
        if !(options.timeout_secs.is_finite() && options.timeout_secs > 0.0) {
            return Err("shell `timeout_secs` must be a positive number".into());
        }
        let cwd = match (&options.cwd, roots.first()) {
            (Some(dir), _) => dir.clone(),
            (None, Some(root)) => root.clone(),
            (None, None) => {
                std::env::current_dir().map_err(|e| format!("no working directory: {e}"))?
            }
        };
        if !cwd.is_dir() {
            return Err(format!("shell `cwd` {} is not a directory", cwd.display()));
        }
        Ok(Self { options, cwd })
    }

    fn program_allowed(&self, program: &str) -> bool {
        // A bare name on the list allows only that name, resolved through PATH; a path on the
        // list allows only that path.
        self.options.allow.iter().any(|a| a == program)
    }
}

/// Reads a stream to its end, keeping at most `limit` bytes; returns them and the total length.
async fn read_limited<R: AsyncRead + Unpin>(mut reader: R, limit: usize) -> (Vec<u8>, usize) {
    let mut kept = Vec::new();
    let mut total = 0;
    let mut buf = vec![0u8; 8192];
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            break;
        }
        total += n;
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    (kept, total)
}

fn section(name: &str, (bytes, total): &(Vec<u8>, usize)) -> String {
    if *total == 0 {
        return String::new();
    }
    let mut text = format!("--- {name} ---\n{}", String::from_utf8_lossy(bytes));
    if !text.ends_with('\n') {
        text.push('\n');
    }
    if *total > bytes.len() {
        text.push_str(&format!(
            "[cut: {} of {total} bytes not shown]\n",
            total - bytes.len()
        ));
    }
    text
}

#[tool_router]
impl ShellServer {
    /// Run one allow-listed program with arguments and return its exit status and output. No
    /// shell is involved: pipes, redirections, globs and variables do not work.
    // A program can change anything the user can, or reach the network.
    #[tool(annotations(destructive_hint = true, open_world_hint = true))]
    async fn run(&self, Parameters(args): Parameters<RunArgs>) -> Result<String, String> {
        let words = shlex::split(&args.command)
            .ok_or_else(|| format!("`{}` has unbalanced quotes", args.command))?;
        let Some((program, rest)) = words.split_first() else {
            return Err("the command is empty".into());
        };
        if !self.program_allowed(program) {
            return Err(format!(
                "`{program}` is not allowed (allowed: {})",
                self.options.allow.join(", ")
            ));
        }
        let mut command = CommandWrap::with_new(program, |c| {
            c.args(rest).env_clear().current_dir(&self.cwd);
            for key in PASSED_THROUGH {
                if let Some(v) = std::env::var_os(key) {
                    c.env(key, v);
                }
            }
            c.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
        });
        command.wrap(ProcessGroup::leader());
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot run `{program}`: {e}"))?;
        let (Some(stdout), Some(stderr)) = (child.stdout().take(), child.stderr().take()) else {
            return Err("the command's output could not be captured".into());
        };
        let limit = self.options.max_output_bytes;
        let started = Instant::now();
        let timeout = Duration::from_secs_f64(self.options.timeout_secs);
        let work = async {
            let (out, err) = tokio::join!(read_limited(stdout, limit), read_limited(stderr, limit));
            let status = child.wait().await;
            (out, err, status)
        };
        let (out, err, status) = match tokio::time::timeout(timeout, work).await {
            Ok(done) => done,
            Err(_) => {
                // The group, not just the leader: a program's own children die with it.
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(format!(
                    "`{}` was stopped after {} s (the timeout)",
                    args.command, self.options.timeout_secs
                ));
            }
        };
        let status = status.map_err(|e| format!("waiting for `{program}`: {e}"))?;
        let code = match status.code() {
            Some(c) => format!("exit code {c}"),
            None => "killed by a signal".to_string(),
        };
        Ok(format!(
            "{code} after {:.1} s\n{}{}",
            started.elapsed().as_secs_f64(),
            section("stdout", &out),
            section("stderr", &err)
        )
        .trim_end()
        .to_string())
    }
}

#[tool_handler]
impl ServerHandler for ShellServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "kestrel-shell",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(format!(
                "Runs these programs only, without a shell: {}. Working directory: {}.",
                self.options.allow.join(", "),
                self.cwd.display()
            ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(allow: &[&str], timeout: f64, max: usize) -> ShellServer {
        let options = ShellOptions {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            cwd: None,
            timeout_secs: timeout,
            max_output_bytes: max,
        };
        ShellServer::new(options, &[std::env::temp_dir()]).expect("server")
    }

    async fn run(s: &ShellServer, command: &str) -> Result<String, String> {
        s.run(Parameters(RunArgs {
            command: command.into(),
        }))
        .await
    }

    #[tokio::test]
    async fn only_allowed_programs_run_and_nothing_is_interpreted() {
        let s = server(&["echo", "sh"], 10.0, 1000);
        let out = run(&s, "echo 'two words' $HOME; ls").await.expect("echo");
        assert_eq!(out.lines().nth(2), Some("two words $HOME; ls"), "{out}");
        assert!(out.starts_with("exit code 0"), "{out}");
        let e = run(&s, "rm -rf /tmp/x").await.expect_err("rm");
        assert!(e.contains("`rm` is not allowed (allowed: echo, sh)"), "{e}");
        assert!(
            run(&s, "echo 'open")
                .await
                .is_err_and(|e| e.contains("quotes"))
        );
        assert!(run(&s, "   ").await.is_err_and(|e| e.contains("empty")));
        let failed = run(&s, "sh -c 'echo oops >&2; exit 3'").await.expect("sh");
        assert!(failed.starts_with("exit code 3"), "{failed}");
        assert!(failed.contains("--- stderr ---\noops"), "{failed}");
    }

    #[tokio::test]
    async fn long_output_is_cut_and_slow_commands_are_stopped() {
        let s = server(&["sh"], 1.0, 100);
        let out = run(&s, "sh -c 'yes | head -c 5000'").await.expect("yes");
        assert!(out.contains("[cut: 4900 of 5000 bytes not shown]"), "{out}");
        let started = Instant::now();
        let e = run(&s, "sh -c 'sleep 30 & sleep 30'")
            .await
            .expect_err("slow");
        assert!(e.contains("stopped after 1 s"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn run_is_annotated_as_destructive() {
        let tools = ShellServer::tool_router().list_all();
        let hints: Vec<_> = tools
            .iter()
            .map(|t| {
                t.annotations
                    .as_ref()
                    .map(|a| (a.read_only_hint, a.destructive_hint))
            })
            .collect();
        assert_eq!(hints, [Some((None, Some(true)))]);
    }

    #[test]
    fn options_are_checked() {
        let options = |v: serde_json::Value| serde_json::from_value::<ShellOptions>(v);
        assert!(options(serde_json::json!({"allow": ["ls"], "shell": true})).is_err());
        let empty = options(serde_json::json!({"allow": []})).expect("parses");
        assert!(ShellServer::new(empty, &[]).is_err_and(|e| e.contains("allow")));
    }
}
