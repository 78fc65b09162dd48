//! kestrel-prompts: Qwen's chat protocol, from a request to prompt tokens and from generated text
//! back to events.
//!
//! One direction each way. Going in: [`messages`] holds the request (OpenAI's chat format plus
//! Qwen's switches), [`template`] renders it with the model's own Jinja template and tokenizes it
//! so that only the template's markup can become special tokens, [`thinking`] decides the thinking
//! mode and enforces its budget, with [`phase`] telling every per-token hook whether the model is
//! thinking. Coming out: [`parser`] turns generated text into thinking, text
//! and tool-call events (with [`json_repair`] for the JSON small models write,
//! [`xml_calls`] for Qwen3-Coder's XML calls, and
//! [`call_stream`] for a call's name and arguments while it is written), [`constrain`]
//! keeps tool calls inside the offered tools' schemas while they are generated, and
//! [`answer_format`] keeps an answer inside a requested JSON schema. Nothing here knows
//! about MCP servers or the command line; the engine is used only for its tokenizer and per-token
//! hooks.

pub mod answer_format;
pub mod call_stream;
pub mod constrain;
pub mod gbnf;
pub mod json_repair;
pub mod messages;
pub mod parser;
pub mod phase;
pub mod structural_tag;
pub mod template;
pub mod thinking;
pub mod untagged;
pub mod xml_calls;
