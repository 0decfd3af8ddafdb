//! Mllama (Llama 3.2 Vision) cross-attention: the image enters the text
//! model only as the keys and values of the cross-attention blocks that
//! replace some layers.
//!
//! [`Model::set_image_context`] projects an image's cross-attention states
//! (the vision tower's output, `[tiles · tokens_per_tile, dim]`) to the
//! keys (k-normed) and values of every cross-attention layer, once; they
//! stay in the [`State`] for the prompt and every decode step after it.
//! [`Model::forward_with_cross_mask`] runs a prompt with a per-token row of
//! the processor's cross-attention mask (which tiles each token may see);
//! later tokens reuse the last row, as Hugging Face's generation does.
//!
//! The block: `h = x + tanh(attn_gate) · CrossAttn(norm(x))`, then
//! `out = h + tanh(mlp_gate) · rowmask · MLP(norm(h))`, where rowmask is 0
//! for a token whose row allows no tile. Such a token attends to every
//! vision token with no bias (Hugging Face's behaviour, which the reference
//! data follows; Meta's code also masks its attention output). Without an
//! image context the cross-attention layers are skipped entirely.

use super::Model;
use super::error::ModelError;
use super::matmul::{Norm, Product};
use super::ops::{exp, rmsnorm};
use super::pool::SharedMut;
use super::state::State;
use super::weights::{CrossAttn, Layer};

/// The image side of an mllama sequence (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct CrossContext {
    /// Vision tokens: rows of each layer's keys and values.
    n_tokens: usize,
    /// Vision tokens per tile.
    per_tile: usize,
    /// Tiles of all images together (the mask's row length).
    n_tiles: usize,
    /// Per cross-attention layer (in layer order): `(n_tokens, kv_dim)`
    /// keys after k_norm, and values.
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// `(rows of the running batch, n_tiles)`; empty: every row uses
    /// `last_row`.
    rows: Vec<u8>,
    /// The mask row of the last token run (decode steps reuse it).
    last_row: Vec<u8>,
    /// `(threads, n_tokens)`: each thread's attention scores.
    scores: Vec<f32>,
}

impl CrossContext {
    fn row(&self, r: usize) -> &[u8] {
        mask_row(&self.rows, &self.last_row, r)
    }
}

/// Row `r` of the running batch's mask, or the last row when there is none.
fn mask_row<'a>(rows: &'a [u8], last_row: &'a [u8], r: usize) -> &'a [u8] {
    let n_tiles = last_row.len();
    if rows.is_empty() {
        last_row
    } else {
        &rows[r * n_tiles..(r + 1) * n_tiles]
    }
}

impl Model<'_> {
    /// Sets the image of an mllama sequence: `states` is the vision
    /// tower's cross-attention states of all images, `(n_tiles ·
    /// tokens_per_tile, dim)` row-major, tiles in the order of the mask's
    /// columns. Computes every cross-attention layer's keys and values once;
    /// they stay in `state` until [`clear_image_context`](Self::clear_image_context)
    /// or [`State::reset`]. Until a mask row is given every token sees no
    /// tile.
    pub fn set_image_context(
        &self,
        state: &mut State,
        states: &[f32],
        n_tiles: usize,
    ) -> Result<(), ModelError> {
        let c = &self.config;
        let bad = |reason: String| ModelError::BadImageInput { reason };
        if c.cross_attention_layers.is_empty() {
            return Err(bad(format!(
                "a {} model has no cross-attention layers for an image",
                c.arch.name()
            )));
        }
        let (dim, kv_dim) = (c.dim, c.kv_dim());
        if n_tiles == 0 || states.is_empty() || states.len() % (dim * n_tiles) != 0 {
            return Err(bad(format!(
                "{} values are not {n_tiles} tiles of rows of the model width {dim}",
                states.len()
            )));
        }
        state.reacquire()?;
        if state.layout != self.layout {
            return Err(ModelError::StateMismatch);
        }
        let n_tokens = states.len() / dim;
        let mut ctx = CrossContext {
            n_tokens,
            per_tile: n_tokens / n_tiles,
            n_tiles,
            k: Vec::new(),
            v: Vec::new(),
            rows: Vec::new(),
            last_row: vec![0; n_tiles],
            scores: vec![0.0; state.pool.n_threads() * n_tokens],
        };
        let bytes = self.bytes();
        let s = state;
        for (il, layer) in self.weights.layers.iter().enumerate() {
            let Some(cross) = &layer.cross else { continue };
            let (wk, wv) = (layer.wk.view(bytes), layer.wv.view(bytes));
            let (mut k, mut v) = (vec![0.0; n_tokens * kv_dim], vec![0.0; n_tokens * kv_dim]);
            self.enter_stage(il);
            let mut r0 = 0;
            while r0 < n_tokens {
                let n = (n_tokens - r0).min(s.n_batch);
                let x = &states[r0 * dim..(r0 + n) * dim];
                s.mm.prepare(&mut s.pool, x, n, dim, None, &[wk.w.w.ty, wv.w.w.ty])?;
                s.mm.run(
                    &mut s.pool,
                    n,
                    [Product::Set(wk, &mut s.k), Product::Set(wv, &mut s.v)],
                )?;
                k[r0 * kv_dim..(r0 + n) * kv_dim].copy_from_slice(&s.k[..n * kv_dim]);
                v[r0 * kv_dim..(r0 + n) * kv_dim].copy_from_slice(&s.v[..n * kv_dim]);
                r0 += n;
            }
            self.leave_stage(il);
            norm_heads(&mut k, &cross.k_norm, c.rms_eps);
            ctx.k.push(k);
            ctx.v.push(v);
        }
        s.cross = Some(Box::new(ctx));
        Ok(())
    }

    /// Forgets the image of `state`: its cross-attention layers are skipped
    /// again.
    pub fn clear_image_context(&self, state: &mut State) {
        state.cross = None;
    }

    /// Like [`forward`](Self::forward) on a sequence with an image
    /// ([`set_image_context`](Self::set_image_context)): `mask` is the
    /// processor's cross-attention mask of `tokens`, `(tokens.len(),
    /// n_tiles)` row-major, 1 where the token may see the tile. Later
    /// tokens (plain [`forward`](Self::forward)) reuse the last row.
    pub fn forward_with_cross_mask<'s>(
        &self,
        state: &'s mut State,
        tokens: &[u32],
        mask: &[u8],
    ) -> Result<&'s [f32], ModelError> {
        let Some(n_tiles) = state.cross.as_ref().map(|c| c.n_tiles) else {
            return Err(ModelError::BadImageInput {
                reason: "a cross-attention mask without an image context".into(),
            });
        };
        if mask.len() != tokens.len() * n_tiles {
            return Err(ModelError::BadImageInput {
                reason: format!(
                    "a cross-attention mask of {} values for {} tokens of {n_tiles} tiles",
                    mask.len(),
                    tokens.len()
                ),
            });
        }
        state.reacquire()?;
        self.check_input(state, tokens)?;
        let n_batch = state.n_batch;
        let result = (|| -> Result<(), ModelError> {
            for (batch, rows) in tokens.chunks(n_batch).zip(mask.chunks(n_batch * n_tiles)) {
                if let Some(c) = state.cross.as_mut() {
                    c.rows.clear();
                    c.rows.extend_from_slice(rows);
                }
                self.forward_rows(state, &mut [], &[batch.len()], batch, None)?;
            }
            Ok(())
        })();
        if let Some(c) = state.cross.as_mut() {
            c.rows.clear();
            if result.is_ok() {
                c.last_row.copy_from_slice(&mask[mask.len() - n_tiles..]);
            }
        }
        result?;
        let last = (tokens.len() - 1) % n_batch;
        self.logits_at(state, last)?;
        Ok(&state.logits)
    }

    /// A cross-attention block on the `n` rows of the batch (the caller
    /// checked that the state has an image context).
    pub(super) fn cross_layer(
        &self,
        s: &mut State,
        layer: &Layer,
        cross: &CrossAttn,
        il: usize,
        n: usize,
    ) -> Result<(), ModelError> {
        let c = &self.config;
        let bytes = self.bytes();
        let (dim, q_dim) = (c.dim, c.q_dim());
        let Some(mut ctx) = s.cross.take() else {
            return Ok(());
        };
        let slot = c.cross_attention_layers.iter().position(|&l| l == il);
        if slot.is_none_or(|i| i >= ctx.k.len()) {
            s.cross = Some(ctx);
            return Err(ModelError::StateMismatch);
        }
        let run = (|| -> Result<(), ModelError> {
            // q = norm_heads(Wq · norm(x)), no RoPE.
            let wq = layer.wq.view(bytes);
            let norm = Norm {
                weight: &layer.attn_norm,
                eps: c.rms_eps,
                out: &mut s.xb,
            };
            s.mm.prepare(&mut s.pool, &s.x, n, dim, Some(norm), &[wq.w.w.ty])?;
            s.mm.run(&mut s.pool, n, [Product::Set(wq, &mut s.q)])?;
            norm_heads(&mut s.q[..n * q_dim], &cross.q_norm, c.rms_eps);
            self.cross_attend(s, &mut ctx, slot.unwrap_or(0), n)?;
            // x += tanh(attn_gate) · Wo · attention.
            let wo = layer.wo.view(bytes);
            s.mm.prepare(&mut s.pool, &s.att_out, n, q_dim, None, &[wo.w.w.ty])?;
            s.mm.run(&mut s.pool, n, [Product::Set(wo, &mut s.xb)])?;
            for (x, y) in s.x[..n * dim].iter_mut().zip(&s.xb[..n * dim]) {
                *x += cross.attn_gate * y;
            }
            // x += tanh(mlp_gate) · rowmask · MLP(norm(x)).
            let super::weights::Ffn::Dense { gate, up, down } = &layer.ffn else {
                return Err(ModelError::Unsupported {
                    what: "a cross-attention layer with experts".into(),
                });
            };
            let (gate, up, down) = (gate.view(bytes), up.view(bytes), down.view(bytes));
            let norm = Norm {
                weight: &layer.ffn_norm,
                eps: c.rms_eps,
                out: &mut s.xb,
            };
            let ff = gate.w.w.rows;
            let types = [gate.w.w.ty, up.w.w.ty];
            s.mm.prepare(&mut s.pool, &s.x, n, dim, Some(norm), &types)?;
            s.mm.run(&mut s.pool, n, [Product::SwiGlu(gate, up, &mut s.hb)])?;
            s.mm.prepare(&mut s.pool, &s.hb, n, ff, None, &[down.w.w.ty])?;
            s.mm.run(&mut s.pool, n, [Product::Set(down, &mut s.xb)])?;
            for r in 0..n {
                if ctx.row(r).iter().any(|&m| m != 0) {
                    let x = &mut s.x[r * dim..(r + 1) * dim];
                    for (x, y) in x.iter_mut().zip(&s.xb[r * dim..(r + 1) * dim]) {
                        *x += cross.mlp_gate * y;
                    }
                }
            }
            Ok(())
        })();
        s.cross = Some(ctx);
        run
    }
}

impl Model<'_> {
    /// Attention of the batch's `n` query rows (`s.q`) over the vision
    /// tokens of cross-attention layer `slot`, into `s.att_out`: a pool
    /// task per (row, head).
    fn cross_attend(
        &self,
        s: &mut State,
        ctx: &mut CrossContext,
        slot: usize,
        n: usize,
    ) -> Result<(), ModelError> {
        let c = &self.config;
        let (hd, q_dim, kv_dim) = (c.head_dim, c.q_dim(), c.kv_dim());
        let group = c.n_head / c.n_head_kv;
        let scale = 1.0 / (hd as f32).sqrt();
        let CrossContext {
            n_tokens,
            per_tile,
            k,
            v,
            rows,
            last_row,
            scores,
            ..
        } = ctx;
        let (nt, per_tile) = (*n_tokens, *per_tile);
        // Sized when the image was set; a pool of another size gets more.
        let need = s.pool.n_threads() * nt;
        if scores.len() < need {
            scores.resize(need, 0.0);
        }
        let (keys, values) = (&k[slot], &v[slot]);
        let q = &s.q;
        let out = SharedMut::new(&mut s.att_out[..n * q_dim]);
        let scratch = SharedMut::new(&mut scores[..]);
        let head = |thread: usize, task: usize| {
            let (r, h) = (task / c.n_head, task % c.n_head);
            let kvh = h / group;
            // SAFETY: each thread has its own score row, each task its own
            // head of its own output row.
            let (sc, o) = unsafe {
                (
                    scratch.slice(thread * nt..(thread + 1) * nt),
                    out.slice(r * q_dim + h * hd..r * q_dim + (h + 1) * hd),
                )
            };
            let qh = &q[r * q_dim + h * hd..r * q_dim + (h + 1) * hd];
            let row = mask_row(rows, last_row, r);
            let any = row.iter().any(|&m| m != 0);
            let seen = |j: usize| !any || row[j / per_tile] != 0;
            let span = |j: usize| j * kv_dim + kvh * hd..j * kv_dim + (kvh + 1) * hd;
            let mut max = f32::NEG_INFINITY;
            for (j, x) in sc.iter_mut().enumerate() {
                if seen(j) {
                    *x = qh
                        .iter()
                        .zip(&keys[span(j)])
                        .map(|(a, b)| a * b)
                        .sum::<f32>()
                        * scale;
                    max = max.max(*x);
                }
            }
            let mut sum = 0.0f64;
            for (j, x) in sc.iter_mut().enumerate() {
                *x = if seen(j) { exp(*x - max) } else { 0.0 };
                sum += *x as f64;
            }
            let inv = (1.0 / sum) as f32;
            o.fill(0.0);
            for (j, &p) in sc.iter().enumerate() {
                if p != 0.0 {
                    for (o, &v) in o.iter_mut().zip(&values[span(j)]) {
                        *o += p * inv * v;
                    }
                }
            }
        };
        s.pool.run(n * c.n_head, &head)?;
        Ok(())
    }
}

/// RMS-normalizes each `w.len()`-wide head of `x` with the weight `w`.
fn norm_heads(x: &mut [f32], w: &[f32], eps: f32) {
    let mut tmp = vec![0.0f32; w.len()];
    for head in x.chunks_exact_mut(w.len()) {
        rmsnorm(&mut tmp, head, Some(w), eps);
        head.copy_from_slice(&tmp);
    }
}
