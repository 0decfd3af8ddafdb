//! aarch64 kernels: baseline NEON, NEON with dotprod (`sdot`), and with i8mm
//! (`smmla`). `vdotq_s32`/`vmmlaq_s32` are not stable Rust intrinsics, so those
//! paths use `asm!` inside `#[target_feature]` functions.

use super::{Isa, Kernels, scalar};

pub(super) fn supported(isa: Isa) -> bool {
    macro_rules! has {
        ($($f:tt),*) => {{
            #[cfg(feature = "std")]
            { true $(&& std::arch::is_aarch64_feature_detected!($f))* }
            #[cfg(not(feature = "std"))]
            { true $(&& cfg!(target_feature = $f))* }
        }};
    }
    match isa {
        Isa::Neon => has!("neon"),
        Isa::NeonDotprod => has!("neon", "dotprod"),
        Isa::NeonI8mm => has!("neon", "dotprod", "i8mm"),
        _ => false,
    }
}

const NEON_TABLE: Kernels = scalar::TABLE.derive(Isa::Neon);
const NEON_DOTPROD_TABLE: Kernels = NEON_TABLE.derive(Isa::NeonDotprod);
const NEON_I8MM_TABLE: Kernels = NEON_DOTPROD_TABLE.derive(Isa::NeonI8mm);

static NEON: Kernels = NEON_TABLE;
static NEON_DOTPROD: Kernels = NEON_DOTPROD_TABLE;
static NEON_I8MM: Kernels = NEON_I8MM_TABLE;

/// The table for an aarch64 ISA; the caller has checked `supported(isa)`.
pub(super) fn table(isa: Isa) -> &'static Kernels {
    match isa {
        Isa::NeonDotprod => &NEON_DOTPROD,
        Isa::NeonI8mm => &NEON_I8MM,
        _ => &NEON,
    }
}
