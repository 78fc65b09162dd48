//! The responses kept for `previous_response_id` and `GET /v1/responses/{id}`: in memory, for the
//! server's lifetime, the oldest dropped first beyond a fixed number (OpenAI's API stores by
//! default, so plain SDK calls expect a response to be found again).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use kestrel::prompts::messages::Message;
use serde_json::Value;

/// How many responses are kept.
pub(super) const CAPACITY: usize = 512;

struct Entry {
    response: Value,
    conversation: Vec<Message>,
}

/// Stored responses, oldest first.
#[derive(Default)]
pub(super) struct ResponseStore {
    inner: Mutex<(VecDeque<String>, HashMap<String, Entry>)>,
}

impl ResponseStore {
    /// Keeps `response` and the conversation it ends (input and output, without instructions).
    pub(super) fn put(&self, id: &str, response: Value, conversation: Vec<Message>) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (order, entries) = &mut *guard;
        if entries
            .insert(
                id.to_string(),
                Entry {
                    response,
                    conversation,
                },
            )
            .is_none()
        {
            order.push_back(id.to_string());
        }
        while order.len() > CAPACITY {
            if let Some(old) = order.pop_front() {
                entries.remove(&old);
            }
        }
    }

    /// The conversation a stored response ends.
    pub(super) fn conversation(&self, id: &str) -> Option<Vec<Message>> {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard.1.get(id).map(|e| e.conversation.clone())
    }

    /// A stored response object.
    pub(super) fn response(&self, id: &str) -> Option<Value> {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard.1.get(id).map(|e| e.response.clone())
    }

    /// Forgets a response; whether it was there.
    pub(super) fn delete(&self, id: &str) -> bool {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (order, entries) = &mut *guard;
        order.retain(|k| k != id);
        entries.remove(id).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kestrel::prompts::messages::Role;

    #[test]
    fn the_oldest_go_first() {
        let store = ResponseStore::default();
        for i in 0..CAPACITY + 2 {
            store.put(
                &format!("r{i}"),
                Value::from(i),
                vec![Message::text(Role::User, "x")],
            );
        }
        assert!(store.response("r0").is_none() && store.response("r1").is_none());
        assert_eq!(store.response("r2"), Some(Value::from(2)));
        assert_eq!(store.conversation("r5").map(|c| c.len()), Some(1));
        assert!(store.delete("r5") && !store.delete("r5"));
        assert!(store.conversation("r5").is_none());
    }
}
