//! NEON + i8mm kernels: `smmla` multiplies a 2×8 int8 matrix by an 8×2 one
//! (32 multiply-adds into a 2×2 i32 tile).
//!
//! These compute a 2×2 tile of dot products, two weight rows × two activation
//! rows (ggml's `nrc == 2` path): `out[i][j] = x[i] · y[j]`, every product
//! used. A one-row `vec_dot` has no second activation row and would waste half
//! of each `smmla`, so the table keeps the `sdot` kernels (see the parent
//! module's docs); a batched matmul can call these for pairs of rows.
//!
//! Lane layout: with `a = [x0 bytes 0..8 | x1 bytes 0..8]` and
//! `b = [y0 bytes 0..8 | y1 bytes 0..8]`, `smmla` adds
//! `[x0·y0, x0·y1, x1·y0, x1·y1]` (eight-byte partial dots) to its lanes, so
//! a block's bytes are interleaved eight at a time between the two rows.

use super::{f16_to_f32, smmla};
use crate::blocks::*;
use core::arch::aarch64::*;

/// `[a.lo64, b.lo64]` and `[a.hi64, b.hi64]`: two rows' bytes as the 2×8
/// operands `smmla` takes.
macro_rules! zip64 {
    ($a:expr, $b:expr) => {{
        let (a, b) = (vreinterpretq_s64_s8($a), vreinterpretq_s64_s8($b));
        (
            vreinterpretq_s8_s64(vzip1q_s64(a, b)),
            vreinterpretq_s8_s64(vzip2q_s64(a, b)),
        )
    }};
}

/// `[dx0·dy0, dx0·dy1, dx1·dy0, dx1·dy1]`, the scales of a 2×2 tile.
#[inline(always)]
fn tile_scale(dx: [f32; 2], dy: [f32; 2]) -> [f32; 4] {
    [dx[0] * dy[0], dx[0] * dy[1], dx[1] * dy[0], dx[1] * dy[1]]
}

#[inline(always)]
fn tile_out(v: [f32; 4]) -> [[f32; 2]; 2] {
    [[v[0], v[1]], [v[2], v[3]]]
}

#[track_caller]
fn check_lens<A, B>(x: &[&[A]; 2], y: &[&[B]; 2]) -> usize {
    let n = x[0].len();
    assert!(
        x[1].len() == n && y[0].len() == n && y[1].len() == n,
        "vec_dot_2rows: block count mismatch"
    );
    n
}

/// Two Q8_0 weight rows × two Q8_0 activation rows: `out[i][j] = x[i]·y[j]`.
#[target_feature(enable = "neon,i8mm")]
pub(crate) unsafe fn vec_dot_q8_0_q8_0_2rows(
    x: [&[BlockQ8_0]; 2],
    y: [&[BlockQ8_0]; 2],
) -> [[f32; 2]; 2] {
    let n = check_lens(&x, &y);
    /// The 2×2 integer tile of block `i` and its scales.
    macro_rules! tile {
        ($i:expr) => {{
            let i = $i;
            let (x0, x1, y0, y1) = (&x[0][i], &x[1][i], &y[0][i], &y[1][i]);
            let (xl0, xl1) = zip64!(vld1q_s8(x0.qs.as_ptr()), vld1q_s8(x1.qs.as_ptr()));
            let (xh0, xh1) = zip64!(
                vld1q_s8(x0.qs.as_ptr().add(16)),
                vld1q_s8(x1.qs.as_ptr().add(16))
            );
            let (yl0, yl1) = zip64!(vld1q_s8(y0.qs.as_ptr()), vld1q_s8(y1.qs.as_ptr()));
            let (yh0, yh1) = zip64!(
                vld1q_s8(y0.qs.as_ptr().add(16)),
                vld1q_s8(y1.qs.as_ptr().add(16))
            );
            let t = smmla!(vdupq_n_s32(0), xl0, yl0);
            let t = smmla!(t, xl1, yl1);
            let t = smmla!(t, xh0, yh0);
            let t = smmla!(t, xh1, yh1);
            let s = tile_scale(
                [f16_to_f32(x0.d), f16_to_f32(x1.d)],
                [f16_to_f32(y0.d), f16_to_f32(y1.d)],
            );
            (t, vld1q_f32(s.as_ptr()))
        }};
    }
    let mut out = [0.0f32; 4];
    // SAFETY: `i < n` indexes every row (all four have n blocks, checked);
    // loads read 2×16 of each block's 32-byte `qs` and the 4-float scale
    // array; the store writes the 4-float `out`; `smmla` needs i8mm, which
    // this function enables.
    unsafe {
        let mut acc0 = vdupq_n_f32(0.0);
        let mut acc1 = vdupq_n_f32(0.0);
        let mut i = 0;
        while i + 1 < n {
            let (t0, s0) = tile!(i);
            let (t1, s1) = tile!(i + 1);
            acc0 = vfmaq_f32(acc0, vcvtq_f32_s32(t0), s0);
            acc1 = vfmaq_f32(acc1, vcvtq_f32_s32(t1), s1);
            i += 2;
        }
        if i < n {
            let (t, s) = tile!(i);
            acc0 = vfmaq_f32(acc0, vcvtq_f32_s32(t), s);
        }
        vst1q_f32(out.as_mut_ptr(), vaddq_f32(acc0, acc1));
    }
    tile_out(out)
}

/// Two Q4_0 weight rows × two Q8_0 activation rows: `out[i][j] = x[i]·y[j]`.
#[target_feature(enable = "neon,i8mm")]
pub(crate) unsafe fn vec_dot_q4_0_q8_0_2rows(
    x: [&[BlockQ4_0]; 2],
    y: [&[BlockQ8_0]; 2],
) -> [[f32; 2]; 2] {
    let n = check_lens(&x, &y);
    macro_rules! tile {
        ($i:expr) => {{
            let i = $i;
            let (x0, x1, y0, y1) = (&x[0][i], &x[1][i], &y[0][i], &y[1][i]);
            let m4 = vdupq_n_u8(0x0f);
            let s8 = vdupq_n_s8(8);
            let q0 = vld1q_u8(x0.qs.as_ptr());
            let q1 = vld1q_u8(x1.qs.as_ptr());
            // Values 0..16 (low nibbles) and 16..32 (high nibbles), minus 8.
            let lo0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q0, m4)), s8);
            let lo1 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q1, m4)), s8);
            let hi0 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(q0)), s8);
            let hi1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(q1)), s8);
            let (xl0, xl1) = zip64!(lo0, lo1);
            let (xh0, xh1) = zip64!(hi0, hi1);
            let (yl0, yl1) = zip64!(vld1q_s8(y0.qs.as_ptr()), vld1q_s8(y1.qs.as_ptr()));
            let (yh0, yh1) = zip64!(
                vld1q_s8(y0.qs.as_ptr().add(16)),
                vld1q_s8(y1.qs.as_ptr().add(16))
            );
            let t = smmla!(vdupq_n_s32(0), xl0, yl0);
            let t = smmla!(t, xl1, yl1);
            let t = smmla!(t, xh0, yh0);
            let t = smmla!(t, xh1, yh1);
            let s = tile_scale(
                [f16_to_f32(x0.d), f16_to_f32(x1.d)],
                [f16_to_f32(y0.d), f16_to_f32(y1.d)],
            );
            (t, vld1q_f32(s.as_ptr()))
        }};
    }
    let mut out = [0.0f32; 4];
    // SAFETY: `i < n` indexes every row (all four have n blocks, checked);
    // loads read each block's own `qs` (16 bytes of Q4_0, 2×16 of Q8_0) and
    // the 4-float scale array; the store writes the 4-float `out`; `smmla`
    // needs i8mm, which this function enables.
    unsafe {
        let mut acc0 = vdupq_n_f32(0.0);
        let mut acc1 = vdupq_n_f32(0.0);
        let mut i = 0;
        while i + 1 < n {
            let (t0, s0) = tile!(i);
            let (t1, s1) = tile!(i + 1);
            acc0 = vfmaq_f32(acc0, vcvtq_f32_s32(t0), s0);
            acc1 = vfmaq_f32(acc1, vcvtq_f32_s32(t1), s1);
            i += 2;
        }
        if i < n {
            let (t, s) = tile!(i);
            acc0 = vfmaq_f32(acc0, vcvtq_f32_s32(t), s);
        }
        vst1q_f32(out.as_mut_ptr(), vaddq_f32(acc0, acc1));
    }
    tile_out(out)
}
