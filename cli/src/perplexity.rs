//! `spinel perplexity -m MODEL -f TEXT [-c 512] [--json]`, computed like
//! llama.cpp's llama-perplexity.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args as ClapArgs;
use spinel_runtime::gguf::MappedGguf;
use spinel_runtime::model::{KvType, Model};

use crate::run::KvArgs;
use spinel_runtime::perplexity::{Base, Options, evaluate, prepare_text};
use spinel_runtime::tokenizer::Tokenizer;

/// Measure perplexity on a text (llama-perplexity's method).
#[derive(ClapArgs)]
pub struct Args {
    /// The GGUF model file.
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// The text file.
    #[arg(short = 'f', long)]
    file: PathBuf,
    /// Tokens per chunk.
    #[arg(short = 'c', long, default_value_t = 512)]
    ctx: usize,
    /// Evaluate at most this many chunks.
    #[arg(long)]
    chunks: Option<usize>,
    /// Threads (default: all cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// KV cache types (f32 by default).
    #[command(flatten)]
    kv: KvArgs,
    /// Save this model's log-probabilities to FILE as the reference for
    /// `--kl-divergence`.
    #[arg(long, value_name = "FILE")]
    kl_divergence_base: Option<PathBuf>,
    /// Compare with the reference saved by `--kl-divergence-base`.
    #[arg(long, requires = "kl_divergence_base")]
    kl_divergence: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &Args) -> Result<(), String> {
    let (kv_type, kv_type_v) = args.kv.types(KvType::F32)?;
    let (model, tokens, bos) = load_text(&args.model, &args.file)?;
    let opts = Options {
        n_ctx: args.ctx,
        n_chunks: args.chunks,
        n_threads: args.threads,
        kv_type,
        kv_type_v: Some(kv_type_v),
        kv_rotation: args.kv.kv_rotation(),
    };
    let t0 = Instant::now();
    let mut reader = None;
    let mut writer = None;
    let base = match (&args.kl_divergence_base, args.kl_divergence) {
        (None, _) => Base::None,
        (Some(p), false) => {
            let f = File::create(p).map_err(|e| format!("{}: {e}", p.display()))?;
            Base::Write(writer.insert(BufWriter::with_capacity(1 << 20, f)))
        }
        (Some(p), true) => {
            let f = File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
            Base::Read(reader.insert(BufReader::with_capacity(1 << 20, f)))
        }
    };
    let quiet = args.json;
    let report = evaluate(&model, &tokens, bos, &opts, base, &mut |i, n, ppl| {
        if !quiet {
            eprint!("[{}/{n}] {ppl:.4}  ", i + 1);
        }
    })
    .map_err(|e| e.to_string())?;
    if !quiet {
        eprintln!();
    }
    if let (Some(w), Some(p)) = (writer.as_mut(), &args.kl_divergence_base) {
        w.flush().map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if args.json {
        let mut v = serde_json::json!({
            "ppl": report.ppl,
            "ppl_stderr": report.ppl_stderr,
            "tokens": report.tokens,
        });
        if let Some(k) = &report.kld {
            v["kld"] = k.kld.into();
            v["kld_stderr"] = k.kld_stderr.into();
            v["top1"] = k.top1.into();
            v["ppl_base"] = k.ppl_base.into();
            v["delta_ppl"] = k.delta_ppl.into();
        }
        println!("{v}");
    } else {
        println!(
            "PPL = {:.4} +/- {:.5} ({} tokens scored in {} chunks of {}, {} text tokens, {:.1} s)",
            report.ppl,
            report.ppl_stderr,
            report.tokens,
            report.n_chunks,
            args.ctx,
            tokens.len(),
            t0.elapsed().as_secs_f64()
        );
        if let Some(k) = &report.kld {
            println!(
                "KLD = {:.6} +/- {:.6}, same top token {:.2}%, base PPL {:.4}, ΔPPL = {:+.4}",
                k.kld,
                k.kld_stderr,
                100.0 * k.top1,
                k.ppl_base,
                k.delta_ppl
            );
        }
    }
    let _ = std::io::stdout().flush();
    Ok(())
}

/// The model at `model` and the text at `file` tokenized for evaluation
/// (as llama-perplexity and llama-imatrix prepare it), with the BOS token
/// the model adds, if any.
pub(crate) fn load_text(
    model: &Path,
    file: &Path,
) -> Result<(Model<'static>, Vec<u32>, Option<u32>), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    // SAFETY: model files are read-only while mapped (Spinel's contract).
    let mapped =
        unsafe { MappedGguf::open(model) }.map_err(|e| format!("{}: {e}", model.display()))?;
    let tok = Tokenizer::from_gguf(mapped.file()).map_err(|e| e.to_string())?;
    let model = Model::from_mapped(mapped).map_err(|e| e.to_string())?;
    let tokens = tok
        .encode(prepare_text(&text), true, false)
        .map_err(|e| e.to_string())?;
    let bos = if tok.add_bos() { tok.bos() } else { None };
    Ok((model, tokens, bos))
}
