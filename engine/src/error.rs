//! The engine's one error type.
//!
//! Every failure a user can cause (a missing file, a bad config, a corrupt weight file, a prompt
//! longer than the context) gets its own variant that names the offending thing, so the CLI can print
//! it as is. Failures inside candle's kernels are wrapped, not flattened, to keep their context.

use std::path::PathBuf;

/// Errors returned by `kestrel-engine`.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A file the model needs could not be opened or read.
    #[error("cannot read {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error (part of the message, so not repeated as a source).
        error: std::io::Error,
    },
    /// The model path is neither a directory with config.json nor a `.gguf` file.
    #[error("{path} is not a model: expected a directory with config.json or a .gguf file")]
    NotAModel {
        /// The path the user gave.
        path: PathBuf,
    },
    /// A configuration file (config.json, generation_config.json, GGUF metadata) is invalid.
    #[error("invalid model config in {path}: {message}")]
    Config {
        /// The file whose content is wrong.
        path: PathBuf,
        /// What is wrong, naming the field.
        message: String,
    },
    /// The model uses something Kestrel does not implement (an architecture, a rope type, ...).
    #[error("unsupported model in {path}: {message}")]
    Unsupported {
        /// The file that declares it.
        path: PathBuf,
        /// What is not supported.
        message: String,
    },
    /// A weight file is corrupt, truncated, or lacks a tensor the architecture needs.
    #[error("bad weights in {path}: {message}")]
    Weights {
        /// The weight file (or the model directory for sharded checkpoints).
        path: PathBuf,
        /// What is wrong, naming the tensor where there is one.
        message: String,
    },
    /// The tokenizer could not be loaded or built.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// Where the tokenizer was loaded from.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The model has no tokenizer (a directory without tokenizer.json and none given).
    #[error(
        "no tokenizer for {path}: put tokenizer.json in the model directory or pass one explicitly"
    )]
    NoTokenizer {
        /// The model path.
        path: PathBuf,
    },
    /// The prompt plus the requested tokens do not fit the model's context window.
    #[error("prompt of {prompt_tokens} tokens does not fit the context window of {context} tokens")]
    ContextOverflow {
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// The model's context length.
        context: usize,
    },
    /// A context or batch the memory cannot hold (the plan's arithmetic is in the message), or a
    /// context longer than the model's window.
    #[error("{0}")]
    Context(String),
    /// A request was invalid (an empty prompt, a token id outside the vocabulary, a bad parameter).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A device spec was invalid or the device is not compiled in / not present.
    #[error("device {spec:?}: {message}")]
    Device {
        /// What the user asked for.
        spec: String,
        /// Why it cannot be used.
        message: String,
    },
    /// An error from candle while computing.
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// Encoding or decoding text failed.
    #[error("tokenization failed: {0}")]
    Tokenize(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
