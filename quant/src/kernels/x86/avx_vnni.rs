//! AVX-VNNI: the 256-bit kernels with VEX `vpdpbusd` (u8 × i8, four products
//! summed into each i32 lane, no intermediate saturation) and `vpdpwssd`
//! (i16 pairs into i32) as the products.

mod prims {
    use core::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) fn dot_u8i8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, u, s)
    }

    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) fn dot_i16(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_dpwssd_avx_epi32(acc, a, b)
    }

    /// `Σ (u − off)·s` as `Σ u·s − Σ off·s`, both exact in i32.
    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    pub(super) fn dot_off(u: __m256i, s: __m256i, off: i8) -> __m256i {
        let z = _mm256_setzero_si256();
        let p = _mm256_dpbusd_avx_epi32(z, u, s);
        _mm256_sub_epi32(p, _mm256_dpbusd_avx_epi32(z, _mm256_set1_epi8(off), s))
    }
}

kernels_256!("avx2,fma,f16c,avxvnni");

/// The one-row kernels (`gemv.rs`).
pub(super) mod gemv {
    use super::prims;
    gemv_256!("avx2,fma,f16c,avxvnni", true);
}

/// The register-blocked GEMM kernels (`gemm.rs`).
pub(super) mod gemm {
    use super::prims;
    gemm_256!("avx2,fma,f16c,avxvnni", true, avx2);
}
