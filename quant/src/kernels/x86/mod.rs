//! x86-64 kernels: AVX2 (+FMA, F16C), AVX-VNNI, AVX-512 (F/BW/VL/DQ) and
//! AVX-512 VNNI. Each level starts from the one below and replaces the entries
//! it speeds up.

// The crate's MSRV (1.85) is set for the aarch64 cross toolchain; this module is
// only compiled for x86-64 by the host toolchain, which has the AVX-512
// intrinsics (stable since 1.89).
#![allow(clippy::incompatible_msrv)]

use super::{Isa, Kernels, scalar};

pub(super) fn supported(isa: Isa) -> bool {
    macro_rules! has {
        ($($f:tt),*) => {{
            #[cfg(feature = "std")]
            { true $(&& std::arch::is_x86_feature_detected!($f))* }
            #[cfg(not(feature = "std"))]
            { true $(&& cfg!(target_feature = $f))* }
        }};
    }
    let avx2 = has!("avx2", "fma", "f16c");
    match isa {
        Isa::Avx2 => avx2,
        Isa::AvxVnni => avx2 && has!("avxvnni"),
        Isa::Avx512 => avx2 && has!("avx512f", "avx512bw", "avx512vl", "avx512dq"),
        Isa::Avx512Vnni => {
            avx2 && has!("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vnni")
        }
        _ => false,
    }
}

const AVX2_TABLE: Kernels = scalar::TABLE.derive(Isa::Avx2);
const AVX_VNNI_TABLE: Kernels = AVX2_TABLE.derive(Isa::AvxVnni);
const AVX512_TABLE: Kernels = AVX2_TABLE.derive(Isa::Avx512);
const AVX512_VNNI_TABLE: Kernels = AVX512_TABLE.derive(Isa::Avx512Vnni);

static AVX2: Kernels = AVX2_TABLE;
static AVX_VNNI: Kernels = AVX_VNNI_TABLE;
static AVX512: Kernels = AVX512_TABLE;
static AVX512_VNNI: Kernels = AVX512_VNNI_TABLE;

/// The table for an x86 ISA; the caller has checked `supported(isa)`.
pub(super) fn table(isa: Isa) -> &'static Kernels {
    match isa {
        Isa::AvxVnni => &AVX_VNNI,
        Isa::Avx512 => &AVX512,
        Isa::Avx512Vnni => &AVX512_VNNI,
        _ => &AVX2,
    }
}
