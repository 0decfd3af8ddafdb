//! `spinel run`: generate a continuation of one prompt, streamed to stdout
//! (or one JSON object with `--json`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;
use spinel_runtime::engine::{
    Engine, GenerateOptions, Generation, SessionOptions, SpeculativeOptions,
};
use spinel_runtime::model::KvType;
use spinel_runtime::sampling::SamplingParams;
use spinel_runtime::vision::{RgbImage, decode_image};

/// Sampling flags shared by `run` and `chat` (llama.cpp's names and
/// defaults).
#[derive(clap::Args, Debug)]
pub struct SamplingArgs {
    /// Temperature; 0 is greedy (argmax).
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0: off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0: off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty over the last --repeat-last-n tokens (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Tokens the penalties look back over.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Subtracted per occurrence in the window (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Subtracted once if the token is in the window (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Random seed (default: a fresh one each run).
    #[arg(short = 's', long)]
    pub seed: Option<u64>,
    /// Constrain the output to a GBNF grammar (llama.cpp's format, start
    /// rule `root`).
    #[arg(long, value_name = "GBNF", group = "constraint")]
    pub grammar: Option<String>,
    /// Constrain the output to the GBNF grammar in FILE.
    #[arg(long, value_name = "FILE", group = "constraint")]
    pub grammar_file: Option<PathBuf>,
    /// Constrain the output to JSON documents matching this JSON Schema.
    #[arg(short = 'j', long, value_name = "SCHEMA", group = "constraint")]
    pub json_schema: Option<String>,
    /// Constrain the output to the JSON Schema in FILE.
    #[arg(long, value_name = "FILE", group = "constraint")]
    pub json_schema_file: Option<PathBuf>,
}

impl SamplingArgs {
    /// The parameters, with the seed drawn now if none was given.
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            penalty_last_n: self.repeat_last_n,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            seed: self.seed.unwrap_or_else(random_seed),
            ..SamplingParams::default()
        }
    }
}

impl SamplingArgs {
    /// The options with the grammar flags applied.
    pub fn constrain(&self, opts: GenerateOptions) -> Result<GenerateOptions, String> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        };
        let schema = |text: &str| {
            serde_json::from_str::<serde_json::Value>(text)
                .map_err(|e| format!("the JSON schema is not JSON: {e}"))
        };
        let opts = if let Some(g) = &self.grammar {
            opts.gbnf(g)
        } else if let Some(p) = &self.grammar_file {
            opts.gbnf(&read(p)?)
        } else if let Some(s) = &self.json_schema {
            opts.json_schema(&schema(s)?)
        } else if let Some(p) = &self.json_schema_file {
            opts.json_schema(&schema(&read(p)?)?)
        } else {
            Ok(opts)
        };
        opts.map_err(|e| e.to_string())
    }
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS; mix in the time for good measure.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.finish()
}

/// KV cache type flags: `--kv-type` sets both, `--cache-type-k`/`-ctk`
/// and `--cache-type-v`/`-ctv` one each (as in llama.cpp).
#[derive(clap::Args, Debug, Clone)]
pub struct KvArgs {
    /// KV cache type of both keys and values: f32, f16, q8_0 or q4_0
    /// (default: f16; f32 for perplexity and logits).
    #[arg(long, alias = "kv", value_name = "TYPE")]
    pub kv_type: Option<String>,
    /// K cache type (default: --kv-type); also -ctk.
    #[arg(long = "cache-type-k", visible_alias = "ctk", value_name = "TYPE")]
    pub cache_type_k: Option<String>,
    /// V cache type (default: --kv-type); also -ctv.
    #[arg(long = "cache-type-v", visible_alias = "ctv", value_name = "TYPE")]
    pub cache_type_v: Option<String>,
    /// Hadamard rotations around the KV cache, which attention does not
    /// see but a quantized cache loses less with: queries and keys after
    /// RoPE (R3; q4_0 keys on SmolLM2: KLD 0.135 → 0.033), values before the
    /// cache and the attention output back. auto: q/k when the K cache is
    /// quantized (or the file asks for R3), v when the V cache is, as
    /// llama.cpp does (its LLAMA_ATTN_ROT_DISABLE=1 is our off).
    #[arg(long, value_name = "auto|on|off", default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub kv_rotation: String,
}

impl KvArgs {
    /// The K and V cache types, `default` for those not given.
    pub fn types(&self, default: KvType) -> Result<(KvType, KvType), String> {
        let parse = |flag: &str, name: &Option<String>, default: KvType| match name {
            None => Ok(default),
            Some(n) => KvType::from_name(n)
                .ok_or_else(|| format!("{flag}: unknown KV cache type {n:?} ({})", KvType::NAMES)),
        };
        let both = parse("--kv-type", &self.kv_type, default)?;
        Ok((
            parse("--cache-type-k", &self.cache_type_k, both)?,
            parse("--cache-type-v", &self.cache_type_v, both)?,
        ))
    }

    /// `--kv-rotation`: `None` for auto.
    pub fn kv_rotation(&self) -> Option<bool> {
        match self.kv_rotation.as_str() {
            "on" => Some(true),
            "off" => Some(false),
            _ => None,
        }
    }
}

/// llama.cpp's single-dash spellings of the KV cache flags (`-ctk f16`),
/// rewritten to the long flags clap knows.
pub fn llama_cpp_flag(arg: std::ffi::OsString) -> std::ffi::OsString {
    match arg.to_str() {
        Some("-ctk") => "--cache-type-k".into(),
        Some("-ctv") => "--cache-type-v".into(),
        _ => arg,
    }
}

/// Context and thread flags shared by `run` and `chat`.
#[derive(clap::Args, Debug)]
pub struct SessionArgs {
    /// Threads (default: all cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Context length in tokens (default: the model's, capped so the KV
    /// cache takes at most 1 GiB).
    #[arg(short = 'c', long)]
    pub ctx: Option<usize>,
    #[command(flatten)]
    pub kv: KvArgs,
    #[arg(long, help = crate::memory::BUDGET_HELP)]
    pub memory_budget: Option<String>,
    /// Print the memory plan at load even when nothing is streamed.
    #[arg(long)]
    pub verbose: bool,
}

impl SessionArgs {
    pub fn options(&self) -> Result<SessionOptions, String> {
        let (kv_type, kv_type_v) = self.kv.types(KvType::F16)?;
        if self.ctx == Some(0) {
            return Err("the context length must be at least 1".into());
        }
        Ok(SessionOptions {
            n_ctx: self.ctx,
            kv_type,
            kv_type_v: Some(kv_type_v),
            kv_rotation: self.kv.kv_rotation(),
            n_threads: self.threads,
            ..SessionOptions::default()
        })
    }
}

/// Speculative decoding flags shared by `run`, `chat` and `serve`
/// (llama.cpp's names).
#[derive(clap::Args, Debug, Clone)]
pub struct SpeculativeArgs {
    /// A draft model with the same vocabulary: it guesses the next tokens,
    /// the model checks them in one batched pass (the output is unchanged).
    #[arg(long = "model-draft", value_name = "FILE")]
    pub model_draft: Option<PathBuf>,
    /// Prompt lookup: draft the tokens that followed the last N (down to 1)
    /// tokens earlier in the context, without a draft model.
    #[arg(long, value_name = "N", conflicts_with = "model_draft")]
    pub lookup_ngram: Option<usize>,
    /// Most tokens drafted per step.
    #[arg(long, default_value_t = 16)]
    pub draft_max: usize,
    /// Steps with fewer drafted tokens run without speculation.
    #[arg(long, default_value_t = 0)]
    pub draft_min: usize,
    /// The draft model stops guessing when its top token is less likely
    /// than this.
    #[arg(long, default_value_t = 0.75)]
    pub draft_p_min: f32,
}

impl SpeculativeArgs {
    /// The options for generations on `engine` (`None` without a draft
    /// source); loads the draft model.
    pub fn options(
        &self,
        engine: &Engine,
        session: &SessionArgs,
    ) -> Result<Option<SpeculativeOptions>, String> {
        let spec = match (&self.model_draft, self.lookup_ngram) {
            (None, None) => return Ok(None),
            (Some(path), _) => {
                let draft = load_engine(path, session)?;
                SpeculativeOptions::draft_model(engine, draft, self.draft_max)
            }
            (None, Some(n)) => SpeculativeOptions::prompt_lookup(n, self.draft_max),
        };
        let mut spec = spec.map_err(|e| e.to_string())?;
        spec.draft_min = self.draft_min;
        spec.p_min = self.draft_p_min;
        Ok(Some(spec))
    }
}

/// Generate a continuation of a prompt.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF model file.
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// The prompt text (BOS added as the model's metadata says; special
    /// tokens such as <|im_start|> written in it are recognised).
    #[arg(short = 'p', long, required_unless_present = "prompt_ids")]
    prompt: Option<String>,
    /// The prompt as comma-separated token ids (used as they are).
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with = "prompt")]
    prompt_ids: Option<Vec<u32>>,
    /// Tokens to generate at most (-1: until end of generation or a full
    /// context).
    #[arg(
        short = 'n',
        long = "n-predict",
        default_value_t = 256,
        allow_negative_numbers = true
    )]
    n_predict: i64,
    /// Stop when this text appears (repeatable); the text ends before it.
    #[arg(long)]
    stop: Vec<String>,
    /// Keep going past end-of-generation tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Show control tokens in the text.
    #[arg(long)]
    special: bool,
    /// Print one JSON object {"prompt_ids", "generated_ids", "text",
    /// "stop", "seed", "stats"} instead of streaming the text.
    #[arg(long)]
    json: bool,
    /// A PNG or JPEG image for the prompt (repeatable): the prompt has one
    /// `<|image|>` per image, in order. Needs --mmproj.
    #[arg(long, value_name = "PATH")]
    image: Vec<PathBuf>,
    /// The vision model (`OUT.mmproj.gguf` from `spinel convert`).
    #[arg(long, value_name = "PATH")]
    mmproj: Option<PathBuf>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    session: SessionArgs,
    #[command(flatten)]
    speculative: SpeculativeArgs,
}

/// Loads the engine under the `--memory-budget`, saying what failed with
/// the path; reports the memory plan when weights are streamed.
pub fn load_engine(path: &Path, session: &SessionArgs) -> Result<Arc<Engine>, String> {
    load_engine_with_vision(path, None, session)
}

/// [`load_engine`], with the vision model of `mmproj` when given.
pub fn load_engine_with_vision(
    path: &Path,
    mmproj: Option<&Path>,
    session: &SessionArgs,
) -> Result<Arc<Engine>, String> {
    let opts = crate::memory::load_options(session.memory_budget.as_deref())?;
    let engine = match mmproj {
        None => Engine::load_with(path, &opts).map_err(|e| format!("{}: {e}", path.display()))?,
        // The tower's bytes come off the budget before the model plans.
        Some(m) => Engine::load_with_vision(path, m, &opts)
            .map_err(|e| format!("{} + {}: {e}", path.display(), m.display()))?,
    };
    crate::memory::report_load(engine.model(), session.verbose);
    crate::memory::report_vision(&engine, opts.memory_budget, session.verbose);
    Ok(Arc::new(engine))
}

/// `-n`: a negative count is no limit.
pub fn max_tokens(n: i64) -> Option<usize> {
    usize::try_from(n).ok()
}

/// Reads and decodes an image file.
pub fn read_image(path: &Path) -> Result<RgbImage, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    decode_image(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads and decodes image files.
pub fn read_images(paths: &[PathBuf]) -> Result<Vec<RgbImage>, String> {
    paths.iter().map(|p| read_image(p)).collect()
}

pub fn run(args: &Args) -> Result<(), String> {
    let engine = load_engine_with_vision(&args.model, args.mmproj.as_deref(), &args.session)?;
    let images = read_images(&args.image)?;
    let prompt = match (&args.prompt, &args.prompt_ids) {
        (_, Some(ids)) => ids.clone(),
        (Some(text), None) => engine.tokenize_prompt(text).map_err(|e| e.to_string())?,
        (None, None) => return Err("give --prompt or --prompt-ids".into()),
    };
    let mut session = engine
        .session(&args.session.options()?)
        .map_err(|e| e.to_string())?;
    let sampling = args.sampling.params();
    let seed = sampling.seed;
    let opts = args.sampling.constrain(GenerateOptions {
        sampling,
        max_tokens: max_tokens(args.n_predict),
        stop: args.stop.clone(),
        ignore_eog: args.ignore_eos,
        special: args.special,
        speculative: args.speculative.options(&engine, &args.session)?,
        ..GenerateOptions::default()
    })?;

    let memory_before = crate::memory::Snapshot::now(engine.model());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_error = None;
    let on_piece = |piece: &spinel_runtime::engine::Piece| {
        if args.json || piece.text.is_empty() || write_error.is_some() {
            return;
        }
        if let Err(e) = out
            .write_all(piece.text.as_bytes())
            .and_then(|()| out.flush())
        {
            write_error = Some(e);
        }
    };
    let g = if images.is_empty() {
        session.complete(&prompt, &opts, on_piece)
    } else {
        session.complete_with_images(&prompt, &images, &opts, on_piece)
    }
    .map_err(|e| e.to_string())?;
    if let Some(e) = write_error {
        // A closed pipe (`spinel run … | head`) is not worth a message.
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(());
        }
        return Err(format!("writing the text: {e}"));
    }

    if args.json {
        let doc = json!({
            "prompt_ids": g.prompt_ids,
            "generated_ids": g.generated_ids,
            "text": g.text,
            "stop": stop_json(&g),
            "seed": seed,
            "n_ctx": session.n_ctx(),
            "stats": stats_json(&g, session.n_threads()),
            "memory": crate::memory::stats_json(
                engine.model(),
                &memory_before,
                g.stats.generated_tokens,
            ),
        });
        writeln!(out, "{doc}").map_err(|e| e.to_string())?;
    } else {
        writeln!(out).map_err(|e| e.to_string())?;
        drop(out);
        eprintln!("{}", stats_line(&g));
        let m = engine.model();
        eprintln!(
            "{}",
            crate::memory::stats_line(m, &memory_before, g.stats.generated_tokens)
        );
    }
    Ok(())
}

pub fn stop_json(g: &Generation) -> serde_json::Value {
    use spinel_runtime::engine::StopReason;
    match &g.stop {
        StopReason::EndOfGeneration(id) => json!({"reason": "eog", "token": id}),
        StopReason::StopString(s) => json!({"reason": "stop_string", "string": s}),
        other => json!({"reason": other.name()}),
    }
}

pub fn stats_json(g: &Generation, threads: usize) -> serde_json::Value {
    let s = &g.stats;
    json!({
        "prompt_tokens": s.prompt_tokens,
        "cached_tokens": s.cached_tokens,
        "processed_prompt_tokens": s.processed_prompt_tokens(),
        "generated_tokens": s.generated_tokens,
        "decode_steps": s.decode_steps,
        "drafted_tokens": s.drafted_tokens,
        "accepted_tokens": s.accepted_tokens,
        "acceptance_rate": s.acceptance_rate(),
        "tokens_per_pass": s.tokens_per_pass(),
        "image_encode_ms": s.image_encode_secs * 1e3,
        "prompt_secs": s.prompt_secs,
        "prompt_tokens_per_sec": s.prompt_tokens_per_sec(),
        "generation_secs": s.generation_secs,
        "generation_tokens_per_sec": s.generation_tokens_per_sec(),
        "time_to_first_token_secs": s.time_to_first_token_secs,
        "total_secs": s.total_secs,
        "threads": threads,
    })
}

/// One human-readable line of stats.
pub fn stats_line(g: &Generation) -> String {
    let s = &g.stats;
    let cached = if s.cached_tokens > 0 {
        format!(" ({} cached)", s.cached_tokens)
    } else {
        String::new()
    };
    let ttft = s
        .time_to_first_token_secs
        .map_or("-".into(), |t| format!("{:.0} ms", t * 1e3));
    let drafts = if s.drafted_tokens > 0 {
        format!(
            " | drafts: {}/{} accepted, {:.2} tokens/pass",
            s.accepted_tokens,
            s.drafted_tokens,
            s.tokens_per_pass()
        )
    } else {
        String::new()
    };
    let image = if s.image_encode_secs > 0.0 {
        format!(" | image encode: {:.0} ms", s.image_encode_secs * 1e3)
    } else {
        String::new()
    };
    format!(
        "[prompt: {} tokens{cached}, {:.1} tok/s{image} | generated: {} tokens, {:.1} tok/s | \
         first token: {ttft}{drafts} | stop: {}]",
        s.prompt_tokens,
        s.prompt_tokens_per_sec(),
        s.generated_tokens,
        s.generation_tokens_per_sec(),
        g.stop.name(),
    )
}
