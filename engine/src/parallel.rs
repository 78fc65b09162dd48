//! Work spread over candle's CPU thread pool.
//!
//! The engine's own CPU work (quantized matmuls, decode attention) runs on the pool candle's
//! tensor ops use: its workers stay hot from one op to the next, the calling thread takes a share
//! of the work instead of waiting for another pool to wake up, and two pools never spin against
//! each other on the same cores (with rayon beside candle's pool, two threads per core were
//! ready to run between ops).

use std::sync::Mutex;

/// Threads the pool runs on (`--threads`, or one per core).
pub fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// Runs `work` once for each task, spread over the pool; tasks are taken in order by whichever
/// thread is free.
pub fn for_each<T: Send>(tasks: Vec<T>, work: impl Fn(T) + Sync) {
    if tasks.len() < 2 || threads() == 1 {
        tasks.into_iter().for_each(work);
        return;
    }
    // The pool hands out index ranges; each task sits in its own slot so the thread given its
    // index can take it by value.
    let slots: Vec<Mutex<Option<T>>> = tasks.into_iter().map(|t| Mutex::new(Some(t))).collect();
    candle_core::utils::barrier_pool().execute_chunked(slots.len(), |range| {
        for slot in &slots[range] {
            let task = match slot.lock() {
                Ok(mut guard) => guard.take(),
                Err(poisoned) => poisoned.into_inner().take(),
            };
            if let Some(task) = task {
                work(task);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn runs_every_task_exactly_once() {
        let mut out = vec![0usize; 1000];
        let calls = AtomicUsize::new(0);
        let tasks: Vec<(usize, &mut [usize])> = out.chunks_mut(7).enumerate().collect();
        super::for_each(tasks, |(i, chunk)| {
            calls.fetch_add(1, Ordering::Relaxed);
            for v in chunk.iter_mut() {
                *v += i + 1;
            }
        });
        assert_eq!(calls.into_inner(), 1000usize.div_ceil(7));
        assert!(out.iter().enumerate().all(|(j, v)| *v == j / 7 + 1));
    }
}
