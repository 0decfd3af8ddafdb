//! Computing an importance matrix as `llama-imatrix` does: the text,
//! tokenized once (with BOS when the vocabulary adds one), is cut into
//! chunks of `n_ctx` tokens, each run from an empty cache with its first
//! token replaced by BOS; every token of every chunk counts. For each
//! matrix product of each layer, the squares of the f32 inputs are summed
//! per column (per expert for stacked experts, counting the tokens routed
//! to each), in token order and in f32 as llama.cpp sums them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::file::{Entry, Imatrix};
use crate::model::{ActivationObserver, KvType, MatmulSite, Model, ModelError, StateOptions};

/// llama-imatrix skips products of fewer rows (`src1->ne[1] < 16`).
pub const MIN_ROWS: usize = 16;

/// What to compute over.
#[derive(Clone, Debug)]
pub struct Options {
    /// Tokens per chunk.
    pub n_ctx: usize,
    /// At most this many chunks (all that fit by default).
    pub n_chunks: Option<usize>,
    pub n_threads: Option<usize>,
    pub kv_type: KvType,
    pub kv_type_v: Option<KvType>,
    /// Recorded in `imatrix.datasets`.
    pub dataset: Option<String>,
    /// Also record the output layer's inputs (the normalized final
    /// residual of every token) as `output.weight`, like llama-imatrix's
    /// `--process-output`, but for tied embeddings too: `quantize
    /// --type iq4_xs_m` weights the tied token embeddings with it.
    pub process_output: bool,
}

/// Why the importance matrix could not be computed.
#[derive(Debug)]
pub enum CollectError {
    /// The text is shorter than two chunks (llama-imatrix's rule).
    TooFewTokens {
        tokens: usize,
        n_ctx: usize,
    },
    Model(ModelError),
    /// An activation was NaN or infinite.
    NonFinite(String),
}

impl std::fmt::Display for CollectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CollectError::TooFewTokens { tokens, n_ctx } => write!(
                f,
                "the text has {tokens} tokens; a context of {n_ctx} needs at least {}",
                2 * n_ctx
            ),
            CollectError::Model(e) => e.fmt(f),
            CollectError::NonFinite(w) => write!(f, "non-finite activations entering {w}"),
        }
    }
}

impl std::error::Error for CollectError {}

impl From<ModelError> for CollectError {
    fn from(e: ModelError) -> Self {
        CollectError::Model(e)
    }
}

/// Sums of squared activations per weight, shared with the observer the
/// forward pass holds.
#[derive(Default)]
struct Sums {
    entries: BTreeMap<String, Entry>,
    non_finite: Option<String>,
}

/// The [`ActivationObserver`] that sums squared inputs.
struct Collector {
    sums: Arc<Mutex<Sums>>,
    n_expert: usize,
}

impl ActivationObserver for Collector {
    fn observe(&mut self, layer: usize, site: MatmulSite, x: &[f32], n: usize) {
        // Expert products run on however many tokens were routed to the
        // expert (llama.cpp's MUL_MAT_ID sees the whole batch).
        if n == 0 || (site.expert().is_none() && n < MIN_ROWS) {
            return;
        }
        let cols = x.len() / n;
        let (mat, n_mat) = match site.expert() {
            Some(e) => (e, self.n_expert),
            None => (0, 1),
        };
        let mut sums = self.sums.lock().unwrap_or_else(PoisonError::into_inner);
        let sums = &mut *sums;
        for w in site.weights() {
            // llama-imatrix's name for the output layer (which it records
            // only with --process-output, and not at all for tied
            // embeddings).
            let name = if site == MatmulSite::Output {
                "output.weight".to_string()
            } else {
                format!("blk.{layer}.{w}.weight")
            };
            let e = sums.entries.entry(name.clone()).or_insert_with(|| Entry {
                sums: vec![0.0; cols * n_mat],
                counts: vec![0; n_mat],
            });
            if e.sums.len() != cols * n_mat {
                sums.non_finite
                    .get_or_insert(format!("{name} (inconsistent sizes)"));
                continue;
            }
            let acc = &mut e.sums[mat * cols..(mat + 1) * cols];
            for row in x.chunks_exact(cols) {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a += v * v;
                }
            }
            e.counts[mat] += n as i64;
            if !acc.iter().all(|v| v.is_finite()) {
                sums.non_finite.get_or_insert(name);
            }
        }
    }
}

/// Computes the importance matrix of `model` over `tokens` (the whole text,
/// tokenized with BOS if the vocabulary adds one; `bos` replaces the first
/// token of every chunk when given). `progress(chunk, n_chunk)` after
/// each chunk.
pub fn compute(
    model: &Model<'_>,
    tokens: &[u32],
    bos: Option<u32>,
    opts: &Options,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Imatrix, CollectError> {
    let n_ctx = opts.n_ctx;
    if n_ctx == 0 || tokens.len() < 2 * n_ctx {
        return Err(CollectError::TooFewTokens {
            tokens: tokens.len(),
            n_ctx,
        });
    }
    let n_chunk_max = tokens.len() / n_ctx;
    let n_chunk = opts.n_chunks.map_or(n_chunk_max, |n| n.min(n_chunk_max));
    let mut state = model.new_state_with(&StateOptions {
        n_ctx: Some(n_ctx),
        kv_type: opts.kv_type,
        kv_type_v: opts.kv_type_v,
        // Each chunk is one batch, as in llama-imatrix.
        n_batch: n_ctx,
        n_threads: opts.n_threads,
        kv_rotation: None,
    })?;
    let sums = Arc::new(Mutex::new(Sums::default()));
    let n_expert = model.config().moe.as_ref().map_or(0, |m| m.n_expert);
    state.set_observer(Some(Box::new(Collector {
        sums: Arc::clone(&sums),
        n_expert,
    })));
    let mut chunk = vec![0u32; n_ctx];
    let mut all_logits = Vec::new();
    for i in 0..n_chunk {
        chunk.copy_from_slice(&tokens[i * n_ctx..(i + 1) * n_ctx]);
        if let Some(b) = bos {
            chunk[0] = b;
        }
        state.reset();
        if opts.process_output {
            // Every position's logits, so the output layer sees every token.
            model.forward_verify(&mut state, &chunk, &mut all_logits)?;
        } else {
            model.forward(&mut state, &chunk)?;
        }
        if let Some(w) = &sums
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .non_finite
        {
            return Err(CollectError::NonFinite(w.clone()));
        }
        progress(i, n_chunk);
    }
    state.set_observer(None);
    let sums = std::mem::take(&mut *sums.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(Imatrix {
        entries: sums.entries,
        datasets: opts.dataset.iter().cloned().collect(),
        chunk_count: n_chunk as u32,
        chunk_size: n_ctx as u32,
        legacy: false,
        has_metadata: true,
    })
}
