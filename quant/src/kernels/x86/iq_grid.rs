//! AVX2 `vec_dot` of the grid i-quants (IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS,
//! IQ2_S, IQ1_S, IQ1_M) with Q8_K; every x86 level inherits them.
//!
//! Each block of 32 is decoded to bytes (four grid entries and their sign
//! bytes, looked up as in the scalar code), and the products go through
//! `vpmaddubsw`: the grid magnitudes (at most 62) as the unsigned operand,
//! the activations with the weight signs applied by `vpsignb` as the
//! signed one (IQ1's −1/0/+1 values through the sign trick), so pairs stay
//! far below i16's limit and the 4-bit block scales multiply the pair sums
//! exactly in `vpmaddwd`. The per-super-block integer sums are thus the
//! scalar code's, and the float combination is the scalar code's too: the
//! results are bit-identical to it.

use super::util::{hsum_epi32, ld256};
use crate::blocks::*;
use crate::formats::iq_grid::{IQ1_DELTA, SignedGrid, iq1_grid, iq1m_block, iq1m_d, iq1s_block};
use core::arch::x86_64::*;

/// Per sign byte, 8 bytes of ±1: −1 where the bit is set.
const SIGNS: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut s = 0;
    while s < 256 {
        let mut v = 0u64;
        let mut j = 0;
        while j < 8 {
            let b: u64 = if (s >> j) & 1 == 1 { 0xff } else { 0x01 };
            v |= b << (8 * j);
            j += 1;
        }
        t[s] = v;
        s += 1;
    }
    t
};

/// Four 8-byte values as one register, the first in the low lane.
#[inline]
#[target_feature(enable = "avx2")]
fn set4(v: [u64; 4]) -> __m256i {
    _mm256_set_epi64x(v[3] as i64, v[2] as i64, v[1] as i64, v[0] as i64)
}

/// Two 16-bit scales: the first for elements 0..16, the second for 16..32.
#[inline]
#[target_feature(enable = "avx2")]
fn scales2(a: i32, b: i32) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(b as i16), _mm_set1_epi16(a as i16))
}

/// `Σ_b Σ_{32 values} ls·g·(±a)` of one super-block of a signed grid type.
#[inline]
#[target_feature(enable = "avx2")]
fn signed_superblock<B: SignedGrid>(xb: &B, a: &[[i8; 32]]) -> i32 {
    let mut acc = _mm256_setzero_si256();
    for (ib, a) in a.iter().enumerate() {
        let g: [([u8; 8], u8); 4] = core::array::from_fn(|l| xb.group(ib, l));
        let v = set4(g.map(|(v, _)| u64::from_le_bytes(v)));
        let s = set4(g.map(|(_, s)| SIGNS[usize::from(s)]));
        let (s1, s2) = xb.scales(ib);
        let p = _mm256_maddubs_epi16(v, _mm256_sign_epi8(ld256(a), s));
        let ls = scales2(2 * i32::from(s1) + 1, 2 * i32::from(s2) + 1);
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ls));
    }
    hsum_epi32(acc)
}

macro_rules! signed_dots {
    ($($name:ident: $b:ty;)*) => {$(
        /// # Safety
        /// The CPU must support AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(super) unsafe fn $name(x: &[$b], y: &[BlockQ8K]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            let mut sumf = 0f32;
            for (xb, yb) in x.iter().zip(y) {
                let d = xb.d() * yb.d;
                sumf += d * signed_superblock(xb, yb.qs.as_chunks::<32>().0) as f32;
            }
            <$b as SignedGrid>::DOT_SCALE * sumf
        }
    )*};
}

signed_dots! {
    vec_dot_iq2_xxs_q8_k: BlockIQ2XXS;
    vec_dot_iq2_xs_q8_k: BlockIQ2XS;
    vec_dot_iq2_s_q8_k: BlockIQ2S;
    vec_dot_iq3_xxs_q8_k: BlockIQ3XXS;
    vec_dot_iq3_s_q8_k: BlockIQ3S;
}

/// Four IQ1 grid entries as signed bytes.
#[inline]
#[target_feature(enable = "avx2")]
fn iq1_values(idx: [usize; 4]) -> __m256i {
    set4(idx.map(|i| u64::from_le_bytes(iq1_grid(i).map(|v| v as u8))))
}

/// `Σ g·a` in i16 pairs for signed `g` in −1..=1 (the sign trick).
#[inline]
#[target_feature(enable = "avx2")]
fn signed_pairs(g: __m256i, a: __m256i) -> __m256i {
    _mm256_maddubs_epi16(_mm256_sign_epi8(g, g), _mm256_sign_epi8(a, g))
}

/// IQ1_S · Q8_K.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_iq1_s_q8_k(x: &[BlockIQ1S], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sumf = 0f32;
    for (xb, yb) in x.iter().zip(y) {
        let mut acc = _mm256_setzero_si256();
        let mut sumi1 = 0i32;
        for (ib, a) in yb.qs.as_chunks::<32>().0.iter().enumerate() {
            let (idx, ls, neg) = iq1s_block(xb, ib);
            let p = signed_pairs(iq1_values(idx), ld256(a));
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(ls as i16)));
            let bs = i32::from(yb.bsums[2 * ib]) + i32::from(yb.bsums[2 * ib + 1]);
            sumi1 += ls * if neg { -bs } else { bs };
        }
        let sumi = hsum_epi32(acc);
        sumf += xb.d.to_f32() * yb.d * (sumi as f32 + IQ1_DELTA * sumi1 as f32);
    }
    sumf
}

/// IQ1_M · Q8_K.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_iq1_m_q8_k(x: &[BlockIQ1M], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let ones = _mm256_set1_epi8(1);
    let mut sumf = 0f32;
    for (xb, yb) in x.iter().zip(y) {
        let (mut acc1, mut acc2) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for (ib, a) in yb.qs.as_chunks::<32>().0.iter().enumerate() {
            let (idx, neg, ls) = iq1m_block(xb, ib);
            let a = ld256(a);
            let ls = scales2(ls[0], ls[1]);
            let p1 = signed_pairs(iq1_values(idx), a);
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(p1, ls));
            let delta = set4(neg.map(|n| SIGNS[if n { 0xff } else { 0 }]));
            let p2 = _mm256_maddubs_epi16(ones, _mm256_sign_epi8(a, delta));
            acc2 = _mm256_add_epi32(acc2, _mm256_madd_epi16(p2, ls));
        }
        let (sumi1, sumi2) = (hsum_epi32(acc1), hsum_epi32(acc2));
        sumf += iq1m_d(xb) * yb.d * (sumi1 as f32 + IQ1_DELTA * sumi2 as f32);
    }
    sumf
}
