//! A persistent pool of worker threads for the forward pass.
//!
//! A 135M-parameter model runs ~150 parallel steps per generated token, each
//! a few microseconds of arithmetic, so starting threads per step (tens of
//! microseconds) would cost more than the work. The pool starts its threads
//! once, with the state, and hands each step to them through shared atomics.
//!
//! A step is `n` independent tasks ([`Pool::run`]). The calling thread
//! publishes the step, bumps an epoch counter and starts taking tasks from a
//! shared counter; workers that are spinning see the epoch within a few
//! hundred nanoseconds and take tasks too (workers that went to sleep are
//! unparked first). When no task is left, the caller closes the step and
//! waits only for the workers that joined it to finish their last task. A
//! worker that arrives after that — descheduled on a busy machine, or
//! still waking up — skips the step. So a step never waits for a thread
//! that has not started, and the caller alone finishes any step: on a
//! loaded machine the work flows to whichever threads get a core.
//!
//! * A worker spins on the epoch for a short while after each step
//!   ([`SPIN`]) — the next step of the forward pass usually arrives within
//!   microseconds — then parks, so an idle model costs no CPU.
//! * A task that panics on any thread is caught there; the step stops
//!   handing out tasks, `run` waits for the threads in it and returns
//!   [`JobPanicked`] instead of hanging or unwinding through the pool.
//!
//! Tasks are `Fn(thread, task)` closures that borrow the caller's stack:
//! `run` does not return before every thread that joined has left. The
//! thread index (0 for the caller) lets a task use per-thread scratch.

use std::cell::UnsafeCell;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next step before it parks.
const SPIN: Duration = Duration::from_micros(200);
/// How long `run` spins for the workers in a step to finish their last task
/// before it starts yielding its core between checks (one may have been
/// descheduled mid-task). Yielding early is costly when other processes are
/// runnable: the core goes to them for a whole time slice.
const WAIT_SPIN: Duration = Duration::from_micros(200);

/// A step's tasks: `f(thread, task)`.
type Tasks = dyn Fn(usize, usize) + Sync;

/// A task panicked on one of the pool's threads (the first panic's message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobPanicked {
    pub message: String,
}

impl fmt::Display for JobPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a worker thread panicked: {}", self.message)
    }
}

impl std::error::Error for JobPanicked {}

/// Keeps a hot atomic on a cache line of its own.
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

/// The step being run: its tasks (lifetime erased), their count and its
/// number.
#[derive(Clone, Copy)]
struct Step {
    tasks: *const Tasks,
    n: usize,
    id: usize,
}

struct Shared {
    /// Bumped once per step (and once to shut down).
    epoch: Padded<AtomicUsize>,
    /// The next task of the current step to hand out.
    next: Padded<AtomicUsize>,
    /// Workers inside the current step.
    active: Padded<AtomicUsize>,
    /// Set when the current step has no task left to hand out: workers
    /// arriving later skip it.
    closed: Padded<AtomicBool>,
    /// The current step. Written by `run` while no worker is in a step and
    /// `closed` is set; read by a worker only after it joined (`active`)
    /// and saw `closed` clear, which orders the read after the write.
    step: UnsafeCell<Option<Step>>,
    /// Per worker: parked (or about to park) and needs an unpark.
    sleeping: Vec<Padded<AtomicBool>>,
    shutdown: AtomicBool,
    /// The first panic of the current step.
    panic: Mutex<Option<String>>,
    panicked: AtomicBool,
}

// SAFETY: `step` follows the protocol described on it: `run` (which holds
// `&mut Pool`) writes it only while `active` is zero and `closed` is set,
// and a worker reads it only between incrementing `active` and seeing
// `closed` clear (SeqCst on both sides) and decrementing `active`. The tasks
// it points to are `Sync` and outlive the step (`run` waits for `active` to
// drain before returning). Everything else is atomics or a mutex.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

impl Shared {
    fn record_panic(&self, payload: Box<dyn std::any::Any + Send>) {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "(non-string panic payload)".to_string()
        };
        let mut slot = self.panic.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(message);
        self.panicked.store(true, Ordering::Release);
    }

    /// Takes and runs tasks of `step` until none is left (or one panicked).
    fn work(&self, step: Step, thread: usize) {
        // SAFETY: the tasks outlive the step (see `Shared`'s safety note).
        let tasks = unsafe { &*step.tasks };
        let result = catch_unwind(AssertUnwindSafe(|| {
            loop {
                let t = self.next.0.fetch_add(1, Ordering::Relaxed);
                if t >= step.n || self.panicked.load(Ordering::Relaxed) {
                    break;
                }
                tasks(thread, t);
            }
        }));
        if let Err(p) = result {
            self.record_panic(p);
        }
    }
}

/// A fixed set of threads that run steps together; see the module docs.
pub struct Pool {
    shared: Arc<Shared>,
    /// Threads 1..n (the caller of `run` is thread 0).
    workers: Vec<(Thread, JoinHandle<()>)>,
    steps: usize,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("n_threads", &self.n_threads())
            .finish()
    }
}

impl Pool {
    /// A pool of `n_threads` threads in all: the caller of [`run`](Self::run)
    /// and `n_threads - 1` workers started now.
    pub fn new(n_threads: usize) -> std::io::Result<Pool> {
        let n_workers = n_threads.max(1) - 1;
        let shared = Arc::new(Shared {
            epoch: Padded::default(),
            next: Padded::default(),
            active: Padded::default(),
            closed: Padded(AtomicBool::new(true)),
            step: UnsafeCell::new(None),
            sleeping: (0..n_workers).map(|_| Padded::default()).collect(),
            shutdown: AtomicBool::new(false),
            panic: Mutex::new(None),
            panicked: AtomicBool::new(false),
        });
        let mut pool = Pool {
            shared,
            workers: Vec::with_capacity(n_workers),
            steps: 0,
        };
        for w in 0..n_workers {
            let shared = Arc::clone(&pool.shared);
            // On failure `pool` drops here and stops the workers started so far.
            let handle = std::thread::Builder::new()
                .name(format!("spinel-worker-{}", w + 1))
                .spawn(move || worker(&shared, w))?;
            pool.workers.push((handle.thread().clone(), handle));
        }
        Ok(pool)
    }

    /// Threads that may take part in a step (the caller included).
    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(thread, task)` once for every task in `0..n`, each on one of
    /// the pool's threads (`thread` is 0 for the caller, which always takes
    /// part, and `1..n_threads()` for workers), and returns when all are
    /// done. Which thread runs which task, and how many threads take part,
    /// is up to timing: tasks must not depend on it (other than through
    /// per-thread scratch indexed by `thread`).
    ///
    /// A panic inside `f` is caught; no further tasks start, and once the
    /// threads in the step have left, the first panic's message comes back
    /// as the error.
    pub fn run(&mut self, n: usize, f: &(dyn Fn(usize, usize) + Sync)) -> Result<(), JobPanicked> {
        let sh = &*self.shared;
        if self.workers.is_empty() || n <= 1 {
            return catch_unwind(AssertUnwindSafe(|| (0..n).for_each(|t| f(0, t)))).map_err(|p| {
                sh.record_panic(p);
                self.take_panic().unwrap_or_else(|| JobPanicked {
                    message: String::new(),
                })
            });
        }
        self.steps += 1;
        // SAFETY: the lifetime is erased only for as long as workers may
        // use the pointer: this function does not return (or unwind: tasks
        // run under `catch_unwind`) before `active` is back to zero with
        // `closed` set, after which no worker touches the step.
        let tasks: *const Tasks = unsafe { std::mem::transmute(f) };
        let step = Step {
            tasks,
            n,
            id: self.steps,
        };
        // SAFETY: no worker is in a step (`active` drained at the end of
        // the previous `run`) and `closed` is set, so none reads `step`
        // before the `closed` store below publishes it.
        unsafe { *sh.step.get() = Some(step) };
        sh.next.0.store(0, Ordering::Relaxed);
        sh.closed.0.store(false, Ordering::SeqCst);
        // SeqCst pairs with the sleeping flag's store and reload in
        // `wait_for_step`: either we see it set and unpark, or it sees the
        // new epoch.
        sh.epoch.0.fetch_add(1, Ordering::SeqCst);
        for (i, (thread, _)) in self.workers.iter().enumerate() {
            if sh.sleeping[i].0.load(Ordering::SeqCst) {
                thread.unpark();
            }
        }
        sh.work(step, 0);
        // No task left to hand out: late workers skip the step, and we wait
        // for those inside it.
        sh.closed.0.store(true, Ordering::SeqCst);
        let mut spins = 0u32;
        let mut start = None;
        while sh.active.0.load(Ordering::SeqCst) != 0 {
            spins = spins.wrapping_add(1);
            let spinning =
                spins % 64 != 0 || start.get_or_insert_with(Instant::now).elapsed() < WAIT_SPIN;
            if spinning {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        match self.take_panic() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn take_panic(&self) -> Option<JobPanicked> {
        let sh = &*self.shared;
        if !sh.panicked.swap(false, Ordering::AcqRel) {
            return None;
        }
        let message = sh
            .panic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default();
        Some(JobPanicked { message })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let sh = &*self.shared;
        sh.shutdown.store(true, Ordering::SeqCst);
        sh.epoch.0.fetch_add(1, Ordering::SeqCst);
        for (thread, _) in &self.workers {
            thread.unpark();
        }
        for (_, handle) in self.workers.drain(..) {
            let _ = handle.join();
        }
    }
}

/// The loop of worker `w` (thread `w + 1` of the pool).
fn worker(sh: &Shared, w: usize) {
    let mut seen = 0usize;
    let mut last_step = 0usize;
    loop {
        seen = wait_for_step(sh, w, seen);
        if sh.shutdown.load(Ordering::Acquire) {
            return;
        }
        // Join, then check that the step is still open (see `Shared`).
        sh.active.0.fetch_add(1, Ordering::SeqCst);
        if !sh.closed.0.load(Ordering::SeqCst) {
            // SAFETY: joined and saw `closed` clear: `run` wrote the step
            // before clearing it and will not write it again before we
            // leave.
            if let Some(step) = unsafe { *sh.step.get() } {
                // A worker that saw an old epoch late may have joined the
                // next step already; never run one step twice.
                if step.id != last_step {
                    last_step = step.id;
                    sh.work(step, w + 1);
                }
            }
        }
        sh.active.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits until the epoch differs from `seen` and returns it: spins for
/// [`SPIN`], then parks until `run` unparks this worker.
fn wait_for_step(sh: &Shared, w: usize, seen: usize) -> usize {
    let start = Instant::now();
    let mut i = 0u32;
    loop {
        let e = sh.epoch.0.load(Ordering::Acquire);
        if e != seen {
            return e;
        }
        i = i.wrapping_add(1);
        if i % 64 != 0 || start.elapsed() < SPIN {
            std::hint::spin_loop();
            continue;
        }
        sh.sleeping[w].0.store(true, Ordering::SeqCst);
        let e = sh.epoch.0.load(Ordering::SeqCst);
        if e == seen {
            // An unpark between the load and here makes this return at once.
            std::thread::park();
        }
        sh.sleeping[w].0.store(false, Ordering::Relaxed);
    }
}

/// Rows `chunk · size .. (chunk + 1) · size` of `0..n`.
pub fn chunk(n: usize, size: usize, chunk: usize) -> std::ops::Range<usize> {
    (chunk * size).min(n)..((chunk + 1) * size).min(n)
}

/// A mutable slice that several threads write through at disjoint indices.
///
/// Each task writes its own part of an output (rows, or columns of every
/// row) without splitting the slice up front.
#[derive(Clone, Copy)]
pub struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: it stands for a `&mut [T]` shared by threads that only touch
// disjoint elements (the contract of `slice`).
unsafe impl<T: Send> Send for SharedMut<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}

impl<'a, T> SharedMut<'a, T> {
    pub fn new(s: &'a mut [T]) -> Self {
        SharedMut {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _borrow: std::marker::PhantomData,
        }
    }

    /// Elements `range` of the slice.
    ///
    /// # Safety
    /// No two threads may hold overlapping ranges at the same time.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, range: std::ops::Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (checked); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_task_runs_once() {
        for n_threads in [1usize, 2, 3, 8] {
            let mut pool = Pool::new(n_threads).unwrap();
            assert_eq!(pool.n_threads(), n_threads);
            let n = 37;
            let hits: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
            let threads_seen: Vec<AtomicU64> = (0..n_threads).map(|_| AtomicU64::new(0)).collect();
            // Many tiny steps back to back (fewer where threads outnumber
            // the cores): no task lost, none run twice.
            let steps = if n_threads <= 2 { 20_000 } else { 2_000 };
            for _ in 0..steps {
                pool.run(n, &|thread, t| {
                    hits[t].fetch_add(1, Ordering::Relaxed);
                    threads_seen[thread].fetch_add(1, Ordering::Relaxed);
                })
                .unwrap();
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == steps));
            let total: u64 = threads_seen.iter().map(|h| h.load(Ordering::Relaxed)).sum();
            assert_eq!(total, steps * n as u64);
        }
    }

    #[test]
    fn steps_after_the_workers_parked_still_run() {
        let mut pool = Pool::new(3).unwrap();
        let sum = AtomicU64::new(0);
        for round in 0..5 {
            std::thread::sleep(SPIN * 5);
            pool.run(100, &|_, t| {
                sum.fetch_add(t as u64, Ordering::Relaxed);
            })
            .unwrap();
            assert_eq!(sum.load(Ordering::Relaxed), 4950 * (round + 1));
        }
    }

    #[test]
    fn workers_share_long_steps() {
        let mut pool = Pool::new(2).unwrap();
        let by_worker = AtomicU64::new(0);
        // Tasks long enough that the worker joins well before they run out.
        pool.run(200, &|thread, _| {
            std::thread::sleep(Duration::from_micros(200));
            if thread == 1 {
                by_worker.fetch_add(1, Ordering::Relaxed);
            }
        })
        .unwrap();
        assert!(by_worker.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn a_panicking_task_is_an_error_and_the_pool_still_works() {
        let mut pool = Pool::new(3).unwrap();
        for bad in [0usize, 7, 63] {
            let err = pool
                .run(64, &|_, t| {
                    if t == bad {
                        panic!("task {t} failed");
                    }
                })
                .unwrap_err();
            assert_eq!(err.message, format!("task {bad} failed"));
            let count = AtomicU64::new(0);
            pool.run(64, &|_, _| {
                count.fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
            assert_eq!(count.load(Ordering::Relaxed), 64);
        }
        // Every task panicking: one error, no hang; single tasks too.
        assert!(pool.run(64, &|_, _| panic!("all")).is_err());
        assert!(pool.run(1, &|_, _| panic!("one")).is_err());
        assert!(
            Pool::new(1)
                .unwrap()
                .run(5, &|_, _| panic!("alone"))
                .is_err()
        );
        assert!(pool.run(3, &|_, _| {}).is_ok());
    }

    #[test]
    fn shared_mut_writes_disjoint_parts() {
        let mut pool = Pool::new(4).unwrap();
        let mut data = vec![0usize; 1003];
        let len = data.len();
        let out = SharedMut::new(&mut data);
        pool.run(len.div_ceil(10), &|_, c| {
            let r = chunk(len, 10, c);
            // SAFETY: each task has its own chunk.
            let part = unsafe { out.slice(r.clone()) };
            for (k, v) in part.iter_mut().enumerate() {
                *v = r.start + k;
            }
        })
        .unwrap();
        assert!(data.iter().enumerate().all(|(i, &v)| i == v));
    }
}
