//! The MCP host: Kestrel's connections to the MCP servers a user configures.
//!
//! `config` reads the `mcpServers` file; `connect` opens one connection (a stdio child from
//! `stdio`, or Streamable HTTP) with rmcp; `client` is Kestrel's side of each connection; `host`
//! keeps them all and offers their tools as one list; `content` turns a tool result into the text a
//! model reads. Nothing here knows about models or tensors: the agent loop hands tool calls in and
//! takes text out, and a server's sampling request goes to whatever [`Sampler`] the host is given.

mod client;
pub mod config;
mod connect;
pub mod content;
mod host;
pub mod sampling;
mod stdio;

pub use config::{McpConfig, McpConfigError, ServerConfig, Transport};
pub use content::{RenderedResult, render_result};
pub use host::{
    CallError, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_RESULT_BYTES, HostEvent, HostOptions,
    HostTool, McpHost, READ_RESOURCE_TOOL, ServerStatus, ToolOutcome,
};
pub use sampling::{
    Sampler, SamplerHandle, SamplingMessageText, SamplingReply, SamplingRequest, SamplingStop,
};
