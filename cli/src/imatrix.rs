//! `spinel imatrix -m MODEL -f TEXT [-o imatrix.gguf] [-c 512] [--chunks N]`:
//! an importance matrix computed as llama.cpp's llama-imatrix computes it.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args as ClapArgs;
use spinel_runtime::imatrix::{Options, compute};
use spinel_runtime::model::KvType;

use crate::perplexity::load_text;
use crate::run::KvArgs;

/// Compute an importance matrix (llama-imatrix's): per weight matrix, the
/// sum over the text's tokens of each input column's squared activation.
#[derive(ClapArgs)]
pub struct Args {
    /// The GGUF model file.
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// The text file (calibration data).
    #[arg(short = 'f', long)]
    file: PathBuf,
    /// The file to write.
    #[arg(short = 'o', long, default_value = "imatrix.gguf")]
    output: PathBuf,
    /// gguf (llama.cpp's current format) or dat (the legacy one).
    #[arg(long, default_value = "gguf", value_parser = ["gguf", "dat"])]
    output_format: String,
    /// Tokens per chunk.
    #[arg(short = 'c', long, default_value_t = 512)]
    ctx: usize,
    /// Process at most this many chunks.
    #[arg(long)]
    chunks: Option<usize>,
    /// Threads (default: all cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// KV cache types (f32 by default).
    #[command(flatten)]
    kv: KvArgs,
    /// Also record the output layer's inputs as `output.weight` (as
    /// llama-imatrix's --process-output, but for tied embeddings too, which
    /// llama-imatrix skips): `spinel quantize --type iq4_xs_m` quantizes
    /// tied token embeddings with it. Computes every token's logits.
    #[arg(long)]
    process_output: bool,
}

pub fn run(args: &Args) -> Result<(), String> {
    let t0 = Instant::now();
    let (kv_type, kv_type_v) = args.kv.types(KvType::F32)?;
    let (model, tokens, bos) = load_text(&args.model, &args.file)?;
    let opts = Options {
        n_ctx: args.ctx,
        n_chunks: args.chunks,
        n_threads: args.threads,
        kv_type,
        kv_type_v: Some(kv_type_v),
        dataset: Some(args.file.to_string_lossy().into_owned()),
        process_output: args.process_output,
    };
    eprintln!(
        "{} tokens, chunks of {}{}",
        tokens.len(),
        args.ctx,
        args.chunks
            .map(|n| format!(", at most {n}"))
            .unwrap_or_default()
    );
    let m = compute(&model, &tokens, bos, &opts, &mut |i, n| {
        eprint!("[{}/{n}] ", i + 1);
    })
    .map_err(|e| e.to_string())?;
    eprintln!();
    let saved = match args.output_format.as_str() {
        "dat" => m.save_dat(&args.output),
        _ => m.save_gguf(&args.output),
    };
    saved.map_err(|e| format!("{}: {e}", args.output.display()))?;
    eprintln!(
        "wrote {}: {} entries, {} chunks of {} tokens, in {:.1} s",
        args.output.display(),
        m.entries.len(),
        m.chunk_count,
        m.chunk_size,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
