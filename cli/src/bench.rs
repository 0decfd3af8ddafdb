//! `spinel bench`: llama.cpp's `llama-bench` measurements, so the two can be
//! compared line by line.
//!
//! * `pp<P>`: a prompt of `P` random token ids pushed through the model in
//!   one batch, from an empty cache (the logits of the last position only).
//! * `tg<N>`: `N` tokens generated one at a time from an empty cache, each a
//!   forward pass over one random token id (with the full vocabulary
//!   projection, as in generation; no sampling).
//!
//! * `image` (with `--image IMG --mmproj FILE`): the image encoded for a
//!   prompt, as `spinel run --image` does before prefill: preprocessing and
//!   the vision tower (on all cores, as in generation). Its speed is images
//!   per second.
//!
//! Each test runs once to warm up, then `-r` times; the speed of each run
//! is tokens / seconds, reported as mean ± sample standard deviation. The
//! table has llama-bench's columns; `--json` prints an array of objects
//! with llama-bench's `-o json` field names.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use spinel_runtime::model::{KvType, Model, StateOptions};
use spinel_runtime::tokenizer::Tokenizer;
use spinel_runtime::vision::{IMAGE_MARKER, MmprojFile, RgbImage, Vision};

use crate::run::KvArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// GGUF model files (comma-separated or repeated).
    #[arg(short = 'm', long = "model", required = true, value_delimiter = ',')]
    pub models: Vec<PathBuf>,
    /// Prompt lengths to test (0: no prompt test).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    pub n_prompt: Vec<usize>,
    /// Generation lengths to test (0: no generation test).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    pub n_gen: Vec<usize>,
    /// Tokens already in the KV cache before each test (llama-bench's
    /// `-d`: prompt processing and generation deep into a context).
    #[arg(
        short = 'd',
        long = "n-depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    pub n_depth: Vec<usize>,
    /// Thread counts to test (default: all cores).
    #[arg(short = 't', long = "threads", value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Timed runs per test (after one warm-up run).
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    pub repetitions: usize,
    /// Most prompt tokens per forward batch.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    pub n_batch: usize,
    /// KV cache types (f16 by default, as llama-bench's).
    #[command(flatten)]
    pub kv: KvArgs,
    /// Print a JSON array (llama-bench's `-o json` fields) instead of the table.
    #[arg(long)]
    pub json: bool,
    #[arg(long, help = crate::memory::BUDGET_HELP)]
    pub memory_budget: Option<String>,
    /// The vision model (`OUT.mmproj.gguf` from `spinel convert`) for
    /// `--image`.
    #[arg(long, value_name = "FILE")]
    pub mmproj: Option<PathBuf>,
    /// Also time encoding this image (preprocessing and the vision tower):
    /// an `image` test per model. Needs --mmproj.
    #[arg(long, value_name = "IMG")]
    pub image: Option<PathBuf>,
}

/// One line of results.
struct Record {
    model_filename: String,
    model_type: String,
    model_size: u64,
    model_n_params: u64,
    n_threads: usize,
    n_prompt: usize,
    n_gen: usize,
    n_depth: usize,
    /// Images encoded per run (the `image` test: 1, others 0).
    n_image: usize,
    test_time: String,
    samples_ns: Vec<u64>,
    /// Memory over the timed runs ([`crate::memory::stats_json`]).
    memory: serde_json::Value,
}

impl Record {
    /// What one run processes: tokens, or the image of the `image` test.
    fn tokens(&self) -> usize {
        self.n_prompt + self.n_gen + self.n_image
    }

    fn samples_ts(&self) -> Vec<f64> {
        self.samples_ns
            .iter()
            .map(|&ns| self.tokens() as f64 * 1e9 / ns as f64)
            .collect()
    }

    fn test_name(&self) -> String {
        if self.n_image > 0 {
            return "image".into();
        }
        let test = if self.n_gen == 0 {
            format!("pp{}", self.n_prompt)
        } else {
            format!("tg{}", self.n_gen)
        };
        match self.n_depth {
            0 => test,
            d => format!("{test} @ d{d}"),
        }
    }
}

/// Mean and sample standard deviation (0 for fewer than two samples).
fn mean_sd(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (v.len() - 1) as f64;
    (mean, var.sqrt())
}

pub fn run(args: &Args) -> Result<(), String> {
    let (kv_type, kv_type_v) = args.kv.types(KvType::F16)?;
    let kv_names = [kv_type, kv_type_v].map(|t| t.ggml_type().name().to_ascii_lowercase());
    if args.repetitions == 0 {
        return Err("-r must be at least 1".into());
    }
    let threads = if args.threads.is_empty() {
        vec![std::thread::available_parallelism().map_or(1, |n| n.get())]
    } else {
        args.threads.clone()
    };
    if threads.contains(&0) {
        return Err("-t: thread counts start at 1".into());
    }
    let image = match (&args.image, &args.mmproj) {
        (Some(i), Some(m)) => Some((crate::run::read_image(i)?, m.as_path())),
        (Some(_), None) => {
            return Err("--image needs --mmproj FILE (the vision model, \
                        OUT.mmproj.gguf from `spinel convert`)"
                .into());
        }
        (None, Some(_)) => return Err("--mmproj is only used with --image IMG".into()),
        (None, None) => None,
    };
    let mut records = Vec::new();
    let mut printed_header = false;
    // A record done: printed as a table row (after the header) unless
    // --json, and kept.
    let mut emit = |rec: Record| {
        if !args.json {
            if !printed_header {
                print_header(&kv_names);
                printed_header = true;
            }
            print_row(&rec, &kv_names);
        }
        records.push(rec);
    };
    for path in &args.models {
        let mut opts = crate::memory::load_options(args.memory_budget.as_deref())?;
        if let Some((_, mmproj)) = &image {
            // The tower shares the budget, as in `spinel run --mmproj`.
            // SAFETY: as in `measure_image`.
            let file = unsafe { MmprojFile::open(mmproj) }
                .map_err(|e| format!("{}: {e}", mmproj.display()))?;
            opts = file
                .model_load_options(&opts)
                .map_err(|e| format!("{}: {e}", mmproj.display()))?;
        }
        let model =
            Model::load_with(path, &opts).map_err(|e| format!("{}: {e}", path.display()))?;
        crate::memory::report_load(&model, false);
        let (model_size, model_n_params) = size_and_params(&model);
        let model_type = model_type(&model, model_n_params);
        for &t in &threads {
            let tests = args
                .n_prompt
                .iter()
                .filter(|&&p| p > 0)
                .map(|&p| (p, 0))
                .chain(args.n_gen.iter().filter(|&&n| n > 0).map(|&n| (0, n)));
            // Depth outermost, as llama-bench orders its tests.
            let tests: Vec<_> = tests.collect();
            let tests: Vec<_> = args
                .n_depth
                .iter()
                .flat_map(|&d| tests.iter().map(move |&(p, n)| (d, p, n)))
                .collect();
            for (d, p, n) in tests {
                let opts = StateOptions {
                    n_ctx: Some(d + p + n),
                    kv_type,
                    kv_type_v: Some(kv_type_v),
                    kv_rotation: args.kv.kv_rotation(),
                    n_batch: args.n_batch,
                    n_threads: Some(t),
                };
                let test = Test {
                    depth: d,
                    n_prompt: p,
                    n_gen: n,
                    reps: args.repetitions,
                };
                let (samples_ns, memory) = measure(&model, &opts, &test)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let rec = Record {
                    model_filename: path.display().to_string(),
                    model_type: model_type.clone(),
                    model_size,
                    model_n_params,
                    n_threads: t,
                    n_prompt: p,
                    n_gen: n,
                    n_depth: d,
                    n_image: 0,
                    test_time: utc_now(),
                    samples_ns,
                    memory,
                };
                emit(rec);
            }
        }
        if let Some((img, mmproj)) = &image {
            let (samples_ns, memory) = measure_image(&model, mmproj, img, args.repetitions)
                .map_err(|e| format!("{}: {e}", mmproj.display()))?;
            let rec = Record {
                model_filename: path.display().to_string(),
                model_type: model_type.clone(),
                model_size,
                model_n_params,
                n_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
                n_prompt: 0,
                n_gen: 0,
                n_depth: 0,
                n_image: 1,
                test_time: utc_now(),
                samples_ns,
                memory,
            };
            emit(rec);
        }
    }
    if args.json {
        let arr: Vec<_> = records
            .iter()
            .map(|r| {
                let ts = r.samples_ts();
                let (avg_ts, stddev_ts) = mean_sd(&ts);
                let ns: Vec<f64> = r.samples_ns.iter().map(|&v| v as f64).collect();
                let (avg_ns, stddev_ns) = mean_sd(&ns);
                json!({
                    "build_commit": env!("CARGO_PKG_VERSION"),
                    "cpu_info": spinel_quant::Kernels::get().isa().name(),
                    "backends": "CPU",
                    "model_filename": r.model_filename,
                    "model_type": r.model_type,
                    "model_size": r.model_size,
                    "model_n_params": r.model_n_params,
                    "n_batch": args.n_batch,
                    "n_ubatch": args.n_batch,
                    "n_threads": r.n_threads,
                    "type_k": kv_names[0],
                    "type_v": kv_names[1],
                    "n_prompt": r.n_prompt,
                    "n_gen": r.n_gen,
                    "n_depth": r.n_depth,
                    "n_image": r.n_image,
                    "test_time": r.test_time,
                    "avg_ns": avg_ns.round() as u64,
                    "stddev_ns": stddev_ns.round() as u64,
                    "avg_ts": avg_ts,
                    "stddev_ts": stddev_ts,
                    "samples_ns": r.samples_ns,
                    "samples_ts": ts,
                    "memory": r.memory,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&arr).map_err(|e| e.to_string())?
        );
    }
    Ok(())
}

/// One test: `n_prompt` prompt tokens or `n_gen` generated ones after
/// `depth` tokens already in the cache, `reps` times.
struct Test {
    depth: usize,
    n_prompt: usize,
    n_gen: usize,
    reps: usize,
}

/// Runs one test: a warm-up, then `reps` timed runs; nanoseconds per run,
/// and the memory stats of the timed runs. The `depth` tokens are processed
/// once, untimed; each run starts from them.
fn measure(
    model: &Model<'_>,
    opts: &StateOptions,
    test: &Test,
) -> Result<(Vec<u64>, serde_json::Value), String> {
    let &Test {
        depth,
        n_prompt,
        n_gen,
        reps,
    } = test;
    let mut state = model.new_state_with(opts).map_err(|e| e.to_string())?;
    let n_vocab = model.config().n_vocab as u64;
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut random_token = move || {
        // xorshift64*
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        (rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) % n_vocab
    };
    if depth > 0 {
        let context: Vec<u32> = (0..depth).map(|_| random_token() as u32).collect();
        model
            .forward(&mut state, &context)
            .map_err(|e| e.to_string())?;
    }
    let mut prompt = vec![0u32; n_prompt];
    let mut once = |state: &mut spinel_runtime::model::State| -> Result<u64, String> {
        state.truncate(depth);
        for t in prompt.iter_mut() {
            *t = random_token() as u32;
        }
        let start = Instant::now();
        if n_prompt > 0 {
            model.forward(state, &prompt).map_err(|e| e.to_string())?;
        }
        let mut token = random_token() as u32;
        for _ in 0..n_gen {
            model.forward(state, &[token]).map_err(|e| e.to_string())?;
            token = random_token() as u32;
        }
        Ok(start.elapsed().as_nanos() as u64)
    };
    once(&mut state)?;
    let before = crate::memory::Snapshot::now(model);
    let samples = (0..reps)
        .map(|_| once(&mut state))
        .collect::<Result<Vec<_>, _>>()?;
    let tokens = reps * (n_prompt + n_gen);
    Ok((samples, crate::memory::stats_json(model, &before, tokens)))
}

/// The `image` test: loads the tower of `mmproj` (checked against the
/// model), then encodes `img` for a prompt of one `<|image|>` once to warm
/// up and `reps` times timed; nanoseconds per run and the memory stats.
fn measure_image(
    model: &Model<'_>,
    mmproj: &Path,
    img: &RgbImage,
    reps: usize,
) -> Result<(Vec<u64>, serde_json::Value), String> {
    // SAFETY: the mmproj file must not change while mapped, Spinel's
    // contract for model files; the mapping is dropped here.
    let file = unsafe { MmprojFile::open(mmproj) }.map_err(|e| e.to_string())?;
    let vision = Vision::new(&file, model.config()).map_err(|e| e.to_string())?;
    drop(file);
    let tok = Tokenizer::from_gguf(model.gguf()).map_err(|e| e.to_string())?;
    let ids = tok
        .encode(IMAGE_MARKER, false, true)
        .map_err(|e| e.to_string())?;
    let images = std::slice::from_ref(img);
    let once = || -> Result<u64, String> {
        let start = Instant::now();
        let p = vision
            .prompt(&tok, &ids, images)
            .map_err(|e| e.to_string())?;
        let ns = start.elapsed().as_nanos() as u64;
        drop(p);
        Ok(ns)
    };
    once()?;
    let before = crate::memory::Snapshot::now(model);
    let samples = (0..reps).map(|_| once()).collect::<Result<Vec<_>, _>>()?;
    Ok((samples, crate::memory::stats_json(model, &before, reps)))
}

/// Bytes and element count of every tensor in the file (llama.cpp's model
/// size and parameter count).
fn size_and_params(model: &Model<'_>) -> (u64, u64) {
    let tensors = model.gguf().tensors();
    (
        tensors.iter().map(|t| t.size() as u64).sum(),
        tensors.iter().map(|t| t.n_elements()).sum(),
    )
}

/// `llama 135M Q4_0`: architecture, parameter count, file type.
fn model_type(model: &Model<'_>, n_params: u64) -> String {
    let arch = model.config().arch.name();
    let size = if n_params >= 1_000_000_000 {
        format!("{:.1}B", n_params as f64 / 1e9)
    } else {
        format!("{}M", (n_params as f64 / 1e6).round())
    };
    let ftype = model
        .gguf()
        .metadata()
        .get_uint("general.file_type")
        .ok()
        .map_or_else(|| "?".to_string(), ftype_name);
    format!("{arch} {size} {ftype}")
}

/// llama.cpp's name of a `general.file_type` value.
fn ftype_name(t: u64) -> String {
    match t {
        0 => "all F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K - Medium",
        11 => "Q3_K - Small",
        12 => "Q3_K - Medium",
        13 => "Q3_K - Large",
        14 => "Q4_K - Small",
        15 => "Q4_K - Medium",
        16 => "Q5_K - Small",
        17 => "Q5_K - Medium",
        18 => "Q6_K",
        19 => "IQ2_XXS - 2.0625 bpw",
        20 => "IQ2_XS - 2.3125 bpw",
        21 => "Q2_K - Small",
        22 => "IQ3_XS - 3.3 bpw",
        23 => "IQ3_XXS - 3.0625 bpw",
        24 => "IQ1_S - 1.5625 bpw",
        25 => "IQ4_NL - 4.5 bpw",
        26 => "IQ3_S - 3.4375 bpw",
        27 => "IQ3_S mix - 3.66 bpw",
        28 => "IQ2_S - 2.5 bpw",
        29 => "IQ2_M - 2.7 bpw",
        30 => "IQ4_XS - 4.25 bpw",
        31 => "IQ1_M - 1.75 bpw",
        32 => "BF16",
        _ => return format!("ftype {t}"),
    }
    .to_string()
}

/// The KV cache columns llama-bench adds when a type is not its default
/// f16: `(name, value)` pairs.
fn kv_columns(kv_names: &[String; 2]) -> Vec<(&'static str, &str)> {
    ["type_k", "type_v"]
        .into_iter()
        .zip(kv_names)
        .filter(|(_, t)| t.as_str() != "f16")
        .map(|(c, t)| (c, t.as_str()))
        .collect()
}

fn print_header(kv_names: &[String; 2]) {
    let kv = kv_columns(kv_names);
    println!(
        "| {:<30} | {:>10} | {:>10} | {:<10} | {:>7} | {}{:>15} | {:>20} | {:>10} | {:>12} | {:>12} |",
        "model",
        "size",
        "params",
        "backend",
        "threads",
        kv.iter()
            .map(|(c, _)| format!("{c:>6} | "))
            .collect::<String>(),
        "test",
        "t/s",
        "rss",
        "majflt/tok",
        "read/tok"
    );
    let (l, r) = (|w: usize| "-".repeat(w), |w: usize| "-".repeat(w - 1) + ":");
    println!(
        "| {} | {} | {} | {} | {} | {}{} | {} | {} | {} | {} |",
        l(30),
        r(10),
        r(10),
        l(10),
        r(7),
        kv.iter()
            .map(|_| format!("{} | ", r(6)))
            .collect::<String>(),
        r(15),
        r(20),
        r(10),
        r(12),
        r(12)
    );
}

fn print_row(r: &Record, kv_names: &[String; 2]) {
    let (avg, sd) = mean_sd(&r.samples_ts());
    let mem = |k: &str| r.memory.get(k).and_then(|v| v.as_f64());
    let mib = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.0} MiB", v / 1048576.0));
    println!(
        "| {:<30} | {:>10} | {:>10} | {:<10} | {:>7} | {}{:>15} | {:>20} | {:>10} | {:>12} | {:>12} |",
        r.model_type,
        format!("{:.2} MiB", r.model_size as f64 / (1024.0 * 1024.0)),
        format!("{:.2} M", r.model_n_params as f64 / 1e6),
        "CPU",
        r.n_threads,
        kv_columns(kv_names)
            .iter()
            .map(|(_, t)| format!("{t:>6} | "))
            .collect::<String>(),
        r.test_name(),
        format!("{avg:.2} ± {sd:.2}"),
        mib(mem("peak_rss_bytes")),
        mem("major_faults_per_token").map_or("-".into(), |v| format!("{v:.1}")),
        mib(mem("read_bytes_per_token")),
    );
}

/// The current time as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
