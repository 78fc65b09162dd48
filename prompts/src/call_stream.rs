//! A tool call's name and arguments while its body is still being written, for clients that show
//! (or start acting on) a call before it is complete.
//!
//! The body is Qwen's `{"name": ..., "arguments": {...}}`. The scanner follows the JSON text's
//! strings and nesting without parsing it: the name is reported once its string closes, and the
//! arguments value as it comes, piece by piece, verbatim, up to its own end (the outer object's
//! closing brace is not part of it). Arguments written before the name are held until the name
//! is known. Arguments written as a string (some models quote the object) are not streamed: their
//! text is not the object a client would assemble, so the complete call is left to say it. Nor is
//! a body in Qwen3-Coder's XML form, whose values are typed only once the call is parsed.

/// What a call's body has revealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallPiece {
    /// The tool's name, once.
    Name(String),
    /// More of the arguments' JSON text.
    Arguments(String),
}

/// Where the scanner is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Between members of the outer object, waiting for a key.
    Key,
    /// Inside a key's string.
    InKey,
    /// After a key, waiting for `:`.
    Colon,
    /// After `:`, waiting for the value's first character.
    Value,
    /// Inside the value of the current key.
    InValue,
    /// The outer object is closed.
    Done,
}

/// Scans one call's body.
#[derive(Debug, Clone)]
pub struct CallScanner {
    place: Place,
    /// Nesting below the outer object, inside the current value.
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Whether the outer object's `{` was seen.
    opened: bool,
    key: String,
    name: Option<String>,
    name_text: String,
    /// Arguments text not reported yet (held until the name is known).
    arguments: String,
    /// The arguments value is a string: not streamed.
    quoted_arguments: bool,
}

impl Default for CallScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl CallScanner {
    /// A scanner at the start of a body.
    pub fn new() -> Self {
        Self {
            place: Place::Key,
            depth: 0,
            in_string: false,
            escaped: false,
            opened: false,
            key: String::new(),
            name: None,
            name_text: String::new(),
            arguments: String::new(),
            quoted_arguments: false,
        }
    }

    /// Takes more of the body; returns what it revealed, in order.
    pub fn push(&mut self, text: &str) -> Vec<CallPiece> {
        let mut out = Vec::new();
        for c in text.chars() {
            self.step(c, &mut out);
        }
        if self.name.is_some() && !self.arguments.is_empty() {
            out.push(CallPiece::Arguments(std::mem::take(&mut self.arguments)));
        }
        out
    }

    fn step(&mut self, c: char, out: &mut Vec<CallPiece>) {
        if !self.opened {
            // A body that does not open with an object (Qwen3-Coder's `<function=...>` form)
            // is left to the complete call: a `{` inside one of its values is not a call.
            match c {
                '{' => self.opened = true,
                c if c.is_whitespace() => {}
                _ => self.place = Place::Done,
            }
            return;
        }
        match self.place {
            Place::Done => {}
            Place::Key => match c {
                '"' => {
                    self.key.clear();
                    self.place = Place::InKey;
                }
                '}' => self.place = Place::Done,
                _ => {}
            },
            Place::InKey => match (c, self.escaped) {
                ('"', false) => self.place = Place::Colon,
                ('\\', false) => self.escaped = true,
                _ => {
                    self.escaped = false;
                    self.key.push(c);
                }
            },
            Place::Colon => {
                if c == ':' {
                    self.place = Place::Value;
                }
            }
            Place::Value => {
                if c.is_whitespace() {
                    return;
                }
                self.place = Place::InValue;
                self.depth = 0;
                self.in_string = false;
                self.escaped = false;
                if self.key == "arguments" && c == '"' {
                    self.quoted_arguments = true;
                }
                self.value_char(c, out);
            }
            Place::InValue => self.value_char(c, out),
        }
    }

    /// A character of the current value; ends the value where it ends.
    fn value_char(&mut self, c: char, out: &mut Vec<CallPiece>) {
        let mut ended = false;
        let mut part_of_value = true;
        if self.in_string {
            match (c, self.escaped) {
                ('"', false) => {
                    self.in_string = false;
                    ended = self.depth == 0;
                }
                ('\\', false) => self.escaped = true,
                _ => self.escaped = false,
            }
        } else {
            match c {
                '"' => self.in_string = true,
                '{' | '[' => self.depth += 1,
                '}' | ']' if self.depth > 0 => {
                    self.depth -= 1;
                    ended = self.depth == 0;
                }
                // The outer object closes, or its next member starts: a bare value (a number,
                // `true`) ended just before.
                '}' | ',' if self.depth == 0 => {
                    part_of_value = false;
                    ended = true;
                }
                _ => {}
            }
        }
        if part_of_value {
            match self.key.as_str() {
                "arguments" if !self.quoted_arguments => self.arguments.push(c),
                "name" => self.name_text.push(c),
                _ => {}
            }
        }
        if ended {
            if self.key == "name" && self.name.is_none() {
                let name = serde_json::from_str::<String>(self.name_text.trim()).ok();
                if let Some(name) = name {
                    out.push(CallPiece::Name(name.clone()));
                    self.name = Some(name);
                }
            }
            self.place = match c {
                '}' if !part_of_value => Place::Done,
                _ => Place::Key,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(pieces: &[&str]) -> (Option<String>, String) {
        let mut scanner = CallScanner::new();
        let (mut name, mut arguments) = (None, String::new());
        for piece in pieces {
            for got in scanner.push(piece) {
                match got {
                    CallPiece::Name(n) => {
                        assert!(name.is_none(), "one name");
                        assert!(arguments.is_empty(), "the name comes first");
                        name = Some(n);
                    }
                    CallPiece::Arguments(a) => arguments.push_str(&a),
                }
            }
        }
        (name, arguments)
    }

    #[test]
    fn name_then_arguments_verbatim_in_any_split() {
        let body = "\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par}is\\\"\", \"days\": [1, {\"a\": 2}]}}\n";
        let whole = scan(&[body]);
        assert_eq!(whole.0.as_deref(), Some("get_weather"));
        assert_eq!(
            whole.1,
            "{\"city\": \"Par}is\\\"\", \"days\": [1, {\"a\": 2}]}"
        );
        let chars: Vec<String> = body.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(scan(&refs), whole, "one character at a time");
    }

    #[test]
    fn arguments_before_the_name_wait_for_it() {
        let (name, arguments) = scan(&["{\"arguments\": {\"x\": 1}, ", "\"name\": \"f\"}"]);
        assert_eq!(name.as_deref(), Some("f"));
        assert_eq!(arguments, "{\"x\": 1}");
    }

    #[test]
    fn quoted_arguments_and_bare_values_are_not_streamed() {
        let (name, arguments) = scan(&["{\"name\": \"f\", \"arguments\": \"{\\\"x\\\": 1}\"}"]);
        assert_eq!((name.as_deref(), arguments.as_str()), (Some("f"), ""));
        let (name, arguments) = scan(&["{\"id\": 3, \"name\": \"g\", \"arguments\": {}}"]);
        assert_eq!((name.as_deref(), arguments.as_str()), (Some("g"), "{}"));
    }

    #[test]
    fn an_xml_body_is_not_streamed_even_with_json_in_a_value() {
        let body = "\n<function=write_file>\n<parameter=content>\n{\"name\": \"x\", \"arguments\": {}}\n</parameter>\n</function>\n";
        assert_eq!(scan(&[body]), (None, String::new()));
    }

    #[test]
    fn a_cut_body_reports_what_it_has() {
        let (name, arguments) = scan(&["{\"name\": \"f\", \"arguments\": {\"x\": \"ab"]);
        assert_eq!(
            (name.as_deref(), arguments.as_str()),
            (Some("f"), "{\"x\": \"ab")
        );
    }
}
