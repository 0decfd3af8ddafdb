//! Fast Walsh–Hadamard transform (FWHT) of lengths `n = m · 2^k`, the
//! rotation kernel of SpinQuant/QuaRot-style quantization.
//!
//! The transform is `y = H x / √n` with `H = H_m ⊗ H_{2^k}`: `H_{2^k}` the
//! Sylvester matrix (natural order, symmetric) and `H_m` one of the Paley
//! Hadamard matrices below, built at compile time and checked by the tests
//! (`H Hᵀ = m I`). `x[a · 2^k + b]` is element `b` of chunk `a`: the
//! transform is a butterfly FWHT of each of the `m` contiguous chunks, then
//! `H_m` mixing the chunks (a dense `m × m` sign matrix, applied a vector of
//! columns at a time). The result is orthonormal: `H/√n` is orthogonal, so
//! the transform preserves dot products, and it is its own inverse only
//! when `m = 1` (`H_m` is not symmetric); [`Hadamard::apply_transposed`]
//! computes `Hᵀ x / √n`.
//!
//! | `m` | construction                        |
//! |-----|-------------------------------------|
//! | 1   | Sylvester only                      |
//! | 12  | Paley I, q = 11                     |
//! | 20  | Paley I, q = 19                     |
//! | 28  | Paley II, q = 13                    |
//! | 36  | Paley II, q = 17                    |
//! | 44  | Paley I, q = 43                     |
//! | 60  | Paley I, q = 59                     |
//! | 76  | Paley II, q = 37                    |
//!
//! `m = 40` is `20 · 2` and is taken as such (likewise 24, 56, 72 …). Sizes
//! with no such factorisation (Llama 2 7B's 11008 = 172 · 64) have no plan:
//! [`Hadamard::new`] returns `None`, and callers fall back to a dense random
//! orthogonal matrix.
//!
//! The kernels (scalar; AVX2 and AVX-512 on x86-64; NEON on aarch64, in
//! `kernels/aarch64/fwht.rs` with the other ARM kernels) are picked from the
//! ISA of [`Kernels::get`] (so `SPINEL_ISA` pins them too) and allocate
//! nothing: the `H_m` step keeps its columns in a stack buffer.

use crate::{Isa, Kernels};

/// The orders `m` of the non-Sylvester factors, with their sign tables.
pub const ORDERS: [usize; 7] = [12, 20, 28, 36, 44, 60, 76];

/// The largest `m`, which bounds the stack buffer of the `H_m` step.
pub(crate) const M_MAX: usize = 76;

/// `χ(x)`: the quadratic character of `x` mod the prime `q` (0, 1 or −1).
const fn chi(x: usize, q: usize) -> i8 {
    let x = x % q;
    if x == 0 {
        return 0;
    }
    let mut y = 1;
    while y < q {
        if (y * y) % q == x {
            return 1;
        }
        y += 1;
    }
    -1
}

/// Paley I: order `M = q + 1` for a prime `q ≡ 3 (mod 4)`:
/// `H = [[1, 1ᵀ], [−1, Q + I]]` with `Q[i][j] = χ(j − i)`.
const fn paley1<const M: usize>() -> [[i8; M]; M] {
    let q = M - 1;
    let mut h = [[0i8; M]; M];
    let mut i = 0;
    while i < M {
        let mut j = 0;
        while j < M {
            h[i][j] = if i == 0 {
                1
            } else if j == 0 {
                -1
            } else if i == j {
                1
            } else {
                chi(j + q - i, q)
            };
            j += 1;
        }
        i += 1;
    }
    h
}

/// Paley II: order `M = 2(q + 1)` for a prime `q ≡ 1 (mod 4)`: with the
/// symmetric conference matrix `C = [[0, 1ᵀ], [1, Q]]`, each 0 of `C` becomes
/// `[[1, −1], [−1, −1]]` and each ±1 becomes `±[[1, 1], [1, −1]]`.
const fn paley2<const M: usize>() -> [[i8; M]; M] {
    let q = M / 2 - 1;
    let mut h = [[0i8; M]; M];
    let mut i = 0;
    while i < M {
        let mut j = 0;
        while j < M {
            let (ci, cj) = (i / 2, j / 2);
            let c = if ci == cj {
                0
            } else if ci == 0 || cj == 0 {
                1
            } else {
                chi(cj + q - ci, q)
            };
            let (r, s) = (i % 2, j % 2);
            h[i][j] = if c == 0 {
                if r == 0 && s == 0 { 1 } else { -1 }
            } else if r == 1 && s == 1 {
                -c
            } else {
                c
            };
            j += 1;
        }
        i += 1;
    }
    h
}

/// The f32 sign-bit masks of a ±1 matrix (0 for +1, `0x8000_0000` for −1):
/// `x ^ mask` is `±x`.
const fn signs<const M: usize>(h: [[i8; M]; M]) -> [[u32; M]; M] {
    let mut s = [[0u32; M]; M];
    let mut i = 0;
    while i < M {
        let mut j = 0;
        while j < M {
            s[i][j] = if h[i][j] < 0 { 0x8000_0000 } else { 0 };
            j += 1;
        }
        i += 1;
    }
    s
}

/// Transposes a sign table (for `Hᵀ`).
const fn transpose<const M: usize>(h: [[u32; M]; M]) -> [[u32; M]; M] {
    let mut t = [[0u32; M]; M];
    let mut i = 0;
    while i < M {
        let mut j = 0;
        while j < M {
            t[j][i] = h[i][j];
            j += 1;
        }
        i += 1;
    }
    t
}

macro_rules! tables {
    ($($m:literal: $ctor:ident, $s:ident, $t:ident;)*) => {
        $(
            static $s: [[u32; $m]; $m] = signs($ctor::<$m>());
            static $t: [[u32; $m]; $m] = transpose(signs($ctor::<$m>()));
        )*
        /// The sign table of `H_m` (row-major, `m · m` masks), or of `H_mᵀ`.
        fn sign_table(m: usize, transposed: bool) -> Option<&'static [u32]> {
            match (m, transposed) {
                $(
                    ($m, false) => Some($s.as_flattened()),
                    ($m, true) => Some($t.as_flattened()),
                )*
                _ => None,
            }
        }
    };
}

tables! {
    12: paley1, H12, H12T;
    20: paley1, H20, H20T;
    28: paley2, H28, H28T;
    36: paley2, H36, H36T;
    44: paley1, H44, H44T;
    60: paley1, H60, H60T;
    76: paley2, H76, H76T;
}

/// `H_m` as ±1 entries (row-major), for tests and dense references.
pub fn matrix_m(m: usize) -> Option<alloc::vec::Vec<i8>> {
    if m == 1 {
        return Some(alloc::vec![1]);
    }
    let s = sign_table(m, false)?;
    Some(s.iter().map(|&v| if v != 0 { -1 } else { 1 }).collect())
}

/// A kernel: FWHT of `x` (length `m · p`) with the plan's sign table.
type KernelFn = fn(x: &mut [f32], p: usize, m: usize, signs: &[u32], scale: f32);

/// A transform of one length: its factorisation and the kernel to run.
#[derive(Clone, Copy)]
pub struct Hadamard {
    n: usize,
    m: usize,
    p: usize,
    signs: &'static [u32],
    signs_t: &'static [u32],
    scale: f32,
    kernel: KernelFn,
    isa: Isa,
}

impl core::fmt::Debug for Hadamard {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Hadamard")
            .field("n", &self.n)
            .field("m", &self.m)
            .field("p", &self.p)
            .field("isa", &self.isa)
            .finish()
    }
}

/// `n = m · p` with `p` a power of two and `m` 1 or one of [`ORDERS`]
/// (the largest `p` that works).
pub fn factor(n: usize) -> Option<(usize, usize)> {
    if n == 0 {
        return None;
    }
    if n.is_power_of_two() {
        return Some((1, n));
    }
    let p = 1usize << n.trailing_zeros();
    let odd = n / p;
    // m = odd · 2^j for some j with m in ORDERS; take the smallest m.
    ORDERS
        .into_iter()
        .find(|&m| m % odd == 0 && (m / odd).is_power_of_two() && p % (m / odd) == 0)
        .map(|m| (m, n / m))
}

impl Hadamard {
    /// The transform of length `n` on this process's ISA
    /// ([`Kernels::get`]), or `None` if `n` has no supported factorisation.
    pub fn new(n: usize) -> Option<Hadamard> {
        Self::with_isa(n, Kernels::get().isa())
    }

    /// The transform of length `n` with the kernel of `isa`; `None` if `n` is
    /// not supported or this CPU lacks `isa`.
    pub fn with_isa(n: usize, isa: Isa) -> Option<Hadamard> {
        if !isa.is_supported() {
            return None;
        }
        let (m, p) = factor(n)?;
        let (signs, signs_t): (&'static [u32], &'static [u32]) = if m == 1 {
            (&[0], &[0])
        } else {
            (sign_table(m, false)?, sign_table(m, true)?)
        };
        Some(Hadamard {
            n,
            m,
            p,
            signs,
            signs_t,
            scale: inv_sqrt(n),
            kernel: kernel_for(isa),
            isa,
        })
    }

    /// Whether a transform of length `n` exists.
    pub fn supports(n: usize) -> bool {
        factor(n).is_some()
    }

    /// The length.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Always false (there is no transform of length 0).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// `(m, 2^k)`.
    pub fn factors(&self) -> (usize, usize) {
        (self.m, self.p)
    }

    /// The ISA whose kernel runs.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `x ← H x / √n`, in place.
    ///
    /// # Panics
    /// If `x.len()` is not the plan's length.
    #[inline]
    pub fn apply(&self, x: &mut [f32]) {
        assert_eq!(x.len(), self.n, "Hadamard: length mismatch");
        (self.kernel)(x, self.p, self.m, self.signs, self.scale);
    }

    /// `x ← Hᵀ x / √n` (the inverse of [`apply`](Self::apply)), in place.
    ///
    /// # Panics
    /// If `x.len()` is not the plan's length.
    #[inline]
    pub fn apply_transposed(&self, x: &mut [f32]) {
        assert_eq!(x.len(), self.n, "Hadamard: length mismatch");
        (self.kernel)(x, self.p, self.m, self.signs_t, self.scale);
    }

    /// Applies [`apply`](Self::apply) to each consecutive `n`-long row of
    /// `x` (whose length must be a multiple of `n`).
    pub fn apply_rows(&self, x: &mut [f32]) {
        assert_eq!(x.len() % self.n, 0, "Hadamard: partial row");
        for row in x.chunks_exact_mut(self.n) {
            (self.kernel)(row, self.p, self.m, self.signs, self.scale);
        }
    }
}

/// `1/√n` in f32 without `std` (Newton's iteration in f64).
fn inv_sqrt(n: usize) -> f32 {
    let x = n as f64;
    let mut s = if x > 1.0 { x / 2.0 } else { 1.0 };
    for _ in 0..100 {
        let next = 0.5 * (s + x / s);
        if next == s {
            break;
        }
        s = next;
    }
    (1.0 / s) as f32
}

fn kernel_for(isa: Isa) -> KernelFn {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vnni => x86::fwht_avx512,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::AvxVnni => x86::fwht_avx2,
        #[cfg(target_arch = "aarch64")]
        Isa::Neon | Isa::NeonDotprod | Isa::NeonI8mm => crate::kernels::fwht_neon,
        _ => fwht_scalar,
    }
}

/// Butterflies of stride `h` and up over one power-of-two chunk.
#[inline(always)]
fn butterflies_scalar(c: &mut [f32], h0: usize) {
    let p = c.len();
    let mut h = h0;
    while h < p {
        for i in (0..p).step_by(2 * h) {
            let (lo, hi) = c[i..i + 2 * h].split_at_mut(h);
            for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                let (x, y) = (*a, *b);
                *a = x + y;
                *b = x - y;
            }
        }
        h *= 2;
    }
}

/// `H_m` across the `m` chunks, columns `c0..c0 + w` (w ≤ 8), scaled.
#[inline(always)]
fn mix_scalar(x: &mut [f32], p: usize, m: usize, signs: &[u32], scale: f32, c0: usize, w: usize) {
    let mut buf = [[0.0f32; 8]; M_MAX];
    for (a, b) in buf.iter_mut().enumerate().take(m) {
        b[..w].copy_from_slice(&x[a * p + c0..a * p + c0 + w]);
    }
    for a in 0..m {
        let mut acc = [0.0f32; 8];
        for (b, &s) in buf.iter().zip(&signs[a * m..(a + 1) * m]) {
            for (o, &v) in acc.iter_mut().zip(b) {
                *o += f32::from_bits(v.to_bits() ^ s);
            }
        }
        for (o, &v) in x[a * p + c0..a * p + c0 + w].iter_mut().zip(&acc) {
            *o = v * scale;
        }
    }
}

/// The portable kernel.
pub(crate) fn fwht_scalar(x: &mut [f32], p: usize, m: usize, signs: &[u32], scale: f32) {
    for c in x.chunks_exact_mut(p) {
        butterflies_scalar(c, 1);
    }
    if m == 1 {
        x.iter_mut().for_each(|v| *v *= scale);
        return;
    }
    for c0 in (0..p).step_by(8) {
        mix_scalar(x, p, m, signs, scale, c0, (p - c0).min(8));
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    // The crate's MSRV is set for the aarch64 cross toolchain; the host
    // toolchain that compiles this module has the AVX-512 intrinsics.
    #![allow(clippy::incompatible_msrv)]
    use super::{M_MAX, fwht_scalar};
    use core::arch::x86_64::*;

    pub(super) fn fwht_avx2(x: &mut [f32], p: usize, m: usize, signs: &[u32], scale: f32) {
        if p < 8 {
            return fwht_scalar(x, p, m, signs, scale);
        }
        // SAFETY: this kernel is only chosen for an ISA (AVX2 and up) that
        // `Hadamard::with_isa` checked the CPU supports; `p ≥ 8`.
        unsafe { avx2(x, p, m, signs, scale) }
    }

    pub(super) fn fwht_avx512(x: &mut [f32], p: usize, m: usize, signs: &[u32], scale: f32) {
        if p < 16 {
            return fwht_avx2(x, p, m, signs, scale);
        }
        // SAFETY: as above, for AVX-512F; `p ≥ 16`.
        unsafe { avx512(x, p, m, signs, scale) }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2(x: &mut [f32], p: usize, m: usize, signs: &[u32], scale: f32) {
        debug_assert!(p >= 8 && x.len() == m * p && p.is_power_of_two());
        let idx = [1, 2, 4].map(|h| {
            let a: [i32; 8] = core::array::from_fn(|l| l as i32 ^ h);
            // SAFETY: a 32-byte array read as one unaligned vector.
            unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
        });
        let sg = [1, 2, 4].map(|h| {
            let a: [f32; 8] = core::array::from_fn(|l| if l & h != 0 { -1.0 } else { 1.0 });
            // SAFETY: as above.
            unsafe { _mm256_loadu_ps(a.as_ptr()) }
        });
        let ptr = x.as_mut_ptr();
        for c in 0..m {
            let base = c * p;
            // SAFETY (every access below): indices stay in chunk `c`,
            // `base..base + p`, and `x.len() = m · p`.
            for j in (0..p).step_by(8) {
                unsafe {
                    let q = ptr.add(base + j);
                    let mut v = _mm256_loadu_ps(q);
                    for s in 0..3 {
                        v = _mm256_fmadd_ps(v, sg[s], _mm256_permutevar8x32_ps(v, idx[s]));
                    }
                    _mm256_storeu_ps(q, v);
                }
            }
            let mut h = 8;
            while h < p {
                for i in (0..p).step_by(2 * h) {
                    for j in (i..i + h).step_by(8) {
                        unsafe {
                            let (qa, qb) = (ptr.add(base + j), ptr.add(base + j + h));
                            let (a, b) = (_mm256_loadu_ps(qa), _mm256_loadu_ps(qb));
                            _mm256_storeu_ps(qa, _mm256_add_ps(a, b));
                            _mm256_storeu_ps(qb, _mm256_sub_ps(a, b));
                        }
                    }
                }
                h *= 2;
            }
        }
        let vs = _mm256_set1_ps(scale);
        if m == 1 {
            for j in (0..p).step_by(8) {
                // SAFETY: `j + 8 ≤ p = x.len()`.
                unsafe {
                    _mm256_storeu_ps(ptr.add(j), _mm256_mul_ps(_mm256_loadu_ps(ptr.add(j)), vs))
                };
            }
            return;
        }
        let mut buf = [_mm256_setzero_ps(); M_MAX];
        for c0 in (0..p).step_by(8) {
            for (a, b) in buf.iter_mut().enumerate().take(m) {
                // SAFETY: `a · p + c0 + 8 ≤ m · p`.
                *b = unsafe { _mm256_loadu_ps(ptr.add(a * p + c0)) };
            }
            for a in 0..m {
                let mut acc = _mm256_setzero_ps();
                for (b, &s) in buf.iter().zip(&signs[a * m..(a + 1) * m]) {
                    let s = _mm256_castsi256_ps(_mm256_set1_epi32(s as i32));
                    acc = _mm256_add_ps(acc, _mm256_xor_ps(*b, s));
                }
                // SAFETY: as above.
                unsafe { _mm256_storeu_ps(ptr.add(a * p + c0), _mm256_mul_ps(acc, vs)) };
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn avx512(x: &mut [f32], p: usize, m: usize, signs: &[u32], scale: f32) {
        debug_assert!(p >= 16 && x.len() == m * p && p.is_power_of_two());
        let idx = [1, 2, 4, 8].map(|h| {
            let a: [i32; 16] = core::array::from_fn(|l| l as i32 ^ h);
            // SAFETY: a 64-byte array read as one unaligned vector.
            unsafe { _mm512_loadu_si512(a.as_ptr().cast()) }
        });
        let sg = [1, 2, 4, 8].map(|h| {
            let a: [f32; 16] = core::array::from_fn(|l| if l & h != 0 { -1.0 } else { 1.0 });
            // SAFETY: as above.
            unsafe { _mm512_loadu_ps(a.as_ptr()) }
        });
        let ptr = x.as_mut_ptr();
        for c in 0..m {
            let base = c * p;
            // SAFETY (every access below): indices stay in chunk `c`.
            for j in (0..p).step_by(16) {
                unsafe {
                    let q = ptr.add(base + j);
                    let mut v = _mm512_loadu_ps(q);
                    for s in 0..4 {
                        v = _mm512_fmadd_ps(v, sg[s], _mm512_permutexvar_ps(idx[s], v));
                    }
                    _mm512_storeu_ps(q, v);
                }
            }
            let mut h = 16;
            while h < p {
                for i in (0..p).step_by(2 * h) {
                    for j in (i..i + h).step_by(16) {
                        unsafe {
                            let (qa, qb) = (ptr.add(base + j), ptr.add(base + j + h));
                            let (a, b) = (_mm512_loadu_ps(qa), _mm512_loadu_ps(qb));
                            _mm512_storeu_ps(qa, _mm512_add_ps(a, b));
                            _mm512_storeu_ps(qb, _mm512_sub_ps(a, b));
                        }
                    }
                }
                h *= 2;
            }
        }
        let vs = _mm512_set1_ps(scale);
        if m == 1 {
            for j in (0..p).step_by(16) {
                // SAFETY: `j + 16 ≤ p = x.len()`.
                unsafe {
                    _mm512_storeu_ps(ptr.add(j), _mm512_mul_ps(_mm512_loadu_ps(ptr.add(j)), vs))
                };
            }
            return;
        }
        let mut buf = [_mm512_setzero_ps(); M_MAX];
        for c0 in (0..p).step_by(16) {
            for (a, b) in buf.iter_mut().enumerate().take(m) {
                // SAFETY: `a · p + c0 + 16 ≤ m · p`.
                *b = unsafe { _mm512_loadu_ps(ptr.add(a * p + c0)) };
            }
            for a in 0..m {
                let mut acc = _mm512_setzero_ps();
                for (b, &s) in buf.iter().zip(&signs[a * m..(a + 1) * m]) {
                    let s = _mm512_set1_epi32(s as i32);
                    acc = _mm512_add_ps(
                        acc,
                        _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(*b), s)),
                    );
                }
                // SAFETY: as above.
                unsafe { _mm512_storeu_ps(ptr.add(a * p + c0), _mm512_mul_ps(acc, vs)) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    #[test]
    fn every_order_is_hadamard() {
        for m in ORDERS {
            let h = matrix_m(m).unwrap();
            for i in 0..m {
                for j in 0..m {
                    let d: i32 = (0..m)
                        .map(|k| h[i * m + k] as i32 * h[j * m + k] as i32)
                        .sum();
                    assert_eq!(d, if i == j { m as i32 } else { 0 }, "m={m} ({i},{j})");
                }
            }
            let t = sign_table(m, true).unwrap();
            let s = sign_table(m, false).unwrap();
            for i in 0..m {
                for j in 0..m {
                    assert_eq!(t[i * m + j], s[j * m + i]);
                }
            }
        }
    }

    #[test]
    fn inverse_square_roots() {
        for n in [1usize, 2, 12, 64, 576, 1536, 14336, 1 << 20] {
            assert_eq!(inv_sqrt(n), (1.0 / (n as f64).sqrt()) as f32, "n={n}");
        }
    }

    #[test]
    fn factorisations() {
        assert_eq!(factor(576), Some((36, 16)));
        assert_eq!(factor(1536), Some((12, 128)));
        assert_eq!(factor(14336), Some((28, 512)));
        assert_eq!(factor(3072), Some((12, 256)));
        assert_eq!(factor(5120), Some((20, 256))); // 40 · 128
        assert_eq!(factor(8192), Some((1, 8192)));
        assert_eq!(factor(64), Some((1, 64)));
        assert_eq!(factor(960), Some((60, 16)));
        assert_eq!(factor(11008), None); // 172 · 64
        assert_eq!(factor(0), None);
        assert_eq!(factor(7), None);
        assert_eq!(factor(36), Some((36, 1)));
        assert_eq!(factor(3), None);
        assert!(Hadamard::new(11008).is_none());
    }

    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
    }

    /// `H x / √n` with the dense Kronecker product, in f64.
    fn dense(x: &[f32], m: usize, transposed: bool) -> Vec<f64> {
        let n = x.len();
        let p = n / m;
        let hm = matrix_m(m).unwrap();
        let scale = 1.0 / (n as f64).sqrt();
        (0..n)
            .map(|i| {
                let (a, b) = (i / p, i % p);
                (0..n)
                    .map(|j| {
                        let (a2, b2) = (j / p, j % p);
                        let e = if transposed {
                            hm[a2 * m + a]
                        } else {
                            hm[a * m + a2]
                        };
                        let s = if (b & b2).count_ones() % 2 == 1 {
                            -1.0
                        } else {
                            1.0
                        };
                        e as f64 * s * x[j] as f64
                    })
                    .sum::<f64>()
                    * scale
            })
            .collect()
    }

    #[test]
    fn matches_dense_product_on_every_isa() {
        let mut r = rng(7);
        let ms = [1usize, 12, 20, 28, 36, 40, 44, 60, 76];
        for isa in Isa::supported() {
            for &m in &ms {
                for k in [0u32, 1, 2, 3, 4, 5, 6] {
                    let n = m << k;
                    if n > 2048 || n == 1 {
                        continue;
                    }
                    let Some(h) = Hadamard::with_isa(n, isa) else {
                        panic!("no plan for n={n}");
                    };
                    assert_eq!(h.isa(), isa);
                    let x: Vec<f32> = (0..n).map(|_| r()).collect();
                    for transposed in [false, true] {
                        let want = dense(&x, h.factors().0, transposed);
                        let mut y = x.clone();
                        if transposed {
                            h.apply_transposed(&mut y);
                        } else {
                            h.apply(&mut y);
                        }
                        for (i, (&g, &w)) in y.iter().zip(&want).enumerate() {
                            assert!(
                                (g as f64 - w).abs() < 1e-5,
                                "{isa} n={n} i={i} transposed={transposed}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn orthonormal_and_inverse_on_large_sizes() {
        let mut r = rng(3);
        for isa in Isa::supported() {
            for n in [576usize, 1536, 4096, 14336] {
                let h = Hadamard::with_isa(n, isa).unwrap();
                let x: Vec<f32> = (0..n).map(|_| r()).collect();
                let mut y = x.clone();
                h.apply(&mut y);
                let nx: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum();
                let ny: f64 = y.iter().map(|&v| (v as f64).powi(2)).sum();
                assert!((nx - ny).abs() < 1e-4 * nx, "{isa} n={n}: norm {nx} → {ny}");
                h.apply_transposed(&mut y);
                for (a, b) in x.iter().zip(&y) {
                    assert!((a - b).abs() < 1e-5, "{isa} n={n}: {a} vs {b}");
                }
                // Same result as the scalar kernel (up to rounding).
                let s = Hadamard::with_isa(n, Isa::Scalar).unwrap();
                let (mut a, mut b) = (x.clone(), x.clone());
                s.apply(&mut a);
                h.apply(&mut b);
                for (u, v) in a.iter().zip(&b) {
                    assert!((u - v).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn apply_rows_and_length_check() {
        let h = Hadamard::new(48).unwrap();
        let mut r = rng(11);
        let x: Vec<f32> = (0..48 * 3).map(|_| r()).collect();
        let mut rows = x.clone();
        h.apply_rows(&mut rows);
        for (i, row) in x.chunks_exact(48).enumerate() {
            let mut one = row.to_vec();
            h.apply(&mut one);
            assert_eq!(one, rows[i * 48..(i + 1) * 48]);
        }
    }

    #[test]
    #[should_panic(expected = "length mismatch")]
    fn wrong_length_panics() {
        let mut v = vec![0.0f32; 47];
        Hadamard::new(48).unwrap().apply(&mut v);
    }
}
