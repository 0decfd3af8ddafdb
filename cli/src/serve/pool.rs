//! N sessions shared by the requests: first come, first served, each request
//! given the free session whose KV cache shares the longest prefix with its
//! prompt (prompt caching across requests and turns).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

use spinel_runtime::engine::Session;

struct State {
    free: Vec<Session>,
    /// Tickets of the waiting requests, in arrival order.
    queue: VecDeque<u64>,
    next_ticket: u64,
}

pub struct Pool {
    state: Mutex<State>,
    ready: Condvar,
    size: usize,
}

/// A session lent to one request; back to the pool on drop.
pub struct Lease<'p> {
    pool: &'p Pool,
    session: Option<Session>,
}

impl std::ops::Deref for Lease<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.session.as_ref().expect("leased session")
    }
}

impl std::ops::DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut Session {
        self.session.as_mut().expect("leased session")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.pool.lock().free.push(s);
            self.pool.ready.notify_all();
        }
    }
}

/// How many leading tokens two sequences share.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Pool {
    pub fn new(sessions: Vec<Session>) -> Pool {
        let size = sessions.len();
        Pool {
            state: Mutex::new(State {
                free: sessions,
                queue: VecDeque::new(),
                next_ticket: 0,
            }),
            ready: Condvar::new(),
            size,
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests waiting for a session.
    pub fn waiting(&self) -> usize {
        self.lock().queue.len()
    }

    /// Sessions in use.
    pub fn busy(&self) -> usize {
        self.size - self.lock().free.len()
    }

    /// Waits for this request's turn (arrival order) and a free session,
    /// then lends the free session whose cache best matches `prompt`.
    pub fn acquire(&self, prompt: &[u32]) -> Lease<'_> {
        let mut st = self.lock();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push_back(ticket);
        while st.queue.front() != Some(&ticket) || st.free.is_empty() {
            st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.queue.pop_front();
        let best = (0..st.free.len())
            .max_by_key(|&i| common_prefix(st.free[i].cached_tokens(), prompt))
            .expect("a free session");
        let session = st.free.swap_remove(best);
        drop(st);
        // The next in line may find another free session.
        self.ready.notify_all();
        Lease {
            pool: self,
            session: Some(session),
        }
    }
}
