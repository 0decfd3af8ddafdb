//! The forward pass, in the manner of llama2.c's `forward()`: norm, QKV,
//! RoPE, attention, output projection, residual; norm, feed-forward,
//! residual; for every layer; then the final norm and the vocabulary
//! projection. Every buffer is in the [`State`]; nothing is allocated here.

use spinel_quant::{GgmlType, Kernels};

use super::Model;
use super::error::ModelError;
use super::ops::{
    Matmul, PAR_MIN_WORK, add, dot, rmsnorm, rmsnorm_heads, rope, rope_angles, silu_mul, softmax,
};
use super::state::{Route, State};
use super::weights::{Ffn, Lin, MoeFfn, Weight};

impl Model<'_> {
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
        self.check_input(state, tokens)?;
        for batch in tokens.chunks(state.n_batch) {
            self.forward_batch(state, batch);
        }
        let last = (tokens.len() - 1) % state.n_batch;
        self.logits_at(state, last);
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
        self.check_input(state, tokens)?;
        logits.clear();
        for batch in tokens.chunks(state.n_batch) {
            self.forward_batch(state, batch);
            for t in 0..batch.len() {
                self.logits_at(state, t);
                logits.extend_from_slice(&state.logits);
            }
        }
        Ok(())
    }

    fn check_input(&self, state: &State, tokens: &[u32]) -> Result<(), ModelError> {
        if state.layout != self.layout {
            return Err(ModelError::StateMismatch);
        }
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        let n_vocab = self.config.n_vocab;
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
    fn logits_at(&self, s: &mut State, t: usize) {
        let dim = self.config.dim;
        let w = &self.weights;
        rmsnorm(
            &mut s.xb[..dim],
            &s.x[t * dim..(t + 1) * dim],
            Some(&w.output_norm),
            self.config.rms_eps,
        );
        s.mm.run(
            w.output.view(self.bytes()),
            None,
            &s.xb[..dim],
            1,
            &mut s.logits,
        );
    }

    /// Pushes `tokens` (at most `n_batch`, checked) through every layer at
    /// positions `n_past..n_past + tokens.len()`.
    fn forward_batch(&self, s: &mut State, tokens: &[u32]) {
        let c = &self.config;
        let w = &self.weights;
        let bytes = self.bytes();
        let n = tokens.len();
        let pos0 = s.n_past;
        let (dim, hd, q_dim, kv_dim) = (c.dim, c.head_dim, c.q_dim(), c.kv_dim());
        let eps = c.rms_eps;

        // Token embeddings.
        let embd = w.token_embd.view(bytes);
        let embd_to_float = Kernels::get().of(embd.w.ty).to_float;
        for (x, &tok) in s.x.chunks_exact_mut(dim).zip(tokens) {
            embd_to_float(embd.row(tok as usize), x);
        }
        // RoPE angles of the batch's positions.
        for (t, cs) in s.rope_cs.chunks_exact_mut(hd).take(n).enumerate() {
            rope_angles(cs, (pos0 + t) as f32, &self.rope_inv_freq);
        }

        for (il, layer) in w.layers.iter().enumerate() {
            // ---- Attention: x += Wo · attention(q, k, v) ----
            rmsnorm_rows(&mut s.xb, &s.x, n, dim, &layer.attn_norm, eps);
            let (wq, wk, wv) = (
                layer.wq.view(bytes),
                layer.wk.view(bytes),
                layer.wv.view(bytes),
            );
            s.mm.run(wq.w, wq.bias, &s.xb, n, &mut s.q);
            s.mm.run(wk.w, wk.bias, &s.xb, n, &mut s.k);
            s.mm.run(wv.w, wv.bias, &s.xb, n, &mut s.v);

            let q = &mut s.q[..n * q_dim];
            let k = &mut s.k[..n * kv_dim];
            if c.layer_uses_rope(il) {
                for ((qt, kt), cs) in q
                    .chunks_exact_mut(q_dim)
                    .zip(k.chunks_exact_mut(kv_dim))
                    .zip(s.rope_cs.chunks_exact(hd))
                {
                    rope(qt, cs);
                    rope(kt, cs);
                }
                if c.qk_norm {
                    rmsnorm_heads(q, hd, eps);
                    rmsnorm_heads(k, hd, eps);
                }
            } else if c.attn_temperature.is_some() {
                for (t, qt) in q.chunks_exact_mut(q_dim).enumerate() {
                    let scale = c.attn_temperature_at(il, pos0 + t);
                    qt.iter_mut().for_each(|v| *v *= scale);
                }
            }

            self.store_kv(s, il, pos0, n);
            self.attention(s, il, pos0, n);
            let wo = layer.wo.view(bytes);
            s.mm.run(wo.w, wo.bias, &s.att_out, n, &mut s.out);
            add(&mut s.x[..n * dim], &s.out[..n * dim]);

            // ---- Feed-forward: x += ffn(norm(x)) ----
            rmsnorm_rows(&mut s.xb, &s.x, n, dim, &layer.ffn_norm, eps);
            match &layer.ffn {
                Ffn::Dense { gate, up, down } => swiglu(
                    &mut s.mm,
                    [gate.view(bytes), up.view(bytes), down.view(bytes)],
                    &s.xb,
                    n,
                    &mut s.hb,
                    &mut s.hb2,
                    &mut s.out,
                ),
                Ffn::Moe(m) => self.moe(s, m, n),
            }
            add(&mut s.x[..n * dim], &s.out[..n * dim]);
        }
        s.n_past += n;
    }

    /// Writes the batch's keys and values into the cache at their positions.
    fn store_kv(&self, s: &mut State, il: usize, pos0: usize, n: usize) {
        let (hd, kv_dim) = (self.config.head_dim, self.config.kv_dim());
        let from_float = Kernels::get().of(s.kv.ty).from_float;
        let rb = s.kv.row_bytes;
        for t in 0..n {
            for h in 0..self.config.n_head_kv {
                let off = s.kv.offset(il, h, pos0 + t);
                let src = t * kv_dim + h * hd..t * kv_dim + (h + 1) * hd;
                from_float(&s.k[src.clone()], &mut s.kv.k.bytes_mut()[off..off + rb]);
                from_float(&s.v[src], &mut s.kv.v.bytes_mut()[off..off + rb]);
            }
        }
    }

    /// Causal (or chunked) softmax attention of the batch's queries over the
    /// cache, into `att_out`.
    ///
    /// Keys and values are read as f32: from the cache itself when it is
    /// F32, else converted once per batch (the rows this batch can see, for
    /// each KV head) into `attn.k` / `attn.v`. Work items are (position,
    /// query head) pairs, split in contiguous runs across threads.
    fn attention(&self, s: &mut State, il: usize, pos0: usize, n: usize) {
        let c = &self.config;
        let (hd, q_dim, n_head, n_kv) = (c.head_dim, c.q_dim(), c.n_head, c.n_head_kv);
        let group = n_head / n_kv;
        let chunk = c.layer_chunk(il);
        let scale = 1.0 / (hd as f32).sqrt();
        let window_start = |p: usize| chunk.map_or(0, |cs| p / cs * cs);

        // `(n_kv, n_ctx, head_dim)` f32 keys and values of this layer.
        let n_ctx = s.kv.n_ctx;
        let layer = il * n_kv * n_ctx * hd..(il + 1) * n_kv * n_ctx * hd;
        let (keys, values): (&[f32], &[f32]) = if s.kv.ty == GgmlType::F32 {
            (
                &bytemuck::cast_slice(s.kv.k.bytes())[layer.clone()],
                &bytemuck::cast_slice(s.kv.v.bytes())[layer],
            )
        } else {
            let to_float = Kernels::get().of(s.kv.ty).to_float;
            let (lo, hi) = (window_start(pos0), pos0 + n);
            for h in 0..n_kv {
                let bytes = s.kv.offset(il, h, lo)..s.kv.offset(il, h, hi);
                let floats = (h * n_ctx + lo) * hd..(h * n_ctx + hi) * hd;
                to_float(
                    &s.kv.k.bytes()[bytes.clone()],
                    &mut s.attn.k[floats.clone()],
                );
                to_float(&s.kv.v.bytes()[bytes], &mut s.attn.v[floats]);
            }
            (&s.attn.k, &s.attn.v)
        };
        let at = |h: usize, pos: usize| (h * n_ctx + pos) * hd..(h * n_ctx + pos + 1) * hd;

        let q = &s.q;
        let n_items = n * n_head;
        let threads = if n_items * (pos0 + n) * hd < PAR_MIN_WORK {
            1
        } else {
            s.mm.n_threads.min(n_items)
        };
        let per = n_items.div_ceil(threads);

        let attend = |ci: usize, out: &mut [f32], scores: &mut [f32]| {
            for (j, o) in out.chunks_exact_mut(hd).enumerate() {
                let item = ci * per + j;
                let (t, h) = (item / n_head, item % n_head);
                let (p, kvh) = (pos0 + t, h / group);
                let start = window_start(p);

                let qh = &q[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
                let scores = &mut scores[..=p - start];
                for (i, sc) in scores.iter_mut().enumerate() {
                    *sc = dot(&keys[at(kvh, start + i)], qh) * scale;
                }
                softmax(scores);
                o.fill(0.0);
                for (i, &a) in scores.iter().enumerate() {
                    for (o, &v) in o.iter_mut().zip(&values[at(kvh, start + i)]) {
                        *o += a * v;
                    }
                }
            }
        };

        let work = s.att_out[..n_items * hd]
            .chunks_mut(per * hd)
            .zip(s.attn.scores.chunks_mut(n_ctx))
            .enumerate();
        std::thread::scope(|scope| {
            let attend = &attend;
            let mut first = None;
            for (ci, (out, scores)) in work {
                if ci == 0 {
                    first = Some((out, scores));
                } else {
                    scope.spawn(move || attend(ci, out, scores));
                }
            }
            if let Some((out, scores)) = first {
                attend(0, out, scores);
            }
        });
    }

    /// Llama 4 mixture of experts into `s.out`: the shared expert on every
    /// token, plus for each token its top-k experts (by router logit), each
    /// fed the token's input scaled by the sigmoid of its router logit.
    fn moe(&self, s: &mut State, m: &MoeFfn, n: usize) {
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

        // Route: each token's top-k experts and their scores.
        s.mm.run(router.view(bytes), None, &s.xb, n, &mut s.router);
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

        // The shared expert sees every token.
        let shared = [
            m.shared_gate.view(bytes),
            m.shared_up.view(bytes),
            m.shared_down.view(bytes),
        ];
        swiglu(
            &mut s.mm, shared, &s.xb, n, &mut s.hb, &mut s.hb2, &mut s.out,
        );

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
            let lin = |w: Weight| Lin {
                w: w.view(bytes),
                bias: None,
            };
            let mats = [
                lin(gate_exps.slice_rows(e * ff, ff)),
                lin(up_exps.slice_rows(e * ff, ff)),
                lin(down_exps.slice_rows(e * dim, dim)),
            ];
            swiglu(
                &mut s.mm,
                mats,
                &s.expert_in,
                m,
                &mut s.hb,
                &mut s.hb2,
                &mut s.expert_out,
            );
            for (i, &t) in s.expert_tokens.iter().enumerate() {
                add(
                    &mut s.out[t * dim..(t + 1) * dim],
                    &s.expert_out[i * dim..(i + 1) * dim],
                );
            }
        }
    }
}

/// RMS-normalizes the first `n` rows of `x` into `out`.
fn rmsnorm_rows(out: &mut [f32], x: &[f32], n: usize, dim: usize, w: &[f32], eps: f32) {
    for (o, x) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)).take(n) {
        rmsnorm(o, x, Some(w), eps);
    }
}

/// `out = down(silu(gate(x)) · up(x))` for the first `n` rows of `x`.
fn swiglu(
    mm: &mut Matmul,
    [gate, up, down]: [Lin<'_>; 3],
    x: &[f32],
    n: usize,
    hb: &mut [f32],
    hb2: &mut [f32],
    out: &mut [f32],
) {
    let ff = gate.w.w.rows;
    mm.run(gate.w, gate.bias, x, n, hb);
    mm.run(up.w, up.bias, x, n, hb2);
    silu_mul(&mut hb[..n * ff], &hb2[..n * ff]);
    mm.run(down.w, down.bias, &hb[..n * ff], n, out);
}
