//! Q2_K: 2-bit quants in 16 groups of 16, each with a 4-bit scale and a
//! 4-bit min; `x = d·sc·q − dmin·m` (2.625 bits per weight).

use super::common::{
    SEARCH_QKX3, ScaleSearch, block_value, make_qkx2_quants, make_qp_quants, nearest_int,
    pack_2bit, sqrtf, unpack_2bit,
};
use crate::blocks::{BlockQ2K, BlockQ8K};
use crate::formats::check_len;
use crate::types::QK_K;
use half::f16;

/// ggml's `q4scale`: the largest 4-bit group scale or min.
const Q4SCALE: f32 = 15.0;

/// The search of `quantize_row_q2_K_ref`: 16 steps, absolute error.
const SEARCH: ScaleSearch = ScaleSearch {
    rmin: -0.5,
    rdelta: 0.1,
    nstep: 15,
    use_mad: true,
};

/// ggml's `quantize_row_q2_K_ref`.
pub fn quantize_row_q2_k(x: &[f32], y: &mut [BlockQ2K]) {
    check_len(y.len(), QK_K, x.len());
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        quantize_block(xb, yb);
    }
}

fn quantize_block(x: &[f32], y: &mut BlockQ2K) {
    let mut levels = [0u8; QK_K];
    let mut scratch = [0u8; 16];
    let mut weights = [0.0f32; 16];
    let mut scales = [0.0f32; QK_K / 16];
    let mut mins = [0.0f32; QK_K / 16];
    // Subtracting the min makes every scale non-negative.
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for (j, xg) in x.chunks_exact(16).enumerate() {
        for (w, &v) in weights.iter_mut().zip(xg) {
            *w = v.abs();
        }
        let lg = &mut levels[16 * j..16 * (j + 1)];
        let (scale, min) = make_qkx2_quants(3, xg, &weights, lg, &mut scratch, SEARCH);
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }

    if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for (s, &scale) in y.scales.iter_mut().zip(&scales) {
            *s = nearest_int(iscale * scale) as u8;
        }
        y.d = f16::from_f32(max_scale / Q4SCALE);
    } else {
        y.scales = [0; QK_K / 16];
        y.d = f16::from_f32(0.0);
    }
    if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for (s, &min) in y.scales.iter_mut().zip(&mins) {
            *s |= (nearest_int(iscale * min) << 4) as u8;
        }
        y.dmin = f16::from_f32(max_min / Q4SCALE);
    } else {
        y.dmin = f16::from_f32(0.0);
    }

    // Requantize with the rounded scales; groups with a zero scale keep the
    // quants of the search.
    let (d, dmin) = (y.d.to_f32(), y.dmin.to_f32());
    for (j, xg) in x.chunks_exact(16).enumerate() {
        let dg = d * (y.scales[j] & 0xf) as f32;
        if dg == 0.0 {
            continue;
        }
        let dm = dmin * (y.scales[j] >> 4) as f32;
        for (q, &v) in levels[16 * j..16 * (j + 1)].iter_mut().zip(xg) {
            *q = nearest_int((v + dm) / dg).clamp(0, 3) as u8;
        }
    }
    pack_2bit(&levels, &mut y.qs);
}

/// ggml's `quantize_row_q2_K_impl` with importance weights `qw` (one per
/// element of the row): `make_qkx3_quants` per group of 16 with weights
/// `qw·sqrt(σ² + x²)`, the 4-bit scales and mins by `make_qp_quants`.
pub fn quantize_row_q2_k_weighted(x: &[f32], y: &mut [BlockQ2K], qw: &[f32]) {
    check_len(y.len(), QK_K, x.len());
    assert_eq!(qw.len(), x.len(), "one importance weight per value");
    for ((xb, yb), wb) in x
        .chunks_exact(QK_K)
        .zip(y.iter_mut())
        .zip(qw.chunks_exact(QK_K))
    {
        quantize_block_weighted(xb, yb, wb);
    }
}

fn quantize_block_weighted(x: &[f32], y: &mut BlockQ2K, qw: &[f32]) {
    let mut levels = [0u8; QK_K];
    let mut scratch = [0u8; 16];
    let mut weights = [0.0f32; 16];
    let mut scales = [0.0f32; QK_K / 16];
    let mut mins = [0.0f32; QK_K / 16];
    let mut sw = [0.0f32; QK_K / 16];
    let mut sumx2 = 0.0f32;
    for &v in x {
        sumx2 += v * v;
    }
    let sigma2 = sumx2 / QK_K as f32;
    for (j, (xg, wg)) in x.chunks_exact(16).zip(qw.chunks_exact(16)).enumerate() {
        for ((w, &v), &q) in weights.iter_mut().zip(xg).zip(wg) {
            *w = q * sqrtf(sigma2 + v * v);
        }
        for &w in &weights {
            sw[j] += w;
        }
        let lg = &mut levels[16 * j..16 * (j + 1)];
        let (scale, min) = make_qkx2_quants(3, xg, &weights, lg, &mut scratch, SEARCH_QKX3);
        scales[j] = scale;
        mins[j] = min;
    }
    let (mut ls, mut lm) = ([0u8; QK_K / 16], [0u8; QK_K / 16]);
    let dm = make_qp_quants(15, &scales, &mut ls, &sw);
    let mm = make_qp_quants(15, &mins, &mut lm, &sw);
    y.d = f16::from_f32(dm);
    y.dmin = f16::from_f32(mm);
    let (dm, mm) = (y.d.to_f32(), y.dmin.to_f32());
    for (s, (&l, &m)) in y.scales.iter_mut().zip(ls.iter().zip(&lm)) {
        *s = l | (m << 4);
    }
    for (j, xg) in x.chunks_exact(16).enumerate() {
        let d = dm * (y.scales[j] & 0xf) as f32;
        if d == 0.0 {
            continue;
        }
        let m = mm * (y.scales[j] >> 4) as f32;
        for (q, &v) in levels[16 * j..16 * (j + 1)].iter_mut().zip(xg) {
            *q = nearest_int((v + m) / d).clamp(0, 3) as u8;
        }
    }
    pack_2bit(&levels, &mut y.qs);
}

/// ggml's `dequantize_row_q2_K`.
pub fn dequantize_row_q2_k(x: &[BlockQ2K], y: &mut [f32]) {
    check_len(x.len(), QK_K, y.len());
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let (d, min) = (xb.d.to_f32(), xb.dmin.to_f32());
        for (j, yg) in yb.chunks_exact_mut(16).enumerate() {
            let sc = xb.scales[j];
            let dl = d * (sc & 0xf) as f32;
            let ml = min * (sc >> 4) as f32;
            for (l, out) in yg.iter_mut().enumerate() {
                let q = unpack_2bit(&xb.qs, 16 * j + l);
                *out = dl * q as f32 - ml;
            }
        }
    }
}

/// ggml's `ggml_vec_dot_q2_K_q8_K_generic` integer sums, with the block values
/// formed and summed in f64 (the canonical form of `crate::kernels`).
pub fn vec_dot_q2_k_q8_k(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
    let mut sum = 0.0f64;
    for (xb, yb) in x.iter().zip(y) {
        // The mins meet the activations only through their 16-sums.
        let mut summs = 0i32;
        for (&bsum, &sc) in yb.bsums.iter().zip(&xb.scales) {
            summs += i32::from(bsum) * i32::from(sc >> 4);
        }
        let mut isum = 0i32;
        for (j, q8g) in yb.qs.chunks_exact(16).enumerate() {
            let mut isuml = 0i32;
            for (l, &q8) in q8g.iter().enumerate() {
                isuml += i32::from(q8) * i32::from(unpack_2bit(&xb.qs, 16 * j + l));
            }
            isum += i32::from(xb.scales[j] & 0xf) * isuml;
        }
        sum += block_value(xb.d.to_f32(), xb.dmin.to_f32(), yb.d, isum, summs);
    }
    sum as f32
}
