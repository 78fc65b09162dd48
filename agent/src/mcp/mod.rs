//! The MCP host: Kestrel's connections to the MCP servers a user configures.
//!
//! `config` reads the `mcpServers` file. `host` is the public face: it keeps one `server` per
//! configured entry (its connection, state and restart backoff), offers their tools as one list
//! named by `registry` (a [`ToolSnapshot`] per turn, against which calls are resolved), and stops
//! them all on shutdown. `connect` opens one connection (a stdio child from `stdio`, Streamable
//! HTTP, or one of Kestrel's own servers in-process) with rmcp; `client` is Kestrel's side of it;
//! `content` turns a tool result into the text a model reads; `events` is what the host reports.
//! Nothing here knows about models or tensors: the agent loop hands tool calls in and takes text
//! out, and a server's sampling request goes to whatever [`SamplingHandler`] the host is given (an
//! elicitation request to its [`ElicitationHandler`]). `input_rounds` drives the 2026-07-28 form of
//! both, where a server asks inside a result and the call is sent again with the answers.

mod client;
pub mod config;
mod confine;
mod connect;
pub mod content;
pub mod elicitation;
mod error;
mod events;
mod host;
mod input_rounds;
mod login;
pub mod oauth;
mod options;
mod registry;
pub mod sampling;
mod server;
mod stdio;
mod tls;

pub use config::{McpConfig, McpConfigError, ServerConfig, Transport};
pub use content::{RenderedResult, render_checked_result, render_result};
pub use elicitation::{
    ElicitPolicy, ElicitationAnswer, ElicitationHandle, ElicitationHandler, ElicitationRequest,
};
pub use error::CallError;
pub use events::HostEvent;
pub use host::{McpHost, ServerStatus, ToolOutcome};
pub use options::{
    DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_RESULT_BYTES, HostOptions, default_oauth_dir,
};
pub use registry::{HostTool, READ_RESOURCE_TOOL, ToolSnapshot};
pub use sampling::{
    SamplingHandle, SamplingHandler, SamplingMessageText, SamplingReply, SamplingRequest,
    SamplingStop,
};
