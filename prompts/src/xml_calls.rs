//! Qwen3-Coder's tool-call form: XML tags instead of a JSON object.
//!
//! ```text
//! <tool_call>
//! <function=get_weather>
//! <parameter=city>
//! Zürich
//! </parameter>
//! </function>
//! </tool_call>
//! ```
//!
//! A value is written raw, so its type comes from the tool's schema: strings stay as written
//! (newlines and all), numbers, booleans, objects and arrays are parsed. A model's own template
//! says which form it writes ([`CallFormat::of_template`]). The parser takes either form in any
//! turn (the body's first tag tells), so a Coder model that slips into JSON loses nothing; the
//! grammar ([`xml_call_lark`]) keeps a constrained call in the XML form, with the offered names,
//! the required parameters and typed values.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};

use crate::json_repair::parse_lenient;

const FUNCTION_OPEN: &str = "<function=";
const FUNCTION_CLOSE: &str = "</function>";
const PARAMETER_OPEN: &str = "<parameter=";
const PARAMETER_CLOSE: &str = "</parameter>";

/// How a model writes its tool calls inside `<tool_call>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallFormat {
    /// `{"name": ..., "arguments": {...}}` (Qwen2.5, Qwen3).
    #[default]
    Json,
    /// `<function=NAME><parameter=KEY>VALUE</parameter></function>` (Qwen3-Coder).
    Xml,
}

impl CallFormat {
    /// The form a chat template teaches: XML when it renders calls with `<function=` tags.
    pub fn of_template(source: &str) -> Self {
        if source.contains(FUNCTION_OPEN) && source.contains(PARAMETER_OPEN) {
            Self::Xml
        } else {
            Self::Json
        }
    }
}

/// Whether a call body is in the XML form.
pub fn is_xml_call(body: &str) -> bool {
    body.trim_start().starts_with(FUNCTION_OPEN)
}

/// The parameters schema of each offered tool (OpenAI tool objects), by name.
pub fn parameter_schemas(tools: &[Value]) -> BTreeMap<String, Value> {
    tools
        .iter()
        .filter_map(|t| {
            let f = t.get("function").unwrap_or(t);
            let name = f.get("name")?.as_str()?;
            Some((
                name.to_string(),
                f.get("parameters").cloned().unwrap_or(Value::Null),
            ))
        })
        .collect()
}

/// An XML call body -> name and arguments, each value typed by `schemas[name]`'s property. A
/// body the length limit cut (no `</parameter>` or `</function>` at the end) keeps what it has.
pub fn parse_xml_call(
    body: &str,
    schemas: &BTreeMap<String, Value>,
) -> Result<(String, Map<String, Value>), String> {
    let rest = body
        .trim_start()
        .strip_prefix(FUNCTION_OPEN)
        .ok_or("tool call does not start with `<function=`")?;
    let (name, mut rest) = rest
        .split_once('>')
        .ok_or("tool call's `<function=` tag is not closed")?;
    let name = name.trim();
    if name.is_empty() {
        return Err("tool call has no function name".into());
    }
    let properties = schemas
        .get(name)
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object);
    let mut arguments = Map::new();
    while let Some(at) = rest.find(PARAMETER_OPEN) {
        let after = &rest[at + PARAMETER_OPEN.len()..];
        let (key, value_and_rest) = after
            .split_once('>')
            .ok_or_else(|| format!("a `<parameter=` tag of `{name}` is not closed"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("a parameter of `{name}` has no name"));
        }
        // The value runs to its closer, or to the next tag of the call when the model forgot it.
        let end = [PARAMETER_CLOSE, PARAMETER_OPEN, FUNCTION_CLOSE]
            .iter()
            .filter_map(|tag| value_and_rest.find(tag))
            .min()
            .unwrap_or(value_and_rest.len());
        let raw = strip_layout(&value_and_rest[..end]);
        let schema = properties.and_then(|p| p.get(key));
        arguments.insert(key.to_string(), typed_value(raw, schema));
        rest = &value_and_rest[end..];
        rest = rest.strip_prefix(PARAMETER_CLOSE).unwrap_or(rest);
    }
    Ok((name.to_string(), arguments))
}

/// The value without the one newline the form puts on each side of it.
fn strip_layout(raw: &str) -> &str {
    let raw = raw.strip_prefix('\n').unwrap_or(raw);
    raw.strip_suffix('\n').unwrap_or(raw)
}

/// The JSON types `schema` admits, in the order they are tried (`anyOf` and type lists
/// included); empty when it says nothing.
fn schema_types(schema: Option<&Value>) -> Vec<String> {
    let Some(schema) = schema else {
        return Vec::new();
    };
    let mut types = Vec::new();
    match schema.get("type") {
        Some(Value::String(t)) => types.push(t.clone()),
        Some(Value::Array(list)) => {
            types.extend(list.iter().filter_map(Value::as_str).map(str::to_string))
        }
        _ => {}
    }
    if let Some(Value::Array(values)) = schema.get("enum") {
        for v in values {
            let t = match v {
                Value::String(_) => "string",
                Value::Number(_) => "number",
                Value::Bool(_) => "boolean",
                _ => continue,
            };
            types.push(t.to_string());
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(options)) = schema.get(key) {
            for option in options {
                types.extend(schema_types(Some(option)));
            }
        }
    }
    types
}

/// `raw` as the schema's type: a string as written, other types parsed (the first type that
/// parses wins, a string last); what parses as none of them stays a string for the schema check
/// to report.
fn typed_value(raw: &str, schema: Option<&Value>) -> Value {
    let types = schema_types(schema);
    let text = raw.trim();
    for t in types.iter().filter(|t| t.as_str() != "string") {
        let parsed = match t.as_str() {
            "integer" => text.parse::<i64>().ok().map(Value::from),
            "number" => text.parse::<i64>().ok().map(Value::from).or_else(|| {
                text.parse::<f64>()
                    .ok()
                    .and_then(Number::from_f64)
                    .map(Value::Number)
            }),
            "boolean" => match text.to_ascii_lowercase().as_str() {
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                _ => None,
            },
            "null" => text.eq_ignore_ascii_case("null").then_some(Value::Null),
            "object" => parse_lenient(text).ok().filter(Value::is_object),
            "array" => parse_lenient(text).ok().filter(Value::is_array),
            _ => None,
        };
        if let Some(value) = parsed {
            return value;
        }
    }
    Value::String(raw.to_string())
}

/// The lark grammar (llguidance) of one call body in the XML form, from the newline after
/// `<tool_call>` to `</function>`: an offered name (`only`, when `tool_choice` names one), then
/// the tool's required parameters and, optionally, its other declared ones, in the schema's
/// order, each value of its schema's type.
pub fn xml_call_lark(tools: &[Value], only: Option<&str>) -> Option<String> {
    let mut rules = Vec::new();
    let mut calls = Vec::new();
    for (i, (name, params)) in parameter_schemas(tools).iter().enumerate() {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let mut body = vec![lark_string(&format!("{FUNCTION_OPEN}{name}>\n"))];
        for (j, (key, schema, required)) in xml_parameters(params).into_iter().enumerate() {
            let rule = format!("f{i}_p{j}");
            let value = lark_value(&format!("f{i}_v{j}"), schema, &mut rules);
            rules.push(format!(
                "{rule}: {} {value}",
                lark_string(&format!("{PARAMETER_OPEN}{key}>\n"))
            ));
            body.push(format!("{rule}{}", if required { "" } else { "?" }));
        }
        body.push(lark_string(FUNCTION_CLOSE));
        rules.push(format!("f{i}: {}", body.join(" ")));
        calls.push(format!("f{i}"));
    }
    if calls.is_empty() {
        return None;
    }
    let mut lark = format!("start: \"\\n\" call\ncall: {}\n", calls.join(" | "));
    for rule in rules {
        lark.push_str(&rule);
        lark.push('\n');
    }
    Some(lark)
}

/// The grammar of one value and its closer; a rule of its own is added to `rules` where the
/// value needs one. Text (a string, or a type the form cannot tell apart from one) runs up to
/// the closer, within `maxLength`; an enum of strings is one of them; any other type is written
/// as its JSON, held to the schema by llguidance's JSON grammar (ranges included).
fn lark_value(rule: &str, schema: &Value, rules: &mut Vec<String>) -> String {
    let close = lark_string(&format!("\n{PARAMETER_CLOSE}\n"));
    match xml_value(schema) {
        XmlValue::Choice(strings) => {
            let options: Vec<String> = strings.iter().map(|s| lark_string(s)).collect();
            format!("({}) {close}", options.join(" | "))
        }
        XmlValue::Text { max_length } => {
            let length = max_length.map_or("*".into(), |max| format!("{{0,{max}}}"));
            rules.push(format!("{rule}[suffix={close}]: /(.|\\n){length}/"));
            rule.to_string()
        }
        XmlValue::Json => {
            let mut schema = schema.clone();
            if let Some(s) = schema.as_object_mut() {
                s.insert(
                    "x-guidance".into(),
                    serde_json::json!({"whitespace_flexible": false, "item_separator": ", ",
                        "key_separator": ": "}),
                );
            }
            format!("%json {schema} {close}")
        }
    }
}

/// How the XML form writes one parameter's value, for a grammar of it.
pub(crate) enum XmlValue<'a> {
    /// Raw text up to the closer (a string, or a type the form cannot tell apart from one), of
    /// at most this many characters.
    Text {
        /// The schema's `maxLength`.
        max_length: Option<u64>,
    },
    /// One of these strings (an enum of strings), written raw.
    Choice(Vec<&'a str>),
    /// The value's JSON, held to its schema.
    Json,
}

/// How a value of `schema` is written in the XML form.
pub(crate) fn xml_value(schema: &Value) -> XmlValue<'_> {
    let strings: Option<Vec<&str>> = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|values| values.iter().map(Value::as_str).collect());
    if let Some(strings) = strings.filter(|s| !s.is_empty()) {
        return XmlValue::Choice(strings);
    }
    let types = schema_types(Some(schema));
    if types.is_empty() || types.iter().any(|t| t == "string") {
        return XmlValue::Text {
            max_length: schema.get("maxLength").and_then(Value::as_u64),
        };
    }
    XmlValue::Json
}

/// A tool's declared parameters (`params` is its parameters schema) in the schema's order, each
/// with its schema and whether it is required.
pub(crate) fn xml_parameters(params: &Value) -> Vec<(&str, &Value, bool)> {
    let required: Vec<&str> = params
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    params
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(key, schema)| (key.as_str(), schema, required.contains(&key.as_str())))
        .collect()
}

/// `text` as a lark string literal.
fn lark_string(text: &str) -> String {
    // JSON's escapes are lark's for the characters names and tags hold.
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
#[path = "xml_calls_tests.rs"]
mod tests;
