//! Lenient JSON for model output: what small models write instead of JSON, made into JSON.
//!
//! Repairs, in one pass outside string literals: single-quoted strings become double-quoted,
//! trailing commas before `}`/`]` are dropped, and Python's `True`/`False`/`None` become
//! `true`/`false`/`null`, and containers left open at the end (a call cut off at EOS) are closed.
//! Valid JSON passes through unchanged; anything still invalid after the
//! pass is an error carrying serde_json's message.

use serde_json::Value;

/// Parses `text` as JSON, repairing common model mistakes first if plain parsing fails.
pub fn parse_lenient(text: &str) -> Result<Value, String> {
    match serde_json::from_str(text) {
        Ok(v) => Ok(v),
        Err(first) => {
            let repaired = repair(text);
            serde_json::from_str(&repaired).map_err(|_| first.to_string())
        }
    }
}

/// The repair pass (see the module comment).
pub fn repair(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut open: Vec<char> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' | '[' => {
                open.push(if c == '{' { '}' } else { ']' });
                out.push(c);
                i += 1;
            }
            '}' | ']' => {
                if open.last() == Some(&c) {
                    open.pop();
                }
                out.push(c);
                i += 1;
            }
            '"' => i = copy_string(&chars, i, '"', &mut out),
            '\'' => i = copy_string(&chars, i, '\'', &mut out),
            ',' => {
                let next = chars[i + 1..].iter().find(|c| !c.is_whitespace());
                if !matches!(next, Some('}') | Some(']')) {
                    out.push(',');
                }
                i += 1;
            }
            _ if c.is_ascii_alphabetic() => {
                let end = chars[i..]
                    .iter()
                    .position(|c| !c.is_ascii_alphanumeric() && *c != '_')
                    .map_or(chars.len(), |p| i + p);
                let word: String = chars[i..end].iter().collect();
                out.push_str(match word.as_str() {
                    "True" => "true",
                    "False" => "false",
                    "None" => "null",
                    other => other,
                });
                i = end;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    while let Some(close) = open.pop() {
        out.push(close);
    }
    out
}

/// Copies the string literal starting at `start` (opening `quote`) as a double-quoted JSON string;
/// returns the index after its end (or the input's end if unterminated).
fn copy_string(chars: &[char], start: usize, quote: char, out: &mut String) -> usize {
    out.push('"');
    let mut i = start + 1;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && i + 1 < chars.len() {
            let next = chars[i + 1];
            if quote == '\'' && next == '\'' {
                out.push('\''); // \' is not a JSON escape
            } else {
                out.push('\\');
                out.push(next);
            }
            i += 2;
            continue;
        }
        if c == quote {
            out.push('"');
            return i + 1;
        }
        if c == '"' {
            out.push_str("\\\""); // only reachable inside a single-quoted string
        } else {
            out.push(c);
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn repairs_model_mistakes() {
        assert_eq!(
            parse_lenient(r#"{"a": [1, 2,], }"#),
            Ok(json!({"a": [1, 2]}))
        );
        assert_eq!(
            parse_lenient(r#"{'name': 'it\'s "x"', 'ok': True, 'n': None}"#),
            Ok(json!({"name": "it's \"x\"", "ok": true, "n": null}))
        );
        // Text inside double-quoted strings is never touched.
        assert_eq!(
            parse_lenient(r#"{"s": "a, ] 'b' True"}"#),
            Ok(json!({"s": "a, ] 'b' True"}))
        );
        assert_eq!(
            parse_lenient(r#"{"a": {"b": [1"#),
            Ok(json!({"a": {"b": [1]}}))
        );
        assert!(parse_lenient("{\"a\": ").is_err());
        assert!(parse_lenient("not json").is_err());
    }
}
