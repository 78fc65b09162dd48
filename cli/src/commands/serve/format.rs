//! The answer formats the three APIs ask for, read into one [`AnswerFormat`].
//!
//! The shapes differ only in nesting: chat completions put the schema under
//! `response_format.json_schema.schema`, the Responses API under `text.format.schema`, and
//! Anthropic's Messages API under `output_config.format.schema`. Whatever the shape, a format
//! Kestrel cannot honour is refused by name, never ignored: a client that asked for JSON and got
//! prose would fail later and far from the cause.

use kestrel::prompts::answer_format::AnswerFormat;
use serde_json::Value;

use super::error::ApiError;

/// Where an API keeps the schema of a `json_schema` format.
#[derive(Clone, Copy)]
pub(super) enum Shape {
    /// `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}` (chat completions).
    Nested,
    /// `{"type": "json_schema", "name", "schema", "strict"}` (Responses, Messages).
    Flat,
}

/// Reads the format at `param` (`None` when absent, null or plain text).
pub(super) fn answer_format(
    value: Option<&Value>,
    param: &str,
    shape: Shape,
) -> Result<Option<AnswerFormat>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let Value::Object(format) = value else {
        return Err(ApiError::invalid(
            param,
            format!("`{param}` must be an object"),
        ));
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(AnswerFormat::JsonObject)),
        Some("json_schema") => {
            let (holder, at) = match shape {
                Shape::Flat => (value, param.to_string()),
                Shape::Nested => {
                    let at = format!("{param}.json_schema");
                    match format.get("json_schema") {
                        Some(inner @ Value::Object(_)) => (inner, at),
                        _ => {
                            return Err(ApiError::invalid(
                                &at,
                                format!("`{at}` must be an object with a `schema`"),
                            ));
                        }
                    }
                }
            };
            match holder.get("schema") {
                None | Some(Value::Null) => Ok(Some(AnswerFormat::JsonObject)),
                Some(schema @ Value::Object(_)) => {
                    Ok(Some(AnswerFormat::JsonSchema(schema.clone())))
                }
                Some(_) => Err(ApiError::invalid(
                    &format!("{at}.schema"),
                    format!("`{at}.schema` must be a JSON schema object"),
                )),
            }
        }
        Some(other) => Err(ApiError::invalid(
            &format!("{param}.type"),
            format!("`{param}.type` `{other}` is not supported (text, json_object or json_schema)"),
        )),
        None => Err(ApiError::invalid(
            &format!("{param}.type"),
            format!("`{param}.type` must be a string"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn each_shape_reads_its_schema() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let nested = json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}});
        let flat = json!({"type": "json_schema", "name": "x", "schema": schema});
        assert_eq!(
            answer_format(Some(&nested), "response_format", Shape::Nested).expect("read"),
            Some(AnswerFormat::JsonSchema(schema.clone()))
        );
        assert_eq!(
            answer_format(Some(&flat), "text.format", Shape::Flat).expect("read"),
            Some(AnswerFormat::JsonSchema(schema))
        );
        assert_eq!(
            answer_format(Some(&json!({"type": "text"})), "f", Shape::Flat).expect("read"),
            None
        );
        assert_eq!(
            answer_format(Some(&json!({"type": "json_object"})), "f", Shape::Flat).expect("read"),
            Some(AnswerFormat::JsonObject)
        );
    }

    #[test]
    fn bad_formats_name_the_field() {
        for (value, param) in [
            (json!({"type": "xml"}), "response_format.type"),
            (
                json!({"type": "json_schema"}),
                "response_format.json_schema",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"schema": 3}}),
                "response_format.json_schema.schema",
            ),
            (json!("json"), "response_format"),
        ] {
            let error =
                answer_format(Some(&value), "response_format", Shape::Nested).expect_err("refused");
            assert_eq!(error.param(), Some(param), "{value}");
        }
    }
}
