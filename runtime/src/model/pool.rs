//! A persistent pool of worker threads for the forward pass.
//!
//! A 135M-parameter model runs ~150 parallel steps per generated token, each
//! a few microseconds of arithmetic, so starting threads per step (tens of
//! microseconds) would cost more than the work. The pool starts its threads
//! once, with the state, and hands each step to them through shared atomics:
//!
//! * [`Pool::run`] publishes the job and bumps an epoch counter; workers that
//!   are spinning see it within a few hundred nanoseconds, workers that went
//!   to sleep are unparked. The calling thread is worker 0 and does its share
//!   too, then waits (spinning, then yielding) until every worker is done.
//! * A worker spins on the epoch for a short while after each job
//!   ([`SPIN`]) — the next step of the forward pass usually arrives within
//!   microseconds — then parks, so an idle model costs no CPU.
//! * A job that panics on any thread is caught there; `run` waits for the
//!   others and returns [`JobPanicked`] instead of hanging or unwinding
//!   through the pool.
//!
//! Jobs are plain `Fn(thread_index)` closures that borrow the caller's
//! stack: `run` does not return before every worker has finished with it.

use std::cell::UnsafeCell;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next job before it parks.
const SPIN: Duration = Duration::from_micros(200);
/// How long `run` spins for the workers to finish before it starts yielding
/// its core between checks (they may have been descheduled on a machine
/// with more runnable threads than cores). Yielding early is costly when
/// other processes are runnable: the core goes to them for a whole time
/// slice, so waits of normal length are spun through.
const WAIT_SPIN: Duration = Duration::from_micros(200);

/// A job: called once on every thread of the pool with the thread's index.
type Job = dyn Fn(usize) + Sync;

/// A job panicked on one of the pool's threads (the first panic's message).
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

struct Shared {
    /// Bumped once per job (and once to shut down).
    epoch: Padded<AtomicUsize>,
    /// Workers that have not finished the current job.
    pending: Padded<AtomicUsize>,
    /// The current job, its lifetime erased. Written by `run` before the
    /// epoch is bumped, read by workers after they see the new epoch.
    job: UnsafeCell<Option<*const Job>>,
    /// Per worker: parked (or about to park) and needs an unpark.
    sleeping: Vec<Padded<AtomicBool>>,
    shutdown: AtomicBool,
    /// The first panic of the current job.
    panic: Mutex<Option<String>>,
    panicked: AtomicBool,
}

// SAFETY: `job` is only written by the thread in `Pool::run` (which holds
// `&mut Pool`) while no worker reads it — before the epoch bump that starts
// a job, after `pending` reached zero for the previous one — and only read
// by workers between seeing that bump and decrementing `pending`. The job
// it points to is `Sync`. Everything else is atomics or a mutex.
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
}

/// A fixed set of threads that run jobs together; see the module docs.
pub struct Pool {
    shared: Arc<Shared>,
    /// Threads 1..n (the caller of `run` is thread 0).
    workers: Vec<(Thread, JoinHandle<()>)>,
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
            pending: Padded::default(),
            job: UnsafeCell::new(None),
            sleeping: (0..n_workers).map(|_| Padded::default()).collect(),
            shutdown: AtomicBool::new(false),
            panic: Mutex::new(None),
            panicked: AtomicBool::new(false),
        });
        let mut pool = Pool {
            shared,
            workers: Vec::with_capacity(n_workers),
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

    /// Threads taking part in each job (the caller included).
    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `job(i)` once on each thread `i` of `0..n_threads()` (thread 0
    /// is the caller) and returns when all have returned.
    ///
    /// A panic inside `job` on any thread is caught; the others still run to
    /// completion, then the first panic's message comes back as the error.
    pub fn run(&mut self, job: &(dyn Fn(usize) + Sync)) -> Result<(), JobPanicked> {
        let sh = &*self.shared;
        if !self.workers.is_empty() {
            // SAFETY: the lifetime is erased only for as long as workers may
            // read the pointer: this function does not return (or unwind:
            // the caller's share runs under `catch_unwind`) before `pending`
            // is back to zero, after which no worker touches the job.
            let erased: *const Job = unsafe { std::mem::transmute(job) };
            // SAFETY: no worker reads `job` now (previous job finished, the
            // new epoch not yet published); `&mut self` excludes other callers.
            unsafe { *sh.job.get() = Some(erased) };
            sh.pending.0.store(self.workers.len(), Ordering::Relaxed);
            // SeqCst pairs with the sleeping flag's store and reload in
            // `worker`: either we see it set and unpark, or it sees the epoch.
            sh.epoch.0.fetch_add(1, Ordering::SeqCst);
            for (i, (thread, _)) in self.workers.iter().enumerate() {
                if sh.sleeping[i].0.load(Ordering::SeqCst) {
                    thread.unpark();
                }
            }
        }
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| job(0))) {
            sh.record_panic(p);
        }
        let mut spins = 0u32;
        let mut start = None;
        while sh.pending.0.load(Ordering::Acquire) != 0 {
            spins = spins.wrapping_add(1);
            let spinning =
                spins % 64 != 0 || start.get_or_insert_with(Instant::now).elapsed() < WAIT_SPIN;
            if spinning {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if sh.panicked.load(Ordering::Acquire) {
            sh.panicked.store(false, Ordering::Relaxed);
            let message = sh
                .panic
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or_default();
            return Err(JobPanicked { message });
        }
        Ok(())
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
    loop {
        seen = wait_for_job(sh, w, seen);
        if sh.shutdown.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: `run` stored the job before bumping the epoch we just saw
        // (its SeqCst bump releases the store; our load acquired it) and
        // keeps it alive until we decrement `pending` below.
        if let Some(job) = unsafe { *sh.job.get() } {
            // SAFETY: as above: the job outlives this call.
            let job = unsafe { &*job };
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| job(w + 1))) {
                sh.record_panic(p);
            }
        }
        sh.pending.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Waits until the epoch differs from `seen` and returns it: spins for
/// [`SPIN`], then parks until `run` unparks this worker.
fn wait_for_job(sh: &Shared, w: usize, seen: usize) -> usize {
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

/// The part of `0..n` that thread `i` of `n_threads` takes in an even split.
pub fn split(n: usize, i: usize, n_threads: usize) -> std::ops::Range<usize> {
    let (q, r) = (n / n_threads, n % n_threads);
    let start = i * q + i.min(r);
    start..start + q + usize::from(i < r)
}

/// A mutable slice that several threads write through at disjoint indices.
///
/// Each pool thread writes its own part of an output (rows, or columns of
/// every row) without splitting the slice up front.
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
    fn split_covers_everything_once() {
        for n in [0usize, 1, 5, 64, 1001] {
            for t in 1..6 {
                let mut next = 0;
                for i in 0..t {
                    let r = split(n, i, t);
                    assert_eq!(r.start, next);
                    assert!(r.len() <= n.div_ceil(t));
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn every_thread_runs_every_job() {
        for n_threads in [1usize, 2, 3, 8] {
            let mut pool = Pool::new(n_threads).unwrap();
            assert_eq!(pool.n_threads(), n_threads);
            let hits: Vec<AtomicU64> = (0..n_threads).map(|_| AtomicU64::new(0)).collect();
            // Many tiny jobs back to back: no job lost, none run twice.
            // (Fewer where threads outnumber the cores and wait on each other.)
            let jobs = if n_threads <= 2 { 20_000 } else { 500 };
            for _ in 0..jobs {
                pool.run(&|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                })
                .unwrap();
            }
            for h in &hits {
                assert_eq!(h.load(Ordering::Relaxed), jobs);
            }
        }
    }

    #[test]
    fn jobs_after_the_workers_parked_still_run() {
        let mut pool = Pool::new(3).unwrap();
        let sum = AtomicU64::new(0);
        for round in 0..5 {
            std::thread::sleep(SPIN * 5);
            pool.run(&|i| {
                sum.fetch_add(i as u64 + 1, Ordering::Relaxed);
            })
            .unwrap();
            assert_eq!(sum.load(Ordering::Relaxed), 6 * (round + 1));
        }
    }

    #[test]
    fn a_panicking_job_is_an_error_and_the_pool_still_works() {
        let mut pool = Pool::new(3).unwrap();
        for bad in 0..3 {
            let err = pool
                .run(&|i| {
                    if i == bad {
                        panic!("job failed on thread {i}");
                    }
                })
                .unwrap_err();
            assert_eq!(err.message, format!("job failed on thread {bad}"));
            let count = AtomicU64::new(0);
            pool.run(&|_| {
                count.fetch_add(1, Ordering::Relaxed);
            })
            .unwrap();
            assert_eq!(count.load(Ordering::Relaxed), 3);
        }
        // Every thread panicking: one error, no hang.
        assert!(pool.run(&|_| panic!("all")).is_err());
    }

    #[test]
    fn shared_mut_writes_disjoint_parts() {
        let mut pool = Pool::new(4).unwrap();
        let mut data = vec![0usize; 1003];
        let len = data.len();
        let out = SharedMut::new(&mut data);
        pool.run(&|i| {
            let r = split(len, i, 4);
            // SAFETY: `split` gives each thread its own range.
            let part = unsafe { out.slice(r.clone()) };
            for (k, v) in part.iter_mut().enumerate() {
                *v = r.start + k;
            }
        })
        .unwrap();
        assert!(data.iter().enumerate().all(|(i, &v)| i == v));
    }
}
