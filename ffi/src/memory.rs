//! Memory pressure: what a model and its sessions hold, and giving back
//! what can be rebuilt when the app is told to (Android's `onTrimMemory`,
//! iOS's memory warnings).

use std::sync::{Arc, Weak};

use crate::SpinelError;
use crate::model::Model;
use crate::session::ChatSession;

/// How hard the app is pressed for memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum TrimLevel {
    /// The app went to the background: idle sessions give back their KV
    /// caches and buffers (saved first where `set_save_on_trim` asked);
    /// their conversations stay, and the next turn processes them again.
    Background,
    /// The system is about to kill apps: as `Background`, and the pages of
    /// streamed weights (a model larger than its budget) are dropped.
    Critical,
}

/// Bytes a model and its sessions hold now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Record)]
pub struct MemoryUsage {
    /// Weights in memory: the resident pages of the model file's mapping.
    pub weights_resident_bytes: u64,
    /// The KV caches of the model's open sessions.
    pub kv_cache_bytes: u64,
    /// The sessions' activation buffers.
    pub scratch_bytes: u64,
}

/// The chat sessions a model opened, for trimming and accounting.
#[derive(Debug, Default)]
pub(crate) struct Sessions(std::sync::Mutex<Vec<Weak<ChatSession>>>);

impl Sessions {
    pub(crate) fn add(&self, s: &Arc<ChatSession>) {
        let mut v = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(s));
    }

    fn live(&self) -> Vec<Arc<ChatSession>> {
        let v = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        v.iter().filter_map(Weak::upgrade).collect()
    }
}

#[uniffi::export]
impl Model {
    /// Gives back memory that can be rebuilt (see [`TrimLevel`]); sessions
    /// generating an answer are left alone. Returns the bytes given back by
    /// sessions. Fails only when saving a session before trimming fails
    /// (the other sessions are still trimmed).
    pub fn trim_memory(&self, level: TrimLevel) -> Result<u64, SpinelError> {
        let mut freed = 0;
        let mut first_error = None;
        for s in self.sessions().live() {
            match s.trim() {
                Ok(n) => freed += n,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if level == TrimLevel::Critical {
            self.runtime().release_streamed_weights();
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(freed),
        }
    }

    /// What the model and its open sessions hold now.
    pub fn memory_usage(&self) -> MemoryUsage {
        let (mut kv, mut scratch) = (0, 0);
        for s in self.sessions().live() {
            let (k, sc) = s.memory();
            kv += k;
            scratch += sc;
        }
        MemoryUsage {
            weights_resident_bytes: self.runtime().weights_resident_bytes(),
            kv_cache_bytes: kv,
            scratch_bytes: scratch,
        }
    }
}
