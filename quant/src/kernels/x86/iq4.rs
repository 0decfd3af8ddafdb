//! IQ4_NL · Q8_0 and IQ4_XS · Q8_K with AVX2 (every x86 level inherits
//! them). A block's 4-bit indices become its signed values through one
//! `vpshufb` of ggml's 16-entry table, and the i8 × i8 products go through
//! the sign trick `|w| · (a·sign w)` into `vpmaddubsw` (pairs ≤ 2·127·127,
//! below i16's limit), so every block's integer sum is exact; only the f32
//! accumulation order differs from the scalar code.

use super::util::{f16_to_f32, hsum_ps, ld128, ld256, nibbles};
use crate::blocks::{BlockIQ4NL, BlockIQ4XS, BlockQ8_0, BlockQ8K};
use crate::formats::iquants::{KVALUES_IQ4NL, xs_scale};
use core::arch::x86_64::*;

/// The table in both 128-bit lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn table() -> __m256i {
    let t = ld128(&KVALUES_IQ4NL);
    _mm256_set_m128i(t, t)
}

/// The 32 values of a block's 16 packed bytes, in element order.
#[inline]
#[target_feature(enable = "avx2")]
fn values(table: __m256i, qs: &[u8; 16]) -> __m256i {
    _mm256_shuffle_epi8(table, nibbles(qs))
}

/// `Σ w·a` in pairs as i16 lanes (sign trick; exact for `|w|, |a| ≤ 127`).
#[inline]
#[target_feature(enable = "avx2")]
fn pair_products(w: __m256i, a: __m256i) -> __m256i {
    _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w))
}

/// IQ4_NL · Q8_0.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_iq4_nl_q8_0(x: &[BlockIQ4NL], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let (t, ones) = (table(), _mm256_set1_epi16(1));
    let mut acc = _mm256_setzero_ps();
    for (xb, yb) in x.iter().zip(y) {
        let p = pair_products(values(t, &xb.qs), ld256(&yb.qs));
        let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
        let d = _mm256_set1_ps(f16_to_f32(xb.d) * f16_to_f32(yb.d));
        acc = _mm256_fmadd_ps(d, s, acc);
    }
    hsum_ps(acc)
}

/// IQ4_XS · Q8_K: per super-block, `Σ_b (ls_b − 32)·Σ w·a` exact in i32
/// (the block scale multiplies the i16 pair sums in one `vpmaddwd`), then
/// scaled by `d_x·d_y`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_iq4_xs_q8_k(x: &[BlockIQ4XS], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let t = table();
    let mut acc = _mm256_setzero_ps();
    for (xb, yb) in x.iter().zip(y) {
        let qs = xb.qs.as_chunks::<16>().0;
        let a = yb.qs.as_chunks::<32>().0;
        let mut sumi = _mm256_setzero_si256();
        for (ib, (q, a)) in qs.iter().zip(a).enumerate() {
            let ls = xs_scale(xb, ib) as i16;
            let p = pair_products(values(t, q), ld256(a));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, _mm256_set1_epi16(ls)));
        }
        let d = _mm256_set1_ps(f16_to_f32(xb.d) * yb.d);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_ps(acc)
}
