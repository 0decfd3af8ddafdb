//! Matrix products of the forward pass, over the worker pool.
//!
//! As in ggml, an input is converted once to the `vec_dot_type` of the
//! weights that read it (Q8 blocks for quantized weights; f32 stays f32):
//! [`Matmul::prepare`] does that for all `n` rows of a batch, optionally
//! RMS-normalizing each row first, and the products that follow (q, k and v;
//! gate and up) share the converted rows.
//!
//! [`Matmul::run`] then computes one or more products of those rows. The
//! weight rows of all of them are cut into tiles of a fixed size per matrix;
//! pool threads take tiles from a shared counter (so a thread that a busy
//! machine slows down takes fewer), and for each tile call
//! [`Kernels::gemm`] on the tile's weight rows and the batch's activation
//! rows, a block of rows at a time, then write the block out: stored, added
//! to a residual stream, or passed through SwiGLU. The tiling depends only on
//! the matrix and the batch size, never on the thread count, so every thread
//! count computes bit-identical results.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

use spinel_quant::{GgmlType, Kernels};

use super::ops::{AlignedBuf, rmsnorm, silu};
use super::pool::{JobPanicked, Pool, SharedMut, chunk};
use super::weights::{Lin, Mat, Weight};

/// Floats in one half of a thread's product tile (SwiGLU uses both halves):
/// 64 weight rows for a whole 512-row batch.
const TILE_FLOATS: usize = 32 * 1024;
/// Weight rows per tile for a batch: the register-blocked kernels repack
/// weights into panels of 16 rows (8 with AVX2) and are at their best on
/// 64-row tiles, each meeting the whole batch in one call (so each panel is
/// repacked once per tile).
const GEMM_TILE_ROWS: usize = 64;
/// Tiles per matrix for a single row (generation): enough to balance the
/// threads (who take tiles as they go), few enough that taking one stays
/// cheap next to computing it.
const GEMV_TILES: usize = 16;
/// Rows per task when converting a batch.
const ROWS_PER_TASK: usize = 8;
/// Products smaller than this many multiply-adds run on the calling thread.
const MIN_PARALLEL_WORK: usize = 1 << 16;

/// The current input, converted to one `vec_dot_type`: `(n, row_bytes)`.
#[derive(Debug)]
struct Converted {
    ty: Option<GgmlType>,
    n: usize,
    cols: usize,
    row_bytes: usize,
    buf: AlignedBuf,
}

/// RMS normalization applied by [`Matmul::prepare`] before converting.
pub(crate) struct Norm<'a> {
    pub weight: &'a [f32],
    pub eps: f32,
    /// Receives the normalized rows in f32 (`(n, cols)`).
    pub out: &'a mut [f32],
}

/// One product of [`Matmul::run`], `(n, rows)` outputs row-major.
pub(crate) enum Product<'a> {
    /// `out = W x (+ b)`.
    Set(Lin<'a>, &'a mut [f32]),
    /// `out += W x (+ b)`: a residual connection.
    Add(Lin<'a>, &'a mut [f32]),
    /// `out = silu(G x (+ bg)) · (U x (+ bu))`: SwiGLU's gate and up.
    SwiGlu(Lin<'a>, Lin<'a>, &'a mut [f32]),
}

/// Scratch for matrix products, allocated once per state.
#[derive(Debug)]
pub(crate) struct Matmul {
    /// The current input in up to two `vec_dot_type`s (q/k/v or gate/up
    /// may be stored in types that read different activation types).
    input: [Converted; 2],
    /// `(n_threads, 2, TILE_FLOATS)`: each thread's product tiles.
    tiles: Vec<f32>,
    /// Compute every row of a batch as a one-row product would (the
    /// single-row kernel once per row, on tiles of weights still in
    /// cache), so each row's result is bit-identical to a one-token
    /// forward pass: speculative decoding's verification.
    pub row_invariant: bool,
}

impl Matmul {
    /// Scratch for `n_threads` threads and inputs of up to `n_batch` rows of
    /// at most `max_row_bytes` converted bytes.
    pub fn new(n_threads: usize, n_batch: usize, max_row_bytes: usize) -> Matmul {
        let conv = || Converted {
            ty: None,
            n: 0,
            cols: 0,
            row_bytes: 0,
            buf: AlignedBuf::zeroed(n_batch * max_row_bytes),
        };
        Matmul {
            input: [conv(), conv()],
            tiles: vec![0.0; n_threads * 2 * TILE_FLOATS],
            row_invariant: false,
        }
    }

    /// Bytes of its buffers.
    pub fn bytes(&self) -> usize {
        self.input
            .iter()
            .map(|c| c.buf.bytes().len())
            .sum::<usize>()
            + self.tiles.capacity() * 4
    }

    /// Makes the first `n` rows of `x` (`cols` wide) the input of the next
    /// products, converted for weights of the types `weights` (at most two
    /// distinct `vec_dot_type`s). With `norm`, each row is RMS-normalized
    /// into `norm.out` first and that is converted.
    pub fn prepare(
        &mut self,
        pool: &mut Pool,
        x: &[f32],
        n: usize,
        cols: usize,
        norm: Option<Norm<'_>>,
        weights: &[GgmlType],
    ) -> Result<(), JobPanicked> {
        let k = Kernels::get();
        let mut types = [None; 2];
        for t in weights.iter().map(|t| t.vec_dot_type()) {
            if !types.contains(&Some(t)) {
                let free = types.iter().position(Option::is_none);
                types[free.expect("at most two activation types per input")] = Some(t);
            }
        }
        for (c, ty) in self.input.iter_mut().zip(types) {
            c.ty = ty;
            c.n = n;
            c.cols = cols;
            c.row_bytes = ty.map_or(0, |t| t.row_size(cols).expect("whole blocks"));
            assert!(n * c.row_bytes <= c.buf.bytes().len(), "input too large");
        }
        let [c0, c1] = &mut self.input;
        let convs = [c0, c1].map(|c| {
            let f = c.ty.map(|t| k.of(t).from_float);
            (f, c.row_bytes, SharedMut::new(c.buf.bytes_mut()))
        });
        let (norm_w, eps, normed) = match norm {
            Some(nm) => (Some(nm.weight), nm.eps, Some(SharedMut::new(nm.out))),
            None => (None, 0.0, None),
        };
        let x = &x[..n * cols];
        let rows = |range: std::ops::Range<usize>| {
            for t in range {
                let mut src = &x[t * cols..(t + 1) * cols];
                if let Some(out) = &normed {
                    // SAFETY: each thread handles its own rows.
                    let o = unsafe { out.slice(t * cols..(t + 1) * cols) };
                    rmsnorm(o, src, norm_w, eps);
                    src = o;
                }
                for (f, rb, buf) in &convs {
                    if let Some(f) = f {
                        // SAFETY: as above.
                        f(src, unsafe { buf.slice(t * rb..(t + 1) * rb) });
                    }
                }
            }
        };
        if n == 1 || pool.n_threads() == 1 {
            rows(0..n);
            Ok(())
        } else {
            pool.run(n.div_ceil(ROWS_PER_TASK), &|_, c| {
                rows(chunk(n, ROWS_PER_TASK, c))
            })
        }
    }

    /// Computes `products` of the prepared input's `n` rows (see
    /// [`Product`]). Each weight must read the prepared columns in a type
    /// `prepare` was given.
    pub fn run<const N: usize>(
        &mut self,
        pool: &mut Pool,
        n: usize,
        products: [Product<'_>; N],
    ) -> Result<(), JobPanicked> {
        let input = &self.input;
        let row_invariant = self.row_invariant;
        let tasks = products.map(|p| Task::new(p, input, n, row_invariant));
        let work: usize = tasks.iter().map(|t| t.rows * t.w.w.cols).sum::<usize>() * n;
        let n_tiles: usize = tasks.iter().map(|t| t.n_tiles).sum();
        let tiles = SharedMut::new(&mut self.tiles);
        // SAFETY (both closures): each thread uses its own part of the tile
        // buffer, and runs one range of rows at a time.
        let scratch = |thread: usize| unsafe {
            tiles
                .slice(thread * 2 * TILE_FLOATS..(thread + 1) * 2 * TILE_FLOATS)
                .split_at_mut(TILE_FLOATS)
        };
        if work < MIN_PARALLEL_WORK || pool.n_threads() == 1 {
            let (s1, s2) = scratch(0);
            for task in &tasks {
                if n == 1 {
                    // One row: each output is the same whatever the split
                    // (see below), so take as many rows per call as the
                    // scratch holds (the one-row kernels lay the input out
                    // once per call).
                    for j0 in (0..task.rows).step_by(TILE_FLOATS) {
                        task.rows_range(j0..(j0 + TILE_FLOATS).min(task.rows), n, s1, s2);
                    }
                    continue;
                }
                for t in 0..task.n_tiles {
                    task.rows_range(task.tile(t), n, s1, s2);
                }
            }
            return Ok(());
        }
        if n == 1 {
            // One row: each output is one `vec_dot`, whatever the split, so
            // threads claim shrinking runs of rows (long runs first, for the
            // memory prefetchers; short ones last, for balance).
            let next = AtomicUsize::new(0);
            let total: usize = tasks.iter().map(|t| t.rows).sum();
            let n_threads = pool.n_threads();
            let claim = |thread: usize, _: usize| {
                let (s1, s2) = scratch(thread);
                while let Some(range) = claim_rows(&next, total, n_threads) {
                    // `range` counts the rows of all products in turn.
                    let mut base = 0;
                    for task in &tasks {
                        let lo = range.start.max(base);
                        let hi = range.end.min(base + task.rows);
                        if lo < hi {
                            task.rows_range(lo - base..hi - base, n, s1, s2);
                        }
                        base += task.rows;
                    }
                }
            };
            return pool.run(n_threads, &claim);
        }
        let tile = |thread: usize, mut t: usize| {
            let (s1, s2) = scratch(thread);
            let task = tasks
                .iter()
                .find(|task| {
                    let here = t < task.n_tiles;
                    if !here {
                        t -= task.n_tiles;
                    }
                    here
                })
                .expect("tile in range");
            task.rows_range(task.tile(t), n, s1, s2);
        };
        pool.run(n_tiles, &tile)
    }
}

/// Rows a thread takes at least per claim of single-row products.
const MIN_CLAIM: usize = 32;

/// Claims the next run of `total` rows: a share of what is left (half of
/// it split between the threads), at least [`MIN_CLAIM`], at most what one
/// tile of scratch holds. `None` when all are taken.
fn claim_rows(next: &AtomicUsize, total: usize, n_threads: usize) -> Option<Range<usize>> {
    let mut start = next.load(Ordering::Relaxed);
    loop {
        if start >= total {
            return None;
        }
        let left = total - start;
        let len = (left / (2 * n_threads))
            .clamp(MIN_CLAIM, TILE_FLOATS)
            .min(left);
        match next.compare_exchange_weak(start, start + len, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(start..start + len),
            Err(now) => start = now,
        }
    }
}

/// A product being computed: its tiles and where they go.
struct Task<'a> {
    w: Mat<'a>,
    bias: Option<&'a [f32]>,
    /// SwiGLU's up projection, and its input.
    up: Option<(Lin<'a>, &'a Converted)>,
    add: bool,
    out: SharedMut<'a, f32>,
    a: &'a Converted,
    rows: usize,
    tile_rows: usize,
    n_tiles: usize,
    /// See [`Matmul::row_invariant`].
    row_invariant: bool,
}

impl<'a> Task<'a> {
    fn new(p: Product<'a>, input: &'a [Converted; 2], n: usize, row_invariant: bool) -> Task<'a> {
        let (lin, up, add, out) = match p {
            Product::Set(l, o) => (l, None, false, o),
            Product::Add(l, o) => (l, None, true, o),
            Product::SwiGlu(g, u, o) => (g, Some(u), false, o),
        };
        let w = lin.w.w;
        let input_for = |w: &Weight| {
            let a = input
                .iter()
                .find(|c| c.ty == Some(w.ty.vec_dot_type()))
                .expect("input prepared for this weight type");
            assert!(
                a.n >= n && a.cols == w.cols,
                "input does not fit the weight"
            );
            a
        };
        let a = input_for(&w);
        let up = up.map(|u| {
            assert!(u.w.w.rows == w.rows, "gate and up of different sizes");
            (u, input_for(&u.w.w))
        });
        assert!(out.len() >= n * w.rows, "output too small");
        let tile_rows = if n >= 4 {
            GEMM_TILE_ROWS
        } else {
            w.rows.div_ceil(GEMV_TILES).next_multiple_of(16)
        }
        .min(w.rows);
        Task {
            w: lin.w,
            bias: lin.bias,
            up,
            add,
            out: SharedMut::new(out),
            a,
            rows: w.rows,
            tile_rows,
            n_tiles: w.rows.div_ceil(tile_rows),
            row_invariant,
        }
    }

    /// Weight rows of tile `t`.
    fn tile(&self, t: usize) -> Range<usize> {
        let j0 = t * self.tile_rows;
        j0..(j0 + self.tile_rows).min(self.rows)
    }

    /// [`Kernels::gemm`], or with `row_invariant` [`Kernels::gemv_rows`]
    /// (each activation row, `arb` bytes, as the one-row product gives it).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        ty: GgmlType,
        cols: usize,
        w: &[u8],
        a: &[u8],
        arb: usize,
        out: &mut [f32],
        tn: usize,
    ) {
        let k = Kernels::get();
        if self.row_invariant && a.len() > arb {
            k.gemv_rows(ty, cols, w, a, out, tn);
        } else {
            k.gemm(ty, cols, w, a, out, tn);
        }
    }

    /// Computes weight rows `rows` (at most a tile's scratch) for all `n`
    /// activation rows, using `s1` and `s2` as scratch.
    fn rows_range(&self, rows: Range<usize>, n: usize, s1: &mut [f32], s2: &mut [f32]) {
        let k = Kernels::get();
        let (ty, cols, rb) = (self.w.w.ty, self.w.w.cols, self.w.w.row_bytes);
        let (j0, j1) = (rows.start, rows.end);
        let tn = j1 - j0;
        let w = &self.w.data[j0 * rb..j1 * rb];
        let up = self.up.map(|(u, ua)| {
            let urb = u.w.w.row_bytes;
            (u.w.w.ty, &u.w.data[j0 * urb..j1 * urb], u.bias, ua)
        });
        let arb = self.a.row_bytes;
        let block = (TILE_FLOATS / tn).max(1);
        let bias = self.bias.map(|b| &b[j0..j1]);
        if n == 1 && up.is_none() && !self.add && bias.is_none() {
            // One row stored as it is: straight into the output.
            // SAFETY: these columns of row 0 belong to this range alone.
            let o = unsafe { self.out.slice(j0..j1) };
            k.gemm(ty, cols, w, &self.a.buf.bytes()[..arb], o, tn);
            return;
        }
        let mut i0 = 0;
        while i0 < n {
            let i1 = (i0 + block).min(n);
            let a = &self.a.buf.bytes()[i0 * arb..i1 * arb];
            let g = &mut s1[..(i1 - i0) * tn];
            self.gemm(ty, cols, w, a, arb, g, tn);
            if let Some((uty, uw, ub, ua)) = up {
                let ua = &ua.buf.bytes()[i0 * ua.row_bytes..i1 * ua.row_bytes];
                let u = &mut s2[..(i1 - i0) * tn];
                self.gemm(
                    uty,
                    cols,
                    uw,
                    ua,
                    self.up.map_or(0, |(_, c)| c.row_bytes),
                    u,
                    tn,
                );
                for i in i0..i1 {
                    // SAFETY: this tile's columns of row `i` belong to no
                    // other tile, and each tile is taken by one thread.
                    let o = unsafe { self.out.slice(i * self.rows + j0..i * self.rows + j1) };
                    let gr = &g[(i - i0) * tn..(i - i0 + 1) * tn];
                    let ur = &u[(i - i0) * tn..(i - i0 + 1) * tn];
                    swiglu_row(o, gr, ur, bias, ub.map(|b| &b[j0..j1]));
                }
            } else {
                for i in i0..i1 {
                    // SAFETY: as above.
                    let o = unsafe { self.out.slice(i * self.rows + j0..i * self.rows + j1) };
                    let r = &g[(i - i0) * tn..(i - i0 + 1) * tn];
                    match (self.add, bias) {
                        (false, None) => o.copy_from_slice(r),
                        (false, Some(b)) => {
                            for ((o, &r), &b) in o.iter_mut().zip(r).zip(b) {
                                *o = r + b;
                            }
                        }
                        (true, None) => {
                            for (o, &r) in o.iter_mut().zip(r) {
                                *o += r;
                            }
                        }
                        (true, Some(b)) => {
                            for ((o, &r), &b) in o.iter_mut().zip(r).zip(b) {
                                *o += r + b;
                            }
                        }
                    }
                }
            }
            i0 = i1;
        }
    }
}

/// `o = silu(g + bg) · (u + bu)`.
fn swiglu_row(o: &mut [f32], g: &[f32], u: &[f32], bg: Option<&[f32]>, bu: Option<&[f32]>) {
    if bg.is_none() && bu.is_none() {
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = silu(g) * u;
        }
        return;
    }
    for (j, o) in o.iter_mut().enumerate() {
        let g = g[j] + bg.map_or(0.0, |b| b[j]);
        let u = u[j] + bu.map_or(0.0, |b| b[j]);
        *o = silu(g) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::tests_support::f32_matrix;

    #[test]
    fn products_match_naive_for_every_thread_count() {
        let (rows, cols) = (1031, 256);
        let wdata: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
            .collect();
        let udata: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 5 % 17) as f32 - 8.0) / 16.0)
            .collect();
        let (w, wbytes) = f32_matrix(&wdata, rows, cols);
        let (u, ubytes) = f32_matrix(&udata, rows, cols);
        let bias: Vec<f32> = (0..rows).map(|r| r as f32 / 100.0).collect();
        let naive = |m: &[f32], x: &[f32], r: usize| -> f32 {
            (0..cols).map(|c| m[r * cols + c] * x[c]).sum()
        };
        for n in [1usize, 3, 70] {
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
                .collect();
            let mut results = Vec::new();
            for threads in [1, 2, 5] {
                let mut pool = Pool::new(threads).unwrap();
                let mut mm = Matmul::new(threads, n, cols * 4);
                mm.prepare(&mut pool, &x, n, cols, None, &[GgmlType::F32])
                    .unwrap();
                let mut set = vec![0.0; n * rows];
                let mut add = vec![1.0; n * rows];
                let mut glu = vec![0.0; n * rows];
                let lin = |m, b| Lin { w: m, bias: b };
                let (wv, uv) = (w.view(wbytes.bytes()), u.view(ubytes.bytes()));
                mm.run(
                    &mut pool,
                    n,
                    [
                        Product::Set(lin(wv, Some(&bias)), &mut set),
                        Product::Add(lin(wv, None), &mut add),
                        Product::SwiGlu(lin(wv, None), lin(uv, Some(&bias)), &mut glu),
                    ],
                )
                .unwrap();
                for t in 0..n {
                    let xt = &x[t * cols..(t + 1) * cols];
                    for (r, &b) in bias.iter().enumerate() {
                        let (g, up) = (naive(&wdata, xt, r), naive(&udata, xt, r));
                        let i = t * rows + r;
                        assert!((set[i] - (g + b)).abs() < 1e-3, "set n {n} t {t} r {r}");
                        assert!((add[i] - (1.0 + g)).abs() < 1e-3, "add n {n} t {t} r {r}");
                        let want = g / (1.0 + (-g).exp()) * (up + b);
                        assert!(
                            (glu[i] - want).abs() < 1e-3 * want.abs().max(1.0),
                            "swiglu n {n} t {t} r {r}: {} vs {want}",
                            glu[i]
                        );
                    }
                }
                results.push((set, add, glu));
            }
            // Same tiles whatever the thread count: identical bits.
            assert!(results.windows(2).all(|w| w[0] == w[1]), "n {n}");
        }
    }

    #[test]
    fn swiglu_of_weights_of_two_types() {
        use spinel_quant::Kernels;
        let (rows, cols) = (300, 64);
        let g: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
            .collect();
        let u: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 5 % 17) as f32 - 8.0) / 16.0)
            .collect();
        let (gw, gbytes) = f32_matrix(&g, rows, cols);
        // Up in Q8_0, which reads Q8_0 activations (gate reads f32).
        let uw = Weight::at_start(GgmlType::Q8_0, rows, cols).unwrap();
        let mut ubytes = vec![0u8; rows * uw.row_bytes];
        let from_float = Kernels::get().of(GgmlType::Q8_0).from_float;
        for (r, row) in ubytes.chunks_exact_mut(uw.row_bytes).enumerate() {
            from_float(&u[r * cols..(r + 1) * cols], row);
        }
        for n in [1usize, 5] {
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 3 % 7) as f32 - 3.0) / 4.0)
                .collect();
            for threads in [1, 2] {
                let mut pool = Pool::new(threads).unwrap();
                let mut mm = Matmul::new(threads, n, cols * 4);
                mm.prepare(
                    &mut pool,
                    &x,
                    n,
                    cols,
                    None,
                    &[GgmlType::F32, GgmlType::Q8_0],
                )
                .unwrap();
                let mut out = vec![0.0; n * rows];
                let gate = Lin {
                    w: gw.view(gbytes.bytes()),
                    bias: None,
                };
                let up = Lin {
                    w: uw.view(&ubytes),
                    bias: None,
                };
                mm.run(&mut pool, n, [Product::SwiGlu(gate, up, &mut out)])
                    .unwrap();
                for t in 0..n {
                    for r in 0..rows {
                        let dot = |m: &[f32]| -> f32 {
                            (0..cols).map(|c| m[r * cols + c] * x[t * cols + c]).sum()
                        };
                        let (gv, uv) = (dot(&g), dot(&u));
                        let want = gv / (1.0 + (-gv).exp()) * uv;
                        let got = out[t * rows + r];
                        // Q8_0 weights and activations: ~1% of the terms.
                        assert!(
                            (got - want).abs() < 0.05 * gv.abs().max(1.0) * uv.abs().max(1.0),
                            "n {n} t {t} r {r}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn prepare_normalizes_and_converts_every_row() {
        let (n, cols) = (37, 64);
        let x: Vec<f32> = (0..n * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..cols).map(|i| 1.0 + i as f32 / 64.0).collect();
        for threads in [1, 3] {
            let mut pool = Pool::new(threads).unwrap();
            let mut mm = Matmul::new(
                threads,
                n,
                GgmlType::Q8_0.row_size(cols).unwrap().max(cols * 4),
            );
            let mut xb = vec![0.0; n * cols];
            let norm = Norm {
                weight: &w,
                eps: 1e-5,
                out: &mut xb,
            };
            mm.prepare(
                &mut pool,
                &x,
                n,
                cols,
                Some(norm),
                &[GgmlType::Q4_0, GgmlType::F32],
            )
            .unwrap();
            let mut want = vec![0.0; cols];
            for t in 0..n {
                rmsnorm(&mut want, &x[t * cols..(t + 1) * cols], Some(&w), 1e-5);
                assert_eq!(&xb[t * cols..(t + 1) * cols], &want[..]);
                let f32_rows = mm
                    .input
                    .iter()
                    .find(|c| c.ty == Some(GgmlType::F32))
                    .unwrap();
                let got: &[f32] =
                    bytemuck::cast_slice(&f32_rows.buf.bytes()[t * cols * 4..(t + 1) * cols * 4]);
                assert_eq!(got, &want[..]);
            }
        }
    }
}
