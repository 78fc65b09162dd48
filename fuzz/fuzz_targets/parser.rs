//! Fuzzes the output parser: arbitrary model output, cut into arbitrary chunks, must never panic
//! and must give the same events (deltas merged) as the same output in one piece.
#![no_main]

// The same source files kestrel-prompts compiles, at the same module paths.
#[path = "../../prompts/src/json_repair.rs"]
mod json_repair;
// Accessors the target has no use for are not dead code in the crate.
#[allow(dead_code)]
#[path = "../../prompts/src/parser.rs"]
mod parser;
#[allow(dead_code)]
#[path = "../../prompts/src/xml_calls.rs"]
mod xml_calls;

use parser::{CallsInThinking, OutputParser, ParseEvent, ParserConfig};
use libfuzzer_sys::fuzz_target;

fn events(settings: u8, chunks: &[&str]) -> Vec<ParseEvent> {
    let config = ParserConfig {
        starts_in_thinking: settings & 1 != 0,
        calls_in_thinking: if settings & 2 != 0 { CallsInThinking::Parse } else { CallsInThinking::Ignore },
        known_tools: vec!["get_weather".into(), "x".into()],
        no_calls: settings & 4 != 0,
        // Qwen3-Coder's XML calls type their values by these.
        parameter_schemas: xml_calls::parameter_schemas(&[serde_json::json!({"type": "function",
            "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
                "city": {"type": "string"}, "days": {"type": "integer"},
                "opts": {"type": "object"}}}}})]),
    };
    let mut parser = OutputParser::new(config);
    let mut out = Vec::new();
    for c in chunks {
        out.extend(parser.push(c));
    }
    // A turn the token limit cut ends differently (a call still open is reported as cut).
    out.extend(if settings & 8 != 0 { parser.finish_truncated() } else { parser.finish() });
    let mut merged: Vec<ParseEvent> = Vec::new();
    for e in out {
        match (merged.last_mut(), e) {
            (Some(ParseEvent::ThinkingDelta { text: a }), ParseEvent::ThinkingDelta { text: b }) => a.push_str(&b),
            (Some(ParseEvent::TextDelta { text: a }), ParseEvent::TextDelta { text: b }) => a.push_str(&b),
            (Some(ParseEvent::ToolCallDelta { index: i, text: a }), ParseEvent::ToolCallDelta { index: j, text: b }) if *i == j => {
                a.push_str(&b)
            }
            (_, e) => merged.push(e),
        }
    }
    merged
}

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the settings, the next four the cut points; the rest is the output.
    if data.len() < 5 {
        return;
    }
    let settings = data[0];
    let Ok(text) = std::str::from_utf8(&data[5..]) else { return };
    let mut cuts: Vec<usize> = data[1..5].iter().map(|b| *b as usize % (text.len() + 1)).filter(|&i| text.is_char_boundary(i)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut last = 0;
    for c in cuts {
        chunks.push(&text[last..c]);
        last = c;
    }
    chunks.push(&text[last..]);
    assert_eq!(events(settings, &chunks), events(settings, &[text]));
});
