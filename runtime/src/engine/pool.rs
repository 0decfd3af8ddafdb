//! A pool of sessions shared by requests: the serving policy of a server
//! (`spinel serve`) that apps embedding the runtime can use as well.
//!
//! * **Prompt caching.** A request gets the free session whose KV cache
//!   shares the longest prefix with its prompt, so a conversation that goes
//!   on, or requests with a common system prompt, reuse what a cache holds.
//! * **Fair, bounded waiting.** Requests that find no free session wait in
//!   arrival order; at most `max_waiting` of them ([`PoolError::QueueFull`]
//!   beyond: a server answers 503 at once instead of piling up work). A
//!   waiter gives up at its deadline ([`PoolError::Timeout`]), when its
//!   [`CancelHandle`] fires ([`PoolError::Cancelled`]: its client went
//!   away), or when the pool closes ([`PoolError::Closed`]: shutdown).
//! * **Sessions come back clean.** [`SessionPool::acquire`] lends a
//!   [`PooledSession`] guard; dropping it returns the session. A generation
//!   that panics ([`PooledSession::run`] catches it, or the guard drops
//!   while unwinding) leaves a session whose cache and state are suspect:
//!   it is [`reset`](Reusable::reset) before anyone else gets it.
//!
//! The pool is blocking (a mutex and a condition variable), like sessions:
//! call it from the thread that will run the generation.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use spinel_runtime::engine::{Engine, GenerateOptions, SessionOptions, SessionPool};
//!
//! let engine = Arc::new(Engine::load("model.gguf")?);
//! let sessions = (0..4)
//!     .map(|_| engine.session(&SessionOptions { batched: true, sessions: 4, ..Default::default() }))
//!     .collect::<Result<Vec<_>, _>>()?;
//! let pool = Arc::new(SessionPool::new(sessions, 64));
//!
//! let prompt = engine.tokenize_prompt("The capital of France is")?;
//! let deadline = Instant::now() + Duration::from_secs(60);
//! let mut session = pool.acquire(&prompt, Some(deadline), None).expect("a session");
//! let answer = session.run(|s| s.complete(&prompt, &GenerateOptions::default(), |_| {}));
//! match answer {
//!     Ok(Ok(g)) => println!("{}", g.text),
//!     Ok(Err(e)) => eprintln!("generation failed: {e}"),
//!     Err(panic) => eprintln!("generation panicked ({panic}); the session was reset"),
//! }
//! # Ok::<(), spinel_runtime::engine::EngineError>(())
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{CancelHandle, Session};

/// What the pool needs of a session: the tokens its KV cache holds, and a
/// way to forget them.
pub trait Reusable {
    /// The tokens in the KV cache, in order.
    fn cached_tokens(&self) -> &[u32];
    /// Forgets everything (after a failed or panicked generation).
    fn reset(&mut self);
}

impl Reusable for Session {
    fn cached_tokens(&self) -> &[u32] {
        Session::cached_tokens(self)
    }

    fn reset(&mut self) {
        Session::reset(self);
    }
}

/// Why [`SessionPool::acquire`] lent no session.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolError {
    /// Every session is busy and `max_waiting` requests already wait.
    QueueFull { waiting: usize },
    /// The deadline passed while waiting.
    Timeout { waited: Duration },
    /// The request's cancel handle fired while it waited.
    Cancelled,
    /// The pool was closed ([`SessionPool::close`]).
    Closed,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::QueueFull { waiting } => write!(
                f,
                "every session is busy and {waiting} requests are already waiting"
            ),
            PoolError::Timeout { waited } => write!(
                f,
                "no session became free within the deadline (waited {:.1} s)",
                waited.as_secs_f64()
            ),
            PoolError::Cancelled => write!(f, "cancelled while waiting for a session"),
            PoolError::Closed => write!(f, "the session pool is closed (shutting down)"),
        }
    }
}

impl std::error::Error for PoolError {}

/// A generation that panicked; its session was reset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Panicked {
    /// The panic's message (`"a panic"` when it carried none).
    pub message: String,
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the generation panicked: {}", self.message)
    }
}

impl std::error::Error for Panicked {}

struct State<S> {
    free: Vec<S>,
    /// Tickets of the waiting requests, in arrival order.
    queue: VecDeque<u64>,
    next_ticket: u64,
    closed: bool,
}

/// Sessions shared by requests (see the [module docs](self)).
pub struct SessionPool<S = Session> {
    state: Mutex<State<S>>,
    ready: Condvar,
    size: usize,
    max_waiting: usize,
}

impl<S> fmt::Debug for SessionPool<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionPool")
            .field("size", &self.size)
            .field("busy", &self.busy())
            .field("waiting", &self.waiting())
            .field("max_waiting", &self.max_waiting)
            .finish()
    }
}

/// How many leading tokens two sequences share.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// How often a waiter looks at its cancel handle (a [`CancelHandle`] is a
/// flag; nothing wakes the waiter when it is set).
const CANCEL_POLL: Duration = Duration::from_millis(50);

impl<S> SessionPool<S> {
    /// A pool lending `sessions`, with at most `max_waiting` requests
    /// waiting for one (0: a request that finds none free is refused).
    pub fn new(sessions: Vec<S>, max_waiting: usize) -> SessionPool<S> {
        let size = sessions.len();
        SessionPool {
            state: Mutex::new(State {
                free: sessions,
                queue: VecDeque::new(),
                next_ticket: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            size,
            max_waiting,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<S>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions in the pool, lent or not.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Most requests that may wait.
    pub fn max_waiting(&self) -> usize {
        self.max_waiting
    }

    /// Requests waiting for a session.
    pub fn waiting(&self) -> usize {
        self.lock().queue.len()
    }

    /// Sessions lent out.
    pub fn busy(&self) -> usize {
        self.size - self.lock().free.len()
    }

    /// Refuses every request from now on ([`PoolError::Closed`]), those
    /// waiting included. Lent sessions still come back.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

impl<S: Reusable> SessionPool<S> {
    /// Waits for this request's turn (arrival order) and a free session,
    /// then lends the free session whose cache best matches `prompt`.
    ///
    /// Gives up at `deadline`, or when `cancel` fires (looked at every
    /// 50 ms); refuses at once when `max_waiting` requests already wait.
    pub fn acquire(
        self: &Arc<Self>,
        prompt: &[u32],
        deadline: Option<Instant>,
        cancel: Option<&CancelHandle>,
    ) -> Result<PooledSession<S>, PoolError> {
        let start = Instant::now();
        let mut st = self.lock();
        if st.closed {
            return Err(PoolError::Closed);
        }
        if st.queue.is_empty() && !st.free.is_empty() {
            return Ok(self.lend(st, prompt));
        }
        if st.queue.len() >= self.max_waiting {
            return Err(PoolError::QueueFull {
                waiting: st.queue.len(),
            });
        }
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push_back(ticket);
        loop {
            let outcome = if st.closed {
                Some(PoolError::Closed)
            } else if cancel.is_some_and(CancelHandle::is_cancelled) {
                Some(PoolError::Cancelled)
            } else if deadline.is_some_and(|d| Instant::now() >= d) {
                Some(PoolError::Timeout {
                    waited: start.elapsed(),
                })
            } else {
                None
            };
            if let Some(e) = outcome {
                st.queue.retain(|&t| t != ticket);
                drop(st);
                // The next in line may be the first now.
                self.ready.notify_all();
                return Err(e);
            }
            if st.queue.front() == Some(&ticket) && !st.free.is_empty() {
                st.queue.pop_front();
                return Ok(self.lend(st, prompt));
            }
            let mut wait = deadline.map_or(Duration::MAX, |d| d - Instant::now());
            if cancel.is_some() {
                wait = wait.min(CANCEL_POLL);
            }
            st = if wait == Duration::MAX {
                self.ready.wait(st).unwrap_or_else(|e| e.into_inner())
            } else {
                self.ready
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            };
        }
    }

    /// Takes the free session best matching `prompt` (one must be free).
    fn lend(
        self: &Arc<Self>,
        mut st: MutexGuard<'_, State<S>>,
        prompt: &[u32],
    ) -> PooledSession<S> {
        let best = (0..st.free.len())
            .max_by_key(|&i| common_prefix(st.free[i].cached_tokens(), prompt))
            .expect("a free session");
        let session = st.free.swap_remove(best);
        let more = !st.free.is_empty() && !st.queue.is_empty();
        drop(st);
        if more {
            // The next in line may take another free session.
            self.ready.notify_all();
        }
        PooledSession {
            pool: Arc::clone(self),
            session: Some(session),
            poisoned: false,
        }
    }

    fn give_back(&self, session: S) {
        self.lock().free.push(session);
        self.ready.notify_all();
    }
}

/// A session lent to one request; back to the pool on drop (reset first
/// when poisoned, or when dropped by a panic).
pub struct PooledSession<S: Reusable = Session> {
    pool: Arc<SessionPool<S>>,
    session: Option<S>,
    poisoned: bool,
}

impl<S: Reusable> fmt::Debug for PooledSession<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledSession")
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl<S: Reusable> PooledSession<S> {
    /// Runs `f` on the session, catching a panic: the session is then
    /// reset (at once, and it goes back clean) and the panic's message
    /// returned.
    pub fn run<R>(&mut self, f: impl FnOnce(&mut S) -> R) -> Result<R, Panicked> {
        let session = self.session.as_mut().expect("a lent session");
        match catch_unwind(AssertUnwindSafe(|| f(session))) {
            Ok(r) => Ok(r),
            Err(payload) => {
                self.poison();
                Err(Panicked {
                    message: panic_message(payload.as_ref()),
                })
            }
        }
    }

    /// Marks the session as unusable as it is: it is reset now and goes
    /// back to the pool clean.
    pub fn poison(&mut self) {
        self.poisoned = true;
        if let Some(s) = self.session.as_mut() {
            s.reset();
        }
    }

    /// Whether the session was poisoned (a panic, or [`poison`](Self::poison)).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }
}

impl<S: Reusable> std::ops::Deref for PooledSession<S> {
    type Target = S;
    fn deref(&self) -> &S {
        self.session.as_ref().expect("a lent session")
    }
}

impl<S: Reusable> std::ops::DerefMut for PooledSession<S> {
    fn deref_mut(&mut self) -> &mut S {
        self.session.as_mut().expect("a lent session")
    }
}

impl<S: Reusable> Drop for PooledSession<S> {
    fn drop(&mut self) {
        if let Some(mut s) = self.session.take() {
            if std::thread::panicking() && !self.poisoned {
                // Dropped by a panic that `run` did not catch.
                s.reset();
            }
            self.pool.give_back(s);
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Fake {
        cached: Vec<u32>,
        resets: usize,
    }

    fn fake(cached: &[u32]) -> Fake {
        Fake {
            cached: cached.to_vec(),
            resets: 0,
        }
    }

    impl Reusable for Fake {
        fn cached_tokens(&self) -> &[u32] {
            &self.cached
        }
        fn reset(&mut self) {
            self.cached.clear();
            self.resets += 1;
        }
    }

    fn pool(sessions: Vec<Fake>, max_waiting: usize) -> Arc<SessionPool<Fake>> {
        Arc::new(SessionPool::new(sessions, max_waiting))
    }

    /// Waits until `n` requests wait in `pool`.
    fn until_waiting(pool: &SessionPool<Fake>, n: usize) {
        let t0 = Instant::now();
        while pool.waiting() != n {
            assert!(t0.elapsed() < Duration::from_secs(10), "never {n} waiting");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn lends_the_session_sharing_the_longest_prefix() {
        let pool = pool(vec![fake(&[1, 2]), fake(&[1, 2, 3, 4]), fake(&[9])], 0);
        let a = pool.acquire(&[1, 2, 3, 4, 5], None, None).unwrap();
        assert_eq!(a.cached, vec![1, 2, 3, 4]);
        let b = pool.acquire(&[9, 9], None, None).unwrap();
        assert_eq!(b.cached, vec![9]);
        assert_eq!(pool.busy(), 2);
        drop(a);
        let c = pool.acquire(&[1, 2, 3, 7], None, None).unwrap();
        assert_eq!(c.cached, vec![1, 2, 3, 4]);
        drop((b, c));
        assert_eq!(pool.busy(), 0);
    }

    /// Requests beyond the pool's size wait and are served in arrival order.
    #[test]
    fn waiting_requests_are_served_first_come_first_served() {
        let pool = pool(vec![fake(&[])], 8);
        let held = pool.acquire(&[], None, None).unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for i in 0..4 {
            let (p, order) = (Arc::clone(&pool), Arc::clone(&order));
            threads.push(std::thread::spawn(move || {
                let lease = p.acquire(&[], None, None).unwrap();
                order.lock().unwrap().push(i);
                std::thread::sleep(Duration::from_millis(5));
                drop(lease);
            }));
            // Each thread is queued before the next one starts.
            until_waiting(&pool, i + 1);
        }
        drop(held);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(pool.waiting(), 0);
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let pool = pool(vec![fake(&[])], 1);
        let held = pool.acquire(&[], None, None).unwrap();
        let p = Arc::clone(&pool);
        let waiter = std::thread::spawn(move || p.acquire(&[], None, None).map(|_| ()));
        until_waiting(&pool, 1);
        assert_eq!(
            pool.acquire(&[], None, None).unwrap_err(),
            PoolError::QueueFull { waiting: 1 }
        );
        drop(held);
        waiter.join().unwrap().unwrap();
        // No queue at all: refused while the session is lent.
        let pool = self::pool(vec![fake(&[])], 0);
        let _held = pool.acquire(&[], None, None).unwrap();
        assert!(matches!(
            pool.acquire(&[], None, None),
            Err(PoolError::QueueFull { waiting: 0 })
        ));
    }

    #[test]
    fn waiters_give_up_at_the_deadline_or_when_cancelled() {
        let pool = pool(vec![fake(&[])], 4);
        let held = pool.acquire(&[], None, None).unwrap();
        let t0 = Instant::now();
        let e = pool
            .acquire(&[], Some(t0 + Duration::from_millis(100)), None)
            .unwrap_err();
        assert!(matches!(e, PoolError::Timeout { waited } if waited >= Duration::from_millis(100)));
        assert_eq!(pool.waiting(), 0, "a waiter that gave up left the queue");

        let cancel = CancelHandle::new();
        let (p, c) = (Arc::clone(&pool), cancel.clone());
        let waiter = std::thread::spawn(move || p.acquire(&[], None, Some(&c)).map(|_| ()));
        until_waiting(&pool, 1);
        cancel.cancel();
        assert_eq!(waiter.join().unwrap().unwrap_err(), PoolError::Cancelled);
        assert_eq!(pool.waiting(), 0);

        // One that gave up does not hold back the one behind it.
        let p = Arc::clone(&pool);
        let first = std::thread::spawn(move || {
            p.acquire(&[], Some(Instant::now() + Duration::from_millis(50)), None)
                .map(|_| ())
        });
        until_waiting(&pool, 1);
        let p = Arc::clone(&pool);
        let second = std::thread::spawn(move || p.acquire(&[], None, None).map(|_| ()));
        until_waiting(&pool, 2);
        assert!(first.join().unwrap().is_err());
        drop(held);
        second.join().unwrap().unwrap();
    }

    #[test]
    fn closing_refuses_waiters_and_newcomers_but_takes_sessions_back() {
        let pool = pool(vec![fake(&[])], 4);
        let held = pool.acquire(&[], None, None).unwrap();
        let p = Arc::clone(&pool);
        let waiter = std::thread::spawn(move || p.acquire(&[], None, None).map(|_| ()));
        until_waiting(&pool, 1);
        pool.close();
        assert_eq!(waiter.join().unwrap().unwrap_err(), PoolError::Closed);
        assert_eq!(
            pool.acquire(&[], None, None).unwrap_err(),
            PoolError::Closed
        );
        drop(held);
        assert_eq!(pool.busy(), 0);
    }

    #[test]
    fn a_panicking_generation_resets_its_session() {
        let pool = pool(vec![fake(&[1, 2, 3])], 0);
        let mut s = pool.acquire(&[1, 2, 3], None, None).unwrap();
        assert_eq!(s.run(|s| s.cached.len()), Ok(3));
        let e = s.run(|_| -> () { panic!("boom") }).unwrap_err();
        assert_eq!(e.message, "boom");
        assert!(s.is_poisoned());
        drop(s);
        let s = pool.acquire(&[1, 2, 3], None, None).unwrap();
        assert_eq!((s.cached.len(), s.resets), (0, 1));
        drop(s);

        // A guard dropped by an uncaught panic resets its session too.
        let p = Arc::clone(&pool);
        let r = std::thread::spawn(move || {
            let mut s = p.acquire(&[], None, None).unwrap();
            s.cached.push(7);
            panic!("uncaught");
        })
        .join();
        assert!(r.is_err());
        let s = pool.acquire(&[7], None, None).unwrap();
        assert_eq!((s.cached.len(), s.resets), (0, 2));
    }
}
