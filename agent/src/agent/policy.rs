//! Which tool calls may run: allow, deny or ask, per tool or per server.
//!
//! Rules name a tool as the model sees it (`read_file`, `fs__read_file`), a server's tool
//! (`fs/read_file`), or a whole server (`fs/*`); the most specific rule wins. Without a rule, a
//! tool its server's `alwaysAllow` names runs. Otherwise annotations decide, but only a trusted
//! server's: MCP says annotations are a server's own claims, hints unless the server is trusted.
//! A trusted server's read-only tools run, and so do those it marks not destructive; the rest
//! (a tool without annotations may be destructive, MCP's default) and every tool of an untrusted
//! server are `ask`. `ask` needs a person: an interactive run passes the question to its
//! [`Approver`]; a non-interactive one denies, and the model reads why in the tool result.
//!
//! A server's `sampling/createMessage` request (the server asking the local model to write
//! something) is decided the same way under the name `SERVER/sampling`, and asks by default.

use std::sync::Arc;

use serde_json::Value;

use crate::mcp::HostTool;

/// A decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    /// Run it.
    Allow,
    /// Do not run it; the reason goes to the model.
    Deny(String),
    /// A person must decide; the reason says why they are asked.
    Ask(String),
}

/// What a person is asked to approve.
#[derive(Debug, Clone, Copy)]
pub enum ApprovalRequest<'a> {
    /// A tool call.
    Call {
        /// The tool.
        tool: &'a HostTool,
        /// Its arguments.
        arguments: &'a Value,
    },
    /// A server's request to sample the local model.
    Sampling {
        /// The server.
        server: &'a str,
        /// The request's messages, as text.
        prompt: &'a str,
    },
}

/// Answers approval questions (a person at a terminal); `true` approves.
pub type Approver = Arc<dyn Fn(ApprovalRequest<'_>) -> bool + Send + Sync>;

/// Allow/deny/ask rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ApprovalPolicy {
    /// Rules that allow.
    pub allow: Vec<String>,
    /// Rules that deny.
    pub deny: Vec<String>,
    /// Rules that ask.
    pub ask: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Specificity {
    Server,
    Tool,
}

impl ApprovalPolicy {
    fn matches(
        rules: &[String],
        name: Option<&str>,
        server: &str,
        tool: &str,
    ) -> Option<Specificity> {
        rules
            .iter()
            .filter_map(|r| {
                if Some(r.as_str()) == name || *r == format!("{server}/{tool}") {
                    Some(Specificity::Tool)
                } else if *r == format!("{server}/*") {
                    Some(Specificity::Server)
                } else {
                    None
                }
            })
            .max()
    }

    /// The most specific rule's decision; at equal specificity deny beats ask beats allow.
    fn rule(&self, name: Option<&str>, server: &str, tool: &str) -> Option<u8> {
        let allow = Self::matches(&self.allow, name, server, tool);
        let deny = Self::matches(&self.deny, name, server, tool);
        let ask = Self::matches(&self.ask, name, server, tool);
        [(deny, 2u8), (ask, 1), (allow, 0)]
            .into_iter()
            .filter_map(|(m, kind)| m.map(|s| (s, kind)))
            .max_by_key(|&(s, kind)| (s, kind))
            .map(|(_, kind)| kind)
    }

    /// Decides for `tool`.
    pub fn decide(&self, tool: &HostTool) -> Approval {
        let hint = |key: &str| {
            tool.annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .and_then(Value::as_bool)
        };
        // MCP's defaults: not read-only; destructive unless it says otherwise.
        let read_only = hint("readOnlyHint").unwrap_or(false);
        let destructive = !read_only && hint("destructiveHint").unwrap_or(true);
        match self.rule(Some(&tool.name), &tool.server, &tool.tool) {
            Some(0) => Approval::Allow,
            Some(2) => Approval::Deny(format!("the approval policy denies `{}`", tool.name)),
            Some(_) => Approval::Ask(format!("the approval policy asks before `{}`", tool.name)),
            None if tool.always_allowed => Approval::Allow,
            None if tool.trusted && !destructive => Approval::Allow,
            None if tool.trusted => Approval::Ask(format!(
                "`{}` may be destructive (its server says so, or does not say it is not)",
                tool.name
            )),
            None => Approval::Ask(format!(
                "`{}` is a tool of `{}`, a server not marked trusted",
                tool.name, tool.server
            )),
        }
    }

    /// Decides for a sampling request from `server` (rule name `SERVER/sampling`).
    pub fn decide_sampling(&self, server: &str) -> Approval {
        match self.rule(None, server, "sampling") {
            Some(0) => Approval::Allow,
            Some(2) => Approval::Deny(format!(
                "the approval policy denies sampling requests from `{server}`"
            )),
            _ => Approval::Ask(format!(
                "`{server}` asks the local model to write a message"
            )),
        }
    }

    /// Settles a decision: `Ask` goes to `approver` when there is one, else it is a denial.
    pub fn settle(
        decision: Approval,
        approver: Option<&Approver>,
        request: ApprovalRequest<'_>,
    ) -> Result<(), String> {
        match decision {
            Approval::Allow => Ok(()),
            Approval::Deny(reason) => Err(reason),
            Approval::Ask(reason) => match approver {
                Some(ask) if ask(request) => Ok(()),
                Some(_) => Err(format!("{reason}, and the user declined")),
                None => Err(format!(
                    "{reason}, and needs approval, which nobody can give in a non-interactive run (the user can allow it with --allow, the server's alwaysAllow list, or \"trust\": true for a server whose annotations they believe)"
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A tool of a trusted server, read-only unless `destructive`.
    fn tool(name: &str, server: &str, destructive: bool) -> HostTool {
        HostTool {
            name: name.into(),
            server: server.into(),
            tool: name.into(),
            description: None,
            input_schema: json!({"type": "object"}),
            annotations: Some(if destructive {
                json!({"destructiveHint": true})
            } else {
                json!({"readOnlyHint": true})
            }),
            trusted: true,
            always_allowed: false,
        }
    }

    #[test]
    fn annotations_decide_only_for_trusted_servers() {
        let none = ApprovalPolicy::default();
        let read = tool("read", "s", false);
        assert_eq!(none.decide(&read), Approval::Allow);
        let stranger = HostTool {
            trusted: false,
            ..read.clone()
        };
        assert!(
            matches!(none.decide(&stranger), Approval::Ask(r) if r.contains("not marked trusted"))
        );
        let listed = HostTool {
            always_allowed: true,
            ..stranger.clone()
        };
        assert_eq!(none.decide(&listed), Approval::Allow, "alwaysAllow");
        let unannotated = HostTool {
            annotations: None,
            ..read.clone()
        };
        assert!(
            matches!(none.decide(&unannotated), Approval::Ask(r) if r.contains("may be destructive")),
            "MCP's default: may be destructive"
        );
        let additive = HostTool {
            annotations: Some(json!({"readOnlyHint": false, "destructiveHint": false})),
            ..read.clone()
        };
        assert_eq!(none.decide(&additive), Approval::Allow);
        let denied = ApprovalPolicy {
            deny: vec!["s/read".into()],
            ..ApprovalPolicy::default()
        };
        assert!(
            matches!(denied.decide(&listed), Approval::Deny(_)),
            "a rule beats alwaysAllow"
        );
        let allowed = ApprovalPolicy {
            allow: vec!["read".into()],
            ..ApprovalPolicy::default()
        };
        assert_eq!(allowed.decide(&stranger), Approval::Allow, "--allow");
    }

    #[test]
    fn specific_rules_win_and_destructive_tools_need_approval() {
        let p = ApprovalPolicy {
            allow: vec!["fs/write_file".into()],
            deny: vec!["fs/*".into(), "rm".into()],
            ask: vec![],
        };
        assert_eq!(p.decide(&tool("write_file", "fs", true)), Approval::Allow);
        assert!(
            matches!(p.decide(&tool("read_file", "fs", false)), Approval::Deny(r) if r.contains("denies"))
        );
        assert!(matches!(
            p.decide(&tool("rm", "shell", false)),
            Approval::Deny(_)
        ));
        assert!(
            matches!(p.decide(&tool("drop", "db", true)), Approval::Ask(r) if r.contains("destructive"))
        );
        assert_eq!(p.decide(&tool("get_time", "time", false)), Approval::Allow);
        let ask = ApprovalPolicy {
            ask: vec!["time/*".into()],
            ..Default::default()
        };
        let get_time = tool("get_time", "time", false);
        assert!(matches!(ask.decide(&get_time), Approval::Ask(_)));
        let args = json!({});
        let request = ApprovalRequest::Call {
            tool: &get_time,
            arguments: &args,
        };
        let no_person = ApprovalPolicy::settle(ask.decide(&get_time), None, request);
        assert!(matches!(no_person, Err(r) if r.contains("non-interactive")));
        let yes: Approver = Arc::new(|_| true);
        let no: Approver = Arc::new(|_| false);
        assert_eq!(
            ApprovalPolicy::settle(ask.decide(&get_time), Some(&yes), request),
            Ok(())
        );
        assert!(matches!(
            ApprovalPolicy::settle(ask.decide(&get_time), Some(&no), request),
            Err(r) if r.contains("declined")
        ));
    }

    #[test]
    fn sampling_asks_unless_a_rule_decides() {
        let p = ApprovalPolicy {
            allow: vec!["everything/sampling".into()],
            deny: vec!["shady/*".into()],
            ask: vec![],
        };
        assert_eq!(p.decide_sampling("everything"), Approval::Allow);
        assert!(matches!(p.decide_sampling("shady"), Approval::Deny(_)));
        assert!(matches!(p.decide_sampling("time"), Approval::Ask(_)));
    }
}
