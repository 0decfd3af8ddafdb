//! Dequantization and `vec_dot` against Q8_K of the grid i-quants, after
//! ggml's `dequantize_row_*` and `ggml_vec_dot_*_q8_K_generic`: the integer
//! sums are exact, the float operations are ggml's, in ggml's order.

use super::tables::*;
use crate::blocks::*;
use crate::formats::check_len;
use crate::types::QK_K;

/// A super-block whose values are groups of 8 grid magnitudes with a sign
/// byte, and a 4-bit scale per 16 elements (one per 32 for some types).
pub(crate) trait SignedGrid: Copy {
    /// The f16 super-block scale as f32.
    fn d(&self) -> f32;
    /// Group `l` (0..4) of block `ib` (0..8) of 32: the 8 magnitudes and a
    /// sign byte (bit `j` set: element `j` negative).
    fn group(&self, ib: usize, l: usize) -> ([u8; 8], u8);
    /// The 4-bit scales of the first and second 16 elements of block `ib`.
    fn scales(&self, ib: usize) -> (u8, u8);
    /// ggml's float block scale from `d` and a 4-bit scale.
    fn db(d: f32, s: u8) -> f32;
    /// The factor ggml's `vec_dot` applies to the final sum.
    const DOT_SCALE: f32;
}

/// The two little-endian u32 of IQ2_XXS block `ib`.
fn xxs_words(qs: &[u16; QK_K / 8], ib: usize) -> (u32, u32) {
    let w = |k: usize| u32::from(qs[4 * ib + 2 * k]) | (u32::from(qs[4 * ib + 2 * k + 1]) << 16);
    (w(0), w(1))
}

impl SignedGrid for BlockIQ2XXS {
    fn d(&self) -> f32 {
        self.d.to_f32()
    }
    fn group(&self, ib: usize, l: usize) -> ([u8; 8], u8) {
        let (a, b) = xxs_words(&self.qs, ib);
        let idx = (a >> (8 * l)) & 0xff;
        let g = IQ2XXS_GRID[idx as usize].to_le_bytes();
        (g, KSIGNS_IQ2XS[((b >> (7 * l)) & 127) as usize])
    }
    fn scales(&self, ib: usize) -> (u8, u8) {
        let s = (xxs_words(&self.qs, ib).1 >> 28) as u8;
        (s, s)
    }
    fn db(d: f32, s: u8) -> f32 {
        d * (0.5 + f32::from(s)) * 0.25
    }
    const DOT_SCALE: f32 = 0.125;
}

impl SignedGrid for BlockIQ2XS {
    fn d(&self) -> f32 {
        self.d.to_f32()
    }
    fn group(&self, ib: usize, l: usize) -> ([u8; 8], u8) {
        let q = self.qs[4 * ib + l];
        let g = IQ2XS_GRID[usize::from(q & 511)].to_le_bytes();
        (g, KSIGNS_IQ2XS[usize::from(q >> 9)])
    }
    fn scales(&self, ib: usize) -> (u8, u8) {
        (self.scales[ib] & 0xf, self.scales[ib] >> 4)
    }
    fn db(d: f32, s: u8) -> f32 {
        d * (0.5 + f32::from(s)) * 0.25
    }
    const DOT_SCALE: f32 = 0.125;
}

impl SignedGrid for BlockIQ2S {
    fn d(&self) -> f32 {
        self.d.to_f32()
    }
    fn group(&self, ib: usize, l: usize) -> ([u8; 8], u8) {
        let hi = (u16::from(self.qh[ib]) << (8 - 2 * l)) & 0x300;
        let idx = u16::from(self.qs[4 * ib + l]) | hi;
        let g = IQ2S_GRID[usize::from(idx)].to_le_bytes();
        (g, self.qs[QK_K / 8 + 4 * ib + l])
    }
    fn scales(&self, ib: usize) -> (u8, u8) {
        (self.scales[ib] & 0xf, self.scales[ib] >> 4)
    }
    fn db(d: f32, s: u8) -> f32 {
        d * (0.5 + f32::from(s)) * 0.25
    }
    const DOT_SCALE: f32 = 0.125;
}

/// Eight bytes from two u32 grid entries.
fn join(a: u32, b: u32) -> [u8; 8] {
    let (a, b) = (a.to_le_bytes(), b.to_le_bytes());
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]
}

/// The sign-and-scale word of IQ3_XXS block `ib`.
fn iq3xxs_word(b: &BlockIQ3XXS, ib: usize) -> u32 {
    let o = QK_K / 4 + 4 * ib;
    u32::from_le_bytes([b.qs[o], b.qs[o + 1], b.qs[o + 2], b.qs[o + 3]])
}

impl SignedGrid for BlockIQ3XXS {
    fn d(&self) -> f32 {
        self.d.to_f32()
    }
    fn group(&self, ib: usize, l: usize) -> ([u8; 8], u8) {
        let q = &self.qs[8 * ib + 2 * l..];
        let g = join(
            IQ3XXS_GRID[usize::from(q[0])],
            IQ3XXS_GRID[usize::from(q[1])],
        );
        let w = iq3xxs_word(self, ib);
        (g, KSIGNS_IQ2XS[((w >> (7 * l)) & 127) as usize])
    }
    fn scales(&self, ib: usize) -> (u8, u8) {
        let s = (iq3xxs_word(self, ib) >> 28) as u8;
        (s, s)
    }
    fn db(d: f32, s: u8) -> f32 {
        d * (0.5 + f32::from(s)) * 0.5
    }
    const DOT_SCALE: f32 = 0.25;
}

impl SignedGrid for BlockIQ3S {
    fn d(&self) -> f32 {
        self.d.to_f32()
    }
    fn group(&self, ib: usize, l: usize) -> ([u8; 8], u8) {
        let q = &self.qs[8 * ib + 2 * l..];
        let h = u16::from(self.qh[ib]);
        let i1 = u16::from(q[0]) | ((h << (8 - 2 * l)) & 256);
        let i2 = u16::from(q[1]) | ((h << (7 - 2 * l)) & 256);
        let g = join(IQ3S_GRID[usize::from(i1)], IQ3S_GRID[usize::from(i2)]);
        (g, self.signs[4 * ib + l])
    }
    fn scales(&self, ib: usize) -> (u8, u8) {
        let s = (self.scales[ib / 2] >> (4 * (ib % 2))) & 0xf;
        (s, s)
    }
    fn db(d: f32, s: u8) -> f32 {
        d * (1 + 2 * i32::from(s)) as f32
    }
    const DOT_SCALE: f32 = 1.0;
}

/// ggml's `dequantize_row_iq2_xxs` / `_iq2_xs` / `_iq2_s` / `_iq3_xxs` /
/// `_iq3_s`.
pub(crate) fn dequantize_signed<B: SignedGrid>(x: &[B], y: &mut [f32]) {
    check_len(x.len(), QK_K, y.len());
    for (xb, ys) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = xb.d();
        for (ib, yb) in ys.chunks_exact_mut(32).enumerate() {
            let (s1, s2) = xb.scales(ib);
            let db = [B::db(d, s1), B::db(d, s2)];
            for (l, yg) in yb.chunks_exact_mut(8).enumerate() {
                let (g, signs) = xb.group(ib, l);
                for (j, y) in yg.iter_mut().enumerate() {
                    let sign = if signs & (1 << j) != 0 { -1.0 } else { 1.0 };
                    *y = db[l / 2] * f32::from(g[j]) * sign;
                }
            }
        }
    }
}

/// `Σ g·a` with signs over one group of 8.
fn group_dot(g: &[u8; 8], signs: u8, a: &[i8]) -> i32 {
    let mut sum = 0;
    for j in 0..8 {
        let p = i32::from(g[j]) * i32::from(a[j]);
        sum += if signs & (1 << j) != 0 { -p } else { p };
    }
    sum
}

/// ggml's `ggml_vec_dot_*_q8_K_generic` for the signed-grid types.
pub(crate) fn vec_dot_signed<B: SignedGrid>(x: &[B], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sumf = 0f32;
    for (xb, yb) in x.iter().zip(y) {
        let d = xb.d() * yb.d;
        let mut bsum = 0i32;
        for ib in 0..QK_K / 32 {
            let (s1, s2) = xb.scales(ib);
            let mut sums = [0i32; 2];
            for l in 0..4 {
                let (g, signs) = xb.group(ib, l);
                let a = &yb.qs[32 * ib + 8 * l..32 * ib + 8 * l + 8];
                sums[l / 2] += group_dot(&g, signs, a);
            }
            bsum += sums[0] * (2 * i32::from(s1) + 1) + sums[1] * (2 * i32::from(s2) + 1);
        }
        sumf += d * bsum as f32;
    }
    B::DOT_SCALE * sumf
}

/// ggml's `IQ1S_DELTA` (and `IQ1M_DELTA`).
pub(crate) const IQ1_DELTA: f32 = 0.125;

/// The IQ1_S grid entry `idx` as signed values.
pub(crate) fn iq1_grid(idx: usize) -> [i8; 8] {
    IQ1S_GRID[idx].to_le_bytes().map(|b| b as i8)
}

/// IQ1_S block `ib`: the four grid indices, the scale `2s + 1`, and whether
/// the shift is negative.
pub(crate) fn iq1s_block(b: &BlockIQ1S, ib: usize) -> ([usize; 4], i32, bool) {
    let qh = b.qh[ib];
    let idx = core::array::from_fn(|l| {
        usize::from(b.qs[4 * ib + l]) | (usize::from((qh >> (3 * l)) & 7) << 8)
    });
    (idx, 2 * i32::from((qh >> 12) & 7) + 1, qh & 0x8000 != 0)
}

/// ggml's `dequantize_row_iq1_s`.
pub fn dequantize_row_iq1_s(x: &[BlockIQ1S], y: &mut [f32]) {
    check_len(x.len(), QK_K, y.len());
    for (xb, ys) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = xb.d.to_f32();
        for (ib, yb) in ys.chunks_exact_mut(32).enumerate() {
            let (idx, ls, neg) = iq1s_block(xb, ib);
            let dl = d * ls as f32;
            let delta = if neg { -IQ1_DELTA } else { IQ1_DELTA };
            for (yg, &i) in yb.chunks_exact_mut(8).zip(&idx) {
                for (y, g) in yg.iter_mut().zip(iq1_grid(i)) {
                    *y = dl * (f32::from(g) + delta);
                }
            }
        }
    }
}

/// ggml's `ggml_vec_dot_iq1_s_q8_K_generic`.
pub fn vec_dot_iq1_s_q8_k(x: &[BlockIQ1S], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sumf = 0f32;
    for (xb, yb) in x.iter().zip(y) {
        let (mut sumi, mut sumi1) = (0i32, 0i32);
        for ib in 0..QK_K / 32 {
            let (idx, ls, neg) = iq1s_block(xb, ib);
            let mut lsum = 0i32;
            for (l, &i) in idx.iter().enumerate() {
                let a = &yb.qs[32 * ib + 8 * l..];
                for (g, &q) in iq1_grid(i).iter().zip(a) {
                    lsum += i32::from(*g) * i32::from(q);
                }
            }
            sumi += ls * lsum;
            let bs = i32::from(yb.bsums[2 * ib]) + i32::from(yb.bsums[2 * ib + 1]);
            sumi1 += ls * if neg { -bs } else { bs };
        }
        sumf += xb.d.to_f32() * yb.d * (sumi as f32 + IQ1_DELTA * sumi1 as f32);
    }
    sumf
}

/// The four little-endian u16 of an IQ1_M block's `scales`.
fn iq1m_sc(b: &BlockIQ1M) -> [u16; 4] {
    core::array::from_fn(|i| u16::from_le_bytes([b.scales[2 * i], b.scales[2 * i + 1]]))
}

/// The f16 super-block scale of an IQ1_M block, as f32.
pub(crate) fn iq1m_d(b: &BlockIQ1M) -> f32 {
    let sc = iq1m_sc(b);
    let u = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000);
    half::f16::from_bits(u).to_f32()
}

/// IQ1_M block `ib`: the four grid indices, their shift signs (negative
/// when set) and the scales `2s + 1` of the two halves.
pub(crate) fn iq1m_block(b: &BlockIQ1M, ib: usize) -> ([usize; 4], [bool; 4], [i32; 2]) {
    let sc = iq1m_sc(b);
    let qh = [u16::from(b.qh[2 * ib]), u16::from(b.qh[2 * ib + 1])];
    let idx = core::array::from_fn(|l| {
        let shift = if l % 2 == 0 { 8 } else { 4 };
        usize::from(u16::from(b.qs[4 * ib + l]) | ((qh[l / 2] << shift) & 0x700))
    });
    let neg = core::array::from_fn(|l| qh[l / 2] & if l % 2 == 0 { 0x08 } else { 0x80 } != 0);
    let s = sc[ib / 2] >> (6 * (ib % 2));
    let ls = [2 * i32::from(s & 7) + 1, 2 * i32::from((s >> 3) & 7) + 1];
    (idx, neg, ls)
}

/// ggml's `dequantize_row_iq1_m`.
pub fn dequantize_row_iq1_m(x: &[BlockIQ1M], y: &mut [f32]) {
    check_len(x.len(), QK_K, y.len());
    for (xb, ys) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = iq1m_d(xb);
        for (ib, yb) in ys.chunks_exact_mut(32).enumerate() {
            let (idx, neg, ls) = iq1m_block(xb, ib);
            let dl = [d * ls[0] as f32, d * ls[1] as f32];
            for (l, yg) in yb.chunks_exact_mut(8).enumerate() {
                let delta = if neg[l] { -IQ1_DELTA } else { IQ1_DELTA };
                for (y, g) in yg.iter_mut().zip(iq1_grid(idx[l])) {
                    *y = dl[l / 2] * (f32::from(g) + delta);
                }
            }
        }
    }
}

/// ggml's `ggml_vec_dot_iq1_m_q8_K_generic`.
pub fn vec_dot_iq1_m_q8_k(x: &[BlockIQ1M], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sumf = 0f32;
    for (xb, yb) in x.iter().zip(y) {
        let (mut sumi1, mut sumi2) = (0i32, 0i32);
        for ib in 0..QK_K / 32 {
            let (idx, neg, ls) = iq1m_block(xb, ib);
            let (mut sum1, mut sum2) = ([0i32; 2], [0i32; 2]);
            for l in 0..4 {
                let a = &yb.qs[32 * ib + 8 * l..32 * ib + 8 * l + 8];
                let (mut lsum1, mut lsum2) = (0i32, 0i32);
                for (g, &q) in iq1_grid(idx[l]).iter().zip(a) {
                    lsum1 += i32::from(q) * i32::from(*g);
                    lsum2 += i32::from(q);
                }
                sum1[l / 2] += lsum1;
                sum2[l / 2] += if neg[l] { -lsum2 } else { lsum2 };
            }
            sumi1 += sum1[0] * ls[0] + sum1[1] * ls[1];
            sumi2 += sum2[0] * ls[0] + sum2[1] * ls[1];
        }
        sumf += iq1m_d(xb) * yb.d * (sumi1 as f32 + IQ1_DELTA * sumi2 as f32);
    }
    sumf
}

macro_rules! signed_entry_points {
    ($($b:ty: $dq:ident, $dot:ident;)*) => {$(
        #[doc = concat!("ggml's `", stringify!($dq), "`.")]
        pub fn $dq(x: &[$b], y: &mut [f32]) {
            dequantize_signed(x, y)
        }
        #[doc = concat!("ggml's `", stringify!($dot), "` (generic).")]
        pub fn $dot(x: &[$b], y: &[BlockQ8K]) -> f32 {
            vec_dot_signed(x, y)
        }
    )*};
}

signed_entry_points! {
    BlockIQ2XXS: dequantize_row_iq2_xxs, vec_dot_iq2_xxs_q8_k;
    BlockIQ2XS: dequantize_row_iq2_xs, vec_dot_iq2_xs_q8_k;
    BlockIQ2S: dequantize_row_iq2_s, vec_dot_iq2_s_q8_k;
    BlockIQ3XXS: dequantize_row_iq3_xxs, vec_dot_iq3_xxs_q8_k;
    BlockIQ3S: dequantize_row_iq3_s, vec_dot_iq3_s_q8_k;
}
