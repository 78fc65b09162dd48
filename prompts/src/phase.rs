//! Whether generation is inside Qwen's `<think>` block, tracked on token ids.
//!
//! The thinking budget and the tool-call constraint both ask it at every token and must agree, so
//! this is their one machine. The output parser works on text, which arrives cut anywhere, and
//! finds the same tags in its own way.

use kestrel_engine::Tokenizer;

/// Where a token falls with respect to `<think>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThinkToken {
    /// `<think>` itself.
    Open,
    /// `</think>` itself.
    Close,
    /// A token inside the thinking.
    Inside,
    /// A token outside it.
    Outside,
}

/// The thinking state of one generation.
#[derive(Debug, Clone)]
pub struct ThinkState {
    open: Option<u32>,
    close: Option<u32>,
    inside: bool,
}

impl ThinkState {
    /// Tracks `<think>`/`</think>` as `tokenizer` spells them; `starts_inside` when the prompt
    /// already opened `<think>` (Qwen3 Thinking-2507 templates do).
    pub fn new(tokenizer: &Tokenizer, starts_inside: bool) -> Self {
        Self::with_ids(
            tokenizer.token_id("<think>"),
            tokenizer.token_id("</think>"),
            starts_inside,
        )
    }

    /// Tracks the given tag ids (a tokenizer without them never thinks).
    pub fn with_ids(open: Option<u32>, close: Option<u32>, starts_inside: bool) -> Self {
        Self {
            open,
            close,
            inside: starts_inside,
        }
    }

    /// Whether the next token would be inside the thinking.
    pub fn inside(&self) -> bool {
        self.inside
    }

    /// Leaves the thinking now (the budget has forced its closing text).
    pub fn leave(&mut self) {
        self.inside = false;
    }

    /// Accepts one generated token and says where it fell.
    pub fn observe(&mut self, id: u32) -> ThinkToken {
        if Some(id) == self.open {
            self.inside = true;
            ThinkToken::Open
        } else if Some(id) == self.close {
            self.inside = false;
            ThinkToken::Close
        } else if self.inside {
            ThinkToken::Inside
        } else {
            ThinkToken::Outside
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_switch_the_state_and_are_neither_inside_nor_outside() {
        let mut state = ThinkState::with_ids(Some(1), Some(2), false);
        let seen: Vec<ThinkToken> = [5, 1, 5, 5, 2, 5].map(|id| state.observe(id)).to_vec();
        use ThinkToken::*;
        assert_eq!(seen, [Outside, Open, Inside, Inside, Close, Outside]);
        let mut opened = ThinkState::with_ids(Some(1), Some(2), true);
        assert_eq!(opened.observe(5), Inside);
        opened.leave();
        assert_eq!(opened.observe(5), Outside);
    }

    #[test]
    fn a_tokenizer_without_the_tags_never_thinks() {
        let mut state = ThinkState::with_ids(None, None, false);
        assert_eq!(state.observe(1), ThinkToken::Outside);
    }
}
