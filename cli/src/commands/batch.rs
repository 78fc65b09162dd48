//! `kestrel batch`: many tasks from a JSON Lines file, results to another, resumable.
//!
//! Each worker owns an [`Agent`] (a session, so a KV cache) and takes tasks from a shared queue.
//! Every task's prompt starts with the same system prompt and tool schemas; a worker's session
//! keeps that prefix cached from one task to the next, so it is prefilled once per worker, not
//! once per task (each result reports its first turn's reused tokens). A result line is written
//! and flushed as soon as its task ends; tasks whose id is already in the output are skipped, so an
//! interrupted batch resumes where it stopped.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::args::BatchArgs;
use crate::loading::start_engine;
use crate::options::{config, options, tool_choice};
use crate::startup::{EXIT_INTERRUPTED, HostSetup, Services};
use kestrel::agent::{Agent, AgentError, AgentEvent, AgentOptions};
use kestrel::backend::Backend;
use kestrel::mcp::ElicitationHandle;

/// One line of the tasks file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskLine {
    /// The task text.
    task: String,
    /// Its id in the results (default: its line number).
    id: Option<Value>,
    max_rounds: Option<usize>,
    max_tokens: Option<usize>,
    thinking: Option<bool>,
    tool_choice: Option<String>,
    system: Option<String>,
    seed: Option<u64>,
}

#[derive(Debug)]
struct Task {
    id: Value,
    line: TaskLine,
}

fn id_key(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn read_tasks(path: &Path) -> anyhow::Result<Vec<Task>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the tasks file {}", path.display()))?;
    let mut tasks = Vec::new();
    let mut seen = HashSet::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: TaskLine = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a task line", path.display(), n + 1))?;
        let id = parsed.id.clone().unwrap_or(json!(n + 1));
        if !seen.insert(id_key(&id)) {
            bail!("{}:{}: the id {id} is used twice", path.display(), n + 1);
        }
        tasks.push(Task { id, line: parsed });
    }
    Ok(tasks)
}

/// Ids already in the results file. A last line cut short by an interrupted write is removed.
fn done_ids(path: &Path) -> anyhow::Result<HashSet<String>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(HashSet::new());
    };
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    if complete.len() != text.len() {
        std::fs::write(path, complete)
            .with_context(|| format!("cannot repair {}", path.display()))?;
    }
    Ok(complete
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v.get("id").map(id_key))
        .collect())
}

fn task_options(base: &AgentOptions, line: &TaskLine, turn_flag: Option<usize>) -> AgentOptions {
    let mut o = base.clone();
    if let Some(n) = line.max_rounds {
        o.max_rounds = n;
    }
    if let Some(n) = line.max_tokens {
        o.max_total_tokens = n;
        o.max_turn_tokens = turn_flag.map_or(n, |t| t.min(n));
    }
    if line.thinking.is_some() {
        o.thinking = line.thinking;
    }
    if let Some(c) = &line.tool_choice {
        o.first_tool_choice = tool_choice(Some(c));
    }
    if let Some(s) = &line.system {
        o.system = (!s.is_empty()).then(|| s.clone());
    }
    if let Some(seed) = line.seed {
        o.seed = Some(seed);
        if let Some(sampling) = o.sampling.as_mut() {
            sampling.seed = Some(seed);
        }
    }
    o
}

/// Runs the command; the exit code is 1 when a task failed.
pub fn run(args: &BatchArgs) -> anyhow::Result<u8> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let base = options(&args.agent)?;
    let tasks = read_tasks(&args.tasks)?;
    let out_path = args
        .out
        .clone()
        .unwrap_or_else(|| args.tasks.with_extension("results.jsonl"));
    let done = done_ids(&out_path)?;
    let total = tasks.len();
    let queue: VecDeque<Task> = tasks
        .into_iter()
        .filter(|t| !done.contains(&id_key(&t.id)))
        .collect();
    eprintln!(
        "batch: {total} tasks, {} already in {}, {} to run",
        total - queue.len(),
        out_path.display(),
        queue.len()
    );
    if queue.is_empty() {
        return Ok(0);
    }
    let mut config = config(args.agent.config.as_ref())?;
    config.sandbox_servers |= args.agent.sandbox_servers;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out_path)
        .with_context(|| format!("cannot open {}", out_path.display()))?;
    // The workers' generations are sequences of one batch on one engine.
    let workers = args.concurrency.min(queue.len());
    let backend = start_engine(&args.model, &args.engine, workers)?;
    let services = Services::start(
        &config,
        HostSetup {
            sampling: Some((&backend, &base.approval, None)),
            elicitation: args.agent.elicit.map(ElicitationHandle::from),
            ..HostSetup::default()
        },
        "interrupted: finished tasks are in the results file; run again to resume",
    )?;
    services.warn_unavailable();
    let result = run_queue(&services, &backend, args, &base, queue, (out, total));
    services.shutdown();
    result
}

/// Runs the queued tasks on `--concurrency` workers, appending each result to `out` as it ends.
/// Ctrl-C cancels the running tasks, whose results are not written (a resume runs them again).
fn run_queue(
    services: &Services,
    backend: &Arc<dyn Backend>,
    args: &BatchArgs,
    base: &AgentOptions,
    queue: VecDeque<Task>,
    (out, total): (std::fs::File, usize),
) -> anyhow::Result<u8> {
    let out = Mutex::new(std::io::BufWriter::new(out));
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_position((total - queue.len()) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} tasks, {elapsed} elapsed, eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let queue = Mutex::new(queue);
    let failures = Mutex::new(0usize);
    let cancelled = AtomicBool::new(false);
    let turn_flag = args.agent.max_turn_tokens;
    let workers = args
        .concurrency
        .min(queue.lock().map(|q| q.len()).unwrap_or(1));
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut handles = Vec::new();
        for _ in 0..workers {
            let handle = services.runtime.handle().clone();
            let (backend, host) = (backend.clone(), services.host.clone());
            let (queue, out, bar, failures, cancelled) =
                (&queue, &out, &bar, &failures, &cancelled);
            handles.push(scope.spawn(move || -> anyhow::Result<()> {
                let mut agent = Agent::with_backend(backend, host, handle, base.clone())?;
                let cancel = agent.canceller();
                let _interruptible = services.cancel_on_interrupt(&cancel);
                loop {
                    if cancelled.load(Ordering::SeqCst) {
                        return Ok(());
                    }
                    let Some(task) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                        return Ok(());
                    };
                    *agent.options_mut() = task_options(base, &task.line, turn_flag);
                    let Some(result) = run_one(&mut agent, &task) else {
                        cancelled.store(true, Ordering::SeqCst);
                        return Ok(());
                    };
                    if result.get("error").is_some_and(|e| !e.is_null())
                        && let Ok(mut f) = failures.lock()
                    {
                        *f += 1;
                    }
                    let mut out = out
                        .lock()
                        .map_err(|_| anyhow::anyhow!("results writer poisoned"))?;
                    writeln!(out, "{result}")?;
                    out.flush()?;
                    bar.inc(1);
                }
            }));
        }
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a batch worker panicked"))??;
        }
        Ok(())
    })?;
    bar.finish();
    if cancelled.load(Ordering::SeqCst) {
        eprintln!(
            "batch: interrupted; finished tasks are in the results file, run again to resume"
        );
        return Ok(EXIT_INTERRUPTED);
    }
    let failed = failures.lock().map(|f| *f).unwrap_or(0);
    if failed > 0 {
        eprintln!("batch: {failed} task(s) failed; their lines in the results say why");
        return Ok(1);
    }
    Ok(0)
}

/// One task's result line; `None` when the task was cancelled.
fn run_one(agent: &mut Agent, task: &Task) -> Option<Value> {
    let started = Instant::now();
    let mut calls: Vec<Value> = Vec::new();
    let outcome = agent.run(&task.line.task, &mut |e| match e {
        AgentEvent::ToolCall {
            turn,
            index,
            name,
            arguments,
        } => {
            calls.push(json!({"turn": turn, "index": index, "name": name, "arguments": arguments}));
        }
        AgentEvent::ToolResult {
            turn,
            index,
            text,
            is_error,
            ..
        } => {
            // A turn's results come after all its calls: each goes to its own call.
            let call = calls
                .iter_mut()
                .rev()
                .find(|c| c["turn"] == *turn && c["index"] == *index);
            if let Some(Value::Object(call)) = call {
                call.insert("result".into(), json!(text));
                call.insert("is_error".into(), json!(is_error));
            }
        }
        _ => {}
    });
    Some(match outcome {
        Err(AgentError::Cancelled) => return None,
        Ok(o) => json!({
            "id": task.id, "task": task.line.task, "answer": o.answer,
            "tool_calls": calls, "turns": o.turns, "limited_by": o.limited_by,
            "elapsed_s": started.elapsed().as_secs_f64(), "error": null,
        }),
        Err(e) => json!({
            "id": task.id, "task": task.line.task, "answer": null, "tool_calls": calls,
            "elapsed_s": started.elapsed().as_secs_f64(), "error": e.to_string(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_lines_are_checked_and_ids_default_to_line_numbers() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("t.jsonl");
        std::fs::write(
            &path,
            "{\"task\": \"a\"}\n\n{\"task\": \"b\", \"id\": \"x\", \"max_rounds\": 2}\n",
        )
        .expect("write");
        let tasks = read_tasks(&path).expect("tasks");
        assert_eq!(tasks.len(), 2);
        assert_eq!(
            (tasks[0].id.clone(), tasks[1].id.clone()),
            (json!(1), json!("x"))
        );
        std::fs::write(&path, "{\"task\": \"a\", \"max_round\": 2}\n").expect("write");
        let e = format!("{:#}", read_tasks(&path).expect_err("typo"));
        assert!(e.contains("t.jsonl:1") && e.contains("max_round"), "{e}");
        std::fs::write(&path, "{\"task\": \"a\", \"id\": 2}\n{\"task\": \"b\"}\n").expect("write");
        let e = format!("{:#}", read_tasks(&path).expect_err("dup"));
        assert!(e.contains("used twice"), "{e}");
    }

    #[test]
    fn done_ids_survive_a_cut_last_line() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("r.jsonl");
        std::fs::write(&path, "{\"id\": 1}\n{\"id\": \"x\"}\n{\"id\": 3, \"ans").expect("write");
        let done = done_ids(&path).expect("done");
        assert_eq!(done, HashSet::from(["1".to_string(), "x".to_string()]));
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "{\"id\": 1}\n{\"id\": \"x\"}\n"
        );
    }
}
