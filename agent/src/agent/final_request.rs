//! The request that ends the tool rounds: what the model reads before its final, tool-free turn.
//!
//! Small models are sensitive to its wording (the figures are in [`final_request`]'s comment), so
//! it lives on its own, with its test.

use kestrel_prompts::messages::{Message, Role};

/// The user turn added when the tool rounds end: the user's question again (when it is short),
/// and a request for the answer from the results that answer it. It says nothing of tools: the
/// turn cannot call any. Measured on the README's task with the shipped 0.5B model: saying "No
/// more tool calls are possible" made it apologise instead of answering 7 times in 10 (10
/// cities); "Answer my question now ... from the tool results above that answer it", 3 times in
/// 10 for Tokyo; with the question repeated first, never in 10 seeds for Tokyo, and once in 10
/// cities.
pub fn final_request(messages: &[Message]) -> Message {
    const ANSWER: &str = "Answer now, in plain words, from the tool results above that answer it.";
    let question = (messages.iter().rev())
        .find(|m| m.role == Role::User)
        .and_then(|m| m.content.as_ref())
        .map(|c| c.text())
        .filter(|q| !q.trim().is_empty() && q.chars().count() <= QUESTION_REPEATED_UP_TO);
    match question {
        Some(question) => Message::text(Role::User, &format!("{}\n\n{ANSWER}", question.trim())),
        None => Message::text(Role::User, &format!("About my question above: {ANSWER}")),
    }
}

/// The longest question (in characters) the final request repeats.
const QUESTION_REPEATED_UP_TO: usize = 500;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_request_repeats_a_short_question() {
        let conversation = |question: &str| {
            vec![
                Message::text(Role::System, "Be brief."),
                Message::text(Role::User, question),
                Message::text(Role::Tool, "12:00"),
            ]
        };
        let text = |m: Message| m.content.map(|c| c.text()).unwrap_or_default();
        assert_eq!(
            text(final_request(&conversation("What time is it in Tokyo?"))),
            "What time is it in Tokyo?\n\nAnswer now, in plain words, from the tool results above that answer it."
        );
        let long = "Tell me. ".repeat(100);
        assert_eq!(
            text(final_request(&conversation(&long))),
            "About my question above: Answer now, in plain words, from the tool results above that answer it."
        );
    }
}
