//! The batching engine: sequences submitted together give what each gives alone (greedy, with
//! their own hooks, a long prompt prefilled in chunks between the others' decode steps), a
//! cancelled one stops and frees its pages, and admission waits for KV budget.

use kestrel_tests as common;

use std::sync::Arc;
use std::sync::mpsc;

use kestrel_engine::{
    Engine, EngineOptions, Event, FinishReason, GenerateRequest, KvType, LoadOptions, Model,
    SamplingParams, Session, StepAction, StepHook,
};

fn model() -> Arc<Model> {
    let dir = common::fixtures().join("models/qwen3-tiny-fullvocab");
    let options = LoadOptions {
        kv_type: Some(KvType::F16),
        ..LoadOptions::default()
    };
    Arc::new(Model::load(&dir, &options).expect("load"))
}

fn request(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt,
        max_tokens,
        sampling: SamplingParams::greedy(),
        stop_ids: Some(Vec::new()),
    }
}

fn prompt(n: u32, seed: u32) -> Vec<u32> {
    (0..n)
        .map(|i| (i * 7919 + seed * 104_729) % 151_000)
        .collect()
}

/// Forces three tokens at its first step, then samples.
struct ForceFirst(bool);

impl StepHook for ForceFirst {
    fn before_step(&mut self, _generated: &[u32], _logits: &mut [f32]) -> StepAction {
        if std::mem::replace(&mut self.0, true) {
            StepAction::Sample
        } else {
            StepAction::Force(vec![5, 6, 7])
        }
    }
}

/// Forbids the tokens below 1000.
struct Forbid;

impl StepHook for Forbid {
    fn before_step(&mut self, _generated: &[u32], logits: &mut [f32]) -> StepAction {
        logits[..1000].fill(f32::NEG_INFINITY);
        StepAction::Sample
    }
}

fn hook(kind: usize) -> Option<Box<dyn StepHook + Send>> {
    match kind {
        1 => Some(Box::new(ForceFirst(false))),
        2 => Some(Box::new(Forbid)),
        _ => None,
    }
}

fn alone(model: &Arc<Model>, request: GenerateRequest, kind: usize) -> Vec<u32> {
    let mut hook = hook(kind);
    let mut session = Session::new(model.clone());
    let hook = hook.as_deref_mut().map(|h| h as &mut dyn StepHook);
    session
        .generate(request, hook)
        .map(|t| t.expect("token").id)
        .collect()
}

/// Submits and collects (tokens, finish reason) through a channel.
fn submit(
    engine: &Engine,
    request: GenerateRequest,
    kind: usize,
) -> (kestrel_engine::Ticket, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel();
    let ticket = engine.submit(request, hook(kind), move |e| tx.send(e).is_ok());
    (ticket, rx)
}

fn collect(rx: &mpsc::Receiver<Event>) -> (Vec<u32>, FinishReason) {
    let mut ids = Vec::new();
    loop {
        match rx.recv().expect("an event") {
            Event::Token(t) => ids.push(t.id),
            Event::Finished {
                reason, generated, ..
            } => {
                assert_eq!(generated, ids);
                return (ids, reason);
            }
            Event::Failed(e) => panic!("failed: {e}"),
        }
    }
}

#[test]
fn sequences_together_choose_as_they_do_alone() {
    let model = model();
    let options = EngineOptions {
        max_sequences: 4,
        step_tokens: 64,
        kv_budget: Some(10_000),
    };
    let engine = Engine::start(model.clone(), options).expect("engine");
    // A long prompt (prefilled in chunks of at most 64 rows, between the others' steps), two
    // hooked sequences and a plain one.
    let cases = [
        (prompt(300, 1), 0),
        (prompt(40, 2), 1),
        (prompt(25, 3), 2),
        (prompt(60, 4), 0),
    ];
    let receivers: Vec<_> = cases
        .iter()
        .map(|(p, kind)| submit(&engine, request(p.clone(), 12), *kind))
        .collect();
    for ((p, kind), (_, rx)) in cases.iter().zip(&receivers) {
        let (ids, reason) = collect(rx);
        assert_eq!(reason, FinishReason::MaxTokens);
        assert_eq!(
            ids,
            alone(&model, request(p.clone(), 12), *kind),
            "hook {kind}"
        );
        if *kind == 1 {
            assert_eq!(ids[..3], [5, 6, 7]);
        }
        if *kind == 2 {
            assert!(ids.iter().all(|&id| id >= 1000));
        }
    }
}

#[test]
fn a_cancelled_sequence_stops_keeps_its_cache_for_the_next_turn_and_yields_its_pages() {
    let model = model();
    let options = EngineOptions {
        kv_budget: Some(700),
        ..EngineOptions::default()
    };
    let engine = Engine::start(model.clone(), options).expect("engine");
    let first = prompt(300, 5);
    let (ticket, rx) = submit(&engine, request(first.clone(), 300), 0);
    let mut seen = Vec::new();
    let reason = loop {
        match rx.recv().expect("event") {
            Event::Token(t) => {
                seen.push(t.id);
                if seen.len() == 3 {
                    ticket.cancel();
                }
            }
            Event::Finished { reason, .. } => break reason,
            Event::Failed(e) => panic!("{e}"),
        }
    };
    assert_eq!(reason, FinishReason::Cancelled);
    assert!(seen.len() < 10, "stopped promptly ({} tokens)", seen.len());
    // The next turn of that conversation takes over its cache: what was computed is not
    // computed again.
    let mut next = first.clone();
    next.extend(&seen);
    next.extend(prompt(20, 8));
    let (_, rx) = submit(&engine, request(next.clone(), 2), 0);
    let reused = loop {
        match rx.recv().expect("event") {
            Event::Finished { timings, .. } => break timings.reused_tokens,
            Event::Failed(e) => panic!("{e}"),
            Event::Token(_) => {}
        }
    };
    assert!(
        (300..next.len()).contains(&reused),
        "reused {reused} of {}",
        next.len()
    );
    // A prompt that needs the room gets it: the kept caches give their pages back.
    let (_, rx) = submit(&engine, request(prompt(600, 9), 50), 0);
    assert_eq!(collect(&rx).1, FinishReason::MaxTokens);

    // A receiver that goes away cancels too: the engine stays usable.
    let (_, rx) = submit(&engine, request(prompt(10, 6), 100_000), 0);
    drop(rx);
    let (_, rx) = submit(&engine, request(prompt(10, 7), 3), 0);
    assert_eq!(collect(&rx).1, FinishReason::MaxTokens);
}

#[test]
fn admission_waits_for_the_kv_budget_and_refuses_what_never_fits() {
    let model = model();
    let options = EngineOptions {
        kv_budget: Some(250),
        ..EngineOptions::default()
    };
    let engine = Engine::start(model.clone(), options).expect("engine");
    // Each needs 100 + 100 positions: only one fits at a time, all complete.
    let receivers: Vec<_> = (0..3)
        .map(|i| submit(&engine, request(prompt(100, i), 100), 0))
        .collect();
    for (_, rx) in &receivers {
        let (ids, reason) = collect(rx);
        assert_eq!((ids.len(), reason), (100, FinishReason::MaxTokens));
    }
    let (_, rx) = submit(&engine, request(prompt(200, 9), 100), 0);
    match rx.recv().expect("event") {
        Event::Failed(e) => {
            let e = e.to_string();
            assert!(e.contains("300 positions") && e.contains("250"), "{e}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_shared_prefix_is_computed_once_and_a_continuation_reuses_the_finished_cache() {
    let model = model();
    let engine = Engine::start(model.clone(), EngineOptions::default()).expect("engine");
    let system = prompt(200, 11);
    let prompts: Vec<Vec<u32>> = (0..4)
        .map(|i| {
            system
                .iter()
                .copied()
                .chain(prompt(10 + i, 20 + i))
                .collect()
        })
        .collect();
    let receivers: Vec<_> = prompts
        .iter()
        .map(|p| submit(&engine, request(p.clone(), 8), 0))
        .collect();
    let mut reused = Vec::new();
    let mut first_output = Vec::new();
    for (p, (_, rx)) in prompts.iter().zip(&receivers) {
        let mut ids = Vec::new();
        loop {
            match rx.recv().expect("event") {
                Event::Token(t) => ids.push(t.id),
                Event::Finished { timings, .. } => {
                    reused.push(timings.reused_tokens);
                    assert_eq!(timings.prefilled_tokens + timings.reused_tokens, p.len());
                    break;
                }
                Event::Failed(e) => panic!("{e}"),
            }
        }
        assert_eq!(ids, alone(&model, request(p.clone(), 8), 0));
        if first_output.is_empty() {
            first_output = ids;
        }
    }
    // One computes the 200 shared positions; the others copy them.
    assert_eq!(
        reused.iter().filter(|&&n| n == 200).count(),
        3,
        "{reused:?}"
    );
    assert_eq!(reused.iter().filter(|&&n| n == 0).count(), 1, "{reused:?}");

    // The next turn of the first conversation: its prompt, its answer (all but the last token,
    // which the cache never saw), and more.
    let mut next = prompts[0].clone();
    next.extend(&first_output);
    next.extend(prompt(5, 30));
    let (_, rx) = submit(&engine, request(next.clone(), 4), 0);
    let timings = loop {
        match rx.recv().expect("event") {
            Event::Finished { timings, .. } => break timings,
            Event::Failed(e) => panic!("{e}"),
            Event::Token(_) => {}
        }
    };
    assert_eq!(
        timings.reused_tokens,
        prompts[0].len() + first_output.len() - 1
    );
}
