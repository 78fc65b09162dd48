//! kestrel: the agent library. It runs Qwen3 agents that act through MCP tools: the task loop
//! (prompt, generate, parse, dispatch, feed results back), the approval policy, the MCP host that
//! connects the servers a user configures, and the answers to those servers' sampling requests by
//! the local model, and for the HTTP server one model reply to a chat request ([`reply`]) and the
//! MCP tools a request runs on the server ([`hosted`]), and the agent offered to other MCP hosts
//! as a server of its own ([`task_server`]).
//!
//! Qwen's chat protocol (templates, parser, thinking, constraints) is [`kestrel_prompts`],
//! re-exported as [`prompts`]; the model is `kestrel-engine`. No command line, terminal or process
//! exit here: the `kestrel` binary (`kestrel-cli`) is a thin shell over this crate.

pub mod agent;
pub mod backend;
pub mod hosted;
pub mod mcp;
pub mod replay;
pub mod reply;
pub mod task_server;

pub use kestrel_prompts as prompts;
