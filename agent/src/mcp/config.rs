//! MCP server configuration: the `{"mcpServers": {...}}` file users already have (Claude Desktop,
//! Cursor, VS Code, Qwen-Agent), in JSON or the same structure in TOML.
//!
//! Each server is a stdio child process (`command`, `args`, `env`, `cwd`) or a Streamable HTTP
//! endpoint (`url`, `headers`), plus Kestrel's per-server settings: `enabled` (or other hosts'
//! `disabled`), `include`/`exclude` tool lists and the call and start-up timeouts. Servers are
//! parsed one by one so every error names the file, the server and the field; unknown fields are
//! errors, not silently ignored settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kestrel_tools::sandbox::SandboxSetting;
use serde::Deserialize;
use serde_json::Value;

use super::oauth::{Grant, OAuthSettings};

/// A configuration error, naming where it is.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", path.display(), server.as_ref().map(|s| format!(": server `{s}`")).unwrap_or_default())]
pub struct McpConfigError {
    /// The configuration file.
    pub path: PathBuf,
    /// The server whose entry is wrong, if the error is inside one.
    pub server: Option<String>,
    /// What is wrong, naming the field.
    pub message: String,
}

/// How Kestrel reaches a server.
#[derive(Debug, Clone, PartialEq)]
pub enum Transport {
    /// A child process speaking MCP over stdin/stdout.
    Stdio {
        /// Program to run.
        command: String,
        /// Its arguments.
        args: Vec<String>,
        /// Variables set for it (on top of a minimal PATH/HOME).
        env: BTreeMap<String, String>,
        /// Working directory (relative paths are relative to the configuration file).
        cwd: Option<PathBuf>,
        /// Its own `sandbox` setting, if the entry has one (else the host-wide default).
        sandbox: Option<SandboxSetting>,
    },
    /// One of Kestrel's own servers (`kestrel-tools`), run in-process.
    Builtin {
        /// Its name (`fs`, `fetch`, `shell`).
        name: String,
        /// Its settings (`options` in the file; `null` when none).
        options: Value,
    },
    /// A Streamable HTTP endpoint.
    Http {
        /// The endpoint URL (http or https).
        url: String,
        /// Headers sent with every request (for example `Authorization`).
        headers: BTreeMap<String, String>,
        /// How to log in when the server asks for OAuth (defaults when absent).
        oauth: Option<OAuthSettings>,
    },
}

/// One configured server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Its name (the key in `mcpServers`).
    pub name: String,
    /// How to reach it.
    pub transport: Transport,
    /// Whether Kestrel connects to it.
    pub enabled: bool,
    /// Only these tools are offered (all when `None`).
    pub include: Option<Vec<String>>,
    /// These tools are never offered.
    pub exclude: Vec<String>,
    /// Limit for one tool call.
    pub call_timeout: Duration,
    /// Limit for starting and initializing the server.
    pub startup_timeout: Duration,
    /// Its tools' annotations are believed (`"trust": true`; Kestrel's own servers always are).
    /// MCP says an untrusted server's annotations are only hints.
    pub trusted: bool,
    /// Tools that run without asking (`alwaysAllow` or `autoApprove`, as other hosts spell it).
    pub always_allow: Vec<String>,
}

impl ServerConfig {
    /// Whether a tool of this server is offered to the model.
    pub fn offers(&self, tool: &str) -> bool {
        self.include
            .as_ref()
            .is_none_or(|i| i.iter().any(|t| t == tool))
            && !self.exclude.iter().any(|t| t == tool)
    }
}

/// All configured servers, in file order, and Kestrel's host-wide settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct McpConfig {
    /// The servers.
    pub servers: Vec<ServerConfig>,
    /// Directories offered to servers as roots (`roots`; relative to the file).
    pub roots: Vec<PathBuf>,
    /// Longest tool result handed back to the model (`max_result_bytes`).
    pub max_result_bytes: Option<usize>,
    /// Offer the model a tool that lists and reads servers' resources (`resource_tool`).
    pub resource_tool: bool,
    /// Confine every stdio server that has no `sandbox` setting of its own (`sandbox_servers`).
    pub sandbox_servers: bool,
}

/// Default limit for one tool call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Default limit for a server's start-up.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFile {
    mcp_servers: serde_json::Map<String, Value>,
    #[serde(default)]
    roots: Vec<PathBuf>,
    #[serde(rename = "max_result_bytes")]
    max_result_bytes: Option<usize>,
    #[serde(rename = "resource_tool", default)]
    resource_tool: bool,
    #[serde(rename = "sandbox_servers", default)]
    sandbox_servers: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    #[serde(rename = "type")]
    kind: Option<String>,
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    oauth: Option<OAuthSettings>,
    builtin: Option<String>,
    options: Option<Value>,
    enabled: Option<bool>,
    disabled: Option<bool>,
    include: Option<Vec<String>>,
    #[serde(default)]
    exclude: Vec<String>,
    call_timeout_secs: Option<f64>,
    startup_timeout_secs: Option<f64>,
    trust: Option<bool>,
    #[serde(rename = "alwaysAllow", default)]
    always_allow: Vec<String>,
    #[serde(rename = "autoApprove", default)]
    auto_approve: Vec<String>,
    sandbox: Option<SandboxSetting>,
}

impl McpConfig {
    /// Reads a configuration file: TOML when it ends in `.toml`, JSON otherwise.
    pub fn load(path: &Path) -> Result<Self, McpConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| McpConfigError {
            path: path.to_path_buf(),
            server: None,
            message: format!("cannot read: {e}"),
        })?;
        let toml = path.extension().is_some_and(|e| e == "toml");
        Self::parse(&text, toml, path)
    }

    /// Parses configuration text; `path` names the file in errors and anchors relative `cwd`s.
    pub fn parse(text: &str, toml: bool, path: &Path) -> Result<Self, McpConfigError> {
        let err = |server: Option<&str>, message: String| McpConfigError {
            path: path.to_path_buf(),
            server: server.map(str::to_owned),
            message,
        };
        let value: Value = if toml {
            toml::from_str(text).map_err(|e| err(None, format!("invalid TOML: {e}")))?
        } else {
            serde_json::from_str(text).map_err(|e| err(None, format!("invalid JSON: {e}")))?
        };
        let raw: RawFile = serde_json::from_value(value).map_err(|e| err(None, e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let servers = raw
            .mcp_servers
            .into_iter()
            .map(|(name, v)| server(&name, v, base).map_err(|m| err(Some(&name), m)))
            .collect::<Result<_, _>>()?;
        if raw.max_result_bytes == Some(0) {
            return Err(err(None, "`max_result_bytes` must be positive".into()));
        }
        let roots = raw
            .roots
            .into_iter()
            .map(|r| if r.is_relative() { base.join(r) } else { r })
            .collect();
        Ok(Self {
            servers,
            roots,
            max_result_bytes: raw.max_result_bytes,
            resource_tool: raw.resource_tool,
            sandbox_servers: raw.sandbox_servers,
        })
    }

    /// Where Kestrel looks when no `--config` is given: `$KESTREL_CONFIG`, else `mcp.json` or
    /// `mcp.toml` in the user's config directory (`~/.config/kestrel/` on Linux). Returns every
    /// place looked at when none exists, for the error message.
    pub fn default_path() -> Result<PathBuf, Vec<PathBuf>> {
        if let Some(p) = std::env::var_os("KESTREL_CONFIG") {
            return Ok(PathBuf::from(p));
        }
        let candidates: Vec<PathBuf> = dirs::config_dir()
            .map(|d| vec![d.join("kestrel/mcp.json"), d.join("kestrel/mcp.toml")])
            .unwrap_or_default();
        candidates
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .ok_or(candidates)
    }

    /// The enabled servers.
    pub fn enabled(&self) -> impl Iterator<Item = &ServerConfig> {
        self.servers.iter().filter(|s| s.enabled)
    }
}

fn server(name: &str, value: Value, base: &Path) -> Result<ServerConfig, String> {
    if name.is_empty() || name.contains("__") {
        return Err("a server name must be non-empty and must not contain `__` (it separates server and tool)".into());
    }
    let raw: RawServer = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if let Some(builtin) = &raw.builtin {
        if raw.command.is_some() || raw.url.is_some() {
            return Err("`builtin` is Kestrel's own server; it takes no `command` or `url`".into());
        }
        if !kestrel_tools::SERVERS.contains(&builtin.as_str()) {
            return Err(format!(
                "`builtin` {builtin:?} is not one of Kestrel's servers ({})",
                kestrel_tools::SERVERS.join(", ")
            ));
        }
        let options = raw.options.clone().unwrap_or(Value::Null);
        kestrel_tools::Builtin::check_options(builtin, &options).map_err(|e| e.message)?;
        if raw.sandbox.is_some() {
            return Err(
                "`sandbox` of a built-in server goes in its `options` (only `shell` has one)"
                    .into(),
            );
        }
    } else if raw.options.is_some() {
        return Err("`options` are for Kestrel's own servers (`builtin`)".into());
    }
    if raw.oauth.is_some() && raw.url.is_none() {
        return Err("`oauth` applies to HTTP servers (`url`)".into());
    }
    let transport = match (raw.command, raw.url) {
        (None, None) if raw.builtin.is_some() => Transport::Builtin {
            name: raw.builtin.clone().unwrap_or_default(),
            options: raw.options.clone().unwrap_or(Value::Null),
        },
        (Some(_), Some(_)) => {
            return Err("has both `command` (stdio) and `url` (HTTP); give one".into());
        }
        (None, None) => {
            return Err(
                "needs `command` (stdio), `url` (Streamable HTTP) or `builtin` (Kestrel's own)"
                    .into(),
            );
        }
        (Some(command), None) => {
            if !matches!(raw.kind.as_deref(), None | Some("stdio")) {
                return Err(format!(
                    "`type` {:?} does not match `command` (expected \"stdio\")",
                    raw.kind.unwrap_or_default()
                ));
            }
            if command.trim().is_empty() {
                return Err("`command` is empty".into());
            }
            let anchored = |c: PathBuf| if c.is_relative() { base.join(c) } else { c };
            let cwd = raw.cwd.map(anchored);
            let sandbox = raw.sandbox.map(|setting| match setting {
                SandboxSetting::On(mut options) => {
                    options.read = options.read.into_iter().map(anchored).collect();
                    options.write = options.write.into_iter().map(anchored).collect();
                    SandboxSetting::On(options)
                }
                off => off,
            });
            Transport::Stdio {
                command,
                args: raw.args,
                env: raw.env,
                cwd,
                sandbox,
            }
        }
        (None, Some(url)) => {
            match raw.kind.as_deref() {
                None | Some("http") | Some("streamable-http") | Some("streamableHttp") => {}
                Some("sse") => return Err("`type` \"sse\": the legacy SSE transport is not supported; use the server's Streamable HTTP endpoint".into()),
                Some(other) => return Err(format!("`type` {other:?} is not a transport (expected \"stdio\" or \"http\")")),
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("`url` {url:?} is not an http:// or https:// URL"));
            }
            for (name, value) in &raw.headers {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(format!("`headers`: {name:?} is not a valid header name"));
                }
                if http::HeaderValue::from_str(value).is_err() {
                    return Err(format!(
                        "`headers`: the value of {name:?} is not a valid header value"
                    ));
                }
            }
            if !raw.args.is_empty() || !raw.env.is_empty() || raw.cwd.is_some() {
                return Err("`args`, `env` and `cwd` only apply to stdio servers".into());
            }
            if raw.sandbox.is_some() {
                return Err(
                    "`sandbox` applies to stdio servers (a remote server runs elsewhere)".into(),
                );
            }
            if let Some(oauth) = &raw.oauth {
                if oauth.client_secret.is_some() && oauth.client_id.is_none() {
                    return Err("`oauth.clientSecret` needs `oauth.clientId`".into());
                }
                if let Some(document) = &oauth.client_metadata_url
                    && !document.starts_with("https://")
                {
                    return Err(format!(
                        "`oauth.clientMetadataUrl` {document:?} is not an https:// URL"
                    ));
                }
                if oauth.grant == Grant::ClientCredentials
                    && (oauth.client_id.is_none()
                        || (oauth.client_secret.is_none() && oauth.private_key_file.is_none()))
                {
                    return Err(
                        "`oauth.grant` \"client_credentials\" needs `clientId` and `clientSecret` (or `privateKeyFile`)"
                            .into(),
                    );
                }
                if oauth.private_key_file.is_some() && oauth.grant != Grant::ClientCredentials {
                    return Err(
                        "`oauth.privateKeyFile` is for `\"grant\": \"client_credentials\"`".into(),
                    );
                }
            }
            let oauth = raw.oauth.map(|mut oauth| {
                oauth.private_key_file = oauth.private_key_file.map(|f| base.join(f));
                oauth
            });
            Transport::Http {
                url,
                headers: raw.headers,
                oauth,
            }
        }
    };
    let enabled = match (raw.enabled, raw.disabled) {
        (Some(e), Some(d)) if e == d => {
            return Err("`enabled` and `disabled` contradict each other".into());
        }
        (Some(e), _) => e,
        (None, Some(d)) => !d,
        (None, None) => true,
    };
    let secs = |v: Option<f64>, field: &str, default: Duration| match v {
        None => Ok(default),
        Some(s) if s.is_finite() && s > 0.0 => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(format!(
            "`{field}` must be a positive number of seconds, got {s}"
        )),
    };
    let transport_is_builtin = matches!(transport, Transport::Builtin { .. });
    Ok(ServerConfig {
        name: name.to_string(),
        transport,
        enabled,
        include: raw.include,
        exclude: raw.exclude,
        call_timeout: secs(
            raw.call_timeout_secs,
            "call_timeout_secs",
            DEFAULT_CALL_TIMEOUT,
        )?,
        startup_timeout: secs(
            raw.startup_timeout_secs,
            "startup_timeout_secs",
            DEFAULT_STARTUP_TIMEOUT,
        )?,
        trusted: match (raw.trust, &transport_is_builtin) {
            (Some(false), true) => {
                return Err(
                    "Kestrel's own servers are trusted; `trust: false` does not apply".into(),
                );
            }
            (trust, builtin) => trust.unwrap_or(*builtin),
        },
        always_allow: raw
            .always_allow
            .into_iter()
            .chain(raw.auto_approve)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAUDE_STYLE: &str = r#"{"roots": ["work"], "max_result_bytes": 1000, "mcpServers": {
        "everything": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-everything"], "env": {"DEBUG": "1"}},
        "remote": {"type": "http", "url": "https://example.test/mcp", "headers": {"Authorization": "Bearer t"}, "call_timeout_secs": 5},
        "time": {"command": "uvx", "args": ["mcp-server-time"], "disabled": true, "exclude": ["convert_time"], "cwd": "servers"}
    }}"#;

    const SAME_IN_TOML: &str = r#"
        roots = ["work"]
        max_result_bytes = 1000

        [mcpServers.everything]
        command = "npx"
        args = ["-y", "@modelcontextprotocol/server-everything"]
        env = { DEBUG = "1" }

        [mcpServers.remote]
        type = "http"
        url = "https://example.test/mcp"
        headers = { Authorization = "Bearer t" }
        call_timeout_secs = 5

        [mcpServers.time]
        command = "uvx"
        args = ["mcp-server-time"]
        disabled = true
        exclude = ["convert_time"]
        cwd = "servers"
    "#;

    fn parse(text: &str, toml: bool) -> Result<McpConfig, McpConfigError> {
        McpConfig::parse(text, toml, Path::new("/etc/kestrel/mcp.json"))
    }

    #[test]
    fn reads_the_common_format_in_json_and_toml() {
        let json = parse(CLAUDE_STYLE, false).expect("json");
        assert_eq!(json, parse(SAME_IN_TOML, true).expect("toml"));
        let names: Vec<&str> = json.servers.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["everything", "remote", "time"],
            "file order is kept"
        );
        assert_eq!(json.enabled().count(), 2);
        assert_eq!(json.roots, [PathBuf::from("/etc/kestrel/work")]);
        assert_eq!(json.max_result_bytes, Some(1000));
        let time = &json.servers[2];
        assert!(!time.offers("convert_time") && time.offers("get_current_time"));
        assert!(
            matches!(&time.transport, Transport::Stdio { cwd: Some(c), .. } if c == Path::new("/etc/kestrel/servers"))
        );
        assert_eq!(json.servers[1].call_timeout, Duration::from_secs(5));
        assert_eq!(json.servers[0].startup_timeout, DEFAULT_STARTUP_TIMEOUT);
    }

    #[test]
    fn trust_and_the_allow_lists_of_other_hosts() {
        let config = parse(
            r#"{"mcpServers": {
                "a": {"command": "x", "alwaysAllow": ["read"], "autoApprove": ["list"]},
                "b": {"command": "x", "trust": true},
                "c": {"builtin": "fs"}}}"#,
            false,
        )
        .expect("config");
        let [a, b, c] = &config.servers[..] else {
            panic!("three servers")
        };
        assert_eq!(a.always_allow, ["read", "list"]);
        assert!(!a.trusted, "a stranger by default");
        assert!(b.trusted && b.always_allow.is_empty());
        assert!(c.trusted, "Kestrel's own servers are trusted");
        let e = parse(
            r#"{"mcpServers": {"c": {"builtin": "fs", "trust": false}}}"#,
            false,
        )
        .expect_err("distrusting a built-in server");
        assert!(e.to_string().contains("trust"), "{e}");
    }

    #[test]
    fn errors_name_file_server_and_field() {
        let e = parse(
            r#"{"mcpServers": {"a": {"command": "x", "comand": "y"}}}"#,
            false,
        )
        .expect_err("typo")
        .to_string();
        assert!(
            e.contains("/etc/kestrel/mcp.json") && e.contains("server `a`") && e.contains("comand"),
            "{e}"
        );
        let cases = [
            (
                r#"{"mcpServers": {"a": {"command": "x", "url": "http://h"}}}"#,
                "both",
            ),
            (r#"{"mcpServers": {"a": {}}}"#, "needs `command`"),
            (r#"{"mcpServers": {"a": {"url": "ftp://h"}}}"#, "ftp://h"),
            (
                r#"{"mcpServers": {"a": {"type": "sse", "url": "http://h/sse"}}}"#,
                "sse",
            ),
            (
                r#"{"mcpServers": {"a": {"command": "x", "call_timeout_secs": -1}}}"#,
                "call_timeout_secs",
            ),
            (
                r#"{"mcpServers": {"a": {"command": "x", "enabled": true, "disabled": true}}}"#,
                "contradict",
            ),
            (r#"{"mcpServers": {"a__b": {"command": "x"}}}"#, "__"),
            (
                r#"{"mcpServers": {"a": {"url": "http://h", "headers": {"bad name": "x"}}}}"#,
                "headers",
            ),
            (
                r#"{"mcpServers": {"a": {"url": "http://h", "args": ["x"]}}}"#,
                "only apply to stdio",
            ),
            (
                r#"{"mcpServers": {"a": {"command": "x", "oauth": {}}}}"#,
                "`oauth` applies to HTTP servers",
            ),
            (
                r#"{"mcpServers": {"a": {"url": "http://h", "oauth": {"clientSecret": "s"}}}}"#,
                "`oauth.clientSecret` needs `oauth.clientId`",
            ),
            (
                r#"{"mcpServers": {"a": {"url": "http://h", "oauth": {"grant": "client_credentials", "clientId": "c"}}}}"#,
                "needs `clientId` and `clientSecret`",
            ),
            (
                r#"{"mcpServers": {"a": {"url": "http://h", "oauth": {"clientMetadataUrl": "http://x/y"}}}}"#,
                "not an https:// URL",
            ),
            (
                r#"{"mcpServers": {"a": {"url": "http://h", "oauth": {"scope": "x"}}}}"#,
                "scope",
            ),
            (
                r#"{"mcpServers": {"a": {"url": "http://h", "oauth": {"clientId": "c", "privateKeyFile": "k.pem"}}}}"#,
                "`oauth.privateKeyFile` is for",
            ),
        ];
        for (text, needle) in cases {
            let e = parse(text, false).expect_err(needle).to_string();
            assert!(
                e.contains(needle) && e.contains("server `a"),
                "{needle}: {e}"
            );
        }
        let e = parse(r#"{"servers": {}}"#, false)
            .expect_err("top level")
            .to_string();
        assert!(e.contains("servers") && !e.contains("server `"), "{e}");
        assert!(
            parse("{", false)
                .expect_err("json")
                .to_string()
                .contains("invalid JSON")
        );
        assert!(
            parse("[mcpServers", true)
                .expect_err("toml")
                .to_string()
                .contains("invalid TOML")
        );
    }

    #[test]
    fn missing_file_is_named() {
        let e = McpConfig::load(Path::new("/no/such/mcp.json"))
            .expect_err("missing")
            .to_string();
        assert!(
            e.contains("/no/such/mcp.json") && e.contains("cannot read"),
            "{e}"
        );
    }
}
