//! ggml's `iq2xs_init_impl` / `iq3xs_init_impl`: the quantization grids as
//! signed coordinates, the map from a point of the full lattice to its grid
//! index, and for every lattice point off the grid its nearest grid points.
//! Built once per grid on first use and shared by every thread.

use super::tables::*;
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, Ordering};

/// Which of ggml's quantization grids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grid {
    /// IQ2_XXS: 256 points of 8 coordinates with 2-bit levels.
    Iq2xxs,
    /// IQ2_XS: 512 points.
    Iq2xs,
    /// IQ2_S: 1024 points.
    Iq2s,
    /// IQ1_S and IQ1_M: 2048 points with levels 0..3.
    Iq1s,
    /// IQ3_XXS: 256 points of 4 coordinates with 3-bit levels.
    Iq3xxs,
    /// IQ3_S: 512 points.
    Iq3s,
}

impl Grid {
    const ALL: [Grid; 6] = [
        Grid::Iq2xxs,
        Grid::Iq2xs,
        Grid::Iq2s,
        Grid::Iq1s,
        Grid::Iq3xxs,
        Grid::Iq3s,
    ];

    /// The packed levels of each grid point, coordinates per point, bits
    /// per level, and how many distinct distances a neighbour list spans
    /// (ggml's `nwant`).
    fn spec(self) -> (&'static [u16], usize, u32, usize) {
        match self {
            Grid::Iq2xxs => (&KGRID_2BIT_256, 8, 2, 2),
            Grid::Iq2xs => (&KGRID_2BIT_512, 8, 2, 2),
            Grid::Iq2s => (&KGRID_2BIT_1024, 8, 2, 1),
            Grid::Iq1s => (&KGRID_1BIT_2048, 8, 2, 3),
            Grid::Iq3xxs => (&KGRID_256, 4, 3, 2),
            Grid::Iq3s => (&KGRID_512, 4, 3, 3),
        }
    }
}

/// One grid with its lattice map and neighbour lists.
pub(crate) struct Lattice {
    /// Coordinates `2l + 1` of each grid point (the first `dim` are used).
    pub(crate) points: Vec<[i8; 8]>,
    /// Coordinates per point.
    pub(crate) dim: usize,
    bits: u32,
    /// Per lattice point `Σ l_i << bits·i`: its grid index if on the grid,
    /// else `-(o + 1)` where `neighbours[o]` is the count of its nearest
    /// grid points, listed after it.
    map: Vec<i32>,
    neighbours: Vec<u16>,
}

impl Lattice {
    fn build(grid: Grid) -> Lattice {
        let (kgrid, dim, bits, nwant) = grid.spec();
        let mask = (1u32 << bits) - 1;
        let level = |v: u32, i: usize| (2 * ((v >> (bits * i as u32)) & mask) + 1) as i8;
        let points: Vec<[i8; 8]> = kgrid
            .iter()
            .map(|&g| core::array::from_fn(|i| if i < dim { level(g.into(), i) } else { 0 }))
            .collect();
        // ggml's `kmap_size`: 43692 for the 8-coordinate grids, 4096 for
        // the 4-coordinate ones.
        let map_size = if dim == 8 { 43692 } else { 4096 };
        let mut map = alloc::vec![-1i32; map_size];
        for (i, p) in points.iter().enumerate() {
            let u = (0..dim).fold(0usize, |u, k| {
                u | (((p[k] - 1) / 2) as usize) << (bits as usize * k)
            });
            map[u] = i as i32;
        }
        let mut neighbours = Vec::new();
        let mut d2 = alloc::vec![0i32; points.len()];
        for (u, slot) in map.iter_mut().enumerate() {
            if *slot >= 0 {
                continue;
            }
            let pos: [i8; 8] =
                core::array::from_fn(|k| if k < dim { level(u as u32, k) } else { 0 });
            for (d, p) in d2.iter_mut().zip(&points) {
                *d = (0..dim)
                    .map(|k| i32::from(p[k] - pos[k]) * i32::from(p[k] - pos[k]))
                    .sum();
            }
            // ggml sorts by (distance, index) and keeps the points of the
            // `nwant` smallest distances, in that order.
            let mut nearest: Vec<i32> = Vec::with_capacity(nwant);
            for &d in &d2 {
                if !nearest.contains(&d) {
                    let at = nearest.partition_point(|&x| x < d);
                    if at < nwant {
                        nearest.insert(at, d);
                        nearest.truncate(nwant);
                    }
                }
            }
            *slot = -(neighbours.len() as i32 + 1);
            let start = neighbours.len();
            neighbours.push(0);
            for &want in &nearest {
                neighbours.extend((0..d2.len()).filter(|&j| d2[j] == want).map(|j| j as u16));
            }
            neighbours[start] = (neighbours.len() - start - 1) as u16;
        }
        Lattice {
            points,
            dim,
            bits,
            map,
            neighbours,
        }
    }

    /// The lattice index of levels `l` (each below `2^bits`).
    pub(crate) fn index(&self, l: &[i8]) -> usize {
        l.iter()
            .enumerate()
            .fold(0, |u, (i, &l)| u | (l as usize) << (self.bits as usize * i))
    }

    /// The grid index of lattice point `u`, if it is on the grid.
    pub(crate) fn on_grid(&self, u: usize) -> Option<usize> {
        usize::try_from(self.map[u]).ok()
    }

    /// The grid points nearest to lattice point `u` (off the grid).
    pub(crate) fn neighbours(&self, u: usize) -> &[u16] {
        let o = (-self.map[u] - 1) as usize;
        let n = usize::from(self.neighbours[o]);
        &self.neighbours[o + 1..o + 1 + n]
    }

    /// ggml's `iq2_find_best_neighbour` / `iq3_find_best_neighbour`: the
    /// neighbour of `u` nearest to `x` at `scale` under weights `w`; its
    /// levels go to `l`.
    pub(crate) fn best_neighbour(
        &self,
        u: usize,
        x: &[f32],
        w: &[f32],
        scale: f32,
        l: &mut [i8],
    ) -> usize {
        let mut best = (f32::MAX, usize::MAX);
        for &j in self.neighbours(u) {
            let p = &self.points[usize::from(j)];
            let mut d2 = 0f32;
            for i in 0..self.dim {
                let diff = scale * f32::from(p[i]) - x[i];
                d2 += w[i] * diff * diff;
            }
            if d2 < best.0 {
                best = (d2, usize::from(j));
            }
        }
        // Every off-grid point has at least one neighbour; a NaN distance
        // (non-finite input) falls back to the first.
        let g = if best.1 == usize::MAX {
            usize::from(self.neighbours(u)[0])
        } else {
            best.1
        };
        for (l, &p) in l.iter_mut().zip(&self.points[g][..self.dim]) {
            *l = (p - 1) / 2;
        }
        g
    }
}

/// A value computed once on first use, safe to share between threads
/// without `std` (the `once_cell::race::OnceBox` pattern: racing threads
/// may each build it, one wins, the others drop theirs).
struct OnceBox<T>(AtomicPtr<T>);

impl<T: Send + Sync> OnceBox<T> {
    const fn new() -> Self {
        OnceBox(AtomicPtr::new(core::ptr::null_mut()))
    }

    fn get_or_init(&self, f: impl FnOnce() -> T) -> &T {
        let mut p = self.0.load(Ordering::Acquire);
        if p.is_null() {
            let new = Box::into_raw(Box::new(f()));
            match self.0.compare_exchange(
                core::ptr::null_mut(),
                new,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => p = new,
                Err(old) => {
                    // SAFETY: `new` came from `Box::into_raw` above and was
                    // never shared: the exchange failed.
                    drop(unsafe { Box::from_raw(new) });
                    p = old;
                }
            }
        }
        // SAFETY: `p` is non-null, from `Box::into_raw`, and is never freed
        // or written again once published (the statics live forever).
        unsafe { &*p }
    }
}

static LATTICES: [OnceBox<Lattice>; 6] = [
    OnceBox::new(),
    OnceBox::new(),
    OnceBox::new(),
    OnceBox::new(),
    OnceBox::new(),
    OnceBox::new(),
];

/// The lattice of `grid`, built on first use (ggml's `ggml_quantize_init`).
pub(crate) fn lattice(grid: Grid) -> &'static Lattice {
    let i = Grid::ALL.iter().position(|&g| g == grid).unwrap_or(0);
    LATTICES[i].get_or_init(|| Lattice::build(grid))
}
