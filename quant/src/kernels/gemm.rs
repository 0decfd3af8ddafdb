//! Register-blocked GEMM written once, over an instruction-set trait.
//!
//! The drivers here are generic over [`Simd`] (the vector primitives a
//! gemm needs: chunk loads, an int8 dot-accumulate of four chunks with
//! sixteen activation bytes, f32 arithmetic) and over the block format
//! ([`Repack`]: how a block's weights become signed bytes, its scale, its
//! min). Every function is `#[inline(always)]`; an ISA's entry point is one
//! `#[target_feature]` function per (ISA, format) that calls a driver with
//! its zero-sized ISA token, so that the whole kernel is compiled with that
//! ISA's features (see `aarch64/gemm.rs`).
//!
//! # Layout: panels of interleaved weight rows
//!
//! The weights are repacked, `P = NV · LANES` rows at a time, for one chunk
//! of `k` (`KC` elements), into a stack buffer (a *panel*): chunk `c` of
//! vector `v` holds, for each of its `LANES` rows, the four weights
//! `4c..4c+4` of that row as signed bytes in one 32-bit lane. An int8
//! dot-accumulate of a chunk with four activation bytes broadcast to every
//! lane (`sdot` by element on Armv8.2, `vpdpbusd` with an embedded
//! broadcast on x86) adds four products to each row's sum, so a block's dot
//! products for `P` rows come out in `P` lanes without horizontal sums, and
//! one f32 FMA per block and vector applies the rows' scales. The panel is
//! then reused for every activation row of the pass (`MB` rows), `R` rows
//! per micro-kernel call.
//!
//! Per block, exactly as the x86 kernels and up to float rounding as the
//! scalar `vec_dot`: `acc += (Σq·a · d_a) · d_w`, plus `m_w · s_a` for the
//! formats with a min.

use crate::blocks::*;
use crate::types::QK_K;
use bytemuck::{Pod, Zeroable};
use half::f16;

/// Elements of `k` per panel.
const KC: usize = 512;
/// 32-element blocks per panel.
const KB: usize = KC / QK;
/// Four-byte chunks per panel.
const NCH: usize = KC / 4;
/// Activation rows per pass over the panels.
const MB: usize = 128;

/// The vector primitives of one instruction set, implemented by a
/// zero-sized token that can only be built once run-time detection has
/// confirmed the instructions (holding one is the proof that calling its
/// methods is sound).
pub(crate) trait Simd: Copy {
    /// Weight rows (32-bit lanes) per vector.
    const LANES: usize;
    /// A vector's chunk in memory: four bytes of each of `LANES` rows.
    type Chunk: Pod;
    /// `LANES` f32 in memory.
    type Lanes: Pod;
    /// A loaded chunk.
    type W: Copy;
    /// Sixteen loaded activation bytes (four chunks).
    type A: Copy;
    /// The integer sums of `LANES` rows with one activation row.
    type I: Copy;
    /// `LANES` f32.
    type F: Copy;

    fn load_chunk(self, c: &Self::Chunk) -> Self::W;
    fn load_act(self, a: &[i8; 16]) -> Self::A;
    fn izero(self) -> Self::I;
    /// `acc + Σ_{c<4} Σ_{t<4} w[c]_{r,t} · a[4c + t]` in lane `r`: exact.
    fn dot4(self, acc: Self::I, w: [Self::W; 4], a: Self::A) -> Self::I;
    /// The lanes' sums, converted to f32.
    fn sums(self, acc: Self::I) -> Self::F;

    /// Where weight `e` (of 16 consecutive ones) of lane `r` goes in a
    /// group of four chunks (64 bytes): by default chunk `e / 4`, lane
    /// `r`. Runs of four consecutive weights must stay together.
    #[inline(always)]
    fn byte_at(r: usize, e: usize) -> usize {
        16 * (e / 4) + 4 * r + e % 4
    }
    /// `sum[i][v] += ` the products of the four chunks `w[v]` with
    /// activation row `i`'s sixteen bytes `x[i]`: by default one
    /// [`dot4`](Self::dot4) per row and vector. An ISA whose instructions
    /// take two activation rows (`smmla`) may keep `sum` in its own
    /// layout, undone by [`sums_rows`](Self::sums_rows).
    #[inline(always)]
    fn dot_rows<const NV: usize, const R: usize>(
        self,
        sum: &mut [[Self::I; NV]; R],
        w: &[[Self::W; 4]; NV],
        x: &[Self::A; R],
    ) {
        for (sum, &x) in sum.iter_mut().zip(x) {
            for (sv, &wv) in sum.iter_mut().zip(w) {
                *sv = self.dot4(*sv, wv, x);
            }
        }
    }
    /// The rows' sums from [`dot_rows`](Self::dot_rows), as f32 lanes.
    #[inline(always)]
    fn sums_rows<const NV: usize, const R: usize>(
        self,
        sum: &[[Self::I; NV]; R],
    ) -> [[Self::F; NV]; R] {
        core::array::from_fn(|i| core::array::from_fn(|v| self.sums(sum[i][v])))
    }
    fn load_f(self, x: &Self::Lanes) -> Self::F;
    fn store_f(self, x: &mut Self::Lanes, v: Self::F);
    fn splat(self, x: f32) -> Self::F;
    fn fzero(self) -> Self::F;
    /// `acc + a · b`, fused.
    fn fma(self, acc: Self::F, a: Self::F, b: Self::F) -> Self::F;
    fn mul(self, a: Self::F, b: Self::F) -> Self::F;
    fn add(self, a: Self::F, b: Self::F) -> Self::F;
    /// Exact f16 → f32.
    fn f16(self, h: f16) -> f32 {
        h.to_f32()
    }
}

/// A 32-wide activation block (Q8_0 or Q8_1).
pub(crate) trait ActBlock: Pod {
    fn qs(&self) -> &[i8; QK];
    fn d(&self) -> f16;
    /// Q8_1's `s = d·Σq`; zero for Q8_0.
    fn s(&self) -> f16 {
        f16::ZERO
    }
}

impl ActBlock for BlockQ8_0 {
    #[inline(always)]
    fn qs(&self) -> &[i8; QK] {
        &self.qs
    }
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
}

impl ActBlock for BlockQ8_1 {
    #[inline(always)]
    fn qs(&self) -> &[i8; QK] {
        &self.qs
    }
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
    #[inline(always)]
    fn s(&self) -> f16 {
        self.s
    }
}

/// What a 32-wide weight format contributes to a gemm: the facts the
/// drivers need, named, instead of positional flags.
pub(crate) trait Repack: Pod {
    /// The activation blocks it is multiplied with.
    type Act: ActBlock;
    /// `x = d·q + m`: each block adds `m · s_a` (Q4_1, Q5_1).
    const HAS_MIN: bool;
    /// The block's 32 weights as the signed integers its `vec_dot` sums
    /// (`q − 8` for Q4_0, the table value for IQ4_NL, …), element order.
    fn ints(&self) -> [i8; QK];
    fn d(&self) -> f16;
    /// The min `m` (zero without one).
    fn m(&self) -> f16 {
        f16::ZERO
    }
}

// Arrays are built with `core::array::from_fn`, not `.map`: `map` is not
// always inlined (a call per micro-kernel step otherwise).

/// Nibbles of a 32-wide block: element `j` low in `qs[j]`, `j + 16` high.
#[inline(always)]
fn nibbles(qs: &[u8; QK / 2]) -> [u8; QK] {
    core::array::from_fn(|e| if e < 16 { qs[e] & 0xf } else { qs[e - 16] >> 4 })
}

/// The fifth bits of a Q5 block, element `e` at bit `e` of `qh`, as 0x10.
#[inline(always)]
fn fifth(qh: [u8; 4]) -> [u8; QK] {
    let qh = u32::from_le_bytes(qh);
    core::array::from_fn(|e| (((qh >> e) & 1) << 4) as u8)
}

impl Repack for BlockQ4_0 {
    type Act = BlockQ8_0;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn ints(&self) -> [i8; QK] {
        let q = nibbles(&self.qs);
        core::array::from_fn(|e| q[e] as i8 - 8)
    }
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
}

impl Repack for BlockQ4_1 {
    type Act = BlockQ8_1;
    const HAS_MIN: bool = true;
    #[inline(always)]
    fn ints(&self) -> [i8; QK] {
        let q = nibbles(&self.qs);
        core::array::from_fn(|e| q[e] as i8)
    }
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
    #[inline(always)]
    fn m(&self) -> f16 {
        self.m
    }
}

impl Repack for BlockQ5_0 {
    type Act = BlockQ8_0;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn ints(&self) -> [i8; QK] {
        let (lo, hi) = (nibbles(&self.qs), fifth(self.qh));
        core::array::from_fn(|e| (lo[e] | hi[e]) as i8 - 16)
    }
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
}

impl Repack for BlockQ5_1 {
    type Act = BlockQ8_1;
    const HAS_MIN: bool = true;
    #[inline(always)]
    fn ints(&self) -> [i8; QK] {
        let (lo, hi) = (nibbles(&self.qs), fifth(self.qh));
        core::array::from_fn(|e| (lo[e] | hi[e]) as i8)
    }
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
    #[inline(always)]
    fn m(&self) -> f16 {
        self.m
    }
}

impl Repack for BlockQ8_0 {
    type Act = BlockQ8_0;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn ints(&self) -> [i8; QK] {
        self.qs
    }
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
}

impl Repack for BlockIQ4NL {
    type Act = BlockQ8_0;
    const HAS_MIN: bool = false;
    #[inline(always)]
    fn ints(&self) -> [i8; QK] {
        let q = nibbles(&self.qs);
        core::array::from_fn(|e| crate::formats::iquants::KVALUES_IQ4NL[usize::from(q[e])])
    }
    #[inline(always)]
    fn d(&self) -> f16 {
        self.d
    }
}

/// Writes the ints of one weight row (lane `r` of vector `v`) into the
/// chunks `q` (groups of four chunks per 16 weights) in `S`'s layout.
#[inline(always)]
fn write_ints<S: Simd, const NV: usize>(q: &mut [[S::Chunk; NV]], v: usize, r: usize, ints: &[i8]) {
    for (g, x) in ints.chunks_exact(16).enumerate() {
        for t in 0..4 {
            let pos = S::byte_at(r, 4 * t);
            let chunk = bytemuck::bytes_of_mut(&mut q[4 * g + pos / 16][v]);
            chunk[pos % 16..pos % 16 + 4]
                .copy_from_slice(bytemuck::cast_slice(&x[4 * t..4 * t + 4]));
        }
    }
}

/// `NV · LANES` weight rows × `KC` elements, interleaved (module docs).
#[repr(C)]
struct Panel<S: Simd, const NV: usize> {
    /// Chunk `c` of vector `v`: weights `4c..4c+4` of each of its rows.
    q: [[S::Chunk; NV]; NCH],
    /// Per block: the rows' scales `d`.
    d: [[S::Lanes; NV]; KB],
    /// Per block: the rows' mins `m` (formats with a min).
    m: [[S::Lanes; NV]; KB],
}

impl<S: Simd, const NV: usize> Panel<S, NV> {
    fn new() -> Self {
        Panel {
            q: [[Zeroable::zeroed(); NV]; NCH],
            d: [[Zeroable::zeroed(); NV]; KB],
            m: [[Zeroable::zeroed(); NV]; KB],
        }
    }

    /// Repacks block `b` of the panel from one block of each row
    /// (`rows[v · LANES + r]` for lane `r` of vector `v`).
    #[inline(always)]
    fn repack<W: Repack>(&mut self, s: S, b: usize, rows: &[&W]) {
        for (v, rows) in rows.chunks_exact(S::LANES).enumerate() {
            let dl: &mut [f32] = bytemuck::cast_slice_mut(core::slice::from_mut(&mut self.d[b][v]));
            let ml: &mut [f32] = bytemuck::cast_slice_mut(core::slice::from_mut(&mut self.m[b][v]));
            for (r, x) in rows.iter().enumerate() {
                write_ints::<S, NV>(&mut self.q[8 * b..8 * b + 8], v, r, &x.ints());
                dl[r] = s.f16(x.d());
                if W::HAS_MIN {
                    ml[r] = s.f16(x.m());
                }
            }
        }
    }
}

/// The micro-kernel: `R` activation rows times the panel's `NV · LANES`
/// rows over `kb` blocks.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn tile<S: Simd, W: Repack, const NV: usize, const R: usize>(
    s: S,
    p: &Panel<S, NV>,
    kb: usize,
    a: &[&[W::Act]; R],
    info: &[&[[f32; KB]; 2]; R],
) -> [[S::F; NV]; R] {
    let mut acc = [[s.fzero(); NV]; R];
    for b in 0..kb {
        let mut sum = [[s.izero(); NV]; R];
        for h in 0..2 {
            let w: [[S::W; 4]; NV] = core::array::from_fn(|v| {
                core::array::from_fn(|c| s.load_chunk(&p.q[8 * b + 4 * h + c][v]))
            });
            let x: [S::A; R] = core::array::from_fn(|i| {
                s.load_act(a[i][b].qs()[16 * h..16 * h + 16].try_into().unwrap())
            });
            s.dot_rows(&mut sum, &w, &x);
        }
        let sum = s.sums_rows(&sum);
        let dw: [S::F; NV] = core::array::from_fn(|v| s.load_f(&p.d[b][v]));
        for i in 0..R {
            let da = s.splat(info[i][0][b]);
            for v in 0..NV {
                acc[i][v] = s.fma(acc[i][v], s.mul(sum[i][v], da), dw[v]);
            }
        }
        if W::HAS_MIN {
            let mw: [S::F; NV] = core::array::from_fn(|v| s.load_f(&p.m[b][v]));
            for i in 0..R {
                let sa = s.splat(info[i][1][b]);
                for v in 0..NV {
                    acc[i][v] = s.fma(acc[i][v], mw[v], sa);
                }
            }
        }
    }
    acc
}

/// Writes (`first`) or adds the first `o.len()` of the panel's lanes.
#[inline(always)]
fn put<S: Simd, const NV: usize>(s: S, o: &mut [f32], v: [S::F; NV], first: bool) {
    let mut t = [[Zeroable::zeroed(); NV]; 1];
    for (tv, v) in t[0].iter_mut().zip(v) {
        s.store_f(tv, v);
    }
    let t: &[f32] = bytemuck::cast_slice::<S::Lanes, f32>(&t[0]);
    for (o, &t) in o.iter_mut().zip(t) {
        *o = if first { t } else { *o + t };
    }
}

/// Where a tile's rows live: activation rows `i0 + i ..` of `nb` blocks each,
/// blocks `b0..b0 + kb` of this `k` chunk; output columns `j0..j0 + nc`.
#[derive(Clone, Copy)]
struct At {
    nb: usize,
    b0: usize,
    kb: usize,
    i0: usize,
    ldo: usize,
    j0: usize,
    nc: usize,
    first: bool,
}

/// Runs [`tile`] for activation rows `i..i + R` of the pass and stores.
#[inline(always)]
fn run<S: Simd, W: Repack, const NV: usize, const R: usize>(
    s: S,
    p: &Panel<S, NV>,
    a: &[W::Act],
    info: &[[[f32; KB]; 2]],
    i: usize,
    at: At,
    out: &mut [f32],
) {
    let row = |r: usize| (at.i0 + i + r) * at.nb + at.b0;
    let ar: [&[W::Act]; R] = core::array::from_fn(|r| &a[row(r)..row(r) + at.kb]);
    let inf: [&[[f32; KB]; 2]; R] = core::array::from_fn(|r| &info[i + r]);
    let acc = tile::<S, W, NV, R>(s, p, at.kb, &ar, &inf);
    for (r, v) in acc.into_iter().enumerate() {
        let o = (at.i0 + i + r) * at.ldo + at.j0;
        put::<S, NV>(s, &mut out[o..o + at.nc], v, at.first);
    }
}

/// Register-blocked gemm of a 32-wide format (see [`super::GemmFn`]):
/// passes of `MB` activation rows; per pass and chunk of `k`, the
/// activation scales, then per panel of `NV · LANES` weight rows the repack
/// and the micro-kernels, `RL` (then 4, 2, 1) activation rows at a time.
/// Below `min_m` activation rows, `fallback` (the format's `vec_dot`) per
/// pair.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_legacy<S: Simd, W: Repack, const NV: usize, const RL: usize>(
    s: S,
    k: usize,
    w: &[u8],
    a: &[u8],
    out: &mut [f32],
    ldo: usize,
    min_m: usize,
    fallback: super::VecDotFn,
) {
    let nb = k / QK;
    if nb == 0 {
        return;
    }
    let (wrow, arow) = (nb * size_of::<W>(), nb * size_of::<W::Act>());
    let (n, m) = (w.len() / wrow, a.len() / arow);
    if m < min_m || n == 0 {
        for (i, ar) in a.chunks_exact(arow).enumerate() {
            for (j, wr) in w.chunks_exact(wrow).enumerate() {
                out[i * ldo + j] = fallback(wr, ar);
            }
        }
        return;
    }
    let w = bytemuck::cast_slice::<u8, W>(w);
    let a = bytemuck::cast_slice::<u8, W::Act>(a);
    let np = NV * S::LANES;
    let mut p = Panel::<S, NV>::new();
    let mut info = [[[0f32; KB]; 2]; MB];
    let nkc = nb.div_ceil(KB);
    for i0 in (0..m).step_by(MB) {
        let mc = MB.min(m - i0);
        for kc in 0..nkc {
            let (b0, b1) = (kc * nb / nkc, (kc + 1) * nb / nkc);
            for (i, inf) in info[..mc].iter_mut().enumerate() {
                let row = &a[(i0 + i) * nb + b0..(i0 + i) * nb + b1];
                for (b, blk) in row.iter().enumerate() {
                    inf[0][b] = s.f16(blk.d());
                    inf[1][b] = s.f16(blk.s());
                }
            }
            for j0 in (0..n).step_by(np) {
                let nc = np.min(n - j0);
                for b in 0..b1 - b0 {
                    let rows: [&W; 64] =
                        core::array::from_fn(|r| &w[(j0 + r.min(nc - 1)) * nb + b0 + b]);
                    p.repack(s, b, &rows[..np]);
                }
                let at = At {
                    nb,
                    b0,
                    kb: b1 - b0,
                    i0,
                    ldo,
                    j0,
                    nc,
                    first: kc == 0,
                };
                let mut i = 0;
                while i < mc {
                    let rem = mc - i;
                    i += if rem >= RL {
                        run::<S, W, NV, RL>(s, &p, a, &info, i, at, out);
                        RL
                    } else if rem >= 4 {
                        run::<S, W, NV, 4>(s, &p, a, &info, i, at, out);
                        4
                    } else if rem >= 2 {
                        run::<S, W, NV, 2>(s, &p, a, &info, i, at, out);
                        2
                    } else {
                        run::<S, W, NV, 1>(s, &p, a, &info, i, at, out);
                        1
                    };
                }
            }
        }
    }
}

/// Super-blocks per K-quant panel.
const KS: usize = KC / QK_K;

/// The per-row scale facts of one K-quant super-block, as f32.
pub(crate) struct KScales {
    /// `d · sc_g` per group (16 groups of 16, or the first 8 of 32).
    pub dsc: [f32; 16],
    /// The group mins `m_g` (formats with mins).
    pub mins: [f32; 8],
    /// `−dmin` (formats with mins).
    pub neg_dmin: f32,
}

/// What a K-quant format contributes to a gemm (activations: Q8_K).
pub(crate) trait RepackK: Pod {
    /// Elements per group with its own scale.
    const G: usize;
    /// `x = d·sc·q − dmin·m`: a `−dmin · Σ_g m_g · bsum_g` term per
    /// super-block against the Q8_K block sums (Q4_K, Q5_K).
    const HAS_MIN: bool;
    /// The 256 weights as the signed integers multiplied with the
    /// activations (Q6_K: `q − 32`), element order.
    fn ints(&self) -> [i8; QK_K];
    fn scales(&self, f16: impl Fn(f16) -> f32) -> KScales;
}

/// ggml's `get_scale_min_k4` for all eight groups: (scales, mins).
#[inline(always)]
fn scales_mins_k4(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        (sc[j], mn[j]) = if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        };
    }
    (sc, mn)
}

/// Q4_K / Q5_K scales: `d·sc_g`, `m_g`, `−dmin`.
#[inline(always)]
fn k4_scales(d: f16, dmin: f16, packed: &[u8; 12], f16: impl Fn(f16) -> f32) -> KScales {
    let (sc, mn) = scales_mins_k4(packed);
    let d = f16(d);
    let mut dsc = [0f32; 16];
    for (o, s) in dsc.iter_mut().zip(sc) {
        *o = f32::from(s) * d;
    }
    KScales {
        dsc,
        mins: core::array::from_fn(|g| f32::from(mn[g])),
        neg_dmin: -f16(dmin),
    }
}

/// Q4_K nibbles: bytes `32j..32j+32` hold elements `64j + l` (low) and
/// `64j + 32 + l` (high).
#[inline(always)]
fn k4_nibbles(qs: &[u8; QK_K / 2]) -> [u8; QK_K] {
    core::array::from_fn(|e| {
        let (j, h, l) = (e / 64, (e / 32) % 2, e % 32);
        (qs[32 * j + l] >> (4 * h)) & 0xf
    })
}

impl RepackK for BlockQ4K {
    const G: usize = 32;
    const HAS_MIN: bool = true;
    #[inline(always)]
    fn ints(&self) -> [i8; QK_K] {
        let q = k4_nibbles(&self.qs);
        core::array::from_fn(|e| q[e] as i8)
    }
    #[inline(always)]
    fn scales(&self, f16: impl Fn(f16) -> f32) -> KScales {
        k4_scales(self.d, self.dmin, &self.scales, f16)
    }
}

impl RepackK for BlockQ5K {
    const G: usize = 32;
    const HAS_MIN: bool = true;
    /// The fifth bit of element `l` of group `g` is bit `g` of `qh[l]`.
    #[inline(always)]
    fn ints(&self) -> [i8; QK_K] {
        let lo = k4_nibbles(&self.qs);
        core::array::from_fn(|e| (lo[e] | (((self.qh[e % 32] >> (e / 32)) & 1) << 4)) as i8)
    }
    #[inline(always)]
    fn scales(&self, f16: impl Fn(f16) -> f32) -> KScales {
        k4_scales(self.d, self.dmin, &self.scales, f16)
    }
}

impl RepackK for BlockQ6K {
    const G: usize = 16;
    const HAS_MIN: bool = false;
    /// Per half `n`: `ql[64n + l]` holds elements `128n + l` (low nibble)
    /// and `128n + 64 + l` (high), `ql[64n + 32 + l]` elements `+32` and
    /// `+96`; `qh[32n + l]` their top two bits at bits 0-1, 2-3, 4-5, 6-7.
    #[inline(always)]
    fn ints(&self) -> [i8; QK_K] {
        core::array::from_fn(|e| {
            let (n, q, l) = (e / 128, (e % 128) / 32, e % 32);
            let lo = (self.ql[64 * n + 32 * (q % 2) + l] >> (4 * (q / 2))) & 0xf;
            let hi = (self.qh[32 * n + l] >> (2 * q)) & 3;
            (lo | (hi << 4)) as i8 - 32
        })
    }
    #[inline(always)]
    fn scales(&self, f16: impl Fn(f16) -> f32) -> KScales {
        let d = f16(self.d);
        KScales {
            dsc: core::array::from_fn(|g| f32::from(self.scales[g]) * d),
            mins: [0.0; 8],
            neg_dmin: 0.0,
        }
    }
}

/// The f32 lanes of `x`.
#[inline(always)]
fn lanes_mut<S: Simd>(x: &mut S::Lanes) -> &mut [f32] {
    bytemuck::cast_slice_mut(core::slice::from_mut(x))
}

/// `NV · LANES` K-quant weight rows × `KS` super-blocks, interleaved.
#[repr(C)]
struct PanelK<S: Simd, const NV: usize> {
    q: [[S::Chunk; NV]; NCH],
    /// Per group: the rows' `d·sc_g`.
    dsc: [[S::Lanes; NV]; 16 * KS],
    /// Per group of 32: the rows' mins.
    mins: [[S::Lanes; NV]; 8 * KS],
    /// Per super-block: the rows' `−dmin`.
    neg_dmin: [[S::Lanes; NV]; KS],
}

impl<S: Simd, const NV: usize> PanelK<S, NV> {
    fn new() -> Self {
        PanelK {
            q: [[Zeroable::zeroed(); NV]; NCH],
            dsc: [[Zeroable::zeroed(); NV]; 16 * KS],
            mins: [[Zeroable::zeroed(); NV]; 8 * KS],
            neg_dmin: [[Zeroable::zeroed(); NV]; KS],
        }
    }

    /// Repacks super-block `sb` of the panel, one of each row.
    #[inline(always)]
    fn repack<W: RepackK>(&mut self, s: S, sb: usize, rows: &[&W]) {
        let lanes = lanes_mut::<S>;
        for (v, rows) in rows.chunks_exact(S::LANES).enumerate() {
            for (r, x) in rows.iter().enumerate() {
                write_ints::<S, NV>(&mut self.q[64 * sb..64 * sb + 64], v, r, &x.ints());
                let k = x.scales(|h| s.f16(h));
                for g in 0..QK_K / W::G {
                    lanes(&mut self.dsc[16 * sb + g][v])[r] = k.dsc[g];
                }
                if W::HAS_MIN {
                    for g in 0..8 {
                        lanes(&mut self.mins[8 * sb + g][v])[r] = k.mins[g];
                    }
                    lanes(&mut self.neg_dmin[sb][v])[r] = k.neg_dmin;
                }
            }
        }
    }
}

/// The K-quant micro-kernel: `R` activation rows times the panel over `ks`
/// super-blocks. Per super-block, as the x86 kernels: `Σ_g sums_g · d·sc_g`,
/// plus `(Σ_g m_g · bsum_g) · (−dmin)` (exact in f32: integers below 2²⁴),
/// times the activation's `d`.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn tile_k<S: Simd, W: RepackK, const NV: usize, const R: usize>(
    s: S,
    p: &PanelK<S, NV>,
    ks: usize,
    a: &[&[BlockQ8K]; R],
) -> [[S::F; NV]; R] {
    let mut tot = [[s.fzero(); NV]; R];
    for sb in 0..ks {
        let mut blk = [[s.fzero(); NV]; R];
        for g in 0..QK_K / W::G {
            let mut sum = [[s.izero(); NV]; R];
            for h in 0..W::G / 16 {
                let c0 = 64 * sb + W::G / 4 * g + 4 * h;
                let w: [[S::W; 4]; NV] = core::array::from_fn(|v| {
                    core::array::from_fn(|c| s.load_chunk(&p.q[c0 + c][v]))
                });
                let e = W::G * g + 16 * h;
                let x: [S::A; R] = core::array::from_fn(|i| {
                    s.load_act(a[i][sb].qs[e..e + 16].try_into().unwrap())
                });
                s.dot_rows(&mut sum, &w, &x);
            }
            let sum = s.sums_rows(&sum);
            let dg: [S::F; NV] = core::array::from_fn(|v| s.load_f(&p.dsc[16 * sb + g][v]));
            for i in 0..R {
                for v in 0..NV {
                    blk[i][v] = s.fma(blk[i][v], sum[i][v], dg[v]);
                }
            }
        }
        if W::HAS_MIN {
            let mut cs = [[s.fzero(); NV]; R];
            for g in 0..8 {
                let m: [S::F; NV] = core::array::from_fn(|v| s.load_f(&p.mins[8 * sb + g][v]));
                for i in 0..R {
                    let bs = &a[i][sb].bsums;
                    let b = s.splat(f32::from(bs[2 * g]) + f32::from(bs[2 * g + 1]));
                    for v in 0..NV {
                        cs[i][v] = s.fma(cs[i][v], m[v], b);
                    }
                }
            }
            let e: [S::F; NV] = core::array::from_fn(|v| s.load_f(&p.neg_dmin[sb][v]));
            for i in 0..R {
                for v in 0..NV {
                    blk[i][v] = s.fma(blk[i][v], cs[i][v], e[v]);
                }
            }
        }
        for i in 0..R {
            let da = s.splat(a[i][sb].d);
            for v in 0..NV {
                tot[i][v] = s.fma(tot[i][v], blk[i][v], da);
            }
        }
    }
    tot
}

/// Runs [`tile_k`] for activation rows `i..i + R` (absolute) and stores.
#[inline(always)]
fn run_k<S: Simd, W: RepackK, const NV: usize, const R: usize>(
    s: S,
    p: &PanelK<S, NV>,
    a: &[BlockQ8K],
    i: usize,
    at: At,
    out: &mut [f32],
) {
    let row = |r: usize| (i + r) * at.nb + at.b0;
    let ar: [&[BlockQ8K]; R] = core::array::from_fn(|r| &a[row(r)..row(r) + at.kb]);
    let acc = tile_k::<S, W, NV, R>(s, p, at.kb, &ar);
    for (r, v) in acc.into_iter().enumerate() {
        let o = (i + r) * at.ldo + at.j0;
        put::<S, NV>(s, &mut out[o..o + at.nc], v, at.first);
    }
}

/// Register-blocked gemm of a K-quant format with Q8_K activations: as
/// [`gemm_legacy`], in super-blocks (`KS` per panel).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_k<S: Simd, W: RepackK, const NV: usize, const RL: usize>(
    s: S,
    k: usize,
    w: &[u8],
    a: &[u8],
    out: &mut [f32],
    ldo: usize,
    min_m: usize,
    fallback: super::VecDotFn,
) {
    let nb = k / QK_K;
    if nb == 0 {
        return;
    }
    let (wrow, arow) = (nb * size_of::<W>(), nb * size_of::<BlockQ8K>());
    let (n, m) = (w.len() / wrow, a.len() / arow);
    if m < min_m || n == 0 {
        for (i, ar) in a.chunks_exact(arow).enumerate() {
            for (j, wr) in w.chunks_exact(wrow).enumerate() {
                out[i * ldo + j] = fallback(wr, ar);
            }
        }
        return;
    }
    let w = bytemuck::cast_slice::<u8, W>(w);
    let a = bytemuck::cast_slice::<u8, BlockQ8K>(a);
    let np = NV * S::LANES;
    let mut p = PanelK::<S, NV>::new();
    let nkc = nb.div_ceil(KS);
    for i0 in (0..m).step_by(MB) {
        let mc = MB.min(m - i0);
        for kc in 0..nkc {
            let (b0, b1) = (kc * nb / nkc, (kc + 1) * nb / nkc);
            for j0 in (0..n).step_by(np) {
                let nc = np.min(n - j0);
                for sb in 0..b1 - b0 {
                    let rows: [&W; 64] =
                        core::array::from_fn(|r| &w[(j0 + r.min(nc - 1)) * nb + b0 + sb]);
                    p.repack(s, sb, &rows[..np]);
                }
                let at = At {
                    nb,
                    b0,
                    kb: b1 - b0,
                    i0,
                    ldo,
                    j0,
                    nc,
                    first: kc == 0,
                };
                let mut i = i0;
                while i < i0 + mc {
                    let rem = i0 + mc - i;
                    i += if rem >= RL {
                        run_k::<S, W, NV, RL>(s, &p, a, i, at, out);
                        RL
                    } else if rem >= 4 {
                        run_k::<S, W, NV, 4>(s, &p, a, i, at, out);
                        4
                    } else if rem >= 2 {
                        run_k::<S, W, NV, 2>(s, &p, a, i, at, out);
                        2
                    } else {
                        run_k::<S, W, NV, 1>(s, &p, a, i, at, out);
                        1
                    };
                }
            }
        }
    }
}

/// Elements of `k` per float panel.
const KF: usize = 128;
/// Activation rows per float pass.
const MF: usize = 64;

/// A float element type: F32, F16 or BF16.
pub(crate) trait Elem: Pod {
    /// Exact conversion (`f16` is the ISA's f16 → f32).
    fn to_f32(self, f16: impl Fn(f16) -> f32) -> f32;
}

impl Elem for f32 {
    #[inline(always)]
    fn to_f32(self, _: impl Fn(f16) -> f32) -> f32 {
        self
    }
}

impl Elem for f16 {
    #[inline(always)]
    fn to_f32(self, f16: impl Fn(f16) -> f32) -> f32 {
        f16(self)
    }
}

impl Elem for half::bf16 {
    #[inline(always)]
    fn to_f32(self, _: impl Fn(f16) -> f32) -> f32 {
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
}

/// `NV · LANES` float weight rows × `KF` elements as f32: element `e` of
/// the rows of vector `v` in `x[e][v]`.
struct FPanel<S: Simd, const NV: usize> {
    x: [[S::Lanes; NV]; KF],
}

/// The float micro-kernel: one FMA per element, vector and activation row,
/// even and odd elements into separate accumulators (latency), as x86.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn tile_float<S: Simd, const NV: usize, const R: usize>(
    s: S,
    p: &FPanel<S, NV>,
    kc: usize,
    a: &[&[f32; KF]; R],
) -> [[S::F; NV]; R] {
    let mut acc0 = [[s.fzero(); NV]; R];
    let mut acc1 = [[s.fzero(); NV]; R];
    let mut e = 0;
    while e + 2 <= kc {
        let w0: [S::F; NV] = core::array::from_fn(|v| s.load_f(&p.x[e][v]));
        let w1: [S::F; NV] = core::array::from_fn(|v| s.load_f(&p.x[e + 1][v]));
        for i in 0..R {
            let (x0, x1) = (s.splat(a[i][e]), s.splat(a[i][e + 1]));
            for v in 0..NV {
                acc0[i][v] = s.fma(acc0[i][v], w0[v], x0);
                acc1[i][v] = s.fma(acc1[i][v], w1[v], x1);
            }
        }
        e += 2;
    }
    if e < kc {
        let w0: [S::F; NV] = core::array::from_fn(|v| s.load_f(&p.x[e][v]));
        for i in 0..R {
            let x0 = s.splat(a[i][e]);
            for v in 0..NV {
                acc0[i][v] = s.fma(acc0[i][v], w0[v], x0);
            }
        }
    }
    let mut out = acc0;
    for i in 0..R {
        for v in 0..NV {
            out[i][v] = s.add(acc0[i][v], acc1[i][v]);
        }
    }
    out
}

/// Runs [`tile_float`] for activation rows `i..i + R` of the pass and stores.
#[inline(always)]
fn run_float<S: Simd, const NV: usize, const R: usize>(
    s: S,
    p: &FPanel<S, NV>,
    acts: &[[f32; KF]],
    i: usize,
    at: At,
    out: &mut [f32],
) {
    let ar: [&[f32; KF]; R] = core::array::from_fn(|r| &acts[i + r]);
    let acc = tile_float::<S, NV, R>(s, p, at.kb, &ar);
    for (r, v) in acc.into_iter().enumerate() {
        let o = (at.i0 + i + r) * at.ldo + at.j0;
        put::<S, NV>(s, &mut out[o..o + at.nc], v, at.first);
    }
}

/// Register-blocked float gemm (F32, F16, BF16): passes of `MF` activation
/// rows converted to f32 per chunk of `KF` elements, panels of
/// `NV · LANES` weight rows, `RL` (then 4, 2, 1) activation rows per
/// micro-kernel call. Below `min_m` activation rows, `fallback` per pair.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_float<S: Simd, E: Elem, const NV: usize, const RL: usize>(
    s: S,
    k: usize,
    w: &[u8],
    a: &[u8],
    out: &mut [f32],
    ldo: usize,
    min_m: usize,
    fallback: super::VecDotFn,
) {
    if k == 0 {
        return;
    }
    let row = k * size_of::<E>();
    let (n, m) = (w.len() / row, a.len() / row);
    if m < min_m || n == 0 {
        for (i, ar) in a.chunks_exact(row).enumerate() {
            for (j, wr) in w.chunks_exact(row).enumerate() {
                out[i * ldo + j] = fallback(wr, ar);
            }
        }
        return;
    }
    let w = bytemuck::cast_slice::<u8, E>(w);
    let a = bytemuck::cast_slice::<u8, E>(a);
    let cvt = |x: E| x.to_f32(|h| s.f16(h));
    let np = NV * S::LANES;
    let mut p = FPanel::<S, NV> {
        x: [[Zeroable::zeroed(); NV]; KF],
    };
    let mut acts = [[0f32; KF]; MF];
    for i0 in (0..m).step_by(MF) {
        let mc = MF.min(m - i0);
        for e0 in (0..k).step_by(KF) {
            let kc = KF.min(k - e0);
            for (i, x) in acts[..mc].iter_mut().enumerate() {
                let r = &a[(i0 + i) * k + e0..(i0 + i) * k + e0 + kc];
                for (y, &v) in x.iter_mut().zip(r) {
                    *y = cvt(v);
                }
            }
            for j0 in (0..n).step_by(np) {
                let nc = np.min(n - j0);
                for (e, x) in p.x[..kc].iter_mut().enumerate() {
                    for (v, x) in x.iter_mut().enumerate() {
                        for (r, y) in lanes_mut::<S>(x).iter_mut().enumerate() {
                            let j = j0 + (v * S::LANES + r).min(nc - 1);
                            *y = cvt(w[j * k + e0 + e]);
                        }
                    }
                }
                let at = At {
                    nb: 0,
                    b0: 0,
                    kb: kc,
                    i0,
                    ldo,
                    j0,
                    nc,
                    first: e0 == 0,
                };
                let mut i = 0;
                while i < mc {
                    let rem = mc - i;
                    i += if rem >= RL {
                        run_float::<S, NV, RL>(s, &p, &acts, i, at, out);
                        RL
                    } else if rem >= 4 {
                        run_float::<S, NV, 4>(s, &p, &acts, i, at, out);
                        4
                    } else if rem >= 2 {
                        run_float::<S, NV, 2>(s, &p, &acts, i, at, out);
                        2
                    } else {
                        run_float::<S, NV, 1>(s, &p, &acts, i, at, out);
                        1
                    };
                }
            }
        }
    }
}
