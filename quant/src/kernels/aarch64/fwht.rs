//! The NEON kernel of the fast Walsh–Hadamard transform
//! ([`crate::hadamard`]): butterflies of each power-of-two chunk four lanes
//! at a time, then the `H_m` sign matrix across the chunks. Every level
//! (NEON, dotprod, i8mm) uses it; `Hadamard::with_isa` chooses it only for
//! an aarch64 ISA the CPU supports.

use crate::hadamard::{M_MAX, fwht_scalar};
use core::arch::aarch64::*;

/// `x ← (H_m ⊗ H_p) x · scale` for `x` of `m` chunks of `p` (a power of
/// two), `signs` the `m × m` sign masks of `H_m` (or its transpose).
pub(crate) fn fwht_neon(x: &mut [f32], p: usize, m: usize, signs: &[u32], scale: f32) {
    assert!(
        x.len() == m * p && p.is_power_of_two(),
        "fwht: {} values are not {m} chunks of a power of two {p}",
        x.len()
    );
    if p < 4 {
        return fwht_scalar(x, p, m, signs, scale);
    }
    // SAFETY: NEON is baseline on aarch64 (and `Hadamard::with_isa` only
    // chooses this kernel for a NEON ISA the CPU supports); `p ≥ 4` and
    // `x` is `m` whole chunks of `p`, as `neon` requires.
    unsafe { neon(x, p, m, signs, scale) }
}

#[target_feature(enable = "neon")]
unsafe fn neon(x: &mut [f32], p: usize, m: usize, signs: &[u32], scale: f32) {
    debug_assert!(p >= 4 && x.len() == m * p && p.is_power_of_two());
    let s1a = [1.0f32, -1.0, 1.0, -1.0];
    let s2a = [1.0f32, 1.0, -1.0, -1.0];
    // SAFETY: 4-element arrays.
    let (s1, s2) = unsafe { (vld1q_f32(s1a.as_ptr()), vld1q_f32(s2a.as_ptr())) };
    let ptr = x.as_mut_ptr();
    for c in 0..m {
        let base = c * p;
        for j in (0..p).step_by(4) {
            // SAFETY: `j + 4 ≤ p`: the four floats stay in chunk `c`.
            unsafe {
                let q = ptr.add(base + j);
                let v = vld1q_f32(q);
                let v = vfmaq_f32(vrev64q_f32(v), v, s1);
                let v = vfmaq_f32(vextq_f32::<2>(v, v), v, s2);
                vst1q_f32(q, v);
            }
        }
        let mut h = 4;
        while h < p {
            for i in (0..p).step_by(2 * h) {
                for j in (i..i + h).step_by(4) {
                    // SAFETY: `j + h + 4 ≤ i + 2h ≤ p`: both stay in chunk `c`.
                    unsafe {
                        let (qa, qb) = (ptr.add(base + j), ptr.add(base + j + h));
                        let (a, b) = (vld1q_f32(qa), vld1q_f32(qb));
                        vst1q_f32(qa, vaddq_f32(a, b));
                        vst1q_f32(qb, vsubq_f32(a, b));
                    }
                }
            }
            h *= 2;
        }
    }
    if m == 1 {
        for j in (0..p).step_by(4) {
            // SAFETY: `j + 4 ≤ p = x.len()`.
            unsafe { vst1q_f32(ptr.add(j), vmulq_n_f32(vld1q_f32(ptr.add(j)), scale)) };
        }
        return;
    }
    let mut buf = [vdupq_n_f32(0.0); M_MAX];
    for c0 in (0..p).step_by(4) {
        for (a, b) in buf.iter_mut().enumerate().take(m) {
            // SAFETY: `a · p + c0 + 4 ≤ m · p`.
            *b = unsafe { vld1q_f32(ptr.add(a * p + c0)) };
        }
        for a in 0..m {
            let mut acc = vdupq_n_f32(0.0);
            for (b, &s) in buf.iter().zip(&signs[a * m..(a + 1) * m]) {
                let v = veorq_u32(vreinterpretq_u32_f32(*b), vdupq_n_u32(s));
                acc = vaddq_f32(acc, vreinterpretq_f32_u32(v));
            }
            // SAFETY: as above.
            unsafe { vst1q_f32(ptr.add(a * p + c0), vmulq_n_f32(acc, scale)) };
        }
    }
}
