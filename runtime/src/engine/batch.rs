//! Continuous batching with chunked prefill: the decode steps of sessions
//! generating at the same time, and chunks of the prompts of sessions
//! starting, run as one multi-sequence forward pass
//! ([`Model::forward_segments`]), so N streams cost little more per step
//! than one (the weights are read once per step instead of N times), and a
//! long prompt never stalls the running streams: it goes through in chunks,
//! each sharing a pass with their decode steps, as vLLM's and llama.cpp's
//! servers do.
//!
//! It is a combining lock. A session that wants a decode step (one token)
//! or a prompt chunk queues its state and tokens and waits. The first
//! waiter finding no step running leads: it waits (at most
//! [`Batcher::GATHER`]) until every session that is generating has queued
//! its decode step, takes the queue in order as far as the pass's rows
//! (the leader's batch size) allow — decode steps first, then prompt
//! chunks — runs it on its own threads, and hands each session its result.
//! [`Batcher::exclusive`] (speculative verification) runs alone between
//! steps.
//!
//! Only sessions opened with [`SessionOptions::batched`](super::SessionOptions)
//! take part; the others run alone, as before.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::model::{Model, ModelError, State};

/// A queued step: a state and its tokens, lent by a waiting session.
struct Pending {
    ticket: u64,
    state: StatePtr,
    tokens: TokensPtr,
    /// A prompt chunk, not a decode step.
    prefill: bool,
}

/// The tokens of a session blocked in [`Batcher::step`] (same contract as
/// [`StatePtr`]).
struct TokensPtr(*const u32, usize);

// SAFETY: as `StatePtr`: read only by the leader that took it, while its
// owner is blocked.
unsafe impl Send for TokensPtr {}

/// A state owned by a session blocked in [`Batcher::decode`].
struct StatePtr(*mut State);

// SAFETY: the pointer is only dereferenced by the one leader that took it
// from the queue, while its owner is blocked waiting for the result; the
// mutex orders the owner's last use before the leader's and the leader's
// before the owner's next.
unsafe impl Send for StatePtr {}

#[derive(Default)]
struct Inner {
    queue: Vec<Pending>,
    /// A step (decode or exclusive) is running or being gathered.
    busy: bool,
    /// Sessions between their prompt and their end: the decode steps a
    /// leader waits for.
    generating: usize,
    /// Prompts waiting for their turn: they go before the next decode step,
    /// so a new request's first token waits for one step at most.
    prompts_waiting: usize,
    next_ticket: u64,
    /// Results of finished steps, by ticket, for their waiting owners.
    done: Vec<(u64, Result<(), String>)>,
    /// All rows' logits of a step (scratch, kept between steps).
    logits: Vec<f32>,
}

/// Batches the decode steps of the sessions of one engine (see the
/// [module docs](self)).
#[derive(Default)]
pub struct Batcher {
    inner: Mutex<Inner>,
    changed: Condvar,
    steps: AtomicU64,
    rows: AtomicU64,
    prompt_rows: AtomicU64,
    mixed_steps: AtomicU64,
    rows_per_step: [AtomicU64; 8],
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("steps", &self.steps.load(Ordering::Relaxed))
            .field("rows", &self.rows.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Counts of the batched steps so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Forward passes run.
    pub steps: u64,
    /// Decode rows in them (`rows / steps` is the mean batch size).
    pub rows: u64,
    /// Prompt tokens processed in them (chunked prefill).
    pub prompt_rows: u64,
    /// Passes that mixed prompt chunks with decode steps.
    pub mixed_steps: u64,
    /// Passes by their decode rows: `rows_per_step[i]` counts the passes
    /// with at most [`BatchStats::ROW_BOUNDS`]`[i]` rows (more than all the
    /// bounds in the last slot); prompt-only passes count as 0 rows.
    pub rows_per_step: [u64; 8],
}

impl BatchStats {
    /// Upper bounds of [`rows_per_step`](Self::rows_per_step)'s slots but
    /// the last.
    pub const ROW_BOUNDS: [u64; 7] = [1, 2, 4, 8, 16, 32, 64];
}

/// A session counted among the generating ones while this lives.
#[derive(Debug)]
pub(crate) struct Generating<'b>(&'b Batcher);

impl Drop for Generating<'_> {
    fn drop(&mut self) {
        let mut g = self.0.lock();
        g.generating -= 1;
        drop(g);
        // A leader may have been waiting for this session.
        self.0.changed.notify_all();
    }
}

impl Batcher {
    /// Longest a leader waits for the other generating sessions to queue
    /// their steps (they normally do within microseconds: sampling and
    /// handing out one token). A session held up longer (a slow client)
    /// joins the next step instead.
    pub const GATHER: Duration = Duration::from_millis(2);

    pub fn new() -> Batcher {
        Batcher::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The steps run so far.
    pub fn stats(&self) -> BatchStats {
        BatchStats {
            steps: self.steps.load(Ordering::Relaxed),
            rows: self.rows.load(Ordering::Relaxed),
            prompt_rows: self.prompt_rows.load(Ordering::Relaxed),
            mixed_steps: self.mixed_steps.load(Ordering::Relaxed),
            rows_per_step: std::array::from_fn(|i| self.rows_per_step[i].load(Ordering::Relaxed)),
        }
    }

    /// Marks a session as generating until the guard drops.
    pub(crate) fn generating(&self) -> Generating<'_> {
        self.lock().generating += 1;
        Generating(self)
    }

    /// Runs `f` (prompt processing) with no step running beside it.
    pub(crate) fn exclusive<R>(&self, f: impl FnOnce() -> R) -> R {
        let mut g = self.lock();
        g.prompts_waiting += 1;
        while g.busy {
            g = self.wait(g);
        }
        g.prompts_waiting -= 1;
        g.busy = true;
        drop(g);
        let out = catch_unwind(AssertUnwindSafe(f));
        self.lock().busy = false;
        self.changed.notify_all();
        out.unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    fn wait<'g>(&self, g: MutexGuard<'g, Inner>) -> MutexGuard<'g, Inner> {
        self.changed.wait(g).unwrap_or_else(|e| e.into_inner())
    }

    /// One decode step of `token` on `state`, batched with the steps other
    /// sessions queue meanwhile; `state`'s logits are set as
    /// [`Model::forward`] sets them.
    pub(crate) fn decode(
        &self,
        model: &Model<'_>,
        state: &mut State,
        token: u32,
    ) -> Result<(), ModelError> {
        self.step(model, state, std::slice::from_ref(&token), false)
    }

    /// A chunk of a prompt (at most half `state`'s batch size, so it fits
    /// beside the decode steps), batched with the other sessions' decode
    /// steps; `state`'s logits become the chunk's last token's.
    pub(crate) fn prefill(
        &self,
        model: &Model<'_>,
        state: &mut State,
        chunk: &[u32],
    ) -> Result<(), ModelError> {
        self.step(model, state, chunk, true)
    }

    /// The tokens per prompt chunk for a state of batch size `n_batch`.
    pub(crate) fn chunk_size(n_batch: usize) -> usize {
        (n_batch / 2).max(1)
    }

    fn step(
        &self,
        model: &Model<'_>,
        state: &mut State,
        tokens: &[u32],
        prefill: bool,
    ) -> Result<(), ModelError> {
        if tokens.is_empty() || tokens.len() > state.n_batch {
            return Err(ModelError::BatchMismatch {
                tokens: tokens.len(),
                sequences: state.n_batch,
            });
        }
        let mut g = self.lock();
        let ticket = g.next_ticket;
        g.next_ticket += 1;
        g.queue.push(Pending {
            ticket,
            state: StatePtr(state as *mut State),
            tokens: TokensPtr(tokens.as_ptr(), tokens.len()),
            prefill,
        });
        self.changed.notify_all();
        loop {
            if let Some(i) = g.done.iter().position(|d| d.0 == ticket) {
                let (_, result) = g.done.swap_remove(i);
                return result.map_err(|message| ModelError::BatchFailed { message });
            }
            let queued = g.queue.iter().any(|p| p.ticket == ticket);
            if queued && !g.busy && g.prompts_waiting == 0 {
                return self.lead(g, model, state, ticket);
            }
            g = self.wait(g);
        }
    }

    /// Gathers the queue, runs it with `state`'s run first, and posts the
    /// results of the others.
    fn lead(
        &self,
        mut g: MutexGuard<'_, Inner>,
        model: &Model<'_>,
        state: &mut State,
        ticket: u64,
    ) -> Result<(), ModelError> {
        g.busy = true;
        let deadline = Instant::now() + Self::GATHER;
        while g.queue.iter().filter(|p| !p.prefill).count() < g.generating {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let mine = g
            .queue
            .iter()
            .position(|p| p.ticket == ticket)
            .expect("the leader's step is queued");
        let own = g.queue.remove(mine);
        let rows = take_rows(&mut g.queue, state.n_batch.max(1) - own.tokens.1);
        let mut logits = std::mem::take(&mut g.logits);
        drop(g);

        let runs: Vec<&Pending> = std::iter::once(&own).chain(&rows).collect();
        let lens: Vec<usize> = runs.iter().map(|p| p.tokens.1).collect();
        // SAFETY: each pointer comes from a session blocked in `step` until
        // its ticket is in `done` (see `StatePtr`); the states are distinct
        // (one per session, each queued once) and none is `state`; the
        // token slices live in those sessions' frames meanwhile.
        let tokens: Vec<u32> = runs
            .iter()
            .flat_map(|p| unsafe { std::slice::from_raw_parts(p.tokens.0, p.tokens.1) })
            .copied()
            .collect();
        let mut others: Vec<&mut State> = rows.iter().map(|p| unsafe { &mut *p.state.0 }).collect();
        let result = catch_unwind(AssertUnwindSafe(|| {
            model.forward_segments(state, &mut others, &lens, &tokens, &mut logits)
        }))
        .unwrap_or_else(|p| {
            Err(ModelError::BatchFailed {
                message: panic_message(&p),
            })
        });
        drop(others);
        self.count(&runs);

        let mut g = self.lock();
        let shared = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
        g.done
            .extend(rows.iter().map(|p| (p.ticket, shared.clone())));
        g.logits = logits;
        g.busy = false;
        drop(g);
        self.changed.notify_all();
        result
    }

    fn count(&self, runs: &[&Pending]) {
        let prompt: usize = runs.iter().filter(|p| p.prefill).map(|p| p.tokens.1).sum();
        let decode = runs.iter().filter(|p| !p.prefill).count();
        self.steps.fetch_add(1, Ordering::Relaxed);
        self.rows.fetch_add(decode as u64, Ordering::Relaxed);
        self.prompt_rows.fetch_add(prompt as u64, Ordering::Relaxed);
        if prompt > 0 && decode > 0 {
            self.mixed_steps.fetch_add(1, Ordering::Relaxed);
        }
        let slot = BatchStats::ROW_BOUNDS
            .iter()
            .position(|&b| decode as u64 <= b)
            .unwrap_or(BatchStats::ROW_BOUNDS.len());
        self.rows_per_step[slot].fetch_add(1, Ordering::Relaxed);
    }
}

/// Takes queued steps for a pass with `room` rows left: every decode step
/// that fits, then prompt chunks in the order they came while they fit
/// (the others wait for the next pass).
fn take_rows(queue: &mut Vec<Pending>, mut room: usize) -> Vec<Pending> {
    let mut taken = Vec::new();
    for prefill in [false, true] {
        let mut i = 0;
        while i < queue.len() {
            let p = &queue[i];
            if p.prefill == prefill && p.tokens.1 <= room {
                room -= p.tokens.1;
                taken.push(queue.remove(i));
            } else {
                i += 1;
            }
        }
    }
    taken
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}
