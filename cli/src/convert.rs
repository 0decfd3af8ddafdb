//! `spinel convert HF_DIR -o OUT.gguf [--outtype f32|f16|bf16|q8_0]
//! [--mmproj-out PATH]`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args as ClapArgs;
use indicatif::{ProgressBar, ProgressStyle};
use spinel_runtime::convert::{Conversion, ConvertOptions, OutType, ProgressEvent};

/// Convert a Hugging Face checkpoint (Llama, Llama 4, Llama 3.2 Vision) to
/// GGUF. Multimodal checkpoints also give an mmproj file with the vision
/// tower and projector.
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
    /// Where the vision tower and projector of a multimodal checkpoint go
    /// (default: OUT with `.gguf` replaced by `.mmproj.gguf`).
    #[arg(long = "mmproj-out")]
    mmproj_out: Option<PathBuf>,
}

/// `OUT.gguf` → `OUT.mmproj.gguf` (`OUT` → `OUT.mmproj.gguf`).
fn default_mmproj_path(out: &std::path::Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".gguf").unwrap_or(&name);
    out.with_file_name(format!("{stem}.mmproj.gguf"))
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
    if conv.has_mmproj() {
        let path = args
            .mmproj_out
            .clone()
            .unwrap_or_else(|| default_mmproj_path(&args.out));
        let n = conv.mmproj_tensors().len();
        eprintln!(
            "converting the vision tower → {} [{}]: {n} tensors",
            path.display(),
            args.outtype
        );
        if let Some(size) = conv
            .write_mmproj(&path, &mut |_| {})
            .map_err(|e| e.to_string())?
        {
            eprintln!(
                "wrote {} ({:.1} MiB)",
                path.display(),
                size as f64 / (1 << 20) as f64
            );
        }
    } else if args.mmproj_out.is_some() {
        return Err(format!(
            "--mmproj-out: {} has no vision tower",
            conv.hf_architecture()
        ));
    }
    Ok(())
}
