//! Generation requests in progress, and how each is cancelled: by its
//! client going away (its HTTP side drops an [`Abandon`] guard) or by
//! shutdown ([`Requests::cancel_all`]).
//!
//! A [`Ticket`] links a request's HTTP side and its engine thread. Its
//! `abandoned` flag makes a request still waiting for a session leave the
//! queue; the running generation's [`CancelHandle`], attached once the
//! generation has started, stops it at its next step. Shutdown waits until
//! every ticket is gone (both sides done).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use spinel_runtime::engine::CancelHandle;

/// The requests in progress.
#[derive(Default)]
pub struct Requests {
    live: Mutex<HashMap<u64, Weak<Ticket>>>,
    next: AtomicU64,
}

impl Requests {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Weak<Ticket>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A ticket for a new request, counted until both its sides drop it.
    pub fn ticket(self: &Arc<Self>) -> Arc<Ticket> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let ticket = Arc::new(Ticket {
            id,
            requests: Arc::clone(self),
            abandoned: CancelHandle::new(),
            running: Mutex::new(None),
        });
        self.lock().insert(id, Arc::downgrade(&ticket));
        ticket
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cancels every request: the waiting ones leave the queue, the
    /// running ones stop at their next step.
    pub fn cancel_all(&self) {
        let tickets: Vec<Arc<Ticket>> = self.lock().values().filter_map(Weak::upgrade).collect();
        for t in tickets {
            t.cancel();
        }
    }
}

/// One generation request (see the [module docs](self)).
pub struct Ticket {
    id: u64,
    requests: Arc<Requests>,
    /// Set when the request is to end (its client went away, shutdown).
    abandoned: CancelHandle,
    /// The running generation's cancel handle.
    running: Mutex<Option<CancelHandle>>,
}

impl Ticket {
    fn running(&self) -> MutexGuard<'_, Option<CancelHandle>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The flag a request waiting for a session watches.
    pub fn abandoned(&self) -> &CancelHandle {
        &self.abandoned
    }

    /// Ends the request: out of the queue, or its generation stopped.
    pub fn cancel(&self) {
        self.abandoned.cancel();
        if let Some(c) = self.running().as_ref() {
            c.cancel();
        }
    }

    /// The generation started with this cancel handle (cancelled at once
    /// if the request was abandoned meanwhile).
    pub fn attach(&self, cancel: CancelHandle) {
        if self.abandoned.is_cancelled() {
            cancel.cancel();
        }
        *self.running() = Some(cancel);
    }

    /// The generation ended: its session may serve another request.
    pub fn detach(&self) {
        *self.running() = None;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.requests.lock().remove(&self.id);
    }
}

/// Cancels its request when dropped: held by the request's HTTP side (the
/// handler, then the streamed body), which is dropped when the client goes
/// away. Harmless after the request finished.
pub struct Abandon(pub Arc<Ticket>);

impl Drop for Abandon {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_counted_until_both_sides_drop_them() {
        let requests = Arc::new(Requests::default());
        let t = requests.ticket();
        let engine_side = Arc::clone(&t);
        let http_side = Abandon(t);
        assert_eq!(requests.len(), 1);
        let gen_cancel = CancelHandle::new();
        engine_side.attach(gen_cancel.clone());
        assert!(!gen_cancel.is_cancelled());
        drop(http_side);
        assert!(gen_cancel.is_cancelled(), "the client went away");
        assert_eq!(requests.len(), 1, "the engine side still runs");
        drop(engine_side);
        assert!(requests.is_empty());

        // Shutdown cancels the waiting and the running.
        let waiting = requests.ticket();
        let running = requests.ticket();
        let c = CancelHandle::new();
        running.attach(c.clone());
        requests.cancel_all();
        assert!(waiting.abandoned().is_cancelled() && c.is_cancelled());
        // A generation attached after its request was abandoned stops too.
        let late = CancelHandle::new();
        waiting.attach(late.clone());
        assert!(late.is_cancelled());
    }
}
