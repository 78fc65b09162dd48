//! Servers asking the user for input: `elicitation/create`.
//!
//! Requests reach an [`ElicitationHandler`] as plain [`ElicitationRequest`] values (the form's
//! JSON schema as JSON, or a URL), so a front end never sees rmcp's types. The host always
//! offers the capability: a request nobody can answer is declined, which tells the server
//! "no input" instead of leaving its tool without the feature. Two unattended answers are built
//! in ([`ElicitPolicy`]); an interactive front end (the terminal `chat`) brings its own handler.
//! Whatever a handler accepts is checked against the server's schema before it is sent: an answer
//! the server would reject is a declined request with a logged reason, never a malformed reply.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use rmcp::model::{ElicitRequestParams, ElicitResult, ElicitationAction};
use serde_json::{Map, Value};

/// A server's request for input.
#[derive(Debug, Clone, PartialEq)]
pub enum ElicitationRequest {
    /// Fields to fill in, described by a flat JSON schema (an object of primitive properties).
    Form {
        /// What the server says it needs and why.
        message: String,
        /// The requested schema, as the server sent it.
        schema: Value,
        /// The properties in the order the server listed them.
        order: Vec<String>,
    },
    /// A page the user should open (to sign in, pay, consent) outside the host.
    Url {
        /// What the server says the page is for.
        message: String,
        /// The page.
        url: String,
    },
}

impl ElicitationRequest {
    /// The request's message.
    pub fn message(&self) -> &str {
        match self {
            Self::Form { message, .. } | Self::Url { message, .. } => message,
        }
    }

    /// A form's fields in the server's order: name, property schema, required.
    pub fn fields(&self) -> Vec<(&str, &Value, bool)> {
        let Self::Form { schema, order, .. } = self else {
            return Vec::new();
        };
        let required = |name: &str| {
            schema["required"]
                .as_array()
                .is_some_and(|r| r.iter().any(|n| n.as_str() == Some(name)))
        };
        order
            .iter()
            .filter_map(|name| Some((name.as_str(), schema["properties"].get(name)?)))
            .map(|(name, property)| (name, property, required(name)))
            .collect()
    }
}

/// The user's (or a policy's) answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ElicitationAnswer {
    /// The fields given (form mode), or an empty map (a URL the user has opened).
    Accept(Map<String, Value>),
    /// No input; the server's operation may go on without it.
    Decline,
    /// The whole operation should stop.
    Cancel,
}

/// Answers elicitation requests.
pub trait ElicitationHandler: Send + Sync {
    /// Answers `request` from `server`.
    fn elicit(
        &self,
        server: &str,
        request: ElicitationRequest,
    ) -> BoxFuture<'static, ElicitationAnswer>;
}

/// A shared [`ElicitationHandler`] (a named type so host options stay `Debug` and `Clone`).
#[derive(Clone)]
pub struct ElicitationHandle(pub Arc<dyn ElicitationHandler>);

impl fmt::Debug for ElicitationHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ElicitationHandle")
    }
}

impl From<ElicitPolicy> for ElicitationHandle {
    fn from(policy: ElicitPolicy) -> Self {
        Self(Arc::new(policy))
    }
}

/// How an unattended run answers elicitation requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ElicitPolicy {
    /// Decline every request.
    #[default]
    Decline,
    /// Accept a form with the defaults its schema gives; decline one whose required fields lack
    /// a default, and any URL request (nobody is there to open it).
    Defaults,
}

impl std::str::FromStr for ElicitPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "decline" => Ok(Self::Decline),
            "defaults" => Ok(Self::Defaults),
            other => Err(format!(
                "unknown elicitation policy `{other}` (expected `decline` or `defaults`)"
            )),
        }
    }
}

impl ElicitationHandler for ElicitPolicy {
    fn elicit(
        &self,
        server: &str,
        request: ElicitationRequest,
    ) -> BoxFuture<'static, ElicitationAnswer> {
        let answer = match (self, &request) {
            (Self::Defaults, ElicitationRequest::Form { .. }) => match schema_defaults(&request) {
                Ok(fields) => ElicitationAnswer::Accept(fields),
                Err(missing) => {
                    tracing::info!(
                        server,
                        "declined an elicitation: required field `{missing}` has no default"
                    );
                    ElicitationAnswer::Decline
                }
            },
            _ => ElicitationAnswer::Decline,
        };
        Box::pin(std::future::ready(answer))
    }
}

/// Every default a form's schema gives; `Err` names the first required field without one.
pub fn schema_defaults(request: &ElicitationRequest) -> Result<Map<String, Value>, String> {
    let mut fields = Map::new();
    for (name, property, required) in request.fields() {
        match property.get("default") {
            Some(default) => {
                fields.insert(name.to_string(), default.clone());
            }
            None if required => return Err(name.to_string()),
            None => {}
        }
    }
    Ok(fields)
}

/// Checks an answer against the form's schema; the error names the field and the problem.
pub fn check_answer(
    request: &ElicitationRequest,
    fields: &Map<String, Value>,
) -> Result<(), String> {
    let ElicitationRequest::Form { schema, .. } = request else {
        return Ok(());
    };
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| format!("the server's schema is not valid JSON Schema: {e}"))?;
    let answer = Value::Object(fields.clone());
    match validator.iter_errors(&answer).next() {
        None => Ok(()),
        Some(error) => {
            let path = error.instance_path().to_string();
            let field = path.trim_start_matches('/');
            Err(if field.is_empty() {
                error.to_string()
            } else {
                format!("`{field}`: {error}")
            })
        }
    }
}

/// Checks one field's value against its property schema; the error says what is wrong.
pub fn check_field(property: &Value, value: &Value) -> Result<(), String> {
    let validator = jsonschema::validator_for(property)
        .map_err(|e| format!("the server's schema for this field is not valid: {e}"))?;
    match validator.iter_errors(value).next() {
        Some(error) => Err(error.to_string()),
        None => Ok(()),
    }
}

/// Converts rmcp's request; `None` for a mode this host does not know.
pub(crate) fn request_from(params: ElicitRequestParams) -> Option<ElicitationRequest> {
    Some(match params {
        ElicitRequestParams::FormElicitationParams {
            message,
            requested_schema,
            ..
        } => {
            let order = requested_schema
                .property_order
                .clone()
                .unwrap_or_else(|| requested_schema.properties.keys().cloned().collect());
            ElicitationRequest::Form {
                message,
                schema: serde_json::to_value(&requested_schema).unwrap_or(Value::Null),
                order,
            }
        }
        ElicitRequestParams::UrlElicitationParams { message, url, .. } => {
            ElicitationRequest::Url { message, url }
        }
        _ => return None,
    })
}

/// Asks `handler` and converts its answer to rmcp's result, checking an accepted form first.
pub(crate) async fn answer(
    handler: &ElicitationHandle,
    server: &str,
    params: ElicitRequestParams,
) -> ElicitResult {
    let Some(request) = request_from(params) else {
        tracing::info!(server, "declined an elicitation of an unknown mode");
        return ElicitResult::new(ElicitationAction::Decline);
    };
    match handler.0.elicit(server, request.clone()).await {
        ElicitationAnswer::Accept(fields) => match check_answer(&request, &fields) {
            Ok(()) => {
                let mut result = ElicitResult::new(ElicitationAction::Accept);
                if matches!(request, ElicitationRequest::Form { .. }) {
                    result.content = Some(Value::Object(fields));
                }
                result
            }
            Err(problem) => {
                tracing::warn!(server, "declined an elicitation whose answer {problem}");
                ElicitResult::new(ElicitationAction::Decline)
            }
        },
        ElicitationAnswer::Decline => ElicitResult::new(ElicitationAction::Decline),
        ElicitationAnswer::Cancel => ElicitResult::new(ElicitationAction::Cancel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn form(schema: Value) -> ElicitationRequest {
        let params: ElicitRequestParams = serde_json::from_value(json!({
            "mode": "form", "message": "Who?", "requestedSchema": schema
        }))
        .expect("params");
        request_from(params).expect("form")
    }

    fn booking() -> ElicitationRequest {
        form(json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "default": "Ada"},
                "seats": {"type": "integer", "minimum": 1, "maximum": 8, "default": 2},
                "note": {"type": "string"}
            },
            "required": ["name", "seats"]
        }))
    }

    #[test]
    fn forms_keep_their_fields_in_the_servers_order_and_which_are_required() {
        let request = booking();
        assert_eq!(request.message(), "Who?");
        let fields: Vec<(&str, bool)> = request.fields().iter().map(|f| (f.0, f.2)).collect();
        assert_eq!(fields, [("name", true), ("seats", true), ("note", false)]);
    }

    #[test]
    fn defaults_fill_what_the_schema_gives_and_name_a_required_field_without_one() {
        let fields = schema_defaults(&booking()).expect("defaults");
        assert_eq!(Value::Object(fields), json!({"name": "Ada", "seats": 2}));
        let needs_email = form(json!({
            "type": "object",
            "properties": {"email": {"type": "string"}},
            "required": ["email"]
        }));
        assert_eq!(schema_defaults(&needs_email), Err("email".to_string()));
    }

    #[tokio::test]
    async fn policies_accept_defaults_or_decline() {
        let params = || {
            serde_json::from_value::<ElicitRequestParams>(json!({
                "mode": "form", "message": "Who?",
                "requestedSchema": {"type": "object", "properties": {"n": {"type": "integer", "default": 3}}}
            }))
            .expect("params")
        };
        let defaults = answer(&ElicitPolicy::Defaults.into(), "s", params()).await;
        assert_eq!(defaults.action, ElicitationAction::Accept);
        assert_eq!(defaults.content, Some(json!({"n": 3})));
        let declined = answer(&ElicitPolicy::Decline.into(), "s", params()).await;
        assert_eq!(declined.action, ElicitationAction::Decline);
        assert_eq!(declined.content, None);
        let url: ElicitRequestParams = serde_json::from_value(json!({
            "mode": "url", "message": "Sign in", "url": "https://example.com/x", "elicitationId": "1"
        }))
        .expect("url");
        let url = answer(&ElicitPolicy::Defaults.into(), "s", url).await;
        assert_eq!(url.action, ElicitationAction::Decline);
    }

    #[test]
    fn answers_outside_the_schema_are_named() {
        let request = booking();
        let mut fields = schema_defaults(&request).expect("defaults");
        assert_eq!(check_answer(&request, &fields), Ok(()));
        fields.insert("seats".into(), json!(12));
        let problem = check_answer(&request, &fields).expect_err("out of range");
        assert!(problem.starts_with("`seats`:"), "{problem}");
        fields.remove("name");
        assert!(check_answer(&request, &fields).is_err());
    }

    #[test]
    fn policies_parse_by_name() {
        assert_eq!("defaults".parse(), Ok(ElicitPolicy::Defaults));
        assert!(
            "ask"
                .parse::<ElicitPolicy>()
                .is_err_and(|e| e.contains("`ask`"))
        );
    }
}
