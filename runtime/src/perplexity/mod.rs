//! `spinel perplexity`: perplexity over a text, computed as llama.cpp's
//! `llama-perplexity` computes it (`tools/perplexity/perplexity.cpp`), so the
//! numbers compare:
//!
//! * the whole text is tokenized once, with BOS if the vocabulary adds one
//!   (the text file's one trailing newline dropped, as `-f` drops it);
//! * it is cut into `n_chunk = n_tokens / n_ctx` chunks of `n_ctx` tokens
//!   (the rest is ignored), each evaluated from an empty cache, its first
//!   token replaced by BOS when the vocabulary adds BOS;
//! * only the second half is scored: the logits at positions
//!   `n_ctx/2 .. n_ctx-2` predict the tokens after them, `n_ctx - 1 - n_ctx/2`
//!   tokens per chunk;
//! * `PPL = exp(mean NLL)`, its error `sqrt(var(NLL)/(count-1)) * PPL`.
//!
//! With a reference file ([`BaseWriter`], written from the base model) it
//! also gives the KL divergence of the reference distribution from ours,
//! how often both pick the same top token, and the change in PPL.
//!
//! The reference file (our own compact format, little-endian): the magic
//! `SPNLKLD1`, `n_ctx`, `n_vocab`, `n_chunk` (u32 each), the
//! `n_chunk * n_ctx` token ids (u32), then for each scored position the
//! base log-probability of the next token (f32), the floor `lo` (f32, at
//! least [`LOG_PROB_FLOOR`]) and `n_vocab` u16 `q` with
//! `log p = lo * (1 - q / 65535)`.

use std::io::{self, Read, Write};

use crate::model::{KvType, Model, ModelError, StateOptions};

/// Log-probabilities below this are stored as this in a reference file.
pub const LOG_PROB_FLOOR: f32 = -25.0;

const MAGIC: &[u8; 8] = b"SPNLKLD1";

/// How to evaluate.
#[derive(Clone, Debug)]
pub struct Options {
    /// Tokens per chunk (llama-perplexity's `-c`).
    pub n_ctx: usize,
    /// At most this many chunks (`--chunks`); `None`: all.
    pub n_chunks: Option<usize>,
    pub n_threads: Option<usize>,
    /// The K cache type, and the V cache's unless `kv_type_v` is set.
    pub kv_type: KvType,
    /// The V cache type when it differs from the K cache's.
    pub kv_type_v: Option<KvType>,
    /// R3 at run time (see [`StateOptions::kv_rotation`]).
    pub kv_rotation: Option<bool>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            n_ctx: 512,
            n_chunks: None,
            n_threads: None,
            kv_type: KvType::F32,
            kv_type_v: None,
            kv_rotation: None,
        }
    }
}

/// The comparison with a reference model.
#[derive(Clone, Debug, PartialEq)]
pub struct Kld {
    /// Mean KL divergence (base ‖ ours), nats.
    pub kld: f64,
    pub kld_stderr: f64,
    /// Fraction of positions where both models' most likely token agree.
    pub top1: f64,
    /// The reference model's PPL on the same tokens.
    pub ppl_base: f64,
    /// `ppl - ppl_base`.
    pub delta_ppl: f64,
}

/// What an evaluation found.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub ppl: f64,
    pub ppl_stderr: f64,
    /// Tokens scored.
    pub tokens: usize,
    pub n_chunks: usize,
    pub kld: Option<Kld>,
}

/// Errors of [`evaluate`].
#[derive(Debug)]
pub enum PplError {
    /// Fewer than `2 * n_ctx` tokens (llama-perplexity refuses them too).
    TooFewTokens {
        tokens: usize,
        n_ctx: usize,
    },
    Model(ModelError),
    Io(io::Error),
    /// The reference file is not one, or is for other tokens or sizes.
    BadBase(String),
}

impl std::fmt::Display for PplError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PplError::TooFewTokens { tokens, n_ctx } => write!(
                f,
                "the text has {tokens} tokens; a context of {n_ctx} needs at least {}",
                2 * n_ctx
            ),
            PplError::Model(e) => e.fmt(f),
            PplError::Io(e) => e.fmt(f),
            PplError::BadBase(s) => write!(f, "KL-divergence base file: {s}"),
        }
    }
}

impl std::error::Error for PplError {}

impl From<ModelError> for PplError {
    fn from(e: ModelError) -> Self {
        PplError::Model(e)
    }
}

impl From<io::Error> for PplError {
    fn from(e: io::Error) -> Self {
        PplError::Io(e)
    }
}

/// The text as llama-perplexity's `-f` reads it: one trailing `\n` dropped.
pub fn prepare_text(text: &str) -> &str {
    text.strip_suffix('\n').unwrap_or(text)
}

/// `log softmax(logits)[tok]` as llama.cpp computes it (f32 exponentials,
/// an f64 sum), and the log of the sum with the max subtracted.
fn log_softmax_at(logits: &[f32], tok: usize) -> (f64, f32, f64) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from((l - max).exp())).sum();
    let log_sum = sum.ln();
    (f64::from(logits[tok] - max) - log_sum, max, log_sum)
}

/// Where the reference data goes or comes from.
pub enum Base<'a> {
    None,
    /// Save the reference.
    Write(&'a mut dyn Write),
    /// Compare with a saved reference.
    Read(&'a mut dyn Read),
}

fn read_u32(r: &mut dyn Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Evaluates `model` on `tokens` (already tokenized, with BOS if the
/// vocabulary adds it; `bos` is put at the start of every chunk when given).
/// `progress(chunk, n_chunk, ppl_so_far)` after each chunk.
pub fn evaluate(
    model: &Model<'_>,
    tokens: &[u32],
    bos: Option<u32>,
    opts: &Options,
    mut base: Base<'_>,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<Report, PplError> {
    let n_ctx = opts.n_ctx;
    if n_ctx < 4 || tokens.len() < 2 * n_ctx {
        return Err(PplError::TooFewTokens {
            tokens: tokens.len(),
            n_ctx,
        });
    }
    let n_chunk_max = tokens.len() / n_ctx;
    let n_chunk = opts.n_chunks.map_or(n_chunk_max, |n| n.min(n_chunk_max));
    let n_vocab = model.config().n_vocab;
    let first = n_ctx / 2;

    match &mut base {
        Base::None => {}
        Base::Write(w) => {
            w.write_all(MAGIC)?;
            for v in [n_ctx, n_vocab, n_chunk] {
                w.write_all(&(v as u32).to_le_bytes())?;
            }
            for &t in &tokens[..n_chunk * n_ctx] {
                w.write_all(&t.to_le_bytes())?;
            }
        }
        Base::Read(r) => {
            let mut magic = [0u8; 8];
            r.read_exact(&mut magic)?;
            if &magic != MAGIC {
                return Err(PplError::BadBase(
                    "not a spinel reference-logits file".into(),
                ));
            }
            let (c, v, n) = (read_u32(*r)?, read_u32(*r)?, read_u32(*r)?);
            if (c as usize, v as usize) != (n_ctx, n_vocab) {
                return Err(PplError::BadBase(format!(
                    "made with n_ctx {c} and {v} logits, not {n_ctx} and {n_vocab}"
                )));
            }
            if (n as usize) < n_chunk {
                return Err(PplError::BadBase(format!(
                    "holds {n} chunks, {n_chunk} are evaluated"
                )));
            }
            let mut buf = vec![0u8; n as usize * n_ctx * 4];
            r.read_exact(&mut buf)?;
            let same = buf
                .chunks_exact(4)
                .zip(tokens)
                .take(n_chunk * n_ctx)
                .all(|(b, &t)| u32::from_le_bytes(b.try_into().unwrap()) == t);
            if !same {
                return Err(PplError::BadBase(
                    "made from another text or tokenizer".into(),
                ));
            }
            if n as usize != n_chunk {
                return Err(PplError::BadBase(format!(
                    "holds {n} chunks, {n_chunk} are evaluated"
                )));
            }
        }
    }

    let mut state = model.new_state_with(&StateOptions {
        n_ctx: Some(n_ctx),
        kv_type: opts.kv_type,
        kv_type_v: opts.kv_type_v,
        n_batch: n_ctx.min(512),
        n_threads: opts.n_threads,
        kv_rotation: opts.kv_rotation,
    })?;
    let mut logits = Vec::new();
    let mut chunk = vec![0u32; n_ctx];
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    // KLD sums.
    let (mut nll_base, mut kld_sum, mut kld2, mut same_top) = (0f64, 0f64, 0f64, 0usize);
    let row_bytes = 8 + 2 * n_vocab;
    let mut row = vec![0u8; row_bytes];
    let mut lp = vec![0f32; n_vocab];
    for i in 0..n_chunk {
        let start = i * n_ctx;
        chunk.copy_from_slice(&tokens[start..start + n_ctx]);
        if let Some(b) = bos {
            chunk[0] = b;
        }
        state.reset();
        model.forward_all(&mut state, &chunk, &mut logits)?;
        for j in first..n_ctx - 1 {
            let l = &logits[j * n_vocab..(j + 1) * n_vocab];
            let tok = tokens[start + j + 1] as usize;
            let (lp_tok, max, log_sum) = log_softmax_at(l, tok);
            nll -= lp_tok;
            nll2 += lp_tok * lp_tok;
            count += 1;
            match &mut base {
                Base::None => {}
                Base::Write(w) => {
                    let mut lo = 0f32;
                    for (o, &x) in lp.iter_mut().zip(l) {
                        *o = ((f64::from(x - max) - log_sum) as f32).max(LOG_PROB_FLOOR);
                        lo = lo.min(*o);
                    }
                    row[..4].copy_from_slice(&(lp_tok as f32).to_le_bytes());
                    row[4..8].copy_from_slice(&lo.to_le_bytes());
                    for (o, &x) in row[8..].chunks_exact_mut(2).zip(&lp) {
                        let q = if lo < 0.0 {
                            ((1.0 - x / lo) * 65535.0).round().clamp(0.0, 65535.0) as u16
                        } else {
                            65535
                        };
                        o.copy_from_slice(&q.to_le_bytes());
                    }
                    w.write_all(&row)?;
                }
                Base::Read(r) => {
                    r.read_exact(&mut row)?;
                    let base_tok = f32::from_le_bytes(row[..4].try_into().unwrap());
                    let lo = f32::from_le_bytes(row[4..8].try_into().unwrap());
                    nll_base -= f64::from(base_tok);
                    let mut kld = 0f64;
                    let (mut best_base, mut best_q) = (0usize, 0u16);
                    let mut best_ours = 0usize;
                    for (v, q) in row[8..].chunks_exact(2).enumerate() {
                        let q = u16::from_le_bytes([q[0], q[1]]);
                        if q > best_q {
                            best_q = q;
                            best_base = v;
                        }
                        if l[v] > l[best_ours] {
                            best_ours = v;
                        }
                        let lpb = f64::from(lo) * (1.0 - f64::from(q) / 65535.0);
                        let lpo = f64::from(l[v] - max) - log_sum;
                        kld += lpb.exp() * (lpb - lpo);
                    }
                    kld_sum += kld;
                    kld2 += kld * kld;
                    same_top += usize::from(best_base == best_ours);
                }
            }
        }
        progress(i, n_chunk, (nll / count as f64).exp());
    }
    let n = count as f64;
    let mean = nll / n;
    let ppl = mean.exp();
    let var = nll2 / n - mean * mean;
    let ppl_stderr = if var > 0.0 && count > 1 {
        (var / (n - 1.0)).sqrt() * ppl
    } else {
        0.0
    };
    let kld = match base {
        Base::Read(_) => {
            let mean_kld = kld_sum / n;
            let var = kld2 / n - mean_kld * mean_kld;
            let ppl_base = (nll_base / n).exp();
            Some(Kld {
                kld: mean_kld,
                kld_stderr: if var > 0.0 && count > 1 {
                    (var / (n - 1.0)).sqrt()
                } else {
                    0.0
                },
                top1: same_top as f64 / n,
                ppl_base,
                delta_ppl: ppl - ppl_base,
            })
        }
        _ => None,
    };
    Ok(Report {
        ppl,
        ppl_stderr,
        tokens: count,
        n_chunks: n_chunk,
        kld,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_matches_definition() {
        let l = [1.0f32, 2.0, 3.0, -1.0];
        let z: f64 = l.iter().map(|&x| f64::from(x).exp()).sum();
        let (lp, max, _) = log_softmax_at(&l, 1);
        assert_eq!(max, 3.0);
        assert!((lp - (2.0 - z.ln())).abs() < 1e-6);
    }

    #[test]
    fn trailing_newline() {
        assert_eq!(prepare_text("a\n\n"), "a\n");
        assert_eq!(prepare_text("a"), "a");
    }
}
