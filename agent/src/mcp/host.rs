//! The MCP host: every configured server, connected at once, offered to the model as one tool list.
//!
//! Each server is a small state machine behind its own lock: disabled, up (a live connection and
//! its tool list), or down (the error, and when a restart may be tried). The lock is held only to
//! look at or change that state, never across a tool call, so calls to the same server run
//! concurrently. A call that finds its server down restarts it first (at once after a crash, with
//! a doubling delay while restarts keep failing); a call in flight when a server dies answers with
//! an error rather than a retry, because the tool may have done part of its work.
//!
//! A server that fails to start is reported by name and leaves the others working. Time limits are
//! the host's: the SDK has none. Dropping a call on timeout sends `notifications/cancelled`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, ClientRequest, GetPromptRequestParams, ProtocolVersion,
    ReadResourceRequestParams, ServerResult,
};
use rmcp::service::{ClientLifecycleMode, PeerRequestOptions, ServiceError};
use rmcp::{Peer, RoleClient};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Mutex, broadcast};

use super::client::{KestrelClient, ProgressCalls};
use super::config::{McpConfig, ServerConfig, Transport};
use super::connect::{Connection, connect};
use super::content::{RenderedResult, cut_to, render_result};
use super::sampling::SamplerHandle;

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
    pub sampler: Option<SamplerHandle>,
}

/// Default for [`HostOptions::max_result_bytes`].
pub const DEFAULT_MAX_RESULT_BYTES: usize = 64 * 1024;
/// Default for [`HostOptions::max_message_bytes`]: rmcp's stdio line limit.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Name of the resource-reading tool offered when [`HostOptions::resource_tool`] is set.
pub const READ_RESOURCE_TOOL: &str = "read_resource";

impl HostOptions {
    /// The defaults, with the host-wide settings of a configuration file applied.
    pub fn from_config(config: &McpConfig) -> Self {
        let mut options = Self {
            roots: config.roots.clone(),
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
            sampler: None,
        }
    }
}

/// Something that happened on a server, for whoever shows progress.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HostEvent {
    /// A server connected (or reconnected).
    Connected {
        /// Server name.
        server: String,
        /// Negotiated protocol version.
        protocol: String,
        /// Tools it offers.
        tools: usize,
    },
    /// A server could not be started or reached.
    Failed {
        /// Server name.
        server: String,
        /// Why.
        error: String,
    },
    /// A server's tool list changed; it is listed again before the tools are next offered.
    ToolsChanged {
        /// Server name.
        server: String,
    },
    /// Progress reported for a running call.
    Progress {
        /// Server name.
        server: String,
        /// The call ([`ToolOutcome::call`]) it belongs to, when recognisable.
        call: Option<u64>,
        /// Progress so far.
        progress: f64,
        /// Total, when known.
        total: Option<f64>,
        /// What the server says it is doing.
        message: Option<String>,
    },
    /// A log message the server sent.
    Log {
        /// Server name.
        server: String,
        /// Its level (`info`, `warning`, ...).
        level: String,
        /// The message.
        message: String,
    },
    /// A server asked the local model to write a message (`sampling/createMessage`).
    Sampling {
        /// Server name.
        server: String,
    },
}

/// A tool as offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostTool {
    /// The name the model uses: the server's name for it, or `server__tool` when two servers
    /// offer the same name.
    pub name: String,
    /// The server that owns it.
    pub server: String,
    /// Its name on that server.
    pub tool: String,
    /// Its description.
    pub description: Option<String>,
    /// Its JSON Schema for arguments.
    pub input_schema: Value,
    /// Its MCP annotations (`readOnlyHint`, `destructiveHint`, ...), if any.
    pub annotations: Option<Value>,
}

impl HostTool {
    /// The tool in OpenAI's `{"type": "function", ...}` form, which Qwen's template renders.
    pub fn to_openai(&self) -> Value {
        json!({"type": "function", "function": {
            "name": self.name,
            "description": self.description.clone().unwrap_or_default(),
            "parameters": self.input_schema,
        }})
    }
}

/// One server's state, for `tools list`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    /// Server name.
    pub name: String,
    /// `connected`, `failed` or `disabled`.
    pub status: &'static str,
    /// `stdio` or `http`.
    pub transport: &'static str,
    /// Negotiated protocol version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The server's name and version as it reports them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_info: Option<String>,
    /// Why it is not connected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its stderr log (stdio servers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
    /// The tools it offers (after include/exclude).
    pub tools: Vec<HostTool>,
}

/// The answer to a tool call that reached the tool.
#[derive(Debug, Clone)]
pub struct ToolOutcome {
    /// The server that answered.
    pub server: String,
    /// The tool's name on that server.
    pub tool: String,
    /// This call's number (also its progress token).
    pub call: u64,
    /// The result as text for the model; `is_error` is the tool's own error flag.
    pub rendered: RenderedResult,
    /// The result as the server sent it.
    pub raw: Value,
    /// How long the call took.
    pub elapsed: Duration,
}

/// Why a call did not reach a tool or did not come back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// No such server.
    #[error("no MCP server named `{server}` (configured: {known})")]
    UnknownServer {
        /// The name asked for.
        server: String,
        /// The configured names.
        known: String,
    },
    /// The server is disabled in the configuration.
    #[error("MCP server `{server}` is disabled in the configuration")]
    Disabled {
        /// Server name.
        server: String,
    },
    /// No such tool on the server, or not offered by the configuration.
    #[error("MCP server `{server}` offers no tool `{tool}` (it offers: {known})")]
    UnknownTool {
        /// Server name.
        server: String,
        /// The tool asked for.
        tool: String,
        /// What it offers.
        known: String,
    },
    /// No offered tool has this name.
    #[error("no tool named `{name}` is offered (offered: {known})")]
    UnknownName {
        /// The name asked for.
        name: String,
        /// The offered names.
        known: String,
    },
    /// The server could not be (re)started.
    #[error("MCP server `{server}` is not available: {reason}")]
    Unavailable {
        /// Server name.
        server: String,
        /// Why.
        reason: String,
    },
    /// The call ran out of time and was cancelled.
    #[error("tool `{tool}` of MCP server `{server}` did not answer within {} s; the call was cancelled", after.as_secs_f64())]
    Timeout {
        /// Server name.
        server: String,
        /// Tool name.
        tool: String,
        /// The limit.
        after: Duration,
    },
    /// The call failed on the way (protocol error, server crash, message too large).
    #[error("tool `{tool}` of MCP server `{server}` failed: {message}")]
    Failed {
        /// Server name.
        server: String,
        /// Tool name.
        tool: String,
        /// What went wrong.
        message: String,
    },
    /// Arguments were not a JSON object.
    #[error("arguments for `{tool}` must be a JSON object, got {got}")]
    BadArguments {
        /// Tool name.
        tool: String,
        /// What was given, abbreviated.
        got: String,
    },
}

enum State {
    Disabled,
    Up(Box<Connection>),
    Down {
        error: String,
        failures: u32,
        retry_at: Instant,
    },
}

struct Server {
    config: ServerConfig,
    tools_changed: Arc<AtomicBool>,
    progress_calls: ProgressCalls,
    state: Mutex<State>,
}

/// Connections to every configured MCP server.
pub struct McpHost {
    servers: Vec<Arc<Server>>,
    options: Arc<HostOptions>,
    events: broadcast::Sender<HostEvent>,
    next_call: AtomicU64,
}

impl McpHost {
    /// Connects to every enabled server at once. Never fails as a whole: a server that cannot start
    /// is reported (see [`McpHost::status`] and [`HostEvent::Failed`]) and the others work.
    pub async fn start(config: &McpConfig, options: HostOptions) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self::start_with_events(config, options, events).await
    }

    /// Like [`McpHost::start`], publishing start-up events to an existing channel.
    pub async fn start_with_events(
        config: &McpConfig,
        options: HostOptions,
        events: broadcast::Sender<HostEvent>,
    ) -> Self {
        let host = Self {
            servers: config
                .servers
                .iter()
                .map(|c| {
                    Arc::new(Server {
                        config: c.clone(),
                        tools_changed: Arc::new(AtomicBool::new(false)),
                        progress_calls: ProgressCalls::default(),
                        state: Mutex::new(State::Disabled),
                    })
                })
                .collect(),
            options: Arc::new(options),
            events,
            next_call: AtomicU64::new(1),
        };
        let starts = host
            .servers
            .iter()
            .filter(|s| s.config.enabled)
            .map(|s| host.bring_up(s, 0));
        futures::future::join_all(starts).await;
        host
    }

    /// A receiver of host events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<HostEvent> {
        self.events.subscribe()
    }

    /// The settings in use.
    pub fn options(&self) -> &HostOptions {
        &self.options
    }

    /// Connects `server` and stores the outcome in its state.
    async fn bring_up(&self, server: &Server, failures: u32) {
        let mut state = server.state.lock().await;
        self.bring_up_locked(server, &mut state, failures).await;
    }

    async fn bring_up_locked(&self, server: &Server, state: &mut State, failures: u32) {
        if let State::Up(old) = std::mem::replace(state, State::Disabled) {
            old.stop().await;
        }
        let handler = KestrelClient {
            server: server.config.name.as_str().into(),
            roots: self.options.roots.clone().into(),
            tools_changed: server.tools_changed.clone(),
            events: self.events.clone(),
            progress_calls: server.progress_calls.clone(),
            sampler: self.options.sampler.clone(),
        };
        server.tools_changed.store(false, Ordering::SeqCst);
        match connect(&server.config, &self.options, handler).await {
            Ok(conn) => {
                let _ = self.events.send(HostEvent::Connected {
                    server: server.config.name.clone(),
                    protocol: conn.protocol.clone(),
                    tools: conn.tools.len(),
                });
                *state = State::Up(Box::new(conn));
            }
            Err(error) => {
                let _ = self.events.send(HostEvent::Failed {
                    server: server.config.name.clone(),
                    error: error.clone(),
                });
                let delay = self
                    .options
                    .restart_backoff
                    .saturating_mul(1 << failures.min(16))
                    .min(self.options.max_restart_backoff);
                *state = State::Down {
                    error,
                    failures: failures + 1,
                    retry_at: Instant::now() + delay,
                };
            }
        }
    }

    fn server(&self, name: &str) -> Result<&Arc<Server>, CallError> {
        self.servers
            .iter()
            .find(|s| s.config.name == name)
            .ok_or_else(|| CallError::UnknownServer {
                server: name.to_string(),
                known: join_names(self.servers.iter().map(|s| s.config.name.as_str())),
            })
    }

    /// The live connection's peer, restarting a crashed or failed server when its backoff allows.
    async fn peer(
        &self,
        server: &Server,
    ) -> Result<(Peer<RoleClient>, Arc<[rmcp::model::Tool]>), CallError> {
        let name = &server.config.name;
        let mut state = server.state.lock().await;
        if let State::Up(conn) = &*state
            && conn.is_closed()
        {
            let reason = conn.exit_reason();
            let _ = self.events.send(HostEvent::Failed {
                server: name.clone(),
                error: reason.clone(),
            });
            if let State::Up(conn) = std::mem::replace(
                &mut *state,
                State::Down {
                    error: reason,
                    failures: 0,
                    retry_at: Instant::now(),
                },
            ) {
                conn.stop().await;
            }
        }
        if let State::Down {
            error,
            failures,
            retry_at,
        } = &*state
        {
            let now = Instant::now();
            if now < *retry_at {
                return Err(CallError::Unavailable {
                    server: name.clone(),
                    reason: format!(
                        "{error} (next restart attempt in {:.1} s)",
                        (*retry_at - now).as_secs_f64()
                    ),
                });
            }
            let failures = *failures;
            self.bring_up_locked(server, &mut state, failures).await;
        }
        match &mut *state {
            State::Disabled => Err(CallError::Disabled {
                server: name.clone(),
            }),
            State::Down { error, .. } => Err(CallError::Unavailable {
                server: name.clone(),
                reason: error.clone(),
            }),
            State::Up(conn) => {
                if server.tools_changed.swap(false, Ordering::SeqCst) {
                    conn.refresh_tools(&server.config).await;
                }
                Ok((conn.service.peer().clone(), conn.tools.clone()))
            }
        }
    }

    /// Every server's state and tools (re-listing tools that changed).
    pub async fn status(&self) -> Vec<ServerStatus> {
        let mut out = Vec::new();
        for server in &self.servers {
            let config = &server.config;
            let mut status = ServerStatus {
                name: config.name.clone(),
                status: "disabled",
                transport: match config.transport {
                    Transport::Stdio { .. } => "stdio",
                    Transport::Http { .. } => "http",
                    Transport::Builtin { .. } => "builtin",
                },
                protocol: None,
                server_info: None,
                error: None,
                log: None,
                tools: Vec::new(),
            };
            let mut state = server.state.lock().await;
            if let State::Up(conn) = &mut *state {
                if server.tools_changed.swap(false, Ordering::SeqCst) {
                    conn.refresh_tools(config).await;
                }
                status.status = "connected";
                status.protocol = Some(conn.protocol.clone());
                status.server_info = conn.server_info.clone();
                status.log = conn.log.clone();
                status.tools = conn
                    .tools
                    .iter()
                    .map(|t| host_tool(&config.name, t, t.name.to_string()))
                    .collect();
            } else if let State::Down { error, .. } = &*state {
                status.status = "failed";
                status.error = Some(error.clone());
            }
            out.push(status);
        }
        out
    }

    /// The tools offered to the model, named so that no two collide.
    pub async fn tools(&self) -> Vec<HostTool> {
        let mut tools: Vec<HostTool> = self
            .status()
            .await
            .into_iter()
            .flat_map(|s| s.tools)
            .collect();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for t in &tools {
            *counts.entry(t.tool.clone()).or_default() += 1;
        }
        if self.options.resource_tool {
            *counts.entry(READ_RESOURCE_TOOL.to_string()).or_default() += 1;
        }
        for t in &mut tools {
            if counts[&t.tool] > 1 {
                t.name = format!("{}__{}", t.server, t.tool);
            }
        }
        if self.options.resource_tool {
            let servers = self.resource_servers().await;
            if !servers.is_empty() {
                tools.push(HostTool {
                    name: READ_RESOURCE_TOOL.to_string(),
                    server: String::new(),
                    tool: READ_RESOURCE_TOOL.to_string(),
                    description: Some("Read a resource (a file, document or record) that an MCP server provides, by its URI.".into()),
                    input_schema: json!({"type": "object", "properties": {
                        "server": {"type": "string", "enum": servers},
                        "uri": {"type": "string"}
                    }, "required": ["server", "uri"]}),
                    annotations: Some(json!({"readOnlyHint": true})),
                });
            }
        }
        tools
    }

    async fn resource_servers(&self) -> Vec<String> {
        let mut names = Vec::new();
        for server in &self.servers {
            if let State::Up(conn) = &*server.state.lock().await
                && conn.has_resources
            {
                names.push(server.config.name.clone());
            }
        }
        names
    }

    /// Calls a tool by the name the model sees (see [`McpHost::tools`]).
    pub async fn call_named(&self, name: &str, arguments: Value) -> Result<ToolOutcome, CallError> {
        let tools = self.tools().await;
        let Some(tool) = tools.iter().find(|t| t.name == name) else {
            return Err(CallError::UnknownName {
                name: name.to_string(),
                known: join_names(tools.iter().map(|t| t.name.as_str())),
            });
        };
        if tool.server.is_empty() && tool.tool == READ_RESOURCE_TOOL {
            return self.read_resource_tool(arguments).await;
        }
        self.call(&tool.server, &tool.tool, arguments, None).await
    }

    async fn read_resource_tool(&self, arguments: Value) -> Result<ToolOutcome, CallError> {
        let field = |k: &str| arguments.get(k).and_then(Value::as_str).map(str::to_owned);
        let (Some(server), Some(uri)) = (field("server"), field("uri")) else {
            return Err(CallError::BadArguments {
                tool: READ_RESOURCE_TOOL.into(),
                got: abbreviate(&arguments),
            });
        };
        let started = Instant::now();
        let raw = self.read_resource(&server, &uri).await?;
        let contents = raw
            .get("contents")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let blocks: Vec<Value> = contents
            .into_iter()
            .map(|c| json!({"type": "resource", "resource": c}))
            .collect();
        Ok(ToolOutcome {
            server,
            tool: READ_RESOURCE_TOOL.into(),
            call: self.next_call.fetch_add(1, Ordering::SeqCst),
            rendered: render_result(&json!({ "content": blocks }), self.options.max_result_bytes),
            raw,
            elapsed: started.elapsed(),
        })
    }

    /// Calls `tool` on `server`. `timeout` overrides the server's configured call timeout.
    pub async fn call(
        &self,
        server_name: &str,
        tool: &str,
        arguments: Value,
        timeout: Option<Duration>,
    ) -> Result<ToolOutcome, CallError> {
        let server = self.server(server_name)?;
        let Value::Object(arguments) = arguments else {
            return Err(CallError::BadArguments {
                tool: tool.to_string(),
                got: abbreviate(&arguments),
            });
        };
        let (peer, tools) = self.peer(server).await?;
        if !tools.iter().any(|t| t.name == tool) {
            return Err(CallError::UnknownTool {
                server: server_name.to_string(),
                tool: tool.to_string(),
                known: join_names(tools.iter().map(|t| t.name.as_ref())),
            });
        }
        let call = self.next_call.fetch_add(1, Ordering::SeqCst);
        let params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
        let limit = timeout.unwrap_or(server.config.call_timeout);
        let started = Instant::now();
        let failed = |message: String| CallError::Failed {
            server: server_name.to_string(),
            tool: tool.to_string(),
            message,
        };
        let closed = async || {
            failed(format!(
                "the server closed the connection during the call{}",
                self.exit_note(server).await
            ))
        };
        // rmcp times the request out itself and then sends `notifications/cancelled`.
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let handle = match peer
            .send_request_with_option(request, PeerRequestOptions::with_timeout(limit))
            .await
        {
            Ok(handle) => handle,
            Err(ServiceError::TransportClosed | ServiceError::TransportSend(_)) => {
                return Err(closed().await);
            }
            Err(e) => return Err(failed(e.to_string())),
        };
        if let Ok(mut calls) = server.progress_calls.lock() {
            // Entries outlive their call a little: the last progress notification may be handled
            // after the response. Tokens are never reused on a connection, so the map is only
            // trimmed, oldest calls first, when it grows.
            if calls.len() >= 1024 {
                let mut oldest: Vec<u64> = calls.values().copied().collect();
                oldest.sort_unstable();
                let cutoff = oldest[oldest.len() / 2];
                calls.retain(|_, c| *c > cutoff);
            }
            calls.insert(handle.progress_token.clone(), call);
        }
        let response = handle.await_response().await;
        let result = match response {
            Err(ServiceError::Timeout { .. }) => {
                return Err(CallError::Timeout {
                    server: server_name.to_string(),
                    tool: tool.to_string(),
                    after: limit,
                });
            }
            Err(ServiceError::McpError(e)) => return Err(failed(e.message.to_string())),
            Err(ServiceError::TransportClosed | ServiceError::TransportSend(_)) => {
                return Err(closed().await);
            }
            Err(e) => return Err(failed(e.to_string())),
            Ok(ServerResult::CallToolResult(result)) => result,
            Ok(_) => {
                return Err(failed(
                    "the server answered with something other than a tool result".into(),
                ));
            }
        };
        let raw = serde_json::to_value(&result).unwrap_or(Value::Null);
        Ok(ToolOutcome {
            server: server_name.to_string(),
            tool: tool.to_string(),
            call,
            rendered: render_result(&raw, self.options.max_result_bytes),
            raw,
            elapsed: started.elapsed(),
        })
    }

    /// Waits briefly for a dying server to finish dying, and says how it ended.
    async fn exit_note(&self, server: &Server) -> String {
        let mut state = server.state.lock().await;
        if let State::Up(conn) = &mut *state {
            let reason = conn.wait_exit_reason(Duration::from_millis(500)).await;
            if !reason.is_empty() {
                return format!(" ({reason}; it is restarted on the next call)");
            }
        }
        String::new()
    }

    /// Every resource each connected server lists, as `(server, resource)`.
    pub async fn resources(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for server in &self.servers {
            let Ok((peer, _)) = self.peer_if_up(server).await else {
                continue;
            };
            let limit = server.config.call_timeout;
            if let Ok(Ok(list)) = tokio::time::timeout(limit, peer.list_all_resources()).await {
                for r in list {
                    out.push((
                        server.config.name.clone(),
                        serde_json::to_value(&r).unwrap_or(Value::Null),
                    ));
                }
            }
        }
        out
    }

    /// Reads one resource.
    pub async fn read_resource(&self, server_name: &str, uri: &str) -> Result<Value, CallError> {
        let server = self.server(server_name)?;
        let (peer, _) = self.peer(server).await?;
        let failed = |message: String| CallError::Failed {
            server: server_name.to_string(),
            tool: format!("resources/read {uri}"),
            message,
        };
        let limit = server.config.call_timeout;
        let params = ReadResourceRequestParams::new(uri.to_string());
        match tokio::time::timeout(limit, peer.read_resource(params)).await {
            Err(_) => Err(failed(format!(
                "no answer within {} s",
                limit.as_secs_f64()
            ))),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Ok(Ok(r)) => Ok(serde_json::to_value(&r).unwrap_or(Value::Null)),
        }
    }

    /// Every prompt each connected server lists, as `(server, prompt)`.
    pub async fn prompts(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for server in &self.servers {
            let Ok((peer, _)) = self.peer_if_up(server).await else {
                continue;
            };
            let limit = server.config.call_timeout;
            if let Ok(Ok(list)) = tokio::time::timeout(limit, peer.list_all_prompts()).await {
                for p in list {
                    out.push((
                        server.config.name.clone(),
                        serde_json::to_value(&p).unwrap_or(Value::Null),
                    ));
                }
            }
        }
        out
    }

    /// Gets one prompt with its arguments filled in.
    pub async fn get_prompt(
        &self,
        server_name: &str,
        name: &str,
        arguments: serde_json::Map<String, Value>,
    ) -> Result<Value, CallError> {
        let server = self.server(server_name)?;
        let (peer, _) = self.peer(server).await?;
        let limit = server.config.call_timeout;
        let mut params = GetPromptRequestParams::new(name.to_string());
        params.arguments = Some(arguments);
        let failed = |message: String| CallError::Failed {
            server: server_name.to_string(),
            tool: format!("prompts/get {name}"),
            message,
        };
        match tokio::time::timeout(limit, peer.get_prompt(params)).await {
            Err(_) => Err(failed(format!(
                "no answer within {} s",
                limit.as_secs_f64()
            ))),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Ok(Ok(r)) => Ok(serde_json::to_value(&r).unwrap_or(Value::Null)),
        }
    }

    async fn peer_if_up(&self, server: &Server) -> Result<(Peer<RoleClient>, bool), ()> {
        match &*server.state.lock().await {
            State::Up(conn) if !conn.is_closed() => {
                Ok((conn.service.peer().clone(), conn.has_resources))
            }
            _ => Err(()),
        }
    }

    /// Process ids of the stdio servers now running (process group leaders).
    pub async fn server_pids(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for server in &self.servers {
            if let State::Up(conn) = &*server.state.lock().await
                && let Some(pid) = conn.pid()
            {
                out.push((server.config.name.clone(), pid));
            }
        }
        out
    }

    /// Stops every server: closes each connection, then stops each process group (SIGTERM, then
    /// SIGKILL).
    pub async fn shutdown(self) {
        self.stop_all().await;
    }

    /// Like [`McpHost::shutdown`], through a shared reference (for a Ctrl-C handler); servers
    /// are not restarted afterwards.
    pub async fn stop_all(&self) {
        let stops = self.servers.iter().map(|s| async move {
            let mut state = s.state.lock().await;
            if let State::Up(conn) = std::mem::replace(&mut *state, State::Disabled) {
                conn.stop().await;
            }
        });
        futures::future::join_all(stops).await;
    }
}

pub(crate) fn host_tool(server: &str, tool: &rmcp::model::Tool, name: String) -> HostTool {
    HostTool {
        name,
        server: server.to_string(),
        tool: tool.name.to_string(),
        description: tool.description.as_ref().map(|d| d.to_string()),
        input_schema: Value::Object((*tool.input_schema).clone()),
        annotations: tool
            .annotations
            .as_ref()
            .and_then(|a| serde_json::to_value(a).ok()),
    }
}

fn join_names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.collect();
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

fn abbreviate(v: &Value) -> String {
    cut_to(v.to_string(), 80).0
}

/// The lifecycle Kestrel asks for: the newest protocol, falling back to any older one rmcp knows.
pub(crate) fn lifecycle() -> ClientLifecycleMode {
    ClientLifecycleMode::Auto {
        preferred_versions: vec![ProtocolVersion::LATEST],
        legacy_version: Some(ProtocolVersion::LATEST_WITH_INITIALIZE),
    }
}
