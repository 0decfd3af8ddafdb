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
}

impl CrossContext {
    fn row(&self, r: usize) -> &[u8] {
        if self.rows.is_empty() {
            &self.last_row
        } else {
            &self.rows[r * self.n_tiles..(r + 1) * self.n_tiles]
        }
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
        let Some(ctx) = s.cross.take() else {
            return Ok(());
        };
        let slot = c.cross_attention_layers.iter().position(|&l| l == il);
        let (Some(keys), Some(values)) = (
            slot.and_then(|i| ctx.k.get(i)),
            slot.and_then(|i| ctx.v.get(i)),
        ) else {
            s.cross = Some(ctx);
            return Err(ModelError::StateMismatch);
        };
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
            for r in 0..n {
                let out = &mut s.att_out[r * q_dim..(r + 1) * q_dim];
                attend_row(
                    c,
                    &ctx,
                    keys,
                    values,
                    &s.q[r * q_dim..(r + 1) * q_dim],
                    r,
                    out,
                );
            }
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

/// Attention of one query row over the vision tokens its mask row allows
/// (every one when it allows no tile), into `out` (`q_dim`).
fn attend_row(
    c: &super::Config,
    ctx: &CrossContext,
    keys: &[f32],
    values: &[f32],
    q: &[f32],
    r: usize,
    out: &mut [f32],
) {
    let hd = c.head_dim;
    let kv_dim = c.kv_dim();
    let group = c.n_head / c.n_head_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    let row = ctx.row(r);
    let any = row.iter().any(|&m| m != 0);
    let seen = |j: usize| !any || row[j / ctx.per_tile] != 0;
    let mut scores = vec![0.0f32; ctx.n_tokens];
    for h in 0..c.n_head {
        let kvh = h / group;
        let qh = &q[h * hd..(h + 1) * hd];
        let mut max = f32::NEG_INFINITY;
        for (j, sc) in scores.iter_mut().enumerate() {
            if seen(j) {
                let k = &keys[j * kv_dim + kvh * hd..j * kv_dim + (kvh + 1) * hd];
                *sc = qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
                max = max.max(*sc);
            }
        }
        let mut sum = 0.0f64;
        for (j, sc) in scores.iter_mut().enumerate() {
            *sc = if seen(j) { exp(*sc - max) } else { 0.0 };
            sum += *sc as f64;
        }
        let inv = (1.0 / sum) as f32;
        let o = &mut out[h * hd..(h + 1) * hd];
        o.fill(0.0);
        for (j, &p) in scores.iter().enumerate() {
            if p != 0.0 {
                let v = &values[j * kv_dim + kvh * hd..j * kv_dim + (kvh + 1) * hd];
                for (o, &v) in o.iter_mut().zip(v) {
                    *o += p * inv * v;
                }
            }
        }
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
