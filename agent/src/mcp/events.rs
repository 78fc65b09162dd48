//! What happens on the servers, published for whoever shows progress: connections, failures, tool
//! list changes, progress, logs, sampling and elicitation requests. Nobody has to listen.

use serde::Serialize;

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
    /// A server asked the user for input (`elicitation/create`).
    Elicitation {
        /// Server name.
        server: String,
    },
}
