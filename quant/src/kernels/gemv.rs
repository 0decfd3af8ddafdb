//! One activation row times many weight rows (decode, `m = 1`), written
//! once over an instruction-set trait, as the gemm drivers of `gemm.rs`.
//!
//! A gemm's panel repacks weight rows so that one activation element meets
//! many rows per instruction; with a single activation row that repacking is
//! not repaid. The one-row driver instead reads each weight block once in
//! its own byte order: a format unpacks a block into two vectors of sixteen
//! signed bytes in element order ([`RowBlock::unpack`]: nibble masks and
//! shifts, the Q5 fifth bits by a byte shuffle and bit test, a table
//! lookup, or a plain load), which meet the activation
//! block's bytes as they lie in memory (the Q8_0/Q8_1 row is already in
//! element order, so nothing is laid out). Four weight rows go per pass,
//! each into its own integer accumulator ([`SimdRow::dot16`]); once per
//! block one reduction ([`SimdRow::sums4`], pairwise adds) puts the four
//! rows' exact block sums into the four lanes of one vector, and the
//! block's f32 steps are the gemm's: `acc += (Σq·a · d_a) · d_w`, plus
//! `m_w · s_a` for the formats with a min. A lane depends only on its own
//! row (a short last pass repeats the last row and stores only the real
//! ones), so any split of the rows between threads gives the same bits.

use super::gemm::{ActBlock, Repack, Simd};
use crate::blocks::*;

/// The one-row primitives of an instruction set, on top of [`Simd`].
pub(crate) trait SimdRow: Simd {
    /// Sixteen bytes.
    type V: Copy;
    /// One row's partial integer sums.
    type Acc: Copy;

    fn load16(self, x: &[i8; 16]) -> Self::V;
    /// `x & 0x0f` per byte.
    fn lo4(self, x: Self::V) -> Self::V;
    /// `x >> 4` per (unsigned) byte.
    fn hi4(self, x: Self::V) -> Self::V;
    /// `x − c` per byte (wrapping; the callers' values do not wrap).
    fn sub(self, x: Self::V, c: i8) -> Self::V;
    /// `x | y` per byte.
    fn or(self, x: Self::V, y: Self::V) -> Self::V;
    /// The fifth bits of a Q5 block: byte `e` is `0x10` where bit `e` of
    /// `qh` (little-endian) is set, else 0.
    fn fifth(self, qh: [u8; 4]) -> [Self::V; 2];
    /// `table[x]` per byte (`x < 16`).
    fn lookup(self, table: &[i8; 16], x: Self::V) -> Self::V;
    fn azero(self) -> Self::Acc;
    /// `acc + ` the products of `w` and `a`, byte by byte: exact.
    fn dot16(self, acc: Self::Acc, w: Self::V, a: Self::V) -> Self::Acc;
    /// Lane `r`: the total of `acc[r]`, as f32 (exact below 2²⁴).
    fn sums4(self, acc: [Self::Acc; 4]) -> Self::F;
}

/// A 32-wide format's block as the two vectors of signed integers its
/// `vec_dot` sums, element order (the same integers as [`Repack::ints`]).
pub(crate) trait RowBlock: Repack {
    /// By default from [`Repack::ints`] (a scalar unpack).
    #[inline(always)]
    fn unpack<S: SimdRow>(&self, s: S) -> [S::V; 2] {
        let q = self.ints();
        [
            s.load16(q[..16].try_into().unwrap()),
            s.load16(q[16..].try_into().unwrap()),
        ]
    }
}

/// The packed nibbles: low nibbles are elements 0..16, high ones 16..32.
#[inline(always)]
fn nibbles<S: SimdRow>(s: S, qs: &[u8; 16]) -> [S::V; 2] {
    let x = s.load16(bytemuck::cast_ref(qs));
    [s.lo4(x), s.hi4(x)]
}

impl RowBlock for BlockQ4_0 {
    #[inline(always)]
    fn unpack<S: SimdRow>(&self, s: S) -> [S::V; 2] {
        let [lo, hi] = nibbles(s, &self.qs);
        [s.sub(lo, 8), s.sub(hi, 8)]
    }
}

impl RowBlock for BlockQ4_1 {
    #[inline(always)]
    fn unpack<S: SimdRow>(&self, s: S) -> [S::V; 2] {
        nibbles(s, &self.qs)
    }
}

impl RowBlock for BlockQ8_0 {
    #[inline(always)]
    fn unpack<S: SimdRow>(&self, s: S) -> [S::V; 2] {
        [
            s.load16(self.qs[..16].try_into().unwrap()),
            s.load16(self.qs[16..].try_into().unwrap()),
        ]
    }
}

impl RowBlock for BlockIQ4NL {
    #[inline(always)]
    fn unpack<S: SimdRow>(&self, s: S) -> [S::V; 2] {
        let t = &crate::formats::iquants::KVALUES_IQ4NL;
        let [lo, hi] = nibbles(s, &self.qs);
        [s.lookup(t, lo), s.lookup(t, hi)]
    }
}

impl RowBlock for BlockQ5_0 {
    #[inline(always)]
    fn unpack<S: SimdRow>(&self, s: S) -> [S::V; 2] {
        let ([lo, hi], [f0, f1]) = (nibbles(s, &self.qs), s.fifth(self.qh));
        [s.sub(s.or(lo, f0), 16), s.sub(s.or(hi, f1), 16)]
    }
}

impl RowBlock for BlockQ5_1 {
    #[inline(always)]
    fn unpack<S: SimdRow>(&self, s: S) -> [S::V; 2] {
        let ([lo, hi], [f0, f1]) = (nibbles(s, &self.qs), s.fifth(self.qh));
        [s.or(lo, f0), s.or(hi, f1)]
    }
}

/// One-row product of a 32-wide format (see [`super::GemvFn`]): `out[j]`
/// for each of the `n` rows of `w`, four rows per pass over `a`.
#[inline(always)]
pub(crate) fn gemv_legacy<S: SimdRow, W: RowBlock>(
    s: S,
    k: usize,
    w: &[u8],
    a: &[u8],
    out: &mut [f32],
) {
    let nb = k / QK;
    if nb == 0 {
        return;
    }
    let w = bytemuck::cast_slice::<u8, W>(w);
    let a = bytemuck::cast_slice::<u8, W::Act>(&a[..nb * size_of::<W::Act>()]);
    let n = w.len() / nb;
    for j0 in (0..n).step_by(4) {
        let nc = 4.min(n - j0);
        let rows: [&[W]; 4] = core::array::from_fn(|r| {
            let j = j0 + r.min(nc - 1);
            &w[j * nb..(j + 1) * nb]
        });
        let mut acc = s.fzero();
        for (b, ab) in a.iter().enumerate() {
            let x = [
                s.load16(ab.qs()[..16].try_into().unwrap()),
                s.load16(ab.qs()[16..].try_into().unwrap()),
            ];
            let sum: [S::Acc; 4] = core::array::from_fn(|r| {
                let q = rows[r][b].unpack(s);
                s.dot16(s.dot16(s.azero(), q[0], x[0]), q[1], x[1])
            });
            let sum = s.sums4(sum);
            let dw: [f32; 4] = core::array::from_fn(|r| s.f16(rows[r][b].d()));
            let dw = s.load_f(bytemuck::cast_ref(&dw));
            acc = s.fma(acc, s.mul(sum, s.splat(s.f16(ab.d()))), dw);
            if W::HAS_MIN {
                let mw: [f32; 4] = core::array::from_fn(|r| s.f16(rows[r][b].m()));
                let mw = s.load_f(bytemuck::cast_ref(&mw));
                acc = s.fma(acc, mw, s.splat(s.f16(ab.s())));
            }
        }
        let mut t: [f32; 4] = [0.0; 4];
        s.store_f(bytemuck::cast_mut(&mut t), acc);
        out[j0..j0 + nc].copy_from_slice(&t[..nc]);
    }
}
