//! The K-quants (Q2_K … Q6_K, Q8_K) against ggml's C reference vectors in
//! `../shared/testdata/quant_vectors.json` (see that folder's README).
//!
//! - Dequantizing the reference bytes is bit-identical to ggml.
//! - Our quantizer reproduces ggml's bytes. Every value must be within one
//!   quantization step of the reference (the README allows that much between
//!   builds), and, measured: all 75 blocks of every type are byte-identical
//!   (we evaluate in ggml's order without FMA, like the no-FMA C build that
//!   made the vectors), so the tests demand that.
//! - The Q8_K dot products agree with an f64 dot of the dequantized rows.

use base64::Engine;
use bytemuck::{Pod, Zeroable};
use serde_json::Value;
use spinel_quant::QK_K;
use spinel_quant::blocks::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
use spinel_quant::formats::k_quants as kq;
use std::sync::OnceLock;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/quant_vectors.json"
);

fn vectors() -> &'static Value {
    static V: OnceLock<Value> = OnceLock::new();
    V.get_or_init(|| {
        let text = std::fs::read_to_string(VECTORS).unwrap_or_else(|e| {
            panic!(
                "cannot read {VECTORS}: {e} (the shared testdata folder must sit beside the repo)"
            )
        });
        serde_json::from_str(&text).expect("quant_vectors.json is valid JSON")
    })
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("base64 string"))
        .expect("valid base64")
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The named input rows, in file order.
fn rows() -> Vec<(String, Vec<f32>)> {
    let rows = vectors()["rows"].as_object().expect("rows object");
    let rows: Vec<_> = rows
        .iter()
        .map(|(name, r)| (name.clone(), f32s(&b64(&r["x_f32_b64"]))))
        .collect();
    assert_eq!(rows.len(), 15, "expected the 15 reference rows");
    rows
}

/// Reads whole blocks out of (possibly unaligned) bytes.
fn blocks_of<B: Pod>(bytes: &[u8]) -> Vec<B> {
    let size = std::mem::size_of::<B>();
    assert_eq!(bytes.len() % size, 0, "not a whole number of blocks");
    bytes
        .chunks_exact(size)
        .map(bytemuck::pod_read_unaligned)
        .collect()
}

/// The reference (blocks, dequantized values) of `row` in type `ty`.
fn reference<B: Pod>(ty: &str, row: &str) -> (Vec<B>, Vec<f32>) {
    let t = &vectors()["types"][ty];
    assert_eq!(
        t["block_size"].as_u64(),
        Some(QK_K as u64),
        "{ty} block size"
    );
    assert_eq!(
        t["type_size"].as_u64(),
        Some(std::mem::size_of::<B>() as u64),
        "{ty} type size"
    );
    let v = &t["vectors"][row];
    assert!(v.is_object(), "no vector for {ty}/{row}");
    (
        blocks_of(&b64(&v["quant_b64"])),
        f32s(&b64(&v["dequant_f32_b64"])),
    )
}

/// One K-quant format: its kernels and the quantization step of a value.
struct Format<B> {
    name: &'static str,
    quantize: fn(&[f32], &mut [B]),
    dequantize: fn(&[B], &mut [f32]),
    dot: fn(&[B], &[BlockQ8K]) -> f32,
    /// The spacing of representable values around element `e` of a block:
    /// `d` times the (absolute) integer scale of its group. Decoded here
    /// independently of the library.
    step: fn(&B, usize) -> f32,
}

/// The 6-bit scale and min of group `j` of a Q4_K/Q5_K block.
fn scale_min_k4(q: &[u8; 12], j: usize) -> (u8, u8) {
    if j < 4 {
        (q[j] & 0x3f, q[j + 4] & 0x3f)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The signed scale of 16-group `j` of a Q3_K block.
fn scale_q3(q: &[u8; 12], j: usize) -> i32 {
    let low = (q[j % 8] >> (4 * (j / 8))) & 0xf;
    let high = (q[8 + j % 4] >> (2 * (j / 4))) & 3;
    i32::from(low | (high << 4)) - 32
}

const Q2K: Format<BlockQ2K> = Format {
    name: "Q2_K",
    quantize: kq::quantize_row_q2_k,
    dequantize: kq::dequantize_row_q2_k,
    dot: kq::vec_dot_q2_k_q8_k,
    step: |b, e| b.d.to_f32() * f32::from(b.scales[e / 16] & 0xf),
};
const Q3K: Format<BlockQ3K> = Format {
    name: "Q3_K",
    quantize: kq::quantize_row_q3_k,
    dequantize: kq::dequantize_row_q3_k,
    dot: kq::vec_dot_q3_k_q8_k,
    step: |b, e| (b.d.to_f32() * scale_q3(&b.scales, e / 16) as f32).abs(),
};
const Q4K: Format<BlockQ4K> = Format {
    name: "Q4_K",
    quantize: kq::quantize_row_q4_k,
    dequantize: kq::dequantize_row_q4_k,
    dot: kq::vec_dot_q4_k_q8_k,
    step: |b, e| b.d.to_f32() * f32::from(scale_min_k4(&b.scales, e / 32).0),
};
const Q5K: Format<BlockQ5K> = Format {
    name: "Q5_K",
    quantize: kq::quantize_row_q5_k,
    dequantize: kq::dequantize_row_q5_k,
    dot: kq::vec_dot_q5_k_q8_k,
    step: |b, e| b.d.to_f32() * f32::from(scale_min_k4(&b.scales, e / 32).0),
};
const Q6K: Format<BlockQ6K> = Format {
    name: "Q6_K",
    quantize: kq::quantize_row_q6_k,
    dequantize: kq::dequantize_row_q6_k,
    dot: kq::vec_dot_q6_k_q8_k,
    step: |b, e| (b.d.to_f32() * f32::from(b.scales[e / 16])).abs(),
};

fn zeroed<B: Pod>(n: usize) -> Vec<B> {
    vec![B::zeroed(); n]
}

fn dequantize<B: Pod>(f: &Format<B>, blocks: &[B]) -> Vec<f32> {
    let mut out = vec![0f32; blocks.len() * QK_K];
    (f.dequantize)(blocks, &mut out);
    out
}

fn quantize<B: Pod>(f: &Format<B>, x: &[f32]) -> Vec<B> {
    let mut out = zeroed(x.len() / QK_K);
    (f.quantize)(x, &mut out);
    out
}

// ---------------------------------------------------------------------------
// (1) dequantization of the reference bytes

fn check_dequantize_reference<B: Pod>(f: &Format<B>) {
    for (row, x) in rows() {
        let (blocks, want) = reference::<B>(f.name, &row);
        assert_eq!(want.len(), x.len(), "{}/{row}: length", f.name);
        let got = dequantize(f, &blocks);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{}/{row}: value {i}: got {g:e}, want {w:e}",
                f.name
            );
        }
    }
}

#[test]
fn q2_k_dequantizes_reference_bit_exact() {
    check_dequantize_reference(&Q2K);
}
#[test]
fn q3_k_dequantizes_reference_bit_exact() {
    check_dequantize_reference(&Q3K);
}
#[test]
fn q4_k_dequantizes_reference_bit_exact() {
    check_dequantize_reference(&Q4K);
}
#[test]
fn q5_k_dequantizes_reference_bit_exact() {
    check_dequantize_reference(&Q5K);
}
#[test]
fn q6_k_dequantizes_reference_bit_exact() {
    check_dequantize_reference(&Q6K);
}

// ---------------------------------------------------------------------------
// (2) quantization against the reference bytes

/// Quantizes every row, checks every value is within one step of the
/// reference and returns (byte-identical blocks, blocks).
fn check_quantize_reference<B: Pod>(f: &Format<B>) -> (usize, usize) {
    let (mut same, mut total) = (0, 0);
    for (row, x) in rows() {
        let (want_blocks, want) = reference::<B>(f.name, &row);
        let got_blocks = quantize(f, &x);
        assert_eq!(got_blocks.len(), want_blocks.len());
        let got = dequantize(f, &got_blocks);
        for (b, (gb, wb)) in got_blocks.iter().zip(&want_blocks).enumerate() {
            for e in 0..QK_K {
                let i = b * QK_K + e;
                let step = (f.step)(wb, e);
                let diff = (got[i] - want[i]).abs();
                assert!(
                    diff <= step,
                    "{}/{row}: value {i} (x = {:e}): got {:e}, reference {:e}, step {step:e}",
                    f.name,
                    x[i],
                    got[i],
                    want[i]
                );
            }
            total += 1;
            if bytemuck::bytes_of(gb) == bytemuck::bytes_of(wb) {
                same += 1;
            } else {
                eprintln!("{}/{row}: block {b} differs from the reference", f.name);
            }
        }
    }
    eprintln!("{}: {same}/{total} blocks byte-identical", f.name);
    (same, total)
}

/// Blocks in the reference rows: 11 rows of 256 values, 4 of 4096.
const TOTAL_BLOCKS: usize = 11 + 4 * 16;

#[test]
fn q2_k_quantizes_like_ggml() {
    let (same, total) = check_quantize_reference(&Q2K);
    assert_eq!(total, TOTAL_BLOCKS);
    assert_eq!(same, total, "Q2_K: every block byte-identical");
}
#[test]
fn q3_k_quantizes_like_ggml() {
    let (same, total) = check_quantize_reference(&Q3K);
    assert_eq!(total, TOTAL_BLOCKS);
    assert_eq!(same, total, "Q3_K: every block byte-identical");
}
#[test]
fn q4_k_quantizes_like_ggml() {
    let (same, total) = check_quantize_reference(&Q4K);
    assert_eq!(total, TOTAL_BLOCKS);
    assert_eq!(same, total, "Q4_K: every block byte-identical");
}
#[test]
fn q5_k_quantizes_like_ggml() {
    let (same, total) = check_quantize_reference(&Q5K);
    assert_eq!(total, TOTAL_BLOCKS);
    assert_eq!(same, total, "Q5_K: every block byte-identical");
}
#[test]
fn q6_k_quantizes_like_ggml() {
    let (same, total) = check_quantize_reference(&Q6K);
    assert_eq!(total, TOTAL_BLOCKS);
    assert_eq!(same, total, "Q6_K: every block byte-identical");
}

// ---------------------------------------------------------------------------
// (3) dot products with Q8_K activations

/// Deterministic activations: a xorshift stream mapped to roughly N(0, 1)
/// (sum of four uniforms), so the test needs no RNG crate.
fn activations(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    let mut uniform = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..n)
        .map(|_| (uniform() + uniform() + uniform() + uniform()) * 1.7)
        .collect()
}

fn quantize_q8k(x: &[f32]) -> Vec<BlockQ8K> {
    let mut out = zeroed(x.len() / QK_K);
    kq::quantize_row_q8_k(x, &mut out);
    out
}

fn dequantize_q8k(blocks: &[BlockQ8K]) -> Vec<f32> {
    let mut out = vec![0f32; blocks.len() * QK_K];
    kq::dequantize_row_q8_k(blocks, &mut out);
    out
}

/// The exact dot of two dequantized rows and the tolerance for an f32
/// kernel that sums exact integer products per block and scales them in
/// f32: a few ulps of every block's largest possible contribution.
fn reference_dot(w: &[f32], a: &[f32]) -> (f64, f64) {
    let exact: f64 = w.iter().zip(a).map(|(&p, &q)| p as f64 * q as f64).sum();
    let mut bound = 0.0f64;
    for (wb, ab) in w.chunks(QK_K).zip(a.chunks(QK_K)) {
        let wmax = wb.iter().fold(0.0f64, |m, &v| m.max((v as f64).abs()));
        let asum: f64 = ab.iter().map(|&v| (v as f64).abs()).sum();
        bound += wmax * asum;
    }
    (exact, 1e-6 * bound + 1e-30)
}

fn check_vec_dot<B: Pod>(f: &Format<B>) {
    for (row, x) in rows() {
        let blocks = quantize(f, &x);
        let w = dequantize(f, &blocks);
        for (what, acts) in [
            ("random", activations(x.len(), 0x9e37_79b9_7f4a_7c15)),
            ("itself", x.clone()),
        ] {
            let q8 = quantize_q8k(&acts);
            let a = dequantize_q8k(&q8);
            let got = (f.dot)(&blocks, &q8);
            let (exact, tol) = reference_dot(&w, &a);
            assert!(got.is_finite(), "{}/{row}/{what}: {got}", f.name);
            assert!(
                (got as f64 - exact).abs() <= tol,
                "{}/{row}/{what}: vec_dot {got:e}, f64 dot {exact:e}, tolerance {tol:e}",
                f.name
            );
        }
    }
}

/// With a one-hot activation block (`d = 1`, a single quant 1) the dot
/// product must equal the dequantized weight bit for bit: every product in
/// both computations is exact in f32 (an f16 scale times small integers),
/// so only the final subtraction of the min rounds, identically. This pins
/// the element order the dot kernel reads the weights in.
fn check_vec_dot_one_hot<B: Pod>(f: &Format<B>) {
    for (row, _) in rows() {
        let (blocks, want) = reference::<B>(f.name, &row);
        for (b, blk) in blocks.iter().enumerate() {
            for e in 0..QK_K {
                let mut act = BlockQ8K::zeroed();
                act.d = 1.0;
                act.qs[e] = 1;
                act.bsums[e / 16] = 1;
                let got = (f.dot)(std::slice::from_ref(blk), &[act]);
                let w = want[b * QK_K + e];
                // −0 and +0 are the same dot product.
                assert!(
                    got.to_bits() == w.to_bits() || (got == 0.0 && w == 0.0),
                    "{}/{row}: block {b} element {e}: one-hot dot {got:e}, weight {w:e}",
                    f.name
                );
            }
        }
    }
}

#[test]
fn vec_dot_reads_every_weight_in_dequantization_order() {
    check_vec_dot_one_hot(&Q2K);
    check_vec_dot_one_hot(&Q3K);
    check_vec_dot_one_hot(&Q4K);
    check_vec_dot_one_hot(&Q5K);
    check_vec_dot_one_hot(&Q6K);
}

#[test]
fn q2_k_vec_dot_matches_f64() {
    check_vec_dot(&Q2K);
}
#[test]
fn q3_k_vec_dot_matches_f64() {
    check_vec_dot(&Q3K);
}
#[test]
fn q4_k_vec_dot_matches_f64() {
    check_vec_dot(&Q4K);
}
#[test]
fn q5_k_vec_dot_matches_f64() {
    check_vec_dot(&Q5K);
}
#[test]
fn q6_k_vec_dot_matches_f64() {
    check_vec_dot(&Q6K);
}

// ---------------------------------------------------------------------------
// Q8_K itself

#[test]
fn q8_k_quantizes_every_reference_row() {
    for (row, x) in rows() {
        let blocks = quantize_q8k(&x);
        let y = dequantize_q8k(&blocks);
        for (b, (blk, xb)) in blocks.iter().zip(x.chunks(QK_K)).enumerate() {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            if amax == 0.0 {
                assert_eq!(blk.d, 0.0, "{row}/{b}: zero block has d = 0");
                assert!(blk.qs.iter().all(|&q| q == 0));
                assert!(blk.bsums.iter().all(|&s| s == 0));
                continue;
            }
            // The value of largest magnitude maps to ∓127: d = −max/127.
            let q_max = blk.qs.iter().map(|q| q.unsigned_abs()).max().unwrap();
            assert_eq!(q_max, 127, "{row}/{b}: largest quant");
            assert!(
                ((blk.d.abs() - amax / 127.0) / (amax / 127.0)).abs() < 1e-6,
                "{row}/{b}: d = {:e} for amax {amax:e}",
                blk.d
            );
            for (j, s) in blk.bsums.iter().enumerate() {
                let want: i32 = blk.qs[16 * j..16 * (j + 1)].iter().map(|&q| q as i32).sum();
                assert_eq!(i32::from(*s), want, "{row}/{b}: bsum {j}");
            }
            // Round to nearest: within half a step (plus f32 rounding).
            let half = 0.5 * blk.d.abs() * (1.0 + 1e-5);
            for (e, (&v, &r)) in xb.iter().zip(&y[b * QK_K..(b + 1) * QK_K]).enumerate() {
                assert!(
                    (v - r).abs() <= half,
                    "{row}/{b}: value {e}: {v:e} dequantized to {r:e} (d = {:e})",
                    blk.d
                );
            }
        }
        // The Q8_K · Q8_K dot.
        let acts = quantize_q8k(&activations(x.len(), 7));
        let got = kq::vec_dot_q8_k_q8_k(&blocks, &acts);
        let (exact, tol) = reference_dot(&y, &dequantize_q8k(&acts));
        assert!(
            (got as f64 - exact).abs() <= tol,
            "Q8_K/{row}: vec_dot {got:e}, f64 dot {exact:e}"
        );
    }
}
