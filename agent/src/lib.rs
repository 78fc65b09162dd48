//! kestrel: the agent side of Kestrel. It renders prompts, parses model output, hosts MCP servers
//! and runs the tool loop on top of `kestrel-engine`; the `kestrel` binary is a thin shell over it.

pub mod agent;
pub mod chat;
pub mod cli;
pub mod commands;
pub mod constrain;
pub mod hub;
pub mod json_repair;
pub mod loading;
pub mod mcp;
pub mod parser;
pub mod template;
pub mod thinking;
