//! Models larger than the memory limit: synthetic ~2 GiB checkpoints (a
//! dense Llama and a Llama 4-style MoE, made once into the cache by
//! `spinel_runtime::synthetic`) run in a child process whose cgroup memory
//! limit is smaller than the file, with a memory budget. Checked: the child
//! is not killed, its greedy tokens equal those of an unconstrained run, its
//! peak RSS stays within the budget, and it really read weights from disk
//! (and, for the MoE, paged experts).
//!
//! The limit is a child cgroup of this process's memory cgroup (cgroup v2
//! `memory.max`, or v1 `memory.limit_in_bytes`); this needs root, as CI
//! has. If no memory cgroup can be made the test fails, naming why.
//!
//! A custom harness (`harness = false`): the same binary is the child when
//! `SPINEL_STREAMING_CHILD` is set. With `SPINEL_STREAMING_MEASURE=1` it
//! also times each model with and without a budget, with and without the
//! limit (for the numbers in benches/README.md).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use spinel_runtime::memory::{ProcessMemory, format_size};
use spinel_runtime::model::{KvType, LoadOptions, Model, StateOptions};
use spinel_runtime::synthetic::{Spec, cached};

const PROMPT: [u32; 4] = [1, 450, 7483, 338];
/// Tokens generated (`SPINEL_STREAMING_TOKENS` overrides, for measuring).
fn n_gen() -> usize {
    std::env::var("SPINEL_STREAMING_TOKENS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n| n >= 2)
        .unwrap_or(4)
}
const BUDGET: u64 = 1 << 30;
/// The cgroup limit: above the budget (the budget bounds the RSS; the page
/// cache of prefetched layers is charged on top), below the file size.
const LIMIT: u64 = 3 << 29;

fn main() {
    if let Ok(path) = std::env::var("SPINEL_STREAMING_CHILD") {
        child(Path::new(&path));
        return;
    }
    let measure = std::env::var("SPINEL_STREAMING_MEASURE").is_ok_and(|v| v == "1");
    let mut failed = false;
    if measure {
        println!(
            "| model | run | tokens/s (decode) | read per forward pass | peak RSS | expert hits |"
        );
        println!("|---|---|---:|---:|---:|---:|");
    }
    for spec in [Spec::dense_2gib(), Spec::moe_2gib()] {
        let name = format!("{}_runs_under_a_smaller_memory_limit", spec.name);
        let r = std::panic::catch_unwind(|| check(&spec, measure));
        match r {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed = true;
            }
        }
    }
    if failed {
        std::process::exit(1);
    }
}

/// What one run produced.
#[derive(Debug)]
struct Outcome {
    tokens: Vec<u32>,
    peak_rss: u64,
    read_bytes: u64,
    secs_per_token: f64,
    expert_hits: u64,
    expert_misses: u64,
}

/// Greedy tokens of `PROMPT`, with the process's memory figures.
fn generate(path: &Path, budget: Option<u64>) -> Outcome {
    let model = Model::load_with(
        path,
        &LoadOptions {
            memory_budget: budget,
        },
    )
    .unwrap();
    let opts = StateOptions {
        n_ctx: Some(64),
        kv_type: KvType::F16,
        ..StateOptions::default()
    };
    let mut state = model.new_state_with(&opts).unwrap();
    let before = ProcessMemory::now();
    let mut tokens = Vec::new();
    let mut input = PROMPT.to_vec();
    let mut decode_secs = 0.0;
    for i in 0..n_gen() {
        let start = Instant::now();
        let logits = model.forward(&mut state, &input).unwrap();
        if i > 0 {
            decode_secs += start.elapsed().as_secs_f64();
        }
        let next = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap() as u32;
        tokens.push(next);
        input = vec![next];
    }
    let now = ProcessMemory::now();
    let r = model.residency();
    Outcome {
        tokens,
        peak_rss: now.peak_rss.unwrap_or(0),
        read_bytes: now.since(&before).1.unwrap_or(0),
        secs_per_token: decode_secs / (n_gen() - 1) as f64,
        expert_hits: r.expert_hits,
        expert_misses: r.expert_misses,
    }
}

fn child(path: &Path) {
    let budget = std::env::var("SPINEL_STREAMING_BUDGET")
        .ok()
        .map(|b| b.parse().unwrap());
    let o = generate(path, budget);
    assert!(o.tokens.len() >= 2);
    let t: Vec<String> = o.tokens.iter().map(|t| t.to_string()).collect();
    println!(
        "RESULT {} {} {} {} {} {}",
        t.join(","),
        o.peak_rss,
        o.read_bytes,
        o.secs_per_token,
        o.expert_hits,
        o.expert_misses
    );
}

/// Runs the child on `path`, in a cgroup limited to `limit` bytes if given.
fn run_child(path: &Path, budget: Option<u64>, limit: Option<u64>) -> Result<Outcome, String> {
    let exe = std::env::current_exe().unwrap();
    let cgroup = limit.map(|l| {
        MemoryCgroup::new(l).unwrap_or_else(|e| {
            panic!("cannot limit the child's memory: {e} (needs root and a memory cgroup)")
        })
    });
    // The child joins the cgroup before it execs, so all its memory counts.
    let procs = cgroup
        .as_ref()
        .map_or("/dev/null".into(), |c| c.dir.join("cgroup.procs"));
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("echo $$ > \"$0\" && exec \"$1\"")
        .arg(&procs)
        .arg(&exe)
        .env("SPINEL_STREAMING_CHILD", path);
    if let Some(b) = budget {
        cmd.env("SPINEL_STREAMING_BUDGET", b.to_string());
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "child failed ({}; cgroup: {}): {}{}",
            out.status,
            cgroup.as_ref().map_or("none".into(), |c| c.describe()),
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| format!("no result from the child: {stdout}"))?;
    let f: Vec<&str> = line.split(' ').collect();
    Ok(Outcome {
        tokens: f[0].split(',').map(|t| t.parse().unwrap()).collect(),
        peak_rss: f[1].parse().unwrap(),
        read_bytes: f[2].parse().unwrap(),
        secs_per_token: f[3].parse().unwrap(),
        expert_hits: f[4].parse().unwrap(),
        expert_misses: f[5].parse().unwrap(),
    })
}

fn check(spec: &Spec, measure: bool) {
    let path = cached(spec, None).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > 2 << 30, "{}: only {size} bytes", path.display());
    assert!(LIMIT < size);

    // The reference: no budget, no limit.
    let reference = run_child(&path, None, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reference.tokens.len(), n_gen());

    // Start cold: the file's pages charged to this process's cgroup would
    // not count against the child's limit.
    drop_page_cache(&path);
    let limited = run_child(&path, Some(BUDGET), Some(LIMIT)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        limited.tokens, reference.tokens,
        "{}: streamed tokens differ",
        spec.name
    );
    assert!(
        limited.peak_rss <= BUDGET,
        "{}: peak RSS {} over the budget {}",
        spec.name,
        format_size(limited.peak_rss),
        format_size(BUDGET)
    );
    // It really streamed: weights were read from the disk, for the dense
    // model every pass (at least half of the 1.4 GiB planned), for the MoE
    // at least the experts the cache missed.
    let least = match spec.moe {
        None => n_gen() as u64 * (700 << 20),
        Some((_, _, ff)) => limited.expert_misses * (3 * spec.dim * ff) as u64,
    };
    assert!(
        limited.read_bytes >= least,
        "{}: only {} read from disk, expected at least {}",
        spec.name,
        format_size(limited.read_bytes),
        format_size(least)
    );
    if spec.moe.is_some() {
        // One lookup per distinct expert per layer and forward pass: the
        // prompt batch routes to 1..=4 experts, each decode step to 1.
        let (l, looked) = (
            spec.n_layer as u64,
            limited.expert_hits + limited.expert_misses,
        );
        let (least, most) = (n_gen() as u64 * l, (n_gen() + PROMPT.len() - 1) as u64 * l);
        assert!(
            (least..=most).contains(&looked),
            "{}: {looked} expert lookups, expected {least}..={most}",
            spec.name
        );
        assert!(limited.expert_misses > 0);
    }
    if measure {
        report(spec, &path, &reference, &limited);
    }
}

/// Timings for the closing note: budget / no budget, limit / no limit.
fn report(spec: &Spec, path: &Path, reference: &Outcome, limited: &Outcome) {
    // Bytes read per forward pass (the prompt is one batch).
    let row = |what: &str, o: &Outcome| {
        let hit = if o.expert_hits + o.expert_misses > 0 {
            format!(
                "{:.0}%",
                100.0 * o.expert_hits as f64 / (o.expert_hits + o.expert_misses) as f64
            )
        } else {
            "-".into()
        };
        println!(
            "| {} | {what} | {:.2} | {} | {} | {hit} |",
            spec.name,
            1.0 / o.secs_per_token,
            format_size(o.read_bytes / n_gen() as u64),
            format_size(o.peak_rss),
        );
    };
    drop_page_cache(path);
    let cold = run_child(path, None, None).unwrap();
    row("no budget, no limit, cold cache", &cold);
    row(
        "no budget, no limit, warm cache",
        &run_child(path, None, None).unwrap(),
    );
    assert_eq!(cold.tokens, reference.tokens);
    row("budget 1 GiB, limit 1.5 GiB", limited);
    drop_page_cache(path);
    match run_child(path, None, Some(LIMIT)) {
        Ok(o) => row("no budget, limit 1.5 GiB", &o),
        Err(e) => println!("| {} | no budget, limit 1.5 GiB | {e} |", spec.name),
    }
}

/// Drops the file's pages from the page cache (none of them is mapped now).
fn drop_page_cache(path: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: a plain system call on an open file descriptor.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise failed");
}

/// A child memory cgroup of this process's, removed on drop.
struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    fn new(limit: u64) -> Result<MemoryCgroup, String> {
        let cg = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
        let name = format!("spinel-streaming-{}", std::process::id());
        let write = |p: PathBuf, v: &str| {
            std::fs::write(&p, v).map_err(|e| format!("writing {v:?} to {}: {e}", p.display()))
        };
        // cgroup v1 with a memory hierarchy.
        for line in cg.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, ctl, path) = (parts.next(), parts.next(), parts.next());
            if ctl.is_some_and(|c| c.split(',').any(|c| c == "memory")) {
                let parent = Path::new("/sys/fs/cgroup/memory")
                    .join(path.unwrap_or("/").trim_start_matches('/'));
                let dir = parent.join(&name);
                std::fs::create_dir(&dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
                let c = MemoryCgroup { dir, v2: false };
                write(c.dir.join("memory.limit_in_bytes"), &limit.to_string())?;
                return Ok(c);
            }
        }
        // cgroup v2: the process's cgroup must delegate the memory
        // controller to its children.
        let path = cg
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .ok_or("no memory cgroup (neither v1 memory nor v2) in /proc/self/cgroup")?;
        let root = Path::new("/sys/fs/cgroup");
        if !root.join("cgroup.controllers").exists() {
            return Err("cgroup v2 is not mounted at /sys/fs/cgroup".into());
        }
        // Under this process's cgroup if it delegates the memory
        // controller (or can be made to), else under the root (exempt from
        // the no-internal-processes rule).
        let own = root.join(path.trim_start_matches('/'));
        let has = |dir: &Path, file: &str| {
            std::fs::read_to_string(dir.join(file))
                .unwrap_or_default()
                .split_whitespace()
                .any(|c| c == "memory")
        };
        let delegates = |dir: &Path| {
            has(dir, "cgroup.subtree_control")
                || (has(dir, "cgroup.controllers")
                    && std::fs::write(dir.join("cgroup.subtree_control"), "+memory").is_ok())
        };
        let parent = if delegates(&own) {
            own
        } else if delegates(root) {
            root.to_path_buf()
        } else {
            return Err(format!(
                "neither {} nor {} delegates the memory controller",
                own.display(),
                root.display()
            ));
        };
        let dir = parent.join(&name);
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let c = MemoryCgroup { dir, v2: true };
        write(c.dir.join("memory.max"), &limit.to_string())?;
        write(c.dir.join("memory.swap.max"), "0").ok();
        Ok(c)
    }

    fn describe(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        if self.v2 {
            format!(
                "{} events: {}",
                self.dir.display(),
                read("memory.events").replace('\n', " ")
            )
        } else {
            format!(
                "{} limit {} peak {} failcnt {}",
                self.dir.display(),
                read("memory.limit_in_bytes").trim(),
                read("memory.max_usage_in_bytes").trim(),
                read("memory.failcnt").trim()
            )
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}
