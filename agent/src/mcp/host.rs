//! The MCP host: every configured server, connected at once, offered to the model as one tool list.
//!
//! The host is a list of [`Server`]s (each its own state machine, see `server`) and the
//! [`ToolSnapshot`] naming rules of `registry`. A server that fails to start is reported by name
//! and leaves the others working. Nothing here holds a lock across network I/O: listing, calling,
//! restarting and stopping one server never waits on another. Time limits are the host's (the SDK
//! has none); a call dropped by its timeout or by a cancelled task sends `notifications/cancelled`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotificationParam, ClientRequest,
    GetPromptRequestParams, GetPromptResponse, ReadResourceRequestParams, ReadResourceResponse,
    RequestId, ServerResult,
};
use rmcp::service::{PeerRequestOptions, ServiceError};
use rmcp::{Peer, RoleClient};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::config::{McpConfig, Transport};
use super::content::{RenderedResult, render_checked_result, render_result};
use super::error::{CallError, abbreviate};
use super::events::HostEvent;
use super::input_rounds::InputRounds;
use super::login;
use super::options::HostOptions;
use super::registry::{HostTool, READ_RESOURCE_TOOL, ToolSnapshot, host_tool};
use super::server::{Live, Server, Shared};

/// One server's state, for `tools list`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    /// Server name.
    pub name: String,
    /// `connected`, `starting`, `failed`, `disabled` or `stopped`.
    pub status: &'static str,
    /// `stdio`, `http` or `builtin`.
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
    /// What confines it (or the programs it runs), while it is connected; `None` when nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// The tools it offers (after include/exclude), while it is connected.
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

/// Connections to every configured MCP server.
pub struct McpHost {
    servers: Vec<Arc<Server>>,
    shared: Arc<Shared>,
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
        let shared = Arc::new(Shared { options, events });
        let host = Self {
            servers: config
                .servers
                .iter()
                .map(|c| Server::new(c.clone(), shared.clone()))
                .collect(),
            shared,
            next_call: AtomicU64::new(1),
        };
        futures::future::join_all(host.servers.iter().map(|s| s.start())).await;
        host
    }

    /// A receiver of host events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<HostEvent> {
        self.shared.events.subscribe()
    }

    /// The settings in use.
    pub fn options(&self) -> &HostOptions {
        &self.shared.options
    }

    fn server(&self, name: &str) -> Result<&Arc<Server>, CallError> {
        self.servers
            .iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| CallError::UnknownServer {
                server: name.to_string(),
                known: super::error::join_names(self.servers.iter().map(|s| s.name())),
            })
    }

    /// Every server's state and, for those connected, tools (re-listing tools that changed). The
    /// servers are asked at once: a slow one delays this answer only.
    pub async fn status(&self) -> Vec<ServerStatus> {
        let snapshots = self.servers.iter().map(|s| s.snapshot());
        let snapshots = futures::future::join_all(snapshots).await;
        self.servers
            .iter()
            .zip(snapshots)
            .map(|(server, snap)| {
                let config = &server.config;
                let connected = snap.status == "connected";
                ServerStatus {
                    name: config.name.clone(),
                    status: snap.status,
                    transport: match config.transport {
                        Transport::Stdio { .. } => "stdio",
                        Transport::Http { .. } => "http",
                        Transport::Builtin { .. } => "builtin",
                    },
                    protocol: snap.protocol,
                    server_info: snap.server_info,
                    error: snap.error,
                    log: snap.log,
                    sandbox: snap.sandbox,
                    tools: if connected {
                        snap.tools
                            .iter()
                            .map(|t| host_tool(config, t, t.name.to_string()))
                            .collect()
                    } else {
                        Vec::new()
                    },
                }
            })
            .collect()
    }

    /// The tools to offer a turn. A server that is restarting keeps offering the tools it last
    /// had, so the prompt stays the same and a call can bring it back; this never waits for a
    /// start.
    pub async fn snapshot(&self) -> ToolSnapshot {
        let snapshots = self.servers.iter().map(|s| s.snapshot());
        let snapshots = futures::future::join_all(snapshots).await;
        let mut resource_servers = Vec::new();
        let mut per_server = Vec::new();
        for (server, snap) in self.servers.iter().zip(snapshots) {
            if matches!(snap.status, "disabled" | "stopped") {
                continue;
            }
            if snap.has_resources {
                resource_servers.push(server.name().to_string());
            }
            let tools = snap
                .tools
                .iter()
                .map(|t| host_tool(&server.config, t, t.name.to_string()))
                .collect();
            per_server.push((server.name().to_string(), tools));
        }
        let resources = self
            .shared
            .options
            .resource_tool
            .then_some(resource_servers);
        ToolSnapshot::build(per_server, resources)
    }

    /// The tools offered now, named so that no two collide (see [`McpHost::snapshot`]).
    pub async fn tools(&self) -> Vec<HostTool> {
        self.snapshot().await.tools().to_vec()
    }

    /// Calls a tool of a snapshot (see [`ToolSnapshot::resolve`]): the server and tool it names,
    /// or the host's resource tool.
    pub async fn call_offered(
        &self,
        tool: &HostTool,
        arguments: Value,
    ) -> Result<ToolOutcome, CallError> {
        if tool.is_read_resource() {
            return self.read_resource_tool(arguments).await;
        }
        self.call(&tool.server, &tool.tool, arguments, None).await
    }

    /// Calls a tool by the name the model sees, resolved against the tools offered now.
    pub async fn call_named(&self, name: &str, arguments: Value) -> Result<ToolOutcome, CallError> {
        let snapshot = self.snapshot().await;
        let tool = snapshot.resolve(name)?;
        self.call_offered(tool, arguments).await
    }

    async fn read_resource_tool(&self, arguments: Value) -> Result<ToolOutcome, CallError> {
        let field = |k: &str| arguments.get(k).and_then(Value::as_str).map(str::to_owned);
        let Some(server) = field("server") else {
            return Err(CallError::BadArguments {
                tool: READ_RESOURCE_TOOL.into(),
                got: abbreviate(&arguments),
            });
        };
        let started = Instant::now();
        let Some(uri) = field("uri") else {
            // The listing: what the model can read, by URI.
            let listed: Vec<Value> = self
                .resources()
                .await
                .into_iter()
                .filter(|(s, _)| *s == server)
                .map(|(_, r)| {
                    let keep = ["uri", "name", "description", "mimeType"];
                    let fields = keep.iter().filter_map(|k| Some((*k, r.get(*k)?.clone())));
                    Value::Object(fields.map(|(k, v)| (k.to_string(), v)).collect())
                })
                .collect();
            let raw = json!({ "resources": listed });
            return Ok(ToolOutcome {
                server,
                tool: READ_RESOURCE_TOOL.into(),
                call: self.next_call.fetch_add(1, Ordering::SeqCst),
                rendered: render_result(
                    &json!({"content": [{"type": "text", "text": raw.to_string()}]}),
                    self.shared.options.max_result_bytes,
                ),
                raw,
                elapsed: started.elapsed(),
            });
        };
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
            rendered: render_result(
                &json!({ "content": blocks }),
                self.shared.options.max_result_bytes,
            ),
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
        let live = server.live().await?;
        if !live.tools.iter().any(|t| t.name == tool) {
            return Err(CallError::UnknownTool {
                server: server_name.to_string(),
                tool: tool.to_string(),
                known: super::error::join_names(live.tools.iter().map(|t| t.name.as_ref())),
            });
        }
        let call = self.next_call.fetch_add(1, Ordering::SeqCst);
        let mut params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
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
                server.exit_note(&live).await
            ))
        };
        // Each round is a request of its own, with the whole time limit: the time a person takes
        // to answer an elicitation is not the server's.
        let mut rounds = InputRounds::default();
        let mut logins = 0;
        let result = loop {
            // rmcp times the request out itself and then sends `notifications/cancelled`.
            let request = ClientRequest::CallToolRequest(CallToolRequest::new(params.clone()));
            let handle = match live
                .peer
                .send_request_with_option(request, PeerRequestOptions::with_timeout(limit))
                .await
            {
                Ok(handle) => handle,
                Err(e) if e.auth_challenge().is_some() => {
                    let challenge = e.auth_challenge().unwrap_or_default();
                    self.log_in_again(server, &live, challenge, &mut logins)
                        .await
                        .map_err(failed)?;
                    continue;
                }
                Err(ServiceError::TransportClosed | ServiceError::TransportSend(_)) => {
                    return Err(closed().await);
                }
                Err(e) => return Err(failed(e.to_string())),
            };
            server.track_progress(handle.progress_token.clone(), call);
            // Dropped before its answer (the task was cancelled), the call is cancelled on the
            // server.
            let mut in_flight = CancelOnDrop {
                peer: live.peer.clone(),
                id: Some(handle.id.clone()),
            };
            let response = handle.await_response().await;
            in_flight.id = None;
            match response {
                Err(ServiceError::Timeout { .. }) => {
                    return Err(CallError::Timeout {
                        server: server_name.to_string(),
                        tool: tool.to_string(),
                        after: limit,
                    });
                }
                Err(ServiceError::McpError(e)) => return Err(failed(e.message.to_string())),
                Err(e) if e.auth_challenge().is_some() => {
                    let challenge = e.auth_challenge().unwrap_or_default();
                    self.log_in_again(server, &live, challenge, &mut logins)
                        .await
                        .map_err(failed)?;
                }
                Err(ServiceError::TransportClosed | ServiceError::TransportSend(_)) => {
                    return Err(closed().await);
                }
                Err(e) => return Err(failed(e.to_string())),
                Ok(ServerResult::CallToolResult(result)) => break result,
                Ok(ServerResult::InputRequiredResult(input)) => {
                    (params.input_responses, params.request_state) =
                        rounds.answer(&live.handler, input).await.map_err(failed)?;
                }
                Ok(ServerResult::CreateTaskResult(_)) => {
                    return Err(failed(
                        "the server made the call a task, which this host does not poll".into(),
                    ));
                }
                Ok(_) => {
                    return Err(failed(
                        "the server answered with something other than a tool result".into(),
                    ));
                }
            }
        };
        let raw = serde_json::to_value(&result).unwrap_or(Value::Null);
        let limit = self.shared.options.max_result_bytes;
        let declared = live.tools.iter().find(|t| t.name == tool);
        let mut rendered = match declared.and_then(|t| t.output_schema.as_ref()) {
            Some(schema) => render_checked_result(&raw, &Value::Object((**schema).clone()), limit),
            None => render_result(&raw, limit),
        };
        let links = raw["content"].as_array().into_iter().flatten();
        if live.has_resources
            && self.shared.options.resource_tool
            && links.into_iter().any(|b| b["type"] == "resource_link")
        {
            rendered.text.push_str(&format!(
                "\n[{READ_RESOURCE_TOOL} with server \"{server_name}\" and a link's URI reads it]"
            ));
        }
        Ok(ToolOutcome {
            server: server_name.to_string(),
            tool: tool.to_string(),
            call,
            rendered,
            raw,
            elapsed: started.elapsed(),
        })
    }

    /// A request was refused for want of authorization (`challenge`): logs in again, asking for
    /// what the challenge names (a step-up), at most [`login::MAX_LOGINS`] times per request.
    async fn log_in_again(
        &self,
        server: &Server,
        live: &Live,
        challenge: &str,
        logins: &mut usize,
    ) -> Result<(), String> {
        *logins += 1;
        if *logins > login::MAX_LOGINS {
            return Err(format!(
                "the server still refuses after {} logins: {challenge}",
                login::MAX_LOGINS
            ));
        }
        login::again(
            &server.config,
            challenge,
            &self.shared.options,
            live.auth.as_ref(),
        )
        .await
    }

    /// Every resource each connected server lists, as `(server, resource)`.
    pub async fn resources(&self) -> Vec<(String, Value)> {
        self.list_from_each(async |peer| peer.list_all_resources().await)
            .await
    }

    /// Reads one resource.
    pub async fn read_resource(&self, server_name: &str, uri: &str) -> Result<Value, CallError> {
        let mut params = ReadResourceRequestParams::new(uri.to_string());
        let what = format!("resources/read {uri}");
        self.ask(server_name, what, async |live, limit| {
            let mut rounds = InputRounds::default();
            loop {
                match within(limit, live.peer.read_resource_once(params.clone())).await? {
                    ReadResourceResponse::Complete(result) => return Ok(result),
                    ReadResourceResponse::InputRequired(input) => {
                        (params.input_responses, params.request_state) =
                            rounds.answer(&live.handler, input).await?;
                    }
                    _ => {
                        return Err("the server answered with something other than contents".into());
                    }
                }
            }
        })
        .await
    }

    /// Every prompt each connected server lists, as `(server, prompt)`.
    pub async fn prompts(&self) -> Vec<(String, Value)> {
        self.list_from_each(async |peer| peer.list_all_prompts().await)
            .await
    }

    /// Gets one prompt with its arguments filled in.
    pub async fn get_prompt(
        &self,
        server_name: &str,
        name: &str,
        arguments: serde_json::Map<String, Value>,
    ) -> Result<Value, CallError> {
        let mut params = GetPromptRequestParams::new(name.to_string());
        params.arguments = Some(arguments);
        let what = format!("prompts/get {name}");
        self.ask(server_name, what, async |live, limit| {
            let mut rounds = InputRounds::default();
            loop {
                match within(limit, live.peer.get_prompt_once(params.clone())).await? {
                    GetPromptResponse::Complete(result) => return Ok(result),
                    GetPromptResponse::InputRequired(input) => {
                        (params.input_responses, params.request_state) =
                            rounds.answer(&live.handler, input).await?;
                    }
                    _ => {
                        return Err("the server answered with something other than a prompt".into());
                    }
                }
            }
        })
        .await
    }

    /// Asks every connected server for a list at once, each within its call timeout; never starts
    /// a server, and one that fails or is slow is left out.
    async fn list_from_each<T: Serialize>(
        &self,
        list: impl AsyncFn(Peer<RoleClient>) -> Result<Vec<T>, ServiceError>,
    ) -> Vec<(String, Value)> {
        let list = &list;
        let lists = self.servers.iter().map(|server| async move {
            let live = server.live_now()?;
            let limit = server.config.call_timeout;
            let items = tokio::time::timeout(limit, list(live.peer))
                .await
                .ok()?
                .ok()?;
            Some((server.name(), items))
        });
        let mut out = Vec::new();
        for (server, items) in futures::future::join_all(lists).await.into_iter().flatten() {
            for item in items {
                let item = serde_json::to_value(&item).unwrap_or(Value::Null);
                out.push((server.to_string(), item));
            }
        }
        out
    }

    /// One exchange with a server (started if need be), each request within its call timeout, its
    /// answer as JSON; `what` names the exchange in errors.
    async fn ask<T: Serialize>(
        &self,
        server_name: &str,
        what: String,
        exchange: impl AsyncFnOnce(&Live, Duration) -> Result<T, String>,
    ) -> Result<Value, CallError> {
        let server = self.server(server_name)?;
        let live = server.live().await?;
        match exchange(&live, server.config.call_timeout).await {
            Err(message) => Err(CallError::Failed {
                server: server_name.to_string(),
                tool: what,
                message,
            }),
            Ok(r) => Ok(serde_json::to_value(&r).unwrap_or(Value::Null)),
        }
    }

    /// Process ids of the stdio servers now running (process group leaders).
    pub async fn server_pids(&self) -> Vec<(String, u32)> {
        let snapshots = futures::future::join_all(self.servers.iter().map(|s| s.snapshot())).await;
        self.servers
            .iter()
            .zip(snapshots)
            .filter_map(|(s, snap)| Some((s.name().to_string(), snap.pid?)))
            .collect()
    }

    /// Stops every server for good, all at once: each connection is closed (a stdio server sees
    /// EOF on stdin, an HTTP session gets its DELETE), then each process group that has not
    /// exited after a grace period gets SIGTERM, and SIGKILL after another. Servers are not
    /// restarted afterwards; calling it again does nothing.
    pub async fn shutdown(&self) {
        futures::future::join_all(self.servers.iter().map(|s| s.stop())).await;
    }
}

/// One request within `limit`; the error says what went wrong.
async fn within<T>(
    limit: Duration,
    request: impl Future<Output = Result<T, ServiceError>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, request).await {
        Err(_) => Err(format!("no answer within {} s", limit.as_secs_f64())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(r)) => Ok(r),
    }
}

/// A call waiting for its answer. Dropped while armed (the task awaiting it was cancelled), it
/// sends MCP's `notifications/cancelled` for the request, from a spawned task since a drop
/// cannot wait. rmcp sends the notification itself only when its own timeout fires.
struct CancelOnDrop {
    peer: Peer<RoleClient>,
    id: Option<RequestId>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let peer = self.peer.clone();
            runtime.spawn(async move {
                let params =
                    CancelledNotificationParam::new(Some(id), Some("cancelled by the user".into()));
                // A server already gone has nothing left to cancel.
                let _ = peer.notify_cancelled(params).await;
            });
        }
    }
}
