//! Host-wide settings and the protocol lifecycle Kestrel asks servers for.

use std::path::PathBuf;
use std::time::Duration;

use rmcp::model::ProtocolVersion;
use rmcp::service::ClientLifecycleMode;

use super::config::McpConfig;
use super::elicitation::{ElicitPolicy, ElicitationHandle};
use super::oauth::AuthorizerHandle;
use super::sampling::SamplingHandle;

/// Host-wide settings (per-server ones live in [`ServerConfig`]).
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Directories offered to servers as roots.
    pub roots: Vec<PathBuf>,
    /// Longest tool result text handed back (longer ones are cut with a marker).
    pub max_result_bytes: usize,
    /// Longest single message accepted from a stdio server (rmcp's own stdio limit by default).
    pub max_message_bytes: usize,
    /// Where each stdio server's stderr goes (`<dir>/<server>.log`).
    pub log_dir: PathBuf,
    /// Delay before the second restart attempt of a failing server; it doubles per failure.
    pub restart_backoff: Duration,
    /// Longest delay between restart attempts.
    pub max_restart_backoff: Duration,
    /// Offer a `read_resource` tool for servers that have resources.
    pub resource_tool: bool,
    /// Answers servers' sampling requests; without one the capability is not offered.
    pub sampling: Option<SamplingHandle>,
    /// Answers servers' elicitation requests (declines them by default).
    pub elicitation: ElicitationHandle,
    /// Logs in to a server that asks for OAuth while connecting; without one such a server fails
    /// to start, naming `kestrel mcp login`.
    pub authorizer: Option<AuthorizerHandle>,
    /// Where servers' OAuth tokens are kept (one file per server); in memory only when `None`.
    pub oauth_dir: Option<PathBuf>,
    /// Confine stdio servers that have no `sandbox` setting of their own.
    pub sandbox_servers: bool,
    /// The sandbox helper (an executable that calls
    /// [`kestrel_tools::sandbox::run_helper_if_asked`]); this executable when `None`.
    pub sandbox_helper: Option<PathBuf>,
}

/// Default for [`HostOptions::max_result_bytes`].
pub const DEFAULT_MAX_RESULT_BYTES: usize = 64 * 1024;
/// Default for [`HostOptions::max_message_bytes`]: rmcp's stdio line limit.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

impl HostOptions {
    /// The sandbox helper to use.
    pub fn helper(&self) -> Result<PathBuf, String> {
        match &self.sandbox_helper {
            Some(path) => Ok(path.clone()),
            None => kestrel_tools::sandbox::current_helper().map_err(|e| e.to_string()),
        }
    }

    /// The defaults, with the host-wide settings of a configuration file applied.
    pub fn from_config(config: &McpConfig) -> Self {
        let mut options = Self {
            roots: config.roots.clone(),
            resource_tool: config.resource_tool,
            sandbox_servers: config.sandbox_servers,
            ..Self::default()
        };
        if let Some(max) = config.max_result_bytes {
            options.max_result_bytes = max;
        }
        options
    }
}

impl Default for HostOptions {
    fn default() -> Self {
        let log_dir = dirs::cache_dir()
            .unwrap_or_else(std::env::temp_dir)
            .join("kestrel")
            .join("mcp-logs");
        Self {
            roots: Vec::new(),
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            log_dir,
            restart_backoff: Duration::from_millis(500),
            max_restart_backoff: Duration::from_secs(30),
            resource_tool: false,
            sampling: None,
            elicitation: ElicitPolicy::Decline.into(),
            authorizer: None,
            oauth_dir: Some(default_oauth_dir()),
            sandbox_servers: false,
            sandbox_helper: None,
        }
    }
}

/// Where `kestrel mcp login` keeps tokens: `oauth/` in Kestrel's config directory
/// (`~/.config/kestrel/oauth/` on Linux).
pub fn default_oauth_dir() -> PathBuf {
    dirs::config_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("kestrel")
        .join("oauth")
}

/// The lifecycle Kestrel asks for: the newest protocol, falling back to any older one rmcp knows.
pub(crate) fn lifecycle() -> ClientLifecycleMode {
    ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::LATEST],
        legacy_version: Some(ProtocolVersion::LATEST_WITH_INITIALIZE),
    }
}
