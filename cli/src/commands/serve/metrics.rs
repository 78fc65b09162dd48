//! Admission and counters: how many requests may be in flight (decoding or waiting for a
//! sequence), and what `GET /metrics` reports in Prometheus' text format.
//!
//! A request holds a [`Slot`] from the moment it is admitted until its answer is sent or its
//! client leaves (the slot is dropped with the handler or the streaming task), so a full server
//! answers 429 at once instead of queueing without bound.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use kestrel::reply::ReplyEnd;
use kestrel_engine::EngineStats;

/// Counters since the server started.
#[derive(Debug, Default)]
pub(super) struct Metrics {
    capacity: usize,
    running: AtomicUsize,
    ok: AtomicU64,
    invalid: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    prompt_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    completion_tokens: AtomicU64,
}

/// How a request ended, for the counters.
#[derive(Debug, Clone, Copy)]
pub(super) enum Outcome {
    /// Answered (completely, or cut by the client leaving).
    Ok,
    /// Refused as bad input.
    Invalid,
    /// The engine failed.
    Failed,
}

impl Metrics {
    /// Up to `capacity` requests in flight.
    pub(super) fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity,
            ..Self::default()
        })
    }

    /// Requests admitted at most at once.
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// A slot for one request, or `None` (counted as rejected) when all are taken.
    pub(super) fn admit(self: &Arc<Self>) -> Option<Slot> {
        let admitted = self
            .running
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            Some(Slot(self.clone()))
        } else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Counts a request's end.
    pub(super) fn ended(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Ok => &self.ok,
            Outcome::Invalid => &self.invalid,
            Outcome::Failed => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a finished generation's tokens.
    pub(super) fn tokens(&self, end: &ReplyEnd) {
        self.prompt_tokens
            .fetch_add(end.prompt_tokens as u64, Ordering::Relaxed);
        self.cached_tokens
            .fetch_add(end.cached_tokens as u64, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(end.completion_tokens as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, with the engine's state when the backend reports it.
    pub(super) fn render(&self, engine: Option<EngineStats>) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        metric(
            "kestrel_requests_total",
            "counter",
            "Chat completion requests, by how they ended.",
            &[
                ("{status=\"ok\"}", get(&self.ok)),
                ("{status=\"invalid\"}", get(&self.invalid)),
                ("{status=\"rejected\"}", get(&self.rejected)),
                ("{status=\"failed\"}", get(&self.failed)),
            ],
        );
        metric(
            "kestrel_requests_in_flight",
            "gauge",
            "Requests decoding or waiting for a sequence.",
            &[("", self.running.load(Ordering::SeqCst) as u64)],
        );
        metric(
            "kestrel_requests_capacity",
            "gauge",
            "Requests admitted at most at once (--parallel plus --queue).",
            &[("", self.capacity as u64)],
        );
        metric(
            "kestrel_prompt_tokens_total",
            "counter",
            "Prompt tokens of finished generations.",
            &[("", get(&self.prompt_tokens))],
        );
        metric(
            "kestrel_cached_prompt_tokens_total",
            "counter",
            "Prompt tokens whose cache was reused instead of prefilled.",
            &[("", get(&self.cached_tokens))],
        );
        metric(
            "kestrel_completion_tokens_total",
            "counter",
            "Generated tokens of finished generations.",
            &[("", get(&self.completion_tokens))],
        );
        if let Some(e) = engine {
            let gauges: [(&str, &str, usize); 6] = [
                (
                    "kestrel_engine_sequences_running",
                    "Sequences admitted to the engine (prefilling or decoding).",
                    e.running,
                ),
                (
                    "kestrel_engine_sequences_waiting",
                    "Sequences waiting for the engine to admit them.",
                    e.waiting,
                ),
                (
                    "kestrel_engine_batch_rows",
                    "Tokens of all sequences in the engine's last forward pass.",
                    e.batch_rows,
                ),
                (
                    "kestrel_kv_positions_used",
                    "KV cache positions the running sequences hold.",
                    e.kv_used,
                ),
                (
                    "kestrel_kv_positions_reserved",
                    "KV cache positions reserved: what running sequences may grow to, plus prompts kept for reuse.",
                    e.kv_reserved,
                ),
                (
                    "kestrel_kv_positions_budget",
                    "KV cache positions the engine may reserve in all.",
                    e.kv_budget,
                ),
            ];
            for (name, help, value) in gauges {
                metric(name, "gauge", help, &[("", value as u64)]);
            }
        }
        out
    }
}

/// One admitted request's place; dropping it frees the place.
pub(super) struct Slot(Arc<Metrics>);

impl Slot {
    /// The counters this slot belongs to.
    pub(super) fn metrics(&self) -> Arc<Metrics> {
        self.0.clone()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_given_back() {
        let metrics = Metrics::new(2);
        let a = metrics.admit().expect("first");
        let _b = metrics.admit().expect("second");
        assert!(metrics.admit().is_none(), "a third is rejected");
        drop(a);
        assert!(metrics.admit().is_some(), "a freed slot is taken again");
        let text = metrics.render(Some(EngineStats {
            kv_budget: 4096,
            ..EngineStats::default()
        }));
        assert!(text.contains("kestrel_kv_positions_budget 4096"), "{text}");
        assert!(
            text.contains("kestrel_requests_total{status=\"rejected\"} 1"),
            "{text}"
        );
        assert!(text.contains("kestrel_requests_capacity 2"), "{text}");
    }
}
