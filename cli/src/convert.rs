//! `spinel convert HF_DIR -o OUT.gguf [--outtype f32|f16|bf16|q8_0]`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args as ClapArgs;
use indicatif::{ProgressBar, ProgressStyle};
use spinel_runtime::convert::{Conversion, ConvertOptions, OutType, ProgressEvent};

/// Convert a Hugging Face checkpoint (Llama, Llama 4 text) to GGUF.
#[derive(ClapArgs)]
pub struct Args {
    /// The checkpoint folder (config.json, *.safetensors, tokenizer files).
    hf_dir: PathBuf,
    /// The GGUF file to write.
    #[arg(short = 'o', long = "outfile")]
    out: PathBuf,
    /// Type of the 2-D weights (norms, biases and the MoE router stay f32).
    #[arg(long, default_value = "f16", value_parser = parse_outtype)]
    outtype: OutType,
    /// `general.name` (default: the folder name).
    #[arg(long)]
    name: Option<String>,
}

fn parse_outtype(s: &str) -> Result<OutType, String> {
    OutType::from_name(s).ok_or_else(|| {
        let names: Vec<_> = OutType::ALL.iter().map(|t| t.name()).collect();
        format!("unknown out type {s:?} (one of {})", names.join(", "))
    })
}

pub fn run(args: &Args) -> Result<(), String> {
    let opts = ConvertOptions {
        outtype: args.outtype,
        name: args.name.clone(),
    };
    let conv = Conversion::plan(&args.hf_dir, &opts).map_err(|e| e.to_string())?;
    for note in conv.notes() {
        eprintln!("spinel: note: {note}");
    }
    let n_tensors = conv.tensors().len();
    eprintln!(
        "converting {} ({}) → {} [{}]: {n_tensors} tensors, {:.1} MiB",
        args.hf_dir.display(),
        conv.hf_architecture(),
        args.out.display(),
        args.outtype,
        conv.data_bytes() as f64 / (1 << 20) as f64,
    );
    // Hidden automatically when stderr is not a terminal.
    let bar = ProgressBar::new(conv.data_bytes());
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40.cyan/blue} {bytes}/{total_bytes} ({bytes_per_sec}, {eta}) {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let size = conv
        .write(&args.out, &mut |p| {
            bar.set_position(p.bytes_done);
            if p.event == ProgressEvent::Tensor {
                bar.set_message(format!(
                    "[{}/{}] {} ({})",
                    p.index + 1,
                    p.count,
                    p.name,
                    p.ty
                ));
            }
        })
        .map_err(|e| e.to_string());
    bar.finish_and_clear();
    let size = size?;
    eprintln!(
        "wrote {} ({:.1} MiB)",
        args.out.display(),
        size as f64 / (1 << 20) as f64
    );
    Ok(())
}
