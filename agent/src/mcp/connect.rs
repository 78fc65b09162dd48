//! Opening one connection (stdio child or Streamable HTTP), and what the host keeps of it.
//!
//! A connection is only handed to the host once the handshake and the first tool listing are done
//! within the server's start-up limit; anything less is an error that says what happened, with
//! the last lines the server wrote to stderr when it has them, since that is usually the reason.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use kestrel_tools::sandbox::SandboxSetting;
use rmcp::model::{ProtocolVersion, SubscriptionFilter, Tool};
use rmcp::service::{ClientInitializeError, ClientLifecycleMode, ClientServiceExt, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::async_rw::AsyncRwTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{Peer, RoleClient};
use tokio::task::JoinHandle;

use super::client::KestrelClient;
use super::config::{ServerConfig, Transport};
use super::confine;
use super::events::HostEvent;
use super::login;
use super::oauth::{self, SharedAuth};
use super::options::{HostOptions, lifecycle};
use super::stdio::{self, ChildGuard};

/// A live connection.
pub(crate) struct Connection {
    pub(crate) service: RunningService<RoleClient, KestrelClient>,
    child: Option<ChildGuard>,
    /// The tools offered (after the configuration's include/exclude).
    pub(crate) tools: Arc<[Tool]>,
    pub(crate) protocol: String,
    pub(crate) server_info: Option<String>,
    pub(crate) log: Option<PathBuf>,
    pub(crate) has_resources: bool,
    /// What confines the server, when something does.
    pub(crate) sandbox: Option<String>,
    /// The OAuth manager behind an HTTP connection's token, when it has one.
    pub(crate) auth: Option<SharedAuth>,
    listener: Option<JoinHandle<()>>,
}

impl Connection {
    /// Whether the connection has ended (the server exited or hung up).
    pub(crate) fn is_closed(&self) -> bool {
        self.service.is_closed() || self.service.peer().is_transport_closed()
    }

    /// How the server ended, for error messages.
    pub(crate) fn exit_reason(&self) -> String {
        let mut reason = "the server closed the connection".to_string();
        if let Some(log) = &self.log {
            reason = format!("the server process exited{}", stderr_tail(log));
        }
        reason
    }

    /// The stdio server's process id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(ChildGuard::pid)
    }

    /// Closes the connection, then stops the server's process group.
    pub(crate) async fn stop(mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.service.cancel()).await;
        if let Some(mut child) = self.child.take() {
            child.stop().await;
        }
    }
}

/// Lists a server's tools within `limit`, keeping those its configuration offers.
pub(crate) async fn list_tools(
    peer: &Peer<RoleClient>,
    config: &ServerConfig,
    limit: Duration,
) -> Result<Arc<[Tool]>, String> {
    match tokio::time::timeout(limit, peer.list_all_tools()).await {
        Err(_) => Err(format!(
            "did not list its tools within {} s",
            limit.as_secs_f64()
        )),
        Ok(Err(e)) => Err(format!("cannot list its tools: {e}")),
        Ok(Ok(tools)) => Ok(tools
            .into_iter()
            .filter(|t| config.offers(&t.name))
            .collect()),
    }
}

/// The last lines a server wrote to stderr, as `: line1 | line2 (log: PATH)`.
pub(crate) fn stderr_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("[kestrel]"))
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    let tail = super::content::cut_to(tail, 400).0;
    if tail.is_empty() {
        format!(" (log: {})", log.display())
    } else {
        format!(": {tail} (log: {})", log.display())
    }
}

/// Connects to one server within its start-up limit: first negotiating any protocol version
/// (`server/discover`, then `initialize`), and once more with the plain `initialize` handshake
/// when a server answers discovery with something that breaks the negotiation (some servers
/// answer every unknown method with an empty result).
pub(crate) async fn connect(
    config: &ServerConfig,
    options: &HostOptions,
    handler: KestrelClient,
) -> Result<Connection, String> {
    match connect_with(config, options, handler.clone(), lifecycle()).await {
        Err(Handshake(first)) => {
            connect_with(config, options, handler, ClientLifecycleMode::Initialize)
                .await
                .map_err(|e| match e {
                    Handshake(e) | Other(e) => format!("{e} (after: {first})"),
                })
        }
        other => other.map_err(|(Handshake(e) | Other(e))| e),
    }
}

/// Why a connection attempt failed: in the handshake (worth one retry with the plain
/// `initialize` lifecycle), or otherwise.
enum Failure {
    Handshake(String),
    Other(String),
}
use Failure::{Handshake, Other};

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Other(message)
    }
}

async fn connect_with(
    config: &ServerConfig,
    options: &HostOptions,
    handler: KestrelClient,
    lifecycle: ClientLifecycleMode,
) -> Result<Connection, Failure> {
    let limit = config.startup_timeout;
    let timed_out = || format!("did not finish starting within {} s", limit.as_secs_f64());
    match &config.transport {
        Transport::Stdio {
            command,
            args,
            env,
            cwd,
            sandbox,
        } => {
            std::fs::create_dir_all(&options.log_dir).map_err(|e| {
                format!(
                    "cannot create the log directory {}: {e}",
                    options.log_dir.display()
                )
            })?;
            let log = options
                .log_dir
                .join(format!("{}.log", file_safe(&config.name)));
            let setting = match sandbox {
                Some(setting) => setting.clone(),
                None if options.sandbox_servers => SandboxSetting::default(),
                None => SandboxSetting::Off,
            };
            let confined = match &setting {
                SandboxSetting::Off => None,
                SandboxSetting::On(settings) => Some(confine::server_sandbox(
                    command,
                    args,
                    cwd.as_deref(),
                    settings,
                    &options.roots,
                    &options.helper()?,
                )?),
            };
            let (program, argv): (&OsStr, Vec<OsString>) = match &confined {
                Some(sandbox) => {
                    let (helper, argv) =
                        sandbox.wrap(OsStr::new(command), args.iter().map(OsStr::new));
                    (helper.as_os_str(), argv)
                }
                None => (
                    OsStr::new(command),
                    args.iter().map(OsString::from).collect(),
                ),
            };
            let proc = stdio::spawn(
                program,
                &argv,
                env,
                cwd.as_deref(),
                &log,
                options.max_message_bytes,
            )
            .map_err(|e| Other(format!("cannot start `{command}`: {e}")))?;
            let mut child = proc.child;
            let transport = AsyncRwTransport::new_client(proc.stdout, proc.stdin)
                .with_max_line_length(options.max_message_bytes.saturating_add(1));
            let started = tokio::time::timeout(
                limit,
                handler.clone().serve_with_lifecycle(transport, lifecycle),
            )
            .await;
            let service = match started {
                Ok(Ok(service)) => service,
                Err(_) => {
                    child.stop().await;
                    return Err(Other(format!("{}{}", timed_out(), stderr_tail(&log))));
                }
                Ok(Err(e)) => {
                    child.stop().await;
                    let message = format!("failed to start: {e}{}", stderr_tail(&log));
                    return Err(if matches!(e, ClientInitializeError::ConnectionClosed(_)) {
                        Other(message)
                    } else {
                        Handshake(message)
                    });
                }
            };
            let sandbox = confined.map(|s| s.status().to_string());
            finish(service, Some(child), Some(log), config, handler)
                .await
                .map(|mut conn| {
                    conn.sandbox = sandbox;
                    conn
                })
                .map_err(Other)
        }
        Transport::Builtin {
            name,
            options: settings,
        } => {
            let (client_end, server_end) = tokio::io::duplex(1 << 20);
            let server =
                kestrel_tools::Builtin::new(name, settings, &options.roots, &options.helper()?)
                    .map_err(|e| Other(e.message))?;
            let sandbox = server.sandbox_status();
            tokio::spawn(server.serve(server_end));
            let service = match tokio::time::timeout(
                limit,
                handler.clone().serve_with_lifecycle(client_end, lifecycle),
            )
            .await
            {
                Err(_) => return Err(Other(timed_out())),
                Ok(Err(e)) => return Err(Other(format!("failed to start: {e}"))),
                Ok(Ok(service)) => service,
            };
            finish(service, None, None, config, handler)
                .await
                .map(|mut conn| {
                    conn.sandbox = sandbox;
                    conn
                })
                .map_err(Other)
        }
        Transport::Http {
            url,
            headers,
            oauth,
        } => {
            super::tls::ensure();
            let mut map = HashMap::new();
            for (name, value) in headers {
                let n = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| format!("header `{name}`: {e}"))?;
                let v =
                    HeaderValue::from_str(value).map_err(|e| format!("header `{name}`: {e}"))?;
                map.insert(n, v);
            }
            let mut transport_config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                .custom_headers(map)
                .max_json_response_size(options.max_message_bytes)
                .max_sse_event_size(options.max_message_bytes);
            // A configured `Authorization` header is the credential; OAuth stays out of its way.
            let static_credential = headers
                .keys()
                .any(|k| k.eq_ignore_ascii_case("authorization"));
            let settings = oauth.clone().unwrap_or_default();
            let credentials = if static_credential {
                login::Credentials::None
            } else {
                login::existing(config, url, &settings, options).await?
            };
            let manager = match credentials {
                login::Credentials::None => None,
                login::Credentials::Manager(manager) => Some(*manager),
                login::Credentials::Bearer(token) => {
                    transport_config = transport_config.auth_header(token);
                    None
                }
            };
            let first = start_http(
                config,
                url,
                transport_config.clone(),
                manager,
                handler.clone(),
                lifecycle.clone(),
            )
            .await;
            let (service, auth) = match first {
                Err(HttpFailure::Challenge(challenge)) if !static_credential => {
                    let manager =
                        login::on_challenge(config, url, &settings, &challenge, options).await?;
                    start_http(
                        config,
                        url,
                        transport_config,
                        Some(manager),
                        handler.clone(),
                        lifecycle,
                    )
                    .await
                    .map_err(HttpFailure::into_failure)?
                }
                other => other.map_err(HttpFailure::into_failure)?,
            };
            finish(service, None, None, config, handler)
                .await
                .map(|mut conn| {
                    conn.auth = auth;
                    conn
                })
                .map_err(Other)
        }
    }
}

/// Why an HTTP connection did not start.
enum HttpFailure {
    /// The server wants authorization: its `WWW-Authenticate` header.
    Challenge(String),
    Failed(Failure),
}

impl HttpFailure {
    fn into_failure(self) -> Failure {
        match self {
            Self::Challenge(challenge) => Other(format!(
                "the server still refuses the credentials after a login ({challenge})"
            )),
            Self::Failed(failure) => failure,
        }
    }
}

/// Starts an HTTP connection, with `manager`'s tokens when given; also returns the manager as
/// the connection keeps it (for a step-up later).
async fn start_http(
    config: &ServerConfig,
    url: &str,
    transport_config: StreamableHttpClientTransportConfig,
    manager: Option<rmcp::transport::auth::AuthorizationManager>,
    handler: KestrelClient,
    lifecycle: ClientLifecycleMode,
) -> Result<
    (
        RunningService<RoleClient, KestrelClient>,
        Option<SharedAuth>,
    ),
    HttpFailure,
> {
    let limit = config.startup_timeout;
    let (started, auth) = match manager {
        Some(manager) => {
            let client = oauth::authorized_client(manager);
            let auth = client.auth_manager.clone();
            let transport = StreamableHttpClientTransport::with_client(client, transport_config);
            let started =
                tokio::time::timeout(limit, handler.serve_with_lifecycle(transport, lifecycle))
                    .await;
            (started, Some(auth))
        }
        None => {
            let transport = StreamableHttpClientTransport::from_config(transport_config);
            let started =
                tokio::time::timeout(limit, handler.serve_with_lifecycle(transport, lifecycle))
                    .await;
            (started, None)
        }
    };
    match started {
        Err(_) => Err(HttpFailure::Failed(Other(format!(
            "did not finish starting within {} s ({url})",
            limit.as_secs_f64()
        )))),
        Ok(Err(e)) => {
            if let Some(challenge) = e.auth_challenge() {
                return Err(HttpFailure::Challenge(challenge.to_string()));
            }
            let message = format!("cannot connect to {url}: {e}");
            Err(HttpFailure::Failed(
                if matches!(e, ClientInitializeError::TransportError { .. }) {
                    Other(message)
                } else {
                    Handshake(message)
                },
            ))
        }
        Ok(Ok(service)) => Ok((service, auth)),
    }
}

async fn finish(
    service: RunningService<RoleClient, KestrelClient>,
    child: Option<ChildGuard>,
    log: Option<PathBuf>,
    config: &ServerConfig,
    handler: KestrelClient,
) -> Result<Connection, String> {
    let info = service.peer().peer_info();
    let protocol = info
        .as_ref()
        .map(|i| i.protocol_version.to_string())
        .unwrap_or_else(|| "unknown".into());
    let server_info = info
        .as_ref()
        .and_then(|i| i.server_info.as_ref())
        .map(|s| format!("{} {}", s.name, s.version));
    let capabilities = info.as_ref().map(|i| i.capabilities.clone());
    let has_resources = capabilities.as_ref().is_some_and(|c| c.resources.is_some());
    let announces_changes = capabilities
        .as_ref()
        .and_then(|c| c.tools.as_ref())
        .and_then(|t| t.list_changed)
        .unwrap_or(false);
    let mut conn = Connection {
        service,
        child,
        tools: Arc::new([]),
        protocol,
        server_info,
        log,
        has_resources,
        sandbox: None,
        auth: None,
        listener: None,
    };
    match list_tools(conn.service.peer(), config, config.startup_timeout).await {
        Ok(tools) => conn.tools = tools,
        Err(e) => {
            let tail = conn.log.as_deref().map(stderr_tail).unwrap_or_default();
            conn.stop().await;
            return Err(format!("{e}{tail}"));
        }
    }
    // On the 2026-07-28 protocol, change notifications only arrive on a listen stream.
    if announces_changes && conn.protocol == ProtocolVersion::V_2026_07_28.to_string() {
        let peer = conn.service.peer().clone();
        conn.listener = Some(tokio::spawn(async move {
            let filter = SubscriptionFilter::builder().tools_list_changed().build();
            let Ok(mut subscription) = peer.listen(filter).await else {
                return;
            };
            while let Ok(Some(_)) = subscription.next().await {
                handler.tools_changed.store(true, Ordering::SeqCst);
                let _ = handler.events.send(HostEvent::ToolsChanged {
                    server: handler.server.to_string(),
                });
            }
        }));
    }
    Ok(conn)
}

/// A server name as a file name.
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
