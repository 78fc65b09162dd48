//! Model architectures, one file per family.

pub mod qwen;
