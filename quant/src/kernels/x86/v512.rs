//! The 512-bit kernels, written once and instantiated for AVX-512 (F/BW/VL/DQ,
//! products through `vpmaddubsw`/`vpmaddwd`) and AVX-512 VNNI (`vpdpbusd`,
//! `vpdpwssd`); the `prims` module in scope at the macro call supplies
//! `dot_u8i8`, `dot_i16`, `dot_off` and `dot_i8i8` on `__m512i` with the
//! meanings of the 256-bit ones (see `v256.rs`).
//!
//! The 32-wide formats put two blocks in one register: lanes 0..32 hold block
//! `a` and 32..64 block `b`, each in element order, so the Q8 activations are
//! two plain 32-byte loads. The i32 lane sums then hold block `a` in lanes
//! 0..8 and `b` in 8..16, and are scaled by `[d_a ×8 | d_b ×8]`.
//!
//! The K-quants take 64 elements per register; see each kernel for the lane
//! layout. Blocks left over from the four-block (legacy) loops run through the
//! AVX2 block functions of the same algorithm.

macro_rules! kernels_512 {
    ($feat:literal) => {
        use super::avx2;
        use super::util::*;
        use crate::blocks::*;
        use crate::types::QK_K;
        use core::arch::x86_64::*;
        use prims::{dot_i8i8, dot_i16, dot_off, dot_u8i8};

        /// Unaligned 64-byte load of any 64-byte value.
        #[inline]
        #[target_feature(enable = $feat)]
        fn ld512<T: Copy>(p: &T) -> __m512i {
            const { assert!(core::mem::size_of::<T>() == 64) };
            // SAFETY: `p` refers to 64 readable bytes; `loadu` has no
            // alignment need.
            unsafe { _mm512_loadu_si512((p as *const T).cast()) }
        }

        /// The two 256-bit halves of `v` added.
        #[inline]
        #[target_feature(enable = $feat)]
        fn fold512(v: __m512i) -> __m256i {
            _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
        }

        /// Two 32-byte values side by side: `[a | b]`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn ld2x256<T: Copy>(a: &T, b: &T) -> __m512i {
            let v = _mm512_broadcast_i64x4(ld256(a));
            _mm512_mask_broadcast_i64x4(v, 0xf0, ld256(b))
        }

        /// The nibbles of two 4-bit blocks as `[a in element order | b …]`:
        /// each 16-byte `qs` is broadcast to both 128-bit lanes of its half
        /// (`[qa qa qb qb]`), then the odd lanes are shifted down by four.
        #[inline]
        #[target_feature(enable = $feat)]
        fn nibbles2(qa: &[u8; 16], qb: &[u8; 16]) -> __m512i {
            let v = _mm512_broadcast_i32x4(ld128(qa));
            let v = _mm512_mask_broadcast_i32x4(v, 0xff00, ld128(qb));
            let v = _mm512_srlv_epi64(v, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4));
            _mm512_and_si512(v, _mm512_set1_epi8(0x0f))
        }

        /// The 5th bits of two Q5 blocks as 0x10 bytes, in the nibbles2 order.
        #[inline]
        #[target_feature(enable = $feat)]
        fn fifth_bits2(qa: [u8; 4], qb: [u8; 4]) -> __m512i {
            let k = u64::from(u32::from_le_bytes(qa)) | u64::from(u32::from_le_bytes(qb)) << 32;
            _mm512_maskz_mov_epi8(k, _mm512_set1_epi8(0x10))
        }

        /// `[v0 ×8 | v1 ×8]` (k = 0) or `[v2 ×8 | v3 ×8]` (k = 1) of a 4-lane
        /// vector.
        #[inline]
        #[target_feature(enable = $feat)]
        fn spread2(v: __m128, k: i32) -> __m512 {
            let (a, b) = (2 * k, 2 * k + 1);
            let idx = _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b);
            _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v))
        }

        /// Four blocks per iteration as two register pairs: `$quad` gives the
        /// i32 lane sums of blocks (0, 1) and (2, 3) and the four scales
        /// `d_x·d_y`; `$tail` (the AVX2 block function) the lane sums of one
        /// leftover block. Each pair is scaled by its `[d_a ×8 | d_b ×8]`.
        macro_rules! quad_loop {
            ($x:expr, $y:expr, $quad:path, $tail:path) => {
                quad_loop!($x, $y, |xs, ys| $quad(xs, ys), $tail)
            };
            ($x:expr, $y:expr, |$xs:ident, $ys:ident| $quad:expr, $tail:path) => {{
                let (x4, xr) = $x.as_chunks::<4>();
                let (y4, yr) = $y.as_chunks::<4>();
                let mut acc0 = _mm512_setzero_ps();
                let mut acc1 = _mm512_setzero_ps();
                for ($xs, $ys) in x4.iter().zip(y4) {
                    let (s01, s23, d) = $quad;
                    acc0 = _mm512_fmadd_ps(spread2(d, 0), _mm512_cvtepi32_ps(s01), acc0);
                    acc1 = _mm512_fmadd_ps(spread2(d, 1), _mm512_cvtepi32_ps(s23), acc1);
                }
                let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
                for (xb, yb) in xr.iter().zip(yr) {
                    let d = f16_to_f32(xb.d) * f16_to_f32(yb.d);
                    sum += hsum_epi32($tail(xb, yb)) as f32 * d;
                }
                sum
            }};
        }

        /// `quad_loop!` with a pair body and the four scales converted from
        /// scalar loads.
        macro_rules! pair_loop {
            ($x:expr, $y:expr, $body:path, $tail:path) => {
                quad_loop!(
                    $x,
                    $y,
                    |xs, ys| {
                        let d = mul4_f16(
                            [xs[0].d, xs[1].d, xs[2].d, xs[3].d],
                            [ys[0].d, ys[1].d, ys[2].d, ys[3].d],
                        );
                        (
                            $body(&xs[0], &xs[1], &ys[0], &ys[1]),
                            $body(&xs[2], &xs[3], &ys[2], &ys[3]),
                            d,
                        )
                    },
                    $tail
                )
            };
        }

        /// Bytes `off..off + 64` of a group of blocks.
        #[inline]
        #[target_feature(enable = $feat)]
        fn ld_bytes<T: bytemuck::Pod, const N: usize>(g: &[T; N], off: usize) -> __m512i {
            let b: &[u8] = bytemuck::cast_slice(g.as_slice());
            ld512(<&[u8; 64]>::try_from(&b[off..off + 64]).unwrap())
        }

        /// Word indices for `vpermw` / `vpermt2w` (up to 32; the rest 0),
        /// as a constant (built at run time, the table would go through the
        /// stack on every iteration).
        const fn words(idx: &[i16]) -> [i16; 32] {
            let mut w = [0i16; 32];
            let mut i = 0;
            while i < idx.len() {
                w[i] = idx[i];
                i += 1;
            }
            w
        }

        /// `[d_x·d_y]` of four blocks from eight f16 words: `h`'s low 128
        /// bits hold `[dx0 dx1 dx2 dx3 dy0 dy1 dy2 dy3]`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn mul4_words(h: __m512i) -> __m128 {
            let f = _mm256_cvtph_ps(_mm512_castsi512_si128(h));
            _mm_mul_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps::<1>(f))
        }

        /// Q4_0 · Q8_0, four blocks at a time.
        ///
        /// Four Q4_0 blocks are 72 bytes: block k's `d` is word 9k and its
        /// 16 `qs` bytes start at byte 18k + 2, always an even offset. So one
        /// 64-byte load (bytes 0..64) holds the four `d`s and the `qs` of
        /// blocks 0 and 1, another (bytes 8..72) those of blocks 2 and 3, and a
        /// word permute lays each pair out as `[qa qa qb qb]` for `nibbles2`'s
        /// shift (a load and one shuffle per pair instead of three). The
        /// activation scales are gathered the same way; all eight halves are
        /// converted at once. (On Zen 5 this beats both the broadcasts and
        /// scalar f16 loads of the scales, measurably.)
        #[inline]
        #[target_feature(enable = $feat)]
        fn quad_q4_0(xs: &[BlockQ4_0; 4], ys: &[BlockQ8_0; 4]) -> (__m512i, __m512i, __m128) {
            /// Words `a..a+8` twice, then `b..b+8` twice.
            const fn run(a: i16, b: i16) -> [i16; 32] {
                let mut w = [0i16; 32];
                let mut i = 0;
                while i < 8 {
                    (w[i], w[8 + i], w[16 + i], w[24 + i]) =
                        (a + i as i16, a + i as i16, b + i as i16, b + i as i16);
                    i += 1;
                }
                w
            }
            const RUN01: [i16; 32] = run(1, 10);
            const RUN23: [i16; 32] = run(15, 24);
            let run = |w: &[i16; 32]| ld512(w);
            let (x0, x1) = (ld_bytes(xs, 0), ld_bytes(xs, 8));
            let sh = _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4);
            let m4 = _mm512_set1_epi8(0x0f);
            let w01 = _mm512_and_si512(
                _mm512_srlv_epi64(_mm512_permutexvar_epi16(run(&RUN01), x0), sh),
                m4,
            );
            let w23 = _mm512_and_si512(
                _mm512_srlv_epi64(_mm512_permutexvar_epi16(run(&RUN23), x1), sh),
                m4,
            );
            let s01 = dot_off(w01, ld2x256(&ys[0].qs, &ys[1].qs), 8);
            let s23 = dot_off(w23, ld2x256(&ys[2].qs, &ys[3].qs), 8);
            // The Q8_0 scales (34-byte blocks) are words 0 and 17 of the first
            // 64 bytes and 2 and 19 of the next 64.
            let (y0, y1) = (ld_bytes(ys, 0), ld_bytes(ys, 64));
            const D_A: [i16; 32] = words(&[0, 9, 18, 27, 32, 32 + 17]);
            const D_B: [i16; 32] = words(&[0, 1, 2, 3, 4, 5, 32 + 2, 32 + 19]);
            let h = _mm512_permutex2var_epi16(x0, ld512(&D_A), y0);
            let h = _mm512_permutex2var_epi16(h, ld512(&D_B), y1);
            (s01, s23, mul4_words(h))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn pair_q8_0(xa: &BlockQ8_0, xb: &BlockQ8_0, ya: &BlockQ8_0, yb: &BlockQ8_0) -> __m512i {
            dot_i8i8(ld2x256(&xa.qs, &xb.qs), ld2x256(&ya.qs, &yb.qs))
        }

        /// `pair_loop!` for the formats with a minimum: each block's sum is
        /// reduced to one lane and combined with its `m·s` in one FMA, as the
        /// scalar code does (see `block_loop_min!` in `v256.rs` for why).
        macro_rules! pair_loop_min {
            ($x:expr, $y:expr, $body:path, $tail:path) => {{
                let (x4, xr) = $x.as_chunks::<4>();
                let (y4, yr) = $y.as_chunks::<4>();
                let mut acc = _mm_setzero_ps();
                for (xs, ys) in x4.iter().zip(y4) {
                    let s01 = $body(&xs[0], &xs[1], &ys[0], &ys[1]);
                    let s23 = $body(&xs[2], &xs[3], &ys[2], &ys[3]);
                    // 128-bit lanes: s01 = [a a' b b'], s23 = [c c' d d'];
                    // add the two lanes of each block, then within the lane.
                    let u = _mm512_shuffle_i64x2::<0b10_00_10_00>(s01, s23);
                    let v = _mm512_shuffle_i64x2::<0b11_01_11_01>(s01, s23);
                    let t = _mm512_add_epi32(u, v);
                    let t = _mm512_add_epi32(t, _mm512_shuffle_epi32::<0b01_00_11_10>(t));
                    let t = _mm512_add_epi32(t, _mm512_shuffle_epi32::<0b10_11_00_01>(t));
                    let s = _mm512_castsi512_si128(_mm512_permutexvar_epi32(
                        _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
                        t,
                    ));
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
                    let s = _mm_cvtsi32_ss(_mm_setzero_ps(), hsum_epi32($tail(xb, yb)));
                    sum += _mm_cvtss_f32(_mm_fmadd_ss(d, s, m));
                }
                sum
            }};
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn pair_q4_1(xa: &BlockQ4_1, xb: &BlockQ4_1, ya: &BlockQ8_1, yb: &BlockQ8_1) -> __m512i {
            dot_u8i8(
                _mm512_setzero_si512(),
                nibbles2(&xa.qs, &xb.qs),
                ld2x256(&ya.qs, &yb.qs),
            )
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn pair_q5_0(xa: &BlockQ5_0, xb: &BlockQ5_0, ya: &BlockQ8_0, yb: &BlockQ8_0) -> __m512i {
            let q = _mm512_or_si512(nibbles2(&xa.qs, &xb.qs), fifth_bits2(xa.qh, xb.qh));
            dot_off(q, ld2x256(&ya.qs, &yb.qs), 16)
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn pair_q5_1(xa: &BlockQ5_1, xb: &BlockQ5_1, ya: &BlockQ8_1, yb: &BlockQ8_1) -> __m512i {
            let q = _mm512_or_si512(nibbles2(&xa.qs, &xb.qs), fifth_bits2(xa.qh, xb.qh));
            dot_u8i8(_mm512_setzero_si512(), q, ld2x256(&ya.qs, &yb.qs))
        }

        /// Q4_0 · Q8_0.
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            quad_loop!(x, y, quad_q4_0, avx2::block_q4_0)
        }

        /// Q4_1 · Q8_1.
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            pair_loop_min!(x, y, pair_q4_1, avx2::block_q4_1)
        }

        /// Q5_0 · Q8_0.
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            pair_loop!(x, y, pair_q5_0, avx2::block_q5_0)
        }

        /// Q5_1 · Q8_1.
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            pair_loop_min!(x, y, pair_q5_1, avx2::block_q5_1)
        }

        /// Q8_0 · Q8_0.
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            pair_loop!(x, y, pair_q8_0, avx2::block_q8_0)
        }

        /// `[c0 c1 c2 c3]` byte-pair indices: a shuffle whose 128-bit lane
        /// `i` broadcasts i16 element `c_i` of that lane.
        #[inline]
        #[target_feature(enable = $feat)]
        fn pick16(c: [i32; 4]) -> __m512i {
            let w = |k: i32| (2 * k) | ((2 * k + 1) << 8) | ((2 * k) << 16) | ((2 * k + 1) << 24);
            let (a, b, e, f) = (w(c[0]), w(c[1]), w(c[2]), w(c[3]));
            _mm512_setr_epi32(a, a, a, a, b, b, b, b, e, e, e, e, f, f, f, f)
        }

        /// `(a & c) | b` for `vpternlogd` (a = 0xf0, b = 0xcc, c = 0xaa):
        /// merges masked low bits `a & c` with already-masked high bits `b`.
        const OR_LOW: i32 = 0xec;

        /// The Q4_K / Q5_K dot product; `$high(xb)` gives, for each
        /// 128-element half `m`, the bits (already masked) to OR into the
        /// low- and high-nibble quants.
        ///
        /// 64 bytes of `qs` (128 elements, sub-blocks 4m..4m+4) hold
        /// `[sub 4m | sub 4m+2]` in the low nibbles and `[4m+1 | 4m+3]` in the
        /// high ones, so the activations are loaded as the matching pairs of
        /// 32-byte runs. The products are scaled per 256-bit half by
        /// `[sc ×16 | sc' ×16]` (i16); mins and the exact per-block
        /// combination as in the AVX2 kernel (`mins_loop!`).
        macro_rules! q4k_like512 {
            ($x:expr, $y:expr, $t:ty, $high:expr) => {{
                let m4 = _mm512_set1_epi8(0x0f);
                let picks = [
                    pick16([0, 0, 2, 2]),
                    pick16([1, 1, 3, 3]),
                    pick16([4, 4, 6, 6]),
                    pick16([5, 5, 7, 7]),
                ];
                mins_loop!(
                    $x,
                    $y,
                    |xb: &$t, yb: &BlockQ8K| {
                        let sm = avx2::scales_mins_k4(head16(xb));
                        let m = avx2::mins_dot_bsums(_mm256_extracti128_si256::<1>(sm), &yb.bsums);
                        let sc = _mm512_broadcast_i32x4(_mm256_castsi256_si128(sm));
                        (m, [0, 1, 2, 3].map(|k| _mm512_shuffle_epi8(sc, picks[k])))
                    },
                    |xb: &$t, yb: &BlockQ8K, (m, scv): (__m128i, [__m512i; 4])| {
                        let high = $high(xb);
                        let q4 = xb.qs.as_chunks::<64>().0;
                        let q8 = yb.qs.as_chunks::<32>().0;
                        // Two accumulators: a chain of four `vpdpwssd` per block
                        // would be latency-bound.
                        let (mut s, mut t) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                        for m in 0..QK_K / 128 {
                            let bits = ld512(&q4[m]);
                            let (hlo, hhi) = high(m);
                            let lo = _mm512_ternarylogic_epi32::<OR_LOW>(bits, hlo, m4);
                            let hi = _mm512_ternarylogic_epi32::<OR_LOW>(
                                _mm512_srli_epi16::<4>(bits),
                                hhi,
                                m4,
                            );
                            let p0 = _mm512_maddubs_epi16(lo, ld2x256(&q8[4 * m], &q8[4 * m + 2]));
                            let p1 =
                                _mm512_maddubs_epi16(hi, ld2x256(&q8[4 * m + 1], &q8[4 * m + 3]));
                            s = dot_i16(s, p0, scv[2 * m]);
                            t = dot_i16(t, p1, scv[2 * m + 1]);
                        }
                        (fold512(_mm512_add_epi32(s, t)), m)
                    }
                )
            }};
        }

        /// Q4_K · Q8_K.
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            let z = _mm512_setzero_si512();
            q4k_like512!(x, y, BlockQ4K, |_: &BlockQ4K| move |_: usize| (z, z))
        }

        /// Q5_K · Q8_K: the fifth bit of sub-block k's element l is bit k of
        /// `qh[l]`; `qh` is broadcast to both 256-bit halves and shifted per
        /// 64-bit lane so that the bit of the half's sub-block lands at bit 4.
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q5_k_q8_k(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            let m10 = _mm512_set1_epi8(0x10);
            let halves = |a: i64, b: i64| _mm512_setr_epi64(a, a, a, a, b, b, b, b);
            // Half m = 0: sub-blocks (0, 2) and (1, 3), shifted left to bit 4;
            // m = 1: (4, 6) and (5, 7), shifted right.
            let (l0, h0) = (halves(4, 2), halves(3, 1));
            let (l1, h1) = (halves(0, 2), halves(1, 3));
            q4k_like512!(x, y, BlockQ5K, |xb: &BlockQ5K| {
                let qh = _mm512_broadcast_i64x4(ld256(&xb.qh));
                move |m: usize| {
                    let (lo, hi) = if m == 0 {
                        (_mm512_sllv_epi64(qh, l0), _mm512_sllv_epi64(qh, h0))
                    } else {
                        (_mm512_srlv_epi64(qh, l1), _mm512_srlv_epi64(qh, h1))
                    };
                    (_mm512_and_si512(lo, m10), _mm512_and_si512(hi, m10))
                }
            })
        }

        /// The i16 scale vectors of the two 64-element products of half `n`
        /// of a 16-group format: 128-bit lane c of the first covers group
        /// 8n + c, of the second 8n + 4 + c.
        #[inline]
        #[target_feature(enable = $feat)]
        fn group_scales512(sc: __m256i, n: usize) -> (__m512i, __m512i) {
            let scn = if n == 0 {
                _mm512_broadcast_i32x4(_mm256_castsi256_si128(sc))
            } else {
                _mm512_broadcast_i32x4(_mm256_extracti128_si256::<1>(sc))
            };
            (
                _mm512_shuffle_epi8(scn, pick16([0, 1, 2, 3])),
                _mm512_shuffle_epi8(scn, pick16([4, 5, 6, 7])),
            )
        }

        /// The 2-bit fields of 32 bytes of `qs` (half n of a Q2_K/Q3_K
        /// block), unmasked: `[f0 | f1]` (elements 0..64) and `[f2 | f3]`
        /// (64..128), field f at bits 0-1 of each byte.
        #[inline]
        #[target_feature(enable = $feat)]
        fn fields2(qs: &[u8; 32]) -> (__m512i, __m512i) {
            let q = _mm512_broadcast_i64x4(ld256(qs));
            (
                _mm512_srlv_epi64(q, _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2)),
                _mm512_srlv_epi64(q, _mm512_setr_epi64(4, 4, 4, 4, 6, 6, 6, 6)),
            )
        }

        /// Q3_K · Q8_K: as the AVX2 kernel, 64 elements per register; the
        /// high bit of field f of half n is bit 4n + f of `hmask`, moved to
        /// bit 2 by per-half shifts.
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q3_k_q8_k(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            let m3 = _mm512_set1_epi8(0x03);
            let m4 = _mm512_set1_epi8(0x04);
            let halves = |a: i64, b: i64| _mm512_setr_epi64(a, a, a, a, b, b, b, b);
            sums_loop!(x, y, |xb: &BlockQ3K, yb: &BlockQ8K| {
                let sc = avx2::scales_q3_k(&xb.scales);
                let corr = _mm256_madd_epi16(sc, ld256(&yb.bsums));
                let corr = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<2>(corr));
                let (mut s, mut t) = (_mm512_zextsi256_si512(corr), _mm512_setzero_si512());
                let hm = _mm512_broadcast_i64x4(ld256(&xb.hmask));
                let qs = xb.qs.as_chunks::<32>().0;
                let q8 = yb.qs.as_chunks::<64>().0;
                for n in 0..QK_K / 128 {
                    let (fa, fb) = fields2(&qs[n]);
                    // Bits (4n, 4n+1) and (4n+2, 4n+3) of hmask to bit 2.
                    let (ha, hb) = if n == 0 {
                        (
                            _mm512_sllv_epi64(hm, halves(2, 1)),
                            _mm512_srlv_epi64(hm, halves(0, 1)),
                        )
                    } else {
                        (
                            _mm512_srlv_epi64(hm, halves(2, 3)),
                            _mm512_srlv_epi64(hm, halves(4, 5)),
                        )
                    };
                    let qa = _mm512_ternarylogic_epi32::<OR_LOW>(fa, _mm512_and_si512(ha, m4), m3);
                    let qb = _mm512_ternarylogic_epi32::<OR_LOW>(fb, _mm512_and_si512(hb, m4), m3);
                    let (sa, sb) = group_scales512(sc, n);
                    s = dot_i16(s, _mm512_maddubs_epi16(qa, ld512(&q8[2 * n])), sa);
                    t = dot_i16(t, _mm512_maddubs_epi16(qb, ld512(&q8[2 * n + 1])), sb);
                }
                fold512(_mm512_add_epi32(s, t))
            })
        }

        /// Q2_K · Q8_K: the 2-bit fields as in Q3_K, 4-bit scales and mins
        /// as in the AVX2 kernel.
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q2_k_q8_k(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            let m3 = _mm512_set1_epi8(0x03);
            let m4 = _mm_set1_epi8(0x0f);
            mins_loop!(x, y, |xb: &BlockQ2K, yb: &BlockQ8K| {
                let raw = ld128(&xb.scales);
                let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(raw), m4));
                let m = _mm256_madd_epi16(mins, ld256(&yb.bsums));
                let m = _mm_add_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256::<1>(m));
                let sc = _mm256_cvtepu8_epi16(_mm_and_si128(raw, m4));
                let qs = xb.qs.as_chunks::<32>().0;
                let q8 = yb.qs.as_chunks::<64>().0;
                let (mut s, mut t) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                for n in 0..QK_K / 128 {
                    let (fa, fb) = fields2(&qs[n]);
                    let (sa, sb) = group_scales512(sc, n);
                    let pa = _mm512_maddubs_epi16(_mm512_and_si512(fa, m3), ld512(&q8[2 * n]));
                    let pb = _mm512_maddubs_epi16(_mm512_and_si512(fb, m3), ld512(&q8[2 * n + 1]));
                    s = dot_i16(s, pa, sa);
                    t = dot_i16(t, pb, sb);
                }
                (fold512(_mm512_add_epi32(s, t)), m)
            })
        }

        /// Q6_K · Q8_K.
        ///
        /// Per 128 elements, 64 bytes of `ql` give `[q0 | q1]` (elements
        /// 0..64) from the low nibbles and `[q2 | q3]` (64..128) from the
        /// high ones; the 32 bytes of `qh` are broadcast to both halves and
        /// shifted per 64-bit lane so that the right bit pair lands at bits
        /// 4-5 (`(l & 0x0f) | (h & 0x30)` is one `vpternlogd` after the mask).
        /// Each 128-bit lane of the products is one 16-group, scaled by its
        /// i16 scale; the −32 offset is removed once per block through the
        /// activation sums, as in the AVX2 kernel.
        ///
        /// # Safety
        /// The CPU must have the features this function enables.
        #[target_feature(enable = $feat)]
        pub(in super::super) unsafe fn vec_dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
            assert_eq!(x.len(), y.len(), "vec_dot: block count mismatch");
            let m4 = _mm512_set1_epi8(0x0f);
            let m30 = _mm512_set1_epi8(0x30);
            let shl_a = _mm512_setr_epi64(4, 4, 4, 4, 2, 2, 2, 2);
            let shr_b = _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2);
            sums_loop!(x, y, |xb: &BlockQ6K, yb: &BlockQ8K| {
                let sc = _mm256_cvtepi8_epi16(ld128(&xb.scales));
                let corr = _mm256_madd_epi16(sc, ld256(&yb.bsums));
                let corr = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(corr));
                let (mut s, mut t) = (_mm512_zextsi256_si512(corr), _mm512_setzero_si512());
                let ql = xb.ql.as_chunks::<64>().0;
                let qh = xb.qh.as_chunks::<32>().0;
                let q8 = yb.qs.as_chunks::<64>().0;
                for n in 0..QK_K / 128 {
                    let (sa, sb) = group_scales512(sc, n);
                    let l = ld512(&ql[n]);
                    let h = _mm512_broadcast_i64x4(ld256(&qh[n]));
                    let ha = _mm512_and_si512(_mm512_sllv_epi64(h, shl_a), m30);
                    let hb = _mm512_and_si512(_mm512_srlv_epi64(h, shr_b), m30);
                    let qa = _mm512_ternarylogic_epi32::<OR_LOW>(l, ha, m4);
                    let qb = _mm512_ternarylogic_epi32::<OR_LOW>(_mm512_srli_epi16::<4>(l), hb, m4);
                    let pa = _mm512_maddubs_epi16(qa, ld512(&q8[2 * n]));
                    let pb = _mm512_maddubs_epi16(qb, ld512(&q8[2 * n + 1]));
                    s = dot_i16(s, pa, sa);
                    t = dot_i16(t, pb, sb);
                }
                fold512(_mm512_add_epi32(s, t))
            })
        }
    };
}
