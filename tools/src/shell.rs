//! `shell`: run allow-listed commands, without a shell, confined by the kernel.
//!
//! The server exists only when a configuration names it, and runs only the programs on its
//! allow-list. The command line is split into words like a POSIX shell would (quotes, escapes), but
//! nothing else of a shell applies: no pipes, redirections, globs, variables or `;`. The list is a
//! first filter, not a boundary (an allowed `git` runs anything through an alias): the boundary is
//! the [sandbox](crate::sandbox), on by default, where a command reads only system directories,
//! its directories and the listed paths, writes only under its directories and a private
//! temporary directory, and has no network. Each command runs in its own process group in the
//! working directory, with a minimal environment and no input; at the timeout the whole group is
//! killed. Output past the limit is counted but not kept.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use process_wrap::tokio::{CommandWrap, ProcessGroup};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, schemars, tool, tool_handler, tool_router};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::sandbox::{Policy, Sandbox, SandboxSetting};

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
    /// The kernel sandbox: on by default; `false` runs commands unconfined; an object adds
    /// paths (`read`, `write`) or the network (`"network": true`).
    #[serde(default)]
    pub sandbox: SandboxSetting,
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
    /// Commands' `TMPDIR`, removed with the server.
    temp: Arc<tempfile::TempDir>,
    sandbox: Option<Arc<Sandbox>>,
}

/// Environment variables a command keeps; everything else of Kestrel's environment is dropped.
const PASSED_THROUGH: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "USER", "TERM"];

impl ShellServer {
    /// A server with `options`; `roots` supply the default working directory and, with `cwd`,
    /// the directories commands may write. Its sandbox helper is this executable (see
    /// [`crate::sandbox::run_helper_if_asked`]).
    pub fn new(options: ShellOptions, roots: &[PathBuf]) -> Result<Self, String> {
        let helper = crate::sandbox::current_helper().map_err(|e| e.to_string())?;
        Self::with_helper(options, roots, &helper)
    }

    /// [`ShellServer::new`] with another sandbox helper executable.
    pub fn with_helper(
        options: ShellOptions,
        roots: &[PathBuf],
        helper: &Path,
    ) -> Result<Self, String> {
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
        let temp = tempfile::Builder::new()
            .prefix("kestrel-shell-")
            .tempdir()
            .map_err(|e| format!("cannot make the shell's temporary directory: {e}"))?;
        let sandbox = match &options.sandbox {
            SandboxSetting::Off => None,
            SandboxSetting::On(settings) => {
                let mut writable = vec![cwd.clone(), temp.path().to_path_buf()];
                writable.extend(roots.iter().filter(|r| **r != cwd).cloned());
                let policy = Policy::new(settings, &writable).map_err(|e| e.to_string())?;
                let sandbox = Sandbox::start(helper, policy).map_err(|e| {
                    format!(
                        "the shell's sandbox cannot start: {e} (to run commands unconfined, \
                         set \"sandbox\": false in its options)"
                    )
                })?;
                Some(Arc::new(sandbox))
            }
        };
        Ok(Self {
            options,
            cwd,
            temp: Arc::new(temp),
            sandbox,
        })
    }

    /// What confines its commands, or `None` when the options turned the sandbox off.
    pub fn sandbox(&self) -> Option<&Sandbox> {
        self.sandbox.as_deref()
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
        let words = rest.iter().map(OsStr::new);
        let (executable, argv) = match &self.sandbox {
            Some(sandbox) => sandbox.wrap(OsStr::new(program), words),
            None => (Path::new(program), words.map(OsStr::to_os_string).collect()),
        };
        let mut command = CommandWrap::with_new(executable, |c| {
            c.args(argv).env_clear().current_dir(&self.cwd);
            for key in PASSED_THROUGH {
                if let Some(v) = std::env::var_os(key) {
                    c.env(key, v);
                }
            }
            c.env("TMPDIR", self.temp.path());
            if self.sandbox.is_some() {
                // The real home is closed to a sandboxed command, and programs such as git stop
                // on an unreadable ~/.gitconfig: it gets an empty one of its own.
                c.env("HOME", self.temp.path());
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
                "Runs these programs only, without a shell: {}. Working directory: {}.{}",
                self.options.allow.join(", "),
                self.cwd.display(),
                match &self.sandbox {
                    Some(s) if s.policy().network =>
                        " Commands are sandboxed: they read system \
                        directories and their own, and write only under the working directory \
                        and $TMPDIR.",
                    Some(_) =>
                        " Commands are sandboxed: they read system directories and their \
                        own, write only under the working directory and $TMPDIR, and have no \
                        network.",
                    None => "",
                }
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
            sandbox: SandboxSetting::Off,
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
