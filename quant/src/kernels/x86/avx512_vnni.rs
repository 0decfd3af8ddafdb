//! AVX-512 VNNI: the 512-bit kernels with `vpdpbusd` / `vpdpwssd`.

mod prims {
    use core::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn dot_u8i8(acc: __m512i, u: __m512i, s: __m512i) -> __m512i {
        _mm512_dpbusd_epi32(acc, u, s)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn dot_i16(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        _mm512_dpwssd_epi32(acc, a, b)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn dot_off(u: __m512i, s: __m512i, off: i8) -> __m512i {
        let z = _mm512_setzero_si512();
        let p = _mm512_dpbusd_epi32(z, u, s);
        _mm512_sub_epi32(p, _mm512_dpbusd_epi32(z, _mm512_set1_epi8(off), s))
    }

    /// `Σ x·y` as `Σ (x + 128)·y − 128·Σ y` (x + 128 is `x ^ 0x80` read as
    /// u8): exact for every byte value, −128 included.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) fn dot_i8i8(x: __m512i, y: __m512i) -> __m512i {
        let z = _mm512_setzero_si512();
        let bias = _mm512_set1_epi8(-128);
        let p = _mm512_dpbusd_epi32(z, _mm512_xor_si512(x, bias), y);
        _mm512_sub_epi32(p, _mm512_dpbusd_epi32(z, bias, y))
    }
}

kernels_512!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni");

/// The one-row kernels (`gemv.rs`).
pub(super) mod gemv {
    use super::prims;
    gemv_512!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni");
}

/// The register-blocked GEMM kernels (`gemm.rs`).
pub(super) mod gemm {
    use super::prims;
    gemm_512!(
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni",
        true,
        avx512
    );
}
