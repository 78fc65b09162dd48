//! An MCP server (rmcp, stdio) that needs its client's help to finish: booking a table asks the
//! user who is coming (elicitation), the client's roots, and the client's model for a welcome
//! line (sampling); a prompt asks for a name, a resource for the roots.
//!
//! `booking_desk 2026-07-28` speaks that protocol only, where the server asks inside an
//! input-required result and the client sends the request again with the answers (multi round
//! trip). `booking_desk 2025-11-25` speaks the earlier protocols only, where it sends the same
//! questions as requests of its own in the middle of the call. Either way the answers are the
//! same, so a host's tests can compare the two. `stall` asks forever (state only), to test a
//! host's round limit; `forecast` returns a result that its own output schema does not admit.
#![allow(deprecated)] // sampling and roots are deprecated by 2026-07-28, and still in it

use std::borrow::Cow;

use rmcp::model::*;
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler, ServiceExt};
use serde_json::{Value, json};

#[derive(Clone, Copy)]
struct Desk {
    /// Ask inside results (2026-07-28), or by requests (earlier).
    in_results: bool,
}

fn guest_question() -> ElicitRequestParams {
    ElicitRequestParams::FormElicitationParams {
        meta: None,
        message: "Who is the booking for?".into(),
        requested_schema: serde_json::from_value(json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "Guest name", "default": "Ada"},
                "seats": {"type": "integer", "minimum": 1, "maximum": 8, "default": 2}
            },
            "required": ["name", "seats"]
        }))
        .expect("a valid elicitation schema"),
    }
}

fn welcome_request(restaurant: &str) -> CreateMessageRequestParams {
    CreateMessageRequestParams::new(
        vec![SamplingMessage::user_text(format!(
            "Write a one-line welcome for a guest of {restaurant}."
        ))],
        40,
    )
}

/// The answers, however they came.
struct Answers {
    guest: Option<Value>,
    roots: Vec<String>,
    welcome: Option<String>,
}

impl Answers {
    fn from_responses(responses: &InputResponses) -> Self {
        let guest = responses
            .get("guest")
            .filter(|g| g["action"] == "accept")
            .map(|g| g["content"].clone());
        let roots = responses
            .get("roots")
            .and_then(|r| r["roots"].as_array())
            .map(|roots| {
                let uris = roots.iter().filter_map(|r| r["uri"].as_str());
                uris.map(str::to_owned).collect()
            })
            .unwrap_or_default();
        let welcome = responses
            .get("welcome")
            .and_then(|w| w["content"]["text"].as_str())
            .map(str::to_owned);
        Self {
            guest,
            roots,
            welcome,
        }
    }

    fn booking(&self, restaurant: &str) -> String {
        let Some(guest) = &self.guest else {
            return format!("no booking at {restaurant}: the guest's details were declined");
        };
        format!(
            "booked {} seats for {} at {restaurant}; roots: {}; welcome: {}",
            guest["seats"],
            guest["name"].as_str().unwrap_or("?"),
            self.roots.join(" "),
            self.welcome.as_deref().unwrap_or("(none)")
        )
    }
}

fn input_required(requests: Vec<(&str, InputRequest)>, state: &str) -> InputRequiredResult {
    let requests = requests.into_iter().map(|(k, r)| (k.to_string(), r));
    InputRequiredResult::new(Some(requests.collect()), Some(state.into()))
}

fn failed(message: impl Into<Cow<'static, str>>) -> ErrorData {
    ErrorData::internal_error(message, None)
}

impl Desk {
    /// The same questions, sent as requests (earlier protocols).
    async fn ask_by_requests(
        &self,
        context: &RequestContext<RoleServer>,
        restaurant: &str,
        which: &[&str],
    ) -> Result<Answers, ErrorData> {
        let peer = &context.peer;
        let mut responses = InputResponses::new();
        if which.contains(&"guest") {
            let guest = peer.create_elicitation(guest_question()).await;
            let guest = guest.map_err(|e| failed(format!("elicitation: {e}")))?;
            responses.insert(
                "guest".into(),
                serde_json::to_value(guest).unwrap_or_default(),
            );
        }
        if which.contains(&"roots") {
            let roots = peer.list_roots().await;
            let roots = roots.map_err(|e| failed(format!("roots: {e}")))?;
            responses.insert(
                "roots".into(),
                serde_json::to_value(roots).unwrap_or_default(),
            );
        }
        if which.contains(&"welcome") {
            let welcome = peer.create_message(welcome_request(restaurant)).await;
            let welcome = welcome.map_err(|e| failed(format!("sampling: {e}")))?;
            let welcome = serde_json::to_value(welcome).unwrap_or_default();
            responses.insert("welcome".into(), welcome);
        }
        Ok(Answers::from_responses(&responses))
    }
}

impl ServerHandler for Desk {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_prompts()
            .enable_resources()
            .build();
        let mut info = ServerConfig::new(capabilities);
        info.server_info = Implementation::new("booking-desk", "1.0.0");
        if self.in_results {
            info.protocol_version = ProtocolVersion::V_2026_07_28;
        } else {
            info.protocol_version = ProtocolVersion::V_2025_11_25;
        }
        info
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        if self.in_results {
            Cow::Owned(vec![ProtocolVersion::V_2026_07_28])
        } else {
            Cow::Owned(vec![
                ProtocolVersion::V_2025_11_25,
                ProtocolVersion::V_2025_06_18,
            ])
        }
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = |value: Value| match value {
            Value::Object(map) => std::sync::Arc::new(map),
            _ => unreachable!("schemas are objects"),
        };
        let book = json!({
            "type": "object",
            "properties": {"restaurant": {"type": "string"}},
            "required": ["restaurant"]
        });
        Ok(ListToolsResult::with_all_items(vec![
            Tool::new("book_table", "Books a table for the user", schema(book)),
            Tool::new("stall", "Never finishes", schema(json!({"type": "object"}))),
            Tool::new(
                "forecast",
                "Tonight's weather",
                schema(json!({"type": "object"})),
            )
            .with_raw_output_schema(schema(json!({
                "type": "object",
                "properties": {"celsius": {"type": "number"}},
                "required": ["celsius"]
            }))),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let restaurant = request
            .arguments
            .as_ref()
            .and_then(|a| a.get("restaurant"))
            .and_then(Value::as_str)
            .unwrap_or("the restaurant")
            .to_string();
        match (request.name.as_ref(), self.in_results) {
            ("stall", true) => Ok(InputRequiredResult::from_request_state("again").into()),
            ("stall", false) => Err(failed("stall needs 2026-07-28")),
            // Not what its output schema says: the temperature is text.
            ("forecast", _) => Ok(CallToolResult::structured(json!({"celsius": "mild"})).into()),
            ("book_table", true) => match (&request.request_state, &request.input_responses) {
                (None, _) => Ok(input_required(
                    vec![
                        (
                            "guest",
                            InputRequest::Elicitation(ElicitRequest::new(guest_question())),
                        ),
                        (
                            "roots",
                            InputRequest::ListRoots(ListRootsRequest::default()),
                        ),
                        (
                            "welcome",
                            InputRequest::CreateMessage(CreateMessageRequest::new(
                                welcome_request(&restaurant),
                            )),
                        ),
                    ],
                    "asked",
                )
                .into()),
                (Some(state), Some(responses)) if state == "asked" => {
                    let text = Answers::from_responses(responses).booking(&restaurant);
                    Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
                }
                (state, _) => Err(failed(format!("unexpected state {state:?} or no answers"))),
            },
            ("book_table", false) => {
                let which = ["guest", "roots", "welcome"];
                let answers = self.ask_by_requests(&context, &restaurant, &which).await?;
                let text = answers.booking(&restaurant);
                Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
            }
            (other, _) => Err(ErrorData::invalid_params(format!("no tool {other}"), None)),
        }
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        let welcome = Prompt::new("welcome", Some("Welcomes the guest by name"), None);
        Ok(ListPromptsResult::with_all_items(vec![welcome]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let answers = if self.in_results {
            match &request.input_responses {
                None => {
                    let guest = InputRequest::Elicitation(ElicitRequest::new(guest_question()));
                    return Ok(input_required(vec![("guest", guest)], "named").into());
                }
                Some(responses) => Answers::from_responses(responses),
            }
        } else {
            self.ask_by_requests(&context, "", &["guest"]).await?
        };
        let name = answers
            .guest
            .as_ref()
            .and_then(|g| g["name"].as_str())
            .unwrap_or("stranger")
            .to_string();
        let message = PromptMessage::new_text(Role::User, format!("Welcome, {name}!"));
        Ok(GetPromptResult::new(vec![message]).into())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let roots = Resource::new("desk://roots", "roots");
        Ok(ListResourcesResult::with_all_items(vec![roots]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let answers = if self.in_results {
            match &request.input_responses {
                None => {
                    let roots = InputRequest::ListRoots(ListRootsRequest::default());
                    return Ok(input_required(vec![("roots", roots)], "rooted").into());
                }
                Some(responses) => Answers::from_responses(responses),
            }
        } else {
            self.ask_by_requests(&context, "", &["roots"]).await?
        };
        let text = answers.roots.join("\n");
        let contents = ResourceContents::text(text, request.uri);
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let in_results = match std::env::args().nth(1).as_deref() {
        Some("2026-07-28") => true,
        Some("2025-11-25") => false,
        other => {
            return Err(
                format!("usage: booking_desk 2026-07-28|2025-11-25 (got {other:?})").into(),
            );
        }
    };
    let service = Desk { in_results }.serve(rmcp::transport::stdio()).await?;
    service.waiting().await?;
    Ok(())
}
