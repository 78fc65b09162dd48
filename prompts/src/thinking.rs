//! Thinking control: the hard switch, the soft switches, sampling presets per mode, and the
//! thinking budget.
//!
//! The budget is a generation hook. It counts the tokens the model writes inside `<think>`; when a
//! turn reaches its limit without `</think>`, it forces Qwen's early-stop text (which closes the
//! thinking) in the same generation, and the model goes on to answer. A task budget spans turns:
//! each turn's limit is what the task has left. Forced tokens are reported as forced by the
//! engine, so transcripts show which text the model did not write.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kestrel_engine::{SamplingParams, StepAction, StepHook, Tokenizer};

use crate::phase::{ThinkState, ThinkToken};

use crate::messages::{ChatRequest, Role};

/// Qwen's early-stop text for the thinking budget (Qwen3 technical report and docs).
pub const EARLY_STOP_TEXT: &str = "Considering the limited time by the user, I have to give the solution based on the thinking directly now.\n</think>.\n\n";

/// Qwen's recommended sampling in thinking mode (temperature 0.6, top-p 0.95, top-k 20).
pub fn thinking_preset() -> SamplingParams {
    SamplingParams {
        temperature: 0.6,
        top_p: 0.95,
        top_k: 20,
        min_p: 0.0,
        ..SamplingParams::default()
    }
}

/// Qwen's recommended sampling without thinking (temperature 0.7, top-p 0.8, top-k 20).
pub fn non_thinking_preset() -> SamplingParams {
    SamplingParams {
        temperature: 0.7,
        top_p: 0.8,
        top_k: 20,
        min_p: 0.0,
        ..SamplingParams::default()
    }
}

/// Qwen's preset for the mode, seeded.
pub fn preset(thinking: bool, seed: Option<u64>) -> SamplingParams {
    let preset = if thinking {
        thinking_preset()
    } else {
        non_thinking_preset()
    };
    SamplingParams { seed, ..preset }
}

/// Greedy decoding in thinking mode tends to loop: allowed, but worth a warning (this one).
pub fn greedy_thinking_warning(thinking: bool, params: &SamplingParams) -> Option<&'static str> {
    (thinking && params.temperature == 0.0).then_some(
        "greedy decoding while thinking tends to repeat itself endlessly; Qwen recommends its thinking preset (temperature 0.6, top-p 0.95, top-k 20)",
    )
}

/// The most thinking tokens a turn of `max_tokens` may write and still leave room for the
/// early-stop text (`early_stop_len` tokens) and an answer: a quarter of the turn, between 16 and
/// 1024 tokens, is kept for the answer.
pub fn thinking_room(max_tokens: usize, early_stop_len: usize) -> usize {
    let answer = (max_tokens / 4).clamp(16, 1024);
    // `<think>` and the newline after it are not counted as thinking but take tokens.
    max_tokens.saturating_sub(early_stop_len + 2 + answer)
}

/// The mode the last soft switch (`/think` or `/no_think` in a user or system message) selects,
/// if any; the latest switch wins.
pub fn soft_switch(request: &ChatRequest) -> Option<bool> {
    soft_switch_in(&request.messages)
}

/// [`soft_switch`] over a conversation's messages.
pub fn soft_switch_in(messages: &[crate::messages::Message]) -> Option<bool> {
    messages
        .iter()
        .filter(|m| matches!(m.role, Role::User | Role::System))
        .filter_map(|m| m.content.as_ref().map(|c| c.text()))
        .filter_map(|text| last_switch(&text))
        .next_back()
}

/// The last `/think` or `/no_think` in `text`, as a whole word (`/thinking` is not a switch).
fn last_switch(text: &str) -> Option<bool> {
    let is_word_end = |rest: &str| !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_');
    let is_word_start =
        |before: &str| !before.ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '/');
    text.match_indices("/think")
        .map(|(i, m)| (i, i + m.len(), true))
        .chain(
            text.match_indices("/no_think")
                .map(|(i, m)| (i, i + m.len(), false)),
        )
        .filter(|&(start, end, _)| is_word_start(&text[..start]) && is_word_end(&text[end..]))
        .max_by_key(|&(start, _, _)| start)
        .map(|(_, _, on)| on)
}

/// Budgets in thinking tokens; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ThinkingBudget {
    /// Most thinking tokens in one turn.
    pub per_turn: Option<usize>,
    /// Most thinking tokens over a whole task (all turns).
    pub per_task: Option<usize>,
}

impl ThinkingBudget {
    /// The limit for the next turn, given the thinking tokens the task has used.
    pub fn turn_limit(&self, task_used: usize) -> Option<usize> {
        let task_left = self.per_task.map(|t| t.saturating_sub(task_used));
        match (self.per_turn, task_left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether a turn should render with thinking off: a zero budget means no thinking at all.
    pub fn disables_thinking(&self, task_used: usize) -> bool {
        self.turn_limit(task_used) == Some(0)
    }
}

/// The generation hook enforcing a turn's thinking limit.
#[derive(Debug, Clone)]
pub struct ThinkingBudgetHook {
    limit: Option<usize>,
    early_stop: Vec<u32>,
    think: ThinkState,
    thinking_tokens: ThinkingCount,
    stopped_early: bool,
    /// A token has been generated.
    seen_token: bool,
}

/// The thinking tokens a [`ThinkingBudgetHook`] has counted, readable while the hook is owned by
/// a generation running elsewhere.
#[derive(Debug, Clone, Default)]
pub struct ThinkingCount(Arc<AtomicUsize>);

impl ThinkingCount {
    /// Tokens counted so far.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl ThinkingBudgetHook {
    /// A hook for one turn. `starts_in_thinking` tells whether the prompt already opened
    /// `<think>`. Fails if the tokenizer cannot encode the early-stop text.
    pub fn new(
        tokenizer: &Tokenizer,
        limit: Option<usize>,
        starts_in_thinking: bool,
    ) -> kestrel_engine::Result<Self> {
        Ok(Self {
            limit,
            // Our own text: `</think>` in it is meant as the control token.
            early_stop: tokenizer.encode_raw(EARLY_STOP_TEXT)?,
            think: ThinkState::new(tokenizer, starts_in_thinking),
            thinking_tokens: ThinkingCount::default(),
            stopped_early: false,
            seen_token: false,
        })
    }

    /// Sets the turn's limit (`None`: unlimited).
    pub fn set_limit(&mut self, limit: Option<usize>) {
        self.limit = limit;
    }

    /// The turn's limit (`None`: unlimited).
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// Thinking tokens the model wrote this turn.
    pub fn thinking_tokens(&self) -> usize {
        self.thinking_tokens.get()
    }

    /// A handle on the count, for whoever hands the hook to a generation.
    pub fn thinking_count(&self) -> ThinkingCount {
        self.thinking_tokens.clone()
    }

    /// Whether the budget cut the thinking short.
    pub fn stopped_early(&self) -> bool {
        self.stopped_early
    }

    /// The forced early-stop tokens.
    pub fn early_stop_ids(&self) -> &[u32] {
        &self.early_stop
    }

    /// How many tokens may be generated before the budget must be checked again (for engines
    /// that generate many tokens per request and cannot run this hook token by token): inside the
    /// thinking, the thinking tokens left (0: close it now); before the first token, one more,
    /// since the model opens `<think>` with its first token if at all; `None` when unlimited or
    /// once the answer has begun (Qwen3 thinks only at the start of a turn).
    pub fn tokens_before_check(&self) -> Option<usize> {
        let left = self.limit?.saturating_sub(self.thinking_tokens.get());
        if self.think.inside() {
            Some(left)
        } else if !self.seen_token {
            Some(left + 1)
        } else {
            None
        }
    }

    /// The early-stop tokens to force now, when the thinking is open and its budget spent (the
    /// hook then counts the thinking as closed).
    pub fn close_if_spent(&mut self) -> Option<Vec<u32>> {
        let limit = self.limit?;
        (self.think.inside() && self.thinking_tokens.get() >= limit).then(|| {
            self.stopped_early = true;
            self.think.leave();
            self.early_stop.clone()
        })
    }
}

impl StepHook for ThinkingBudgetHook {
    fn before_step(&mut self, _generated: &[u32], _logits: &mut [f32]) -> StepAction {
        match self.close_if_spent() {
            Some(ids) => StepAction::Force(ids),
            None => StepAction::Sample,
        }
    }

    fn on_token(&mut self, id: u32, forced: bool) {
        self.seen_token = true;
        if self.think.observe(id) == ThinkToken::Inside && !forced {
            self.thinking_tokens.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_combine_per_turn_and_per_task() {
        let b = ThinkingBudget {
            per_turn: Some(100),
            per_task: Some(250),
        };
        assert_eq!(b.turn_limit(0), Some(100));
        assert_eq!(b.turn_limit(200), Some(50));
        assert!(b.disables_thinking(250));
        assert_eq!(ThinkingBudget::default().turn_limit(10), None);
        assert_eq!(
            ThinkingBudget {
                per_turn: None,
                per_task: Some(5)
            }
            .turn_limit(2),
            Some(3)
        );
    }

    #[test]
    fn soft_switches_latest_wins() {
        let r = |msgs: &str| {
            ChatRequest::from_json(&format!("{{\"messages\": {msgs}}}")).expect("request")
        };
        assert_eq!(
            soft_switch(&r(r#"[{"role": "user", "content": "hi"}]"#)),
            None
        );
        assert_eq!(
            soft_switch(&r(r#"[{"role": "user", "content": "hi /no_think"}]"#)),
            Some(false)
        );
        assert_eq!(
            soft_switch(&r(
                r#"[{"role": "system", "content": "/no_think"}, {"role": "user", "content": "now /think"}]"#
            )),
            Some(true)
        );
        assert_eq!(
            soft_switch(&r(
                r#"[{"role": "user", "content": "/think then /no_think"}]"#
            )),
            Some(false)
        );
        assert_eq!(
            soft_switch(&r(
                r#"[{"role": "user", "content": "read /thinking/notes.md and src/no_think"}]"#
            )),
            None,
            "paths are not switches"
        );
        assert_eq!(
            soft_switch(&r(r#"[{"role": "user", "content": "why? /think."}]"#)),
            Some(true)
        );
    }

    #[test]
    fn thinking_leaves_room_for_the_early_stop_text_and_an_answer() {
        // 200 tokens: 50 for the answer, 26 for the early stop, 2 for the tags.
        assert_eq!(thinking_room(200, 26), 122);
        assert_eq!(thinking_room(100_000, 26), 100_000 - 26 - 2 - 1024);
        assert_eq!(thinking_room(40, 26), 0, "too small to think at all");
        assert!(greedy_thinking_warning(true, &SamplingParams::greedy()).is_some());
        assert!(greedy_thinking_warning(false, &SamplingParams::greedy()).is_none());
        assert!(greedy_thinking_warning(true, &thinking_preset()).is_none());
    }

    #[test]
    fn presets_are_qwens() {
        assert_eq!(
            (thinking_preset().temperature, thinking_preset().top_p),
            (0.6, 0.95)
        );
        assert_eq!(
            (
                non_thinking_preset().temperature,
                non_thinking_preset().top_p
            ),
            (0.7, 0.8)
        );
    }
}
