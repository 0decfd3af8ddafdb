//! Small helpers shared by the x86 kernels: typed loads and stores (the only
//! places that touch raw pointers), f16 conversions through F16C, horizontal
//! sums, and the rounding the activation quantizers need.
//!
//! Everything here is a safe `#[target_feature]` function marked `#[inline]`:
//! LLVM inlines it into any caller whose features include the callee's, which
//! every kernel's do. The pointer operations sit behind references whose size
//! is checked at compile time, so the loads and stores cannot go out of bounds.

use core::arch::x86_64::*;
use core::mem::size_of;
use half::f16;

/// Unaligned 16-byte load of any 16-byte value (e.g. `[u8; 16]`).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn ld128<T: Copy>(p: &T) -> __m128i {
    const { assert!(size_of::<T>() == 16) };
    // SAFETY: `p` refers to 16 readable bytes; `loadu` has no alignment need.
    unsafe { _mm_loadu_si128((p as *const T).cast()) }
}

/// Unaligned 32-byte load of any 32-byte value (e.g. `[i8; 32]`).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn ld256<T: Copy>(p: &T) -> __m256i {
    const { assert!(size_of::<T>() == 32) };
    // SAFETY: `p` refers to 32 readable bytes; `loadu` has no alignment need.
    unsafe { _mm256_loadu_si256((p as *const T).cast()) }
}

/// Unaligned load of eight `f32`.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn ld_ps(p: &[f32; 8]) -> __m256 {
    // SAFETY: `p` refers to 8 readable f32; `loadu` has no alignment need.
    unsafe { _mm256_loadu_ps(p.as_ptr()) }
}

/// The first 16 bytes of a block.
#[inline]
pub(super) fn head16<T: bytemuck::Pod>(b: &T) -> &[u8; 16] {
    bytemuck::bytes_of(b)[..16].try_into().unwrap()
}

/// Unaligned store of 16 bytes into any 16-byte value.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn st128<T: bytemuck::Pod>(p: &mut T, v: __m128i) {
    const { assert!(size_of::<T>() == 16) };
    // SAFETY: `p` refers to 16 writable bytes of a plain-old-data type (any
    // bit pattern is valid); `storeu` has no alignment need.
    unsafe { _mm_storeu_si128((p as *mut T).cast(), v) }
}

/// Unaligned store of 32 bytes into any 32-byte value.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn st256<T: bytemuck::Pod>(p: &mut T, v: __m256i) {
    const { assert!(size_of::<T>() == 32) };
    // SAFETY: `p` refers to 32 writable bytes of a plain-old-data type (any
    // bit pattern is valid); `storeu` has no alignment need.
    unsafe { _mm256_storeu_si256((p as *mut T).cast(), v) }
}

/// Unaligned store of eight `f32`.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn st_ps(p: &mut [f32; 8], v: __m256) {
    // SAFETY: `p` refers to 8 writable f32; `storeu` has no alignment need.
    unsafe { _mm256_storeu_ps(p.as_mut_ptr(), v) }
}

/// `f16 → f32` of one value (exact).
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn f16_to_f32(h: f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h.to_bits()))))
}

/// `f32 → f16` of one value, rounding to nearest even like `f16::from_f32`
/// (F16C quiets NaNs the same way `half` does).
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn f32_to_f16(x: f32) -> f16 {
    let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x));
    f16::from_bits(_mm_extract_epi16::<0>(h) as u16)
}

/// `[a0·b0, a1·b1, a2·b2, a3·b3]` as f32 from eight f16 scales.
///
/// The halves are packed into two u64 with scalar shifts (the integer ALUs
/// are idle in the dot products) and converted by one `vcvtph2ps`; the
/// products of two f16 are exact in f32.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn mul4_f16(a: [f16; 4], b: [f16; 4]) -> __m128 {
    let pack = |h: [f16; 4]| {
        let w = |i: usize| u64::from(h[i].to_bits()) << (16 * i);
        (w(0) | w(1) | w(2) | w(3)) as i64
    };
    let f = _mm256_cvtph_ps(_mm_set_epi64x(pack(b), pack(a)));
    _mm_mul_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps::<1>(f))
}

/// Sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Sum of the four lanes.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hsum_ps128(s: __m128) -> f32 {
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Sum of the eight i32 lanes (wrapping, never reached by our sums).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

/// Sum of the four i32 lanes (wrapping, never reached by our sums).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hsum_epi32_128(s: __m128i) -> i32 {
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

/// `[S_a, S_b, M_a, M_b]`: the exact lane sums of two blocks' i32 vectors
/// (`s`: eight lanes, `m`: four), for `mins_loop!`.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn reduce_pair(sa: __m256i, sb: __m256i, ma: __m128i, mb: __m128i) -> __m128i {
    let t = _mm256_hadd_epi32(sa, sb); // a01 a23 b01 b23 | a45 a67 b45 b67
    let t = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256::<1>(t));
    _mm_hadd_epi32(t, _mm_hadd_epi32(ma, mb))
}

/// `[d_a·y_a, d_b·y_b, −dmin_a·y_a, −dmin_b·y_b]` in f64, exactly (an f16
/// times an f32 fits in 53 bits), for `mins_loop!`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(super) fn pair_coefs(d: [f16; 2], dmin: [f16; 2], yd: [f32; 2]) -> __m256d {
    let w = |h: f16, i: u32| u64::from(h.to_bits()) << (16 * i);
    let h = (w(d[0], 0) | w(d[1], 1) | w(dmin[0], 2) | w(dmin[1], 3)) as i64;
    let h = _mm256_cvtps_pd(_mm_cvtph_ps(_mm_cvtsi64_si128(h)));
    let (a, b) = (f64::from(yd[0]), f64::from(yd[1]));
    _mm256_mul_pd(h, _mm256_setr_pd(a, b, -a, -b))
}

/// Sum of the four f64 lanes.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hsum_pd(v: __m256d) -> f64 {
    let s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd::<1>(v));
    _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)))
}

/// Largest lane of `v` (lanes are never NaN here).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn hmax_ps(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

/// `max(|v|, m)` ignoring NaN lanes of `v` like the scalar `if amax < |v|`
/// loop does: `maxps` returns its second operand when either is NaN.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn max_abs(v: __m256, m: __m256) -> __m256 {
    _mm256_max_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0), v), m)
}

/// C's `roundf` (half away from zero) on each lane, written as the scalar
/// reference computes it: `t = trunc(v); if |v − t| ≥ 0.5 { t ± 1 }`.
/// `v − t` is exact, so the result is bit-identical to the scalar one.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn round_away(v: __m256) -> __m256 {
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
    let sign = _mm256_and_ps(v, _mm256_set1_ps(-0.0));
    let frac = _mm256_andnot_ps(_mm256_set1_ps(-0.0), _mm256_sub_ps(v, t));
    let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
    let step = _mm256_and_ps(up, _mm256_or_ps(_mm256_set1_ps(1.0), sign));
    _mm256_add_ps(t, step)
}

/// Packs four vectors of eight i32 (each in i8 range, or saturated like the
/// scalar `as i8`) into 32 bytes in element order.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn pack_i32x32_to_i8(i0: __m256i, i1: __m256i, i2: __m256i, i3: __m256i) -> __m256i {
    // `packs` works per 128-bit lane, so the bytes come out as dword groups
    // 0 2 4 6 1 3 5 7 (in units of four elements); one permute restores order.
    let a = _mm256_packs_epi32(i0, i1); // 0-3 8-11 | 4-7 12-15
    let b = _mm256_packs_epi32(i2, i3); // 16-19 24-27 | 20-23 28-31
    let p = _mm256_packs_epi16(a, b); // 0-3 8-11 16-19 24-27 | 4-7 12-15 20-23 28-31
    _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// Spreads the 32 bits of `bits` to 32 bytes: byte `i` is 0xFF iff bit `i` is
/// set (ggml's `bytes_from_bits_32`).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn bytes_from_bits(bits: u32) -> __m256i {
    // Byte i of the shuffle result holds source byte i / 8, then OR-ing with a
    // mask that has every bit but bit (i % 8) set leaves 0xFF iff that bit was 1.
    let shuf = _mm256_setr_epi64x(
        0x0000_0000_0000_0000,
        0x0101_0101_0101_0101,
        0x0202_0202_0202_0202,
        0x0303_0303_0303_0303,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// The 32 nibbles of a 32-wide 4-bit block as bytes in element order: low
/// nibbles (elements 0..16) in the low lane, high nibbles (16..32) above.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn nibbles(qs: &[u8; 16]) -> __m256i {
    let v = ld128(qs);
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(v), v);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
}
