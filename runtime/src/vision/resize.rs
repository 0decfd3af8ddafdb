//! torchvision's uint8 antialiased bilinear resize, bit-exact.
//!
//! `torchvision.transforms.v2.functional.resize(uint8, antialias=True)` runs
//! PyTorch's integer kernel (a port of Pillow-SIMD) on x86 CPUs with AVX2:
//! separable, horizontal pass first (skipped when the width is unchanged),
//! the intermediate rounded to uint8, then the vertical pass (skipped when
//! the height is unchanged). Each pass computes triangle weights in f64,
//! normalises them per output pixel and quantises them to i16 at the largest
//! precision (≤ 22 bits) that keeps the largest weight below 2^15.

use super::image::RgbImage;

/// Per output pixel: first input index and quantised weights; plus the
/// pass's precision in bits.
struct PassWeights {
    starts: Vec<usize>,
    weights: Vec<Vec<i32>>,
    precision: u32,
}

fn pass_weights(in_size: usize, out_size: usize) -> PassWeights {
    let scale = in_size as f64 / out_size as f64;
    let support = if scale >= 1.0 { scale } else { 1.0 };
    let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    let mut starts = Vec::with_capacity(out_size);
    let mut float_rows = Vec::with_capacity(out_size);
    let mut wmax = 0.0f64;
    for i in 0..out_size {
        let center = scale * (i as f64 + 0.5);
        // Python's int() truncates toward zero; both values are ≥ -0.5 + …,
        // and the max with 0 covers the negative case.
        let xmin = ((center - support + 0.5).trunc() as i64).max(0) as usize;
        let xmax = ((center + support + 0.5).trunc() as i64).min(in_size as i64) as usize;
        let mut w: Vec<f64> = (xmin..xmax.max(xmin))
            .map(|j| (1.0 - ((j as f64 - center + 0.5) * inv).abs()).max(0.0))
            .collect();
        let total: f64 = w.iter().sum();
        if total != 0.0 {
            w.iter_mut().for_each(|v| *v /= total);
        }
        wmax = w.iter().fold(wmax, |m, &v| m.max(v));
        starts.push(xmin);
        float_rows.push(w);
    }
    let mut precision = 0u32;
    while precision < 22 {
        if (0.5 + wmax * f64::from(1u32 << (precision + 1))) as i64 >= 1 << 15 {
            break;
        }
        precision += 1;
    }
    let one = f64::from(1u32 << precision);
    let weights = float_rows
        .into_iter()
        .map(|w| {
            w.into_iter()
                .map(|v| {
                    if v < 0.0 {
                        (-0.5 + v * one) as i32
                    } else {
                        (0.5 + v * one) as i32
                    }
                })
                .collect()
        })
        .collect();
    PassWeights {
        starts,
        weights,
        precision,
    }
}

/// Resamples `src` (`n_lines` lines of `in_size` samples with stride
/// `sample_stride` between samples and `line_stride` between lines) into
/// `dst` with the same geometry at `out_size` samples.
fn resample(
    src: &[u8],
    dst: &mut [u8],
    pw: &PassWeights,
    n_lines: usize,
    (src_sample, src_line): (usize, usize),
    (dst_sample, dst_line): (usize, usize),
) {
    let round = 1i64 << pw.precision.saturating_sub(1);
    for line in 0..n_lines {
        for (o, (&start, w)) in pw.starts.iter().zip(&pw.weights).enumerate() {
            let mut acc = if pw.precision == 0 { 0 } else { round };
            for (j, &wj) in w.iter().enumerate() {
                acc += i64::from(wj) * i64::from(src[line * src_line + (start + j) * src_sample]);
            }
            dst[line * dst_line + o * dst_sample] = (acc >> pw.precision).clamp(0, 255) as u8;
        }
    }
}

/// Resizes every channel plane to `out_h`×`out_w`.
pub fn resize_bilinear_aa(img: &RgbImage, out_h: usize, out_w: usize) -> RgbImage {
    let (h, w) = (img.height, img.width);
    let mut data = img.data.clone();
    let mut cur_w = w;
    if out_w != w {
        let pw = pass_weights(w, out_w);
        let mut next = vec![0u8; 3 * h * out_w];
        for c in 0..3 {
            resample(
                &data[c * h * w..(c + 1) * h * w],
                &mut next[c * h * out_w..(c + 1) * h * out_w],
                &pw,
                h,
                (1, w),
                (1, out_w),
            );
        }
        data = next;
        cur_w = out_w;
    }
    if out_h != h {
        let pw = pass_weights(h, out_h);
        let mut next = vec![0u8; 3 * out_h * cur_w];
        for c in 0..3 {
            resample(
                &data[c * h * cur_w..(c + 1) * h * cur_w],
                &mut next[c * out_h * cur_w..(c + 1) * out_h * cur_w],
                &pw,
                cur_w,
                (cur_w, 1),
                (cur_w, 1),
            );
        }
        data = next;
    }
    RgbImage {
        width: out_w,
        height: out_h,
        data,
    }
}
