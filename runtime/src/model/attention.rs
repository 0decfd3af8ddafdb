//! Causal softmax attention of a batch of queries over the KV cache, in the
//! manner of flash attention: for each query head and block of up to
//! [`QUERY_BLOCK`] positions, the visible keys are visited in chunks of
//! [`KEY_CHUNK`] positions with an online softmax (a running maximum and
//! sum per query), so scratch stays small at any context length.
//!
//! Both products run through [`Kernels::gemm`] on the cache's own element
//! type: scores `S = Q Kᵀ` with the chunk's key rows read in place (the
//! queries converted to the cache type's `vec_dot_type`), and `P V` with
//! the chunk of `Vᵀ` as the "weights" and the probabilities converted the
//! same way. The cache stores `Vᵀ` (`(head_dim, n_ctx)` per layer and head)
//! when its type has one element per block (f32, f16), so a chunk is
//! `head_dim` row slices; a blocked type (Q8_0) stores values by position
//! and is transposed per chunk through f32.
//!
//! Work items (query head, query block) are taken from a shared counter by
//! the pool's threads, the most expensive (latest) blocks first. The
//! blocking depends only on the batch, so every thread count gives the
//! same bits.

use spinel_quant::{GgmlType, Kernels};

use super::ops::{AlignedBuf, exp, exp_scaled_sum, max};
use super::pool::{JobPanicked, Pool, SharedMut};
use super::state::KvCache;

/// Query positions per work item.
pub(crate) const QUERY_BLOCK: usize = 32;
/// Key positions per chunk of the online softmax.
pub(crate) const KEY_CHUNK: usize = 256;

/// One thread's scratch, in bytes: converted queries, scores,
/// converted probabilities, a chunk of `Vᵀ`, a chunk of values in f32 (for
/// blocked caches), the output accumulator and the `P V` product, plus the
/// running max, sum and correction per query.
pub(crate) fn scratch_bytes(head_dim: usize) -> usize {
    let (q, k, d) = (QUERY_BLOCK, KEY_CHUNK, head_dim);
    let f = 4;
    (q * d + q * k + q * k + d * k + k * d + q * d + q * d + 3 * q) * f + 10 * 64
}

/// Shape of one attention call.
pub(crate) struct Attention<'a> {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub layer: usize,
    /// Position of the batch's first query.
    pub pos0: usize,
    /// Queries in the batch.
    pub n: usize,
    /// Llama 4 chunked attention: a query at `p` sees keys from
    /// `p / chunk * chunk` on.
    pub chunk: Option<usize>,
    /// `(n, n_head · head_dim)`.
    pub q: &'a [f32],
}

impl Attention<'_> {
    /// Writes the attention output (`(n, n_head · head_dim)`, heads side by
    /// side) to `out`, on `pool`, with `scratch` holding [`scratch_bytes`]
    /// per thread.
    pub fn run(
        &self,
        pool: &mut Pool,
        kv: &KvCache,
        scratch: &mut AlignedBuf,
        out: &mut [f32],
    ) -> Result<(), JobPanicked> {
        let n_blocks = self.n.div_ceil(QUERY_BLOCK);
        let n_items = self.n_head * n_blocks;
        let per_thread = scratch_bytes(self.head_dim);
        let scratch = SharedMut::new(scratch.bytes_mut());
        assert!(out.len() >= self.n * self.n_head * self.head_dim);
        let out = SharedMut::new(out);
        let item = |thread: usize, item: usize| {
            // SAFETY: each thread has its own part of the scratch (and runs
            // one item at a time).
            let mine = unsafe { scratch.slice(thread * per_thread..(thread + 1) * per_thread) };
            let mut s = Scratch::new(mine, self.head_dim);
            // Latest (most keys) blocks first.
            let block = n_blocks - 1 - item / self.n_head;
            let head = item % self.n_head;
            self.item(kv, head, block, &out, &mut s);
        };
        pool.run(n_items, &item)
    }

    /// First key position visible from position `p`.
    fn window_start(&self, p: usize) -> usize {
        self.chunk.map_or(0, |c| p / c * c)
    }

    /// Attention of query head `head` at the positions of query block `block`.
    fn item(
        &self,
        kv: &KvCache,
        head: usize,
        block: usize,
        out: &SharedMut<'_, f32>,
        s: &mut Scratch<'_>,
    ) {
        let k = Kernels::get();
        let hd = self.head_dim;
        let q_dim = self.n_head * hd;
        let kvh = head / (self.n_head / self.n_head_kv);
        let t0 = block * QUERY_BLOCK;
        let t1 = (t0 + QUERY_BLOCK).min(self.n);
        let m = t1 - t0;
        let scale = 1.0 / (hd as f32).sqrt();

        // The queries, in the type the keys are dotted with.
        let qt = kv.ty.vec_dot_type();
        let q_rb = qt.row_size(hd).expect("head of whole blocks");
        let to_q = k.of(qt).from_float;
        for (i, t) in (t0..t1).enumerate() {
            let src = &self.q[t * q_dim + head * hd..t * q_dim + (head + 1) * hd];
            to_q(src, &mut s.q[i * q_rb..(i + 1) * q_rb]);
        }

        s.max[..m].fill(f32::NEG_INFINITY);
        s.sum[..m].fill(0.0);
        s.acc[..m * hd].fill(0.0);

        let (p_first, p_last) = (self.pos0 + t0, self.pos0 + t1 - 1);
        let lo = self.window_start(p_first) / KEY_CHUNK * KEY_CHUNK;
        let mut c0 = lo;
        while c0 <= p_last {
            let c1 = (c0 + KEY_CHUNK).min(p_last + 1);
            let nk = c1 - c0;
            // Scores of the chunk: (m, nk).
            let keys =
                &kv.k.bytes()[kv.offset(self.layer, kvh, c0)..kv.offset(self.layer, kvh, c1)];
            let sc = &mut s.scores[..m * nk];
            k.gemm(kv.ty, hd, keys, &s.q[..m * q_rb], sc, nk);

            // Online softmax: probabilities relative to the running max.
            let mut any = false;
            for i in 0..m {
                let p = self.pos0 + t0 + i;
                let (vlo, vhi) = (self.window_start(p).max(c0), (p + 1).min(c1));
                let row = &mut sc[i * nk..(i + 1) * nk];
                if vlo >= vhi {
                    row.fill(0.0);
                    s.corr[i] = 1.0;
                    continue;
                }
                any = true;
                let (a, b) = (vlo - c0, vhi - c0);
                row[..a].fill(0.0);
                row[b..].fill(0.0);
                let valid = &mut row[a..b];
                let new_max = s.max[i].max(max(valid) * scale);
                let corr = exp(s.max[i] - new_max);
                let sum = exp_scaled_sum(valid, scale, new_max);
                s.sum[i] = s.sum[i] * corr + sum;
                s.max[i] = new_max;
                s.corr[i] = corr;
            }
            if any {
                self.accumulate_values(kv, kvh, c0, c1, m, s);
            }
            c0 = c1;
        }

        for i in 0..m {
            let t = t0 + i;
            // SAFETY: this item alone writes head `head` of position `t`.
            let o = unsafe { out.slice(t * q_dim + head * hd..t * q_dim + (head + 1) * hd) };
            let inv = if s.sum[i] > 0.0 { 1.0 / s.sum[i] } else { 0.0 };
            for (o, &a) in o.iter_mut().zip(&s.acc[i * hd..(i + 1) * hd]) {
                *o = a * inv;
            }
        }
    }

    /// `acc = acc · corr + P V` for the chunk `c0..c1` (`P` in `s.scores`).
    fn accumulate_values(
        &self,
        kv: &KvCache,
        kvh: usize,
        c0: usize,
        c1: usize,
        m: usize,
        s: &mut Scratch<'_>,
    ) {
        let k = Kernels::get();
        let hd = self.head_dim;
        let nk = c1 - c0;
        // Vᵀ of the chunk, (hd, nk), in `vt_ty`.
        let vt_ty = if kv.ty.block_size() == 1 {
            kv.ty
        } else {
            GgmlType::F32
        };
        let es = vt_ty.type_size();
        let vt = &mut s.vt[..hd * nk * es];
        if kv.v_transposed() {
            for d in 0..hd {
                let src = kv.vt_offset(self.layer, kvh, d, c0);
                vt[d * nk * es..(d + 1) * nk * es]
                    .copy_from_slice(&kv.v.bytes()[src..src + nk * es]);
            }
        } else {
            let rows =
                &kv.v.bytes()[kv.offset(self.layer, kvh, c0)..kv.offset(self.layer, kvh, c1)];
            let vf = &mut s.vf[..nk * hd];
            (k.of(kv.ty).to_float)(rows, vf);
            let vt: &mut [f32] = bytemuck::cast_slice_mut(vt);
            for (j, row) in vf.chunks_exact(hd).enumerate() {
                for (d, &v) in row.iter().enumerate() {
                    vt[d * nk + j] = v;
                }
            }
        }
        let pt = vt_ty.vec_dot_type();
        let p_rb = pt.row_size(nk).expect("one element per block");
        let to_p = k.of(pt).from_float;
        for i in 0..m {
            to_p(
                &s.scores[i * nk..(i + 1) * nk],
                &mut s.p[i * p_rb..(i + 1) * p_rb],
            );
        }
        let pv = &mut s.pv[..m * hd];
        k.gemm(vt_ty, nk, &s.vt[..hd * nk * es], &s.p[..m * p_rb], pv, hd);
        for i in 0..m {
            let corr = s.corr[i];
            for (a, &v) in s.acc[i * hd..(i + 1) * hd]
                .iter_mut()
                .zip(&pv[i * hd..(i + 1) * hd])
            {
                *a = *a * corr + v;
            }
        }
    }
}

/// One thread's scratch, carved out of its bytes.
struct Scratch<'a> {
    q: &'a mut [u8],
    scores: &'a mut [f32],
    p: &'a mut [u8],
    vt: &'a mut [u8],
    vf: &'a mut [f32],
    acc: &'a mut [f32],
    pv: &'a mut [f32],
    max: &'a mut [f32],
    sum: &'a mut [f32],
    corr: &'a mut [f32],
}

impl<'a> Scratch<'a> {
    fn new(bytes: &'a mut [u8], hd: usize) -> Scratch<'a> {
        let (q, k) = (QUERY_BLOCK, KEY_CHUNK);
        let mut rest = bytes;
        let mut take = |len: usize| -> &'a mut [u8] {
            // 64-byte aligned parts (the whole buffer is 8-byte aligned).
            let pad = rest.as_ptr().align_offset(64).min(rest.len());
            let (_, r) = std::mem::take(&mut rest).split_at_mut(pad);
            let (part, r) = r.split_at_mut(len);
            rest = r;
            part
        };
        let floats = |b: &'a mut [u8]| -> &'a mut [f32] { bytemuck::cast_slice_mut(b) };
        Scratch {
            q: take(q * hd * 4),
            scores: floats(take(q * k * 4)),
            p: take(q * k * 4),
            vt: take(hd * k * 4),
            vf: floats(take(k * hd * 4)),
            acc: floats(take(q * hd * 4)),
            pv: floats(take(q * hd * 4)),
            max: floats(take(q * 4)),
            sum: floats(take(q * 4)),
            corr: floats(take(q * 4)),
        }
    }
}
