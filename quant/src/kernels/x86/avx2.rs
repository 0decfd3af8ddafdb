//! AVX2 + FMA + F16C: the shared 256-bit dot products (with `vpmaddubsw` /
//! `vpmaddwd` as the 8-bit product), the activation quantizers and the F16
//! kernels. The higher x86 levels reuse the quantizers and F16 kernels.

use crate::formats::check_len;
use half::{bf16, f16};

/// The 8-bit products without VNNI: `vpmaddubsw` multiplies u8 × i8 and adds
/// adjacent pairs into i16 (saturating, which our operand ranges never reach),
/// `vpmaddwd` by ones widens adjacent i16 pairs into i32.
mod prims {
    use core::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn dot_u8i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        let p = _mm256_maddubs_epi16(u, s);
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn dot_i16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
    }

    /// `Σ (u − off)·s`: the two pair sums (≤ 2·31·128 each) are subtracted in
    /// i16 before the single widening `vpmaddwd`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn dot_off(u: __m256i, s: __m256i, off: i8) -> __m256i {
        let p = _mm256_maddubs_epi16(u, s);
        let o = _mm256_maddubs_epi16(_mm256_set1_epi8(off), s);
        _mm256_madd_epi16(_mm256_sub_epi16(p, o), _mm256_set1_epi16(1))
    }
}

kernels_256!("avx2,fma,f16c");

/// The one-row kernels (`gemv.rs`).
pub(super) mod gemv {
    use super::prims;
    gemv_256!("avx2,fma,f16c", false);
}

/// The register-blocked GEMM kernels (`gemm.rs`).
pub(super) mod gemm {
    use super::prims;
    gemm_256!("avx2,fma,f16c", false, avx2);
}

/// Eight f32 of a block quantized to Q8 (`round(x / d)` in i32 lanes) with
/// `d = amax / 127`, computed exactly as `formats::legacy::quantize_row_q8_0`
/// does (same amax, same `1 / d`, same rounding).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_block(xb: &[f32; 32]) -> (f32, [__m256i; 4]) {
    let v = xb.as_chunks::<8>().0;
    let v = [ld_ps(&v[0]), ld_ps(&v[1]), ld_ps(&v[2]), ld_ps(&v[3])];
    let mut m = _mm256_setzero_ps();
    for vi in v {
        m = max_abs(vi, m);
    }
    let d = hmax_ps(m) / 127.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    (
        d,
        v.map(|vi| _mm256_cvtps_epi32(round_away(_mm256_mul_ps(vi, id)))),
    )
}

/// f32 → Q8_0 (the activations of Q4_0, Q5_0 and Q8_0).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    check_len(y.len(), QK, x.len());
    for (xb, yb) in x.as_chunks::<QK>().0.iter().zip(y) {
        let (d, [q0, q1, q2, q3]) = q8_block(xb);
        yb.d = f32_to_f16(d);
        st256(&mut yb.qs, pack_i32x32_to_i8(q0, q1, q2, q3));
    }
}

/// f32 → Q8_1 (the activations of Q4_1 and Q5_1), `s = d · Σq`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    check_len(y.len(), QK, x.len());
    for (xb, yb) in x.as_chunks::<QK>().0.iter().zip(y) {
        let (d, [q0, q1, q2, q3]) = q8_block(xb);
        // The quants are in i8 range (|x·id| ≤ 127 up to rounding), so the
        // sum of the unpacked lanes is the sum of the stored bytes.
        let sum = hsum_epi32(_mm256_add_epi32(
            _mm256_add_epi32(q0, q1),
            _mm256_add_epi32(q2, q3),
        ));
        yb.d = f32_to_f16(d);
        yb.s = f32_to_f16(sum as f32 * d);
        st256(&mut yb.qs, pack_i32x32_to_i8(q0, q1, q2, q3));
    }
}

/// f32 → Q8_K (the activations of the K-quants), as
/// `formats::k_quants::quantize_row_q8_k`: `iscale = −127 / max` with `max` the
/// first value of largest magnitude, `q = min(127, nearest_int(iscale·x))`,
/// `d = 1 / iscale`, and the sums of every 16 quants.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    check_len(y.len(), QK_K, x.len());
    for (xb, yb) in x.as_chunks::<QK_K>().0.iter().zip(y) {
        let v = xb.as_chunks::<8>().0;
        let mut m = _mm256_setzero_ps();
        for vi in v {
            m = max_abs(ld_ps(vi), m);
        }
        let amax = hmax_ps(m);
        if amax == 0.0 {
            yb.d = 0.0;
            yb.qs = [0; QK_K];
            yb.bsums = [0; QK_K / 16];
            continue;
        }
        // The scalar loop keeps the first element reaching amax; its sign
        // decides the sign of d.
        let am = _mm256_set1_ps(amax);
        let mut max = amax;
        for vi in v {
            let a = _mm256_andnot_ps(_mm256_set1_ps(-0.0), ld_ps(vi));
            let hit = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(a, am));
            if hit != 0 {
                max = vi[hit.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let mul = _mm256_set1_ps(iscale);
        // |iscale·x| ≤ 127 (up to rounding), so `vcvtps2dq` (round to nearest
        // even under the default MXCSR, as `nearest_int`) never leaves
        // [−127, 127] and the `min(127)` of the scalar code is a no-op.
        let q: [__m256i; 32] =
            core::array::from_fn(|i| _mm256_cvtps_epi32(_mm256_mul_ps(ld_ps(&v[i]), mul)));
        for (g, out) in yb.qs.as_chunks_mut::<32>().0.iter_mut().enumerate() {
            st256(
                out,
                pack_i32x32_to_i8(q[4 * g], q[4 * g + 1], q[4 * g + 2], q[4 * g + 3]),
            );
        }
        // Group g (16 quants) is q[2g] + q[2g+1]; three rounds of `hadd`
        // reduce four groups to one lane each (per 128-bit half).
        let sums4 = |g: usize| {
            let s = |k: usize| _mm256_add_epi32(q[2 * (g + k)], q[2 * (g + k) + 1]);
            let t = _mm256_hadd_epi32(_mm256_hadd_epi32(s(0), s(1)), _mm256_hadd_epi32(s(2), s(3)));
            _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256::<1>(t))
        };
        let (b0, b1) = (
            _mm_packs_epi32(sums4(0), sums4(4)),
            _mm_packs_epi32(sums4(8), sums4(12)),
        );
        let bs = yb.bsums.as_chunks_mut::<8>().0;
        st128(&mut bs[0], b0);
        st128(&mut bs[1], b1);
        yb.d = 1.0 / iscale;
    }
}

/// F16 · F16, accumulated in f32 with four 8-lane accumulators.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_f16(x: &[f16], y: &[f16]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: length mismatch");
    let cvt = |h: &[f16; 8]| _mm256_cvtph_ps(ld128(h));
    let (x32, xr) = x.as_chunks::<32>();
    let (y32, yr) = y.as_chunks::<32>();
    let mut acc = [_mm256_setzero_ps(); 4];
    for (a, b) in x32.iter().zip(y32) {
        let (a, b) = (a.as_chunks::<8>().0, b.as_chunks::<8>().0);
        for k in 0..4 {
            acc[k] = _mm256_fmadd_ps(cvt(&a[k]), cvt(&b[k]), acc[k]);
        }
    }
    let (x8, xr) = xr.as_chunks::<8>();
    let (y8, yr) = yr.as_chunks::<8>();
    for (k, (a, b)) in x8.iter().zip(y8).enumerate() {
        acc[k] = _mm256_fmadd_ps(cvt(a), cvt(b), acc[k]);
    }
    let acc = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut sum = hsum_ps(acc);
    for (&a, &b) in xr.iter().zip(yr) {
        sum += f16_to_f32(a) * f16_to_f32(b);
    }
    sum
}

/// f32 → F16, rounding to nearest even.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_f16(x: &[f32], y: &mut [f16]) {
    assert_eq!(x.len(), y.len(), "row length mismatch");
    let (x8, xr) = x.as_chunks::<8>();
    let (y8, yr) = y.as_chunks_mut::<8>();
    for (a, b) in x8.iter().zip(y8) {
        st128(b, _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(ld_ps(a)));
    }
    for (&a, b) in xr.iter().zip(yr) {
        *b = f32_to_f16(a);
    }
}

/// F16 → f32 (exact).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize_row_f16(x: &[f16], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "row length mismatch");
    let (x8, xr) = x.as_chunks::<8>();
    let (y8, yr) = y.as_chunks_mut::<8>();
    for (a, b) in x8.iter().zip(y8) {
        st_ps(b, _mm256_cvtph_ps(ld128(a)));
    }
    for (&a, b) in xr.iter().zip(yr) {
        *b = f16_to_f32(a);
    }
}

/// F32 · F32 with four 8-lane FMA accumulators (the scalar reference sums in
/// f64; f32 lanes of a few hundred products each stay well within its
/// tolerance).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_f32(x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: length mismatch");
    dot_lanes(x, y, |a: &[f32; 8]| ld_ps(a))
}

/// BF16 → eight f32 (a bf16 is the top half of an f32).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bf16x8(h: &[bf16; 8]) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(ld128(h))))
}

/// BF16 · BF16, accumulated in f32.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_bf16(x: &[bf16], y: &[bf16]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: length mismatch");
    dot_lanes(x, y, |h: &[bf16; 8]| bf16x8(h))
}

/// `Σ x·y` over rows of any element type that `cvt` turns into f32 eight at
/// a time: four accumulators over 32 elements, then 8 at a time, then the
/// scalar rest through `cvt` of a zero-padded chunk.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_lanes<E: Copy + Default>(x: &[E], y: &[E], cvt: impl Fn(&[E; 8]) -> __m256) -> f32 {
    let (x32, xr) = x.as_chunks::<32>();
    let (y32, yr) = y.as_chunks::<32>();
    let mut acc = [_mm256_setzero_ps(); 4];
    for (a, b) in x32.iter().zip(y32) {
        let (a, b) = (a.as_chunks::<8>().0, b.as_chunks::<8>().0);
        for k in 0..4 {
            acc[k] = _mm256_fmadd_ps(cvt(&a[k]), cvt(&b[k]), acc[k]);
        }
    }
    let (x8, xr) = xr.as_chunks::<8>();
    let (y8, yr) = yr.as_chunks::<8>();
    for (k, (a, b)) in x8.iter().zip(y8).enumerate() {
        acc[k] = _mm256_fmadd_ps(cvt(a), cvt(b), acc[k]);
    }
    if !xr.is_empty() {
        let (mut a, mut b) = ([E::default(); 8], [E::default(); 8]);
        a[..xr.len()].copy_from_slice(xr);
        b[..yr.len()].copy_from_slice(yr);
        acc[3] = _mm256_fmadd_ps(cvt(&a), cvt(&b), acc[3]);
    }
    hsum_ps(_mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(acc[2], acc[3]),
    ))
}

/// BF16 → f32 (exact).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize_row_bf16(x: &[bf16], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "row length mismatch");
    let (x8, xr) = x.as_chunks::<8>();
    let (y8, yr) = y.as_chunks_mut::<8>();
    for (a, b) in x8.iter().zip(y8) {
        st_ps(b, bf16x8(a));
    }
    for (&a, b) in xr.iter().zip(yr) {
        *b = f32::from_bits(u32::from(a.to_bits()) << 16);
    }
}

/// f32 → BF16 as `half::bf16::from_f32`: round to nearest even on the top 16
/// bits (`(x + 0x7fff + lsb) >> 16`, which also carries into infinity), and
/// NaNs keep their top bits with the quiet bit set.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_bf16(x: &[f32], y: &mut [bf16]) {
    assert_eq!(x.len(), y.len(), "row length mismatch");
    let round = |v: __m256| {
        let b = _mm256_castps_si256(v);
        let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(1));
        let r = _mm256_add_epi32(b, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb));
        let nan = _mm256_or_si256(b, _mm256_set1_epi32(0x0040_0000));
        let is_nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
        _mm256_srli_epi32::<16>(_mm256_blendv_epi8(r, nan, is_nan))
    };
    let (x16, xr) = x.as_chunks::<16>();
    let (y16, yr) = y.as_chunks_mut::<16>();
    for (a, b) in x16.iter().zip(y16) {
        let a = a.as_chunks::<8>().0;
        let (lo, hi) = (round(ld_ps(&a[0])), round(ld_ps(&a[1])));
        // `packus` works per 128-bit lane: restore the element order.
        let p = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(lo, hi));
        st256(b, p);
    }
    for (&a, b) in xr.iter().zip(yr) {
        *b = bf16::from_f32(a);
    }
}
