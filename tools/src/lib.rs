//! kestrel-tools: Kestrel's own MCP servers, written with rmcp. Each is a type implementing
//! `ServerHandler`, usable in-process by Kestrel's MCP host (over an in-memory pipe, no child
//! process) or over stdio by any MCP host through the `kestrel-tools NAME` binary.
//!
//! - [`fs::FsServer`]: read, list, search and write files under configured roots.
//! - [`fetch::FetchServer`]: HTTP GET of allow-listed hosts, HTML as text.
//! - [`shell::ShellServer`]: run allow-listed programs (no shell), with a timeout and output limit.
//!
//! A tool that fails (a path outside the roots, a host not allowed) answers with an `isError`
//! result naming the problem, not a protocol error, so the model reads it and can correct itself.
//!
//! [`Builtin`] turns a server's name and its `options` (the same JSON in Kestrel's configuration
//! and on `kestrel-tools --options`) into a ready server, so both paths check settings alike.

use std::path::{Path, PathBuf};

use serde_json::Value;

pub mod address;
pub mod fetch;
pub mod fs;
pub mod sandbox;
pub mod shell;

/// The names of the servers this crate provides.
pub const SERVERS: &[&str] = &["fs", "fetch", "shell"];

/// A configured built-in server.
#[derive(Clone)]
pub enum Builtin {
    /// Files under the roots.
    Fs(fs::FsServer),
    /// Web pages from allowed hosts.
    Fetch(fetch::FetchServer),
    /// Allowed programs.
    Shell(shell::ShellServer),
}

/// Why a built-in server could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("built-in server `{name}`: {message}")]
pub struct BuiltinError {
    /// The server's name.
    pub name: String,
    /// What is wrong.
    pub message: String,
}

impl Builtin {
    /// Checks `options` for server `name` without starting anything (for configuration loading).
    pub fn check_options(name: &str, options: &Value) -> Result<(), BuiltinError> {
        let error = |message: String| BuiltinError {
            name: name.to_string(),
            message,
        };
        let options = if options.is_null() {
            &Value::Object(Default::default())
        } else {
            options
        };
        match name {
            "fs" => match options.as_object() {
                Some(o) if o.is_empty() => Ok(()),
                _ => Err(error(
                    "takes no options (its directories are the `roots`)".into(),
                )),
            },
            "fetch" => serde_json::from_value::<fetch::FetchOptions>(options.clone())
                .map(drop)
                .map_err(|e| error(format!("options: {e}"))),
            "shell" => serde_json::from_value::<shell::ShellOptions>(options.clone())
                .map(drop)
                .map_err(|e| error(format!("options: {e}"))),
            other => Err(error(format!(
                "no such server `{other}` (available: {})",
                SERVERS.join(", ")
            ))),
        }
    }

    /// Builds server `name` with `options` (JSON, `null` for none) and the host's `roots`;
    /// `sandbox_helper` confines the shell's commands (see [`sandbox`]).
    pub fn new(
        name: &str,
        options: &Value,
        roots: &[PathBuf],
        sandbox_helper: &Path,
    ) -> Result<Self, BuiltinError> {
        Self::check_options(name, options)?;
        let error = |message: String| BuiltinError {
            name: name.to_string(),
            message,
        };
        let options = options.clone();
        match name {
            "fs" => {
                if roots.is_empty() {
                    return Err(error("needs `roots` in the configuration".into()));
                }
                fs::FsServer::new(roots)
                    .map(Builtin::Fs)
                    .map_err(|e| error(e.to_string()))
            }
            "fetch" => serde_json::from_value(options)
                .map_err(|e| error(e.to_string()))
                .and_then(|o| fetch::FetchServer::new(o).map_err(error))
                .map(Builtin::Fetch),
            _ => serde_json::from_value(options)
                .map_err(|e| error(e.to_string()))
                .and_then(|o| {
                    shell::ShellServer::with_helper(o, roots, sandbox_helper).map_err(error)
                })
                .map(Builtin::Shell),
        }
    }

    /// What confines the programs this server runs, if it runs any and the sandbox is on.
    pub fn sandbox_status(&self) -> Option<String> {
        match self {
            Builtin::Shell(s) => Some(match s.sandbox() {
                Some(sandbox) => sandbox.status().to_string(),
                None => "off (\"sandbox\": false)".into(),
            }),
            Builtin::Fs(_) | Builtin::Fetch(_) => None,
        }
    }

    /// Serves MCP over `transport` until the client leaves.
    pub async fn serve<T, E, A>(self, transport: T) -> Result<(), String>
    where
        T: rmcp::transport::IntoTransport<rmcp::RoleServer, E, A> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        use rmcp::ServiceExt;
        async fn run<S: rmcp::ServerHandler>(
            running: Result<
                rmcp::service::RunningService<rmcp::RoleServer, S>,
                impl std::fmt::Display,
            >,
        ) -> Result<(), String> {
            let running = running.map_err(|e| e.to_string())?;
            running.waiting().await.map(drop).map_err(|e| e.to_string())
        }
        match self {
            Builtin::Fs(s) => run(s.serve(transport).await).await,
            Builtin::Fetch(s) => run(s.serve(transport).await).await,
            Builtin::Shell(s) => run(s.serve(transport).await).await,
        }
    }
}
