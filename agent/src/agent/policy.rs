//! Which tool calls may run: allow, deny or ask, per tool or per server.
//!
//! Rules name a tool as the model sees it (`read_file`, `fs__read_file`), a server's tool
//! (`fs/read_file`), or a whole server (`fs/*`); the most specific rule wins. Without a rule a tool
//! is allowed, except one annotated `destructiveHint: true`, which is `ask`. `ask` needs a person:
//! in non-interactive runs (every run for now) it means deny, and the model is told why in the
//! tool result.

use crate::mcp::HostTool;

/// A decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Approval {
    /// Run it.
    Allow,
    /// Do not run it; the reason goes to the model.
    Deny(String),
}

/// Allow/deny/ask rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    fn matches(rules: &[String], tool: &HostTool) -> Option<Specificity> {
        rules
            .iter()
            .filter_map(|r| {
                if r == &tool.name || *r == format!("{}/{}", tool.server, tool.tool) {
                    Some(Specificity::Tool)
                } else if *r == format!("{}/*", tool.server) {
                    Some(Specificity::Server)
                } else {
                    None
                }
            })
            .max()
    }

    /// Decides for `tool` in a non-interactive run.
    pub fn decide(&self, tool: &HostTool) -> Approval {
        let allow = Self::matches(&self.allow, tool);
        let deny = Self::matches(&self.deny, tool);
        let ask = Self::matches(&self.ask, tool);
        let destructive = tool
            .annotations
            .as_ref()
            .and_then(|a| a.get("destructiveHint"))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        // Most specific wins; at equal specificity deny beats ask beats allow.
        let best = [(deny, 2u8), (ask, 1), (allow, 0)]
            .into_iter()
            .filter_map(|(m, kind)| m.map(|s| (s, kind)))
            .max_by_key(|&(s, kind)| (s, kind));
        match best.map(|(_, kind)| kind) {
            Some(0) => Approval::Allow,
            Some(2) => Approval::Deny(format!("the approval policy denies `{}`", tool.name)),
            Some(_) => Approval::Deny(format!(
                "`{}` needs approval and nobody can give it in a non-interactive run",
                tool.name
            )),
            None if destructive => Approval::Deny(format!(
                "`{}` is marked destructive and needs approval, which nobody can give in a non-interactive run (allow it explicitly to use it)",
                tool.name
            )),
            None => Approval::Allow,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(name: &str, server: &str, destructive: bool) -> HostTool {
        HostTool {
            name: name.into(),
            server: server.into(),
            tool: name.into(),
            description: None,
            input_schema: json!({"type": "object"}),
            annotations: destructive.then(|| json!({"destructiveHint": true})),
        }
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
            matches!(p.decide(&tool("drop", "db", true)), Approval::Deny(r) if r.contains("destructive"))
        );
        assert_eq!(p.decide(&tool("get_time", "time", false)), Approval::Allow);
        let ask = ApprovalPolicy {
            ask: vec!["time/*".into()],
            ..Default::default()
        };
        assert!(
            matches!(ask.decide(&tool("get_time", "time", false)), Approval::Deny(r) if r.contains("approval"))
        );
    }
}
