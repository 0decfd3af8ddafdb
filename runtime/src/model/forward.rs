//! The forward pass, in the manner of llama2.c's `forward()`: norm, QKV,
//! RoPE, attention, output projection, residual; norm, feed-forward,
//! residual; for every layer; then the final norm and the vocabulary
//! projection. Every buffer is in the [`State`]; nothing is allocated here.
//!
//! Each step runs on the state's worker pool: matrix products split their
//! weight rows across threads ([`super::matmul`]), attention its heads and
//! query blocks ([`super::attention`]), row-wise steps their rows. Norms
//! are fused into the conversion of their output for the products that
//! read it, SwiGLU into the gate/up product, residual adds into the
//! product that ends each block.

use spinel_quant::{Hadamard, Kernels};

use super::Model;
use super::attention::Attention;
use super::error::ModelError;
use super::matmul::{Norm, Product};
use super::observe::MatmulSite;
use super::ops::{add, rmsnorm_heads, rope, rope_angles};
use super::pool::{Pool, SharedMut, chunk};
use super::state::{Route, State};
use super::weights::{Ffn, Lin, MoeFfn, Weight};

/// Input embeddings that replace the token embeddings at some positions
/// (image features at the `<|patch|>` tokens of a Llama 4 prompt).
#[derive(Clone, Copy, Debug)]
pub struct EmbeddingOverride<'a> {
    /// Indices into the `tokens` of the call, ascending.
    pub indices: &'a [usize],
    /// `(indices.len(), dim)` row-major: the embedding of each.
    pub rows: &'a [f32],
}

impl EmbeddingOverride<'_> {
    /// Writes the rows whose index falls in `first..first + rows` into
    /// `x` (`rows` rows of `dim`).
    fn apply(&self, x: &mut [f32], dim: usize, first: usize) {
        let n = x.len() / dim;
        for (j, &i) in self.indices.iter().enumerate() {
            if (first..first + n).contains(&i) {
                let r = i - first;
                x[r * dim..(r + 1) * dim].copy_from_slice(&self.rows[j * dim..(j + 1) * dim]);
            }
        }
    }
}

impl Model<'_> {
    /// Like [`forward`](Self::forward), with the input embeddings of the
    /// tokens at `over.indices` replaced by `over.rows` before layer 0.
    pub fn forward_with_embeddings<'s>(
        &self,
        state: &'s mut State,
        tokens: &[u32],
        over: EmbeddingOverride<'_>,
    ) -> Result<&'s [f32], ModelError> {
        let dim = self.config.dim;
        let sorted = over.indices.windows(2).all(|w| w[0] < w[1]);
        let in_range = over.indices.last().is_none_or(|&i| i < tokens.len());
        if over.rows.len() != over.indices.len() * dim || !sorted || !in_range {
            return Err(ModelError::BatchMismatch {
                tokens: over.indices.len(),
                sequences: over.rows.len() / dim.max(1),
            });
        }
        state.reacquire()?;
        self.check_input(state, tokens)?;
        for (b, batch) in tokens.chunks(state.n_batch).enumerate() {
            let first = b * state.n_batch;
            self.forward_rows(state, &mut [], &[batch.len()], batch, Some((over, first)))?;
        }
        let last = (tokens.len() - 1) % state.n_batch;
        self.logits_at(state, last)?;
        Ok(&state.logits)
    }

    /// Runs `tokens` at positions `state.n_past()..` and returns the logits
    /// of the last one (`n_vocab` values).
    ///
    /// A prompt is pushed through in batches of up to `n_batch` positions;
    /// the keys and values of every position stay in the state's cache, so
    /// the next call (the next generated token, or the next turn of a
    /// conversation) continues where this one stopped.
    pub fn forward<'s>(
        &self,
        state: &'s mut State,
        tokens: &[u32],
    ) -> Result<&'s [f32], ModelError> {
        state.reacquire()?;
        self.check_input(state, tokens)?;
        for batch in tokens.chunks(state.n_batch) {
            self.forward_batch(state, batch)?;
        }
        let last = (tokens.len() - 1) % state.n_batch;
        self.logits_at(state, last)?;
        Ok(&state.logits)
    }

    /// Like [`forward`](Self::forward), but keeps the logits of every
    /// position: `logits` becomes `(tokens.len(), n_vocab)`, row-major.
    pub fn forward_all(
        &self,
        state: &mut State,
        tokens: &[u32],
        logits: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        state.reacquire()?;
        self.check_input(state, tokens)?;
        logits.clear();
        for batch in tokens.chunks(state.n_batch) {
            self.forward_batch(state, batch)?;
            for t in 0..batch.len() {
                self.logits_at(state, t)?;
                logits.extend_from_slice(&state.logits);
            }
        }
        Ok(())
    }

    /// Runs `tokens` (at most `n_batch` of them) as one batch and keeps the
    /// logits of every position in `logits` (`(tokens.len(), n_vocab)`,
    /// row-major): speculative decoding's verification. Each row is
    /// computed with the one-row kernels, so it is bit-identical to
    /// running the tokens one [`forward`](Self::forward) at a time, while
    /// the weights are still read from memory once per tile for all rows.
    /// The state's [`logits`](State::logits) are the last row's.
    pub fn forward_verify(
        &self,
        state: &mut State,
        tokens: &[u32],
        logits: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        state.reacquire()?;
        self.check_input(state, tokens)?;
        if tokens.len() > state.n_batch {
            return Err(ModelError::BatchMismatch {
                tokens: tokens.len(),
                sequences: state.n_batch,
            });
        }
        state.mm.row_invariant = true;
        let run = self.forward_batch(state, tokens);
        let n_vocab = self.config.n_vocab;
        logits.resize(tokens.len() * n_vocab, 0.0);
        let run = run.and_then(|()| self.logits_rows(state, tokens.len(), logits));
        state.mm.row_invariant = false;
        run?;
        let last = &logits[(tokens.len() - 1) * n_vocab..];
        state.logits.copy_from_slice(last);
        Ok(())
    }

    /// One decode step for several sequences at once (continuous
    /// batching): `tokens[0]` continues `state`, `tokens[i]` (`i ≥ 1`)
    /// continues `others[i - 1]`, each at its own position and over its own
    /// KV cache. The matrix products run once for all the rows, on
    /// `state`'s threads and buffers; attention runs per sequence. Each
    /// state's [`logits`](State::logits) are set as [`forward`](Self::forward)
    /// would set them, and `logits` (scratch, resized once) holds all rows.
    ///
    /// A row's result is the same as its own one-row [`forward`](Self::forward)
    /// up to the summation order of the batched products.
    pub fn forward_multi(
        &self,
        state: &mut State,
        others: &mut [&mut State],
        tokens: &[u32],
        logits: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        if tokens.len() != others.len() + 1 {
            return Err(ModelError::BatchMismatch {
                tokens: tokens.len(),
                sequences: others.len() + 1,
            });
        }
        let ones = vec![1; tokens.len()];
        self.forward_segments(state, others, &ones, tokens, logits)
    }

    /// One forward pass over several sequences, each continued by its own
    /// run of tokens (chunked prefill mixed with decode steps): `tokens` is
    /// the runs one after the other, `lens[0]` of them continuing `state`
    /// and `lens[i]` (`i ≥ 1`) continuing `others[i - 1]`, each at its own
    /// positions over its own KV cache. The matrix products run once for
    /// all the rows, on `state`'s threads and buffers (at most its
    /// `n_batch` rows); attention runs per sequence. Each state's
    /// [`logits`](State::logits) become those of its run's last token, and
    /// `logits` (scratch) holds them row by row.
    pub fn forward_segments(
        &self,
        state: &mut State,
        others: &mut [&mut State],
        lens: &[usize],
        tokens: &[u32],
        logits: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let total: usize = lens.iter().sum();
        if lens.len() != others.len() + 1 || lens.contains(&0) || total != tokens.len() {
            return Err(ModelError::BatchMismatch {
                tokens: tokens.len(),
                sequences: others.len() + 1,
            });
        }
        if tokens.len() > state.n_batch {
            return Err(ModelError::BatchMismatch {
                tokens: tokens.len(),
                sequences: state.n_batch,
            });
        }
        state.reacquire()?;
        self.check_input(state, &tokens[..lens[0]])?;
        let mut start = lens[0];
        for (o, &len) in others.iter_mut().zip(&lens[1..]) {
            o.reacquire()?;
            self.check_input(o, &tokens[start..start + len])?;
            start += len;
            let cache = |s: &State| (s.kv.k_ty, s.kv.v_ty, s.rotate_qk, s.rotate_v);
            if cache(o) != cache(state) {
                return Err(ModelError::StateMismatch);
            }
        }
        self.forward_rows(state, others, lens, tokens, None)?;
        // The last row of each run, moved up to row `j` (never down: each
        // run has a row), is all the logits are needed for.
        let dim = self.config.dim;
        let mut end = 0;
        for (j, &len) in lens.iter().enumerate() {
            end += len;
            if end - 1 != j {
                state.x.copy_within((end - 1) * dim..end * dim, j * dim);
            }
        }
        let n_vocab = self.config.n_vocab;
        let n = lens.len();
        logits.resize(n * n_vocab, 0.0);
        self.logits_rows(state, n, logits)?;
        state.logits.copy_from_slice(&logits[..n_vocab]);
        for (o, l) in others.iter_mut().zip(logits.chunks_exact(n_vocab).skip(1)) {
            o.logits.copy_from_slice(l);
        }
        Ok(())
    }

    pub(super) fn check_input(&self, state: &State, tokens: &[u32]) -> Result<(), ModelError> {
        if state.layout != self.layout {
            return Err(ModelError::StateMismatch);
        }
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        // Mllama's embedding has rows past the vocabulary (the image token).
        let n_vocab = self.weights.token_embd.rows;
        if let Some((index, &token)) = tokens
            .iter()
            .enumerate()
            .find(|&(_, &t)| t as usize >= n_vocab)
        {
            return Err(ModelError::TokenOutOfRange {
                token,
                index,
                n_vocab,
            });
        }
        if tokens.len() > state.kv.n_ctx - state.n_past {
            return Err(ModelError::ContextFull {
                n_past: state.n_past,
                n_new: tokens.len(),
                n_ctx: state.kv.n_ctx,
            });
        }
        Ok(())
    }

    /// `state.logits = output · norm(x[t])` for row `t` of the last batch.
    pub(super) fn logits_at(&self, s: &mut State, t: usize) -> Result<(), ModelError> {
        let (dim, w) = (self.config.dim, &self.weights);
        let norm = Norm {
            weight: &w.output_norm,
            eps: self.config.rms_eps,
            out: &mut s.xb,
        };
        let x = &s.x[t * dim..(t + 1) * dim];
        s.mm.prepare(&mut s.pool, x, 1, dim, Some(norm), &[w.output.ty])?;
        let output = Lin {
            w: w.output.view(self.bytes()),
            bias: None,
        };
        self.enter_stage(w.layers.len());
        s.mm.run(&mut s.pool, 1, [Product::Set(output, &mut s.logits)])?;
        self.leave_stage(w.layers.len());
        Ok(())
    }

    /// `logits = output · norm(x[t])` for rows `0..n` of the last batch.
    fn logits_rows(&self, s: &mut State, n: usize, logits: &mut [f32]) -> Result<(), ModelError> {
        let (dim, w) = (self.config.dim, &self.weights);
        let norm = Norm {
            weight: &w.output_norm,
            eps: self.config.rms_eps,
            out: &mut s.xb,
        };
        s.mm.prepare(
            &mut s.pool,
            &s.x[..n * dim],
            n,
            dim,
            Some(norm),
            &[w.output.ty],
        )?;
        s.observer
            .see(w.layers.len(), MatmulSite::Output, &s.xb, n, dim);
        let output = Lin {
            w: w.output.view(self.bytes()),
            bias: None,
        };
        self.enter_stage(w.layers.len());
        s.mm.run(&mut s.pool, n, [Product::Set(output, logits)])?;
        self.leave_stage(w.layers.len());
        Ok(())
    }

    /// Pushes `tokens` (at most `n_batch`, checked) through every layer at
    /// positions `n_past..n_past + tokens.len()`.
    fn forward_batch(&self, s: &mut State, tokens: &[u32]) -> Result<(), ModelError> {
        self.forward_rows(s, &mut [], &[tokens.len()], tokens, None)
    }

    /// The layers for `tokens`: runs of `lens[0]` rows for `s` (positions
    /// `s.n_past..`) and `lens[i]` rows for `others[i - 1]` (from its own
    /// `n_past`), one after the other. `over` replaces input embeddings:
    /// its index `first + r` is row `r` of this batch.
    pub(super) fn forward_rows(
        &self,
        s: &mut State,
        others: &mut [&mut State],
        lens: &[usize],
        tokens: &[u32],
        over: Option<(EmbeddingOverride<'_>, usize)>,
    ) -> Result<(), ModelError> {
        let c = &self.config;
        let w = &self.weights;
        let bytes = self.bytes();
        let n = tokens.len();
        let pos0 = s.n_past;
        let (dim, hd, q_dim) = (c.dim, c.head_dim, c.q_dim());
        let eps = c.rms_eps;

        // Token embeddings.
        let embd = w.token_embd.view(bytes);
        let embd_to_float = Kernels::get().of(embd.w.ty).to_float;
        for (x, &tok) in s.x.chunks_exact_mut(dim).zip(tokens) {
            embd_to_float(embd.row(tok as usize), x);
        }
        self.gathered_embeddings(tokens);
        if let Some((o, first)) = over {
            o.apply(&mut s.x[..n * dim], dim, first);
        }
        // RoPE angles of the batch's positions: each run from its
        // sequence's `n_past`.
        let starts = std::iter::once(pos0).chain(others.iter().map(|o| o.n_past));
        let positions = lens.iter().zip(starts).flat_map(|(&len, p0)| p0..p0 + len);
        for (cs, p) in s.rope_cs.chunks_exact_mut(hd).take(n).zip(positions) {
            rope_angles(cs, p as f32, &self.rope_inv_freq);
        }

        let with_image = s.cross.is_some() || others.iter().any(|o| o.cross.is_some());
        if with_image && !others.is_empty() {
            return Err(ModelError::Unsupported {
                what: "batching a sequence that has an image with others".into(),
            });
        }
        for (il, layer) in w.layers.iter().enumerate() {
            self.enter_stage(il);
            if let Some(cross) = &layer.cross {
                // Without an image the cross-attention layers are skipped.
                if with_image {
                    self.cross_layer(s, layer, cross, il, n)?;
                }
                self.leave_stage(il);
                continue;
            }
            // ---- Attention: x += Wo · attention(q, k, v) ----
            let (wq, wk, wv, wo) = (
                layer.wq.view(bytes),
                layer.wk.view(bytes),
                layer.wv.view(bytes),
                layer.wo.view(bytes),
            );
            let norm = Norm {
                weight: &layer.attn_norm,
                eps,
                out: &mut s.xb,
            };
            let types = [wq.w.w.ty, wk.w.w.ty, wv.w.w.ty];
            s.mm.prepare(&mut s.pool, &s.x, n, dim, Some(norm), &types)?;
            s.observer.see(il, MatmulSite::AttnQkv, &s.xb, n, dim);
            s.mm.run(
                &mut s.pool,
                n,
                [
                    Product::Set(wq, &mut s.q),
                    Product::Set(wk, &mut s.k),
                    Product::Set(wv, &mut s.v),
                ],
            )?;
            self.attend(s, il, pos0, 0..lens[0])?;
            // The other runs over their own sequences' caches, lent to `s`.
            let mut r0 = lens[0];
            for (o, &len) in others.iter_mut().zip(&lens[1..]) {
                std::mem::swap(&mut s.kv, &mut o.kv);
                let r = self.attend(s, il, o.n_past, r0..r0 + len);
                std::mem::swap(&mut s.kv, &mut o.kv);
                r?;
                r0 += len;
            }
            s.mm.prepare(&mut s.pool, &s.att_out, n, q_dim, None, &[wo.w.w.ty])?;
            s.observer
                .see(il, MatmulSite::AttnOutput, &s.att_out, n, q_dim);
            s.mm.run(&mut s.pool, n, [Product::Add(wo, &mut s.x)])?;

            // ---- Feed-forward: x += ffn(norm(x)) ----
            let norm = Norm {
                weight: &layer.ffn_norm,
                eps,
                out: &mut s.xb,
            };
            match &layer.ffn {
                Ffn::Dense { gate, up, down } => {
                    let (gate, up, down) = (gate.view(bytes), up.view(bytes), down.view(bytes));
                    let ff = gate.w.w.rows;
                    let types = [gate.w.w.ty, up.w.w.ty];
                    s.mm.prepare(&mut s.pool, &s.x, n, dim, Some(norm), &types)?;
                    s.observer.see(il, MatmulSite::FfnGateUp, &s.xb, n, dim);
                    s.mm.run(&mut s.pool, n, [Product::SwiGlu(gate, up, &mut s.hb)])?;
                    if c.rotation.r4 {
                        let what = "online rotation R4";
                        hadamard_rows(&mut s.pool, &mut s.hb, (n, ff), ff, false, what)?;
                    }
                    s.mm.prepare(&mut s.pool, &s.hb, n, ff, None, &[down.w.w.ty])?;
                    s.observer.see(il, MatmulSite::FfnDown, &s.hb, n, ff);
                    s.mm.run(&mut s.pool, n, [Product::Add(down, &mut s.x)])?;
                }
                Ffn::Moe(m) => {
                    s.mm.prepare(&mut s.pool, &s.x, n, dim, Some(norm), &[m.router.ty])?;
                    s.observer.see(il, MatmulSite::Router, &s.xb, n, dim);
                    self.moe(s, m, il, n)?;
                }
            }
            self.leave_stage(il);
        }
        s.n_past += lens[0];
        for (o, &len) in others.iter_mut().zip(&lens[1..]) {
            o.n_past += len;
        }
        Ok(())
    }

    /// Positions, stores and attends rows `rows` of the batch, which sit at
    /// positions `pos0..` of the cache in `s.kv`.
    fn attend(
        &self,
        s: &mut State,
        il: usize,
        pos0: usize,
        rows: std::ops::Range<usize>,
    ) -> Result<(), ModelError> {
        let c = &self.config;
        let q_dim = c.q_dim();
        self.position_and_store(s, il, pos0, rows.clone())?;
        // Row-invariant (speculative verification): each position attends
        // as a one-token pass would, alone.
        let step = if s.mm.row_invariant { 1 } else { rows.len() };
        for (i, r0) in rows.clone().step_by(step).enumerate() {
            let r1 = (r0 + step).min(rows.end);
            Attention {
                n_head: c.n_head,
                n_head_kv: c.n_head_kv,
                head_dim: c.head_dim,
                layer: il,
                pos0: pos0 + i * step,
                n: r1 - r0,
                chunk: c.layer_chunk(il),
                q: &s.q[r0 * q_dim..r1 * q_dim],
            }
            .run(
                &mut s.pool,
                &s.kv,
                &mut s.attn,
                &mut s.att_out[r0 * q_dim..],
            )?;
        }
        if s.rotate_v {
            // The values were stored rotated: turn each head's output back.
            hadamard_rows(
                &mut s.pool,
                &mut s.att_out[rows.start * q_dim..],
                (rows.len(), q_dim),
                c.head_dim,
                true,
                "KV rotation",
            )?;
        }
        Ok(())
    }

    /// Rotates the queries and keys of the batch's rows `rows` (RoPE, then
    /// Llama 4's q/k norm; or the NoPE layers' query temperature) and writes
    /// their keys and values into the cache at positions `pos0..`.
    fn position_and_store(
        &self,
        s: &mut State,
        il: usize,
        pos0: usize,
        rows: std::ops::Range<usize>,
    ) -> Result<(), ModelError> {
        let (r0, n) = (rows.start, rows.len());
        let c = &self.config;
        let (hd, q_dim, kv_dim, eps) = (c.head_dim, c.q_dim(), c.kv_dim(), c.rms_eps);
        let uses_rope = c.layer_uses_rope(il);
        let k_from_float = Kernels::get().of(s.kv.k_ty).from_float;
        let v_from_float = Kernels::get().of(s.kv.v_ty).from_float;
        let kv = s.kv.index;
        let (k_rb, v_rb, es) = (kv.k_row_bytes, kv.v_row_bytes, s.kv.v_ty.type_size());
        let (q, k, v) = (
            SharedMut::new(&mut s.q),
            SharedMut::new(&mut s.k),
            SharedMut::new(&mut s.v),
        );
        let v_conv = SharedMut::new(s.v_conv.bytes_mut());
        let (kc, vc) = (
            SharedMut::new(s.kv.k.bytes_mut()),
            SharedMut::new(s.kv.v.bytes_mut()),
        );
        let rope_cs = &s.rope_cs;
        // R3 and the value rotation: the state checked that the head size
        // has a transform.
        let r3 = if s.rotate_qk { Hadamard::new(hd) } else { None };
        let rv = if s.rotate_v { Hadamard::new(hd) } else { None };
        // A batch's values go into a transposed cache a column at a time
        // (below); a few positions are scattered here.
        let columns = kv.v_transposed && n >= 16 && r0 == 0;
        let rows = |range: std::ops::Range<usize>| {
            for t in range {
                let p = pos0 + t;
                let t = r0 + t;
                // SAFETY: each thread handles its own positions `t`, and
                // cache entries of distinct positions do not overlap.
                let (qt, kt, vt) = unsafe {
                    (
                        q.slice(t * q_dim..(t + 1) * q_dim),
                        k.slice(t * kv_dim..(t + 1) * kv_dim),
                        v.slice(t * kv_dim..(t + 1) * kv_dim),
                    )
                };
                if uses_rope {
                    let cs = &rope_cs[t * hd..(t + 1) * hd];
                    rope(qt, cs);
                    rope(kt, cs);
                    if c.qk_norm {
                        rmsnorm_heads(qt, hd, eps);
                        rmsnorm_heads(kt, hd, eps);
                    }
                } else if c.attn_temperature.is_some() {
                    let scale = c.attn_temperature_at(il, p);
                    qt.iter_mut().for_each(|v| *v *= scale);
                }
                if let Some(h3) = &r3 {
                    h3.apply_rows(qt);
                    h3.apply_rows(kt);
                }
                if let Some(h) = &rv {
                    h.apply_rows(vt);
                }
                for h in 0..c.n_head_kv {
                    let (kh, vh) = (&kt[h * hd..(h + 1) * hd], &vt[h * hd..(h + 1) * hd]);
                    let off = kv.k_offset(il, h, p);
                    // SAFETY: as above.
                    k_from_float(kh, unsafe { kc.slice(off..off + k_rb) });
                    if columns {
                        // Stored by `columns` below.
                    } else if kv.v_transposed {
                        let conv = (t * c.n_head_kv + h) * v_rb;
                        // SAFETY: as above (row `t` of the conversion buffer).
                        let conv = unsafe { v_conv.slice(conv..conv + v_rb) };
                        v_from_float(vh, conv);
                        for (d, e) in conv.chunks_exact(es).enumerate() {
                            let off = kv.vt_offset(il, h, d, p);
                            // SAFETY: as above.
                            unsafe { vc.slice(off..off + es) }.copy_from_slice(e);
                        }
                    } else {
                        let off = kv.v_offset(il, h, p);
                        // SAFETY: as above.
                        v_from_float(vh, unsafe { vc.slice(off..off + v_rb) });
                    }
                }
            }
        };
        const POSITIONS_PER_TASK: usize = 8;
        s.pool.run(n.div_ceil(POSITIONS_PER_TASK), &|_, c| {
            rows(chunk(n, POSITIONS_PER_TASK, c))
        })?;
        if columns {
            // Vᵀ row `d` of head `h` at positions `pos0..pos0 + n`: gather
            // the batch's column, 64 positions at a time, and convert it
            // into the contiguous cache row.
            const DIMS_PER_TASK: usize = 16;
            let v = &s.v;
            let column = |_: usize, task: usize| {
                let per_head = hd.div_ceil(DIMS_PER_TASK);
                let h = task / per_head;
                for d in chunk(hd, DIMS_PER_TASK, task % per_head) {
                    let mut t0 = 0;
                    while t0 < n {
                        let t1 = (t0 + 64).min(n);
                        let mut col = [0.0f32; 64];
                        for (c, t) in col.iter_mut().zip(t0..t1) {
                            *c = v[t * kv_dim + h * hd + d];
                        }
                        let off = kv.vt_offset(il, h, d, pos0 + t0);
                        // SAFETY: each task writes the rows of its own
                        // (head, dimension) pairs.
                        v_from_float(&col[..t1 - t0], unsafe {
                            vc.slice(off..off + (t1 - t0) * es)
                        });
                        t0 = t1;
                    }
                }
            };
            s.pool
                .run(c.n_head_kv * hd.div_ceil(DIMS_PER_TASK), &column)?;
        }
        Ok(())
    }

    /// Llama 4 mixture of experts, added to the residual stream: the shared
    /// expert on every token, plus for each token its top-k experts (by
    /// router logit), each fed the token's input scaled by the sigmoid of
    /// its router logit. `s.mm` holds the normalized input (also in `s.xb`)
    /// prepared for the router.
    fn moe(&self, s: &mut State, m: &MoeFfn, il: usize, n: usize) -> Result<(), ModelError> {
        let MoeFfn {
            moe,
            router,
            gate_exps,
            up_exps,
            down_exps,
            ..
        } = m;
        let bytes = self.bytes();
        let dim = self.config.dim;
        let (ne, ff) = (moe.n_expert, moe.n_ff_expert);
        let lin = |w: Weight| Lin {
            w: w.view(bytes),
            bias: None,
        };

        // Route: each token's top-k experts and their scores.
        s.mm.run(&mut s.pool, n, [Product::Set(lin(*router), &mut s.router)])?;
        s.routes.clear();
        for (t, logits) in s.router.chunks_exact(ne).take(n).enumerate() {
            let first = s.routes.len();
            for _ in 0..moe.n_expert_used {
                let mut best: Option<usize> = None;
                for (e, &l) in logits.iter().enumerate() {
                    let taken = s.routes[first..].iter().any(|r| r.expert == e);
                    if !taken && best.is_none_or(|b| l > logits[b]) {
                        best = Some(e);
                    }
                }
                if let Some(e) = best {
                    let weight = 1.0 / (1.0 + (-logits[e]).exp());
                    s.routes.push(Route {
                        token: t,
                        expert: e,
                        weight,
                    });
                }
            }
        }

        self.residency.use_experts(self.mapped(), il, &s.routes);

        // The shared expert sees every token.
        let (sg, su, sd) = (
            m.shared_gate.view(bytes),
            m.shared_up.view(bytes),
            m.shared_down.view(bytes),
        );
        let types = [sg.w.w.ty, su.w.w.ty];
        s.mm.prepare(&mut s.pool, &s.xb, n, dim, None, &types)?;
        s.observer.see(il, MatmulSite::SharedGateUp, &s.xb, n, dim);
        s.mm.run(&mut s.pool, n, [Product::SwiGlu(sg, su, &mut s.hb)])?;
        let sff = sg.w.w.rows;
        s.mm.prepare(&mut s.pool, &s.hb, n, sff, None, &[sd.w.w.ty])?;
        s.observer.see(il, MatmulSite::SharedDown, &s.hb, n, sff);
        s.mm.run(&mut s.pool, n, [Product::Add(sd, &mut s.x)])?;

        // Each routed expert runs once on all of its tokens.
        for e in 0..ne {
            s.expert_tokens.clear();
            for r in s.routes.iter().filter(|r| r.expert == e) {
                let m = s.expert_tokens.len();
                let src = &s.xb[r.token * dim..(r.token + 1) * dim];
                for (d, &x) in s.expert_in[m * dim..(m + 1) * dim].iter_mut().zip(src) {
                    *d = x * r.weight;
                }
                s.expert_tokens.push(r.token);
            }
            let m = s.expert_tokens.len();
            if m == 0 {
                continue;
            }
            let (g, u, d) = (
                lin(gate_exps.slice_rows(e * ff, ff)),
                lin(up_exps.slice_rows(e * ff, ff)),
                lin(down_exps.slice_rows(e * dim, dim)),
            );
            s.mm.prepare(
                &mut s.pool,
                &s.expert_in,
                m,
                dim,
                None,
                &[g.w.w.ty, u.w.w.ty],
            )?;
            s.observer
                .see(il, MatmulSite::ExpertsGateUp(e), &s.expert_in, m, dim);
            s.mm.run(&mut s.pool, m, [Product::SwiGlu(g, u, &mut s.hb)])?;
            s.mm.prepare(&mut s.pool, &s.hb, m, ff, None, &[d.w.w.ty])?;
            s.observer.see(il, MatmulSite::ExpertsDown(e), &s.hb, m, ff);
            s.mm.run(&mut s.pool, m, [Product::Set(d, &mut s.expert_out)])?;
            for (i, &t) in s.expert_tokens.iter().enumerate() {
                add(
                    &mut s.x[t * dim..(t + 1) * dim],
                    &s.expert_out[i * dim..(i + 1) * dim],
                );
            }
        }
        Ok(())
    }
}

/// The Hadamard transform of width `width` (its transpose when `inverse`)
/// of each `width`-long piece of the `n` rows (`row_len` wide) at the start
/// of `x`, a row per pool task: online R4 on the SwiGLU output rows (before
/// the down product, whose weights were rotated to match), and each head of
/// the attention output back when the values are stored rotated. `what`
/// names the rotation in the error for a width without a transform (which
/// the config or the state already ruled out).
fn hadamard_rows(
    pool: &mut Pool,
    x: &mut [f32],
    (n, row_len): (usize, usize),
    width: usize,
    inverse: bool,
    what: &str,
) -> Result<(), ModelError> {
    let Some(h) = Hadamard::new(width) else {
        return Err(ModelError::Unsupported {
            what: format!("{what}: no Hadamard transform of width {width}"),
        });
    };
    let x = SharedMut::new(&mut x[..n * row_len]);
    pool.run(n, &|_, t| {
        // SAFETY: each task transforms its own row `t`.
        let row = unsafe { x.slice(t * row_len..(t + 1) * row_len) };
        for piece in row.chunks_exact_mut(width) {
            match inverse {
                true => h.apply_transposed(piece),
                false => h.apply(piece),
            }
        }
    })?;
    Ok(())
}
