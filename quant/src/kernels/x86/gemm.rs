//! Register-blocked GEMM for prompt processing: `m` activation rows times
//! `n` weight rows, each weight block unpacked once per pass and used for
//! many activation rows (see [`crate::kernels::GemmFn`]).
//!
//! # Layout: panels of interleaved weight rows
//!
//! The weights are repacked on the fly, `P` rows at a time (16 with AVX-512,
//! 8 with AVX2: one 32-bit lane per row), for one chunk of `k` (`KC`
//! elements), into a stack buffer (a *panel*): chunk `c` of the panel holds,
//! for each row `r`, the four weights `4c..4c+4` of that row as unsigned
//! bytes in lane `r`. One `vpdpbusd` (or `vpmaddubsw` + `vpmaddwd`) of such a
//! chunk with four activation bytes broadcast to every lane (an embedded
//! broadcast operand) adds four products to each of the `P` rows' sums, so a
//! block's dot products for `P` rows come out in `P` lanes with no horizontal
//! reduction, and one f32 FMA per block applies the `P` rows' scales at once.
//! The panel is then reused for every activation row of the pass (`MB` rows),
//! `R` rows per micro-kernel call (8 with AVX-512: `R` i32 sums and `R` f32
//! accumulators stay in registers).
//!
//! Unpacking is done while repacking, so the micro-kernels only see bytes:
//! Q4 nibbles (0..16), Q5 quants with their fifth bit (0..32), Q6_K quants
//! (0..64), and Q8_0 quants shifted to `q + 128` (with VNNI; without VNNI the
//! signed quants, see below). Offsets are taken out exactly in i32: a
//! Q4_0/Q5_0/Q8_0 block sum starts from `−off·Σa` (`off` = 8, 16, 128; the
//! activation sums are computed once per pass), a Q6_K super-block gets
//! `−32·d·Σ_g sc_g·bsum_g` and a Q4_K/Q5_K one `−dmin·Σ_g m_g·bsum_g` from one
//! `vpdpwssd` per pair of groups against the Q8_K block sums. Q4_1/Q5_1 add
//! `m·s` per block in f32, as their `vec_dot` does.
//!
//! Without VNNI the u8 × i8 pair products go through `vpmaddubsw` (i16) and
//! are summed in i16 for as many chunks as cannot overflow (`FLUSH`: 8 for
//! 4-bit, 4 for 5-bit, 2 for 6-bit quants) before one `vpmaddwd` widens them.
//! Q8_0 then uses ggml's sign trick, `|w| · (a·sign w)`, exact unless an
//! activation is −128 (which the quantizers never produce), like `vec_dot`.
//!
//! Every result is the same integer block sums as `vec_dot` times the same
//! scales; only the f32 rounding and summation order differ.
//!
//! Below two activation rows (three for Q6_K, whose `vec_dot` is the most
//! efficient; eight for the float types) the repacking does not pay and the
//! kernels loop over `vec_dot`.
//!
//! The panel and the per-pass activation data live on the stack: 28 KiB
//! with AVX-512 (22 KiB with AVX2) for the quantized types, 40 KiB (36 KiB)
//! for the float ones. Nothing is allocated.
//!
//! F32, F16 and BF16 (the attention products over the KV cache) use the same
//! panels in f32: element `e` of the `P` rows in one register (converted once
//! per pass), one FMA with the activation element broadcast (from f32 rows
//! converted once per pass) per element and activation row.

/// The ISA-independent part: panels, micro-kernels, drivers. The caller
/// defines the width-specific helpers (`P`, `V`, `F`, loads, stores,
/// arithmetic, `tr4`, …; see `gemm_512!` and `gemm_256!`) and passes the
/// target features and whether `dp` is a VNNI instruction.
macro_rules! gemm_kernels {
    ($feat:literal, $vnni:expr, $fdot:ident) => {
        use crate::blocks::*;
        use crate::types::QK_K;

        const VNNI: bool = $vnni;
        /// Elements of `k` per panel.
        const KC: usize = 512;
        /// 32-element blocks per panel.
        const KB: usize = KC / QK;
        /// Super-blocks per panel.
        const KS: usize = KC / QK_K;
        /// Activation rows per pass over the panels.
        const MB: usize = 128;
        /// Four-byte chunks per panel.
        const NCH: usize = KC / 4;

        /// `P` weight rows × `KC` elements, interleaved (see the module docs).
        #[repr(C, align(64))]
        struct Panel {
            /// Chunk `c`: weights `4c..4c+4` of each row in its lane.
            q: [[u8; 4 * P]; NCH],
            /// The rows' scale of each block (Q4_K/Q5_K/Q6_K: of each group,
            /// `d·sc`).
            d: [[f32; P]; KC / 16],
            /// Per block: the min `m` (Q4_1, Q5_1); per super-block: the
            /// factor of its correction sum (`−dmin`, `−32·d`).
            e: [[f32; P]; KB],
            /// Per super-block, eight i16 pairs to multiply with pairs of
            /// Q8_K block sums (`(m_g, m_g)` or `(sc_2h, sc_2h+1)`).
            c: [[i32; P]; 8 * KS],
        }

        impl Panel {
            fn new() -> Panel {
                Panel {
                    q: [[0; 4 * P]; NCH],
                    d: [[0.0; P]; KC / 16],
                    e: [[0.0; P]; KB],
                    c: [[0; P]; 8 * KS],
                }
            }
        }

        /// Per activation row and block of a pass: the scale `d` and either
        /// the integer start `−off·Σa` (as bits) or Q8_1's `s` (f32 bits).
        #[repr(C, align(64))]
        struct Info {
            d: [[f32; KB]; MB],
            c: [[u32; KB]; MB],
        }

        /// The quants of a 32-wide activation block.
        trait Act: bytemuck::Pod {
            fn qs4(&self) -> &[[i8; 4]; 8];
        }
        impl Act for BlockQ8_0 {
            fn qs4(&self) -> &[[i8; 4]; 8] {
                bytemuck::cast_ref(&self.qs)
            }
        }
        impl Act for BlockQ8_1 {
            fn qs4(&self) -> &[[i8; 4]; 8] {
                bytemuck::cast_ref(&self.qs)
            }
        }

        /// Writes (`first`) or adds the first `o.len() ≤ P` lanes of `v`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn put(o: &mut [f32], v: F, first: bool) {
            if let Ok(o) = <&mut [f32; P]>::try_from(&mut *o) {
                let v = if first { v } else { fadd(ldf(o), v) };
                stf(o, v);
            } else {
                let mut t = [0f32; P];
                stf(&mut t, v);
                for (o, t) in o.iter_mut().zip(t) {
                    *o = if first { t } else { *o + t };
                }
            }
        }

        /// One block of each of `P` weight rows, row `r` for lane `r`.
        type Rows<'a, W> = [&'a W; P];

        /// Bytes `16k..16k + 16` of `a`.
        #[inline]
        fn piece16(a: &[u8], k: usize) -> &[u8; 16] {
            a[16 * k..16 * k + 16].try_into().unwrap()
        }

        /// [`tr4`] of two sets of 16-byte pieces: chunks 0..4 from `lo`,
        /// 4..8 from `hi`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn tr8(lo: &[&[u8; 16]; P], hi: &[&[u8; 16]; P]) -> [V; 8] {
            let (a, b) = (tr4(lo), tr4(hi));
            [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]
        }

        /// Four-bit quants of a 32-wide block: low nibbles of `qs[4c..4c+4]`
        /// are elements `4c..`, high nibbles elements `16 + 4c..`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn nibble_chunks(qs: [&[u8; 16]; P]) -> [V; 8] {
            let t = tr4(&qs);
            let m4 = set1_8(0x0f);
            let mut v = [zero(); 8];
            for c in 0..4 {
                v[c] = and(t[c], m4);
                v[c + 4] = and(srl16(t[c], 4), m4);
            }
            v
        }

        /// The fifth bits of 32-wide Q5 blocks (`qh` as u32, element `e` at
        /// bit `e`) as 0x10 bytes in chunk `c`'s order.
        #[inline]
        #[target_feature(enable = $feat)]
        fn fifth_chunk(qh: V, c: usize) -> V {
            spread4(srl32(qh, 4 * c as i32))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn repack_q4_0(x: &Rows<BlockQ4_0>, q: &mut [[u8; 4 * P]; 8], d: &mut [f32; P], _: &mut [f32; P]) {
            let v = nibble_chunks(core::array::from_fn(|r| &x[r].qs));
            for c in 0..8 {
                stv(&mut q[c], v[c]);
            }
            stf(d, f16v(&core::array::from_fn(|r| x[r].d.to_bits())));
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn repack_q4_1(x: &Rows<BlockQ4_1>, q: &mut [[u8; 4 * P]; 8], d: &mut [f32; P], e: &mut [f32; P]) {
            let v = nibble_chunks(core::array::from_fn(|r| &x[r].qs));
            for c in 0..8 {
                stv(&mut q[c], v[c]);
            }
            stf(d, f16v(&core::array::from_fn(|r| x[r].d.to_bits())));
            stf(e, f16v(&core::array::from_fn(|r| x[r].m.to_bits())));
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn repack_q5_0(x: &Rows<BlockQ5_0>, q: &mut [[u8; 4 * P]; 8], d: &mut [f32; P], _: &mut [f32; P]) {
            let v = nibble_chunks(core::array::from_fn(|r| &x[r].qs));
            let qh = ldi(&core::array::from_fn(|r| i32::from_le_bytes(x[r].qh)));
            for c in 0..8 {
                stv(&mut q[c], or(v[c], fifth_chunk(qh, c)));
            }
            stf(d, f16v(&core::array::from_fn(|r| x[r].d.to_bits())));
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn repack_q5_1(x: &Rows<BlockQ5_1>, q: &mut [[u8; 4 * P]; 8], d: &mut [f32; P], e: &mut [f32; P]) {
            let v = nibble_chunks(core::array::from_fn(|r| &x[r].qs));
            let qh = ldi(&core::array::from_fn(|r| i32::from_le_bytes(x[r].qh)));
            for c in 0..8 {
                stv(&mut q[c], or(v[c], fifth_chunk(qh, c)));
            }
            stf(d, f16v(&core::array::from_fn(|r| x[r].d.to_bits())));
            stf(e, f16v(&core::array::from_fn(|r| x[r].m.to_bits())));
        }

        /// Q8_0: `q + 128` as u8 with VNNI, the signed quants without.
        #[inline]
        #[target_feature(enable = $feat)]
        fn repack_q8_0(x: &Rows<BlockQ8_0>, q: &mut [[u8; 4 * P]; 8], d: &mut [f32; P], _: &mut [f32; P]) {
            let flip = set1_8(if VNNI { -128 } else { 0 });
            let qs = |r: usize| bytemuck::cast_ref::<[i8; 32], [u8; 32]>(&x[r].qs);
            let t = tr8(
                &core::array::from_fn(|r| piece16(qs(r), 0)),
                &core::array::from_fn(|r| piece16(qs(r), 1)),
            );
            for c in 0..8 {
                stv(&mut q[c], xor(t[c], flip));
            }
            stf(d, f16v(&core::array::from_fn(|r| x[r].d.to_bits())));
        }

        /// IQ4_NL: each nibble's table value (`vpshufb`), then as Q8_0:
        /// `v + 128` as u8 with VNNI, the signed values without.
        #[inline]
        #[target_feature(enable = $feat)]
        fn repack_iq4_nl(x: &Rows<BlockIQ4NL>, q: &mut [[u8; 4 * P]; 8], d: &mut [f32; P], _: &mut [f32; P]) {
            let v = nibble_chunks(core::array::from_fn(|r| &x[r].qs));
            let (t, flip) = (kvalues(), set1_8(if VNNI { -128 } else { 0 }));
            for c in 0..8 {
                stv(&mut q[c], xor(shuffle8(t, v[c]), flip));
            }
            stf(d, f16v(&core::array::from_fn(|r| x[r].d.to_bits())));
        }

        /// `(d, −OFF·Σq)` of a Q8_0 activation block: `Σ (q + 128)` by
        /// `vpsadbw` (sums of absolute differences from zero, in four u64
        /// lanes), less `32·128`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn info_q8_0<const OFF: i32>(b: &BlockQ8_0) -> (f32, u32) {
            let v = _mm256_xor_si256(ld256(&b.qs), _mm256_set1_epi8(-128));
            let s = _mm256_sad_epu8(v, _mm256_setzero_si256());
            let s = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let sum = _mm_cvtsi128_si32(_mm_add_epi64(s, _mm_unpackhi_epi64(s, s))) - 32 * 128;
            (f16_to_f32(b.d), sum.wrapping_mul(-OFF) as u32)
        }

        /// `(d, s)` of a Q8_1 activation block.
        #[inline]
        #[target_feature(enable = $feat)]
        fn info_q8_1(b: &BlockQ8_1) -> (f32, u32) {
            (f16_to_f32(b.d), f16_to_f32(b.s).to_bits())
        }

        /// The micro-kernel of the 32-wide formats: `R` activation rows
        /// (`a`, with their per-block `d` and `c` from `Info`) times the `P`
        /// rows of the panel over `kb` blocks. `MIN`: the format has a min
        /// (`c` is `s`); else `c` is the sum's start. `SIGNED`: Q8_0 without
        /// VNNI (sign trick). `FLUSH`: chunks summed in i16 without VNNI.
        #[inline]
        #[target_feature(enable = $feat)]
        #[allow(clippy::needless_range_loop)]
        fn tile_legacy<const R: usize, const MIN: bool, const SIGNED: bool, const FLUSH: usize, A: Act>(
            p: &Panel,
            kb: usize,
            a: &[&[A]; R],
            d: &[&[f32; KB]; R],
            c: &[&[u32; KB]; R],
        ) -> [F; R] {
            let mut acc = [zerof(); R];
            for b in 0..kb {
                let q = &p.q[8 * b..8 * b + 8];
                let x: [&[[i8; 4]; 8]; R] = core::array::from_fn(|i| a[i][b].qs4());
                let mut s = [zero(); R];
                if !MIN {
                    for i in 0..R {
                        s[i] = set1_32(c[i][b] as i32);
                    }
                }
                let mut t = [zero(); R];
                for ch in 0..8 {
                    let w = ldv(&q[ch]);
                    if VNNI {
                        for i in 0..R {
                            s[i] = dp(s[i], w, bc4(&x[i][ch]));
                        }
                    } else if SIGNED {
                        let (wa, neg) = (abs8(w), negmask(w));
                        for i in 0..R {
                            s[i] = add32(s[i], widen(mb(wa, sign8(bc4(&x[i][ch]), neg))));
                        }
                    } else {
                        for i in 0..R {
                            t[i] = add16(t[i], mb(w, bc4(&x[i][ch])));
                        }
                        if (ch + 1) % FLUSH == 0 {
                            for i in 0..R {
                                s[i] = add32(s[i], widen(t[i]));
                                t[i] = zero();
                            }
                        }
                    }
                }
                let dw = ldf(&p.d[b]);
                for i in 0..R {
                    acc[i] = fmadd(mul(cvt(s[i]), bcf(d[i][b])), dw, acc[i]);
                }
                if MIN {
                    let m = ldf(&p.e[b]);
                    for i in 0..R {
                        acc[i] = fmadd(m, bcf(f32::from_bits(c[i][b])), acc[i]);
                    }
                }
            }
            acc
        }

        /// Runs `tile_legacy` for activation rows `i..i + R` of the pass
        /// starting at row `i0` and stores into `out` columns `j0..j0 + nc`.
        #[inline]
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        fn run_legacy<const R: usize, const MIN: bool, const SIGNED: bool, const FLUSH: usize, A: Act>(
            p: &Panel,
            (b0, kb, nb): (usize, usize, usize),
            a: &[A],
            info: &Info,
            (i0, i): (usize, usize),
            out: &mut [f32],
            (ldo, j0, nc): (usize, usize, usize),
            first: bool,
        ) {
            let row = |r: usize| (i0 + i + r) * nb + b0;
            let ar: [&[A]; R] = core::array::from_fn(|r| &a[row(r)..row(r) + kb]);
            let d: [&[f32; KB]; R] = core::array::from_fn(|r| &info.d[i + r]);
            let c: [&[u32; KB]; R] = core::array::from_fn(|r| &info.c[i + r]);
            let acc = tile_legacy::<R, MIN, SIGNED, FLUSH, A>(p, kb, &ar, &d, &c);
            for (r, v) in acc.into_iter().enumerate() {
                let o = (i0 + i + r) * ldo + j0;
                put(&mut out[o..o + nc], v, first);
            }
        }

        /// The micro-kernel of the K-quants: groups of `G` elements with
        /// one scale vector each, plus the correction pairs against the
        /// Q8_K block sums, over `ks` super-blocks.
        #[inline]
        #[target_feature(enable = $feat)]
        #[allow(clippy::needless_range_loop)]
        fn tile_k<const R: usize, const G: usize, const FLUSH: usize>(
            p: &Panel,
            ks: usize,
            a: &[&[BlockQ8K]; R],
        ) -> [F; R] {
            let ng = QK_K / G;
            let nc = G / 4;
            let mut tot = [zerof(); R];
            for sb in 0..ks {
                let x: [&[[i8; 4]; QK_K / 4]; R] =
                    core::array::from_fn(|i| bytemuck::cast_ref(&a[i][sb].qs));
                // This super-block's chunks and scales as arrays, so that the
                // indices below need no bounds checks.
                let q: &[[u8; 4 * P]; QK_K / 4] = p.q[sb * (QK_K / 4)..(sb + 1) * (QK_K / 4)].try_into().unwrap();
                let dsb: &[[f32; P]; 16] = p.d[sb * 16..sb * 16 + 16].try_into().unwrap();
                let mut blk = [zerof(); R];
                for g in 0..ng {
                    let mut s = [zero(); R];
                    let mut t = [zero(); R];
                    for ch in 0..nc {
                        let e = g * nc + ch;
                        let w = ldv(&q[e]);
                        if VNNI {
                            for i in 0..R {
                                s[i] = dp(s[i], w, bc4(&x[i][e]));
                            }
                        } else {
                            for i in 0..R {
                                t[i] = add16(t[i], mb(w, bc4(&x[i][e])));
                            }
                            if (ch + 1) % FLUSH == 0 {
                                for i in 0..R {
                                    s[i] = add32(s[i], widen(t[i]));
                                    t[i] = zero();
                                }
                            }
                        }
                    }
                    let dg = ldf(&dsb[g]);
                    for i in 0..R {
                        blk[i] = fmadd(cvt(s[i]), dg, blk[i]);
                    }
                }
                let mut cs = [zero(); R];
                for h in 0..8 {
                    let cv = ldi(&p.c[sb * 8 + h]);
                    for i in 0..R {
                        let bs: &[[i16; 2]; 8] = bytemuck::cast_ref(&a[i][sb].bsums);
                        cs[i] = dpw(cs[i], cv, bc2x16(&bs[h]));
                    }
                }
                let ce = ldf(&p.e[sb]);
                for i in 0..R {
                    blk[i] = fmadd(cvt(cs[i]), ce, blk[i]);
                    tot[i] = fmadd(blk[i], bcf(a[i][sb].d), tot[i]);
                }
            }
            tot
        }

        #[inline]
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        fn run_k<const R: usize, const G: usize, const FLUSH: usize>(
            p: &Panel,
            (s0, ks, nb): (usize, usize, usize),
            a: &[BlockQ8K],
            i: usize,
            out: &mut [f32],
            (ldo, j0, nc): (usize, usize, usize),
            first: bool,
        ) {
            let ar: [&[BlockQ8K]; R] =
                core::array::from_fn(|r| &a[(i + r) * nb + s0..(i + r) * nb + s0 + ks]);
            let acc = tile_k::<R, G, FLUSH>(p, ks, &ar);
            for (r, v) in acc.into_iter().enumerate() {
                let o = (i + r) * ldo + j0;
                put(&mut out[o..o + nc], v, first);
            }
        }

        /// Q4_K / Q5_K scales and mins of `P` rows, decoded lane-wise with
        /// ggml's word formulas (see `scales_mins_k4` in `v256.rs`), into
        /// `d·sc_g` (f32), `(m_g, m_g)` (i16 pairs) and `−dmin`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn scales_k4<W: bytemuck::Pod>(
            x: &[&W; P],
            d: &mut [[f32; P]],
            e: &mut [f32; P],
            c: &mut [[i32; P]],
        ) {
            let head = |r: usize| -> &[u16; 8] { bytemuck::from_bytes(&bytemuck::bytes_of(x[r])[..16]) };
            let word = |r: usize, k: usize| -> i32 {
                let h = head(r);
                i32::from(h[2 + 2 * k]) | i32::from(h[3 + 2 * k]) << 16
            };
            let w0 = ldi(&core::array::from_fn(|r| word(r, 0)));
            let w1 = ldi(&core::array::from_fn(|r| word(r, 1)));
            let w2 = ldi(&core::array::from_fn(|r| word(r, 2)));
            let m3f = set1_32(0x3f3f_3f3f);
            let m0f = set1_32(0x0f0f_0f0f);
            let m30 = set1_32(0x3030_3030);
            let sc = [and(w0, m3f), or(and(w2, m0f), and(srl32(w0, 2), m30))];
            let mn = [and(w1, m3f), or(and(srl32(w2, 4), m0f), and(srl32(w1, 2), m30))];
            let dd = f16v(&core::array::from_fn(|r| head(r)[0]));
            let dm = f16v(&core::array::from_fn(|r| head(r)[1]));
            let ff = set1_32(0xff);
            for g in 0..8 {
                let s = and(srl32(sc[g / 4], 8 * (g % 4) as i32), ff);
                stf(&mut d[g], mul(cvt(s), dd));
                let m = and(srl32(mn[g / 4], 8 * (g % 4) as i32), ff);
                sti(&mut c[g], or(m, sll32(m, 16)));
            }
            stf(e, mul(dm, bcf(-1.0)));
        }

        /// Q4_K / Q5_K quants of one super-block: bytes `32j..32j+32` of
        /// `qs` hold sub-block `2j` in the low nibbles and `2j+1` in the
        /// high ones; `fifth(j, c)` gives the bits to OR into chunk `c` of
        /// sub-blocks `2j` and `2j + 1`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn quants_k4(qs: &[&[u8; 128]; P], q: &mut [[u8; 4 * P]], fifth: impl Fn(usize, usize) -> (V, V)) {
            let m4 = set1_8(0x0f);
            for j in 0..4 {
                let t = tr8(
                    &core::array::from_fn(|r| piece16(qs[r], 2 * j)),
                    &core::array::from_fn(|r| piece16(qs[r], 2 * j + 1)),
                );
                for c in 0..8 {
                    let (flo, fhi) = fifth(j, c);
                    stv(&mut q[16 * j + c], or(and(t[c], m4), flo));
                    stv(&mut q[16 * j + 8 + c], or(and(srl16(t[c], 4), m4), fhi));
                }
            }
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn repack_q4_k(x: &Rows<BlockQ4K>, q: &mut [[u8; 4 * P]], d: &mut [[f32; P]], e: &mut [f32; P], c: &mut [[i32; P]]) {
            let z = zero();
            quants_k4(&core::array::from_fn(|r| &x[r].qs), q, |_, _| (z, z));
            scales_k4(x, d, e, c);
        }

        /// Q5_K: the fifth bit of element `l` of sub-block `g` is bit `g` of
        /// `qh[l]`; the transposed `qh` chunks are shifted so that it lands
        /// at bit 4 (16-bit shifts: spilled bits are masked off).
        #[inline]
        #[target_feature(enable = $feat)]
        fn repack_q5_k(x: &Rows<BlockQ5K>, q: &mut [[u8; 4 * P]], d: &mut [[f32; P]], e: &mut [f32; P], c: &mut [[i32; P]]) {
            let qh = tr8(
                &core::array::from_fn(|r| piece16(&x[r].qh, 0)),
                &core::array::from_fn(|r| piece16(&x[r].qh, 1)),
            );
            let m10 = set1_8(0x10);
            let bit = |v: V, g: usize| -> V {
                let v = if g <= 4 { sll16(v, 4 - g as i32) } else { srl16(v, g as i32 - 4) };
                and(v, m10)
            };
            quants_k4(&core::array::from_fn(|r| &x[r].qs), q, |j, c| (bit(qh[c], 2 * j), bit(qh[c], 2 * j + 1)));
            scales_k4(x, d, e, c);
        }

        /// Q6_K: per 128-element half `n`, `ql[64n..64n+32]` holds elements
        /// `l` (low nibbles) and `64 + l` (high), `ql[64n+32..64n+64]`
        /// elements `32 + l` and `96 + l`, and `qh[32n + l]` their top two
        /// bits at bits 0-1, 2-3, 4-5, 6-7. Scales: i8 per 16 elements.
        #[inline]
        #[target_feature(enable = $feat)]
        fn repack_q6_k(x: &Rows<BlockQ6K>, q: &mut [[u8; 4 * P]], d: &mut [[f32; P]], e: &mut [f32; P], c: &mut [[i32; P]]) {
            let m4 = set1_8(0x0f);
            let m30 = set1_8(0x30);
            for n in 0..2 {
                let ql = |k: usize| -> [&[u8; 16]; P] { core::array::from_fn(|r| piece16(&x[r].ql, k)) };
                let qh = |k: usize| -> [&[u8; 16]; P] { core::array::from_fn(|r| piece16(&x[r].qh, k)) };
                let l0 = tr8(&ql(4 * n), &ql(4 * n + 1));
                let l1 = tr8(&ql(4 * n + 2), &ql(4 * n + 3));
                let hh = tr8(&qh(2 * n), &qh(2 * n + 1));
                for k in 0..8 {
                    let base = 32 * n + k;
                    let h = hh[k];
                    stv(&mut q[base], or(and(l0[k], m4), and(sll16(h, 4), m30)));
                    stv(&mut q[base + 8], or(and(l1[k], m4), and(sll16(h, 2), m30)));
                    stv(&mut q[base + 16], or(and(srl16(l0[k], 4), m4), and(h, m30)));
                    stv(&mut q[base + 24], or(and(srl16(l1[k], 4), m4), and(srl16(h, 2), m30)));
                }
            }
            let s = tr4(&core::array::from_fn(|r| bytemuck::cast_ref::<[i8; 16], [u8; 16]>(&x[r].scales)));
            let dd = f16v(&core::array::from_fn(|r| x[r].d.to_bits()));
            let sext = |v: V, byte: usize| sra32(sll32(v, 24 - 8 * byte as i32), 24);
            for g in 0..16 {
                stf(&mut d[g], mul(cvt(sext(s[g / 4], g % 4)), dd));
            }
            let lo16 = set1_32(0xffff);
            for h in 0..8 {
                let v = s[h / 2];
                let (b0, b1) = (sext(v, 2 * (h % 2)), sext(v, 2 * (h % 2) + 1));
                sti(&mut c[h], or(and(b0, lo16), sll32(b1, 16)));
            }
            stf(e, mul(dd, bcf(-32.0)));
        }

        /// The legacy drivers: passes of `MB` activation rows; per pass and
        /// chunk of `k`, the activation info, then per panel the repack and
        /// the micro-kernels over the pass.
        macro_rules! legacy_gemm {
            ($name:ident, $w:ty, $a:ty, $repack:ident, $info:expr, $min:expr, $signed:expr, $flush:expr, $dot:path) => {
                legacy_gemm!($name, $w, $a, $repack, $info, $min, $signed, $flush, $dot, 2);
            };
            ($name:ident, $w:ty, $a:ty, $repack:ident, $info:expr, $min:expr, $signed:expr, $flush:expr, $dot:path, $min_m:expr) => {
                /// Register-blocked gemm (see the module docs of `gemm.rs`).
                ///
                /// # Safety
                /// The CPU must have the features this function enables.
                #[target_feature(enable = $feat)]
                pub(in crate::kernels) unsafe fn $name(k: usize, w: &[u8], a: &[u8], out: &mut [f32], ldo: usize) {
                    let nb = k / QK;
                    if nb == 0 {
                        return;
                    }
                    let w = bytemuck::cast_slice::<u8, $w>(w);
                    let a = bytemuck::cast_slice::<u8, $a>(a);
                    let (n, m) = (w.len() / nb, a.len() / nb);
                    if m < $min_m || n == 0 {
                        for (i, ar) in a.chunks_exact(nb).enumerate() {
                            for (j, wr) in w.chunks_exact(nb).enumerate() {
                                // SAFETY: same features as this function.
                                out[i * ldo + j] = unsafe { $dot(wr, ar) };
                            }
                        }
                        return;
                    }
                    let mut p = Panel::new();
                    let mut info = Info { d: [[0.0; KB]; MB], c: [[0; KB]; MB] };
                    let nkc = nb.div_ceil(KB);
                    for i0 in (0..m).step_by(MB) {
                        let mc = MB.min(m - i0);
                        for kc in 0..nkc {
                            let (b0, b1) = (kc * nb / nkc, (kc + 1) * nb / nkc);
                            let kb = b1 - b0;
                            for i in 0..mc {
                                let row = &a[(i0 + i) * nb + b0..(i0 + i) * nb + b1];
                                for (b, blk) in row.iter().enumerate() {
                                    (info.d[i][b], info.c[i][b]) = $info(blk);
                                }
                            }
                            for j0 in (0..n).step_by(P) {
                                let nc = P.min(n - j0);
                                for b in 0..kb {
                                    let rows: Rows<$w> =
                                        core::array::from_fn(|r| &w[(j0 + r.min(nc - 1)) * nb + b0 + b]);
                                    let q = (&mut p.q[8 * b..8 * b + 8]).try_into().unwrap();
                                    $repack(&rows, q, &mut p.d[b], &mut p.e[b]);
                                }
                                let mut i = 0;
                                while i < mc {
                                    let dims = (b0, kb, nb);
                                    let o = (ldo, j0, nc);
                                    let first = kc == 0;
                                    i += tiles!(mc - i, RL, |R| run_legacy::<R, $min, $signed, $flush, $a>(
                                        &p, dims, a, &info, (i0, i), out, o, first
                                    ));
                                }
                            }
                        }
                    }
                }
            };
        }

        /// Calls `$run` with the largest row count `R` of `RL`, 4, 2, 1 that
        /// fits in `$rem` and returns it.
        macro_rules! tiles {
            ($rem:expr, $rl:expr, |$r:ident| $run:expr) => {{
                let rem = $rem;
                if rem >= $rl {
                    const $r: usize = $rl;
                    $run;
                    $r
                } else if rem >= 4 {
                    const $r: usize = 4;
                    $run;
                    $r
                } else if rem >= 2 {
                    const $r: usize = 2;
                    $run;
                    $r
                } else {
                    const $r: usize = 1;
                    $run;
                    $r
                }
            }};
        }

        legacy_gemm!(gemm_q4_0, BlockQ4_0, BlockQ8_0, repack_q4_0, info_q8_0::<8>, false, false, 8, super::vec_dot_q4_0_q8_0);
        legacy_gemm!(gemm_q4_1, BlockQ4_1, BlockQ8_1, repack_q4_1, info_q8_1, true, false, 8, super::vec_dot_q4_1_q8_1);
        legacy_gemm!(gemm_q5_0, BlockQ5_0, BlockQ8_0, repack_q5_0, info_q8_0::<16>, false, false, 4, super::vec_dot_q5_0_q8_0);
        legacy_gemm!(gemm_q5_1, BlockQ5_1, BlockQ8_1, repack_q5_1, info_q8_1, true, false, 4, super::vec_dot_q5_1_q8_1);
        legacy_gemm!(
            gemm_q8_0,
            BlockQ8_0,
            BlockQ8_0,
            repack_q8_0,
            info_q8_0::<{ if VNNI { 128 } else { 0 } }>,
            false,
            { !VNNI },
            1,
            super::vec_dot_q8_0_q8_0
        );
        legacy_gemm!(
            gemm_iq4_nl,
            BlockIQ4NL,
            BlockQ8_0,
            repack_iq4_nl,
            info_q8_0::<{ if VNNI { 128 } else { 0 } }>,
            false,
            { !VNNI },
            1,
            super::super::iq4::vec_dot_iq4_nl_q8_0
        );

        /// The K-quant drivers: as `legacy_gemm!`, without activation info
        /// (Q8_K has its `d` as f32 and its block sums).
        macro_rules! k_gemm {
            ($name:ident, $w:ty, $repack:ident, $g:expr, $flush:expr, $dot:path, $min_m:expr) => {
                /// Register-blocked gemm (see the module docs of `gemm.rs`).
                ///
                /// # Safety
                /// The CPU must have the features this function enables.
                #[target_feature(enable = $feat)]
                pub(in crate::kernels) unsafe fn $name(k: usize, w: &[u8], a: &[u8], out: &mut [f32], ldo: usize) {
                    let nb = k / QK_K;
                    if nb == 0 {
                        return;
                    }
                    let w = bytemuck::cast_slice::<u8, $w>(w);
                    let a = bytemuck::cast_slice::<u8, BlockQ8K>(a);
                    let (n, m) = (w.len() / nb, a.len() / nb);
                    if m < $min_m || n == 0 {
                        for (i, ar) in a.chunks_exact(nb).enumerate() {
                            for (j, wr) in w.chunks_exact(nb).enumerate() {
                                // SAFETY: same features as this function.
                                out[i * ldo + j] = unsafe { $dot(wr, ar) };
                            }
                        }
                        return;
                    }
                    const NG: usize = QK_K / $g;
                    let mut p = Panel::new();
                    let nkc = nb.div_ceil(KS);
                    for i0 in (0..m).step_by(MB) {
                        let mc = MB.min(m - i0);
                        for kc in 0..nkc {
                            let (s0, s1) = (kc * nb / nkc, (kc + 1) * nb / nkc);
                            let ks = s1 - s0;
                            for j0 in (0..n).step_by(P) {
                                let nc = P.min(n - j0);
                                for s in 0..ks {
                                    let rows: Rows<$w> =
                                        core::array::from_fn(|r| &w[(j0 + r.min(nc - 1)) * nb + s0 + s]);
                                    let q = &mut p.q[64 * s..64 * s + 64];
                                    let d = &mut p.d[16 * s..16 * s + NG];
                                    let c = &mut p.c[8 * s..8 * s + 8];
                                    $repack(&rows, q, d, &mut p.e[s], c);
                                }
                                let mut i = i0;
                                while i < i0 + mc {
                                    let dims = (s0, ks, nb);
                                    let o = (ldo, j0, nc);
                                    let first = kc == 0;
                                    i += tiles!(i0 + mc - i, RK, |R| run_k::<R, $g, $flush>(
                                        &p, dims, a, i, out, o, first
                                    ));
                                }
                            }
                        }
                    }
                }
            };
        }

        k_gemm!(gemm_q4_k, BlockQ4K, repack_q4_k, 32, 8, super::vec_dot_q4_k_q8_k, 2);
        k_gemm!(gemm_q5_k, BlockQ5K, repack_q5_k, 32, 4, super::vec_dot_q5_k_q8_k, 2);
        k_gemm!(gemm_q6_k, BlockQ6K, repack_q6_k, 16, 2, super::vec_dot_q6_k_q8_k, 3);

        /// Elements of `k` per float panel.
        const KF: usize = 128;
        /// Activation rows per float pass.
        const MF: usize = 64;

        /// `P` float weight rows × `KF` elements as f32, element `e` of row
        /// `r` in lane `r` of `x[e]`.
        #[repr(C, align(64))]
        struct FPanel {
            x: [[f32; P]; KF],
        }

        /// `MF` activation rows × `KF` elements as f32.
        #[repr(C, align(64))]
        struct FActs {
            x: [[f32; KF]; MF],
        }

        /// A float element type: F32, F16 or BF16.
        trait Elem: bytemuck::Pod {
            /// Lanes `r` of the four results: elements `e..e + 4` (F32) or
            /// `e..e + 8` in pairs (F16, BF16) of row `r`, converted.
            const PER_PIECE: usize;
            /// IEEE half (else bfloat16) when two bytes wide.
            const IEEE_HALF: bool;
            fn to_f32(self) -> f32;
        }
        impl Elem for f32 {
            const PER_PIECE: usize = 4;
            const IEEE_HALF: bool = false;
            fn to_f32(self) -> f32 {
                self
            }
        }
        impl Elem for half::f16 {
            const PER_PIECE: usize = 8;
            const IEEE_HALF: bool = true;
            fn to_f32(self) -> f32 {
                half::f16::to_f32(self)
            }
        }
        impl Elem for half::bf16 {
            const PER_PIECE: usize = 8;
            const IEEE_HALF: bool = false;
            fn to_f32(self) -> f32 {
                half::bf16::to_f32(self)
            }
        }

        /// Transposes `kc` elements of `P` rows into `x`, converting to f32:
        /// 16-byte pieces of the rows through `tr4`, then per lane the low
        /// and high halves of each dword (F16, BF16); the tail one by one.
        #[inline]
        #[target_feature(enable = $feat)]
        fn repack_float<E: Elem>(rows: &[&[E]; P], kc: usize, x: &mut [[f32; P]]) {
            let np = kc / E::PER_PIECE;
            for pc in 0..np {
                let t = tr4(&core::array::from_fn(|r| {
                    let b: &[u8] = bytemuck::cast_slice(&rows[r][pc * E::PER_PIECE..(pc + 1) * E::PER_PIECE]);
                    piece16(b, 0)
                }));
                for c in 0..4 {
                    if E::PER_PIECE == 4 {
                        stf(&mut x[4 * pc + c], castf(t[c]));
                    } else {
                        let e = 8 * pc + 2 * c;
                        let (lo, hi) = if E::IEEE_HALF {
                            (lo16_f16(t[c]), lo16_f16(srl32(t[c], 16)))
                        } else {
                            (castf(sll32(t[c], 16)), castf(and(t[c], set1_32(-65536))))
                        };
                        stf(&mut x[e], lo);
                        stf(&mut x[e + 1], hi);
                    }
                }
            }
            for e in np * E::PER_PIECE..kc {
                for r in 0..P {
                    x[e][r] = rows[r][e].to_f32();
                }
            }
        }

        /// The float micro-kernel: one FMA per element and row pair, even
        /// and odd elements in separate accumulators (latency).
        #[inline]
        #[target_feature(enable = $feat)]
        #[allow(clippy::needless_range_loop)]
        fn tile_float<const R: usize>(p: &FPanel, kc: usize, a: &[&[f32; KF]; R]) -> [F; R] {
            assert!(kc <= KF);
            let mut acc0 = [zerof(); R];
            let mut acc1 = [zerof(); R];
            let mut e = 0;
            while e + 2 <= kc {
                let (w0, w1) = (ldf(&p.x[e]), ldf(&p.x[e + 1]));
                for i in 0..R {
                    acc0[i] = fmadd(w0, bcf(a[i][e]), acc0[i]);
                    acc1[i] = fmadd(w1, bcf(a[i][e + 1]), acc1[i]);
                }
                e += 2;
            }
            if e < kc {
                let w0 = ldf(&p.x[e]);
                for i in 0..R {
                    acc0[i] = fmadd(w0, bcf(a[i][e]), acc0[i]);
                }
            }
            let mut out = [zerof(); R];
            for i in 0..R {
                out[i] = fadd(acc0[i], acc1[i]);
            }
            out
        }

        #[inline]
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        fn run_float<const R: usize>(
            p: &FPanel,
            kc: usize,
            acts: &FActs,
            (i0, i): (usize, usize),
            out: &mut [f32],
            (ldo, j0, nc): (usize, usize, usize),
            first: bool,
        ) {
            let ar: [&[f32; KF]; R] = core::array::from_fn(|r| &acts.x[i + r]);
            let acc = tile_float::<R>(p, kc, &ar);
            for (r, v) in acc.into_iter().enumerate() {
                let o = (i0 + i + r) * ldo + j0;
                put(&mut out[o..o + nc], v, first);
            }
        }

        /// F32 / F16 / BF16 drivers: passes of `MF` activation rows
        /// (converted to f32 per chunk of `k`), panels of `P` weight rows.
        macro_rules! float_gemm {
            ($name:ident, $e:ty, $cvt:ident, $dot:path) => {
                /// Register-blocked float gemm (see the module docs of `gemm.rs`).
                ///
                /// # Safety
                /// The CPU must have the features this function enables.
                #[target_feature(enable = $feat)]
                pub(in crate::kernels) unsafe fn $name(k: usize, w: &[u8], a: &[u8], out: &mut [f32], ldo: usize) {
                    if k == 0 {
                        return;
                    }
                    let w = bytemuck::cast_slice::<u8, $e>(w);
                    let a = bytemuck::cast_slice::<u8, $e>(a);
                    let (n, m) = (w.len() / k, a.len() / k);
                    if m < 8 || n == 0 {
                        for (i, ar) in a.chunks_exact(k).enumerate() {
                            for (j, wr) in w.chunks_exact(k).enumerate() {
                                // SAFETY: same features as this function.
                                out[i * ldo + j] = unsafe { $dot(wr, ar) };
                            }
                        }
                        return;
                    }
                    let mut p = FPanel { x: [[0.0; P]; KF] };
                    let mut acts = FActs { x: [[0.0; KF]; MF] };
                    for i0 in (0..m).step_by(MF) {
                        let mc = MF.min(m - i0);
                        for e0 in (0..k).step_by(KF) {
                            let kc = KF.min(k - e0);
                            for i in 0..mc {
                                let row = &a[(i0 + i) * k + e0..(i0 + i) * k + e0 + kc];
                                $cvt(row, &mut acts.x[i][..kc]);
                            }
                            for j0 in (0..n).step_by(P) {
                                let nc = P.min(n - j0);
                                let rows: [&[$e]; P] = core::array::from_fn(|r| {
                                    let j = j0 + r.min(nc - 1);
                                    &w[j * k + e0..j * k + e0 + kc]
                                });
                                repack_float(&rows, kc, &mut p.x[..kc]);
                                let mut i = 0;
                                while i < mc {
                                    let o = (ldo, j0, nc);
                                    let first = e0 == 0;
                                    i += tiles!(mc - i, RF, |R| run_float::<R>(
                                        &p, kc, &acts, (i0, i), out, o, first
                                    ));
                                }
                            }
                        }
                    }
                }
            };
        }

        /// f32 activations: a copy.
        #[inline]
        fn acts_f32(x: &[f32], y: &mut [f32]) {
            y.copy_from_slice(x);
        }

        /// f16 activations to f32, `P` at a time.
        #[inline]
        #[target_feature(enable = $feat)]
        fn acts_f16(x: &[half::f16], y: &mut [f32]) {
            let (xc, xr) = x.as_chunks::<P>();
            let (yc, yr) = y.as_chunks_mut::<P>();
            for (x, y) in xc.iter().zip(yc) {
                stf(y, f16v(bytemuck::cast_ref(x)));
            }
            for (x, y) in xr.iter().zip(yr) {
                *y = f16_to_f32(*x);
            }
        }

        /// bf16 activations to f32 (the top half of an f32), `P` at a time.
        #[inline]
        #[target_feature(enable = $feat)]
        fn acts_bf16(x: &[half::bf16], y: &mut [f32]) {
            let (xc, xr) = x.as_chunks::<P>();
            let (yc, yr) = y.as_chunks_mut::<P>();
            for (x, y) in xc.iter().zip(yc) {
                stf(y, bf16v(bytemuck::cast_ref(x)));
            }
            for (x, y) in xr.iter().zip(yr) {
                *y = x.to_f32();
            }
        }

        float_gemm!(gemm_f32, f32, acts_f32, super::super::$fdot::vec_dot_f32);
        float_gemm!(gemm_f16, half::f16, acts_f16, super::super::$fdot::vec_dot_f16);
        float_gemm!(gemm_bf16, half::bf16, acts_bf16, super::super::$fdot::vec_dot_bf16);
    };
}

/// The 512-bit helpers (`P` = 16 rows per panel) for `gemm_kernels!`; the
/// `prims` module in scope supplies `dot_u8i8` and `dot_i16`.
macro_rules! gemm_512 {
    ($feat:literal, $vnni:expr, $fdot:ident) => {
        use super::super::util::*;
        use core::arch::x86_64::*;

        const P: usize = 16;
        /// Activation rows per legacy / K-quant micro-kernel call.
        const RL: usize = 8;
        const RK: usize = 8;
        const RF: usize = 8;
        type V = __m512i;
        type F = __m512;

        #[inline]
        #[target_feature(enable = $feat)]
        fn ldv(p: &[u8; 64]) -> V {
            // SAFETY: `p` refers to 64 readable bytes; `loadu` has no alignment need.
            unsafe { _mm512_loadu_si512(p.as_ptr().cast()) }
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn stv(p: &mut [u8; 64], v: V) {
            // SAFETY: `p` refers to 64 writable bytes; no alignment need.
            unsafe { _mm512_storeu_si512(p.as_mut_ptr().cast(), v) }
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn ldi(p: &[i32; 16]) -> V {
            // SAFETY: `p` refers to 64 readable bytes; no alignment need.
            unsafe { _mm512_loadu_si512(p.as_ptr().cast()) }
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn sti(p: &mut [i32; 16], v: V) {
            // SAFETY: `p` refers to 64 writable bytes; no alignment need.
            unsafe { _mm512_storeu_si512(p.as_mut_ptr().cast(), v) }
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn ldf(p: &[f32; 16]) -> F {
            // SAFETY: `p` refers to 16 readable f32; no alignment need.
            unsafe { _mm512_loadu_ps(p.as_ptr()) }
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn stf(p: &mut [f32; 16], v: F) {
            // SAFETY: `p` refers to 16 writable f32; no alignment need.
            unsafe { _mm512_storeu_ps(p.as_mut_ptr(), v) }
        }
        /// The f32 values of 16 f16 bit patterns.
        #[inline]
        #[target_feature(enable = $feat)]
        fn f16v(h: &[u16; 16]) -> F {
            _mm512_cvtph_ps(ld256(h))
        }
        /// Four bytes broadcast to every lane.
        #[inline]
        #[target_feature(enable = $feat)]
        fn bc4(p: &[i8; 4]) -> V {
            _mm512_set1_epi32(i32::from_le_bytes(bytemuck::cast(*p)))
        }
        /// Two i16 broadcast to every lane.
        #[inline]
        #[target_feature(enable = $feat)]
        fn bc2x16(p: &[i16; 2]) -> V {
            _mm512_set1_epi32(bytemuck::cast(*p))
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn set1_32(x: i32) -> V {
            _mm512_set1_epi32(x)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn set1_8(x: i8) -> V {
            _mm512_set1_epi8(x)
        }
        /// Bytes of `t` picked by the low four bits of `i`, per 128 bits.
        #[inline]
        #[target_feature(enable = $feat)]
        fn shuffle8(t: V, i: V) -> V {
            _mm512_shuffle_epi8(t, i)
        }
        /// IQ4_NL's 16 values in every 128 bits.
        #[inline]
        #[target_feature(enable = $feat)]
        fn kvalues() -> V {
            _mm512_broadcast_i32x4(ld128(&crate::formats::iquants::KVALUES_IQ4NL))
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn bcf(x: f32) -> F {
            _mm512_set1_ps(x)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn zero() -> V {
            _mm512_setzero_si512()
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn zerof() -> F {
            _mm512_setzero_ps()
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn and(a: V, b: V) -> V {
            _mm512_and_si512(a, b)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn or(a: V, b: V) -> V {
            _mm512_or_si512(a, b)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn xor(a: V, b: V) -> V {
            _mm512_xor_si512(a, b)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn add32(a: V, b: V) -> V {
            _mm512_add_epi32(a, b)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn add16(a: V, b: V) -> V {
            _mm512_add_epi16(a, b)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn sll16(a: V, n: i32) -> V {
            _mm512_sll_epi16(a, _mm_cvtsi32_si128(n))
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn srl16(a: V, n: i32) -> V {
            _mm512_srl_epi16(a, _mm_cvtsi32_si128(n))
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn sll32(a: V, n: i32) -> V {
            _mm512_sll_epi32(a, _mm_cvtsi32_si128(n))
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn srl32(a: V, n: i32) -> V {
            _mm512_srl_epi32(a, _mm_cvtsi32_si128(n))
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn sra32(a: V, n: i32) -> V {
            _mm512_sra_epi32(a, _mm_cvtsi32_si128(n))
        }
        /// `acc + Σ₄ w·x` (u8 × i8) in each i32 lane.
        #[inline]
        #[target_feature(enable = $feat)]
        fn dp(acc: V, w: V, x: V) -> V {
            prims::dot_u8i8(acc, w, x)
        }
        /// `acc + Σ₂ a·b` (i16) in each i32 lane.
        #[inline]
        #[target_feature(enable = $feat)]
        fn dpw(acc: V, a: V, b: V) -> V {
            prims::dot_i16(acc, a, b)
        }
        /// The u8 × i8 pair sums in i16 lanes.
        #[inline]
        #[target_feature(enable = $feat)]
        fn mb(w: V, x: V) -> V {
            _mm512_maddubs_epi16(w, x)
        }
        /// i16 pairs summed into i32 lanes.
        #[inline]
        #[target_feature(enable = $feat)]
        fn widen(v: V) -> V {
            _mm512_madd_epi16(v, _mm512_set1_epi16(1))
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn abs8(v: V) -> V {
            _mm512_abs_epi8(v)
        }
        type NegMask = __mmask64;
        #[inline]
        #[target_feature(enable = $feat)]
        fn negmask(w: V) -> NegMask {
            _mm512_movepi8_mask(w)
        }
        /// `x` negated where the weight is negative.
        #[inline]
        #[target_feature(enable = $feat)]
        fn sign8(x: V, neg: NegMask) -> V {
            _mm512_mask_sub_epi8(x, neg, _mm512_setzero_si512(), x)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn cvt(v: V) -> F {
            _mm512_cvtepi32_ps(v)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn fmadd(a: F, b: F, c: F) -> F {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn mul(a: F, b: F) -> F {
            _mm512_mul_ps(a, b)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn fadd(a: F, b: F) -> F {
            _mm512_add_ps(a, b)
        }
        /// Bits 0..4 of each i32 lane as 0x10 in its bytes 0..4 (the
        /// product spreads bit `k` to bit `8k`; the four copies of the
        /// nibble do not overlap, so nothing carries).
        #[inline]
        #[target_feature(enable = $feat)]
        fn spread4(t: V) -> V {
            let x = _mm512_mullo_epi32(and(t, set1_32(0xf)), set1_32(0x0020_4081));
            and(sll32(x, 4), set1_32(0x1010_1010))
        }
        /// The f16 in the low half of each i32 lane, as f32.
        #[inline]
        #[target_feature(enable = $feat)]
        fn lo16_f16(v: V) -> F {
            _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v))
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn castf(v: V) -> F {
            _mm512_castsi512_ps(v)
        }
        /// The f32 values of 16 bf16 bit patterns.
        #[inline]
        #[target_feature(enable = $feat)]
        fn bf16v(h: &[u16; 16]) -> F {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(ld256(h))))
        }
        /// The 16 × 4 transpose of dwords: lane `r` of result `c` is dword
        /// `c` of row `r`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn tr4(x: &[&[u8; 16]; 16]) -> [V; 4] {
            let z = |q: usize| {
                let v = _mm512_castsi128_si512(ld128(x[4 * q]));
                let v = _mm512_inserti32x4::<1>(v, ld128(x[4 * q + 1]));
                let v = _mm512_inserti32x4::<2>(v, ld128(x[4 * q + 2]));
                _mm512_inserti32x4::<3>(v, ld128(x[4 * q + 3]))
            };
            let (z0, z1, z2, z3) = (z(0), z(1), z(2), z(3));
            let lo = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
            let hi = _mm512_setr_epi32(2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31);
            let t01 = _mm512_permutex2var_epi32(z0, lo, z1);
            let t23 = _mm512_permutex2var_epi32(z0, hi, z1);
            let u01 = _mm512_permutex2var_epi32(z2, lo, z3);
            let u23 = _mm512_permutex2var_epi32(z2, hi, z3);
            [
                _mm512_shuffle_i64x2::<0b01_00_01_00>(t01, u01),
                _mm512_shuffle_i64x2::<0b11_10_11_10>(t01, u01),
                _mm512_shuffle_i64x2::<0b01_00_01_00>(t23, u23),
                _mm512_shuffle_i64x2::<0b11_10_11_10>(t23, u23),
            ]
        }

        gemm_kernels!($feat, $vnni, $fdot);
    };
}

/// The 256-bit helpers (`P` = 8 rows per panel) for `gemm_kernels!`.
macro_rules! gemm_256 {
    ($feat:literal, $vnni:expr, $fdot:ident) => {
        use super::super::util::*;
        use core::arch::x86_64::*;

        const P: usize = 8;
        const RL: usize = 4;
        const RK: usize = if $vnni { 4 } else { 3 };
        const RF: usize = 4;
        type V = __m256i;
        type F = __m256;

        #[inline]
        #[target_feature(enable = $feat)]
        fn ldv(p: &[u8; 32]) -> V {
            ld256(p)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn stv(p: &mut [u8; 32], v: V) {
            st256(p, v)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn ldi(p: &[i32; 8]) -> V {
            ld256(p)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn sti(p: &mut [i32; 8], v: V) {
            st256(p, v)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn ldf(p: &[f32; 8]) -> F {
            ld_ps(p)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn stf(p: &mut [f32; 8], v: F) {
            st_ps(p, v)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn f16v(h: &[u16; 8]) -> F {
            _mm256_cvtph_ps(ld128(h))
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn bc4(p: &[i8; 4]) -> V {
            _mm256_set1_epi32(i32::from_le_bytes(bytemuck::cast(*p)))
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn bc2x16(p: &[i16; 2]) -> V {
            _mm256_set1_epi32(bytemuck::cast(*p))
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn set1_32(x: i32) -> V {
            _mm256_set1_epi32(x)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn set1_8(x: i8) -> V {
            _mm256_set1_epi8(x)
        }
        /// Bytes of `t` picked by the low four bits of `i`, per 128 bits.
        #[inline]
        #[target_feature(enable = $feat)]
        fn shuffle8(t: V, i: V) -> V {
            _mm256_shuffle_epi8(t, i)
        }
        /// IQ4_NL's 16 values in both 128-bit halves.
        #[inline]
        #[target_feature(enable = $feat)]
        fn kvalues() -> V {
            _mm256_broadcastsi128_si256(ld128(&crate::formats::iquants::KVALUES_IQ4NL))
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn bcf(x: f32) -> F {
            _mm256_set1_ps(x)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn zero() -> V {
            _mm256_setzero_si256()
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn zerof() -> F {
            _mm256_setzero_ps()
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn and(a: V, b: V) -> V {
            _mm256_and_si256(a, b)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn or(a: V, b: V) -> V {
            _mm256_or_si256(a, b)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn xor(a: V, b: V) -> V {
            _mm256_xor_si256(a, b)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn add32(a: V, b: V) -> V {
            _mm256_add_epi32(a, b)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn add16(a: V, b: V) -> V {
            _mm256_add_epi16(a, b)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn sll16(a: V, n: i32) -> V {
            _mm256_sll_epi16(a, _mm_cvtsi32_si128(n))
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn srl16(a: V, n: i32) -> V {
            _mm256_srl_epi16(a, _mm_cvtsi32_si128(n))
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn sll32(a: V, n: i32) -> V {
            _mm256_sll_epi32(a, _mm_cvtsi32_si128(n))
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn srl32(a: V, n: i32) -> V {
            _mm256_srl_epi32(a, _mm_cvtsi32_si128(n))
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn sra32(a: V, n: i32) -> V {
            _mm256_sra_epi32(a, _mm_cvtsi32_si128(n))
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn dp(acc: V, w: V, x: V) -> V {
            prims::dot_u8i8(acc, w, x)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn dpw(acc: V, a: V, b: V) -> V {
            prims::dot_i16(acc, a, b)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn mb(w: V, x: V) -> V {
            _mm256_maddubs_epi16(w, x)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn widen(v: V) -> V {
            _mm256_madd_epi16(v, _mm256_set1_epi16(1))
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn abs8(v: V) -> V {
            _mm256_abs_epi8(v)
        }
        type NegMask = V;
        #[inline]
        #[target_feature(enable = $feat)]
        fn negmask(w: V) -> NegMask {
            w
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn sign8(x: V, w: NegMask) -> V {
            _mm256_sign_epi8(x, w)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn cvt(v: V) -> F {
            _mm256_cvtepi32_ps(v)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn fmadd(a: F, b: F, c: F) -> F {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn mul(a: F, b: F) -> F {
            _mm256_mul_ps(a, b)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn fadd(a: F, b: F) -> F {
            _mm256_add_ps(a, b)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn spread4(t: V) -> V {
            let x = _mm256_mullo_epi32(and(t, set1_32(0xf)), set1_32(0x0020_4081));
            and(sll32(x, 4), set1_32(0x1010_1010))
        }
        /// The f16 in the low half of each i32 lane, as f32.
        #[inline]
        #[target_feature(enable = $feat)]
        fn lo16_f16(v: V) -> F {
            let m = and(v, set1_32(0xffff));
            let p = _mm_packus_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256::<1>(m));
            _mm256_cvtph_ps(p)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn castf(v: V) -> F {
            _mm256_castsi256_ps(v)
        }
        #[inline]
        #[target_feature(enable = $feat)]
        fn bf16v(h: &[u16; 8]) -> F {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(ld128(h))))
        }
        /// The 8 × 4 transpose of dwords: lane `r` of result `c` is dword
        /// `c` of row `r`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn tr4(x: &[&[u8; 16]; 8]) -> [V; 4] {
            let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            let p = |q: usize| {
                let y = _mm256_set_m128i(ld128(x[2 * q + 1]), ld128(x[2 * q]));
                _mm256_permutevar8x32_epi32(y, perm)
            };
            let (p0, p1, p2, p3) = (p(0), p(1), p(2), p(3));
            let a = _mm256_unpacklo_epi64(p0, p1);
            let b = _mm256_unpackhi_epi64(p0, p1);
            let c = _mm256_unpacklo_epi64(p2, p3);
            let d = _mm256_unpackhi_epi64(p2, p3);
            [
                _mm256_permute2x128_si256::<0x20>(a, c),
                _mm256_permute2x128_si256::<0x20>(b, d),
                _mm256_permute2x128_si256::<0x31>(a, c),
                _mm256_permute2x128_si256::<0x31>(b, d),
            ]
        }

        gemm_kernels!($feat, $vnni, $fdot);
    };
}
