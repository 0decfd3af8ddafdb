//! The 256-bit kernels, written once and instantiated twice: for AVX2 (where
//! an 8-bit dot product is `vpmaddubsw` + `vpmaddwd`) and for AVX-VNNI (one
//! `vpdpbusd`). The two instantiations differ only in the `prims` module in
//! scope at the macro call, which supplies:
//!
//! - `dot_u8i8(acc, u, s)`: `acc + Σ₄ u·s`, u8 × i8 products summed in fours
//!   into the eight i32 lanes. With AVX2 the pair sums go through i16, so
//!   callers keep `|u| ≤ 128` pairs below 2¹⁵ (true for every use here).
//! - `dot_i16(acc, a, b)`: `acc + Σ₂ a·b`, i16 pairs into i32 lanes.
//! - `dot_off(u, s, off)`: `Σ₄ (u − off)·s` into fresh i32 lanes, for
//!   `u, off ≤ 31`.
//!
//! Layout of the 32-wide formats: element `j` of a block is the low nibble of
//! `qs[j]` for `j < 16` and the high nibble of `qs[j − 16]` after, so one
//! 16-byte load gives the low lane (nibbles) and the same load shifted right by
//! four gives the high lane: the weights come out in element order and line up
//! with a plain 32-byte load of the Q8 activations.
//!
//! Offsets (Q4_0's `q − 8`, Q5_0's `q − 16`) are applied as `Σ q·y − 8·Σ y`
//! with both sums computed by the u8 × i8 product (`8·Σ y` as a vector of 8s
//! times `y`), which is
//! exact for every activation byte, −128 included, unlike ggml's sign trick.

/// The block loop of the K-quants with mins (Q2_K, Q4_K, Q5_K): `$block`
/// returns a block's i32 lane sums `s` (eight lanes: scaled quants ×
/// activations) and `m` (four lanes: mins × activation sums), and the block's
/// value is `d_y·(d·S − dmin·M)` for their totals `S`, `M`.
///
/// The two terms can be large and cancel (a block with an outlier), so they
/// are not rounded separately: two blocks at a time are reduced exactly to
/// `[S_a S_b M_a M_b]` and accumulated in f64 with exact coefficients, which
/// leaves the result within an f32 rounding of the exact value at about the
/// cost of ggml's separate f32 accumulators.
macro_rules! mins_loop {
    ($x:expr, $y:expr, $block:expr) => {
        mins_loop!($x, $y, |_: &_, _: &_| (), |xb, yb, _: ()| $block(xb, yb))
    };
    ($x:expr, $y:expr, $prep:expr, $main:expr) => {{
        let (x2, xr) = $x.as_chunks::<2>();
        let (y2, yr) = $y.as_chunks::<2>();
        let mut acc = _mm256_setzero_pd();
        for (xs, ys) in x2.iter().zip(y2) {
            let pa = $prep(&xs[0], &ys[0]);
            let pb = $prep(&xs[1], &ys[1]);
            let (sa, ma) = $main(&xs[0], &ys[0], pa);
            let (sb, mb) = $main(&xs[1], &ys[1], pb);
            let sums = _mm256_cvtepi32_pd(reduce_pair(sa, sb, ma, mb));
            let c = pair_coefs(
                [xs[0].d, xs[1].d],
                [xs[0].dmin, xs[1].dmin],
                [ys[0].d, ys[1].d],
            );
            acc = _mm256_fmadd_pd(c, sums, acc);
        }
        let mut sum = hsum_pd(acc);
        for (xb, yb) in xr.iter().zip(yr) {
            let p = $prep(xb, yb);
            let (s, m) = $main(xb, yb, p);
            let (s, m) = (f64::from(hsum_epi32(s)), f64::from(hsum_epi32_128(m)));
            let (d, dmin) = (f64::from(f16_to_f32(xb.d)), f64::from(f16_to_f32(xb.dmin)));
            sum += f64::from(yb.d) * (d * s - dmin * m);
        }
        sum as f32
    }};
}

/// The block loop of the K-quants without mins whose kernels take an offset
/// out through the activation sums (Q3_K, Q6_K): `$block` returns a block's
/// i32 lane sums, whose lanes are large (unsigned quants) although their total
/// is not, so the total is formed exactly before scaling: two blocks at a
/// time are reduced to `[S_a S_b]` and accumulated in f64 with the exact
/// coefficients `d·d_y`.
macro_rules! sums_loop {
    ($x:expr, $y:expr, $block:expr) => {{
        let (x2, xr) = $x.as_chunks::<2>();
        let (y2, yr) = $y.as_chunks::<2>();
        let mut acc = _mm_setzero_pd();
        for (xs, ys) in x2.iter().zip(y2) {
            let sa = $block(&xs[0], &ys[0]);
            let sb = $block(&xs[1], &ys[1]);
            let z = _mm_setzero_si128();
            let sums = _mm_cvtepi32_pd(reduce_pair(sa, sb, z, z));
            let c = pair_coefs([xs[0].d, xs[1].d], [xs[0].d, xs[1].d], [ys[0].d, ys[1].d]);
            acc = _mm_fmadd_pd(_mm256_castpd256_pd128(c), sums, acc);
        }
        let mut sum = _mm_cvtsd_f64(_mm_add_sd(acc, _mm_unpackhi_pd(acc, acc)));
        for (xb, yb) in xr.iter().zip(yr) {
            let s = f64::from(hsum_epi32($block(xb, yb)));
            sum += f64::from(yb.d) * f64::from(f16_to_f32(xb.d)) * s;
        }
        sum as f32
    }};
}

macro_rules! kernels_256 {
    ($feat:literal) => {
        use super::util::*;
        use crate::blocks::*;
        use crate::types::QK_K;
        use core::arch::x86_64::*;
        use prims::{dot_i16, dot_off, dot_u8i8};

        /// Runs `body` (the i32 lane sums of one block) over the blocks four
        /// at a time. Three `hadd`s turn the four blocks' lane sums into
        /// `[S0 S1 S2 S3 | S0' S1' S2' S3']` (the two 128-bit halves' partial
        /// sums), which one FMA scales by `[d0 d1 d2 d3 | d0 d1 d2 d3]`; the
        /// scales of all four blocks come from one F16C conversion
        /// (`mul4_f16`). Per-block splats of the scale would cost more than
        /// the integer work of a 4-bit block.
        macro_rules! block_loop {
            ($x:expr, $y:expr, $body:path) => {{
                let (x4, xr) = $x.as_chunks::<4>();
                let (y4, yr) = $y.as_chunks::<4>();
                let mut acc = _mm256_setzero_ps();
                for (xs, ys) in x4.iter().zip(y4) {
                    let s0 = $body(&xs[0], &ys[0]);
                    let s1 = $body(&xs[1], &ys[1]);
                    let s2 = $body(&xs[2], &ys[2]);
                    let s3 = $body(&xs[3], &ys[3]);
                    let t = _mm256_hadd_epi32(_mm256_hadd_epi32(s0, s1), _mm256_hadd_epi32(s2, s3));
                    let d = mul4_f16(
                        [xs[0].d, xs[1].d, xs[2].d, xs[3].d],
                        [ys[0].d, ys[1].d, ys[2].d, ys[3].d],
                    );
                    acc = _mm256_fmadd_ps(_mm256_set_m128(d, d), _mm256_cvtepi32_ps(t), acc);
                }
                let mut sum = hsum_ps(acc);
                for (xb, yb) in xr.iter().zip(yr) {
                    let d = f16_to_f32(xb.d) * f16_to_f32(yb.d);
                    sum += hsum_epi32($body(xb, yb)) as f32 * d;
                }
                sum
            }};
        }

        /// Like `block_loop!` for the formats with a minimum (Q4_1, Q5_1):
        /// each block's sum is reduced to one lane and combined with its own
        /// `m·s` in one FMA, `d·S + m·s`, as the scalar code does per block.
        /// The two terms can be large and cancel (a block with an outlier),
        /// so summing each across blocks separately would lose the low bits.
        macro_rules! block_loop_min {
            ($x:expr, $y:expr, $body:path) => {{
                let (x4, xr) = $x.as_chunks::<4>();
                let (y4, yr) = $y.as_chunks::<4>();
                let mut acc = _mm_setzero_ps();
                for (xs, ys) in x4.iter().zip(y4) {
                    let s0 = $body(&xs[0], &ys[0]);
                    let s1 = $body(&xs[1], &ys[1]);
                    let s2 = $body(&xs[2], &ys[2]);
                    let s3 = $body(&xs[3], &ys[3]);
                    let t = _mm256_hadd_epi32(_mm256_hadd_epi32(s0, s1), _mm256_hadd_epi32(s2, s3));
                    let s =
                        _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256::<1>(t));
                    let d = mul4_f16(
                        [xs[0].d, xs[1].d, xs[2].d, xs[3].d],
                        [ys[0].d, ys[1].d, ys[2].d, ys[3].d],
                    );
                    let m = mul4_f16(
                        [xs[0].m, xs[1].m, xs[2].m, xs[3].m],
                        [ys[0].s, ys[1].s, ys[2].s, ys[3].s],
                    );
                    acc = _mm_add_ps(acc, _mm_fmadd_ps(d, _mm_cvtepi32_ps(s), m));
                }
                let mut sum = hsum_ps128(acc);
                for (xb, yb) in xr.iter().zip(yr) {
                    let d = _mm_set_ss(f16_to_f32(xb.d) * f16_to_f32(yb.d));
                    let m = _mm_set_ss(f16_to_f32(xb.m) * f16_to_f32(yb.s));
                    let s = _mm_cvtsi32_ss(_mm_setzero_ps(), hsum_epi32($body(xb, yb)));
                    sum += _mm_cvtss_f32(_mm_fmadd_ss(d, s, m));
                }
                sum
            }};
        }

        /// `Σ x·y` of two i8 vectors in i32 lanes via the sign trick
        /// `|x| · (y·sign x)`: exact unless an activation byte is −128 where
        /// the weight is negative (our quantizers never emit −128).
        #[inline]
        #[target_feature(enable = $feat)]
        fn dot_i8i8(x: __m256i, y: __m256i) -> __m256i {
            let ax = _mm256_sign_epi8(x, x);
            let sy = _mm256_sign_epi8(y, x);
            dot_u8i8(_mm256_setzero_si256(), ax, sy)
        }

        /// The 5th bits of a Q5 block as 0x10 bytes, in element order.
        #[inline]
        #[target_feature(enable = $feat)]
        fn fifth_bits(qh: [u8; 4]) -> __m256i {
            _mm256_and_si256(
                bytes_from_bits(u32::from_le_bytes(qh)),
                _mm256_set1_epi8(0x10),
            )
        }

        #[inline]
        #[target_feature(enable = $feat)]
        pub(in super::super) fn block_q4_0(x: &BlockQ4_0, y: &BlockQ8_0) -> __m256i {
            dot_off(nibbles(&x.qs), ld256(&y.qs), 8)
        }

        #[inline]
        #[target_feature(enable = $feat)]
        pub(in super::super) fn block_q4_1(x: &BlockQ4_1, y: &BlockQ8_1) -> __m256i {
            dot_u8i8(_mm256_setzero_si256(), nibbles(&x.qs), ld256(&y.qs))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        pub(in super::super) fn block_q5_0(x: &BlockQ5_0, y: &BlockQ8_0) -> __m256i {
            let q = _mm256_or_si256(nibbles(&x.qs), fifth_bits(x.qh));
            dot_off(q, ld256(&y.qs), 16)
        }

        #[inline]
        #[target_feature(enable = $feat)]
        pub(in super::super) fn block_q5_1(x: &BlockQ5_1, y: &BlockQ8_1) -> __m256i {
            let q = _mm256_or_si256(nibbles(&x.qs), fifth_bits(x.qh));
            dot_u8i8(_mm256_setzero_si256(), q, ld256(&y.qs))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        pub(in super::super) fn block_q8_0(x: &BlockQ8_0, y: &BlockQ8_0) -> __m256i {
            dot_i8i8(ld256(&x.qs), ld256(&y.qs))
        }

        /// Q4_0 · Q8_0.
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            block_loop!(x, y, block_q4_0)
        }

        /// Q4_1 · Q8_1.
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            block_loop_min!(x, y, block_q4_1)
        }

        /// Q5_0 · Q8_0.
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            block_loop!(x, y, block_q5_0)
        }

        /// Q5_1 · Q8_1.
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            block_loop_min!(x, y, block_q5_1)
        }

        /// Q8_0 · Q8_0.
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            block_loop!(x, y, block_q8_0)
        }

        /// The eight 6-bit scales (i16, lanes 0..8) and mins (lanes 8..16) of
        /// a Q4_K/Q5_K block, from its first 16 bytes (`d`, `dmin`, and the
        /// 12 packed bytes).
        ///
        /// The 12 bytes (u32 words w0 w1 w2) pack scale/min `j < 4` in the low
        /// 6 bits of bytes `j`/`j + 4`, and `j ≥ 4` as a low nibble in byte
        /// `j + 4` (scale) or its high nibble (min) plus the top two bits of
        /// bytes `j − 4`/`j`. ggml's word formulas, one per u32 lane:
        /// `[w0 & 3f, (w2 & 0f) | (w0 >> 2 & 30), w1 & 3f, (w2 >> 4 & 0f) | (w1 >> 2 & 30)]`.
        #[inline]
        #[target_feature(enable = $feat)]
        pub(in super::super) fn scales_mins_k4(head: &[u8; 16]) -> __m256i {
            let v = ld128(head); // [d|dmin, w0, w1, w2]
            let a = _mm_shuffle_epi32::<0b11_10_11_01>(v); // w0 w2 w1 w2
            let b = _mm_shuffle_epi32::<0b10_10_01_01>(v); // w0 w0 w1 w1
            let a = _mm_srlv_epi32(a, _mm_setr_epi32(0, 0, 0, 4));
            let lo = _mm_and_si128(
                a,
                _mm_setr_epi32(0x3f3f_3f3f, 0x0f0f_0f0f, 0x3f3f_3f3f, 0x0f0f_0f0f),
            );
            let hi = _mm_and_si128(
                _mm_srli_epi32::<2>(b),
                _mm_setr_epi32(0, 0x3030_3030, 0, 0x3030_3030),
            );
            _mm256_cvtepu8_epi16(_mm_or_si128(lo, hi))
        }

        /// `Σⱼ minⱼ · (Σ of the activations of group j)` of a Q4_K/Q5_K block
        /// as four i32 lanes: the 16-sums of Q8_K pair up into the 32-groups.
        #[inline]
        #[target_feature(enable = $feat)]
        pub(in super::super) fn mins_dot_bsums(mins: __m128i, bsums: &[i16; 16]) -> __m128i {
            let b = ld256(bsums);
            let sums32 =
                _mm_hadd_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256::<1>(b));
            _mm_madd_epi16(mins, sums32)
        }

        /// The Q4_K / Q5_K dot product. `$high(xb)` returns a closure giving,
        /// for 64-element chunk `j`, the bits to OR into the low- and
        /// high-nibble quants (zeros for Q4_K, the fifth bits for Q5_K).
        ///
        /// Per 64 elements, 32 bytes of `qs` hold elements 0..32 in the low
        /// nibbles (sub-block 2j) and 32..64 in the high ones (2j + 1); u8 × i8
        /// pair sums (≤ 2·31·128) fit in i16 and are then multiplied by the
        /// sub-block's scale with `dot_i16`. The mins meet the activations only
        /// through their 16-sums `bsums`: `Σⱼ minⱼ · (b₂ⱼ + b₂ⱼ₊₁)`.
        macro_rules! q4k_like {
            ($x:expr, $y:expr, $t:ty, $high:expr) => {{
                // Byte shuffles that broadcast i16 scale `k` to all 16 i16 lanes.
                let pick = |k: i16| _mm256_set1_epi16((2 * k) | ((2 * k + 1) << 8));
                let m4 = _mm256_set1_epi8(0x0f);
                mins_loop!($x, $y, |xb: &$t, yb: &BlockQ8K| {
                    let sm = scales_mins_k4(head16(xb));
                    let m = mins_dot_bsums(_mm256_extracti128_si256::<1>(sm), &yb.bsums);
                    let high = $high(xb);
                    let sc = _mm256_permute2x128_si256::<0x00>(sm, sm);
                    let q4 = xb.qs.as_chunks::<32>().0;
                    let q8 = yb.qs.as_chunks::<32>().0;
                    let mut s0 = _mm256_setzero_si256();
                    let mut s1 = _mm256_setzero_si256();
                    for j in 0..QK_K / 64 {
                        let bits = ld256(&q4[j]);
                        let (hlo, hhi) = high(j);
                        let lo = _mm256_or_si256(_mm256_and_si256(bits, m4), hlo);
                        let hi = _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4),
                            hhi,
                        );
                        let plo = _mm256_maddubs_epi16(lo, ld256(&q8[2 * j]));
                        let phi = _mm256_maddubs_epi16(hi, ld256(&q8[2 * j + 1]));
                        let k = 2 * j as i16;
                        s0 = dot_i16(s0, plo, _mm256_shuffle_epi8(sc, pick(k)));
                        s1 = dot_i16(s1, phi, _mm256_shuffle_epi8(sc, pick(k + 1)));
                    }
                    (_mm256_add_epi32(s0, s1), m)
                })
            }};
        }

        /// Q4_K · Q8_K.
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            let z = _mm256_setzero_si256();
            q4k_like!(x, y, BlockQ4K, |_: &BlockQ4K| move |_: usize| (z, z))
        }

        /// Q5_K · Q8_K: Q4_K with a fifth bit per element; element
        /// `64j + l` (l < 32) has it at bit 2j of `qh[l]`, element
        /// `64j + 32 + l` at bit 2j + 1, moved to bit 4 by two shifts.
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q5_k_q8_k(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            let m10 = _mm256_set1_epi8(0x10);
            q4k_like!(x, y, BlockQ5K, |xb: &BlockQ5K| {
                let qh = ld256(&xb.qh);
                move |j: usize| {
                    // 16-bit shifts: bits crossing a byte boundary are masked.
                    let h = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * j as i32));
                    (
                        _mm256_and_si256(_mm256_slli_epi16::<4>(h), m10),
                        _mm256_and_si256(_mm256_slli_epi16::<3>(h), m10),
                    )
                }
            })
        }

        /// `[scale_g ×8 | scale_g+1 ×8]` (i16) for the 32 products of
        /// elements `32k..32k+32` of a 16-group format, `k` in 0..8, from the
        /// 16 i16 scales `sc`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn group_scales(sc: __m256i, k: usize) -> __m256i {
            // Scales 8n..8n+8 (n = k / 4) in both lanes, then a byte shuffle
            // picks i16 2(k % 4) for the low lane and 2(k % 4) + 1 for the high.
            let scn = if k < 4 {
                _mm256_permute2x128_si256::<0x00>(sc, sc)
            } else {
                _mm256_permute2x128_si256::<0x11>(sc, sc)
            };
            let (a, b) = (4 * (k % 4) as i16, 4 * (k % 4) as i16 + 2);
            let pick = _mm256_setr_epi16(
                a | (a + 1) << 8,
                a | (a + 1) << 8,
                a | (a + 1) << 8,
                a | (a + 1) << 8,
                a | (a + 1) << 8,
                a | (a + 1) << 8,
                a | (a + 1) << 8,
                a | (a + 1) << 8,
                b | (b + 1) << 8,
                b | (b + 1) << 8,
                b | (b + 1) << 8,
                b | (b + 1) << 8,
                b | (b + 1) << 8,
                b | (b + 1) << 8,
                b | (b + 1) << 8,
                b | (b + 1) << 8,
            );
            _mm256_shuffle_epi8(scn, pick)
        }

        /// The sixteen 6-bit Q3_K scales minus 32, as i16: low nibbles in
        /// bytes 0-7 (groups 0-7) and their high halves (8-15), top two bits
        /// in bytes 8-11 (group j at byte 8 + j % 4, bits 2(j / 4)). Three u32
        /// words rearranged as ggml does.
        #[inline]
        #[target_feature(enable = $feat)]
        pub(in super::super) fn scales_q3_k(packed: &[u8; 12]) -> __m256i {
            const M1: u32 = 0x0303_0303;
            const M2: u32 = 0x0f0f_0f0f;
            let w = |i: usize| {
                u32::from_le_bytes([
                    packed[4 * i],
                    packed[4 * i + 1],
                    packed[4 * i + 2],
                    packed[4 * i + 3],
                ])
            };
            let (a0, a1, a2) = (w(0), w(1), w(2));
            let v = _mm_setr_epi32(
                ((a0 & M2) | ((a2 & M1) << 4)) as i32,
                ((a1 & M2) | (((a2 >> 2) & M1) << 4)) as i32,
                (((a0 >> 4) & M2) | (((a2 >> 4) & M1) << 4)) as i32,
                (((a1 >> 4) & M2) | (((a2 >> 6) & M1) << 4)) as i32,
            );
            _mm256_cvtepi8_epi16(_mm_sub_epi8(v, _mm_set1_epi8(32)))
        }

        /// Q3_K · Q8_K.
        ///
        /// Per 128 elements, 32 bytes of `qs` hold four 2-bit fields
        /// (elements 32s + l at bits 2s of byte l) and the high bit of element
        /// e is bit e / 32 of `hmask[e % 32]`. The quant `q2 − 4·(1 − h)` is
        /// used as the unsigned `q2 + 4h` (0..8) and the −4 comes back once per
        /// block as `4 · Σ_g scale_g · bsum_g`.
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q3_k_q8_k(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            let m3 = _mm256_set1_epi8(0x03);
            let m4 = _mm256_set1_epi8(0x04);
            sums_loop!(x, y, |xb: &BlockQ3K, yb: &BlockQ8K| {
                let sc = scales_q3_k(&xb.scales);
                let corr = _mm256_madd_epi16(sc, ld256(&yb.bsums));
                let mut sumi =
                    _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<2>(corr));
                let hm = ld256(&xb.hmask);
                let qs = xb.qs.as_chunks::<32>().0;
                let q8 = yb.qs.as_chunks::<32>().0;
                for n in 0..QK_K / 128 {
                    let q2 = ld256(&qs[n]);
                    for f in 0..4 {
                        let k = 4 * n + f;
                        let lo = _mm256_and_si256(
                            _mm256_srl_epi16(q2, _mm_cvtsi32_si128(2 * f as i32)),
                            m3,
                        );
                        // Bit k of each hmask byte to bit 2.
                        let h = if k >= 2 {
                            _mm256_srl_epi16(hm, _mm_cvtsi32_si128(k as i32 - 2))
                        } else {
                            _mm256_sll_epi16(hm, _mm_cvtsi32_si128(2 - k as i32))
                        };
                        let q = _mm256_or_si256(lo, _mm256_and_si256(h, m4));
                        let p = _mm256_maddubs_epi16(q, ld256(&q8[k]));
                        sumi = dot_i16(sumi, p, group_scales(sc, k));
                    }
                }
                sumi
            })
        }

        /// Q2_K · Q8_K.
        ///
        /// The 2-bit quants are laid out as in Q3_K; each 16-group has a
        /// 4-bit scale (low nibble of `scales[g]`) and a 4-bit min (high
        /// nibble), the mins meeting the activations through `bsums`.
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q2_k_q8_k(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            let m3 = _mm256_set1_epi8(0x03);
            let m4 = _mm_set1_epi8(0x0f);
            mins_loop!(x, y, |xb: &BlockQ2K, yb: &BlockQ8K| {
                let raw = ld128(&xb.scales);
                let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(raw), m4));
                let m = _mm256_madd_epi16(mins, ld256(&yb.bsums));
                let m = _mm_add_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256::<1>(m));
                let sc = _mm256_cvtepu8_epi16(_mm_and_si128(raw, m4));
                let qs = xb.qs.as_chunks::<32>().0;
                let q8 = yb.qs.as_chunks::<32>().0;
                let mut sumi = _mm256_setzero_si256();
                for n in 0..QK_K / 128 {
                    let q2 = ld256(&qs[n]);
                    for f in 0..4 {
                        let k = 4 * n + f;
                        let q = _mm256_and_si256(
                            _mm256_srl_epi16(q2, _mm_cvtsi32_si128(2 * f as i32)),
                            m3,
                        );
                        let p = _mm256_maddubs_epi16(q, ld256(&q8[k]));
                        sumi = dot_i16(sumi, p, group_scales(sc, k));
                    }
                }
                (sumi, m)
            })
        }

        /// Q6_K · Q8_K.
        ///
        /// Per 128 elements: `ql[0..32]`/`ql[32..64]` hold the low nibbles of
        /// elements 0..32/32..64 and the high nibbles of 64..96/96..128;
        /// `qh[0..32]` holds their top two bits at bits 0-1, 2-3, 4-5, 6-7.
        /// The quants are used unsigned (0..64) and the −32 offset is removed
        /// once per block as `32 · Σ_g scale_g · bsum_g`. Each product vector
        /// covers two 16-groups, so it is multiplied by
        /// `[scale_g ×8 | scale_g+1 ×8]` (i16).
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            let m4 = _mm256_set1_epi8(0x0f);
            let m30 = _mm256_set1_epi8(0x30);
            sums_loop!(x, y, |xb: &BlockQ6K, yb: &BlockQ8K| {
                let sc = _mm256_cvtepi8_epi16(ld128(&xb.scales));
                // −32 · Σ_g scale_g · bsum_g, exact in i32.
                let corr = _mm256_madd_epi16(sc, ld256(&yb.bsums));
                let mut sumi =
                    _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(corr));
                let ql = xb.ql.as_chunks::<32>().0;
                let qh = xb.qh.as_chunks::<32>().0;
                let q8 = yb.qs.as_chunks::<32>().0;
                for n in 0..QK_K / 128 {
                    let h = ld256(&qh[n]);
                    let l0 = ld256(&ql[2 * n]);
                    let l1 = ld256(&ql[2 * n + 1]);
                    // (h << s) & 0x30 moves bit pair k to bits 4-5; 16-bit
                    // shifts only spill bits the mask clears.
                    let q = [
                        _mm256_or_si256(
                            _mm256_and_si256(l0, m4),
                            _mm256_and_si256(_mm256_slli_epi16::<4>(h), m30),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(l1, m4),
                            _mm256_and_si256(_mm256_slli_epi16::<2>(h), m30),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                            _mm256_and_si256(h, m30),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
                            _mm256_and_si256(_mm256_srli_epi16::<2>(h), m30),
                        ),
                    ];
                    for k in 0..4 {
                        let p = _mm256_maddubs_epi16(q[k], ld256(&q8[4 * n + k]));
                        sumi = dot_i16(sumi, p, group_scales(sc, 4 * n + k));
                    }
                }
                sumi
            })
        }
    };
}
