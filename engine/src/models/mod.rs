//! Model architectures, one file per family.

pub mod moe;
pub mod qwen;
