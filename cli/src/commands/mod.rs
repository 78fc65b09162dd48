//! One module per subcommand.

pub mod batch;
pub mod bench;
pub mod chat;
mod chat_form;
mod chat_mcp;
pub mod generate;
pub mod mcp_login;
pub mod mcp_serve;
pub mod plan;
pub mod prompt;
pub mod replay;
pub mod run;
pub mod serve;
pub mod tools;
