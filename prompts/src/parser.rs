//! Incremental parser for Qwen's output: thinking, text and tool calls as events.
//!
//! Input arrives as text chunks cut anywhere (token boundaries, or worse). The parser keeps back
//! only what could still be the start of a tag (`<tool_` might become `<tool_call>`), so the events
//! of an output are the same however it is split, up to how deltas are grouped. Tool calls are
//! `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, or Qwen3-Coder's XML form
//! `<tool_call><function=NAME><parameter=KEY>VALUE</parameter></function></tool_call>`
//! ([`crate::xml_calls`], told apart by the body's first tag); small models also write a bare
//! `{"name": <known tool>, "arguments": ...}` object or a ```` ```json ```` block without tags, which
//! is recognised when the name is one of the offered tools. JSON is parsed leniently
//! (`json_repair`); what still fails becomes a [`ParseEvent::ParseError`] with the raw text.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::json_repair::parse_lenient;
use crate::xml_calls::{is_xml_call, parse_xml_call};

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const CALL_OPEN: &str = "<tool_call>";
const CALL_CLOSE: &str = "</tool_call>";
const FENCE_JSON: &str = "```json";
const FENCE: &str = "```";

/// The message of a call the token limit cut off.
pub const CUT_OFF: &str = "the call was cut off by the turn's token limit before it was complete";

/// What the parser reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ParseEvent {
    /// More thinking text.
    ThinkingDelta {
        /// The text.
        text: String,
    },
    /// More answer text.
    TextDelta {
        /// The text.
        text: String,
    },
    /// A tool call began.
    ToolCallStarted {
        /// Index of the call within the turn.
        index: usize,
    },
    /// More of a tool call's raw body.
    ToolCallDelta {
        /// Index of the call.
        index: usize,
        /// Raw text.
        text: String,
    },
    /// A tool call is complete and parsed.
    ToolCallComplete {
        /// Index of the call.
        index: usize,
        /// Tool name.
        name: String,
        /// Arguments (always an object).
        arguments: Map<String, Value>,
        /// The raw text of the call body.
        raw: String,
    },
    /// A tool call could not be parsed or repaired.
    ParseError {
        /// Index of the call.
        index: usize,
        /// Why.
        message: String,
        /// The raw text.
        raw: String,
    },
    /// The turn ended.
    EndOfTurn,
}

/// What to do with `<tool_call>` written inside `<think>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallsInThinking {
    /// Treat it as thinking text (the model is only thinking about calling).
    #[default]
    Ignore,
    /// Parse it as a real call.
    Parse,
}

/// Parser settings.
#[derive(Debug, Clone, Default)]
pub struct ParserConfig {
    /// The prompt already opened `<think>` (Qwen3 thinking-2507 templates), so output starts
    /// inside the thinking.
    pub starts_in_thinking: bool,
    /// Policy for calls inside thinking.
    pub calls_in_thinking: CallsInThinking,
    /// Names of the offered tools; untagged JSON calls are only recognised for these.
    pub known_tools: Vec<String>,
    /// No call may be made this turn (`tool_choice: none`, a final answer): `<tool_call>` is
    /// plain text and nothing is recognised as a call.
    pub no_calls: bool,
    /// The offered tools' parameter schemas by name ([`crate::xml_calls::parameter_schemas`]):
    /// the values of an XML call are typed by them.
    pub parameter_schemas: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
enum Mode {
    /// Answer text; `segment_start` while only whitespace has been seen since the segment began.
    Text {
        segment_start: bool,
    },
    Thinking,
    Call {
        index: usize,
        body: String,
        in_thinking: bool,
    },
    /// A possible untagged call held back until it is complete.
    Fenced {
        buf: String,
    },
    Braced {
        buf: String,
        depth: usize,
        in_string: bool,
        escaped: bool,
    },
}

/// The incremental parser. Feed chunks with [`OutputParser::push`], end with
/// [`OutputParser::finish`].
#[derive(Debug, Clone)]
pub struct OutputParser {
    config: ParserConfig,
    mode: Mode,
    pending: String,
    calls: usize,
    out: Vec<ParseEvent>,
}

impl OutputParser {
    /// A parser at the start of a model turn.
    pub fn new(config: ParserConfig) -> Self {
        let mode = if config.starts_in_thinking {
            Mode::Thinking
        } else {
            Mode::Text {
                segment_start: true,
            }
        };
        Self {
            config,
            mode,
            pending: String::new(),
            calls: 0,
            out: Vec::new(),
        }
    }

    /// Tool calls seen so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Whether the parser is inside thinking.
    pub fn in_thinking(&self) -> bool {
        matches!(self.mode, Mode::Thinking)
    }

    /// Feeds a chunk; returns the events it completes.
    pub fn push(&mut self, chunk: &str) -> Vec<ParseEvent> {
        self.pending.push_str(chunk);
        self.drain(false);
        std::mem::take(&mut self.out)
    }

    /// Ends the turn: flushes what is held back, closes an unterminated call, emits `EndOfTurn`.
    pub fn finish(&mut self) -> Vec<ParseEvent> {
        self.finish_at(false)
    }

    /// Ends a turn the token limit cut: a call still open is reported as cut off (a
    /// [`ParseEvent::ParseError`]) instead of being repaired into a guess.
    pub fn finish_truncated(&mut self) -> Vec<ParseEvent> {
        self.finish_at(true)
    }

    fn finish_at(&mut self, truncated: bool) -> Vec<ParseEvent> {
        self.drain(true);
        if truncated {
            match std::mem::replace(
                &mut self.mode,
                Mode::Text {
                    segment_start: false,
                },
            ) {
                Mode::Call { index, body, .. } => self.out.push(ParseEvent::ParseError {
                    index,
                    message: CUT_OFF.to_string(),
                    raw: body,
                }),
                Mode::Fenced { buf } | Mode::Braced { buf, .. } => {
                    self.out.push(ParseEvent::TextDelta { text: buf })
                }
                mode @ (Mode::Text { .. } | Mode::Thinking) => self.mode = mode,
            }
        }
        match std::mem::replace(
            &mut self.mode,
            Mode::Text {
                segment_start: false,
            },
        ) {
            Mode::Call { index, body, .. } => self.complete_call(index, body),
            Mode::Fenced { buf } | Mode::Braced { buf, .. } => self.resolve_untagged(buf),
            Mode::Text { .. } | Mode::Thinking => {}
        }
        self.out.push(ParseEvent::EndOfTurn);
        std::mem::take(&mut self.out)
    }

    fn drain(&mut self, last: bool) {
        loop {
            let progressed = match self.mode.clone() {
                Mode::Thinking => self.step_thinking(last),
                Mode::Text { segment_start } => self.step_text(segment_start, last),
                Mode::Call {
                    index,
                    body,
                    in_thinking,
                } => self.step_call(index, body, in_thinking, last),
                Mode::Fenced { buf } => self.step_fenced(buf, last),
                Mode::Braced {
                    buf,
                    depth,
                    in_string,
                    escaped,
                } => self.step_braced(buf, depth, in_string, escaped),
            };
            if !progressed {
                break;
            }
        }
    }

    /// Splits `pending` at the earliest of `tags`: emits what precedes it through `emit` and
    /// returns the tag; without a tag, emits all but a possible tag prefix and returns `None`.
    fn take_until(
        &mut self,
        tags: &[&'static str],
        last: bool,
        emit: &mut dyn FnMut(&mut Self, String),
    ) -> Option<&'static str> {
        let found = tags
            .iter()
            .filter_map(|t| self.pending.find(t).map(|p| (p, *t)))
            .min_by_key(|(p, t)| (*p, usize::MAX - t.len()));
        if let Some((p, tag)) = found {
            let before: String = self.pending[..p].to_string();
            self.pending.drain(..p + tag.len());
            if !before.is_empty() {
                emit(self, before);
            }
            return Some(tag);
        }
        let keep = if last {
            0
        } else {
            held_prefix(&self.pending, tags)
        };
        let cut = self.pending.len() - keep;
        if cut > 0 {
            let text: String = self.pending.drain(..cut).collect();
            emit(self, text);
        }
        None
    }

    fn step_thinking(&mut self, last: bool) -> bool {
        let tags: &[&'static str] = match self.config.calls_in_thinking {
            CallsInThinking::Parse if !self.config.no_calls => &[THINK_CLOSE, CALL_OPEN],
            _ => &[THINK_CLOSE],
        };
        let emit = &mut |p: &mut Self, text: String| p.out.push(ParseEvent::ThinkingDelta { text });
        match self.take_until(tags, last, emit) {
            Some(THINK_CLOSE) => {
                self.mode = Mode::Text {
                    segment_start: true,
                };
                true
            }
            Some(_) => {
                self.start_call(true);
                true
            }
            None => false,
        }
    }

    fn step_text(&mut self, segment_start: bool, last: bool) -> bool {
        if segment_start {
            let trimmed = self.pending.trim_start();
            if trimmed.is_empty() {
                if last {
                    self.pending.clear(); // a whitespace-only segment is layout, not text
                }
                return false; // only whitespace so far: wait to see what the segment starts with
            }
            // Whitespace between blocks (after `</think>`, between calls) is the template's layout.
            if (trimmed.starts_with(CALL_OPEN) && !self.config.no_calls)
                || trimmed.starts_with(THINK_OPEN)
            {
                let ws = self.pending.len() - trimmed.len();
                self.pending.drain(..ws);
                self.mode = Mode::Text {
                    segment_start: false,
                };
                return true;
            }
            if !last
                && [CALL_OPEN, THINK_OPEN]
                    .iter()
                    .any(|t| t.len() > trimmed.len() && t.starts_with(trimmed))
            {
                return false;
            }
            if trimmed.starts_with('{') && self.untagged_calls() {
                let ws = self.pending.len() - trimmed.len();
                let buf: String = self.pending.drain(..ws).collect();
                self.mode = Mode::Braced {
                    buf,
                    depth: 0,
                    in_string: false,
                    escaped: false,
                };
                return true;
            }
            if !last && trimmed.len() < FENCE_JSON.len() && FENCE_JSON.starts_with(trimmed) {
                return false;
            }
            self.mode = Mode::Text {
                segment_start: false,
            };
        }
        let mut tags = vec![THINK_OPEN];
        if !self.config.no_calls {
            tags.push(CALL_OPEN);
        }
        if self.untagged_calls() {
            tags.push(FENCE_JSON);
        }
        let emit = &mut |p: &mut Self, text: String| p.out.push(ParseEvent::TextDelta { text });
        match self.take_until(&tags, last, emit) {
            Some(THINK_OPEN) => {
                self.mode = Mode::Thinking;
                true
            }
            Some(CALL_OPEN) => {
                self.start_call(false);
                true
            }
            Some(_) => {
                self.mode = Mode::Fenced {
                    buf: FENCE_JSON.to_string(),
                };
                true
            }
            None => false,
        }
    }

    fn start_call(&mut self, in_thinking: bool) {
        let index = self.calls;
        self.calls += 1;
        self.out.push(ParseEvent::ToolCallStarted { index });
        self.mode = Mode::Call {
            index,
            body: String::new(),
            in_thinking,
        };
    }

    fn step_call(&mut self, index: usize, mut body: String, in_thinking: bool, last: bool) -> bool {
        let mut added = String::new();
        let emit = &mut |p: &mut Self, text: String| {
            added.push_str(&text);
            p.out.push(ParseEvent::ToolCallDelta { index, text });
        };
        let tag = self.take_until(&[CALL_CLOSE, CALL_OPEN], last, emit);
        body.push_str(&added);
        match tag {
            Some(tag) => {
                self.complete_call(index, body);
                if tag == CALL_OPEN {
                    // A new call opened before this one closed.
                    self.start_call(in_thinking);
                } else {
                    self.mode = if in_thinking {
                        Mode::Thinking
                    } else {
                        Mode::Text {
                            segment_start: true,
                        }
                    };
                }
                true
            }
            None => {
                self.mode = Mode::Call {
                    index,
                    body,
                    in_thinking,
                };
                false
            }
        }
    }

    fn step_fenced(&mut self, mut buf: String, last: bool) -> bool {
        let mut added = String::new();
        let tag = self.take_until(&[FENCE], last, &mut |_, text| added.push_str(&text));
        buf.push_str(&added);
        if tag.is_some() {
            buf.push_str(FENCE);
            self.mode = Mode::Text {
                segment_start: true,
            };
            self.resolve_untagged(buf);
            true
        } else {
            self.mode = Mode::Fenced { buf };
            false
        }
    }

    fn step_braced(
        &mut self,
        mut buf: String,
        mut depth: usize,
        mut in_string: bool,
        mut escaped: bool,
    ) -> bool {
        let mut end = None;
        for (i, c) in self.pending.char_indices() {
            if in_string {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => in_string = true,
                '{' | '[' => depth += 1,
                '}' | ']' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = Some(i + c.len_utf8());
                        break;
                    }
                }
                _ => {}
            }
        }
        match end {
            Some(e) => {
                buf.extend(self.pending.drain(..e));
                self.mode = Mode::Text {
                    segment_start: true,
                };
                self.resolve_untagged(buf);
                true
            }
            None => {
                buf.push_str(&std::mem::take(&mut self.pending));
                self.mode = Mode::Braced {
                    buf,
                    depth,
                    in_string,
                    escaped,
                };
                false
            }
        }
    }

    /// Whether a bare `{"name": ...}` object or a ```` ```json ```` block may be a call.
    fn untagged_calls(&self) -> bool {
        !self.config.no_calls && !self.config.known_tools.is_empty()
    }

    /// A held-back untagged block: a call if it parses as one with a known tool name, else text.
    fn resolve_untagged(&mut self, buf: String) {
        let inner = buf
            .trim()
            .trim_start_matches(FENCE_JSON)
            .trim_end_matches(FENCE)
            .trim();
        if let Ok((name, arguments)) = parse_call(inner)
            && self.config.known_tools.contains(&name)
        {
            let index = self.calls;
            self.calls += 1;
            self.out.push(ParseEvent::ToolCallStarted { index });
            self.out.push(ParseEvent::ToolCallDelta {
                index,
                text: inner.to_string(),
            });
            self.out.push(ParseEvent::ToolCallComplete {
                index,
                name,
                arguments,
                raw: inner.to_string(),
            });
        } else if !buf.is_empty() {
            self.out.push(ParseEvent::TextDelta { text: buf });
        }
    }

    fn complete_call(&mut self, index: usize, body: String) {
        let parsed = if is_xml_call(&body) {
            parse_xml_call(&body, &self.config.parameter_schemas)
        } else {
            parse_call(body.trim())
        };
        match parsed {
            Ok((name, arguments)) => self.out.push(ParseEvent::ToolCallComplete {
                index,
                name,
                arguments,
                raw: body,
            }),
            Err(message) => self.out.push(ParseEvent::ParseError {
                index,
                message,
                raw: body,
            }),
        }
    }
}

/// `{"name": "...", "arguments": {...} | "<json object>"}` -> name and arguments.
pub fn parse_call(text: &str) -> Result<(String, Map<String, Value>), String> {
    let value = parse_lenient(text).map_err(|e| format!("tool call is not JSON: {e}"))?;
    let Value::Object(mut obj) = value else {
        return Err("tool call is not a JSON object".into());
    };
    let name = match obj.remove("name") {
        Some(Value::String(n)) if !n.trim().is_empty() => n,
        _ => return Err("tool call has no \"name\" string".into()),
    };
    let arguments = match obj.remove("arguments").or_else(|| obj.remove("parameters")) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(a)) => a,
        Some(Value::String(s)) => match parse_lenient(&s) {
            Ok(Value::Object(a)) => a,
            _ => {
                return Err(format!(
                    "arguments of `{name}` are a string that is not a JSON object"
                ));
            }
        },
        Some(_) => return Err(format!("arguments of `{name}` are not a JSON object")),
    };
    Ok((name, arguments))
}

/// Length of the longest suffix of `s` that is a proper prefix of one of `tags`.
fn held_prefix(s: &str, tags: &[&str]) -> usize {
    let max = tags
        .iter()
        .map(|t| t.len())
        .max()
        .unwrap_or(0)
        .saturating_sub(1)
        .min(s.len());
    (1..=max)
        .rev()
        .find(|&k| {
            s.is_char_boundary(s.len() - k) && tags.iter().any(|t| t.starts_with(&s[s.len() - k..]))
        })
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "parser_tests.rs"]
mod tests;
