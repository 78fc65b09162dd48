//! `kestrel chat` answering a server's elicitation: the request's message and fields are asked on
//! stderr and answered by input lines, like the chat's approvals (so a piped session stays
//! scripted).
//!
//! Each field is asked with its description, its choices and its default (an empty line takes the
//! default, or leaves an optional field out), parsed by its type and checked against its own
//! schema at once, so a mistake is named and asked again rather than sent. The end of input
//! declines.

use std::io::{BufRead, Write};

use futures::future::BoxFuture;
use kestrel::mcp::elicitation::check_field;
use kestrel::mcp::{ElicitationAnswer, ElicitationHandler, ElicitationRequest};
use serde_json::{Map, Value, json};

/// Asks on the terminal.
pub(crate) struct TerminalForm;

impl ElicitationHandler for TerminalForm {
    fn elicit(
        &self,
        server: &str,
        request: ElicitationRequest,
    ) -> BoxFuture<'static, ElicitationAnswer> {
        let server = server.to_string();
        Box::pin(async move {
            let asked = tokio::task::spawn_blocking(move || {
                let stdin = std::io::stdin();
                fill(&server, &request, &mut stdin.lock(), &mut std::io::stderr())
            });
            asked.await.unwrap_or(ElicitationAnswer::Decline)
        })
    }
}

/// Most tries at one field before the whole request is declined.
const TRIES: usize = 3;

/// Asks `request` through `input` and `out`.
pub(crate) fn fill(
    server: &str,
    request: &ElicitationRequest,
    input: &mut impl BufRead,
    out: &mut impl Write,
) -> ElicitationAnswer {
    let opening = match request {
        ElicitationRequest::Form { message, .. } => {
            format!("server `{server}` asks: {message}\nanswer? [y]es, [N]o, [c]ancel the call ")
        }
        ElicitationRequest::Url { message, url } => format!(
            "server `{server}` asks you to open {url}\n{message}\ndone? [y]es, [N]o, [c]ancel the call "
        ),
    };
    match ask(input, out, &opening).as_deref().map(str::trim) {
        Some("y" | "yes") => {}
        Some("c" | "cancel") => return ElicitationAnswer::Cancel,
        _ => return ElicitationAnswer::Decline,
    }
    let mut fields = Map::new();
    for (name, property, required) in request.fields() {
        let mut tries = 0;
        loop {
            let Some(line) = ask(input, out, &field_question(name, property, required)) else {
                return ElicitationAnswer::Decline;
            };
            match field_value(property, required, &line) {
                Ok(Some(value)) => {
                    fields.insert(name.to_string(), value);
                    break;
                }
                Ok(None) => break,
                Err(problem) => {
                    tries += 1;
                    if tries == TRIES {
                        return ElicitationAnswer::Decline;
                    }
                    let _ = writeln!(out, "  {problem}");
                }
            }
        }
    }
    ElicitationAnswer::Accept(fields)
}

/// Writes `question` and reads the answer line; `None` at the end of input.
fn ask(input: &mut impl BufRead, out: &mut impl Write, question: &str) -> Option<String> {
    let _ = write!(out, "{question}");
    let _ = out.flush();
    let mut line = String::new();
    match input.read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim_end_matches(['\n', '\r']).to_string()),
    }
}

/// `  name (description; one of a, b) [default]: `
fn field_question(name: &str, property: &Value, required: bool) -> String {
    let mut notes = Vec::new();
    if let Some(description) = property["description"].as_str() {
        notes.push(description.to_string());
    }
    let choices = choices(property);
    if !choices.is_empty() {
        let names: Vec<&str> = choices.iter().map(|(value, _)| value.as_str()).collect();
        let many = if property["type"] == "array" {
            "any of"
        } else {
            "one of"
        };
        notes.push(format!("{many} {}", names.join(", ")));
    }
    if !required {
        notes.push("optional".into());
    }
    let mut question = format!("  {name}");
    if !notes.is_empty() {
        question.push_str(&format!(" ({})", notes.join("; ")));
    }
    if let Some(default) = property.get("default") {
        question.push_str(&format!(" [{}]", shown(default)));
    }
    question + ": "
}

fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(shown).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// A field's allowed values with their titles: `enum` (with the legacy `enumNames`), `oneOf` /
/// `anyOf` of `const`s, for a string or an array's items.
fn choices(property: &Value) -> Vec<(String, Option<String>)> {
    let of = if property["type"] == "array" {
        &property["items"]
    } else {
        property
    };
    if let Some(values) = of["enum"].as_array() {
        let titles = of["enumNames"].as_array();
        return values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let title = titles.and_then(|t| t.get(i)?.as_str()).map(str::to_owned);
                Some((v.as_str()?.to_string(), title))
            })
            .collect();
    }
    let options = of["oneOf"].as_array().or(of["anyOf"].as_array());
    options
        .into_iter()
        .flatten()
        .filter_map(|o| {
            let title = o["title"].as_str().map(str::to_owned);
            Some((o["const"].as_str()?.to_string(), title))
        })
        .collect()
}

/// Parses one answer by the field's type and checks it against the field's schema; `Ok(None)`
/// leaves an optional field out.
fn field_value(property: &Value, required: bool, line: &str) -> Result<Option<Value>, String> {
    let text = line.trim();
    if text.is_empty() {
        return match property.get("default") {
            Some(default) => Ok(Some(default.clone())),
            None if required => Err("an answer is required".into()),
            None => Ok(None),
        };
    }
    let choices = choices(property);
    let choose = |word: &str| -> Result<Value, String> {
        if choices.is_empty() {
            return Ok(json!(word));
        }
        let by_number = word
            .parse::<usize>()
            .ok()
            .and_then(|n| choices.get(n.checked_sub(1)?));
        let by_name = choices
            .iter()
            .find(|(value, title)| value == word || title.as_deref() == Some(word));
        match by_number.or(by_name) {
            Some((value, _)) => Ok(json!(value)),
            None => Err(format!("`{word}` is not one of the choices")),
        }
    };
    let value = match property["type"].as_str() {
        Some("boolean") => match text.to_lowercase().as_str() {
            "y" | "yes" | "true" => json!(true),
            "n" | "no" | "false" => json!(false),
            _ => return Err(format!("`{text}` is not yes or no")),
        },
        Some("integer") => json!(
            text.parse::<i64>()
                .map_err(|_| format!("`{text}` is not a whole number"))?
        ),
        Some("number") => {
            let n: f64 = text
                .parse()
                .map_err(|_| format!("`{text}` is not a number"))?;
            serde_json::Number::from_f64(n)
                .map(Value::Number)
                .ok_or_else(|| format!("`{text}` is not a finite number"))?
        }
        Some("array") => {
            let words = text.split(',').map(str::trim).filter(|w| !w.is_empty());
            Value::Array(words.map(choose).collect::<Result<_, _>>()?)
        }
        _ => choose(text)?,
    };
    check_field(property, &value)?;
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn booking() -> ElicitationRequest {
        ElicitationRequest::Form {
            message: "Who is coming?".into(),
            schema: json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "description": "Guest name"},
                    "seats": {"type": "integer", "minimum": 1, "maximum": 8, "default": 2},
                    "meal": {"type": "string", "oneOf": [
                        {"const": "veg", "title": "Vegetarian"}, {"const": "fish", "title": "Fish"}]},
                    "vip": {"type": "boolean"},
                    "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}}
                },
                "required": ["name", "seats"]
            }),
            order: ["name", "seats", "meal", "vip", "tags"]
                .map(String::from)
                .to_vec(),
        }
    }

    fn answer(lines: &str) -> (ElicitationAnswer, String) {
        let mut out = Vec::new();
        let answer = fill("desk", &booking(), &mut lines.as_bytes(), &mut out);
        (answer, String::from_utf8(out).expect("utf-8"))
    }

    #[test]
    fn fields_are_asked_in_order_with_defaults_choices_and_retries() {
        let (got, shown) = answer("y\nAda\n12\n\nFish\nyes\nb, a\n");
        let expected =
            json!({"name": "Ada", "seats": 2, "meal": "fish", "vip": true, "tags": ["b", "a"]});
        assert_eq!(
            got,
            ElicitationAnswer::Accept(expected.as_object().cloned().expect("map"))
        );
        assert!(
            shown.starts_with("server `desk` asks: Who is coming?\n"),
            "{shown}"
        );
        assert!(shown.contains("  name (Guest name): "), "{shown}");
        assert!(shown.contains("  seats [2]: "), "{shown}");
        assert!(
            shown.contains("  12 is greater than the maximum of 8"),
            "{shown}"
        );
        assert!(
            shown.contains("  meal (one of veg, fish; optional): "),
            "{shown}"
        );
        assert!(
            shown.contains("  tags (any of a, b; optional): "),
            "{shown}"
        );
    }

    #[test]
    fn optional_fields_can_be_left_out_and_the_opening_can_refuse() {
        let (got, _) = answer("yes\nAda\n3\n\n\n\n");
        let expected = json!({"name": "Ada", "seats": 3});
        assert_eq!(
            got,
            ElicitationAnswer::Accept(expected.as_object().cloned().expect("map"))
        );
        assert_eq!(answer("n\n").0, ElicitationAnswer::Decline);
        assert_eq!(answer("c\n").0, ElicitationAnswer::Cancel);
        assert_eq!(answer("").0, ElicitationAnswer::Decline);
        // Input ends in the middle of the form, or a field is wrong three times.
        assert_eq!(answer("y\nAda\n").0, ElicitationAnswer::Decline);
        assert_eq!(answer("y\n\n\n\n").0, ElicitationAnswer::Decline);
    }

    #[test]
    fn urls_are_shown_and_confirmed() {
        let request = ElicitationRequest::Url {
            message: "Sign in to continue".into(),
            url: "https://example.com/login".into(),
        };
        let mut out = Vec::new();
        let got = fill("desk", &request, &mut "y\n".as_bytes(), &mut out);
        assert_eq!(got, ElicitationAnswer::Accept(Map::new()));
        let shown = String::from_utf8(out).expect("utf-8");
        assert!(
            shown.contains("open https://example.com/login\nSign in to continue"),
            "{shown}"
        );
    }
}
