//! Kestrel's side of one MCP connection: what it tells a server about itself and how it answers
//! the server's requests and notifications.
//!
//! One `KestrelClient` is made per connection (and per restart). It never blocks the connection:
//! notifications only flip a flag or publish a [`HostEvent`], which the host reads when it needs to
//! (a changed tool list is re-listed the next time tools are asked for).
//!
//! Roots and logging are deprecated by the newest protocol version but remain what servers on the
//! earlier versions use (server-filesystem asks for roots), hence `allow(deprecated)`.
#![allow(deprecated)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rmcp::ClientHandler;
use rmcp::model::{
    ClientCapabilities, ClientConfig, CreateMessageRequestMethod, CreateMessageRequestParams,
    CreateMessageResult, ElicitRequestParams, ElicitResult, Implementation, ListRootsResult,
    LoggingMessageNotificationParam, ProgressNotificationParam, ProgressToken, ProtocolVersion,
    Root,
};
use rmcp::service::{NotificationContext, RequestContext, RoleClient};
use tokio::sync::broadcast;

use super::elicitation::{self, ElicitationHandle};
use super::events::HostEvent;
use super::sampling::{self, SamplingHandle};

/// The per-connection handler.
#[derive(Clone)]
pub(crate) struct KestrelClient {
    pub(crate) server: Arc<str>,
    pub(crate) roots: Arc<[PathBuf]>,
    pub(crate) tools_changed: Arc<AtomicBool>,
    pub(crate) events: broadcast::Sender<HostEvent>,
    /// Progress tokens of calls in flight, and the call each belongs to. rmcp picks the token
    /// when it sends the request; the host records it here before waiting for the answer.
    pub(crate) progress_calls: ProgressCalls,
    pub(crate) sampling: Option<SamplingHandle>,
    pub(crate) elicitation: ElicitationHandle,
}

/// Progress token -> call number, shared by a server's host state and its handler.
pub(crate) type ProgressCalls = Arc<Mutex<HashMap<ProgressToken, u64>>>;

impl KestrelClient {
    fn publish(&self, event: HostEvent) {
        // Nobody listening is normal (a one-shot `tools call`).
        let _ = self.events.send(event);
    }

    /// Answers a sampling request, sent as a request (earlier protocols) or inside an
    /// input-required result (2026-07-28).
    pub(crate) async fn sample(
        &self,
        params: CreateMessageRequestParams,
    ) -> Result<CreateMessageResult, rmcp::ErrorData> {
        let Some(SamplingHandle(handler)) = &self.sampling else {
            return Err(rmcp::ErrorData::method_not_found::<
                CreateMessageRequestMethod,
            >());
        };
        let request =
            sampling::request_from(params).map_err(|e| rmcp::ErrorData::invalid_params(e, None))?;
        let server = self.server.clone();
        self.publish(HostEvent::Sampling {
            server: server.to_string(),
        });
        match handler.create_message(&server, request).await {
            Ok(reply) => Ok(sampling::result_from(reply)),
            // -1 is the code the specification gives for a request the user rejected.
            Err(message) => Err(rmcp::ErrorData::new(
                rmcp::model::ErrorCode(-1),
                message,
                None,
            )),
        }
    }

    /// Answers an elicitation request (either way it arrives).
    pub(crate) async fn elicit(&self, params: ElicitRequestParams) -> ElicitResult {
        self.publish(HostEvent::Elicitation {
            server: self.server.to_string(),
        });
        elicitation::answer(&self.elicitation, &self.server, params).await
    }

    /// The roots offered to the server.
    pub(crate) fn roots(&self) -> ListRootsResult {
        ListRootsResult::new(self.roots.iter().map(|p| root_for(p)).collect())
    }
}

/// A local directory as an MCP root (`file://` URI, percent-encoding what a URI cannot carry).
pub(crate) fn root_for(path: &std::path::Path) -> Root {
    let mut uri = String::from("file://");
    for b in path.to_string_lossy().bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' | b'~' => {
                uri.push(b as char)
            }
            _ => uri.push_str(&format!("%{b:02X}")),
        }
    }
    let mut root = Root::new(uri);
    root.name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    root
}

impl ClientHandler for KestrelClient {
    fn get_info(&self) -> ClientConfig {
        // The capability builders are behind rmcp's server features; the wire form is simple.
        // Elicitation is always offered: without a person or a policy that answers, requests are
        // declined, which servers handle; without the capability, they hide their tools.
        let mut wire = serde_json::json!({
            "roots": {"listChanged": false},
            "elicitation": {"form": {}, "url": {}},
        });
        if self.sampling.is_some() {
            wire["sampling"] = serde_json::json!({});
        }
        let capabilities: ClientCapabilities = serde_json::from_value(wire).unwrap_or_default();
        let mut config = ClientConfig::new(
            capabilities,
            Implementation::new("kestrel", env!("CARGO_PKG_VERSION")),
        );
        // What the plain `initialize` handshake offers (newer versions are negotiated by
        // discovery instead).
        config.protocol_version = ProtocolVersion::LATEST_WITH_INITIALIZE;
        config
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, rmcp::ErrorData> {
        self.sample(params).await
    }

    async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, rmcp::ErrorData> {
        Ok(self.elicit(params).await)
    }

    async fn list_roots(
        &self,
        _context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, rmcp::ErrorData> {
        Ok(self.roots())
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.tools_changed.store(true, Ordering::SeqCst);
        self.publish(HostEvent::ToolsChanged {
            server: self.server.to_string(),
        });
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let call = self
            .progress_calls
            .lock()
            .ok()
            .and_then(|m| m.get(&params.progress_token).copied());
        self.publish(HostEvent::Progress {
            server: self.server.to_string(),
            call,
            progress: params.progress,
            total: params.total,
            message: params.message,
        });
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let message = match params.data {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        self.publish(HostEvent::Log {
            server: self.server.to_string(),
            level: format!("{:?}", params.level).to_lowercase(),
            message,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_file_uris() {
        let r = root_for(std::path::Path::new("/tmp/my dir/é"));
        assert_eq!(r.uri, "file:///tmp/my%20dir/%C3%A9");
        assert_eq!(r.name.as_deref(), Some("é"));
    }
}
