//! One-row products (generation): one activation row times `n` weight rows,
//! the weights streamed once, several rows per pass (see
//! [`crate::kernels::GemvFn`]).
//!
//! # Layout
//!
//! The activation row is laid out once per call (per chunk of [`CB`] blocks)
//! in the order the weight bytes come in, so that a weight row needs no
//! shuffling beyond one word permute per four blocks:
//!
//! - The 4-bit formats (Q4_0, Q4_1, Q5_0, Q5_1) read four blocks at a time.
//!   A word permute gathers their four 16-byte `qs` into one register; its low
//!   nibbles are elements `0..16` of each block, its high nibbles elements
//!   `16..32`. The activation quad holds the matching bytes (`y[0]`: elements
//!   `0..16` of the four blocks, `y[1]`: `16..32`), so two `vpdpbusd` give
//!   each block's products in four i32 lanes (`4b..4b+4`). The weight offset
//!   (−8 for Q4_0, −16 for Q5_0) is exact in i32: the sums start from
//!   `−off·Σa` of each lane's activation bytes, computed once per call. The
//!   lanes are scaled by `d_w·d_a` spread over the block's lanes (one word
//!   permute and one `vcvtph2ps` per quad for the weight scales), and the
//!   mins of Q4_1/Q5_1 add `m·s` in the block's first lane.
//! - Q8_0 reads two blocks per register in element order (eight lanes per
//!   block), as `vec_dot` does; the 512-bit kernels multiply through
//!   `vpmaddubsw` with or without VNNI (see the kernel), the 256-bit ones
//!   with VNNI through `(w + 128)·a − 128·Σa` with the second term
//!   precomputed, without it through `dot_i8i8`.
//!
//! `R` rows run side by side ([`R`] = 4, the rest one at a time), each with
//! its own f32 accumulator: a row's arithmetic is the same whichever group it
//! is in, so results do not depend on how rows are split between calls or
//! threads (bit-identical). They differ from `vec_dot`'s in the order of the
//! float sums only; the integer block sums are the same.
//!
//! Full quads are plain unaligned loads inside the row; a last partial quad
//! (rows whose block count is not a multiple of four, e.g. SmolLM2's 576
//! columns: 18 blocks) uses masked loads, which read nothing past the row,
//! and the activation quad is padded with zero blocks.

macro_rules! gemv_512 {
    ($feat:literal) => {
        use super::super::util::*;
        use crate::blocks::*;
        use core::arch::x86_64::*;
        use core::mem::MaybeUninit;
        use half::f16;
        use prims::dot_u8i8;
        // The `vpmaddubsw` product (no VNNI), which the Q8_0 kernel uses in
        // both 512-bit tables (see there).
        use super::super::avx512::prims::dot_i8i8 as dot_i8i8_bw;

        /// Activation blocks laid out per pass (4096 elements).
        const CB: usize = 128;
        /// Quads of blocks per pass.
        const CQ: usize = CB / 4;
        /// Rows side by side.
        const R: usize = 4;
        const PFD: usize = 8192;

        /// Four activation blocks, laid out for one weight format family.
        #[repr(C, align(64))]
        #[derive(Clone, Copy)]
        struct Quad {
            /// Activation bytes (see the module docs for the order).
            y: [__m512i; 2],
            /// Initial i32 lane sums: `−off·Σa` (per lane, both halves).
            off: [__m512i; 2],
            /// The activation scales spread over each block's lanes.
            dy: [__m512; 2],
            /// Q8_1's `s` in each block's first lane (min formats).
            sy: __m512,
        }

        /// Unaligned 64-byte load at `p + off`, masked to the `valid` bytes
        /// of the row part that `p` starts.
        ///
        /// # Safety
        /// `p..p + valid` must be readable.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn ldw(p: *const u8, off: usize, valid: usize) -> __m512i {
            if valid >= off + 64 {
                // SAFETY: the 64 bytes lie inside `p..p + valid`.
                unsafe { _mm512_loadu_si512(p.add(off).cast()) }
            } else {
                let n = valid.saturating_sub(off);
                let k: __mmask64 = if n >= 64 { !0 } else { (1u64 << n) - 1 };
                // SAFETY: masked-out bytes are not read (no fault either), and
                // the unmasked ones lie inside `p..p + valid`.
                unsafe { _mm512_maskz_loadu_epi8(k, p.wrapping_add(off).cast()) }
            }
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn idx(w: &[i16; 32]) -> __m512i {
            // SAFETY: `w` is 64 readable bytes.
            unsafe { _mm512_loadu_si512(w.as_ptr().cast()) }
        }

        /// `[v0 ×4 | v1 ×4 | v2 ×4 | v3 ×4]` of the first four f32 of `v`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn spread4(v: __m128) -> __m512 {
            let i = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
            _mm512_permutexvar_ps(i, _mm512_castps128_ps512(v))
        }

        /// Four f16 as f32.
        #[inline]
        #[target_feature(enable = $feat)]
        fn f16x4(h: [f16; 4]) -> __m128 {
            let w = |i: usize| h[i].to_bits() as i16;
            _mm_cvtph_ps(_mm_setr_epi16(w(0), w(1), w(2), w(3), 0, 0, 0, 0))
        }

        /// The zero block that pads a last partial quad.
        const Z0: BlockQ8_0 = BlockQ8_0 {
            d: f16::ZERO,
            qs: [0; 32],
        };
        const Z1: BlockQ8_1 = BlockQ8_1 {
            d: f16::ZERO,
            s: f16::ZERO,
            qs: [0; 32],
        };

        /// Element halves of four 32-byte activation quants: `[0..16 of each
        /// block]`, `[16..32 of each block]`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn halves(q: [&[i8; 32]; 4]) -> [__m512i; 2] {
            let h =
                |b: usize, k: usize| -> &[i8; 16] { q[b][16 * k..16 * k + 16].try_into().unwrap() };
            core::array::from_fn(|k| {
                let v = _mm512_castsi128_si512(ld128(h(0, k)));
                let v = _mm512_inserti32x4::<1>(v, ld128(h(1, k)));
                let v = _mm512_inserti32x4::<2>(v, ld128(h(2, k)));
                _mm512_inserti32x4::<3>(v, ld128(h(3, k)))
            })
        }

        /// Per-lane sums of the activation bytes of both halves.
        #[inline]
        #[target_feature(enable = $feat)]
        fn lane_sums(y: &[__m512i; 2]) -> __m512i {
            let ones = _mm512_set1_epi8(1);
            dot_u8i8(dot_u8i8(_mm512_setzero_si512(), ones, y[0]), ones, y[1])
        }

        /// A Q8_0 quad for the offset 4-bit formats (`1 << SH` = the offset).
        #[inline]
        #[target_feature(enable = $feat)]
        fn quad_off<const SH: u32>(a: &[BlockQ8_0]) -> Quad {
            let b: [&BlockQ8_0; 4] = core::array::from_fn(|i| a.get(i).unwrap_or(&Z0));
            let y = halves(b.map(|b| &b.qs));
            let off = _mm512_sub_epi32(
                _mm512_setzero_si512(),
                _mm512_sll_epi32(lane_sums(&y), _mm_cvtsi32_si128(SH as i32)),
            );
            let dy = spread4(f16x4(b.map(|b| b.d)));
            Quad {
                y,
                off: [off, off],
                dy: [dy, dy],
                sy: _mm512_setzero_ps(),
            }
        }

        /// A Q8_1 quad for the min formats.
        #[inline]
        #[target_feature(enable = $feat)]
        fn quad_min(a: &[BlockQ8_1]) -> Quad {
            let b: [&BlockQ8_1; 4] = core::array::from_fn(|i| a.get(i).unwrap_or(&Z1));
            let y = halves(b.map(|b| &b.qs));
            let dy = spread4(f16x4(b.map(|b| b.d)));
            let i = _mm512_setr_epi32(0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0);
            let sy = _mm512_maskz_permutexvar_ps(
                0x1111,
                i,
                _mm512_castps128_ps512(f16x4(b.map(|b| b.s))),
            );
            let z = _mm512_setzero_si512();
            Quad {
                y,
                off: [z, z],
                dy: [dy, dy],
                sy,
            }
        }

        /// A Q8_0 quad for Q8_0 weights: two blocks per register.
        #[inline]
        #[target_feature(enable = $feat)]
        fn quad_q8(a: &[BlockQ8_0]) -> Quad {
            let b: [&BlockQ8_0; 4] = core::array::from_fn(|i| a.get(i).unwrap_or(&Z0));
            let pair = |i: usize| {
                _mm512_inserti64x4::<1>(
                    _mm512_castsi256_si512(ld256(&b[i].qs)),
                    ld256(&b[i + 1].qs),
                )
            };
            let y = [pair(0), pair(2)];
            // Unused: the Q8_0 kernel needs no offset sums.
            let off = [_mm512_setzero_si512(); 2];
            let d = f16x4(b.map(|b| b.d));
            let i01 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
            let i23 = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
            let d5 = _mm512_castps128_ps512(d);
            let dy = [
                _mm512_permutexvar_ps(i01, d5),
                _mm512_permutexvar_ps(i23, d5),
            ];
            Quad {
                y,
                off,
                dy,
                sy: _mm512_setzero_ps(),
            }
        }

        /// Word indices: `qs` words of four blocks of `bw` words whose `qs`
        /// start at word `q0` of each block; blocks whose words pass 31 come
        /// from the second register, loaded at word `second`.
        const fn qs_words(bw: i16, q0: i16, second: i16) -> [i16; 32] {
            let mut w = [0i16; 32];
            let mut b = 0;
            while b < 4 {
                let mut i = 0;
                while i < 8 {
                    let word = b * bw + q0 + i;
                    let from_second = (b * bw + q0 + 7) > 31;
                    w[(8 * b + i) as usize] = if from_second {
                        32 + word - second
                    } else {
                        word
                    };
                    i += 1;
                }
                b += 1;
            }
            w
        }

        /// Word indices: word `f` of each of four blocks of `bw` words,
        /// repeated four times (for `vcvtph2ps` of the low 16 words).
        const fn spread_words(bw: i16, f: i16, second: i16) -> [i16; 32] {
            let mut w = [0i16; 32];
            let mut b = 0;
            while b < 4 {
                let word = b * bw + f;
                let v = if word > 31 { 32 + word - second } else { word };
                let mut i = 0;
                while i < 4 {
                    w[(4 * b + i) as usize] = v;
                    i += 1;
                }
                b += 1;
            }
            w
        }

        /// Words `f` of four blocks as a 64-bit value (`f`'s low halves of
        /// Q5's `qh`), in words 0..4 and `g` in words 4..8.
        const fn two_words(bw: i16, f: i16, g: i16, second: i16) -> [i16; 32] {
            let mut w = [0i16; 32];
            let mut b = 0;
            while b < 4 {
                let (x, y) = (b * bw + f, b * bw + g);
                w[b as usize] = if x > 31 { 32 + x - second } else { x };
                w[4 + b as usize] = if y > 31 { 32 + y - second } else { y };
                b += 1;
            }
            w
        }

        /// The 4-bit formats' quad of one row: bytes `p..p + valid` (four
        /// blocks, or fewer), loaded at byte 0 and at word `SECOND`; `qi`
        /// gathers the `qs`, `fifth` (Q5) the `qh` halves. Returns the low
        /// and high nibbles (5th bits added) and the two loads.
        ///
        /// # Safety
        /// `p..p + valid` must be readable.
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn nib_quad<const SECOND: usize>(
            p: *const u8,
            valid: usize,
            qi: __m512i,
            fifth: Option<__m512i>,
        ) -> (__m512i, __m512i, __m512i, __m512i) {
            // SAFETY: the caller's contract.
            let (x0, x1) = unsafe { (ldw(p, 0, valid), ldw(p, 2 * SECOND, valid)) };
            let qs = _mm512_permutex2var_epi16(x0, qi, x1);
            let m4 = _mm512_set1_epi8(0x0f);
            let mut lo = _mm512_and_si512(qs, m4);
            let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(qs), m4);
            if let Some(hi_idx) = fifth {
                // Q5: the `qh` of the four blocks, low halves (elements
                // 0..16) in words 0..4 and high halves in words 4..8.
                let h = _mm512_castsi512_si128(_mm512_permutex2var_epi16(x0, hi_idx, x1));
                let kl: __mmask64 = _mm_cvtsi128_si64(h) as u64;
                let kh: __mmask64 = _mm_extract_epi64::<1>(h) as u64;
                let b5 = _mm512_set1_epi8(0x10);
                lo = _mm512_mask_add_epi8(lo, kl, lo, b5);
                hi = _mm512_mask_add_epi8(hi, kh, hi, b5);
            }
            (lo, hi, x0, x1)
        }

        /// The i32 lane sums of a quad's nibbles with an activation quad
        /// (from the quad's offsets).
        #[inline]
        #[target_feature(enable = $feat)]
        fn nib_dot(lo: __m512i, hi: __m512i, a: &Quad) -> __m512i {
            dot_u8i8(dot_u8i8(a.off[0], lo, a.y[0]), hi, a.y[1])
        }

        /// Eight f16 words gathered from two registers, as f32.
        #[inline]
        #[target_feature(enable = $feat)]
        fn halfs(x0: __m512i, i: &[i16; 32], x1: __m512i) -> __m512 {
            _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutex2var_epi16(
                x0,
                idx(i),
                x1,
            )))
        }

        /// Defines `$name`, the one-row product of weights `$w` (blocks of
        /// `$bw` words) with activations `$a`, and `$rows_name`, the same
        /// for several activation rows at once ([`crate::kernels::GemmFn`]):
        /// each weight quad is loaded and unpacked once (`$dec`, from the
        /// quad's bytes at `$p`, `$valid` of them readable) for up to [`M`]
        /// activation rows, each of which then accumulates it exactly as the
        /// one-row product does (`$body`), so every row's bits equal
        /// `$name`'s on that row alone.
        macro_rules! gemv_fn {
            (
                                        $name:ident, $rows_name:ident, $w:ty, $a:ty, $prep:expr,
                                        |$p:ident, $valid:ident| $dec:expr,
                                        |$d:pat, $q:ident, $acc:ident| $body:expr
                                    ) => {
                /// One activation row (`$a`) times the `n` weight rows in `w`.
                ///
                /// # Safety
                /// The CPU must have the features this function enables.
                #[target_feature(enable = $feat)]
                pub(in super::super) unsafe fn $name(
                    k: usize,
                    w: &[u8],
                    a: &[u8],
                    out: &mut [f32],
                ) {
                    const BS: usize = core::mem::size_of::<$w>();
                    let nb = k / 32;
                    let rb = nb * BS;
                    assert!(
                        k % 32 == 0 && rb > 0 && w.len() % rb == 0,
                        "gemv: partial rows"
                    );
                    let n = w.len() / rb;
                    let a: &[$a] = bytemuck::cast_slice(a);
                    assert!(a.len() == nb && out.len() >= n, "gemv: sizes");
                    // SAFETY: the features are the caller's contract.
                    unsafe { $rows_name::run::<1>(nb, w, [a], [out]) }
                }

                /// Activation rows `a` (each `k` elements of `$a`) times
                /// the `n` weight rows in `w`: row `i` goes to
                /// `out[i * ldo..i * ldo + n]`, bit-identical to `$name`.
                ///
                /// # Safety
                /// The CPU must have the features this function enables.
                #[target_feature(enable = $feat)]
                pub(in super::super) unsafe fn $rows_name(
                    k: usize,
                    w: &[u8],
                    a: &[u8],
                    out: &mut [f32],
                    ldo: usize,
                ) {
                    const BS: usize = core::mem::size_of::<$w>();
                    let nb = k / 32;
                    let rb = nb * BS;
                    assert!(
                        k % 32 == 0 && rb > 0 && w.len() % rb == 0,
                        "gemv: partial rows"
                    );
                    let n = w.len() / rb;
                    let a: &[$a] = bytemuck::cast_slice(a);
                    assert!(a.len() % nb == 0, "gemv: partial activation rows");
                    let m = a.len() / nb;
                    assert!(
                        ldo >= n && (m == 0 || out.len() >= (m - 1) * ldo + n),
                        "gemv: output too small"
                    );
                    let mut rows = a.chunks_exact(nb).zip(out.chunks_mut(ldo));
                    loop {
                        let group: [_; $rows_name::M] = core::array::from_fn(|_| rows.next());
                        if group.iter().all(Option::is_some) {
                            let [(a0, o0), (a1, o1), (a2, o2), (a3, o3)] =
                                group.map(Option::unwrap);
                            // SAFETY: as above.
                            unsafe {
                                $rows_name::run::<{ $rows_name::M }>(
                                    nb,
                                    w,
                                    [a0, a1, a2, a3],
                                    [o0, o1, o2, o3],
                                )
                            }
                            continue;
                        }
                        for (a, o) in group.into_iter().flatten() {
                            // SAFETY: as above.
                            unsafe { $rows_name::run::<1>(nb, w, [a], [o]) }
                        }
                        return;
                    }
                }

                mod $rows_name {
                    use super::*;

                    /// Activation rows per pass over the weights.
                    pub const M: usize = 4;

                    /// `RR` weight rows from `w` (stride `rb`) times `MM`
                    /// activation rows: their sums over the quads of `act`.
                    ///
                    /// # Safety
                    /// The rows' bytes of these quads must be readable.
                    #[inline]
                    #[target_feature(enable = $feat)]
                    unsafe fn rows<const RR: usize, const MM: usize>(
                        w: *const u8,
                        rb: usize,
                        act: [&[Quad]; MM],
                        valid_last: usize,
                    ) -> [[f32; RR]; MM] {
                        const BS: usize = core::mem::size_of::<$w>();
                        let mut acc = [[_mm512_setzero_ps(); RR]; MM];
                        let nq = act[0].len();
                        let full = if valid_last == 4 * BS { nq } else { nq - 1 };
                        for qn in 0..nq {
                            for r in 0..RR {
                                let $p = w.wrapping_add(r * rb + qn * 4 * BS);
                                let $valid = if qn < full {
                                    // One prefetch per cache line of the quad.
                                    for l in (0..4 * BS).step_by(64) {
                                        _mm_prefetch::<_MM_HINT_T0>(
                                            $p.wrapping_add(PFD + l).cast(),
                                        );
                                    }
                                    4 * BS
                                } else {
                                    // The row's last `valid_last` bytes.
                                    valid_last
                                };
                                let $d = $dec;
                                for (acc, act) in acc.iter_mut().zip(act) {
                                    let $q = &act[qn];
                                    let $acc = acc[r];
                                    acc[r] = $body;
                                }
                            }
                        }
                        acc.map(|a| a.map(|v| _mm512_reduce_add_ps(v)))
                    }

                    /// Sums of weight rows `j..j + RR` for each activation row:
                    /// the first chunk's, or added to the earlier ones'.
                    #[inline]
                    fn store<const RR: usize, const MM: usize>(
                        out: &mut [&mut [f32]; MM],
                        j: usize,
                        s: [[f32; RR]; MM],
                        first: bool,
                    ) {
                        for (o, s) in out.iter_mut().zip(s) {
                            for (o, s) in o[j..j + RR].iter_mut().zip(s) {
                                *o = if first { s } else { *o + s };
                            }
                        }
                    }

                    /// The products of `MM` activation rows of `nb` blocks.
                    ///
                    /// # Safety
                    /// The CPU must have the features this function enables.
                    #[target_feature(enable = $feat)]
                    pub unsafe fn run<const MM: usize>(
                        nb: usize,
                        w: &[u8],
                        a: [&[$a]; MM],
                        mut out: [&mut [f32]; MM],
                    ) {
                        const BS: usize = core::mem::size_of::<$w>();
                        let rb = nb * BS;
                        let n = w.len() / rb;
                        let mut act = [const { [const { MaybeUninit::<Quad>::uninit() }; CQ] }; MM];
                        let mut c0 = 0;
                        while c0 < nb {
                            let cb = (nb - c0).min(CB);
                            let nq = cb.div_ceil(4);
                            for (act, a) in act.iter_mut().zip(a) {
                                for (qn, slot) in act[..nq].iter_mut().enumerate() {
                                    let s = c0 + 4 * qn;
                                    slot.write($prep(&a[s..(s + 4).min(c0 + cb)]));
                                }
                            }
                            // SAFETY: the first `nq` of each were just written.
                            let act: [&[Quad]; MM] = core::array::from_fn(|i| unsafe {
                                core::slice::from_raw_parts(act[i].as_ptr().cast(), nq)
                            });
                            let valid_last = (cb - 4 * (nq - 1)) * BS;
                            let base = w.as_ptr().wrapping_add(c0 * BS);
                            let first = c0 == 0;
                            let mut j = 0;
                            while j + R <= n {
                                // SAFETY: rows `j..j + R` exist; each reads its
                                // blocks `c0..c0 + cb` only.
                                let s = unsafe {
                                    rows::<R, MM>(base.wrapping_add(j * rb), rb, act, valid_last)
                                };
                                store(&mut out, j, s, first);
                                j += R;
                            }
                            while j < n {
                                // SAFETY: as above, for row `j`.
                                let s = unsafe {
                                    rows::<1, MM>(base.wrapping_add(j * rb), rb, act, valid_last)
                                };
                                store(&mut out, j, s, first);
                                j += 1;
                            }
                            c0 += cb;
                        }
                    }
                }
            };
        }

        // Q4_0: 9 words per block, `d` at word 0, `qs` at words 1..9; the
        // second load starts at word 4.
        gemv_fn!(
            gemv_q4_0,
            gemv_rows_q4_0,
            BlockQ4_0,
            BlockQ8_0,
            quad_off::<3>,
            |p, valid| {
                const QI: [i16; 32] = qs_words(9, 1, 4);
                const DI: [i16; 32] = spread_words(9, 0, 4);
                // SAFETY: `rows` passes a readable quad.
                let (lo, hi, x0, x1) = unsafe { nib_quad::<4>(p, valid, idx(&QI), None) };
                (lo, hi, halfs(x0, &DI, x1))
            },
            |(lo, hi, dx), q, acc| {
                let s = nib_dot(lo, hi, q);
                _mm512_fmadd_ps(_mm512_mul_ps(dx, q.dy[0]), _mm512_cvtepi32_ps(s), acc)
            }
        );

        // Q4_1: 10 words, `d` at 0, `m` at 1, `qs` at 2..10; second load at
        // word 8.
        gemv_fn!(
            gemv_q4_1,
            gemv_rows_q4_1,
            BlockQ4_1,
            BlockQ8_1,
            quad_min,
            |p, valid| {
                const QI: [i16; 32] = qs_words(10, 2, 8);
                const DI: [i16; 32] = spread_words(10, 0, 8);
                const MI: [i16; 32] = spread_words(10, 1, 8);
                // SAFETY: `rows` passes a readable quad.
                let (lo, hi, x0, x1) = unsafe { nib_quad::<8>(p, valid, idx(&QI), None) };
                (lo, hi, halfs(x0, &DI, x1), halfs(x0, &MI, x1))
            },
            |(lo, hi, dx, mx), q, acc| {
                let s = nib_dot(lo, hi, q);
                let acc = _mm512_fmadd_ps(_mm512_mul_ps(dx, q.dy[0]), _mm512_cvtepi32_ps(s), acc);
                _mm512_fmadd_ps(mx, q.sy, acc)
            }
        );

        // Q5_0: 11 words, `d` at 0, `qh` at 1..3, `qs` at 3..11; second load
        // at word 12.
        gemv_fn!(
            gemv_q5_0,
            gemv_rows_q5_0,
            BlockQ5_0,
            BlockQ8_0,
            quad_off::<4>,
            |p, valid| {
                const QI: [i16; 32] = qs_words(11, 3, 12);
                const DI: [i16; 32] = spread_words(11, 0, 12);
                const HI: [i16; 32] = two_words(11, 1, 2, 12);
                // SAFETY: `rows` passes a readable quad.
                let (lo, hi, x0, x1) =
                    unsafe { nib_quad::<12>(p, valid, idx(&QI), Some(idx(&HI))) };
                (lo, hi, halfs(x0, &DI, x1))
            },
            |(lo, hi, dx), q, acc| {
                let s = nib_dot(lo, hi, q);
                _mm512_fmadd_ps(_mm512_mul_ps(dx, q.dy[0]), _mm512_cvtepi32_ps(s), acc)
            }
        );

        // Q5_1: 12 words, `d` at 0, `m` at 1, `qh` at 2..4, `qs` at 4..12;
        // second load at word 16.
        gemv_fn!(
            gemv_q5_1,
            gemv_rows_q5_1,
            BlockQ5_1,
            BlockQ8_1,
            quad_min,
            |p, valid| {
                const QI: [i16; 32] = qs_words(12, 4, 16);
                const DI: [i16; 32] = spread_words(12, 0, 16);
                const MI: [i16; 32] = spread_words(12, 1, 16);
                const HI: [i16; 32] = two_words(12, 2, 3, 16);
                // SAFETY: `rows` passes a readable quad.
                let (lo, hi, x0, x1) =
                    unsafe { nib_quad::<16>(p, valid, idx(&QI), Some(idx(&HI))) };
                (lo, hi, halfs(x0, &DI, x1), halfs(x0, &MI, x1))
            },
            |(lo, hi, dx, mx), q, acc| {
                let s = nib_dot(lo, hi, q);
                let acc = _mm512_fmadd_ps(_mm512_mul_ps(dx, q.dy[0]), _mm512_cvtepi32_ps(s), acc);
                _mm512_fmadd_ps(mx, q.sy, acc)
            }
        );

        // Q8_0: 17 words, `d` at 0, `qs` at 1..17; loads at words 0, 32, 36.
        gemv_fn!(
            gemv_q8_0,
            gemv_rows_q8_0,
            BlockQ8_0,
            BlockQ8_0,
            quad_q8,
            |p, valid| {
                const P01: [i16; 32] = {
                    let mut w = [0i16; 32];
                    let mut i = 0;
                    while i < 16 {
                        w[i] = 1 + i as i16; // block 0: words 1..17 (first register)
                        let b1 = 18 + i as i16; // block 1: words 18..34
                        w[16 + i] = if b1 > 31 { 32 + b1 - 32 } else { b1 };
                        i += 1;
                    }
                    w
                };
                const P23: [i16; 32] = {
                    // From the registers at words 32 and 36.
                    let mut w = [0i16; 32];
                    let mut i = 0;
                    while i < 16 {
                        w[i] = 35 + i as i16 - 32; // block 2: words 35..51
                        w[16 + i] = 32 + (52 + i as i16 - 36); // block 3: words 52..68
                        i += 1;
                    }
                    w
                };
                const DW: [i16; 32] = {
                    let mut w = [0i16; 32];
                    let mut i = 0;
                    while i < 8 {
                        (w[i], w[8 + i], w[16 + i], w[24 + i]) = (0, 17, 32 + 2, 32 + 19);
                        i += 1;
                    }
                    w
                };
                // SAFETY: `rows` passes a readable quad.
                let (x0, x1, x2) =
                    unsafe { (ldw(p, 0, valid), ldw(p, 64, valid), ldw(p, 72, valid)) };
                let w01 = _mm512_permutex2var_epi16(x0, idx(&P01), x1);
                let w23 = _mm512_permutex2var_epi16(x1, idx(&P23), x2);
                let dw = _mm512_permutex2var_epi16(x0, idx(&DW), x1);
                let dx = [
                    _mm512_cvtph_ps(_mm512_castsi512_si256(dw)),
                    _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(dw)),
                ];
                (w01, w23, dx)
            },
            |(w01, w23, dx), q, acc| {
                // Signed × signed through `vpmaddubsw` (|w| · ±a) even with
                // VNNI: `vpdpbusd` needs unsigned weights, `(w + 128)·a` and
                // the precomputed `−128·Σa` per lane, and reading those sums
                // made the row streams slower from DRAM (criterion, 96 MiB of
                // Q8_0: 31.8 GiB/s against 36.8; in cache 62.7 against 49.8).
                // Models stream from DRAM; SmolLM2's Q8_0 tg gained ~8%.
                let s = [dot_i8i8_bw(w01, q.y[0]), dot_i8i8_bw(w23, q.y[1])];
                let acc =
                    _mm512_fmadd_ps(_mm512_mul_ps(dx[0], q.dy[0]), _mm512_cvtepi32_ps(s[0]), acc);
                _mm512_fmadd_ps(_mm512_mul_ps(dx[1], q.dy[1]), _mm512_cvtepi32_ps(s[1]), acc)
            }
        );
    };
}

/// The 256-bit one-row kernels (AVX2, AVX-VNNI): the same scheme two blocks
/// per register. A pair's `qs` (two 16-byte loads) gives the low nibbles of
/// both blocks in one register and the high nibbles in another; the
/// activation pair is laid out to match (`y[0]`: elements `0..16` of both
/// blocks, `y[1]`: `16..32`), four i32 lanes per block. Q8_0 takes one block
/// per register (eight lanes). Weights are read through block references
/// (a last odd block pairs with a zero block), so no load can leave the row.
macro_rules! gemv_256 {
    ($feat:literal, $vnni:expr) => {
        use super::super::util::*;
        use crate::blocks::*;
        use core::arch::x86_64::*;
        use core::mem::MaybeUninit;
        use half::f16;
        use prims::dot_u8i8;
        // The sign-trick product of the table's `vec_dot` kernels (`v256.rs`).
        use super::dot_i8i8;

        const VNNI: bool = $vnni;
        /// Activation blocks laid out per pass (4096 elements).
        const CB: usize = 128;
        /// Pairs of blocks per pass.
        const CP: usize = CB / 2;
        /// Rows side by side.
        const R: usize = 4;
        /// Software prefetch distance (bytes ahead in each row).
        const PFD: usize = 8192;

        /// Two activation blocks, laid out for one weight format family.
        #[repr(C, align(32))]
        #[derive(Clone, Copy)]
        struct Pair {
            y: [__m256i; 2],
            off: [__m256i; 2],
            dy: [__m256; 2],
            /// Q8_1's `s` in each block's first lane (min formats).
            sy: __m256,
        }

        const Z0: BlockQ8_0 = BlockQ8_0 {
            d: f16::ZERO,
            qs: [0; 32],
        };
        const Z1: BlockQ8_1 = BlockQ8_1 {
            d: f16::ZERO,
            s: f16::ZERO,
            qs: [0; 32],
        };

        /// `[a ×4 | b ×4]` of two f16.
        #[inline]
        #[target_feature(enable = $feat)]
        fn spread2(a: f16, b: f16) -> __m256 {
            let w = u32::from(a.to_bits()) | u32::from(b.to_bits()) << 16;
            let s = _mm_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3);
            _mm256_cvtph_ps(_mm_shuffle_epi8(_mm_cvtsi32_si128(w as i32), s))
        }

        /// `[a, 0, 0, 0 | b, 0, 0, 0]` of two f16.
        #[inline]
        #[target_feature(enable = $feat)]
        fn firsts(a: f16, b: f16) -> __m256 {
            _mm256_setr_ps(f16_to_f32(a), 0.0, 0.0, 0.0, f16_to_f32(b), 0.0, 0.0, 0.0)
        }

        /// Element halves of two 32-byte activation quants.
        #[inline]
        #[target_feature(enable = $feat)]
        fn halves(a: &[i8; 32], b: &[i8; 32]) -> [__m256i; 2] {
            let h = |q: &[i8; 32], k: usize| -> __m128i {
                ld128(<&[i8; 16]>::try_from(&q[16 * k..16 * k + 16]).unwrap())
            };
            core::array::from_fn(|k| _mm256_set_m128i(h(b, k), h(a, k)))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn pair_off<const SH: i32>(a: &[BlockQ8_0]) -> Pair {
            let (b0, b1) = (&a[0], a.get(1).unwrap_or(&Z0));
            let y = halves(&b0.qs, &b1.qs);
            let ones = _mm256_set1_epi8(1);
            let sums = dot_u8i8(dot_u8i8(_mm256_setzero_si256(), ones, y[0]), ones, y[1]);
            let off = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<SH>(sums));
            let dy = spread2(b0.d, b1.d);
            Pair { y, off: [off, off], dy: [dy, dy], sy: _mm256_setzero_ps() }
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn pair_min(a: &[BlockQ8_1]) -> Pair {
            let (b0, b1) = (&a[0], a.get(1).unwrap_or(&Z1));
            let y = halves(&b0.qs, &b1.qs);
            let dy = spread2(b0.d, b1.d);
            let z = _mm256_setzero_si256();
            Pair { y, off: [z, z], dy: [dy, dy], sy: firsts(b0.s, b1.s) }
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn pair_q8(a: &[BlockQ8_0]) -> Pair {
            let (b0, b1) = (&a[0], a.get(1).unwrap_or(&Z0));
            let y = [ld256(&b0.qs), ld256(&b1.qs)];
            let off = if VNNI {
                let m = _mm256_set1_epi8(-128);
                y.map(|y| _mm256_sub_epi32(_mm256_setzero_si256(), dot_u8i8(_mm256_setzero_si256(), m, y)))
            } else {
                [_mm256_setzero_si256(); 2]
            };
            let dy = [_mm256_set1_ps(f16_to_f32(b0.d)), _mm256_set1_ps(f16_to_f32(b1.d))];
            Pair { y, off, dy, sy: _mm256_setzero_ps() }
        }

        /// Nibbles of two 16-byte `qs`: `[lo a | lo b]`, `[hi a | hi b]`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn nib2(a: &[u8; 16], b: &[u8; 16]) -> [__m256i; 2] {
            let v = _mm256_set_m128i(ld128(b), ld128(a));
            let m4 = _mm256_set1_epi8(0x0f);
            [_mm256_and_si256(v, m4), _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4)]
        }

        /// The 5th bits of two Q5 blocks for `nib2`'s halves.
        #[inline]
        #[target_feature(enable = $feat)]
        fn fifth2(a: [u8; 4], b: [u8; 4]) -> [__m256i; 2] {
            let (a, b) = (u32::from_le_bytes(a), u32::from_le_bytes(b));
            let b5 = _mm256_set1_epi8(0x10);
            [
                _mm256_and_si256(bytes_from_bits((a & 0xffff) | b << 16), b5),
                _mm256_and_si256(bytes_from_bits(a >> 16 | (b & 0xffff_0000)), b5),
            ]
        }

        macro_rules! gemv_fn {
            ($name:ident, $w:ty, $a:ty, $prep:expr, |$x0:ident, $x1:ident, $q:ident, $acc:ident| $body:expr) => {
                /// One activation row (`$a`) times the `n` weight rows in `w`.
                ///
                /// # Safety
                /// The CPU must have the features this function enables.
                #[target_feature(enable = $feat)]
                pub(in super::super) unsafe fn $name(k: usize, w: &[u8], a: &[u8], out: &mut [f32]) {
                    let nb = k / 32;
                    let rb = nb * core::mem::size_of::<$w>();
                    assert!(k % 32 == 0 && rb > 0 && w.len() % rb == 0, "gemv: partial rows");
                    let n = w.len() / rb;
                    let w: &[$w] = bytemuck::cast_slice(w);
                    let a: &[$a] = bytemuck::cast_slice(a);
                    assert!(a.len() == nb && out.len() >= n, "gemv: sizes");
                    #[inline]
                    #[target_feature(enable = $feat)]
                    fn rows<const RR: usize>(rows: [&[$w]; RR], act: &[Pair]) -> [f32; RR] {
                        let zw = <$w as bytemuck::Zeroable>::zeroed();
                        let mut acc = [_mm256_setzero_ps(); RR];
                        for (pn, $q) in act.iter().enumerate() {
                            for r in 0..RR {
                                let row = rows[r];
                                let $x0 = &row[2 * pn];
                                let $x1 = row.get(2 * pn + 1).unwrap_or(&zw);
                                _mm_prefetch::<_MM_HINT_T0>(
                                    (($x0 as *const $w).cast::<u8>()).wrapping_add(PFD).cast(),
                                );
                                let $acc = acc[r];
                                acc[r] = $body;
                            }
                        }
                        acc.map(|v| hsum_ps(v))
                    }
                    let mut act = [const { MaybeUninit::<Pair>::uninit() }; CP];
                    let mut c0 = 0;
                    while c0 < nb {
                        let cb = (nb - c0).min(CB);
                        let np = cb.div_ceil(2);
                        for (pn, slot) in act[..np].iter_mut().enumerate() {
                            let s = c0 + 2 * pn;
                            slot.write($prep(&a[s..(s + 2).min(c0 + cb)]));
                        }
                        // SAFETY: the first `np` were just written.
                        let act: &[Pair] = unsafe { core::slice::from_raw_parts(act.as_ptr().cast(), np) };
                        let row = |j: usize| &w[j * nb + c0..j * nb + c0 + cb];
                        let first = c0 == 0;
                        let mut put = |j: usize, s: f32| {
                            out[j] = if first { s } else { out[j] + s };
                        };
                        let mut j = 0;
                        while j + R <= n {
                            let s = rows::<R>(core::array::from_fn(|r| row(j + r)), act);
                            for (r, s) in s.into_iter().enumerate() {
                                put(j + r, s);
                            }
                            j += R;
                        }
                        while j < n {
                            let [s] = rows::<1>([row(j)], act);
                            put(j, s);
                            j += 1;
                        }
                        c0 += cb;
                    }
                }
            };
        }

        gemv_fn!(gemv_q4_0, BlockQ4_0, BlockQ8_0, pair_off::<3>, |x0, x1, q, acc| {
            let [lo, hi] = nib2(&x0.qs, &x1.qs);
            let s = dot_u8i8(dot_u8i8(q.off[0], lo, q.y[0]), hi, q.y[1]);
            let d = _mm256_mul_ps(spread2(x0.d, x1.d), q.dy[0]);
            _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc)
        });

        gemv_fn!(gemv_q4_1, BlockQ4_1, BlockQ8_1, pair_min, |x0, x1, q, acc| {
            let [lo, hi] = nib2(&x0.qs, &x1.qs);
            let s = dot_u8i8(dot_u8i8(q.off[0], lo, q.y[0]), hi, q.y[1]);
            let d = _mm256_mul_ps(spread2(x0.d, x1.d), q.dy[0]);
            let acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
            _mm256_fmadd_ps(spread2(x0.m, x1.m), q.sy, acc)
        });

        gemv_fn!(gemv_q5_0, BlockQ5_0, BlockQ8_0, pair_off::<4>, |x0, x1, q, acc| {
            let [lo, hi] = nib2(&x0.qs, &x1.qs);
            let [h0, h1] = fifth2(x0.qh, x1.qh);
            let (lo, hi) = (_mm256_or_si256(lo, h0), _mm256_or_si256(hi, h1));
            let s = dot_u8i8(dot_u8i8(q.off[0], lo, q.y[0]), hi, q.y[1]);
            let d = _mm256_mul_ps(spread2(x0.d, x1.d), q.dy[0]);
            _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc)
        });

        gemv_fn!(gemv_q5_1, BlockQ5_1, BlockQ8_1, pair_min, |x0, x1, q, acc| {
            let [lo, hi] = nib2(&x0.qs, &x1.qs);
            let [h0, h1] = fifth2(x0.qh, x1.qh);
            let (lo, hi) = (_mm256_or_si256(lo, h0), _mm256_or_si256(hi, h1));
            let s = dot_u8i8(dot_u8i8(q.off[0], lo, q.y[0]), hi, q.y[1]);
            let d = _mm256_mul_ps(spread2(x0.d, x1.d), q.dy[0]);
            let acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
            _mm256_fmadd_ps(spread2(x0.m, x1.m), q.sy, acc)
        });

        gemv_fn!(gemv_q8_0, BlockQ8_0, BlockQ8_0, pair_q8, |x0, x1, q, acc| {
            let (w0, w1) = (ld256(&x0.qs), ld256(&x1.qs));
            let s = if VNNI {
                let m = _mm256_set1_epi8(-128);
                [
                    dot_u8i8(q.off[0], _mm256_xor_si256(w0, m), q.y[0]),
                    dot_u8i8(q.off[1], _mm256_xor_si256(w1, m), q.y[1]),
                ]
            } else {
                [dot_i8i8(w0, q.y[0]), dot_i8i8(w1, q.y[1])]
            };
            let d0 = _mm256_mul_ps(_mm256_set1_ps(f16_to_f32(x0.d)), q.dy[0]);
            let d1 = _mm256_mul_ps(_mm256_set1_ps(f16_to_f32(x1.d)), q.dy[1]);
            let acc = _mm256_fmadd_ps(d0, _mm256_cvtepi32_ps(s[0]), acc);
            _mm256_fmadd_ps(d1, _mm256_cvtepi32_ps(s[1]), acc)
        });
    };
}
