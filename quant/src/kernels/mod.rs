//! Kernel dispatch: one table of function pointers per instruction set,
//! chosen once at run time.
//!
//! ggml keeps a traits table per quant type (`to_float`, `from_float`,
//! `vec_dot`, `vec_dot_type`); ours is the same idea, one [`Kernels`] table per
//! [`Isa`]. A table for an ISA is only handed out by [`Kernels::for_isa`] after
//! run-time detection confirmed the CPU has it, which is what makes the safe
//! wrappers around `#[target_feature]` functions sound. Entries an ISA does not
//! specialise are inherited from the table below it (AVX-512 from AVX2, AVX2
//! from scalar), so every table is complete.
//!
//! The register-blocked gemm drivers (`gemm.rs`) are written once, generic
//! over an ISA trait of vector primitives and per-format repacking traits;
//! aarch64 instantiates them at each NEON level (x86 still has its own
//! macro-generated gemm in `x86/gemm.rs`).
//!
//! Never build with `target-cpu=native` to get speed: an app bundle must run on
//! every phone. `SPINEL_ISA=scalar|avx2|avx-vnni|avx512|avx512-vnni|neon|neon-dotprod|neon-i8mm`
//! pins a path for tests and benchmarks.
//!
//! # The canonical per-block arithmetic
//!
//! Every kernel of a type computes what its scalar twin computes, and a
//! last-bit difference is not harmless: the next product rounds its input
//! (to Q8_0, Q8_1, Q8_K, F16 or BF16), where a last-bit change moves a value
//! across a rounding boundary now and then, and one moved value is a whole
//! 8-bit step. On a random 2-layer Llama 256 wide (`runtime/tests/isa_twins.rs`,
//! 96-token prompt) kernels that differ from the scalar twin only in the
//! rounding of f32 block sums give logits 1e-3 to 8e-3 (relative to the
//! largest) off the scalar ones, for every type whose products round in f32;
//! AVX2 and AVX-512 agree with each other to 1e-7 only because they share
//! most of their order. Rounding in f32 "up to summation order" is
//! therefore not enough. The rule that makes the order invisible:
//!
//! 1. **Exact integers.** A block's integer sums are exact in i32: `S`,
//!    the quants (times their sub-block scales, offsets such as Q4_0's −8
//!    or Q6_K's −32 applied exactly, e.g. through the activation sums) times
//!    the activation quants, and `M`, the mins times the activation sums
//!    (Q2_K, Q4_K, Q5_K: `bsums`).
//! 2. **Exact coefficients, in f64.** `c = f64(d_w)·f64(d_a)` and, with
//!    mins, `c_m = f64(dmin_w)·f64(d_a)` (an f16 or f32 times an f32 fits in
//!    53 bits, so the product is exact; Q4_1/Q5_1 use `f64(m_w)·f64(s_a)`).
//! 3. **The block's value in f64:** `c·S − c_m·M` (fused or not: the
//!    difference is below f64's last bit).
//! 4. **The row's sum in f64**, blocks in any order, **one rounding to f32**
//!    at the end. Float types (F32, F16, BF16): products in f64 (exact),
//!    summed in f64, one rounding.
//!
//! Two kernels following it differ only when the f64 sum lies within a few
//! f64 ulps of an f32 rounding boundary (about one output in 10⁷), so in
//! practice every ISA gives the scalar twin's bits whatever its order.
//! `formats::k_quants::common::block_value` is the scalar form of steps 2-3.
//! Where a kernel needs f32 for speed, it must round exactly where the
//! scalar twin rounds (same products, same order): the grid i-quants do
//! (their x86 kernels are bit-identical to the scalar ones).
//!
//! Who follows it today (the rest is work to do, each listed kernel
//! diverging from its scalar twin by f32 rounding):
//!
//! | kernels                                   | follows the rule            |
//! |-------------------------------------------|-----------------------------|
//! | scalar Q2_K–Q6_K, F32, F16, BF16          | yes                         |
//! | scalar grid i-quants and x86 twins        | same f32 code: equal bits   |
//! | x86 `vec_dot` Q2_K–Q6_K (`mins_loop!`, `sums_loop!`) | yes              |
//! | NEON `vec_dot` Q2_K–Q6_K                  | yes                         |
//! | x86 and NEON `gemm` Q4_K Q5_K Q6_K        | no: f32 `d·sc` per group    |
//! | Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 IQ4_NL IQ4_XS, every ISA and the scalar twin | no: f32 per block |
//! | x86 and NEON F32, F16, BF16 (`vec_dot`, `gemm`) | no: f32 FMA lanes     |
//!
//! The last row matters for every type: attention's `q·k` and `p·v` go
//! through the float kernels, so a quantized model inherits their flips.

#[cfg(target_arch = "aarch64")]
mod aarch64;
/// The NEON FWHT kernel, for [`crate::hadamard`].
#[cfg(target_arch = "aarch64")]
pub(crate) use aarch64::fwht::fwht_neon;
// The generic drivers; only aarch64 instantiates them so far.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
mod gemm;
#[cfg(target_arch = "aarch64")]
mod gemv;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use crate::GgmlType;
use core::fmt;
use core::sync::atomic::{AtomicU8, Ordering};

/// Converts a row of blocks (raw bytes) to f32.
pub type ToFloatFn = fn(&[u8], &mut [f32]);
/// Quantizes (or converts) an f32 row into this type's blocks (raw bytes).
pub type FromFloatFn = fn(&[f32], &mut [u8]);
/// Dot product of a weight row (this type) with an activation row (its
/// `vec_dot_type`), both raw bytes of the same number of elements.
pub type VecDotFn = fn(&[u8], &[u8]) -> f32;

/// A block of dot products: `k` elements per row, `w` holds `n` weight rows
/// (this type), `a` holds `m` activation rows (its `vec_dot_type`), and
/// `out[i * ldo + j] = dot(w_j, a_i)` for activation row `i`, weight row `j`.
/// Register-blocked kernels load each weight block once for several
/// activation rows (prompt processing) and each activation block once for
/// several weight rows.
pub type GemmFn = fn(k: usize, w: &[u8], a: &[u8], out: &mut [f32], ldo: usize);

/// One activation row times `n` weight rows: `out[j] = dot(w_j, a)` for the
/// `n = w.len() / row_size` rows of `w` (this type), `a` one row of its
/// `vec_dot_type`, each of `k` elements. Kernels stream several weight rows
/// per pass over `a` (laid out once per call); a row's result must not
/// depend on which other rows share the call, so that any split of the rows
/// (between threads) gives the same bits.
pub type GemvFn = fn(k: usize, w: &[u8], a: &[u8], out: &mut [f32]);

/// The kernels of one type.
#[derive(Clone, Copy)]
pub struct TypeKernels {
    pub to_float: ToFloatFn,
    pub from_float: FromFloatFn,
    pub vec_dot: VecDotFn,
    /// A specialised [`GemmFn`]; `None` means [`Kernels::gemm`] loops over
    /// `vec_dot`.
    pub gemm: Option<GemmFn>,
    /// A specialised [`GemvFn`] for one activation row; `None` means
    /// [`Kernels::gemm`] with one row goes to `gemm` (or `vec_dot`).
    pub gemv: Option<GemvFn>,
    /// A [`GemmFn`] for several activation rows whose every row is
    /// bit-identical to `gemv` on that row alone, while each weight block
    /// is unpacked once for a group of rows; `None` means
    /// [`Kernels::gemv_rows`] calls the one-row path per row.
    pub gemv_rows: Option<GemmFn>,
}

/// An instruction-set level a kernel table targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Isa {
    Scalar = 1,
    /// AVX2 + FMA + F16C.
    Avx2 = 2,
    /// AVX2 with the VEX-encoded VNNI dot products (AVX-VNNI).
    AvxVnni = 3,
    /// AVX-512 F/BW/VL/DQ.
    Avx512 = 4,
    /// AVX-512 with VNNI.
    Avx512Vnni = 5,
    /// Baseline aarch64 Advanced SIMD.
    Neon = 6,
    /// NEON with the `sdot` dot-product instructions (Armv8.2 dotprod).
    NeonDotprod = 7,
    /// NEON with `smmla` 8-bit matrix multiply (Armv8.6 i8mm).
    NeonI8mm = 8,
}

impl Isa {
    pub const ALL: [Isa; 8] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx512,
        Isa::Avx512Vnni,
        Isa::Neon,
        Isa::NeonDotprod,
        Isa::NeonI8mm,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avx-vnni",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Neon => "neon",
            Isa::NeonDotprod => "neon-dotprod",
            Isa::NeonI8mm => "neon-i8mm",
        }
    }

    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(name.trim()))
    }

    fn from_u8(v: u8) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| *i as u8 == v)
    }

    /// Whether this CPU can run the ISA (run-time detection with `std`,
    /// compile-time target features without).
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::AvxVnni | Isa::Avx512 | Isa::Avx512Vnni => x86::supported(self),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon | Isa::NeonDotprod | Isa::NeonI8mm => aarch64::supported(self),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every ISA this CPU supports, from the simplest to the best.
    pub fn supported() -> impl Iterator<Item = Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_supported())
    }

    /// The best ISA this CPU supports.
    pub fn detect() -> Isa {
        Isa::supported().last().unwrap_or(Isa::Scalar)
    }

    /// The ISA named by the `SPINEL_ISA` environment variable, if set.
    ///
    /// Errors name the problem: an unknown name, or an ISA this CPU lacks.
    #[cfg(feature = "std")]
    pub fn from_env() -> Result<Option<Isa>, IsaError> {
        let Ok(v) = std::env::var("SPINEL_ISA") else {
            return Ok(None);
        };
        let isa = Isa::from_name(&v).ok_or_else(|| IsaError::Unknown(v.clone()))?;
        if !isa.is_supported() {
            return Err(IsaError::Unsupported(isa));
        }
        Ok(Some(isa))
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why an ISA override cannot be honoured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IsaError {
    Unknown(alloc::string::String),
    Unsupported(Isa),
}

impl fmt::Display for IsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IsaError::Unknown(v) => {
                write!(f, "SPINEL_ISA={v:?} is not an ISA; expected one of ")?;
                for (i, isa) in Isa::ALL.iter().enumerate() {
                    write!(f, "{}{isa}", if i > 0 { ", " } else { "" })?;
                }
                Ok(())
            }
            IsaError::Unsupported(isa) => {
                write!(f, "SPINEL_ISA={isa}: this CPU does not support it")
            }
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for IsaError {}

/// What [`Kernels::specialised`] reports for one type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Specialised {
    pub vec_dot: bool,
    pub gemv: bool,
    pub gemm: bool,
}

/// A complete kernel table for one ISA.
#[derive(Clone, Copy)]
pub struct Kernels {
    isa: Isa,
    types: [TypeKernels; GgmlType::ALL.len()],
}

const fn slot(t: GgmlType) -> usize {
    match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q5_0 => 4,
        GgmlType::Q5_1 => 5,
        GgmlType::Q8_0 => 6,
        GgmlType::Q8_1 => 7,
        GgmlType::Q2K => 8,
        GgmlType::Q3K => 9,
        GgmlType::Q4K => 10,
        GgmlType::Q5K => 11,
        GgmlType::Q6K => 12,
        GgmlType::Q8K => 13,
        GgmlType::BF16 => 14,
        GgmlType::IQ4NL => 15,
        GgmlType::IQ4XS => 16,
        GgmlType::IQ2XXS => 17,
        GgmlType::IQ2XS => 18,
        GgmlType::IQ2S => 19,
        GgmlType::IQ3XXS => 20,
        GgmlType::IQ3S => 21,
        GgmlType::IQ1S => 22,
        GgmlType::IQ1M => 23,
    }
}

static SELECTED: AtomicU8 = AtomicU8::new(0);
static SCALAR: Kernels = scalar::TABLE;

impl Kernels {
    /// The table for the ISA chosen for this process: `SPINEL_ISA` if set and
    /// valid (with `std`), else the best the CPU supports. Decided once.
    pub fn get() -> &'static Kernels {
        let isa = match Isa::from_u8(SELECTED.load(Ordering::Relaxed)) {
            Some(isa) => isa,
            None => {
                let isa = Self::choose();
                SELECTED.store(isa as u8, Ordering::Relaxed);
                isa
            }
        };
        // `choose` only returns supported ISAs.
        Self::for_isa(isa).unwrap_or(&SCALAR)
    }

    /// Makes `isa` the process's table from now on, in place of the one
    /// [`get`](Self::get) chose (or would choose): for tests that compare
    /// every ISA with the scalar twin in one process. Products already
    /// running keep the table they fetched. Fails if the CPU lacks `isa`.
    pub fn select(isa: Isa) -> Result<&'static Kernels, IsaError> {
        let k = Self::for_isa(isa).ok_or(IsaError::Unsupported(isa))?;
        SELECTED.store(isa as u8, Ordering::Relaxed);
        Ok(k)
    }

    fn choose() -> Isa {
        #[cfg(feature = "std")]
        match Isa::from_env() {
            Ok(Some(isa)) => return isa,
            Ok(None) => {}
            Err(e) => std::eprintln!("spinel: ignoring {e}; using {}", Isa::detect()),
        }
        Isa::detect()
    }

    /// The table for `isa`, or `None` if this CPU does not support it.
    pub fn for_isa(isa: Isa) -> Option<&'static Kernels> {
        if !isa.is_supported() {
            return None;
        }
        match isa {
            Isa::Scalar => Some(&SCALAR),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::AvxVnni | Isa::Avx512 | Isa::Avx512Vnni => Some(x86::table(isa)),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon | Isa::NeonDotprod | Isa::NeonI8mm => Some(aarch64::table(isa)),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Every table this CPU can run, scalar first.
    pub fn all_supported() -> impl Iterator<Item = &'static Kernels> {
        Isa::supported().filter_map(Kernels::for_isa)
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The kernels for type `t`.
    #[inline]
    pub fn of(&self, t: GgmlType) -> &TypeKernels {
        &self.types[slot(t)]
    }

    /// Which of type `t`'s products this table computes with kernels of its
    /// own ISA rather than ones inherited from the scalar table: `vec_dot`
    /// (for the scalar table, its own), and whether it has a one-row
    /// (`gemv`) and a register-blocked (`gemm`) kernel.
    pub fn specialised(&self, t: GgmlType) -> Specialised {
        let tk = self.of(t);
        let own =
            self.isa == Isa::Scalar || !core::ptr::fn_addr_eq(tk.vec_dot, SCALAR.of(t).vec_dot);
        Specialised {
            vec_dot: own,
            gemv: tk.gemv.is_some(),
            gemm: tk.gemm.is_some(),
        }
    }

    /// A copy of this table retargeted at `isa`, for building the next level.
    pub(crate) const fn derive(&self, isa: Isa) -> Kernels {
        Kernels {
            isa,
            types: self.types,
        }
    }

    pub(crate) const fn set_vec_dot(mut self, t: GgmlType, f: VecDotFn) -> Kernels {
        self.types[slot(t)].vec_dot = f;
        self
    }

    pub(crate) const fn set_from_float(mut self, t: GgmlType, f: FromFloatFn) -> Kernels {
        self.types[slot(t)].from_float = f;
        self
    }

    #[allow(dead_code)] // only ISAs with register-blocked kernels call it
    pub(crate) const fn set_gemm(mut self, t: GgmlType, f: GemmFn) -> Kernels {
        self.types[slot(t)].gemm = Some(f);
        self
    }

    #[allow(dead_code)] // only ISAs with one-row kernels call it
    pub(crate) const fn set_gemv(mut self, t: GgmlType, f: GemvFn) -> Kernels {
        self.types[slot(t)].gemv = Some(f);
        self
    }

    /// `out[i * ldo + j] = dot(w_j, a_i)` for the `n` weight rows of type `t`
    /// in `w` and the `m` activation rows (of `t.vec_dot_type()`) in `a`, each
    /// of `k` elements. Uses the table's register-blocked kernel where there
    /// is one (its one-row kernel for `m = 1`), else one `vec_dot` per pair.
    ///
    /// # Panics
    /// If `k` is not a whole number of blocks, the slices are not whole rows,
    /// or `out` is too short for `m` rows of stride `ldo ≥ n`.
    pub fn gemm(&self, t: GgmlType, k: usize, w: &[u8], a: &[u8], out: &mut [f32], ldo: usize) {
        let wrow = t.row_size(k).expect("k is a whole number of weight blocks");
        let arow = t
            .vec_dot_type()
            .row_size(k)
            .expect("k is a whole number of activation blocks");
        assert!(
            wrow > 0 && w.len() % wrow == 0 && a.len() % arow == 0,
            "gemm: partial rows"
        );
        let (n, m) = (w.len() / wrow, a.len() / arow);
        assert!(
            ldo >= n && (m == 0 || out.len() >= (m - 1) * ldo + n),
            "gemm: output too small"
        );
        let tk = self.of(t);
        if let (1, Some(g)) = (m, tk.gemv) {
            return g(k, w, a, &mut out[..n]);
        }
        if let Some(g) = tk.gemm {
            return g(k, w, a, out, ldo);
        }
        for (i, ar) in a.chunks_exact(arow).enumerate() {
            let o = &mut out[i * ldo..i * ldo + n];
            for (oj, wr) in o.iter_mut().zip(w.chunks_exact(wrow)) {
                *oj = (tk.vec_dot)(wr, ar);
            }
        }
    }

    #[allow(dead_code)] // only ISAs with multi-row one-row kernels call it
    pub(crate) const fn set_gemv_rows(mut self, t: GgmlType, f: GemmFn) -> Kernels {
        self.types[slot(t)].gemv_rows = Some(f);
        self
    }

    /// As [`gemm`](Self::gemm), but every activation row's result has the
    /// bits that `gemm` gives for that row alone (the one-row kernel's), so
    /// that a row does not depend on how many rows share the call:
    /// speculative decoding's exact verification. Uses the table's
    /// multi-row one-row kernel where there is one.
    ///
    /// # Panics
    /// As [`gemm`](Self::gemm).
    pub fn gemv_rows(
        &self,
        t: GgmlType,
        k: usize,
        w: &[u8],
        a: &[u8],
        out: &mut [f32],
        ldo: usize,
    ) {
        let arow = t
            .vec_dot_type()
            .row_size(k)
            .expect("k is a whole number of activation blocks");
        match self.of(t).gemv_rows {
            Some(g) if a.len() > arow => {
                let wrow = t.row_size(k).expect("k is a whole number of weight blocks");
                assert!(
                    wrow > 0 && w.len() % wrow == 0 && a.len() % arow == 0,
                    "gemv_rows: partial rows"
                );
                let (n, m) = (w.len() / wrow, a.len() / arow);
                assert!(
                    ldo >= n && out.len() >= (m - 1) * ldo + n,
                    "gemv_rows: output too small"
                );
                g(k, w, a, out, ldo)
            }
            _ => {
                assert!(arow > 0 && a.len() % arow == 0, "gemv_rows: partial rows");
                for (ar, o) in a.chunks_exact(arow).zip(out.chunks_mut(ldo)) {
                    self.gemm(t, k, w, ar, o, ldo.min(o.len()));
                }
            }
        }
    }

    pub(crate) const fn set_to_float(mut self, t: GgmlType, f: ToFloatFn) -> Kernels {
        self.types[slot(t)].to_float = f;
        self
    }
}

impl fmt::Debug for Kernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernels")
            .field("isa", &self.isa)
            .finish_non_exhaustive()
    }
}

/// Wraps a typed `fn(&[W], &[A]) -> f32` as a byte-level [`VecDotFn`].
///
/// With `unsafe`, the function is a `#[target_feature]` kernel: the wrapper may
/// only be put into the table of an ISA that implies those features. (The
/// `unsafe` arm comes first: a `$w:ty` fragment would fail hard on the keyword.)
macro_rules! vec_dot {
    (unsafe $w:ty, $a:ty, $f:path) => {{
        fn wrapper(w: &[u8], a: &[u8]) -> f32 {
            let (w, a) = (
                bytemuck::cast_slice::<u8, $w>(w),
                bytemuck::cast_slice::<u8, $a>(a),
            );
            // SAFETY: this wrapper only sits in the table of an ISA whose
            // features the kernel needs; such a table is only handed out by
            // `Kernels::for_isa` after run-time detection confirmed them.
            unsafe { $f(w, a) }
        }
        wrapper as $crate::kernels::VecDotFn
    }};
    ($w:ty, $a:ty, $f:path) => {{
        fn wrapper(w: &[u8], a: &[u8]) -> f32 {
            $f(
                bytemuck::cast_slice::<u8, $w>(w),
                bytemuck::cast_slice::<u8, $a>(a),
            )
        }
        wrapper as $crate::kernels::VecDotFn
    }};
}

/// Wraps a typed `fn(&[f32], &mut [B])` as a byte-level [`FromFloatFn`].
macro_rules! from_float {
    (unsafe $b:ty, $f:path) => {{
        fn wrapper(x: &[f32], y: &mut [u8]) {
            let y = bytemuck::cast_slice_mut::<u8, $b>(y);
            // SAFETY: as for `vec_dot!(unsafe …)`: only in a detected ISA's table.
            unsafe { $f(x, y) }
        }
        wrapper as $crate::kernels::FromFloatFn
    }};
    ($b:ty, $f:path) => {{
        fn wrapper(x: &[f32], y: &mut [u8]) {
            $f(x, bytemuck::cast_slice_mut::<u8, $b>(y))
        }
        wrapper as $crate::kernels::FromFloatFn
    }};
}

/// Wraps a typed `fn(&[B], &mut [f32])` as a byte-level [`ToFloatFn`].
macro_rules! to_float {
    (unsafe $b:ty, $f:path) => {{
        fn wrapper(x: &[u8], y: &mut [f32]) {
            let x = bytemuck::cast_slice::<u8, $b>(x);
            // SAFETY: as for `vec_dot!(unsafe …)`: only in a detected ISA's table.
            unsafe { $f(x, y) }
        }
        wrapper as $crate::kernels::ToFloatFn
    }};
    ($b:ty, $f:path) => {{
        fn wrapper(x: &[u8], y: &mut [f32]) {
            $f(bytemuck::cast_slice::<u8, $b>(x), y)
        }
        wrapper as $crate::kernels::ToFloatFn
    }};
}

pub(crate) use {from_float, to_float, vec_dot};
