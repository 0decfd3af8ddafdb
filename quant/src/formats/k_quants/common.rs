//! Helpers shared by the K-quant formats: ggml's scale searches
//! (`make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`), the 6-bit
//! scale/min packing of Q4_K and Q5_K, a correctly rounded `sqrtf` for
//! `no_std`, and the 8-lane integer accumulation of ggml's generic dot
//! products.
//!
//! Every floating-point expression keeps the evaluation order of the C
//! reference and uses no fused multiply-add, so results are bit-identical
//! with ggml built with `-ffp-contract=off`.

pub(super) use crate::formats::nearest_int;
use crate::types::QK_K;

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below this is
/// treated as all zeros.
pub(super) const GROUP_MAX_EPS: f32 = 1e-15;

/// `sqrtf`, correctly rounded (IEEE 754 round to nearest), without `std`.
///
/// Negative inputs and NaN give NaN; ±0 and +∞ are returned unchanged.
pub(crate) fn sqrtf(x: f32) -> f32 {
    if x.is_nan() || x < 0.0 {
        return f32::NAN;
    }
    if x == 0.0 || x == f32::INFINITY {
        return x;
    }
    let bits = x.to_bits();
    let biased = ((bits >> 23) & 0xff) as i32;
    // x = mant · 2^exp with mant an integer in [2^23, 2^24).
    let (mut mant, mut exp) = if biased == 0 {
        let frac = bits & 0x007f_ffff;
        let shift = frac.leading_zeros() - 8;
        (u64::from(frac << shift), -149 - shift as i32)
    } else {
        (u64::from((bits & 0x007f_ffff) | 0x0080_0000), biased - 150)
    };
    // Make the exponent even with mant in [2^24, 2^26).
    if exp & 1 != 0 {
        mant <<= 1;
        exp -= 1;
    } else {
        mant <<= 2;
        exp -= 2;
    }
    // sqrt(mant · 2^24) lies in [2^24, 2^25): 24 result bits and a guard bit.
    let root = isqrt(mant << 24);
    // A tie would need root odd with root² = mant · 2^24, which is even: so
    // rounding on the guard bit alone is exact round-to-nearest.
    let q = (root >> 1) + (root & 1);
    // Result = q · 2^e2 with q in [2^23, 2^24] (2^24 carries into the exponent).
    let e2 = (exp - 24) / 2 + 1;
    let field = (e2 + 149) as u32;
    f32::from_bits((field << 23) + q as u32)
}

/// Integer square root, rounded down (digit by digit).
fn isqrt(n: u64) -> u64 {
    let mut rem = n;
    let mut root = 0u64;
    let mut bit = 1u64 << 62;
    while bit > n {
        bit >>= 2;
    }
    while bit != 0 {
        if rem >= root + bit {
            rem -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    root
}

/// The signed value of largest magnitude in `x` (the first one on ties) and
/// that magnitude.
#[inline]
pub(super) fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (max, amax)
}

/// ggml's `make_qx_quants` with `rmse_type = 1`: symmetric quants
/// `l ∈ [-nmax, nmax)`, stored in `levels` offset by `nmax`. Tries 19
/// scales around `nmax / max` and keeps the one with the best weighted
/// least-squares fit; returns the scale (may be negative). The weights are
/// `qw` (an importance matrix) or, without one, `x²` (Q6_K's reference).
pub(crate) fn make_qx_quants(nmax: i32, x: &[f32], levels: &mut [i8], qw: Option<&[f32]>) -> f32 {
    debug_assert_eq!(x.len(), levels.len());
    debug_assert!(qw.is_none_or(|w| w.len() == x.len()));
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let weight = |i: usize, v: f32| match qw {
        Some(w) => w[i],
        None => v * v,
    };

    let mut iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (i, (&v, q)) in x.iter().zip(levels.iter_mut()).enumerate() {
        let l = quant(iscale, v);
        *q = (l + nmax) as i8;
        let w = weight(i, v);
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1f32 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for (i, &v) in x.iter().enumerate() {
            let l = quant(iscale, v);
            let w = weight(i, v);
            sumlx += w * v * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (&v, q) in x.iter().zip(levels.iter_mut()) {
                *q = (quant(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml's `make_qp_quants`: non-negative quants `l ≤ nmax` of non-negative
/// `x` (the sub-block scales of the importance-weighted K-quants), fitted
/// by `qw`-weighted least squares: 9 trial scales, then up to 5 greedy
/// sweeps moving single quants. `levels` are `uint8_t` as in ggml (a
/// negative quant wraps). Returns the scale.
pub(super) fn make_qp_quants(nmax: i32, x: &[f32], levels: &mut [u8], qw: &[f32]) -> f32 {
    let n = x.len();
    debug_assert!(levels.len() == n && qw.len() == n);
    let mut max = 0.0f32;
    for &v in x {
        // C's MAX(max, v): v when max < v.
        if max < v {
            max = v;
        }
    }
    if max < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for (l, &v) in levels.iter_mut().zip(x) {
        *l = nearest_int(iscale * v) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * levels[i] as f32;
        best_mse += qw[i] * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1f32 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            mse += qw[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).min(nmax);
        levels[i] = l as u8;
        // The sums use the int, the sweeps below the stored byte.
        let (w, lf) = (qw[i], l as f32);
        sumlx += w * x[i] * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = qw[i];
            let cur = levels[i] as f32;
            let mut slx = sumlx - w * x[i] * cur;
            let mut sl2 = suml2 - w * cur * cur;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != i32::from(levels[i]) {
                    let nl = new_l as f32;
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        levels[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// ggml's `make_q3_quants` with `do_rmse = true` (Q3_K): start from
/// `l = round(-nmax · x / max)` and greedily move single quants while the
/// `x²`-weighted least-squares fit improves (at most 5 sweeps). Quants are
/// stored offset by `nmax` (all-zero groups store 0); returns the scale.
pub(super) fn make_q3_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    debug_assert_eq!(x.len(), levels.len());
    let (max, amax) = signed_absmax(x);
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for (&v, q) in x.iter().zip(levels.iter_mut()) {
        let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        *q = l as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (&v, q) in x.iter().zip(levels.iter_mut()) {
            let w = v * v;
            let cur = *q as f32;
            let mut slx = sumlx - w * v * cur;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * cur * cur;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != i32::from(*q) {
                    let nl = new_l as f32;
                    slx += w * v * nl;
                    sl2 += w * nl * nl;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *q = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for q in levels.iter_mut() {
        *q += nmax as i8;
    }
    if suml2 > 0.0 { sumlx / suml2 } else { 0.0 }
}

/// The scale grid searched by [`make_qkx2_quants`]: `nstep + 1` candidate
/// inverse scales `(rmin + rdelta · is + nmax) / (max − min)`.
#[derive(Clone, Copy)]
pub(crate) struct ScaleSearch {
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    /// Minimize the weighted absolute error instead of the squared error.
    pub use_mad: bool,
}

/// ggml's `make_qkx2_quants`: asymmetric quants `l ∈ [0, nmax]` with
/// `x ≈ scale · l − the_min`, fitted by weighted least squares over a grid
/// of starting scales. Writes the quants to `levels` (using `scratch` for
/// candidates) and returns `(scale, the_min)`; `the_min ≥ 0`.
pub(crate) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
    scratch: &mut [u8],
    search: ScaleSearch,
) -> (f32, f32) {
    let n = x.len();
    debug_assert!(n > 0 && weights.len() == n && levels.len() == n && scratch.len() == n);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let error_of = |diff: f32| {
        if search.use_mad {
            diff.abs()
        } else {
            diff * diff
        }
    };

    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        levels[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * error_of(diff);
    }
    if search.nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=search.nstep {
        iscale = (search.rmin + search.rdelta * is as f32 + nmax as f32) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            scratch[i] = l as u8;
            let (w, lf) = (weights[i], l as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * scratch[i] as f32 + this_min - x[i];
                cur_error += weights[i] * error_of(diff);
            }
            if cur_error < best_error {
                levels.copy_from_slice(scratch);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of 32-group `j` from
/// the 12 packed bytes of Q4_K/Q5_K.
///
/// Bytes 0–3 hold scales 0–3 (low 6 bits), bytes 4–7 mins 0–3; groups 4–7
/// keep their low nibbles in bytes 8–11 (scale low, min high) and their top
/// two bits in the spare top bits of bytes 0–3 (scales) and 4–7 (mins).
#[inline]
pub(super) fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        let sc = (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (sc, m)
    }
}

/// Inverse of [`get_scale_min_k4`]: packs eight 6-bit scales and mins.
pub(super) fn pack_scale_min_k4(scales: &[u8; 8], mins: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    q[..4].copy_from_slice(&scales[..4]);
    q[4..8].copy_from_slice(&mins[..4]);
    for j in 4..8 {
        let (ls, lm) = (scales[j], mins[j]);
        q[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
        q[j - 4] |= (ls >> 4) << 6;
        q[j] |= (lm >> 4) << 6;
    }
    q
}

/// The Q4_K/Q5_K super-block quantizer shared by both formats (everything
/// but the final bit packing): per 32-group `make_qkx2_quants` with weights
/// `rms(group) + |x|`, 6-bit scales and mins relative to the largest, then
/// the quants recomputed with the rounded scales.
///
/// Returns `(d, dmin, packed scales, quants in 0..=nmax)`.
pub(super) fn quantize_superblock_qkx(
    x: &[f32],
    nmax: i32,
    search: ScaleSearch,
) -> (half::f16, half::f16, [u8; 12], [u8; QK_K]) {
    use half::f16;
    debug_assert_eq!(x.len(), QK_K);
    let mut levels = [0u8; QK_K];
    let mut scratch = [0u8; 32];
    let mut weights = [0.0f32; 32];
    let mut scales = [0.0f32; QK_K / 32];
    let mut mins = [0.0f32; QK_K / 32];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for (j, xg) in x.chunks_exact(32).enumerate() {
        let mut sum_x2 = 0.0f32;
        for &v in xg {
            sum_x2 += v * v;
        }
        let av_x = sqrtf(sum_x2 / 32.0);
        for (w, &v) in weights.iter_mut().zip(xg) {
            *w = av_x + v.abs();
        }
        let lg = &mut levels[32 * j..32 * (j + 1)];
        let (scale, min) = make_qkx2_quants(nmax, xg, &weights, lg, &mut scratch, search);
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }

    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..QK_K / 32 {
        // ggml stores the int in a uint8_t (mod 256) before clamping.
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    requantize_qkx(x, nmax, d, dmin, &packed, &mut levels);
    (d, dmin, packed, levels)
}

/// The quants of a Q4_K/Q5_K super-block recomputed with its rounded
/// scales and mins; groups with a zero scale keep the quants of the search
/// (they dequantize to `-dm`).
fn requantize_qkx(
    x: &[f32],
    nmax: i32,
    d: half::f16,
    dmin: half::f16,
    packed: &[u8; 12],
    levels: &mut [u8; QK_K],
) {
    for (j, xg) in x.chunks_exact(32).enumerate() {
        let (sc, m) = get_scale_min_k4(j, packed);
        let dg = d.to_f32() * sc as f32;
        if dg == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for (q, &v) in levels[32 * j..32 * (j + 1)].iter_mut().zip(xg) {
            *q = nearest_int((v + dm) / dg).clamp(0, nmax) as u8;
        }
    }
}

/// The search of the importance-weighted Q4_K/Q5_K and Q4_1/Q5_1
/// (`make_qkx3_quants(…, -0.9f, 0.05f, 36, false)`; with weights given it
/// is the same algorithm as `make_qkx2_quants`).
pub(crate) const SEARCH_QKX3: ScaleSearch = ScaleSearch {
    rmin: -0.9,
    rdelta: 0.05,
    nstep: 36,
    use_mad: false,
};

/// `quantize_row_q4_K_impl` / `quantize_row_q5_K_impl` for one super-block
/// with importance weights `qw`: per 32-group `make_qkx3_quants` with
/// weights `qw·sqrt(σ² + x²)`, the group scales and mins quantized to 6
/// bits by `make_qp_quants` (weighted by each group's weight sum), then the
/// quants recomputed. `clamp_63`: Q5_K clamps the 6-bit values to 63,
/// Q4_K stores them as they come.
pub(super) fn quantize_superblock_qkx_weighted(
    x: &[f32],
    qw: &[f32],
    nmax: i32,
    clamp_63: bool,
) -> (half::f16, half::f16, [u8; 12], [u8; QK_K]) {
    use half::f16;
    debug_assert!(x.len() == QK_K && qw.len() == QK_K);
    let mut levels = [0u8; QK_K];
    let mut scratch = [0u8; 32];
    let mut weights = [0.0f32; 32];
    let mut scales = [0.0f32; QK_K / 32];
    let mut mins = [0.0f32; QK_K / 32];
    let mut sw = [0.0f32; QK_K / 32];
    let mut sum_x2 = 0.0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let sigma2 = 2.0 * sum_x2 / QK_K as f32;
    for (j, (xg, wg)) in x.chunks_exact(32).zip(qw.chunks_exact(32)).enumerate() {
        for ((w, &v), &q) in weights.iter_mut().zip(xg).zip(wg) {
            *w = q * sqrtf(sigma2 + v * v);
        }
        let mut sumw = 0.0f32;
        for &w in &weights {
            sumw += w;
        }
        sw[j] = sumw;
        let lg = &mut levels[32 * j..32 * (j + 1)];
        let (scale, min) = make_qkx2_quants(nmax, xg, &weights, lg, &mut scratch, SEARCH_QKX3);
        scales[j] = scale;
        mins[j] = min;
    }
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
    if clamp_63 {
        for v in ls.iter_mut().chain(lm.iter_mut()) {
            *v = (*v).min(63);
        }
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = f16::from_f32(d_block);
    let dmin = f16::from_f32(m_block);
    requantize_qkx(x, nmax, d, dmin, &packed, &mut levels);
    (d, dmin, packed, levels)
}

/// Packs 2-bit quants: element `128·h + 32·s + l` goes to bits `2s` of byte
/// `32·h + l` (Q2_K and the low bits of Q3_K).
pub(super) fn pack_2bit(levels: &[u8; QK_K], qs: &mut [u8; QK_K / 4]) {
    for h in 0..QK_K / 128 {
        for l in 0..32 {
            let base = 128 * h + l;
            qs[32 * h + l] = levels[base]
                | (levels[base + 32] << 2)
                | (levels[base + 64] << 4)
                | (levels[base + 96] << 6);
        }
    }
}

/// The 2-bit quant of element `e` packed by [`pack_2bit`].
#[inline]
pub(super) fn unpack_2bit(qs: &[u8; QK_K / 4], e: usize) -> u8 {
    let (h, s, l) = (e / 128, (e % 128) / 32, e % 32);
    (qs[32 * h + l] >> (2 * s)) & 3
}

/// The integer core of the K-quant dot products: `Σ scale(e) · a[e] ·
/// q8[e]` over 256 weights `a` (already unpacked to signed ints) and their
/// activations `q8`, exact in i32 (|a| ≤ 32, scales ≤ 63: far below 2³¹).
#[inline]
pub(super) fn block_isum(a: &[i8; QK_K], q8: &[i8; QK_K], scale_of: impl Fn(usize) -> i32) -> i32 {
    let mut sum = 0i32;
    for (g, (ag, qg)) in a.chunks_exact(16).zip(q8.chunks_exact(16)).enumerate() {
        let mut gsum = 0i32;
        for (&av, &qv) in ag.iter().zip(qg) {
            gsum += i32::from(qv) * i32::from(av);
        }
        sum += scale_of(16 * g) * gsum;
    }
    sum
}

/// One super-block's value in the canonical form of `crate::kernels`:
/// `d·d_y·S − dmin·d_y·M` with the exact integer sums `S` (scaled quants ×
/// activations) and `M` (mins × activation sums), in f64 with exact
/// coefficients (an f16 times an f32 fits in 53 bits), to be summed over the
/// row in f64 and rounded to f32 once.
#[inline]
pub(crate) fn block_value(d: f32, dmin: f32, yd: f32, s: i32, m: i32) -> f64 {
    let yd = f64::from(yd);
    f64::from(d) * yd * f64::from(s) - f64::from(dmin) * yd * f64::from(m)
}
