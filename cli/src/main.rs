//! `spinel`: the command-line front end. A thin shell over spinel-runtime.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod bench;
mod chat;
mod convert;
mod fetch;
mod imatrix;
mod inspect;
mod logits;
mod memory;
mod perplexity;
mod quantize;
mod run;
mod serve;
mod tokenize;

#[derive(Parser)]
#[command(
    name = "spinel",
    version,
    about = "Run Llama-family models from GGUF files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the kernel ISA this CPU uses (and all it supports).
    Isa {
        /// One JSON object: the selected ISA, the supported ones, and per
        /// type which products have kernels of the selected ISA.
        #[arg(long)]
        json: bool,
    },
    /// Show a GGUF file's metadata and tensors.
    Inspect {
        /// The GGUF file.
        file: PathBuf,
        /// Print one JSON object instead of the human-readable report.
        #[arg(long)]
        json: bool,
    },
    /// Print the last-position logits of a prompt given as token ids.
    Logits(logits::Args),
    /// Convert a Hugging Face checkpoint (Llama, Llama 4 text) to GGUF.
    Convert(convert::Args),
    /// Generate a continuation of a prompt, streamed to stdout.
    Run(run::Args),
    /// Chat with a model (default: the SmolLM2-135M-Instruct demo model).
    Chat(chat::Args),
    /// Turn text into token ids with a model's tokenizer.
    Tokenize(tokenize::Args),
    /// Serve a model over an OpenAI-compatible HTTP API.
    Serve(serve::Args),
    /// Measure prompt processing and generation speed (llama-bench's tests).
    Bench(bench::Args),
    /// Quantize a GGUF file or checkpoint with llama-quantize's type mixes.
    Quantize(quantize::Args),
    /// Measure perplexity on a text the way llama-perplexity does.
    Perplexity(perplexity::Args),
    /// Compute an importance matrix for `quantize --imatrix` (llama-imatrix's).
    Imatrix(imatrix::Args),
    /// Write a synthetic ~2 GiB checkpoint (for tests of streaming).
    #[command(hide = true)]
    Synth(memory::SynthArgs),
}

/// `spinel isa`: the selected ISA, the supported ones and, with `json`,
/// the kernel table `{"selected", "supported", "kernels": {TYPE: {"vec_dot",
/// "gemv", "gemm"}}}` of the selected ISA.
fn print_isa(json: bool) {
    let k = spinel_quant::Kernels::get();
    let all: Vec<_> = spinel_quant::Isa::supported().map(|i| i.name()).collect();
    if !json {
        println!("selected: {}", k.isa());
        println!("supported: {}", all.join(", "));
        return;
    }
    let kernels: serde_json::Map<String, serde_json::Value> = spinel_quant::GgmlType::ALL
        .into_iter()
        .map(|t| {
            let s = k.specialised(t);
            let v = serde_json::json!({"vec_dot": s.vec_dot, "gemv": s.gemv, "gemm": s.gemm});
            (t.name().to_string(), v)
        })
        .collect();
    let out = serde_json::json!({
        "selected": k.isa().name(),
        "supported": all,
        "kernels": kernels,
    });
    println!("{out}");
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(std::env::args_os().map(run::llama_cpp_flag));
    let result: Result<(), String> = match cli.command {
        Command::Isa { json } => {
            print_isa(json);
            Ok(())
        }
        Command::Inspect { file, json } => inspect::run(&file, json),
        Command::Logits(args) => logits::run(&args),
        Command::Convert(args) => convert::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Chat(args) => chat::run(&args),
        Command::Tokenize(args) => tokenize::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Quantize(args) => quantize::run(&args),
        Command::Perplexity(args) => perplexity::run(&args),
        Command::Imatrix(args) => imatrix::run(&args),
        Command::Synth(args) => memory::synth(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spinel: {e}");
            ExitCode::FAILURE
        }
    }
}
