//! One module per subcommand.

pub mod batch;
pub mod bench;
pub mod chat;
pub mod generate;
pub mod prompt;
pub mod replay;
pub mod run;
pub mod tools;
