//! Multi round-trip requests (protocol 2026-07-28): a server that needs sampling, elicitation or
//! roots to finish `tools/call`, `prompts/get` or `resources/read` answers with an
//! input-required result instead of sending requests of its own. The host answers each request
//! in it through the connection's handler (the same answers earlier protocols get as requests) and
//! sends the original request again with those answers and the server's opaque state, until the
//! server completes or the round limit is reached.

use std::time::Duration;

use rmcp::model::{InputRequest, InputRequiredResult, InputResponses};

use super::client::KestrelClient;

/// Most input-required rounds one request may take (as rmcp's own client helpers allow).
pub(crate) const MAX_INPUT_ROUNDS: usize = rmcp::model::DEFAULT_MRTR_MAX_ROUNDS;

/// What the retry carries: the answers, and the state to echo.
pub(crate) type Retry = (Option<InputResponses>, Option<String>);

/// The rounds of one request.
#[derive(Debug, Default)]
pub(crate) struct InputRounds {
    rounds: usize,
    /// Rounds in a row that asked for nothing but carried state (a server polling itself):
    /// each waits a little longer before the retry.
    state_only: usize,
}

impl InputRounds {
    /// Answers one input-required result; `Err` says why the request cannot go on.
    pub(crate) async fn answer(
        &mut self,
        handler: &KestrelClient,
        input: InputRequiredResult,
    ) -> Result<Retry, String> {
        self.rounds += 1;
        if self.rounds > MAX_INPUT_ROUNDS {
            return Err(format!(
                "the server asked for input {MAX_INPUT_ROUNDS} times without finishing"
            ));
        }
        let requests = input.input_requests.unwrap_or_default();
        if requests.is_empty() {
            if input.request_state.is_none() {
                return Err(
                    "the server asked for input but named neither requests nor state".into(),
                );
            }
            let wait = 50u64 << self.state_only.min(3);
            tokio::time::sleep(Duration::from_millis(wait.min(250))).await;
            self.state_only += 1;
            return Ok((None, input.request_state));
        }
        self.state_only = 0;
        // One at a time, in key order: a person answering on a terminal sees one
        // question after another.
        let mut answers = InputResponses::new();
        for (key, request) in requests {
            let answer = match request {
                InputRequest::CreateMessage(request) => {
                    let result = handler.sample(request.params).await.map_err(|e| {
                        format!(
                            "the server's sampling request `{key}` failed: {}",
                            e.message
                        )
                    })?;
                    serde_json::to_value(result)
                }
                InputRequest::Elicitation(request) => {
                    serde_json::to_value(handler.elicit(request.params).await)
                }
                InputRequest::ListRoots(_) => serde_json::to_value(handler.roots()),
                _ => {
                    return Err(format!(
                        "the server asked for input `{key}` of an unknown kind"
                    ));
                }
            };
            let answer = answer.map_err(|e| format!("cannot encode an answer: {e}"))?;
            answers.insert(key, answer);
        }
        Ok((Some(answers), input.request_state))
    }
}
