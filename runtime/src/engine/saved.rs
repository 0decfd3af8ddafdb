//! Saving a session to a file and restoring it: the conversation, the
//! tokens in the KV cache and the cache itself, so reopening a long chat
//! costs no prompt processing.
//!
//! The file (little-endian):
//!
//! | field | |
//! |---|---|
//! | magic `SPNLSESS`, version `u32` (3) | |
//! | model fingerprint `u64` | FNV-1a of the GGUF file's header (metadata and tensor index) and its length |
//! | K and V cache types `u32`, `u32` (ggml ids) | |
//! | flags `u32` | bit 0: keys rotated (R3, [`State::rotates_qk`](crate::model::State::rotates_qk)); bit 1: values rotated ([`State::rotates_v`](crate::model::State::rotates_v)) |
//! | positions `n` `u64` | |
//! | `n` token ids `u32` | what the cache holds |
//! | messages: length `u64`, JSON `[{"role", "content"}]` | the conversation |
//! | the cache's positions `0..n` | [`State::write_cache`](crate::model::State::write_cache) |
//! | checksum `u64` | FNV-1a of everything before it |
//!
//! A file of another model, KV type or KV rotation, a truncated or
//! corrupted one, or one with more positions than the session's context is
//! refused with a clear error, and the session is left empty.

use std::io::{Read, Write};
use std::path::Path;

use crate::chat::Message;

use super::{EngineError, Session};

const MAGIC: &[u8; 8] = b"SPNLSESS";
const VERSION: u32 = 3;
/// Largest conversation JSON read back (a corrupted length must not make
/// us allocate gigabytes).
const MAX_MESSAGES_BYTES: u64 = 1 << 30;

/// The file's rotation flags of a state (bit 0 keys, bit 1 values).
fn rotation_flags(state: &crate::model::State) -> u32 {
    u32::from(state.rotates_qk()) | u32::from(state.rotates_v()) << 1
}

/// FNV-1a, 64 bits.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Hashes what passes through.
struct Hashing<T> {
    inner: T,
    hash: Fnv,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn err(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::SessionFile {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

impl Session {
    /// The fingerprint of the engine's model file.
    fn model_fingerprint(&self) -> u64 {
        let file = self.engine.model().gguf();
        let mut h = Fnv::new();
        h.update(&file.bytes()[..file.data_offset()]);
        h.update(&(file.bytes().len() as u64).to_le_bytes());
        h.0
    }

    /// Saves the conversation and the KV cache to `path` (written beside it
    /// as `PATH.part`, flushed to the disk and renamed, so an interrupted
    /// save leaves the old file).
    pub fn save(&self, path: &Path) -> Result<(), EngineError> {
        if self.core.image_in_cache() {
            return Err(err(
                path,
                "the cache holds an image prompt, which a session file cannot carry",
            ));
        }
        let io = |e: std::io::Error| err(path, e.to_string());
        let part = crate::download::part_path(path);
        let result = self.write_saved(path, &part);
        if result.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        result?;
        std::fs::rename(&part, path).map_err(io)
    }

    /// Writes the file to `part`, flushed to the disk.
    fn write_saved(&self, path: &Path, part: &Path) -> Result<(), EngineError> {
        let io = |e: std::io::Error| err(path, e.to_string());
        let file = std::fs::File::create(part).map_err(io)?;
        let w = Hashing {
            inner: std::io::BufWriter::new(file),
            hash: Fnv::new(),
        };
        let state = &self.core.state;
        let messages: Vec<serde_json::Value> = self
            .core
            .messages
            .iter()
            .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
            .collect();
        let messages = serde_json::to_vec(&messages).map_err(|e| err(path, e.to_string()))?;
        let write = |mut w: Hashing<std::io::BufWriter<std::fs::File>>| -> std::io::Result<()> {
            w.write_all(MAGIC)?;
            w.write_all(&VERSION.to_le_bytes())?;
            w.write_all(&self.model_fingerprint().to_le_bytes())?;
            w.write_all(&state.kv_type().id().to_le_bytes())?;
            w.write_all(&state.kv_type_v().id().to_le_bytes())?;
            w.write_all(&rotation_flags(state).to_le_bytes())?;
            w.write_all(&(self.core.cached.len() as u64).to_le_bytes())?;
            for t in &self.core.cached {
                w.write_all(&t.to_le_bytes())?;
            }
            w.write_all(&(messages.len() as u64).to_le_bytes())?;
            w.write_all(&messages)?;
            state.write_cache(&mut w)?;
            let sum = w.hash.0;
            w.inner.write_all(&sum.to_le_bytes())?;
            // On the disk before the rename makes it the saved session.
            w.inner.into_inner().map_err(|e| e.into_error())?.sync_all()
        };
        write(w).map_err(io)
    }

    /// Replaces this session's conversation and cache with those saved in
    /// `path` by [`save`](Self::save) (same model, same KV type, a context
    /// at least as long as what was saved).
    pub fn restore(&mut self, path: &Path) -> Result<(), EngineError> {
        self.reset();
        let result = self.read_saved(path);
        if result.is_err() {
            self.reset();
        }
        result
    }

    fn read_saved(&mut self, path: &Path) -> Result<(), EngineError> {
        let file = std::fs::File::open(path).map_err(|e| err(path, e.to_string()))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut r = Hashing {
            inner: std::io::BufReader::new(file),
            hash: Fnv::new(),
        };
        let short = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                err(path, "the file is truncated")
            } else {
                err(path, e.to_string())
            }
        };
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(short)?;
        if &magic != MAGIC {
            return Err(err(path, "not a Spinel session file"));
        }
        let mut u32b = [0u8; 4];
        let mut u64b = [0u8; 8];
        let mut read_u32 =
            |r: &mut Hashing<std::io::BufReader<std::fs::File>>| -> Result<u32, EngineError> {
                r.read_exact(&mut u32b).map_err(short)?;
                Ok(u32::from_le_bytes(u32b))
            };
        let version = read_u32(&mut r)?;
        if version != VERSION {
            return Err(err(
                path,
                format!("session file version {version}, expected {VERSION}"),
            ));
        }
        r.read_exact(&mut u64b).map_err(short)?;
        if u64::from_le_bytes(u64b) != self.model_fingerprint() {
            return Err(err(path, "it was saved with another model file"));
        }
        let state = &self.core.state;
        for (which, ours) in [("K", state.kv_type()), ("V", state.kv_type_v())] {
            let kv = read_u32(&mut r)?;
            if kv != ours.id() {
                let theirs = spinel_quant::GgmlType::from_id(kv)
                    .map_or(format!("ggml id {kv}"), |t| t.name().to_string());
                return Err(err(
                    path,
                    format!(
                        "its {which} cache type ({theirs}) is not this session's ({})",
                        ours.name()
                    ),
                ));
            }
        }
        let flags = read_u32(&mut r)?;
        if flags > 3 {
            return Err(err(path, format!("unknown flags {flags:#x}")));
        }
        let ours = rotation_flags(state);
        for (bit, which) in [(1, "keys"), (2, "values")] {
            let rotated = |f: u32| match f & bit {
                0 => "not rotated",
                _ => "rotated",
            };
            if flags & bit != ours & bit {
                return Err(err(
                    path,
                    format!(
                        "its {which} are {}, this session's are {} (KV rotation)",
                        rotated(flags),
                        rotated(ours)
                    ),
                ));
            }
        }
        r.read_exact(&mut u64b).map_err(short)?;
        let n = u64::from_le_bytes(u64b);
        let n_ctx = self.n_ctx() as u64;
        if n > n_ctx {
            return Err(err(
                path,
                format!("it holds {n} positions but this session's context is {n_ctx}"),
            ));
        }
        // Every position is at least a token id in the file.
        if n.saturating_mul(4) > len {
            return Err(err(path, "the file is truncated"));
        }
        let n = n as usize;
        let mut tokens = vec![0u8; n * 4];
        r.read_exact(&mut tokens).map_err(short)?;
        let tokens: Vec<u32> = tokens
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let n_vocab = self.engine.model().config().n_vocab;
        if tokens.iter().any(|&t| t as usize >= n_vocab) {
            return Err(err(path, "it holds a token id outside the vocabulary"));
        }
        r.read_exact(&mut u64b).map_err(short)?;
        let m = u64::from_le_bytes(u64b);
        if m > MAX_MESSAGES_BYTES || m > len {
            return Err(err(path, "the file is truncated or corrupted"));
        }
        let mut json = vec![0u8; m as usize];
        r.read_exact(&mut json).map_err(short)?;
        let messages: Vec<serde_json::Value> = serde_json::from_slice(&json)
            .map_err(|e| err(path, format!("its conversation is not valid JSON: {e}")))?;
        let messages = messages
            .iter()
            .map(|m| match (m["role"].as_str(), m["content"].as_str()) {
                (Some(role), Some(content)) => Ok(Message::new(role, content)),
                _ => Err(err(path, "a message lacks its role or content")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.core.state.read_cache(n, &mut r).map_err(|e| match e {
            crate::model::ModelError::Io(e) => short(e),
            e => err(path, e.to_string()),
        })?;
        let sum = r.hash.0;
        r.inner.read_exact(&mut u64b).map_err(short)?;
        if u64::from_le_bytes(u64b) != sum {
            return Err(err(
                path,
                "its checksum does not match (the file is corrupted)",
            ));
        }
        if r.inner
            .read(&mut [0u8; 1])
            .map_err(|e| err(path, e.to_string()))?
            != 0
        {
            return Err(err(path, "it has trailing bytes"));
        }
        self.core.cached = tokens;
        self.core.messages = messages;
        Ok(())
    }
}
