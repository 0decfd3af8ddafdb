//! Running a model larger than its memory budget: which weights stay
//! resident, which are streamed from the memory map, and the cache of hot
//! Llama 4 experts.
//!
//! The forward pass reads the file's tensors in place. Without a budget the
//! kernel decides what of the mapping stays in memory; a model larger than
//! memory then thrashes (every token reads the layers in the same order, the
//! worst case for the kernel's LRU) or gets the process killed where a
//! cgroup counts the page cache. With a budget ([`LoadOptions`]), the model
//! plans its residency once at load:
//!
//! * A reserve, an eighth of the budget, is left for the KV cache and the
//!   activation buffers ([`crate::engine::Engine`] keeps a session's default
//!   KV cache within half of what the weights leave, or of the reserve
//!   when they are streamed).
//! * The tensors used every token — attention, dense feed-forward, Llama 4's
//!   router and shared expert, the output matrix — are grouped into
//!   *stages*: one per layer, then the output. If all weights fit, nothing
//!   is managed. Otherwise the output and then the first layers stay
//!   resident as far as the budget allows (less a window of two streamed
//!   stages); the rest are streamed: entering stage `i` asks the kernel to
//!   read stage `i + 1` in the background (`MADV_WILLNEED`), leaving stage
//!   `i` drops its pages (`MADV_DONTNEED` + `POSIX_FADV_DONTNEED`), so a
//!   token reads every streamed stage from the disk once and the resident
//!   ones never.
//! * Experts of Llama 4 MoE layers are read only when routed to: a budgeted
//!   least-recently-used cache of experts (the room left after the above)
//!   prefetches an expert when it is routed to and drops the pages of the
//!   one it evicts. Hits and misses are counted ([`ResidencyReport`]).
//!
//! The token embedding is never planned: each token reads one row of it.
//! Streaming never changes what is computed, only where the bytes come
//! from: logits are bit-identical with or without a budget.

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::gguf::{MappedGguf, page_size};
use crate::memory::format_size;

use super::config::Config;
use super::state::Route;
use super::weights::{Ffn, Weight, Weights};

/// How a model is loaded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Bytes the model may keep in memory: weights, KV cache and buffers
    /// together. `None`: no plan (the kernel pages the mapping as it
    /// likes). See [`crate::memory::default_budget`] for a safe default.
    pub memory_budget: Option<u64>,
}

/// What the residency plan decided, and how the expert cache is doing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResidencyReport {
    /// The memory budget (`None`: no plan).
    pub budget: Option<u64>,
    /// Part of the budget left for the KV cache and buffers.
    pub reserve: u64,
    /// Bytes of all planned weights (everything but the token embedding).
    pub weights_bytes: u64,
    /// Whether some weights are streamed.
    pub streaming: bool,
    /// Bytes of weights that stay resident once read.
    pub resident_bytes: u64,
    /// Layers whose attention and dense/shared feed-forward stay resident.
    pub resident_layers: usize,
    /// Layers streamed from the file every token.
    pub streamed_layers: usize,
    /// Whether the output matrix stays resident.
    pub output_resident: bool,
    /// Bytes read from the file per token for streamed layers (and the
    /// output), experts not included.
    pub streamed_bytes_per_token: u64,
    /// Bytes of one expert (gate, up and down slices); 0 without MoE.
    pub expert_bytes: u64,
    /// Experts in all MoE layers together.
    pub experts_total: usize,
    /// Experts the cache holds at most.
    pub expert_cache_capacity: usize,
    /// Routed experts already in the cache / read anew, since load.
    pub expert_hits: u64,
    pub expert_misses: u64,
}

impl ResidencyReport {
    /// Expert-cache hits over lookups (`None` before the first lookup).
    pub fn expert_hit_rate(&self) -> Option<f64> {
        let n = self.expert_hits + self.expert_misses;
        (n > 0).then(|| self.expert_hits as f64 / n as f64)
    }

    /// Expected bytes read from the file per token: streamed stages, plus
    /// each MoE layer's routed experts at the miss rate a cache of this
    /// size has under uniform routing.
    pub fn expected_bytes_per_token(&self, n_moe_layers: usize, n_expert_used: usize) -> u64 {
        let miss = if self.experts_total == 0 {
            0.0
        } else {
            1.0 - self.expert_cache_capacity as f64 / self.experts_total as f64
        };
        let experts = (n_moe_layers * n_expert_used) as f64 * miss * self.expert_bytes as f64;
        self.streamed_bytes_per_token + experts as u64
    }
}

impl std::fmt::Display for ResidencyReport {
    /// A few lines for a load-time report.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(budget) = self.budget else {
            return write!(f, "memory: no budget; the kernel pages the mapped weights");
        };
        write!(
            f,
            "memory budget {} ({} kept for the KV cache and buffers); weights {}",
            format_size(budget),
            format_size(self.reserve),
            format_size(self.weights_bytes)
        )?;
        if !self.streaming {
            return write!(f, ": all resident");
        }
        write!(
            f,
            "\nresident: {} ({} layers{}); streamed: {} layers, {} per token",
            format_size(self.resident_bytes),
            self.resident_layers,
            if self.output_resident {
                " + output"
            } else {
                ""
            },
            self.streamed_layers,
            format_size(self.streamed_bytes_per_token),
        )?;
        if self.experts_total > 0 {
            write!(
                f,
                "\nexpert cache: {} of {} experts ({} each)",
                self.expert_cache_capacity,
                self.experts_total,
                format_size(self.expert_bytes)
            )?;
        }
        Ok(())
    }
}

/// One Llama 4 MoE layer's stacked expert tensors.
#[derive(Debug)]
struct ExpertTensors {
    gate: Weight,
    up: Weight,
    down: Weight,
    n_ff: usize,
    dim: usize,
}

impl ExpertTensors {
    fn ranges(&self, e: usize) -> [Range<usize>; 3] {
        [
            self.gate.slice_rows(e * self.n_ff, self.n_ff).range(),
            self.up.slice_rows(e * self.n_ff, self.n_ff).range(),
            self.down.slice_rows(e * self.dim, self.dim).range(),
        ]
    }
}

/// The plan and the expert cache of one model.
#[derive(Debug, Default)]
pub(crate) struct Residency {
    budget: Option<u64>,
    reserve: u64,
    weights_bytes: u64,
    streaming: bool,
    /// Per stage (layers, then the output): the byte ranges read every
    /// token, and whether they stay resident.
    stages: Vec<(Vec<Range<usize>>, bool)>,
    /// Per layer: its experts, if it is an MoE layer.
    experts: Vec<Option<ExpertTensors>>,
    n_expert: usize,
    expert_bytes: u64,
    expert_capacity: usize,
    lru: Mutex<Lru>,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Least-recently-used experts: `stamp[layer * n_expert + e]` is the time
/// of last use, 0 when not cached.
#[derive(Debug, Default)]
struct Lru {
    stamp: Vec<u64>,
    clock: u64,
    len: usize,
}

fn len(r: &Range<usize>) -> u64 {
    r.len() as u64
}

impl Residency {
    /// Plans residency for `w` under `budget` (`None`: no plan).
    pub fn plan(config: &Config, w: &Weights, budget: Option<u64>) -> Residency {
        let mut stages: Vec<(Vec<Range<usize>>, bool)> = Vec::new();
        let mut experts = Vec::new();
        let mut n_expert = 0;
        for l in &w.layers {
            let mut r = vec![
                l.wq.w.range(),
                l.wk.w.range(),
                l.wv.w.range(),
                l.wo.w.range(),
            ];
            match &l.ffn {
                Ffn::Dense { gate, up, down } => {
                    r.extend([gate.w.range(), up.w.range(), down.w.range()]);
                    experts.push(None);
                }
                Ffn::Moe(m) => {
                    r.extend([
                        m.router.range(),
                        m.shared_gate.w.range(),
                        m.shared_up.w.range(),
                        m.shared_down.w.range(),
                    ]);
                    n_expert = m.moe.n_expert;
                    experts.push(Some(ExpertTensors {
                        gate: m.gate_exps,
                        up: m.up_exps,
                        down: m.down_exps,
                        n_ff: m.moe.n_ff_expert,
                        dim: config.dim,
                    }));
                }
            }
            stages.push((r, true));
        }
        stages.push((vec![w.output.range()], true));

        let stage_bytes = |s: &(Vec<Range<usize>>, bool)| s.0.iter().map(len).sum::<u64>();
        let expert_bytes = experts
            .iter()
            .flatten()
            .next()
            .map_or(0, |x| x.ranges(0).iter().map(len).sum::<u64>());
        let experts_total = experts.iter().flatten().count() * n_expert;
        let dense: u64 = stages.iter().map(stage_bytes).sum();
        let weights_bytes = dense + experts_total as u64 * expert_bytes;
        let mut res = Residency {
            budget,
            weights_bytes,
            n_expert,
            expert_bytes,
            expert_capacity: experts_total,
            lru: Mutex::new(Lru {
                stamp: vec![0; experts.len() * n_expert],
                ..Lru::default()
            }),
            ..Residency::default()
        };
        let Some(budget) = budget else {
            res.stages = stages;
            res.experts = experts;
            return res;
        };
        res.reserve = budget / 8;
        let avail = budget - res.reserve;
        if weights_bytes <= avail {
            res.stages = stages;
            res.experts = experts;
            return res;
        }
        res.streaming = true;
        // The routed experts of one layer must fit at once.
        let n_used = config.moe.as_ref().map_or(0, |m| m.n_expert_used) as u64;
        let min_cache = 2 * n_used * expert_bytes;
        let window = if dense + min_cache <= avail {
            0
        } else {
            2 * stages.iter().map(stage_bytes).max().unwrap_or(0)
        };
        // The output first (every token reads all of it), then layers in
        // order, while they fit.
        let mut left = avail.saturating_sub(window + min_cache);
        let n = stages.len();
        let mut order = vec![n - 1];
        order.extend(0..n - 1);
        let mut full = false;
        for i in order {
            let b = stage_bytes(&stages[i]);
            let keep = !full && b <= left;
            if keep {
                left -= b;
            } else {
                full = true;
            }
            stages[i].1 = keep;
        }
        let resident: u64 = stages.iter().filter(|s| s.1).map(stage_bytes).sum();
        let room = avail.saturating_sub(resident + window);
        if let Some(fit) = room.checked_div(expert_bytes) {
            res.expert_capacity = (fit as usize).max(n_used as usize).min(experts_total);
        }
        res.stages = stages;
        res.experts = experts;
        res
    }

    pub fn report(&self) -> ResidencyReport {
        let stage_bytes = |s: &(Vec<Range<usize>>, bool)| s.0.iter().map(len).sum::<u64>();
        let n_layers = self.stages.len().saturating_sub(1);
        let layers = &self.stages[..n_layers];
        let resident_layers = layers.iter().filter(|s| s.1).count();
        let streamed: u64 = self.stages.iter().filter(|s| !s.1).map(stage_bytes).sum();
        let resident = self
            .stages
            .iter()
            .filter(|s| s.1)
            .map(stage_bytes)
            .sum::<u64>()
            + self.expert_capacity as u64 * self.expert_bytes;
        ResidencyReport {
            budget: self.budget,
            reserve: self.reserve,
            weights_bytes: self.weights_bytes,
            streaming: self.streaming,
            resident_bytes: resident.min(self.weights_bytes),
            resident_layers,
            streamed_layers: n_layers - resident_layers,
            output_resident: self.stages.last().is_some_and(|s| s.1),
            streamed_bytes_per_token: streamed,
            expert_bytes: self.expert_bytes,
            experts_total: self.experts.iter().flatten().count() * self.n_expert,
            expert_cache_capacity: self.expert_capacity,
            expert_hits: self.hits.load(Ordering::Relaxed),
            expert_misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// Bytes that are streamed (to measure the disk's speed on): the
    /// largest tensor of the first streamed stage, else the first MoE
    /// layer's stacked expert gates.
    pub fn first_streamed(&self) -> Option<Range<usize>> {
        if !self.streaming {
            return None;
        }
        match self.stages.iter().find(|s| !s.1) {
            Some(s) => s.0.iter().max_by_key(|r| r.len()).cloned(),
            None => {
                // All experts' gate matrices, one after another.
                Some(self.experts.iter().flatten().next()?.gate.range())
            }
        }
    }

    /// Before stage `stage` (layer, or `n_layer` for the output) runs:
    /// prefetch the next streamed stage.
    pub fn enter(&self, map: &MappedGguf, stage: usize) {
        if !self.streaming {
            return;
        }
        let next = (stage + 1) % self.stages.len();
        let (ranges, resident) = &self.stages[next];
        if !resident {
            for r in ranges {
                map.prefetch(r.clone());
            }
        }
    }

    /// The embedding rows of `tokens` were gathered: when streaming, drop
    /// the pages they are on, so a long generation does not accumulate the
    /// embedding matrix (unless it is the resident output matrix too).
    pub fn gathered(&self, map: &MappedGguf, embd: Weight, tokens: &[u32]) {
        let tied_resident = self
            .stages
            .last()
            .is_some_and(|(r, keep)| *keep && r.first().is_some_and(|o| *o == embd.range()));
        if !self.streaming || tied_resident {
            return;
        }
        let page = page_size();
        for &t in tokens {
            let row = embd.slice_rows(t as usize, 1).range();
            // The whole pages the row touches (its neighbours are read again
            // if needed).
            map.release(row.start / page * page..row.end.div_ceil(page) * page);
        }
    }

    /// After stage `stage` ran: drop its pages if it is streamed.
    pub fn leave(&self, map: &MappedGguf, stage: usize) {
        if !self.streaming {
            return;
        }
        let (ranges, resident) = &self.stages[stage];
        if !resident {
            for r in ranges {
                map.release(r.clone());
            }
        }
    }

    /// Drops the pages of every streamed stage (memory pressure): they are
    /// read from the file again when next used. (Cached experts stay: the
    /// expert cache is within the budget and keeps its own account.)
    pub fn release_streamed(&self, map: &MappedGguf) {
        for stage in 0..self.stages.len() {
            self.leave(map, stage);
        }
    }

    /// Layer `il`'s routed experts are about to be read: count hits and
    /// misses, prefetch the missing ones, and drop the least recently used
    /// beyond the cache's capacity.
    pub fn use_experts(&self, map: Option<&MappedGguf>, il: usize, routes: &[Route]) {
        let Some(Some(x)) = self.experts.get(il) else {
            return;
        };
        let Ok(mut lru) = self.lru.lock() else {
            return;
        };
        let base = il * self.n_expert;
        for (i, r) in routes.iter().enumerate() {
            if routes[..i].iter().any(|p| p.expert == r.expert) {
                continue;
            }
            lru.clock += 1;
            let clock = lru.clock;
            let slot = &mut lru.stamp[base + r.expert];
            if *slot != 0 {
                *slot = clock;
                self.hits.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            *slot = clock;
            lru.len += 1;
            self.misses.fetch_add(1, Ordering::Relaxed);
            if !self.streaming {
                continue;
            }
            let Some(map) = map else { continue };
            for range in x.ranges(r.expert) {
                map.prefetch(range);
            }
            while lru.len > self.expert_capacity {
                // Evict the oldest expert (never one just used: its stamp
                // is the newest).
                let Some((victim, _)) = lru
                    .stamp
                    .iter()
                    .enumerate()
                    .filter(|&(_, &s)| s != 0)
                    .min_by_key(|&(_, &s)| s)
                else {
                    break;
                };
                lru.stamp[victim] = 0;
                lru.len -= 1;
                let (vl, ve) = (victim / self.n_expert, victim % self.n_expert);
                if let Some(Some(vx)) = self.experts.get(vl) {
                    for range in vx.ranges(ve) {
                        map.release(range);
                    }
                }
            }
        }
    }
}
