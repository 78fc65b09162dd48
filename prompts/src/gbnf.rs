//! Tool calls as a GBNF grammar, for engines that constrain with llama.cpp's grammars
//! (`llama-server`) instead of running Kestrel's own constraint token by token.
//!
//! The grammar is of the output from `<tool_call>` on: one or more call blocks in Qwen's layout
//! (`<tool_call>\n{"name": NAME, "arguments": ARGS}\n</tool_call>`, separated by newlines), so an
//! engine applies it lazily, triggered by the `<tool_call>` token, and the turn ends after its
//! calls. The tags are matched as Qwen's special tokens (`<tool_call>` in GBNF), never as text
//! spelled out in pieces. Arguments follow the tool's schema where GBNF can say it simply: types, `enum`, `const`,
//! `anyOf`/`oneOf`, nested objects (declared properties in declared order, required ones present,
//! nothing undeclared unless the schema allows it) and arrays. What it cannot (`pattern`, lengths,
//! bounds, `$ref`, `allOf`) is left to any JSON value of the right type, and the agent validates
//! every call's arguments against the full schema anyway. Separators are Qwen's (`", "`, `": "`),
//! as the template writes calls. Calls in Qwen3-Coder's XML form (`<function=NAME>` and one
//! `<parameter=KEY>` block per argument) get the same treatment in that form: string values are
//! any text without `\n</parameter>`, enums their raw strings, other types their JSON.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use crate::answer_format::AnswerFormatHook;
use crate::constrain::{ConstraintError, ToolCallHook, strict_arguments};
use crate::xml_calls::{CallFormat, XmlValue, xml_parameters, xml_value};

/// `text` as a GBNF string literal.
fn text_literal(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Rules shared by every grammar: JSON's scalars and any value.
const BASE_RULES: &str = r#"value ::= object | array | string | number | boolean | null
object ::= "{" ( string ": " value ( ", " string ": " value )* )? "}"
array ::= "[" ( value ( ", " value )* )? "]"
string ::= "\"" char* "\""
char ::= [^"\\\x7F\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )
number ::= integer ( "." [0-9]+ )? ( [eE] [-+]? [0-9]+ )?
integer ::= "-"? ( "0" | [1-9] [0-9]{0,15} )
boolean ::= "true" | "false"
null ::= "null"
"#;

/// Text of an XML call's string value: anything without `\n</parameter>` (each newline run is
/// followed by a character that leaves that closer, or ends the value part-way into it).
const XML_TEXT_RULES: &str = r#"xml-text ::= xml-chunk* xml-end?
xml-chunk ::= [^\n] | "\n"+ xml-off
xml-off ::= [^<\n] | "<" ( [^/\n] | "/" ( [^p\n] | "p" ( [^a\n] | "a" ( [^r\n] | "r" ( [^a\n] | "a" ( [^m\n] | "m" ( [^e\n] | "e" ( [^t\n] | "t" ( [^e\n] | "e" ( [^r\n] | "r" [^>\n] ) ) ) ) ) ) ) ) ) )
xml-end ::= "\n"+ ( "<" ( "/" ( "p" ( "a" ( "r" ( "a" ( "m" ( "e" ( "t" ( "e" ( "r" )? )? )? )? )? )? )? )? )? )? )?
"#;

/// A turn's constraint in the form of an engine that applies llama.cpp's grammars, for engines
/// that cannot run Kestrel's hooks token by token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GbnfConstraint {
    /// No call may be made (`tool_choice: none`, or no tools): `<tool_call>` must not be sampled.
    NoCalls,
    /// Calls are free to start; from `<tool_call>` on (or from a call the answer starts without
    /// tags, [`UNTAGGED_TRIGGER`]), the text follows this grammar.
    Lazy(String),
    /// As [`GbnfConstraint::Lazy`], from `<tool_call>` only (a call form with no untagged
    /// variant: Qwen3-Coder's XML).
    LazyAtTag(String),
    /// The whole generation follows this grammar (the answer is the calls, or a format).
    Whole(String),
    /// The thinking is free; from `</think>` on, the text follows `lazy` (whose first token is
    /// `</think>`); once the thinking is closed, what follows follows `after`.
    AfterThinking {
        /// The grammar from `</think>` on.
        lazy: String,
        /// The same grammar after `</think>`.
        after: String,
    },
}

/// The tool-call constraint of `hook` as a grammar of its call blocks. What a grammar cannot say
/// (that a `required` call after thinking must come at all) is left to the agent's checks after
/// the fact.
pub fn tool_call_constraint(hook: &ToolCallHook) -> Result<GbnfConstraint, ConstraintError> {
    let Some((tools, only)) = hook.calls_offered() else {
        return Ok(GbnfConstraint::NoCalls);
    };
    if hook.call_format() == CallFormat::Xml {
        let calls = Calls {
            tools,
            only,
            format: CallFormat::Xml,
        };
        let grammar = output_grammar(Some(calls), None, GrammarStart::Output)?;
        return Ok(if hook.calls_first() {
            GbnfConstraint::Whole(grammar)
        } else {
            GbnfConstraint::LazyAtTag(grammar)
        });
    }
    Ok(if hook.calls_first() {
        GbnfConstraint::Whole(tool_calls_grammar(tools, only, false)?)
    } else {
        GbnfConstraint::Lazy(tool_calls_grammar(tools, only, true)?)
    })
}

/// The answer format of `hook` as a grammar over the turn's output, with the calls of
/// `tool_calls` as the other way to answer when tools may be called: from the first token, or
/// from `</think>` when the turn may think first (a turn that could think but does not is then
/// left unconstrained).
pub fn answer_constraint(
    hook: &AnswerFormatHook,
    tool_calls: Option<&ToolCallHook>,
) -> Result<GbnfConstraint, ConstraintError> {
    let schema = hook.format().schema()?;
    let calls = tool_calls
        .filter(|_| hook.calls_allowed())
        .and_then(|h| h.calls_offered())
        .zip(tool_calls.map(ToolCallHook::call_format))
        .map(|((tools, only), format)| Calls {
            tools,
            only,
            format,
        });
    Ok(if hook.may_think_first() {
        GbnfConstraint::AfterThinking {
            lazy: output_grammar(calls, Some(&schema), GrammarStart::AfterThinking)?,
            after: output_grammar(calls, Some(&schema), GrammarStart::Output)?,
        }
    } else {
        GbnfConstraint::Whole(output_grammar(calls, Some(&schema), GrammarStart::Output)?)
    })
}

/// Where a grammar starts applying, which decides its first rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrammarStart {
    /// At `<tool_call>` (or at an untagged call, [`UNTAGGED_TRIGGER`]): the calls alone.
    CallTag,
    /// At the first generated token: the answer, or the calls.
    Output,
    /// At `</think>`: the end of the thinking, then the answer or the calls.
    AfterThinking,
}

/// The calls a grammar admits: `tools` (OpenAI tool objects), only the one named `only` when
/// given.
#[derive(Debug, Clone, Copy)]
pub struct Calls<'a> {
    /// The offered tools.
    pub tools: &'a [Value],
    /// The tool `tool_choice` names.
    pub only: Option<&'a str>,
    /// The form the model writes calls in.
    pub format: CallFormat,
}

/// The grammar of the call blocks a turn may write from `<tool_call>` on. With `untagged`, it
/// also admits one call written without tags (`{"name": ...}` alone, as models sometimes
/// answer), for an engine that triggers it on that text too ([`UNTAGGED_TRIGGER`]).
pub fn tool_calls_grammar(
    tools: &[Value],
    only: Option<&str>,
    untagged: bool,
) -> Result<String, ConstraintError> {
    let start = if untagged {
        GrammarStart::CallTag
    } else {
        GrammarStart::Output
    };
    let calls = Calls {
        tools,
        only,
        format: CallFormat::Json,
    };
    output_grammar(Some(calls), None, start)
}

/// The grammar of a turn's output from `start` on: the calls (when `calls` is given) or an
/// answer matching the JSON schema `answer` (when given). A turn ends after its calls, or its
/// answer, with at most a newline.
pub fn output_grammar(
    calls: Option<Calls<'_>>,
    answer: Option<&Value>,
    start: GrammarStart,
) -> Result<String, ConstraintError> {
    let mut grammar = Grammar::default();
    let mut alternatives = Vec::new();
    let mut rules = String::new();
    if let Some(calls) = calls {
        let call = grammar.calls(calls)?;
        rules.push_str(
            "blocks ::= block ( \"\\n\" block )* \"\\n\"?\nblock ::= <tool_call> \"\\n\" call \"\\n\" </tool_call>\n",
        );
        rules.push_str(&format!("call ::= {call}\n"));
        alternatives.push("blocks");
    }
    if let Some(schema) = answer {
        let value = grammar.schema(schema, "answer")?;
        rules.push_str(&format!("answer ::= {value} \"\\n\"?\n"));
        alternatives.push("answer");
    }
    if alternatives.is_empty() {
        return Err(ConstraintError::Grammar(
            "a grammar needs calls or an answer".into(),
        ));
    }
    let either = alternatives.join(" | ");
    let root = match start {
        GrammarStart::CallTag if calls.is_some() => "root ::= blocks | call\n".to_string(),
        GrammarStart::CallTag => {
            return Err(ConstraintError::Grammar(
                "a grammar triggered by calls needs calls".into(),
            ));
        }
        // An answer may follow some whitespace (bounded: a model must not pad its answer to the
        // turn's limit); calls start at once.
        GrammarStart::Output => {
            let alternatives: Vec<&str> = alternatives
                .iter()
                .map(|a| if *a == "answer" { "lead answer" } else { a })
                .collect();
            format!("root ::= {}\n", alternatives.join(" | "))
        }
        GrammarStart::AfterThinking => format!("root ::= </think> lead ( {either} )\n"),
    };
    let mut out = root;
    out.push_str(&rules);
    out.push_str("lead ::= [ \\t\\n]{0,8}\n");
    for (name, body) in &grammar.rules {
        out.push_str(&format!("{name} ::= {body}\n"));
    }
    out.push_str(BASE_RULES);
    if calls.is_some_and(|c| c.format == CallFormat::Xml) {
        out.push_str(XML_TEXT_RULES);
    }
    Ok(out)
}

/// A pattern (llama.cpp's whole-output trigger, from its group on) for a call written without
/// tags at the start of the answer, in the layout the grammar expects.
pub const UNTAGGED_TRIGGER: &str = r#"^\s*(\{"name": ")[\s\S]*$"#;

#[derive(Default)]
struct Grammar {
    rules: Vec<(String, String)>,
    names: HashSet<String>,
}

/// Deepest schema nesting followed; below it, any value.
const MAX_DEPTH: usize = 16;

impl Grammar {
    /// The alternatives of one call object per offered tool.
    fn calls(&mut self, calls: Calls<'_>) -> Result<String, ConstraintError> {
        let mut objects = Vec::new();
        for tool in calls.tools {
            let f = tool.get("function").unwrap_or(tool);
            let Some(name) = f.get("name").and_then(Value::as_str) else {
                continue;
            };
            if calls.only.is_some_and(|o| o != name) {
                continue;
            }
            let params =
                strict_arguments(f.get("parameters").unwrap_or(&json!({"type": "object"})));
            if calls.format == CallFormat::Xml {
                let call = self.xml_call(name, &params, objects.len())?;
                objects.push(call);
                continue;
            }
            let arguments = self.schema(&params, &format!("{}-args", objects.len()))?;
            objects.push(format!(
                "\"{{\\\"name\\\": \" {} \", \\\"arguments\\\": \" {arguments} \"}}\"",
                literal(&Value::String(name.to_string()))
            ));
        }
        if objects.is_empty() {
            return Err(match calls.only {
                Some(name) => ConstraintError::UnknownTool(name.to_string()),
                None => ConstraintError::Grammar("no tool has a name".into()),
            });
        }
        Ok(objects.join(" | "))
    }

    /// One call in Qwen3-Coder's XML form: the name, then a `<parameter=KEY>` block per declared
    /// property in the schema's order (required ones present, the others optional), each value
    /// raw text, an enum's raw string, or another type's JSON.
    fn xml_call(
        &mut self,
        name: &str,
        params: &Value,
        index: usize,
    ) -> Result<String, ConstraintError> {
        let mut parts = vec![text_literal(&format!("<function={name}>\n"))];
        for (key, schema, required) in xml_parameters(params) {
            let hint = format!("{index}-{key}");
            let value = match xml_value(schema) {
                XmlValue::Choice(strings) => {
                    let options: Vec<String> = strings.iter().map(|s| text_literal(s)).collect();
                    format!("( {} )", options.join(" | "))
                }
                // GBNF has no length bound here; the agent checks `maxLength` after the fact.
                XmlValue::Text { .. } => "xml-text".into(),
                XmlValue::Json => self.schema(schema, &hint)?,
            };
            let block = self.rule(
                &format!("{hint}-param"),
                format!(
                    "{} {value} \"\\n</parameter>\\n\"",
                    text_literal(&format!("<parameter={key}>\n"))
                ),
            );
            parts.push(format!("{block}{}", if required { "" } else { "?" }));
        }
        parts.push(text_literal("</function>"));
        Ok(parts.join(" "))
    }

    /// A new rule named after `hint`; returns its name.
    fn rule(&mut self, hint: &str, body: String) -> String {
        let base: String = hint
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let mut name = format!("r-{base}");
        let mut n = 1;
        while !self.names.insert(name.clone()) {
            n += 1;
            name = format!("r-{base}-{n}");
        }
        self.rules.push((name.clone(), body));
        name
    }

    /// An expression for the values `schema` admits.
    fn schema(&mut self, schema: &Value, hint: &str) -> Result<String, ConstraintError> {
        self.schema_at(schema, hint, 0)
    }

    fn schema_at(
        &mut self,
        schema: &Value,
        hint: &str,
        depth: usize,
    ) -> Result<String, ConstraintError> {
        let Some(map) = schema.as_object() else {
            // `true`, or anything that is not a schema object: any value (`false` admits none,
            // which no call could satisfy).
            return match schema {
                Value::Bool(false) => Err(ConstraintError::Grammar(format!(
                    "`{hint}`: a `false` schema admits no value"
                ))),
                _ => Ok("value".into()),
            };
        };
        if depth > MAX_DEPTH {
            return Ok("value".into());
        }
        if let Some(value) = map.get("const") {
            return Ok(literal(value));
        }
        if let Some(values) = map.get("enum").and_then(Value::as_array) {
            if values.is_empty() {
                return Err(ConstraintError::Grammar(format!(
                    "`{hint}`: an empty `enum` admits no value"
                )));
            }
            let alternatives: Vec<String> = values.iter().map(literal).collect();
            return Ok(format!("( {} )", alternatives.join(" | ")));
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(options) = map.get(key).and_then(Value::as_array)
                && !options.is_empty()
            {
                let mut alternatives = Vec::new();
                for (i, option) in options.iter().enumerate() {
                    alternatives.push(self.schema_at(option, &format!("{hint}-{i}"), depth + 1)?);
                }
                return Ok(format!("( {} )", alternatives.join(" | ")));
            }
        }
        let types: Vec<&str> = match map.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ if map.contains_key("properties") => vec!["object"],
            _ if map.contains_key("items") => vec!["array"],
            _ => return Ok("value".into()),
        };
        let mut alternatives = Vec::new();
        for t in types {
            alternatives.push(match t {
                "string" => "string".to_string(),
                "number" => "number".to_string(),
                "integer" => "integer".to_string(),
                "boolean" => "boolean".to_string(),
                "null" => "null".to_string(),
                "array" => self.array(map, hint, depth)?,
                "object" => self.object(map, hint, depth)?,
                other => {
                    return Err(ConstraintError::Grammar(format!(
                        "`{hint}`: unknown JSON type `{other}`"
                    )));
                }
            });
        }
        Ok(match alternatives.len() {
            0 => "value".into(),
            1 => alternatives.remove(0),
            _ => format!("( {} )", alternatives.join(" | ")),
        })
    }

    fn array(
        &mut self,
        map: &Map<String, Value>,
        hint: &str,
        depth: usize,
    ) -> Result<String, ConstraintError> {
        let item = match map.get("items") {
            Some(items) => self.schema_at(items, &format!("{hint}-item"), depth + 1)?,
            None => "value".into(),
        };
        Ok(self.rule(hint, format!("\"[\" ( {item} ( \", \" {item} )* )? \"]\"")))
    }

    fn object(
        &mut self,
        map: &Map<String, Value>,
        hint: &str,
        depth: usize,
    ) -> Result<String, ConstraintError> {
        let properties = match map.get("properties").and_then(Value::as_object) {
            Some(p) if !p.is_empty() => p,
            // No declared properties: any object.
            _ => return Ok("object".into()),
        };
        // Undeclared properties, when the schema admits them, may follow the declared ones.
        let open = !matches!(map.get("additionalProperties"), Some(Value::Bool(false)));
        let required: HashSet<&str> = map
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut pairs = Vec::new();
        for (key, schema) in properties {
            let value = self.schema_at(schema, &format!("{hint}-{key}"), depth + 1)?;
            let pair = format!("{} \": \" {value}", literal(&Value::String(key.clone())));
            pairs.push((pair, required.contains(key.as_str())));
        }
        // `rest[i]`: properties i.. after at least one was written (each present one after a
        // comma); the object is then any choice of a first property j with every property before
        // it optional, followed by `rest[j + 1]`.
        let mut rest = vec![String::new(); pairs.len() + 1];
        for i in (0..pairs.len()).rev() {
            let (pair, is_required) = &pairs[i];
            let this = if *is_required {
                format!("\", \" {pair}")
            } else {
                format!("( \", \" {pair} )?")
            };
            rest[i] = format!("{this} {}", rest[i + 1]).trim().to_string();
        }
        let mut firsts = Vec::new();
        for (j, (pair, is_required)) in pairs.iter().enumerate() {
            firsts.push(format!("{pair} {}", rest[j + 1]).trim().to_string());
            if *is_required {
                break;
            }
        }
        let all_optional = pairs.iter().all(|(_, r)| !r);
        let body = if open {
            let declared = format!(
                "\"{{\" ( {} ) ( \", \" string \": \" value )* \"}}\"",
                firsts.join(" | ")
            );
            // With nothing required, the object may also hold undeclared properties alone.
            if all_optional {
                format!("{declared} | object")
            } else {
                declared
            }
        } else {
            if all_optional {
                firsts.push(String::new());
            }
            format!("\"{{\" ( {} ) \"}}\"", firsts.join(" | "))
        };
        Ok(self.rule(hint, body))
    }
}

/// A GBNF literal matching `value` written as compact JSON with Qwen's separators.
fn literal(value: &Value) -> String {
    text_literal(&qwen_json(value))
}

/// `value` as JSON with `", "` and `": "` between items, as Qwen's template writes calls.
fn qwen_json(value: &Value) -> String {
    match value {
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(qwen_json).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), qwen_json(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        scalar => scalar.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str, parameters: Value) -> Value {
        json!({"type": "function", "function": {"name": name, "parameters": parameters}})
    }

    #[test]
    fn xml_calls_get_their_own_form_with_raw_text_and_typed_values() {
        let tools = [tool(
            "write",
            json!({"type": "object", "properties": {
                "path": {"type": "string"},
                "mode": {"enum": ["a", "w\"x"]},
                "size": {"type": "integer"}
            }, "required": ["path"]}),
        )];
        let calls = Calls {
            tools: &tools,
            only: None,
            format: CallFormat::Xml,
        };
        let grammar = output_grammar(Some(calls), None, GrammarStart::Output).expect("a grammar");
        assert!(grammar.starts_with("root ::= blocks\n"), "{grammar}");
        assert!(
            grammar.contains(
                r#"call ::= "<function=write>\n" r-0-path-param r-0-mode-param? r-0-size-param? "</function>""#
            ),
            "{grammar}"
        );
        assert!(
            grammar
                .contains(r#"r-0-path-param ::= "<parameter=path>\n" xml-text "\n</parameter>\n""#)
        );
        assert!(
            grammar.contains(r#"( "a" | "w\"x" ) "\n</parameter>\n""#),
            "{grammar}"
        );
        assert!(grammar.contains(r#""<parameter=size>\n" integer "\n</parameter>\n""#));
        assert!(grammar.contains("xml-text ::= xml-chunk* xml-end?"));
        // JSON calls do not carry the XML rules.
        let json = tool_calls_grammar(&tools, None, false).expect("a grammar");
        assert!(!json.contains("xml-text"));
    }

    #[test]
    fn a_call_grammar_names_each_tool_and_its_arguments_in_order() {
        let tools = [
            tool(
                "get_time",
                json!({"type": "object", "properties": {
                    "timezone": {"type": "string"},
                    "format": {"enum": ["iso", "unix"]},
                    "count": {"type": "integer"}
                }, "required": ["timezone"]}),
            ),
            tool("ping", json!({"type": "object"})),
        ];
        let grammar = tool_calls_grammar(&tools, None, false).expect("a grammar");
        assert!(grammar.starts_with(
            "root ::= blocks\nblocks ::= block ( \"\\n\" block )* \"\\n\"?\nblock ::= <tool_call> \"\\n\" call \"\\n\" </tool_call>\n"
        ));
        let untagged = tool_calls_grammar(&tools, None, true).expect("a grammar");
        assert!(untagged.starts_with("root ::= blocks | call\n"));
        assert!(
            grammar.contains(r#""{\"name\": " "\"get_time\"" ", \"arguments\": " r-0-args "}""#)
        );
        assert!(grammar.contains(r#""{\"name\": " "\"ping\"" ", \"arguments\": " object "}""#));
        // Required `timezone` first, then the optional ones, each after a comma.
        assert!(grammar.contains(
            r#"r-0-args ::= "{" ( "\"timezone\"" ": " string ( ", " "\"format\"" ": " ( "\"iso\"" | "\"unix\"" ) )? ( ", " "\"count\"" ": " integer )? ) "}""#
        ), "{grammar}");
    }

    #[test]
    fn an_answer_grammar_starts_at_the_output_or_after_the_thinking() {
        let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]});
        let answer = output_grammar(None, Some(&schema), GrammarStart::Output).expect("a grammar");
        assert!(answer.starts_with("root ::= lead answer\n"), "{answer}");
        assert!(
            answer.contains("answer ::= r-answer \"\\n\"?\n"),
            "{answer}"
        );
        // Declared properties first; the schema admits undeclared ones after them.
        assert!(
            answer.contains(
                r#"r-answer ::= "{" ( "\"ok\"" ": " boolean ) ( ", " string ": " value )* "}""#
            ),
            "{answer}"
        );
        let tools = [tool("f", json!({}))];
        let calls = Calls {
            tools: &tools,
            only: None,
            format: CallFormat::Json,
        };
        let either = output_grammar(Some(calls), Some(&schema), GrammarStart::AfterThinking)
            .expect("a grammar");
        assert!(
            either.starts_with("root ::= </think> lead ( blocks | answer )\n"),
            "{either}"
        );
        assert!(output_grammar(None, None, GrammarStart::Output).is_err());
        assert!(output_grammar(None, Some(&schema), GrammarStart::CallTag).is_err());
    }

    #[test]
    fn optional_properties_may_each_come_first_or_be_absent() {
        let tools = [tool(
            "f",
            json!({"properties": {"a": {"type": "boolean"}, "b": {"type": "null"}}}),
        )];
        let grammar = tool_calls_grammar(&tools, None, false).expect("a grammar");
        assert!(grammar.contains(
            r#"r-0-args ::= "{" ( "\"a\"" ": " boolean ( ", " "\"b\"" ": " null )? | "\"b\"" ": " null |  ) "}""#
        ), "{grammar}");
    }

    #[test]
    fn a_named_choice_keeps_one_tool_and_an_unknown_one_is_refused() {
        let tools = [tool("a", json!({})), tool("b", json!({}))];
        let grammar = tool_calls_grammar(&tools, Some("b"), false).expect("a grammar");
        assert!(grammar.contains("\"\\\"b\\\"\"") && !grammar.contains("\"\\\"a\\\"\""));
        assert!(matches!(
            tool_calls_grammar(&tools, Some("c"), false),
            Err(ConstraintError::UnknownTool(name)) if name == "c"
        ));
    }

    #[test]
    fn literals_are_escaped_and_written_with_qwen_separators() {
        assert_eq!(literal(&json!("a\"b\\c\nd")), r#""\"a\\\"b\\\\c\\nd\"""#);
        assert_eq!(literal(&json!({"x": [1, 2]})), r#""{\"x\": [1, 2]}""#);
    }

    #[test]
    fn arrays_nested_objects_and_unions_become_rules() {
        let tools = [tool(
            "f",
            json!({"type": "object", "properties": {
                "tags": {"type": "array", "items": {"type": "string"}},
                "where": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]},
                "either": {"type": ["string", "null"]},
                "free": {"pattern": "^a"}
            }, "required": ["tags", "where", "either", "free"]}),
        )];
        let grammar = tool_calls_grammar(&tools, None, false).expect("a grammar");
        assert!(grammar.contains(r#"r-0-args-tags ::= "[" ( string ( ", " string )* )? "]""#));
        assert!(grammar.contains(r#"r-0-args-where ::= "{" ( "\"x\"" ": " number ) "}""#));
        assert!(grammar.contains(r#""\"either\"" ": " ( string | null )"#));
        assert!(grammar.contains(r#""\"free\"" ": " value"#));
    }
}
