//! Untagged calls: when a bare object at the start of an answer is a tool call.
//!
//! Qwen's protocol wraps calls in `<tool_call>` tags, but small models often write the call
//! object alone, or in a ```` ```json ```` fence. The parser takes such an object as a call when
//! its `name` is an offered tool; the constraint needs to know the same thing while the object is
//! still being written, to keep its arguments inside the schema from there on. The object is
//! a call as soon as its text reaches `{"name": "<offered tool>"` (whitespace anywhere, the fence
//! optional), and is surely not one once it can no longer get there.

const FENCE_JSON: &str = "```json";

/// What the start of an answer segment is, so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UntaggedStart {
    /// It may still become a call.
    Undecided,
    /// A call of an offered tool.
    Call,
    /// Not a call.
    NotCall,
}

/// Classifies `text`, the start of an answer segment, against the offered tool names.
pub fn untagged_start(text: &str, names: &[&str]) -> UntaggedStart {
    use UntaggedStart::*;
    let mut rest = text.trim_start();
    if let Some(after) = rest.strip_prefix(FENCE_JSON) {
        rest = after.trim_start();
    } else if rest.starts_with('`') {
        return if FENCE_JSON.starts_with(rest) {
            Undecided
        } else {
            NotCall
        };
    }
    let Some(after) = rest.strip_prefix('{') else {
        return if rest.is_empty() { Undecided } else { NotCall };
    };
    let rest = after.trim_start();
    let Some(after) = rest.strip_prefix("\"name\"") else {
        return if "\"name\"".starts_with(rest) {
            Undecided
        } else {
            NotCall
        };
    };
    let rest = after.trim_start();
    let Some(after) = rest.strip_prefix(':') else {
        return if rest.is_empty() { Undecided } else { NotCall };
    };
    let rest = after.trim_start();
    let Some(quoted) = rest.strip_prefix('"') else {
        return if rest.is_empty() { Undecided } else { NotCall };
    };
    match quoted.split_once('"') {
        Some((name, _)) if names.contains(&name) => Call,
        Some(_) => NotCall,
        None if names.iter().any(|n| n.starts_with(quoted)) => Undecided,
        None => NotCall,
    }
}

#[cfg(test)]
mod tests {
    use super::UntaggedStart::*;
    use super::*;

    const NAMES: &[&str] = &["get_current_time", "convert_time"];

    #[test]
    fn a_bare_object_naming_an_offered_tool_is_a_call_once_its_name_is_complete() {
        for text in [
            "{\"name\": \"get_current_time\"",
            "{\"name\": \"get_current_time\", \"arguments\": {",
            "\n{\n  \"name\" : \"convert_time\",",
            "```json\n{\"name\": \"convert_time\"",
        ] {
            assert_eq!(untagged_start(text, NAMES), Call, "{text:?}");
        }
    }

    #[test]
    fn a_prefix_that_may_still_become_a_call_is_undecided() {
        for text in [
            "",
            "\n",
            "``",
            "```json\n",
            "{",
            "{\"na",
            "{\"name\"",
            "{\"name\": ",
            "{\"name\": \"get_",
            "{\"name\": \"convert_time",
        ] {
            assert_eq!(untagged_start(text, NAMES), Undecided, "{text:?}");
        }
    }

    #[test]
    fn text_other_objects_and_unknown_names_are_not_calls() {
        for text in [
            "The time",
            "```python",
            "{\"city\": \"Paris\"}",
            "{\"name\": \"Ada\", \"age\": 36}",
            "{\"name\": \"get_weather\"",
            "{\"name\": 3",
            "[{\"name\": \"get_current_time\"",
        ] {
            assert_eq!(untagged_start(text, NAMES), NotCall, "{text:?}");
        }
    }
}
