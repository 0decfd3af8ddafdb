//! AVX-512 (F/BW/VL/DQ): the 512-bit kernels with `vpmaddubsw` + `vpmaddwd`
//! as the 8-bit product, and the F16 dot product.

use half::f16;

/// The 8-bit products without VNNI (see `avx2::prims`). AVX-512 has no
/// `vpsignb`, so the sign trick of `dot_i8i8` is `vpabsb` plus a masked
/// negation. (The 512-bit `gemv` kernels also use its `dot_i8i8` with VNNI.)
pub(super) mod prims {
    use core::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) fn dot_u8i8(acc: __m512i, u: __m512i, s: __m512i) -> __m512i {
        let p = _mm512_maddubs_epi16(u, s);
        _mm512_add_epi32(acc, _mm512_madd_epi16(p, _mm512_set1_epi16(1)))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) fn dot_i16(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(acc, _mm512_madd_epi16(a, b))
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) fn dot_off(u: __m512i, s: __m512i, off: i8) -> __m512i {
        let p = _mm512_maddubs_epi16(u, s);
        let o = _mm512_maddubs_epi16(_mm512_set1_epi8(off), s);
        _mm512_madd_epi16(_mm512_sub_epi16(p, o), _mm512_set1_epi16(1))
    }

    /// `Σ x·y` as `|x| · (y·sign x)`; exact unless an activation byte is
    /// −128 where the weight is negative (our quantizers never emit −128).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(in super::super) fn dot_i8i8(x: __m512i, y: __m512i) -> __m512i {
        let neg = _mm512_movepi8_mask(x);
        let sy = _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y);
        dot_u8i8(_mm512_setzero_si512(), _mm512_abs_epi8(x), sy)
    }
}

kernels_512!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq");

/// The one-row kernels (`gemv.rs`).
pub(super) mod gemv {
    use super::prims;
    gemv_512!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq");
}

/// The register-blocked GEMM kernels (`gemm.rs`).
pub(super) mod gemm {
    use super::prims;
    gemm_512!(
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq",
        false,
        avx512
    );
}

/// F16 · F16 with 16-lane conversions and four accumulators.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/DQ, AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")]
pub(super) unsafe fn vec_dot_f16(x: &[f16], y: &[f16]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: length mismatch");
    let cvt = |h: &[f16; 16]| _mm512_cvtph_ps(ld256(h));
    let (x64, xr) = x.as_chunks::<64>();
    let (y64, yr) = y.as_chunks::<64>();
    let mut acc = [_mm512_setzero_ps(); 4];
    for (a, b) in x64.iter().zip(y64) {
        let (a, b) = (a.as_chunks::<16>().0, b.as_chunks::<16>().0);
        for k in 0..4 {
            acc[k] = _mm512_fmadd_ps(cvt(&a[k]), cvt(&b[k]), acc[k]);
        }
    }
    let acc = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    // The rest (< 64 elements) eight at a time, then one by one.
    let (x8, xr) = xr.as_chunks::<8>();
    let (y8, yr) = yr.as_chunks::<8>();
    let mut acc8 = _mm256_setzero_ps();
    for (a, b) in x8.iter().zip(y8) {
        acc8 = _mm256_fmadd_ps(_mm256_cvtph_ps(ld128(a)), _mm256_cvtph_ps(ld128(b)), acc8);
    }
    let mut sum = _mm512_reduce_add_ps(acc) + hsum_ps(acc8);
    for (&a, &b) in xr.iter().zip(yr) {
        sum += f16_to_f32(a) * f16_to_f32(b);
    }
    sum
}

/// `Σ x·y` over rows that `cvt` turns into f32 sixteen at a time: four
/// accumulators over 64 elements, then 16 at a time, then a zero-padded
/// chunk for the rest.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")]
fn dot_lanes16<E: Copy + Default>(x: &[E], y: &[E], cvt: impl Fn(&[E; 16]) -> __m512) -> f32 {
    let (x64, xr) = x.as_chunks::<64>();
    let (y64, yr) = y.as_chunks::<64>();
    let mut acc = [_mm512_setzero_ps(); 4];
    for (a, b) in x64.iter().zip(y64) {
        let (a, b) = (a.as_chunks::<16>().0, b.as_chunks::<16>().0);
        for k in 0..4 {
            acc[k] = _mm512_fmadd_ps(cvt(&a[k]), cvt(&b[k]), acc[k]);
        }
    }
    let (x16, xr) = xr.as_chunks::<16>();
    let (y16, yr) = yr.as_chunks::<16>();
    for (k, (a, b)) in x16.iter().zip(y16).enumerate() {
        acc[k] = _mm512_fmadd_ps(cvt(a), cvt(b), acc[k]);
    }
    if !xr.is_empty() {
        let (mut a, mut b) = ([E::default(); 16], [E::default(); 16]);
        a[..xr.len()].copy_from_slice(xr);
        b[..yr.len()].copy_from_slice(yr);
        acc[3] = _mm512_fmadd_ps(cvt(&a), cvt(&b), acc[3]);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(
        _mm512_add_ps(acc[0], acc[1]),
        _mm512_add_ps(acc[2], acc[3]),
    ))
}

/// F32 · F32, 16 lanes.
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/DQ, AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")]
pub(super) unsafe fn vec_dot_f32(x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: length mismatch");
    dot_lanes16(x, y, |a: &[f32; 16]| {
        // SAFETY: `a` refers to 16 readable f32; `loadu` has no alignment need.
        unsafe { _mm512_loadu_ps(a.as_ptr()) }
    })
}

/// BF16 · BF16, 16 lanes (a bf16 is the top half of an f32).
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL/DQ, AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")]
pub(super) unsafe fn vec_dot_bf16(x: &[half::bf16], y: &[half::bf16]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: length mismatch");
    dot_lanes16(x, y, |a: &[half::bf16; 16]| {
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(ld256(a))))
    })
}
