//! Every aarch64 kernel against the scalar reference (`crate::formats`), at
//! every ISA level this CPU (or qemu) supports, through the byte-level table
//! entries: random rows and raw random blocks (any bit pattern a file could
//! hold), 0..=16 blocks, and edge rows (zeros, ±65504, 1e-8, outliers,
//! rounding ties).
//!
//! Quantizers must match bit for bit (same `d`, same `q`, same sums). Dot
//! products may differ only by float accumulation order:
//! `|simd − scalar| ≤ 1e-5 · Σ|terms|`, where the terms are the exact
//! per-element products behind the integer sums.

use super::i8mm;
use crate::blocks::*;
use crate::formats::{float, iq_grid as g, k_quants as k, legacy as l};
use crate::{GgmlType, Isa, Kernels, QK_K};
use alloc::vec;
use alloc::vec::Vec;
use bytemuck::Zeroable;
use half::f16;

const LEVELS: [Isa; 3] = [Isa::Neon, Isa::NeonDotprod, Isa::NeonI8mm];

/// The tables to test; baseline NEON is always there on aarch64.
fn tables() -> Vec<&'static Kernels> {
    assert!(Isa::Neon.is_supported(), "aarch64 without NEON?");
    LEVELS.into_iter().filter_map(Kernels::for_isa).collect()
}

fn scalar() -> &'static Kernels {
    Kernels::for_isa(Isa::Scalar).unwrap()
}

/// xorshift64*: deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.u64() % n as u64) as usize
    }
    /// Uniform in [-1, 1).
    fn f32(&mut self) -> f32 {
        (self.u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn bytes(&mut self, out: &mut [u8]) {
        for b in out {
            *b = self.u64() as u8;
        }
    }
    /// A finite f16 scale, sign included, over many decades.
    fn scale(&mut self) -> f16 {
        let e = self.below(12) as i32 - 8;
        f16::from_f32(self.f32() * 2f32.powi(e))
    }
}

/// A row of `n` values of one of several shapes (`kind` picks).
fn row(rng: &mut Rng, n: usize, kind: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
    match kind % 10 {
        0 => {}
        1 => v.iter_mut().for_each(|x| *x *= 65504.0),
        2 => v.iter_mut().for_each(|x| *x *= 1e-8),
        3 => v.iter_mut().for_each(|x| *x = 0.0),
        4 => {
            // Small values with a few outliers of either sign.
            v.iter_mut().for_each(|x| *x *= 0.01);
            for _ in 0..1 + n / 64 {
                let i = rng.below(n.max(1));
                if let Some(x) = v.get_mut(i) {
                    *x = if rng.u64() & 1 == 0 { 1000.0 } else { -1000.0 };
                }
            }
        }
        5 => {
            // Exact .5 ties once scaled: amax 127 gives d = 1 (Q8_0) and
            // |iscale| = 1 (Q8_K); the anchor's sign varies.
            v.iter_mut()
                .for_each(|x| *x = ((*x * 60.0) as i32) as f32 + 0.5);
            let anchor = if rng.u64() & 1 == 0 { 127.0 } else { -127.0 };
            for c in v.chunks_mut(32) {
                c[rng.below(c.len())] = anchor;
            }
        }
        6 => {
            // ±c: both signs reach the largest magnitude (first one wins).
            let c = rng.f32().abs() + 0.5;
            v.iter_mut()
                .for_each(|x| *x = if *x < 0.0 { -c } else { c });
        }
        7 => v
            .iter_mut()
            .for_each(|x| *x = if *x < 0.0 { -65504.0 } else { 65504.0 }),
        8 => v.iter_mut().for_each(|x| *x *= 1e4),
        _ => v.iter_mut().for_each(|x| *x *= 3.0),
    }
    v
}

/// `n` raw blocks of random bytes with finite f16 scales, as a file could
/// hold them (Q8 values include −128).
fn raw_blocks<B: bytemuck::Pod>(rng: &mut Rng, n: usize, fix: impl Fn(&mut Rng, &mut B)) -> Vec<B> {
    let mut v: Vec<B> = vec![bytemuck::Zeroable::zeroed(); n];
    rng.bytes(bytemuck::cast_slice_mut(&mut v));
    v.iter_mut().for_each(|b| fix(rng, b));
    v
}

fn quantize<B: bytemuck::Pod>(f: fn(&[f32], &mut [B]), x: &[f32], per: usize) -> Vec<B> {
    let mut y = vec![bytemuck::Zeroable::zeroed(); x.len() / per];
    f(x, &mut y);
    y
}

fn bytes<B: bytemuck::Pod>(b: &[B]) -> &[u8] {
    bytemuck::cast_slice(b)
}

#[track_caller]
fn assert_close(what: &str, got: f32, want: f32, mag: f64) {
    // Q8_1's `s` overflows f16 for rows near ±65504: both sides then agree
    // on a non-finite result.
    if !want.is_finite() {
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "{what}: {got:e} vs scalar {want:e}"
        );
        return;
    }
    let tol = 1e-5 * mag + 1e-30;
    assert!(
        (got as f64 - want as f64).abs() <= tol && got.is_finite() == want.is_finite(),
        "{what}: {got:e} vs scalar {want:e} (|terms| {mag:e})"
    );
}

/// Σ|d_x·d_y·qx·qy| over the blocks of a 32-wide format; `q` gives a block's
/// integer weights.
fn mag32<X, Y>(
    x: &[X],
    y: &[Y],
    q: impl Fn(&X) -> ([i32; 32], f32),
    a: impl Fn(&Y) -> ([i8; 32], f32),
) -> f64 {
    x.iter()
        .zip(y)
        .map(|(xb, yb)| {
            let ((qx, dx), (qy, dy)) = (q(xb), a(yb));
            let s: i64 = qx
                .iter()
                .zip(&qy)
                .map(|(&a, &b)| (a as i64 * b as i64).abs())
                .sum();
            (dx as f64 * dy as f64).abs() * s as f64
        })
        .sum()
}

fn q4_0_ints(b: &BlockQ4_0) -> ([i32; 32], f32) {
    let mut q = [0; 32];
    for j in 0..16 {
        q[j] = (b.qs[j] & 15) as i32 - 8;
        q[j + 16] = (b.qs[j] >> 4) as i32 - 8;
    }
    (q, b.d.to_f32())
}

fn q4_1_ints(b: &BlockQ4_1) -> ([i32; 32], f32) {
    let mut q = [0; 32];
    for j in 0..16 {
        q[j] = (b.qs[j] & 15) as i32;
        q[j + 16] = (b.qs[j] >> 4) as i32;
    }
    (q, b.d.to_f32())
}

fn q8_0_ints(b: &BlockQ8_0) -> ([i32; 32], f32) {
    (b.qs.map(|v| v as i32), b.d.to_f32())
}

fn q8_0_act(b: &BlockQ8_0) -> ([i8; 32], f32) {
    (b.qs, b.d.to_f32())
}

fn q8_1_act(b: &BlockQ8_1) -> ([i8; 32], f32) {
    (b.qs, b.d.to_f32())
}

// ---------------------------------------------------------------------------
// Activation quantizers: bit-identical to scalar.
// ---------------------------------------------------------------------------

fn check_quantizer<B: bytemuck::Pod + PartialEq + core::fmt::Debug>(
    ty: GgmlType,
    per: usize,
    max_blocks: usize,
    reference: fn(&[f32], &mut [B]),
    extra: impl Fn(&B) -> bool,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ty as u64);
    for k in tables() {
        for case in 0..120 {
            let nb = case % (max_blocks + 1);
            let x = row(&mut rng, nb * per, case);
            let want = quantize(reference, &x, per);
            // A `Vec<B>`, not `Vec<u8>`: the byte-level entries cast to
            // blocks and need their alignment (even when empty).
            let mut got: Vec<B> = vec![bytemuck::Zeroable::zeroed(); nb];
            (k.of(ty).from_float)(&x, bytemuck::cast_slice_mut(&mut got));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g, w, "{} {ty} case {case} block {i}", k.isa());
                assert!(extra(g), "{} {ty} case {case} block {i}: sums", k.isa());
            }
        }
    }
}

#[test]
fn quantize_q8_0_matches_scalar() {
    check_quantizer(GgmlType::Q8_0, 32, 16, l::quantize_row_q8_0, |_| true);
}

#[test]
fn quantize_q8_1_matches_scalar() {
    // Bit-identical blocks imply `s = f16(d·Σq)` with the scalar's unrounded
    // f32 `d` (not the stored f16 one).
    check_quantizer(GgmlType::Q8_1, 32, 16, l::quantize_row_q8_1, |_| true);
}

#[test]
fn quantize_q8_k_matches_scalar() {
    check_quantizer(
        GgmlType::Q8K,
        QK_K,
        4,
        k::quantize_row_q8_k,
        |b: &BlockQ8K| {
            b.bsums
                .iter()
                .zip(b.qs.chunks_exact(16))
                .all(|(&s, q)| s as i32 == q.iter().map(|&v| v as i32).sum::<i32>())
        },
    );
}

#[test]
fn quantize_q8_k_sign_tie_takes_first() {
    // Both +c and −c reach the block maximum: the sign of the first decides.
    for k in tables() {
        for first in [1.0f32, -1.0] {
            let mut x = vec![0.25f32; QK_K];
            x[3] = 2.0 * first;
            x[200] = -2.0 * first;
            let want = quantize(k::quantize_row_q8_k, &x, QK_K);
            let mut got = [BlockQ8K::zeroed()];
            (k.of(GgmlType::Q8K).from_float)(&x, bytemuck::cast_slice_mut(&mut got));
            assert_eq!(got[..], want[..], "{}", k.isa());
        }
    }
}

// ---------------------------------------------------------------------------
// Dot products of the 32-wide formats.
// ---------------------------------------------------------------------------

/// Weight rows: quantized from random rows, or raw random blocks.
fn weights<B: bytemuck::Pod>(
    rng: &mut Rng,
    nb: usize,
    case: usize,
    quant: fn(&[f32], &mut [B]),
    fix: impl Fn(&mut Rng, &mut B),
) -> Vec<B> {
    if case % 3 == 2 {
        raw_blocks(rng, nb, fix)
    } else {
        quantize(quant, &row(rng, nb * 32, case), 32)
    }
}

#[test]
fn vec_dot_q4_0_matches_scalar() {
    let mut rng = Rng(11);
    for kt in tables() {
        for case in 0..150 {
            let nb = case % 17;
            let x = weights(
                &mut rng,
                nb,
                case,
                l::quantize_row_q4_0,
                |r, b: &mut BlockQ4_0| b.d = r.scale(),
            );
            let y = quantize(l::quantize_row_q8_0, &row(&mut rng, nb * 32, case / 3), 32);
            let want = l::vec_dot_q4_0_q8_0(&x, &y);
            let got = (kt.of(GgmlType::Q4_0).vec_dot)(bytes(&x), bytes(&y));
            let mag = mag32(&x, &y, q4_0_ints, q8_0_act);
            assert_close(
                &alloc::format!("{} Q4_0 case {case}", kt.isa()),
                got,
                want,
                mag,
            );
        }
    }
}

#[test]
fn vec_dot_q4_1_matches_scalar() {
    let mut rng = Rng(12);
    for kt in tables() {
        for case in 0..150 {
            let nb = case % 17;
            let x = weights(
                &mut rng,
                nb,
                case,
                l::quantize_row_q4_1,
                |r, b: &mut BlockQ4_1| (b.d, b.m) = (r.scale(), r.scale()),
            );
            let y = quantize(l::quantize_row_q8_1, &row(&mut rng, nb * 32, case / 3), 32);
            let want = l::vec_dot_q4_1_q8_1(&x, &y);
            let got = (kt.of(GgmlType::Q4_1).vec_dot)(bytes(&x), bytes(&y));
            let ms: f64 = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a.m.to_f32() as f64 * b.s.to_f32() as f64).abs())
                .sum();
            let mag = mag32(&x, &y, q4_1_ints, q8_1_act) + ms;
            assert_close(
                &alloc::format!("{} Q4_1 case {case}", kt.isa()),
                got,
                want,
                mag,
            );
        }
    }
}

#[test]
fn vec_dot_q8_0_matches_scalar() {
    let mut rng = Rng(13);
    for kt in tables() {
        for case in 0..150 {
            let nb = case % 17;
            let x = weights(
                &mut rng,
                nb,
                case,
                l::quantize_row_q8_0,
                |r, b: &mut BlockQ8_0| b.d = r.scale(),
            );
            // Raw activations too: −128 · −128 must not overflow anything.
            let y = if case % 5 == 4 {
                raw_blocks(&mut rng, nb, |r, b: &mut BlockQ8_0| b.d = r.scale())
            } else {
                quantize(l::quantize_row_q8_0, &row(&mut rng, nb * 32, case / 3), 32)
            };
            let want = l::vec_dot_q8_0_q8_0(&x, &y);
            let got = (kt.of(GgmlType::Q8_0).vec_dot)(bytes(&x), bytes(&y));
            let mag = mag32(&x, &y, q8_0_ints, q8_0_act);
            assert_close(
                &alloc::format!("{} Q8_0 case {case}", kt.isa()),
                got,
                want,
                mag,
            );
        }
    }
    // All −128: the largest products an int8 dot can see, exact.
    let x = vec![
        BlockQ8_0 {
            d: f16::ONE,
            qs: [-128; 32]
        };
        9
    ];
    for kt in tables() {
        let got = (kt.of(GgmlType::Q8_0).vec_dot)(bytes(&x), bytes(&x));
        assert_eq!(got, 9.0 * 32.0 * 16384.0, "{}", kt.isa());
    }
}

// ---------------------------------------------------------------------------
// F16
// ---------------------------------------------------------------------------

#[test]
fn f16_dot_and_to_float_match_scalar() {
    let mut rng = Rng(14);
    for kt in tables() {
        for case in 0..120 {
            let n = if case < 70 { case } else { rng.below(1200) };
            let x: Vec<f16> = row(&mut rng, n, case)
                .into_iter()
                .map(f16::from_f32)
                .collect();
            let y: Vec<f16> = row(&mut rng, n, case / 2)
                .into_iter()
                .map(f16::from_f32)
                .collect();
            let want = float::vec_dot_f16(&x, &y);
            let got = (kt.of(GgmlType::F16).vec_dot)(bytes(&x), bytes(&y));
            let mag: f64 = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (a.to_f64() * b.to_f64()).abs())
                .sum();
            assert_close(
                &alloc::format!("{} F16 case {case} n {n}", kt.isa()),
                got,
                want,
                mag,
            );

            let mut want = vec![0.0f32; n];
            let mut got = vec![0.0f32; n];
            float::dequantize_row_f16(&x, &mut want);
            (kt.of(GgmlType::F16).to_float)(bytes(&x), &mut got);
            assert_eq!(got, want, "{} F16 to_float n {n}", kt.isa());
        }
        // Every finite half, subnormals and infinities included.
        let all: Vec<f16> = (0..=u16::MAX)
            .map(f16::from_bits)
            .filter(|h| !h.is_nan())
            .collect();
        let mut got = vec![0.0f32; all.len()];
        (kt.of(GgmlType::F16).to_float)(bytes(&all), &mut got);
        for (h, g) in all.iter().zip(&got) {
            assert_eq!(g.to_bits(), h.to_f32().to_bits(), "{} {h:?}", kt.isa());
            assert_eq!(super::f16_to_f32(*h).to_bits(), g.to_bits(), "fcvt {h:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// K-quants
// ---------------------------------------------------------------------------

/// Activations for K-quant dots: quantized rows (consistent `bsums`).
fn q8k_row(rng: &mut Rng, nb: usize, case: usize) -> Vec<BlockQ8K> {
    quantize(k::quantize_row_q8_k, &row(rng, nb * QK_K, case), QK_K)
}

fn q4k_scales_mins_ref(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        if j < 4 {
            sc[j] = s[j] & 63;
            mn[j] = s[j + 4] & 63;
        } else {
            sc[j] = (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4);
            mn[j] = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
    (sc, mn)
}

#[test]
fn q4k_scale_unpacking_matches_get_scale_min_k4() {
    let mut rng = Rng(15);
    for _ in 0..2000 {
        let mut s = [0u8; 12];
        rng.bytes(&mut s);
        assert_eq!(super::q4k_scales_mins(&s), q4k_scales_mins_ref(&s), "{s:?}");
    }
}

/// Σ|terms| of a Q4_K dot: `|d|·Σ sc·|q·y| + |dmin|·Σ mn·|bsum|`.
fn q4k_mag(x: &[BlockQ4K], y: &[BlockQ8K]) -> f64 {
    x.iter()
        .zip(y)
        .map(|(xb, yb)| {
            let (sc, mn) = q4k_scales_mins_ref(&xb.scales);
            let mut s = 0i64;
            for e in 0..QK_K {
                let byte = xb.qs[e / 64 * 32 + e % 32];
                let q = if e % 64 < 32 { byte & 15 } else { byte >> 4 };
                s += sc[e / 32] as i64 * (q as i64 * yb.qs[e] as i64).abs();
            }
            let m: i64 = (0..16)
                .map(|j| mn[j / 2] as i64 * (yb.bsums[j] as i64).abs())
                .sum();
            let d = yb.d as f64 * xb.d.to_f64();
            let dmin = yb.d as f64 * xb.dmin.to_f64();
            d.abs() * s as f64 + dmin.abs() * m as f64
        })
        .sum()
}

/// Σ|terms| of a Q6_K dot: `|d|·Σ |sc|·|q·y|`.
fn q6k_mag(x: &[BlockQ6K], y: &[BlockQ8K]) -> f64 {
    let mut deq = vec![0.0f32; x.len() * QK_K];
    k::dequantize_row_q6_k(x, &mut deq);
    deq.iter()
        .zip(
            y.iter()
                .flat_map(|b| b.qs.iter().map(move |&q| q as f64 * b.d as f64)),
        )
        .map(|(&a, b)| (a as f64 * b).abs())
        .sum()
}

#[test]
fn vec_dot_q4_k_matches_scalar() {
    let mut rng = Rng(16);
    for kt in tables() {
        for case in 0..60 {
            let nb = case % 6;
            let x: Vec<BlockQ4K> = if case % 2 == 0 {
                raw_blocks(&mut rng, nb, |r, b: &mut BlockQ4K| {
                    (b.d, b.dmin) = (r.scale(), r.scale())
                })
            } else {
                quantize(k::quantize_row_q4_k, &row(&mut rng, nb * QK_K, case), QK_K)
            };
            let y = q8k_row(&mut rng, nb, case / 2);
            let want = k::vec_dot_q4_k_q8_k(&x, &y);
            let got = (kt.of(GgmlType::Q4K).vec_dot)(bytes(&x), bytes(&y));
            let mag = q4k_mag(&x, &y);
            assert_close(
                &alloc::format!("{} Q4_K case {case}", kt.isa()),
                got,
                want,
                mag,
            );
        }
    }
}

#[test]
fn vec_dot_q6_k_matches_scalar() {
    let mut rng = Rng(17);
    for kt in tables() {
        for case in 0..60 {
            let nb = case % 6;
            let x: Vec<BlockQ6K> = if case % 2 == 0 {
                raw_blocks(&mut rng, nb, |r, b: &mut BlockQ6K| b.d = r.scale())
            } else {
                quantize(k::quantize_row_q6_k, &row(&mut rng, nb * QK_K, case), QK_K)
            };
            // Raw activations with garbage `bsums`: Q6_K must not use them.
            let y = if case % 3 == 2 {
                raw_blocks(&mut rng, nb, |r, b: &mut BlockQ8K| b.d = r.scale().to_f32())
            } else {
                q8k_row(&mut rng, nb, case / 2)
            };
            let want = k::vec_dot_q6_k_q8_k(&x, &y);
            let got = (kt.of(GgmlType::Q6K).vec_dot)(bytes(&x), bytes(&y));
            let mag = q6k_mag(&x, &y);
            assert_close(
                &alloc::format!("{} Q6_K case {case}", kt.isa()),
                got,
                want,
                mag,
            );
        }
    }
}

// ---------------------------------------------------------------------------
// i8mm two-row tiles
// ---------------------------------------------------------------------------

#[test]
fn i8mm_2rows_match_scalar() {
    if !Isa::NeonI8mm.is_supported() {
        return;
    }
    let mut rng = Rng(18);
    for case in 0..100 {
        let nb = case % 17;
        let xq: [Vec<BlockQ8_0>; 2] = core::array::from_fn(|_| {
            weights(
                &mut rng,
                nb,
                case,
                l::quantize_row_q8_0,
                |r, b: &mut BlockQ8_0| b.d = r.scale(),
            )
        });
        let x4: [Vec<BlockQ4_0>; 2] = core::array::from_fn(|_| {
            weights(
                &mut rng,
                nb,
                case,
                l::quantize_row_q4_0,
                |r, b: &mut BlockQ4_0| b.d = r.scale(),
            )
        });
        let y: [Vec<BlockQ8_0>; 2] = core::array::from_fn(|i| {
            if case % 4 == 3 {
                raw_blocks(&mut rng, nb, |r, b: &mut BlockQ8_0| b.d = r.scale())
            } else {
                quantize(l::quantize_row_q8_0, &row(&mut rng, nb * 32, case + i), 32)
            }
        });
        let yr = [&y[0][..], &y[1][..]];
        // SAFETY: i8mm support was checked above.
        let (t8, t4) = unsafe {
            (
                i8mm::vec_dot_q8_0_q8_0_2rows([&xq[0], &xq[1]], yr),
                i8mm::vec_dot_q4_0_q8_0_2rows([&x4[0], &x4[1]], yr),
            )
        };
        for i in 0..2 {
            for j in 0..2 {
                let what = alloc::format!("2rows case {case} [{i}][{j}]");
                let want = l::vec_dot_q8_0_q8_0(&xq[i], &y[j]);
                let mag = mag32(&xq[i], &y[j], q8_0_ints, q8_0_act);
                assert_close(&alloc::format!("Q8_0 {what}"), t8[i][j], want, mag);
                let want = l::vec_dot_q4_0_q8_0(&x4[i], &y[j]);
                let mag = mag32(&x4[i], &y[j], q4_0_ints, q8_0_act);
                assert_close(&alloc::format!("Q4_0 {what}"), t4[i][j], want, mag);
            }
        }
    }
}

#[test]
fn tables_specialise_what_they_claim() {
    // The entries this module provides differ from scalar's; the rest are
    // inherited (same function pointers as the level below).
    let s = scalar();
    for kt in tables() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
            GgmlType::Q4K,
            GgmlType::Q6K,
            GgmlType::F16,
        ] {
            assert!(
                kt.of(ty).vec_dot as usize != s.of(ty).vec_dot as usize,
                "{} {ty}",
                kt.isa()
            );
        }
        for ty in [GgmlType::Q8_0, GgmlType::Q8_1, GgmlType::Q8K] {
            assert!(
                kt.of(ty).from_float as usize != s.of(ty).from_float as usize,
                "{} {ty}",
                kt.isa()
            );
        }
        for ty in NEW_TYPES {
            assert!(
                kt.of(ty).vec_dot as usize != s.of(ty).vec_dot as usize,
                "{} {ty}",
                kt.isa()
            );
        }
        assert_eq!(
            kt.of(GgmlType::Q8_1).vec_dot as usize,
            s.of(GgmlType::Q8_1).vec_dot as usize
        );
    }
    // Every level above NEON has its own `sdot` kernel, except Q3_K (its
    // scale changes every 16 elements: see `kquants`).
    let neon = Kernels::for_isa(Isa::Neon).unwrap();
    for kt in tables().into_iter().skip(1) {
        for ty in NEW_TYPES {
            let same = kt.of(ty).vec_dot as usize == neon.of(ty).vec_dot as usize;
            assert_eq!(same, ty == GgmlType::Q3K, "{} {ty}", kt.isa());
        }
    }
}

// ---------------------------------------------------------------------------
// Q5_0, Q5_1, Q2_K, Q3_K, Q5_K and the grid i-quants: bit-identical.
// ---------------------------------------------------------------------------

const NEW_TYPES: [GgmlType; 12] = [
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q5K,
    GgmlType::IQ2XXS,
    GgmlType::IQ2XS,
    GgmlType::IQ2S,
    GgmlType::IQ3XXS,
    GgmlType::IQ3S,
    GgmlType::IQ1S,
    GgmlType::IQ1M,
];

/// `vec_dot` of type `ty` at every level against the scalar `reference`,
/// bit for bit, on `cases` pairs of rows from `wx` / `ay` (given the rng,
/// the block count and the case number), 0..=`max_blocks` blocks.
fn check_bits<X: bytemuck::Pod, Y: bytemuck::Pod>(
    ty: GgmlType,
    cases: usize,
    max_blocks: usize,
    mut wx: impl FnMut(&mut Rng, usize, usize) -> Vec<X>,
    mut ay: impl FnMut(&mut Rng, usize, usize) -> Vec<Y>,
    reference: fn(&[X], &[Y]) -> f32,
) {
    let mut rng = Rng(0x5eed ^ ty as u64);
    for case in 0..cases {
        let nb = case % (max_blocks + 1);
        let x = wx(&mut rng, nb, case);
        let y = ay(&mut rng, nb, case);
        let want = reference(&x, &y);
        for kt in tables() {
            let got = (kt.of(ty).vec_dot)(bytes(&x), bytes(&y));
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{} {ty} case {case} ({nb} blocks): {got:e} vs scalar {want:e}",
                kt.isa()
            );
        }
    }
}

/// Q8_0 activations: quantized rows, or raw blocks (−128 included).
fn q8_0_acts(r: &mut Rng, nb: usize, case: usize) -> Vec<BlockQ8_0> {
    if case % 4 == 3 {
        raw_blocks(r, nb, |r, b: &mut BlockQ8_0| b.d = r.scale())
    } else {
        quantize(l::quantize_row_q8_0, &row(r, nb * 32, case / 2), 32)
    }
}

/// Q8_1 activations: quantized rows, or raw blocks (−128, any `s`).
fn q8_1_acts(r: &mut Rng, nb: usize, case: usize) -> Vec<BlockQ8_1> {
    if case % 4 == 3 {
        raw_blocks(r, nb, |r, b: &mut BlockQ8_1| {
            (b.d, b.s) = (r.scale(), r.scale())
        })
    } else {
        quantize(l::quantize_row_q8_1, &row(r, nb * 32, case / 2), 32)
    }
}

/// Q8_K activations: quantized rows (−127..=127), raw blocks (−128, `bsums`
/// that need not match: the kernels must use them as the scalar code does),
/// or all −128 with their true sums.
fn q8k_acts(r: &mut Rng, nb: usize, case: usize) -> Vec<BlockQ8K> {
    match case % 5 {
        3 => raw_blocks(r, nb, |r, b: &mut BlockQ8K| b.d = r.scale().to_f32()),
        4 => raw_blocks(r, nb, |r, b: &mut BlockQ8K| {
            b.d = r.scale().to_f32();
            b.qs = [-128; QK_K];
            b.bsums = [-128 * 16; QK_K / 16];
        }),
        _ => q8k_row(r, nb, case / 2),
    }
}

#[test]
fn vec_dot_q5_0_bit_identical() {
    check_bits(
        GgmlType::Q5_0,
        150,
        17,
        |r, nb, case| match case % 3 {
            0 => quantize(l::quantize_row_q5_0, &row(r, nb * 32, case), 32),
            1 => raw_blocks(r, nb, |r, b: &mut BlockQ5_0| b.d = r.scale()),
            // All fifth bits and nibbles set or clear: the extremes 15, −16.
            _ => raw_blocks(r, nb, |r, b: &mut BlockQ5_0| {
                let v = if r.u64() & 1 == 0 { 0xff } else { 0 };
                (b.d, b.qh, b.qs) = (r.scale(), [v; 4], [v; 16]);
            }),
        },
        q8_0_acts,
        l::vec_dot_q5_0_q8_0,
    );
}

#[test]
fn vec_dot_q5_1_bit_identical() {
    check_bits(
        GgmlType::Q5_1,
        150,
        17,
        |r, nb, case| match case % 3 {
            0 => quantize(l::quantize_row_q5_1, &row(r, nb * 32, case), 32),
            1 => raw_blocks(r, nb, |r, b: &mut BlockQ5_1| {
                (b.d, b.m) = (r.scale(), r.scale())
            }),
            _ => raw_blocks(r, nb, |r, b: &mut BlockQ5_1| {
                (b.d, b.m, b.qh, b.qs) = (r.scale(), r.scale(), [0xff; 4], [0xff; 16]);
            }),
        },
        q8_1_acts,
        l::vec_dot_q5_1_q8_1,
    );
}

#[test]
fn vec_dot_q2_k_bit_identical() {
    check_bits(
        GgmlType::Q2K,
        60,
        5,
        |r, nb, case| match case % 3 {
            0 => quantize(k::quantize_row_q2_k, &row(r, nb * QK_K, case), QK_K),
            1 => raw_blocks(r, nb, |r, b: &mut BlockQ2K| {
                (b.d, b.dmin) = (r.scale(), r.scale())
            }),
            // All-max scales and mins, all values 3, negative `dmin`.
            _ => raw_blocks(r, nb, |r, b: &mut BlockQ2K| {
                (b.scales, b.qs) = ([0xff; 16], [0xff; 64]);
                (b.d, b.dmin) = (r.scale(), f16::from_f32(-r.f32().abs()));
            }),
        },
        q8k_acts,
        k::vec_dot_q2_k_q8_k,
    );
}

#[test]
fn vec_dot_q3_k_bit_identical() {
    check_bits(
        GgmlType::Q3K,
        60,
        5,
        |r, nb, case| match case % 3 {
            0 => quantize(k::quantize_row_q3_k, &row(r, nb * QK_K, case), QK_K),
            1 => raw_blocks(r, nb, |r, b: &mut BlockQ3K| b.d = r.scale()),
            // Scales 63 − 32 and values −4 (no high bits), or scale −32.
            _ => raw_blocks(r, nb, |r, b: &mut BlockQ3K| {
                let v = if r.u64() & 1 == 0 { 0xff } else { 0 };
                (b.scales, b.qs, b.hmask) = ([v; 12], [0; 64], [0; 32]);
                b.d = r.scale();
            }),
        },
        q8k_acts,
        k::vec_dot_q3_k_q8_k,
    );
}

#[test]
fn vec_dot_q5_k_bit_identical() {
    check_bits(
        GgmlType::Q5K,
        60,
        5,
        |r, nb, case| match case % 3 {
            0 => quantize(k::quantize_row_q5_k, &row(r, nb * QK_K, case), QK_K),
            1 => raw_blocks(r, nb, |r, b: &mut BlockQ5K| {
                (b.d, b.dmin) = (r.scale(), r.scale())
            }),
            // All-max scales, mins and values (31), negative `dmin`.
            _ => raw_blocks(r, nb, |r, b: &mut BlockQ5K| {
                (b.scales, b.qs, b.qh) = ([0xff; 12], [0xff; 128], [0xff; 32]);
                (b.d, b.dmin) = (r.scale(), f16::from_f32(-r.f32().abs()));
            }),
        },
        q8k_acts,
        k::vec_dot_q5_k_q8_k,
    );
}

/// Raw grid blocks (every index, sign and scale pattern) with a finite `d`,
/// or all bytes 0xff (largest indices and scales, every sign set).
fn grid_blocks<B: bytemuck::Pod>(
    r: &mut Rng,
    nb: usize,
    case: usize,
    set_d: impl Fn(&mut B, f16),
) -> Vec<B> {
    raw_blocks(r, nb, |r, b: &mut B| {
        if case % 4 == 1 {
            bytemuck::bytes_of_mut(b).fill(0xff);
        }
        set_d(b, r.scale());
    })
}

macro_rules! grid_test {
    ($name:ident, $ty:expr, $b:ty, $dot:path) => {
        #[test]
        fn $name() {
            check_bits(
                $ty,
                40,
                4,
                |r, nb, case| grid_blocks(r, nb, case, |b: &mut $b, d| b.d = d),
                q8k_acts,
                $dot,
            );
        }
    };
}

grid_test!(
    vec_dot_iq2_xxs_bit_identical,
    GgmlType::IQ2XXS,
    BlockIQ2XXS,
    g::vec_dot_iq2_xxs_q8_k
);
grid_test!(
    vec_dot_iq2_xs_bit_identical,
    GgmlType::IQ2XS,
    BlockIQ2XS,
    g::vec_dot_iq2_xs_q8_k
);
grid_test!(
    vec_dot_iq2_s_bit_identical,
    GgmlType::IQ2S,
    BlockIQ2S,
    g::vec_dot_iq2_s_q8_k
);
grid_test!(
    vec_dot_iq3_xxs_bit_identical,
    GgmlType::IQ3XXS,
    BlockIQ3XXS,
    g::vec_dot_iq3_xxs_q8_k
);
grid_test!(
    vec_dot_iq3_s_bit_identical,
    GgmlType::IQ3S,
    BlockIQ3S,
    g::vec_dot_iq3_s_q8_k
);
grid_test!(
    vec_dot_iq1_s_bit_identical,
    GgmlType::IQ1S,
    BlockIQ1S,
    g::vec_dot_iq1_s_q8_k
);

#[test]
fn vec_dot_iq1_m_bit_identical() {
    // IQ1_M's f16 `d` is spread over the top nibbles of its four u16 scales.
    let set_d = |b: &mut BlockIQ1M, d: f16| {
        let u = d.to_bits();
        for i in 0..4 {
            let nib = ((u >> (4 * i)) & 0xf) as u8;
            b.scales[2 * i + 1] = (b.scales[2 * i + 1] & 0x0f) | (nib << 4);
        }
    };
    check_bits(
        GgmlType::IQ1M,
        40,
        4,
        |r, nb, case| grid_blocks(r, nb, case, set_d),
        q8k_acts,
        g::vec_dot_iq1_m_q8_k,
    );
}

/// Grid blocks from the quantizers (with importance weights, which IQ2_XXS,
/// IQ2_XS and IQ1_S require), against the scalar table's `vec_dot`.
#[test]
fn vec_dot_quantized_grid_bit_identical() {
    let mut rng = Rng(19);
    for case in 0..4 {
        let nb = 1 + case % 2;
        let x = row(&mut rng, nb * QK_K, case);
        let w: Vec<f32> = (0..x.len()).map(|_| rng.f32().abs() + 0.1).collect();
        let y = q8k_row(&mut rng, nb, case);
        for &ty in &NEW_TYPES[5..] {
            // u16 storage keeps the blocks aligned for the byte-level entries.
            let mut q = vec![0u16; ty.row_size(x.len()).unwrap() / 2];
            g::quantize_weighted(ty, &x, bytemuck::cast_slice_mut(&mut q), Some(&w)).unwrap();
            let want = (scalar().of(ty).vec_dot)(bytes(&q), bytes(&y));
            for kt in tables() {
                let got = (kt.of(ty).vec_dot)(bytes(&q), bytes(&y));
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{} {ty} case {case}",
                    kt.isa()
                );
            }
        }
    }
}
