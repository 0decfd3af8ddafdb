//! `--memory-budget`, the load-time residency report, memory stats, and the
//! hidden `spinel synth` (synthetic large checkpoints for tests and
//! measurements).

use std::path::PathBuf;

use serde_json::json;
use spinel_runtime::engine::Engine;
use spinel_runtime::memory::{ProcessMemory, default_budget, format_size, parse_size};
use spinel_runtime::model::{LoadOptions, Model};

/// Help text of `--memory-budget`.
pub const BUDGET_HELP: &str = "Memory the model may use: weights, KV cache and buffers (6GiB, \
     512MiB, bytes; 'none': no plan). Weights beyond it are streamed from the file. Default: 75% \
     of the available memory (the cgroup's limit if smaller)";

/// The load options for a `--memory-budget` value (`None`: the default).
pub fn load_options(arg: Option<&str>) -> Result<LoadOptions, String> {
    let memory_budget = match arg.map(str::trim) {
        None | Some("auto") => default_budget(),
        Some("none" | "off") => None,
        Some(s) => {
            let b = parse_size(s).map_err(|e| format!("--memory-budget: {e}"))?;
            if b == 0 {
                return Err("--memory-budget: the budget must be more than 0 bytes".into());
            }
            Some(b)
        }
    };
    Ok(LoadOptions { memory_budget })
}

/// Prints the residency plan to stderr when weights are streamed (or
/// always with `verbose`), with the tokens per second the disk allows at a
/// speed measured by reading part of the streamed weights.
pub fn report_load(model: &Model<'_>, verbose: bool) {
    let r = model.residency();
    if !(r.streaming || verbose) {
        return;
    }
    eprintln!("spinel: {r}");
    if !r.streaming {
        return;
    }
    let c = model.config();
    let (n_moe, used) = c.moe.as_ref().map_or((0, 0), |m| {
        (
            (0..c.n_layer).filter(|&l| c.layer_is_moe(l)).count(),
            m.n_expert_used,
        )
    });
    let per_token = r.expected_bytes_per_token(n_moe, used);
    if let Some(speed) = model.measure_stream_speed(64 << 20) {
        eprintln!(
            "spinel: disk read {:.0} MiB/s; expect ~{} read per token, ~{:.2} tokens/s at most",
            speed / (1 << 20) as f64,
            format_size(per_token),
            speed / per_token.max(1) as f64
        );
    }
}

/// With a vision tower loaded, says (to stderr, where the residency plan
/// goes) how much of the memory `budget` the tower takes; printed with
/// `verbose` or when the model streams weights.
pub fn report_vision(engine: &Engine, budget: Option<u64>, verbose: bool) {
    let tower = engine.vision_bytes();
    if tower == 0 || !(verbose || engine.model().residency().streaming) {
        return;
    }
    match budget {
        Some(b) => eprintln!(
            "spinel: vision tower {} resident, counted in the memory budget {} (the model's \
             plan above has the rest)",
            format_size(tower),
            format_size(b)
        ),
        None => eprintln!("spinel: vision tower {} resident", format_size(tower)),
    }
}

/// The process's counters and the expert cache's, at one moment.
pub struct Snapshot {
    process: ProcessMemory,
    hits: u64,
    misses: u64,
}

impl Snapshot {
    pub fn now(model: &Model<'_>) -> Snapshot {
        let r = model.residency();
        Snapshot {
            process: ProcessMemory::now(),
            hits: r.expert_hits,
            misses: r.expert_misses,
        }
    }

    /// Expert-cache hits and misses since this snapshot.
    fn experts_since(&self, model: &Model<'_>) -> (u64, u64, Option<f64>) {
        let r = model.residency();
        let (h, m) = (r.expert_hits - self.hits, r.expert_misses - self.misses);
        (h, m, (h + m > 0).then(|| h as f64 / (h + m) as f64))
    }
}

/// Memory stats of a run: resident memory now and at peak, and the major
/// faults, bytes read from disk and expert-cache hits since `before`, also
/// per token.
pub fn stats_json(model: &Model<'_>, before: &Snapshot, tokens: usize) -> serde_json::Value {
    let now = ProcessMemory::now();
    let (faults, read) = now.since(&before.process);
    let per = |v: Option<u64>| v.map(|v| v as f64 / tokens.max(1) as f64);
    let r = model.residency();
    let (hits, misses, hit_rate) = before.experts_since(model);
    json!({
        "rss_bytes": now.rss,
        "rss_file_bytes": now.rss_file,
        "peak_rss_bytes": now.peak_rss,
        "major_faults": faults,
        "major_faults_per_token": per(faults),
        "read_bytes": read,
        "read_bytes_per_token": per(read),
        "memory_budget": r.budget,
        "streamed_layers": r.streamed_layers,
        "expert_hits": hits,
        "expert_misses": misses,
        "expert_hit_rate": hit_rate,
    })
}

/// One line of the same.
pub fn stats_line(model: &Model<'_>, before: &Snapshot, tokens: usize) -> String {
    let now = ProcessMemory::now();
    let (faults, read) = now.since(&before.process);
    let mib = |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.0} MiB", v as f64 / 1048576.0));
    let per = |v: Option<u64>| {
        v.map_or("-".into(), |v| {
            format!("{:.1}", v as f64 / tokens.max(1) as f64)
        })
    };
    let mut s = format!(
        "[memory: rss {} (peak {}) | major faults/token {} | read/token {}",
        mib(now.rss),
        mib(now.peak_rss),
        per(faults),
        mib(read.map(|r| r / tokens.max(1) as u64)),
    );
    if let (_, _, Some(h)) = before.experts_since(model) {
        s += &format!(" | expert hits {:.1}%", h * 100.0);
    }
    s + "]"
}

/// `spinel synth`: writes a synthetic checkpoint (or finds it in the cache).
#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// `dense` (a ~2 GiB Llama), `moe` (a ~2 GiB Llama 4-style MoE) or
    /// `llama-1b` (Llama 3.2 1B's shape, SmolLM2's vocabulary size, Q8_0).
    kind: String,
    /// Copy the tokenizer of this GGUF file (same vocabulary size: 49152,
    /// e.g. the SmolLM2 demo model), so `spinel run` can use the model.
    #[arg(long)]
    tokenizer_from: Option<PathBuf>,
    /// Write here instead of the cache.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
}

pub fn synth(args: &SynthArgs) -> Result<(), String> {
    use spinel_runtime::gguf::MappedGguf;
    use spinel_runtime::synthetic::{Spec, cached};
    let spec = match args.kind.as_str() {
        "dense" => Spec::dense_2gib(),
        "moe" => Spec::moe_2gib(),
        "llama-1b" => Spec::llama32_1b(),
        k => return Err(format!("unknown kind {k:?} (dense, moe, llama-1b)")),
    };
    let tok = match &args.tokenizer_from {
        // SAFETY: a model file nothing writes to while it is read.
        Some(p) => {
            Some(unsafe { MappedGguf::open(p) }.map_err(|e| format!("{}: {e}", p.display()))?)
        }
        None => None,
    };
    let tok = tok.as_ref().map(|m| m.file());
    let path = match &args.output {
        Some(p) => {
            spec.write(p, tok).map_err(|e| e.to_string())?;
            p.clone()
        }
        None => cached(&spec, tok).map_err(|e| e.to_string())?,
    };
    println!("{}", path.display());
    Ok(())
}
