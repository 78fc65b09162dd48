//! Text <-> token ids, plus the chat-template and stop-token facts that travel with a tokenizer.
//!
//! A model directory brings tokenizer.json and tokenizer_config.json; a GGUF file brings the same
//! facts in its metadata, from which candle builds a `tokenizers::Tokenizer`. Either way the rest
//! of Kestrel sees one [`Tokenizer`]. Decoding during generation goes through [`TextStream`], which
//! only releases text once it is valid UTF-8 (a token may carry half of a multi-byte character).

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use serde_json::Value;

use crate::error::{EngineError, Result};

/// A tokenizer with the special-token facts Kestrel needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    eos_ids: Vec<u32>,
    source: PathBuf,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("eos_ids", &self.eos_ids)
            .finish()
    }
}

/// Qwen's end-of-turn and end-of-text markers: generation stops on either.
const QWEN_STOP_TOKENS: [&str; 2] = ["<|im_end|>", "<|endoftext|>"];

impl Tokenizer {
    /// Loads `tokenizer.json` from `dir`, and the chat template and EOS from `tokenizer_config.json`
    /// when present.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner =
            tokenizers::Tokenizer::from_file(&path).map_err(|e| EngineError::Tokenizer {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let config_path = dir.join("tokenizer_config.json");
        let mut chat_template = None;
        let mut eos_names = Vec::new();
        if config_path.exists() {
            let text = std::fs::read_to_string(&config_path).map_err(|error| EngineError::Io {
                path: config_path.clone(),
                error,
            })?;
            let json: Value = serde_json::from_str(&text).map_err(|e| EngineError::Tokenizer {
                path: config_path.clone(),
                message: e.to_string(),
            })?;
            chat_template = template_from_config(&json);
            if let Some(eos) = json.get("eos_token").and_then(token_content) {
                eos_names.push(eos);
            }
        }
        let mut tok = Self {
            inner,
            chat_template,
            eos_ids: Vec::new(),
            source: path,
        };
        let eos_ids: Vec<u32> = eos_names.iter().filter_map(|n| tok.token_id(n)).collect();
        tok.add_eos(&eos_ids);
        Ok(tok)
    }

    /// Builds the tokenizer from a GGUF file's own metadata (tokens, merges, types, special ids)
    /// and reads its `tokenizer.chat_template`.
    pub fn from_gguf(content: &gguf_file::Content, path: &Path) -> Result<Self> {
        let inner =
            tokenizers::Tokenizer::from_gguf(content).map_err(|e| EngineError::Tokenizer {
                path: path.to_path_buf(),
                message: format!("cannot build a tokenizer from the GGUF metadata: {e}"),
            })?;
        let chat_template = content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok().cloned());
        let mut tok = Self {
            inner,
            chat_template,
            eos_ids: Vec::new(),
            source: path.to_path_buf(),
        };
        let ids: Vec<u32> = ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"]
            .iter()
            .filter_map(|k| content.metadata.get(*k))
            .filter_map(|v| v.to_u32().ok())
            .collect();
        tok.add_eos(&ids);
        Ok(tok)
    }

    /// Loads the tokenizer of a model path: a directory with tokenizer.json, or a `.gguf` file
    /// (only its header is read).
    pub fn load(path: &Path) -> Result<Self> {
        if path.is_dir() {
            return Self::from_dir(path);
        }
        let mut file = std::fs::File::open(path).map_err(|error| EngineError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        let content = gguf_file::Content::read(&mut file).map_err(|e| EngineError::Tokenizer {
            path: path.to_path_buf(),
            message: format!("not a tokenizer directory or a readable GGUF file: {e}"),
        })?;
        Self::from_gguf(&content, path)
    }

    /// Adds stop ids (the Qwen end markers are always included when the vocabulary has them).
    pub fn add_eos(&mut self, ids: &[u32]) {
        let qwen: Vec<u32> = QWEN_STOP_TOKENS
            .iter()
            .filter_map(|t| self.token_id(t))
            .collect();
        for &id in ids.iter().chain(&qwen) {
            if !self.eos_ids.contains(&id) {
                self.eos_ids.push(id);
            }
        }
    }

    /// Where the tokenizer came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The chat template that came with the tokenizer, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Ids that end generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The id of a token given by its text (for example `<|im_end|>`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Tokenizes `text` as given: special-token text such as `<|im_start|>` becomes that special
    /// token. For raw prompts only; content from users and tools must not go through this.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::Tokenize(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Tokenizes `text` as plain text: text that spells a special or added token (`<|im_end|>`,
    /// `<tool_call>`) is split into ordinary tokens like any other text. This is how content from
    /// users and tools must be tokenized, so that it cannot forge chat markup.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        use tokenizers::{
            Model as _, Normalizer as _, OffsetType, PreTokenizedString, PreTokenizer as _,
        };
        let err = |e: tokenizers::Error| EngineError::Tokenize(e.to_string());
        let mut pretok = PreTokenizedString::from(text);
        if let Some(n) = self.inner.get_normalizer() {
            pretok.normalize(|s| n.normalize(s)).map_err(err)?;
        }
        if let Some(p) = self.inner.get_pre_tokenizer() {
            p.pre_tokenize(&mut pretok).map_err(err)?;
        }
        let model = self.inner.get_model();
        pretok.tokenize(|s| model.tokenize(s.get())).map_err(err)?;
        let enc = pretok
            .into_encoding(None, 0, OffsetType::None)
            .map_err(err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Every added token (special or not) as `(id, text)`, sorted by id. The tokenizer matches
    /// these in raw text before anything else.
    pub fn added_tokens(&self) -> Vec<(u32, String)> {
        let mut v: Vec<(u32, String)> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, t)| (id, t.content))
            .collect();
        v.sort();
        v
    }

    /// Decodes ids to text, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| EngineError::Tokenize(e.to_string()))
    }
}

fn token_content(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// `chat_template` is a string, or a list of `{name, template}` of which `default` is the one.
fn template_from_config(json: &Value) -> Option<String> {
    match json.get("chat_template")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| list.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    }
}

/// Incremental detokenizer: feed ids one by one, get text deltas that never split a character.
#[derive(Debug, Default, Clone)]
pub struct TextStream {
    ids: Vec<u32>,
    /// Start of the window re-decoded each step (a few tokens back, for context-dependent merges).
    prefix_offset: usize,
    /// Tokens before this index have had their text released.
    read_offset: usize,
}

impl TextStream {
    /// An empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id` and returns the newly complete text (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let now = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        if now.len() > before.len()
            && !now.ends_with('\u{FFFD}')
            && now.is_char_boundary(before.len())
        {
            let delta = now[before.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Text still held back at the end (an incomplete character decodes as U+FFFD).
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> Result<String> {
        let before = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let now = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(
            if now.len() > before.len() && now.is_char_boundary(before.len()) {
                now[before.len()..].to_string()
            } else {
                String::new()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_forms() {
        let s: Value = serde_json::json!({"chat_template": "abc"});
        assert_eq!(template_from_config(&s).as_deref(), Some("abc"));
        let l: Value = serde_json::json!({"chat_template": [{"name": "tool_use", "template": "t"}, {"name": "default", "template": "d"}]});
        assert_eq!(template_from_config(&l).as_deref(), Some("d"));
        assert_eq!(template_from_config(&serde_json::json!({})), None);
    }
}
