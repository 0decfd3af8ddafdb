//! The elementwise building blocks of the forward pass: normalization,
//! RoPE, softmax, SiLU, and an exponential that compilers vectorize.

/// A byte buffer aligned to 8 bytes, so that rows of any block type (whose
/// structs need at most 4) can be viewed in place by the kernels.
#[derive(Clone, Debug, Default)]
pub(crate) struct AlignedBuf {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBuf {
    pub fn zeroed(len: usize) -> AlignedBuf {
        AlignedBuf {
            words: vec![0; len.div_ceil(8)],
            len,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.words)[..self.len]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut(&mut self.words)[..self.len]
    }
}

/// `out = x / rms(x) (· w)`: RMS normalization with an optional weight. The
/// sum of squares is accumulated in f64, as ggml does.
pub(crate) fn rmsnorm(out: &mut [f32], x: &[f32], w: Option<&[f32]>, eps: f32) {
    let ss = sum_squares(x);
    let scale = 1.0 / ((ss / x.len() as f64) as f32 + eps).sqrt();
    match w {
        Some(w) => {
            for ((o, &v), &w) in out.iter_mut().zip(x).zip(w) {
                *o = v * scale * w;
            }
        }
        None => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = v * scale;
            }
        }
    }
}

/// `Σ x²` in f64, in eight interleaved lanes (vectorizable).
fn sum_squares(x: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| v as f64 * v as f64)
        .sum();
    for c in chunks {
        for i in 0..8 {
            lanes[i] += c[i] as f64 * c[i] as f64;
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// Normalizes each `head_dim`-long head of `x` in place, without a weight
/// (Llama 4's "L2" q/k norm).
pub(crate) fn rmsnorm_heads(x: &mut [f32], head_dim: usize, eps: f32) {
    for head in x.chunks_exact_mut(head_dim) {
        let ss = sum_squares(head);
        let scale = 1.0 / ((ss / head_dim as f64) as f32 + eps).sqrt();
        for v in head {
            *v *= scale;
        }
    }
}

/// The RoPE rotation for one position: `cs[2i] = cos θᵢ`, `cs[2i+1] = sin θᵢ`
/// with `θᵢ = pos · inv_freq[i]`, the product rounded to f32 as in the
/// reference implementations and the trigonometry done in f64.
pub(crate) fn rope_angles(cs: &mut [f32], pos: f32, inv_freq: &[f32]) {
    for (c, &f) in cs.chunks_exact_mut(2).zip(inv_freq) {
        let theta = (pos * f) as f64;
        c[0] = theta.cos() as f32;
        c[1] = theta.sin() as f32;
    }
}

/// Rotates adjacent pairs `(x[2i], x[2i+1])` of every head of `x` by the
/// angles in `cs` (ggml's "normal" RoPE mode; GGUF llama q/k weights are
/// stored so that this layout applies).
pub(crate) fn rope(x: &mut [f32], cs: &[f32]) {
    for head in x.chunks_exact_mut(cs.len()) {
        for (p, c) in head.chunks_exact_mut(2).zip(cs.chunks_exact(2)) {
            let (x0, x1) = (p[0], p[1]);
            p[0] = x0 * c[0] - x1 * c[1];
            p[1] = x0 * c[1] + x1 * c[0];
        }
    }
}

/// Softmax in place (max subtracted; the sum accumulated in f64).
#[cfg(test)]
pub(crate) fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f64;
    for v in x.iter_mut() {
        *v = exp(*v - max);
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    for v in x {
        *v *= inv;
    }
}

/// `e^x` in f32 within 2 ulp (Cephes' polynomial after a Cody–Waite range
/// reduction), branch-free so that loops over it vectorize: `exp` from libm
/// is a call per element, and SwiGLU and softmax take tens of millions per
/// prompt. Saturates to +∞ above 88.72 and returns 0 below −87.33 (and for
/// −∞).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding it rounds to an integer (round to nearest even).
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.33, 88.72);
    // t = ROUND + n: n is in the low mantissa bits (|n| ≤ 128), so no
    // float-to-int conversion (Rust's saturating `as` is scalar code).
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = 1.987_569_1e-4f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_66;
    let p = p * r + 0.5;
    let e = p * r2 + r + 1.0;
    // 2^n through the exponent bits; n is in [-126, 128], so split it in
    // two halves that are both normal.
    let h = ni >> 1;
    let s1 = f32::from_bits(((h + 127) as u32) << 23);
    let s2 = f32::from_bits(((ni - h + 127) as u32) << 23);
    let y = e * s1 * s2;
    // Selects, not branches: loops over this stay vectorized.
    let y = if x > 88.72 { f32::INFINITY } else { y };
    if x < -87.33 { 0.0 } else { y }
}

/// `2^x` within 2 ulp for `x` in `[-126, 126]` (Cephes' `exp2f`
/// polynomial on `[-½, ½]`), with `x` clamped to that range. A few
/// operations shorter than [`exp`]; softmax numerators and SiLU's sigmoid
/// use it.
#[inline(always)]
fn exp2_clamped(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-126.0, 126.0);
    let t = xc + ROUND;
    let n = t - ROUND;
    let ni = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let f = xc - n;
    let p = 1.535_336_2e-4f32;
    let p = p * f + 1.339_887_4e-3;
    let p = p * f + 9.618_437e-3;
    let p = p * f + 5.550_332_5e-2;
    let p = p * f + 0.240_226_48;
    let p = p * f + std::f32::consts::LN_2;
    let y = p * f + 1.0;
    y * f32::from_bits(((ni + 127) as u32) << 23)
}

/// `2^x` for `x ≤ 0`, 0 below −126.
#[inline(always)]
fn exp2_nonpositive(x: f32) -> f32 {
    let y = exp2_clamped(x);
    if x < -126.0 { 0.0 } else { y }
}

/// `x[i] = e^(x[i] · scale − sub)` for every element, where no result
/// exceeds 1 (`sub` is at least the largest `x[i] · scale`, as in a
/// softmax); returns their sum.
pub(crate) fn exp_scaled_sum(x: &mut [f32], scale: f32, sub: f32) -> f32 {
    let (a, b) = (
        scale * std::f32::consts::LOG2_E,
        sub * std::f32::consts::LOG2_E,
    );
    for v in x.iter_mut() {
        *v = exp2_nonpositive((*v * a - b).min(0.0));
    }
    sum(x)
}

/// The sum of `x` in eight interleaved lanes (vectorizable; a plain f32
/// fold is a serial chain).
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            lanes[i] += c[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The largest element of `x` (−∞ if empty), in eight lanes.
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for c in chunks {
        for i in 0..8 {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    lanes.iter().fold(tail, |m, &v| if v > m { v } else { m })
}

/// `x · sigmoid(x)`. Beyond ±87 the sigmoid's exponential is clamped,
/// which moves no f32 result.
#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + exp2_clamped(-x * std::f32::consts::LOG2_E))
}

/// `x += y`, elementwise.
pub(crate) fn add(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rmsnorm_matches_definition() {
        let x = [1.0f32, -2.0, 3.0, 0.5];
        let w = [1.0f32, 2.0, 0.5, -1.0];
        let mut out = [0.0f32; 4];
        rmsnorm(&mut out, &x, Some(&w), 1e-5);
        let ms = x.iter().map(|v| v * v).sum::<f32>() / 4.0;
        for i in 0..4 {
            let want = x[i] / (ms + 1e-5).sqrt() * w[i];
            assert!((out[i] - want).abs() < 1e-6, "{i}: {} vs {want}", out[i]);
        }
    }

    #[test]
    fn softmax_sums_to_one_and_is_stable() {
        let mut x = [1000.0f32, 1001.0, 999.0];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[1] > x[0] && x[0] > x[2]);
        let e = [(-1.0f64).exp(), 1.0, (-2.0f64).exp()];
        let s: f64 = e.iter().sum();
        for i in 0..3 {
            assert!((x[i] as f64 - e[i] / s).abs() < 1e-6);
        }
    }

    #[test]
    fn rope_rotates_pairs_and_keeps_norm() {
        let inv_freq = [1.0f32, 0.1];
        let mut cs = [0.0f32; 4];
        rope_angles(&mut cs, 3.0, &inv_freq);
        let mut x = [
            1.0f32, 0.0, 0.0, 2.0, /* second head */ 3.0, 4.0, 1.0, 1.0,
        ];
        rope(&mut x, &cs);
        assert!((x[0] - 3.0f32.cos()).abs() < 1e-6 && (x[1] - 3.0f32.sin()).abs() < 1e-6);
        assert!(
            (x[2] + 2.0 * 0.3f32.sin()).abs() < 1e-6 && (x[3] - 2.0 * 0.3f32.cos()).abs() < 1e-6
        );
        assert!(((x[4] * x[4] + x[5] * x[5]) - 25.0).abs() < 1e-4);
    }

    #[test]
    fn softmax_numerators_are_accurate() {
        let mut worst = 0.0f64;
        let xs: Vec<f32> = (0..20_000).map(|i| -(i as f32) * 0.0043).collect();
        let mut v = xs.clone();
        let total = exp_scaled_sum(&mut v, 0.7, 0.0);
        for (&x, &got) in xs.iter().zip(&v) {
            let arg = x as f64 * 0.7;
            let want = arg.exp();
            if want > 1e-37 {
                // Two ulp, plus the rounding of the f32 argument.
                let tol = 2.5e-7 + arg.abs() * 2.4e-7;
                worst = worst.max(((got as f64 - want) / want).abs() / tol);
            }
        }
        assert!(worst < 1.0, "error {worst} of the tolerance");
        let want_total: f64 = xs.iter().map(|&x| (x as f64 * 0.7).exp()).sum();
        assert!((total as f64 - want_total).abs() < 1e-5 * want_total);
        let mut tiny = [-200.0f32, 0.0, 3.0];
        exp_scaled_sum(&mut tiny, 1.0, 3.0);
        assert_eq!(tiny[0], 0.0);
        assert_eq!(tiny[2], 1.0);
    }

    #[test]
    fn exp_is_within_two_ulp_and_saturates() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.001_37;
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(1000.0), f32::INFINITY);
        assert!((silu(-200.0)).abs() < 1e-30 && silu(200.0) == 200.0);
        for i in -2000..2000 {
            let x = i as f32 * 0.011;
            let want = x as f64 / (1.0 + (-x as f64).exp());
            let got = silu(x) as f64;
            // Two ulp, plus the rounding of the f32 argument of 2^x.
            let tol = (4e-7 + x.abs() as f64 * 2.5e-7) * want.abs() + 1e-30;
            assert!((got - want).abs() <= tol, "silu({x})");
        }
    }
}
