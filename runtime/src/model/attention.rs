//! Causal softmax attention of a batch of queries over the KV cache, in the
//! manner of flash attention: for each work item — query heads that share a
//! KV head (GQA) times a block of up to [`QUERY_BLOCK`] positions — the
//! visible keys are visited in chunks of [`KEY_CHUNK`] positions with an
//! online softmax (a running maximum and sum per query row), so scratch
//! stays small at any context length.
//!
//! Both products run through [`Kernels::gemm`] on the cache's own element
//! type: scores `S = Q Kᵀ` with the chunk's key rows read in place (the
//! queries converted to the cache type's `vec_dot_type`), and `P V` with
//! the chunk of `Vᵀ` as the "weights" and the probabilities converted the
//! same way. The cache stores `Vᵀ` (`(head_dim, n_ctx)` per layer and head)
//! when its type has one element per block (f32, f16), so a chunk is
//! `head_dim` row slices; a blocked type (Q8_0, Q4_0) stores values by position
//! and is transposed per chunk through f32. Keys and values may be of
//! different types (llama.cpp's `-ctk`/`-ctv`).
//!
//! A batch (prompt) puts all query heads of a KV head into one item, so each
//! chunk of keys and values is read and converted once for all of them and
//! the products have enough rows (up to [`MAX_ROWS`]) for the kernels'
//! register blocking. A single position (generation) makes one item per
//! query head, so the threads share the heads; with so few rows the values
//! are dotted in place, without copying the chunk of `Vᵀ`.
//!
//! Items are taken from a shared counter by the pool's threads, the most
//! expensive (latest) blocks first. The blocking depends only on the batch,
//! so every thread count gives the same bits.

use std::ops::Range;

use spinel_quant::{GgmlType, Kernels};

use super::ops::{AlignedBuf, exp, exp_scaled_sum, max};
use super::pool::{JobPanicked, Pool, SharedMut};
use super::state::KvCache;

/// Query positions per work item.
pub(crate) const QUERY_BLOCK: usize = 32;
/// Most query rows (heads × positions) per work item.
pub(crate) const MAX_ROWS: usize = 128;
/// Key positions per chunk of the online softmax.
pub(crate) const KEY_CHUNK: usize = 256;
/// Below this many rows the float kernels dot pair by pair anyway, so
/// values are read in place instead of through a copied chunk of `Vᵀ`.
const FEW_ROWS: usize = 8;

/// One thread's scratch, in bytes: converted queries, scores,
/// converted probabilities, a chunk of `Vᵀ`, a chunk of values in f32 (for
/// blocked caches), the output accumulator and the `P V` product, plus the
/// running max, sum and correction per query row.
pub(crate) fn scratch_bytes(head_dim: usize) -> usize {
    let (q, k, d) = (MAX_ROWS, KEY_CHUNK, head_dim);
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
        let group = self.n_head / self.n_head_kv;
        // Positions and heads per item.
        let (qb, hpi) = if self.n >= FEW_ROWS {
            let qb = QUERY_BLOCK.min(self.n);
            (qb, (MAX_ROWS / qb).clamp(1, group))
        } else {
            (self.n, 1)
        };
        let n_blocks = self.n.div_ceil(qb);
        let chunks = group.div_ceil(hpi);
        let per_block = self.n_head_kv * chunks;
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
            let block = n_blocks - 1 - item / per_block;
            let (kvh, c) = (item % per_block / chunks, item % chunks);
            let h0 = kvh * group + c * hpi;
            let heads = h0..(h0 + hpi).min((kvh + 1) * group);
            let t0 = block * qb;
            let positions = t0..(t0 + qb).min(self.n);
            self.item(kv, kvh, heads, positions, &out, &mut s);
        };
        pool.run(n_blocks * per_block, &item)
    }

    /// First key position visible from position `p`.
    fn window_start(&self, p: usize) -> usize {
        self.chunk.map_or(0, |c| p / c * c)
    }

    /// Attention of query heads `heads` (all of KV head `kvh`) at the
    /// batch positions `positions`. Query rows are ordered head by head,
    /// position by position within a head.
    fn item(
        &self,
        kv: &KvCache,
        kvh: usize,
        heads: Range<usize>,
        positions: Range<usize>,
        out: &SharedMut<'_, f32>,
        s: &mut Scratch<'_>,
    ) {
        let k = Kernels::get();
        let hd = self.head_dim;
        let q_dim = self.n_head * hd;
        let nt = positions.len();
        let m = heads.len() * nt;
        let (t0, t1) = (positions.start, positions.end);
        // Row `r`: head and batch position.
        let row = |r: usize| (heads.start + r / nt, t0 + r % nt);
        let scale = 1.0 / (hd as f32).sqrt();

        // The queries, in the type the keys are dotted with.
        let qt = kv.k_ty.vec_dot_type();
        let q_rb = qt.row_size(hd).expect("head of whole blocks");
        let to_q = k.of(qt).from_float;
        for r in 0..m {
            let (h, t) = row(r);
            let src = &self.q[t * q_dim + h * hd..t * q_dim + (h + 1) * hd];
            to_q(src, &mut s.q[r * q_rb..(r + 1) * q_rb]);
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
                &kv.k.bytes()[kv.k_offset(self.layer, kvh, c0)..kv.k_offset(self.layer, kvh, c1)];
            let sc = &mut s.scores[..m * nk];
            k.gemm(kv.k_ty, hd, keys, &s.q[..m * q_rb], sc, nk);

            // Online softmax: probabilities relative to the running max.
            let mut any = false;
            for (r, scores) in sc.chunks_exact_mut(nk).enumerate() {
                let p = self.pos0 + row(r).1;
                let (vlo, vhi) = (self.window_start(p).max(c0), (p + 1).min(c1));
                if vlo >= vhi {
                    scores.fill(0.0);
                    s.corr[r] = 1.0;
                    continue;
                }
                any = true;
                let (a, b) = (vlo - c0, vhi - c0);
                scores[..a].fill(0.0);
                scores[b..].fill(0.0);
                let valid = &mut scores[a..b];
                let new_max = s.max[r].max(max(valid) * scale);
                let corr = exp(s.max[r] - new_max);
                let sum = exp_scaled_sum(valid, scale, new_max);
                s.sum[r] = s.sum[r] * corr + sum;
                s.max[r] = new_max;
                s.corr[r] = corr;
            }
            if any {
                self.accumulate_values(kv, kvh, c0, c1, m, s);
            }
            c0 = c1;
        }

        for r in 0..m {
            let (h, t) = row(r);
            // SAFETY: this item alone writes head `h` of position `t`.
            let o = unsafe { out.slice(t * q_dim + h * hd..t * q_dim + (h + 1) * hd) };
            let inv = if s.sum[r] > 0.0 { 1.0 / s.sum[r] } else { 0.0 };
            scaled(o, &s.acc[r * hd..(r + 1) * hd], inv);
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
        let vt_ty = if kv.v_transposed() {
            kv.v_ty
        } else {
            GgmlType::F32
        };
        let es = vt_ty.type_size();
        let pt = vt_ty.vec_dot_type();
        let p_rb = pt.row_size(nk).expect("one element per block");
        let to_p = k.of(pt).from_float;
        for r in 0..m {
            to_p(
                &s.scores[r * nk..(r + 1) * nk],
                &mut s.p[r * p_rb..(r + 1) * p_rb],
            );
        }
        let pv = &mut s.pv[..m * hd];
        if kv.v_transposed() && m < FEW_ROWS {
            // Few rows: dot the cache's Vᵀ rows in place.
            let dot = k.of(vt_ty).vec_dot;
            let v = kv.v.bytes();
            for d in 0..hd {
                let src = kv.vt_offset(self.layer, kvh, d, c0);
                let vrow = &v[src..src + nk * es];
                for r in 0..m {
                    pv[r * hd + d] = dot(vrow, &s.p[r * p_rb..(r + 1) * p_rb]);
                }
            }
        } else {
            let vt = &mut s.vt[..hd * nk * es];
            if kv.v_transposed() {
                for d in 0..hd {
                    let src = kv.vt_offset(self.layer, kvh, d, c0);
                    vt[d * nk * es..(d + 1) * nk * es]
                        .copy_from_slice(&kv.v.bytes()[src..src + nk * es]);
                }
            } else {
                let rows = &kv.v.bytes()
                    [kv.v_offset(self.layer, kvh, c0)..kv.v_offset(self.layer, kvh, c1)];
                let vf = &mut s.vf[..nk * hd];
                (k.of(kv.v_ty).to_float)(rows, vf);
                let vt: &mut [f32] = bytemuck::cast_slice_mut(vt);
                for (j, row) in vf.chunks_exact(hd).enumerate() {
                    for (d, &v) in row.iter().enumerate() {
                        vt[d * nk + j] = v;
                    }
                }
            }
            k.gemm(vt_ty, nk, &s.vt[..hd * nk * es], &s.p[..m * p_rb], pv, hd);
        }
        for r in 0..m {
            scale_add(
                &mut s.acc[r * hd..(r + 1) * hd],
                s.corr[r],
                &pv[r * hd..(r + 1) * hd],
            );
        }
    }
}

/// `out = x · c` (a function of its own, so that the slices are known not
/// to overlap and the loop vectorizes).
fn scaled(out: &mut [f32], x: &[f32], c: f32) {
    let mut o8 = out.chunks_exact_mut(8);
    let mut x8 = x.chunks_exact(8);
    for (o, x) in (&mut o8).zip(&mut x8) {
        for i in 0..8 {
            o[i] = x[i] * c;
        }
    }
    for (o, &x) in o8.into_remainder().iter_mut().zip(x8.remainder()) {
        *o = x * c;
    }
}

/// `acc = acc · c + x`.
fn scale_add(acc: &mut [f32], c: f32, x: &[f32]) {
    let mut a8 = acc.chunks_exact_mut(8);
    let mut x8 = x.chunks_exact(8);
    for (a, x) in (&mut a8).zip(&mut x8) {
        for i in 0..8 {
            a[i] = a[i] * c + x[i];
        }
    }
    for (a, &x) in a8.into_remainder().iter_mut().zip(x8.remainder()) {
        *a = *a * c + x;
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
        let (q, k) = (MAX_ROWS, KEY_CHUNK);
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
