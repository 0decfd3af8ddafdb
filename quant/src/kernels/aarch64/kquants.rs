//! Q2_K, Q3_K and Q5_K · Q8_K at the baseline NEON and dotprod levels.
//!
//! The bit layouts are unpacked as in ggml's arm `ggml_vec_dot_q2_K_q8_K` /
//! `_q3_K_` / `_q5_K_` (2-bit fields by shifts of 32 `qs` bytes, high bits
//! from `hmask` / `qh` one bit plane per 32 elements), but the float side is
//! the scalar twin's ([`crate::formats::k_quants`]), the canonical form of
//! [`crate::kernels`]: each super-block's exact integer sums (scaled quants ×
//! activations, mins × activation sums) become one f64 value through
//! `block_value`, summed over the row in f64 and rounded to f32 once, so
//! every result is bit-identical to the scalar `vec_dot`. The integer sums
//! come from `smull`/`sadalp` or `sdot` in any lane order (they are exact);
//! Q3_K's 6-bit scale changes every 16 elements and its values fit `smull`
//! pairs, so its dotprod level keeps the NEON kernel.

use super::{f16_to_f32, q4k_scales_mins, sdot};
use crate::blocks::*;
use crate::formats::k_quants::common::block_value;
use crate::types::QK_K;
use core::arch::aarch64::*;

// ---------------------------------------------------------------------------
// Q2_K
// ---------------------------------------------------------------------------

/// The 2-bit values of 128 elements (32 `qs` bytes): vector `2s + k` holds
/// elements `32s + 16k .. 32s + 16k + 16`, which share 16-group scale
/// `2s + k` of this half.
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
unsafe fn unpack_2bit(qs: &[u8]) -> [uint8x16_t; 8] {
    assert!(qs.len() >= 32);
    // SAFETY: two 16-byte loads of the 32 bytes just checked.
    unsafe {
        let q0 = vld1q_u8(qs.as_ptr());
        let q1 = vld1q_u8(qs.as_ptr().add(16));
        let m3 = vdupq_n_u8(3);
        [
            vandq_u8(q0, m3),
            vandq_u8(q1, m3),
            vandq_u8(vshrq_n_u8::<2>(q0), m3),
            vandq_u8(vshrq_n_u8::<2>(q1), m3),
            vandq_u8(vshrq_n_u8::<4>(q0), m3),
            vandq_u8(vshrq_n_u8::<4>(q1), m3),
            vshrq_n_u8::<6>(q0),
            vshrq_n_u8::<6>(q1),
        ]
    }
}

/// Q2_K's super-block value (the canonical f64 form).
#[inline(always)]
fn q2k_block_value(xb: &BlockQ2K, yb: &BlockQ8K, isum: i32, summs: i32) -> f64 {
    block_value(f16_to_f32(xb.d), f16_to_f32(xb.dmin), yb.d, isum, summs)
}

/// `Σ_j bsums[j]·(scales[j] >> 4)` of a Q2_K block.
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
unsafe fn q2k_summs(xb: &BlockQ2K, yb: &BlockQ8K) -> i32 {
    // SAFETY: a 16-byte load of `scales`, two 8-lane loads of `bsums`.
    unsafe {
        let mins = vshrq_n_u8::<4>(vld1q_u8(xb.scales.as_ptr()));
        let m0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(mins)));
        let m1 = vreinterpretq_s16_u16(vmovl_high_u8(mins));
        let b0 = vld1q_s16(yb.bsums.as_ptr());
        let b1 = vld1q_s16(yb.bsums.as_ptr().add(8));
        let acc = vmull_s16(vget_low_s16(b0), vget_low_s16(m0));
        let acc = vmlal_high_s16(acc, b0, m0);
        let acc = vmlal_s16(acc, vget_low_s16(b1), vget_low_s16(m1));
        let acc = vmlal_high_s16(acc, b1, m1);
        vaddvq_s32(acc)
    }
}

/// Q2_K × Q8_K, baseline NEON: per 16-group, `smull` pairs (≤ 2·3·128 per
/// i16 lane) widened by the 4-bit scale into i32.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn vec_dot_q2_k_q8_k(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sum = 0.0f64;
    for (xb, yb) in x.iter().zip(y) {
        // SAFETY: NEON is baseline; for h < 2, 32 bytes of `qs` at 32h and
        // 16-byte loads of the 256-byte Q8_K `qs` at 128h + 16k.
        let (isum, summs) = unsafe {
            let mut acc = vdupq_n_s32(0);
            for h in 0..QK_K / 128 {
                let v = unpack_2bit(&xb.qs[32 * h..]);
                for (k, v) in v.iter().enumerate() {
                    let v = vreinterpretq_s8_u8(*v);
                    let a = vld1q_s8(yb.qs.as_ptr().add(128 * h + 16 * k));
                    let p = vmull_s8(vget_low_s8(v), vget_low_s8(a));
                    let p = vmlal_high_s8(p, v, a);
                    let s = (xb.scales[8 * h + k] & 0xf) as i16;
                    acc = vmlal_n_s16(acc, vget_low_s16(p), s);
                    acc = vmlal_high_n_s16(acc, p, s);
                }
            }
            (vaddvq_s32(acc), q2k_summs(xb, yb))
        };
        sum += q2k_block_value(xb, yb, isum, summs);
    }
    sum as f32
}

/// Q2_K × Q8_K with one `sdot` per 16-group.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn vec_dot_q2_k_q8_k_dotprod(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sum = 0.0f64;
    for (xb, yb) in x.iter().zip(y) {
        // SAFETY: as in `vec_dot_q2_k_q8_k`; `sdot` needs dotprod (enabled).
        let (isum, summs) = unsafe {
            let mut acc = vdupq_n_s32(0);
            for h in 0..QK_K / 128 {
                let v = unpack_2bit(&xb.qs[32 * h..]);
                for (k, v) in v.iter().enumerate() {
                    let a = vld1q_s8(yb.qs.as_ptr().add(128 * h + 16 * k));
                    let p = sdot!(vdupq_n_s32(0), vreinterpretq_s8_u8(*v), a);
                    acc = vmlaq_n_s32(acc, p, (xb.scales[8 * h + k] & 0xf) as i32);
                }
            }
            (vaddvq_s32(acc), q2k_summs(xb, yb))
        };
        sum += q2k_block_value(xb, yb, isum, summs);
    }
    sum as f32
}

// ---------------------------------------------------------------------------
// Q3_K and Q5_K
// ---------------------------------------------------------------------------

/// `acc + scale · Σ_{16 elements} a·b`, element `8k + i` into lane `i` of
/// the pair `(lanes 0..4, lanes 4..8)`; each i16 lane holds two products
/// (|a| ≤ 32, so ≤ 2·32·128 = 2^13).
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
unsafe fn lanes16(
    acc: (int32x4_t, int32x4_t),
    a: int8x16_t,
    b: int8x16_t,
    scale: i16,
) -> (int32x4_t, int32x4_t) {
    // SAFETY: register arithmetic only.
    unsafe {
        let p = vmlal_high_s8(vmull_s8(vget_low_s8(a), vget_low_s8(b)), a, b);
        (
            vmlal_n_s16(acc.0, vget_low_s16(p), scale),
            vmlal_high_n_s16(acc.1, p, scale),
        )
    }
}

/// The exact integer total of the eight i32 lanes.
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
unsafe fn lanes_total(lanes: (int32x4_t, int32x4_t)) -> i32 {
    // SAFETY: register arithmetic only.
    unsafe { vaddvq_s32(vaddq_s32(lanes.0, lanes.1)) }
}

/// The sixteen 6-bit Q3_K scales minus 32 (ggml's `scale6`, four at a time
/// on little-endian words).
#[inline(always)]
fn q3k_scales(s: &[u8; 12]) -> [i8; 16] {
    const M1: u32 = 0x0303_0303;
    const M2: u32 = 0x0f0f_0f0f;
    let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (a0, a1, a2) = (w(0), w(1), w(2));
    let words = [
        (a0 & M2) | ((a2 & M1) << 4),
        (a1 & M2) | (((a2 >> 2) & M1) << 4),
        ((a0 >> 4) & M2) | (((a2 >> 4) & M1) << 4),
        ((a1 >> 4) & M2) | (((a2 >> 6) & M1) << 4),
    ];
    let mut out = [0i8; 16];
    for (o, w) in out.chunks_exact_mut(4).zip(words) {
        for (o, b) in o.iter_mut().zip(w.to_le_bytes()) {
            *o = b as i8 - 32;
        }
    }
    out
}

/// Q3_K × Q8_K, baseline NEON (every level): the signed values
/// `q2 − 4·(1 − h)` (−4..=3) times the activations into eight i32 lanes,
/// each 16-group weighted by its 6-bit scale − 32.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn vec_dot_q3_k_q8_k(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    // SAFETY: NEON is baseline; for h < 2, 32 bytes of `qs` at 32h, the
    // 32-byte `hmask`, and 16-byte loads of the 256-byte Q8_K `qs` at
    // 128h + 16k.
    unsafe {
        let mut sum = 0.0f64;
        for (xb, yb) in x.iter().zip(y) {
            let sc = q3k_scales(&xb.scales);
            let hm = [
                vld1q_u8(xb.hmask.as_ptr()),
                vld1q_u8(xb.hmask.as_ptr().add(16)),
            ];
            let m4 = vdupq_n_u8(4);
            let mut lanes = (vdupq_n_s32(0), vdupq_n_s32(0));
            for h in 0..QK_K / 128 {
                let v = unpack_2bit(&xb.qs[32 * h..]);
                for (k, v) in v.iter().enumerate() {
                    // Element 128h + 32s + l has its high bit at bit 4h + s
                    // of hmask[l]; vector k covers s = k / 2, l in 16(k % 2)..
                    let bit = vdupq_n_u8(1 << (4 * h + k / 2));
                    let set = vtstq_u8(hm[k % 2], bit);
                    // q − 4 where the bit is clear: subtract 4 & !set.
                    let q = vsubq_u8(*v, vbicq_u8(m4, set));
                    let a = vld1q_s8(yb.qs.as_ptr().add(128 * h + 16 * k));
                    lanes = lanes16(lanes, vreinterpretq_s8_u8(q), a, sc[8 * h + k] as i16);
                }
            }
            sum += block_value(f16_to_f32(xb.d), 0.0, yb.d, lanes_total(lanes), 0);
        }
        sum as f32
    }
}

/// The 32 values of 32-group `2j` (`.0`, `.1`: elements 0..16, 16..32) and
/// `2j + 1` (`.2`, `.3`) of a Q5_K block; `qh` is the 32-byte high-bit
/// array, already shifted right by `2j`.
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
unsafe fn q5k_values(qs: &[u8], qh: [uint8x16_t; 2]) -> [int8x16_t; 4] {
    assert!(qs.len() >= 32);
    // SAFETY: two 16-byte loads of the 32 bytes just checked.
    unsafe {
        let q0 = vld1q_u8(qs.as_ptr());
        let q1 = vld1q_u8(qs.as_ptr().add(16));
        let m4 = vdupq_n_u8(0x0f);
        let m10 = vdupq_n_u8(0x10);
        let lo = |q: uint8x16_t, h: uint8x16_t| {
            vreinterpretq_s8_u8(vorrq_u8(vandq_u8(q, m4), vandq_u8(vshlq_n_u8::<4>(h), m10)))
        };
        let hi = |q: uint8x16_t, h: uint8x16_t| {
            vreinterpretq_s8_u8(vorrq_u8(
                vshrq_n_u8::<4>(q),
                vandq_u8(vshlq_n_u8::<3>(h), m10),
            ))
        };
        [lo(q0, qh[0]), lo(q1, qh[1]), hi(q0, qh[0]), hi(q1, qh[1])]
    }
}

/// Q5_K's super-block value from its exact scaled-quant sum `s` (the
/// canonical f64 form, with the min correction `Σ mins·bsums`).
///
/// # Safety
/// NEON (always present on aarch64).
#[inline(always)]
unsafe fn q5k_block_value(xb: &BlockQ5K, yb: &BlockQ8K, mins: &[u8; 8], s: i32) -> f64 {
    // SAFETY: reads the blocks' own arrays.
    let m = unsafe { super::neon::q4k_mins_dot(mins, yb) };
    block_value(f16_to_f32(xb.d), f16_to_f32(xb.dmin), yb.d, s, m)
}

/// Q5_K × Q8_K, baseline NEON: 5-bit values (0..=31) into eight i32
/// lanes (four products per i16 lane: ≤ 4·31·128 < 2^15), each 32-group
/// weighted by its 6-bit scale.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn vec_dot_q5_k_q8_k(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sum = 0.0f64;
    // SAFETY: NEON is baseline; 32-byte loads of `qh`, of `qs` at 32j and
    // 16-byte loads of the 256-byte Q8_K `qs` at 64j + 16k.
    unsafe {
        for (xb, yb) in x.iter().zip(y) {
            let (sc, mn) = q4k_scales_mins(&xb.scales);
            let mut qh = [vld1q_u8(xb.qh.as_ptr()), vld1q_u8(xb.qh.as_ptr().add(16))];
            let mut lanes = (vdupq_n_s32(0), vdupq_n_s32(0));
            for j in 0..QK_K / 64 {
                let v = q5k_values(&xb.qs[32 * j..], qh);
                let a = vld1q_s8_x4(yb.qs.as_ptr().add(64 * j));
                let p = vmull_s8(vget_low_s8(v[0]), vget_low_s8(a.0));
                let p = vmlal_high_s8(p, v[0], a.0);
                let p = vmlal_s8(p, vget_low_s8(v[1]), vget_low_s8(a.1));
                let p = vmlal_high_s8(p, v[1], a.1);
                let s = sc[2 * j] as i16;
                lanes.0 = vmlal_n_s16(lanes.0, vget_low_s16(p), s);
                lanes.1 = vmlal_high_n_s16(lanes.1, p, s);
                let p = vmull_s8(vget_low_s8(v[2]), vget_low_s8(a.2));
                let p = vmlal_high_s8(p, v[2], a.2);
                let p = vmlal_s8(p, vget_low_s8(v[3]), vget_low_s8(a.3));
                let p = vmlal_high_s8(p, v[3], a.3);
                let s = sc[2 * j + 1] as i16;
                lanes.0 = vmlal_n_s16(lanes.0, vget_low_s16(p), s);
                lanes.1 = vmlal_high_n_s16(lanes.1, p, s);
                qh = [vshrq_n_u8::<2>(qh[0]), vshrq_n_u8::<2>(qh[1])];
            }
            sum += q5k_block_value(xb, yb, &mn, lanes_total(lanes));
        }
        sum as f32
    }
}

/// Q5_K × Q8_K with one `sdot` per 16 elements.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn vec_dot_q5_k_q8_k_dotprod(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sum = 0.0f64;
    // SAFETY: as in `vec_dot_q5_k_q8_k`; `sdot` needs dotprod, which this
    // function enables.
    unsafe {
        for (xb, yb) in x.iter().zip(y) {
            let (sc, mn) = q4k_scales_mins(&xb.scales);
            let mut qh = [vld1q_u8(xb.qh.as_ptr()), vld1q_u8(xb.qh.as_ptr().add(16))];
            let mut lanes = (vdupq_n_s32(0), vdupq_n_s32(0));
            for j in 0..QK_K / 64 {
                let v = q5k_values(&xb.qs[32 * j..], qh);
                let a = vld1q_s8_x4(yb.qs.as_ptr().add(64 * j));
                for (g, (w, a)) in [((v[0], v[1]), (a.0, a.1)), ((v[2], v[3]), (a.2, a.3))]
                    .into_iter()
                    .enumerate()
                {
                    let s = sc[2 * j + g] as i32;
                    lanes.0 = vmlaq_n_s32(lanes.0, sdot!(vdupq_n_s32(0), w.0, a.0), s);
                    lanes.1 = vmlaq_n_s32(lanes.1, sdot!(vdupq_n_s32(0), w.1, a.1), s);
                }
                qh = [vshrq_n_u8::<2>(qh[0]), vshrq_n_u8::<2>(qh[1])];
            }
            sum += q5k_block_value(xb, yb, &mn, lanes_total(lanes));
        }
        sum as f32
    }
}
