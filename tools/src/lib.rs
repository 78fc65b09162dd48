//! kestrel-tools: Kestrel's own MCP servers, written with rmcp. Each is a type implementing
//! `ServerHandler`, usable in-process by Kestrel's MCP host (over an in-memory pipe, no child
//! process) or over stdio by any MCP host through the `kestrel-tools NAME` binary.
//!
//! - [`fs::FsServer`]: read, list, search and write files under configured roots.

pub mod fs;

/// The names of the servers this crate provides.
pub const SERVERS: &[&str] = &["fs"];
