//! Turning an MCP tool result into the text a model reads in `<tool_response>`.
//!
//! The model only reads text, so every content block becomes text: text as is, structured content
//! as compact JSON (unless a text block already carries the same JSON, as the spec asks servers
//! to), binary content (images, audio, blobs) as a short placeholder saying what was there, and
//! resource links as their URI. A result longer than the configured limit is cut at a character
//! boundary with a visible marker saying how much was cut, so neither the model nor the user
//! mistakes a cut result for a complete one. A tool that declares an output schema has its
//! structured result checked against it: a mismatch becomes an error result naming the field.
//! This works on the result's JSON form, which keeps it independent of the SDK's content types.

use serde_json::Value;

/// A tool result as text for the model.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedResult {
    /// The text (cut to the limit, with a marker when cut).
    pub text: String,
    /// Whether the tool reported an error (`isError`).
    pub is_error: bool,
    /// How many bytes of text were cut (0 when none).
    pub cut_bytes: usize,
}

/// Renders a `CallToolResult` (as JSON) to at most about `limit` bytes of text.
pub fn render_result(result: &Value, limit: usize) -> RenderedResult {
    let is_error = result
        .get("isError")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let blocks = result
        .get("content")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut parts: Vec<String> = blocks.iter().map(render_block).collect();
    if let Some(structured) = result.get("structuredContent").filter(|v| !v.is_null()) {
        let texts: Vec<&str> = blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect();
        let as_json = texts
            .iter()
            .any(|t| serde_json::from_str::<Value>(t).is_ok_and(|v| &v == structured));
        let already_there = as_json || carries_every_value(&texts.concat(), structured);
        if !already_there {
            parts.push(structured.to_string());
        }
    }
    let text = if parts.is_empty() {
        if is_error {
            "(the tool reported an error without a message)".to_string()
        } else {
            "(the tool returned no content)".to_string()
        }
    } else {
        parts.join("\n")
    };
    let (text, cut_bytes) = cut_to(text, limit);
    RenderedResult {
        text,
        is_error,
        cut_bytes,
    }
}

/// Renders a result whose tool declares `output_schema`: a structured result that does not match
/// it (or is missing) makes an error result, the problem first, naming the field, then what the
/// tool returned, so the model reads both.
pub fn render_checked_result(
    result: &Value,
    output_schema: &Value,
    limit: usize,
) -> RenderedResult {
    let rendered = render_result(result, usize::MAX);
    let (text, is_error) = match check_structured(result, output_schema) {
        Ok(()) => (rendered.text, rendered.is_error),
        Err(problem) => (
            format!(
                "the tool's result does not match its output schema: {problem}\n{}",
                rendered.text
            ),
            true,
        ),
    };
    let (text, cut_bytes) = cut_to(text, limit);
    RenderedResult {
        text,
        is_error,
        cut_bytes,
    }
}

/// Checks a result's `structuredContent` against the tool's output schema (an error result needs
/// none); the error names the field.
pub fn check_structured(result: &Value, output_schema: &Value) -> Result<(), String> {
    if result.get("isError").and_then(Value::as_bool) == Some(true) {
        return Ok(());
    }
    let Some(structured) = result.get("structuredContent").filter(|v| !v.is_null()) else {
        return Err("it declares one but returned no structured content".into());
    };
    let validator = jsonschema::validator_for(output_schema)
        .map_err(|e| format!("the schema itself is not valid: {e}"))?;
    let Some(error) = validator.iter_errors(structured).next() else {
        return Ok(());
    };
    let field = error.instance_path().to_string();
    Err(if field.is_empty() {
        error.to_string()
    } else {
        format!("`{}`: {error}", field.trim_start_matches('/'))
    })
}

/// Whether `text` already shows every leaf value of `structured` (servers often send the same
/// result both ways, not always as the exact JSON the spec suggests).
fn carries_every_value(text: &str, structured: &Value) -> bool {
    fn leaves(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => m.values().for_each(|v| leaves(v, out)),
            Value::Array(a) => a.iter().for_each(|v| leaves(v, out)),
            Value::String(s) => out.push(s.trim().to_string()),
            Value::Number(n) => out.push(n.to_string()),
            Value::Bool(b) => out.push(b.to_string()),
            Value::Null => {}
        }
    }
    let mut values = Vec::new();
    leaves(structured, &mut values);
    !text.is_empty() && !values.is_empty() && values.iter().all(|v| text.contains(v.as_str()))
}

/// Cuts `text` to at most `limit` bytes at a character boundary, adding a marker.
pub fn cut_to(mut text: String, limit: usize) -> (String, usize) {
    if text.len() <= limit {
        return (text, 0);
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let total = text.len();
    let cut = total - end;
    text.truncate(end);
    text.push_str(&format!("\n[output cut: {cut} of {total} bytes not shown]"));
    (text, cut)
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Decoded size of base64 data, for placeholders.
fn base64_bytes(data: &str) -> usize {
    let padding = data.bytes().rev().take_while(|&b| b == b'=').count();
    (data.len() / 4 * 3).saturating_sub(padding)
}

fn render_block(block: &Value) -> String {
    let mime = str_field(block, "mimeType").unwrap_or("unknown type");
    match str_field(block, "type").unwrap_or("") {
        "text" => str_field(block, "text").unwrap_or("").to_string(),
        kind @ ("image" | "audio") => {
            let bytes = str_field(block, "data").map(base64_bytes).unwrap_or(0);
            format!("[{kind}: {mime}, {bytes} bytes, not shown]")
        }
        "resource_link" => {
            let uri = str_field(block, "uri").unwrap_or("?");
            let name = str_field(block, "name").unwrap_or("");
            let mut s = format!("[resource link: {name} <{uri}>");
            if let Some(m) = str_field(block, "mimeType") {
                s.push_str(&format!(" ({m})"));
            }
            if let Some(d) = str_field(block, "description") {
                s.push_str(&format!(": {d}"));
            }
            s.push(']');
            s
        }
        "resource" => {
            let resource = block.get("resource").unwrap_or(&Value::Null);
            let uri = str_field(resource, "uri").unwrap_or("?");
            match (str_field(resource, "text"), str_field(resource, "blob")) {
                (Some(text), _) => format!("[resource <{uri}>]\n{text}"),
                (None, Some(blob)) => format!(
                    "[resource <{uri}>: {}, {} bytes, not shown]",
                    str_field(resource, "mimeType").unwrap_or("unknown type"),
                    base64_bytes(blob)
                ),
                (None, None) => format!("[resource <{uri}>]"),
            }
        }
        other => format!("[content of type {other:?}, not shown]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_content_kind_becomes_text() {
        let r = render_result(
            &json!({"content": [
                {"type": "text", "text": "hello"},
                {"type": "image", "data": "AAAA", "mimeType": "image/png"},
                {"type": "audio", "data": "AAA=", "mimeType": "audio/wav"},
                {"type": "resource_link", "uri": "file:///a.txt", "name": "a.txt", "mimeType": "text/plain"},
                {"type": "resource", "resource": {"uri": "mem://x", "text": "inner"}},
                {"type": "resource", "resource": {"uri": "mem://y", "blob": "AAAAAAAA", "mimeType": "application/zip"}},
                {"type": "hologram"}
            ]}),
            10_000,
        );
        assert_eq!(
            r.text,
            "hello\n[image: image/png, 3 bytes, not shown]\n[audio: audio/wav, 2 bytes, not shown]\n\
             [resource link: a.txt <file:///a.txt> (text/plain)]\n[resource <mem://x>]\ninner\n\
             [resource <mem://y>: application/zip, 6 bytes, not shown]\n[content of type \"hologram\", not shown]"
        );
        assert!(!r.is_error);
    }

    #[test]
    fn structured_content_is_shown_once() {
        let s = json!({"temperature": 22.5, "city": "Oslo"});
        let with_text = render_result(
            &json!({"content": [{"type": "text", "text": s.to_string()}], "structuredContent": s}),
            1000,
        );
        assert_eq!(with_text.text, s.to_string());
        let without_text = render_result(&json!({"content": [], "structuredContent": s}), 1000);
        assert_eq!(without_text.text, s.to_string());
        let same_values = render_result(
            &json!({"content": [{"type": "text", "text": "kestrels\n"}], "structuredContent": {"content": "kestrels\n"}}),
            1000,
        );
        assert_eq!(same_values.text, "kestrels\n");
        let more_values = render_result(
            &json!({"content": [{"type": "text", "text": "Oslo"}], "structuredContent": s}),
            1000,
        );
        assert_eq!(more_values.text, format!("Oslo\n{s}"));
    }

    #[test]
    fn structured_results_are_checked_against_the_output_schema() {
        let schema = json!({"type": "object", "properties": {
            "temperature": {"type": "number"}, "conditions": {"type": "string"}
        }, "required": ["temperature"]});
        let good =
            json!({"content": [], "structuredContent": {"temperature": 3, "conditions": "rain"}});
        let checked = render_checked_result(&good, &schema, 1000);
        assert!(!checked.is_error);
        assert_eq!(checked.text, render_result(&good, 1000).text);

        let wrong = json!({"content": [{"type": "text", "text": "hot"}],
                           "structuredContent": {"temperature": "hot"}});
        let checked = render_checked_result(&wrong, &schema, 1000);
        assert!(checked.is_error);
        assert_eq!(
            checked.text,
            "the tool's result does not match its output schema: `temperature`: \"hot\" is not of type \"number\"\nhot"
        );
        let missing = json!({"content": [{"type": "text", "text": "3 degrees"}]});
        let checked = render_checked_result(&missing, &schema, 1000);
        assert!(
            checked.is_error && checked.text.contains("no structured content"),
            "{}",
            checked.text
        );
        let failed = json!({"content": [{"type": "text", "text": "no sensor"}], "isError": true});
        assert_eq!(check_structured(&failed, &schema), Ok(()));
        let cut = render_checked_result(&wrong, &schema, 20);
        assert!(cut.text.starts_with("the tool's result do") && cut.cut_bytes > 0);
    }

    #[test]
    fn errors_and_empty_results_say_so() {
        let r = render_result(&json!({"content": [], "isError": true}), 100);
        assert!(r.is_error && r.text.contains("error"));
        let r = render_result(&json!({"content": []}), 100);
        assert!(!r.is_error && r.text.contains("no content"));
    }

    #[test]
    fn long_results_are_cut_with_a_marker_at_a_char_boundary() {
        let text = "é".repeat(100); // 200 bytes
        let r = render_result(&json!({"content": [{"type": "text", "text": text}]}), 51);
        assert_eq!(r.cut_bytes, 150);
        assert!(r.text.starts_with(&"é".repeat(25)));
        assert!(
            r.text.ends_with("[output cut: 150 of 200 bytes not shown]"),
            "{}",
            r.text
        );
        let (same, cut) = cut_to("short".into(), 5);
        assert_eq!((same.as_str(), cut), ("short", 0));
    }
}
