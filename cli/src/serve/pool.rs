//! N sessions shared by the requests: first come, first served, each request
//! given the free session whose KV cache shares the longest prefix with its
//! prompt (prompt caching across requests and turns).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

use spinel_runtime::engine::Session;

/// What the pool needs of a session: the tokens its KV cache holds.
pub trait Cached {
    fn cached(&self) -> &[u32];
}

impl Cached for Session {
    fn cached(&self) -> &[u32] {
        self.cached_tokens()
    }
}

struct State<S> {
    free: Vec<S>,
    /// Tickets of the waiting requests, in arrival order.
    queue: VecDeque<u64>,
    next_ticket: u64,
}

pub struct Pool<S = Session> {
    state: Mutex<State<S>>,
    ready: Condvar,
    size: usize,
}

/// A session lent to one request; back to the pool on drop.
pub struct Lease<'p, S = Session> {
    pool: &'p Pool<S>,
    session: Option<S>,
}

impl<S> std::ops::Deref for Lease<'_, S> {
    type Target = S;
    fn deref(&self) -> &S {
        self.session.as_ref().expect("leased session")
    }
}

impl<S> std::ops::DerefMut for Lease<'_, S> {
    fn deref_mut(&mut self) -> &mut S {
        self.session.as_mut().expect("leased session")
    }
}

impl<S> Drop for Lease<'_, S> {
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

impl<S: Cached> Pool<S> {
    pub fn new(sessions: Vec<S>) -> Pool<S> {
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
}

impl<S> Pool<S> {
    pub fn size(&self) -> usize {
        self.size
    }

    fn lock(&self) -> MutexGuard<'_, State<S>> {
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
}

impl<S: Cached> Pool<S> {
    /// Waits for this request's turn (arrival order) and a free session,
    /// then lends the free session whose cache best matches `prompt`.
    pub fn acquire(&self, prompt: &[u32]) -> Lease<'_, S> {
        let mut st = self.lock();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push_back(ticket);
        while st.queue.front() != Some(&ticket) || st.free.is_empty() {
            st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.queue.pop_front();
        let best = (0..st.free.len())
            .max_by_key(|&i| common_prefix(st.free[i].cached(), prompt))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[derive(Debug, PartialEq)]
    struct Fake(Vec<u32>);

    impl Cached for Fake {
        fn cached(&self) -> &[u32] {
            &self.0
        }
    }

    #[test]
    fn lends_the_session_sharing_the_longest_prefix() {
        let pool = Pool::new(vec![
            Fake(vec![1, 2]),
            Fake(vec![1, 2, 3, 4]),
            Fake(vec![9]),
        ]);
        let a = pool.acquire(&[1, 2, 3, 4, 5]);
        assert_eq!(a.0, vec![1, 2, 3, 4]);
        let b = pool.acquire(&[9, 9]);
        assert_eq!(b.0, vec![9]);
        assert_eq!(pool.busy(), 2);
        drop(a);
        let c = pool.acquire(&[1, 2, 3, 7]);
        assert_eq!(c.0, vec![1, 2, 3, 4]);
        drop((b, c));
        assert_eq!(pool.busy(), 0);
    }

    /// Requests beyond the pool's size wait and are served in arrival order.
    #[test]
    fn waiting_requests_are_served_first_come_first_served() {
        let pool = Arc::new(Pool::new(vec![Fake(vec![])]));
        let held = pool.acquire(&[]);
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for i in 0..4 {
            let (p, order) = (Arc::clone(&pool), Arc::clone(&order));
            threads.push(std::thread::spawn(move || {
                let lease = p.acquire(&[]);
                order.lock().unwrap().push(i);
                std::thread::sleep(Duration::from_millis(5));
                drop(lease);
            }));
            // Each thread is queued before the next one starts.
            while pool.waiting() < i + 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(held);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(pool.waiting(), 0);
    }
}
