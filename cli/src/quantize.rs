//! `spinel quantize IN OUT.gguf --type TYPE [-t THREADS]`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args as ClapArgs;
use indicatif::{ProgressBar, ProgressStyle};
use spinel_runtime::convert::{Conversion, ConvertOptions, OutType};
use spinel_runtime::gguf::MappedGguf;
use spinel_runtime::imatrix::Imatrix;
use spinel_runtime::quantize::rotate::{RotateOptions, rotate_file};
use spinel_runtime::quantize::{FileType, ImatrixUse, QuantizeError, mmproj, quantize_file};

/// Quantize a GGUF file (or a Hugging Face checkpoint folder) with
/// llama-quantize's per-tensor type choices.
#[derive(ClapArgs)]
pub struct Args {
    /// The input: a GGUF file or a checkpoint folder.
    input: PathBuf,
    /// The GGUF file to write.
    out: PathBuf,
    /// f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_m, q4_k_s,
    /// q4_k_m, q5_k_m, q6_k, iq4_nl, iq4_xs, iq3_s, iq3_m; iq3_xs, iq3_xxs,
    /// iq2_m, iq2_s, iq2_xs, iq2_xxs, iq1_m, iq1_s (these need an importance
    /// matrix, as in llama-quantize); w4a8 (Meta's quantized Llama 3.2
    /// recipe: Q4_0 for every linear layer, Q8_0 embeddings and output
    /// layer); or iq4_xs_m (Spinel's mix at iq4_xs's size, best with
    /// --imatrix from `spinel imatrix --process-output`: 5-bit output layer
    /// / tied embeddings, Q8_0 attention values, 5-bit attention
    /// q/k/output and ffn_down, IQ4_XS gate and up).
    #[arg(long = "type", value_parser = parse_type)]
    ty: FileType,
    /// Threads (default: all cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Rotate the weights before quantizing (SpinQuant's offline R1/R2, no
    /// run-time cost): RMSNorm gains fused into the next linear layers,
    /// tied embeddings untied, the residual stream rotated by a randomized
    /// Hadamard (or random orthogonal) R1 and each layer's value heads by
    /// R2. Exact in f32; spreads outliers so 4-bit types lose less. The
    /// file still runs in llama.cpp. Dense llama models only.
    #[arg(long)]
    rotate: bool,
    /// --rotate plus the online rotations Spinel applies at run time: R4
    /// (an FWHT of the SwiGLU output, with down_proj pre-rotated) and R3
    /// (an FWHT of q and k heads after RoPE, for a quantized K cache).
    /// Recorded in the file's `spinel.rotation.*` metadata; such a file is
    /// for Spinel only (llama.cpp would ignore the online parts).
    #[arg(long)]
    rotate_online: bool,
    /// Seed of the random signs / matrices of the rotations.
    #[arg(long, default_value_t = 0x5eed)]
    rotation_seed: u64,
    /// Leave up to N residual channels out of R1: those carrying a large
    /// share of the normalized residual on every token (massive
    /// activations, found by running the f32 model on pseudo-random
    /// tokens); their norm gains stay in the norms. Rotating them spreads
    /// their energy into the quantization noise of every weight. 0 rotates
    /// every channel (plain SpinQuant).
    #[arg(long, default_value_t = 16, value_name = "N")]
    rotate_keep_outliers: usize,
    /// An importance matrix (`spinel imatrix` or `llama-imatrix`, GGUF or
    /// legacy .dat): quantize as `llama-quantize --imatrix` does, each
    /// weight's error weighted by the mean square of its input column.
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,
}

fn parse_type(s: &str) -> Result<FileType, String> {
    FileType::from_name(s).ok_or_else(|| {
        let names: Vec<_> = FileType::ALL.iter().map(|t| t.name()).collect();
        format!("unknown type {s:?} (one of {})", names.join(", "))
    })
}

pub fn run(args: &Args) -> Result<(), String> {
    let t0 = Instant::now();
    if args.imatrix.is_some() && (args.rotate || args.rotate_online) {
        return Err(
            "--imatrix cannot be combined with --rotate: the importance matrix \
                    describes the unrotated weights' inputs"
                .into(),
        );
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // A checkpoint folder is converted to f32 first (next to the output).
    let mut tmp = None;
    let input: &Path = if args.input.is_dir() {
        let mut name = args.out.file_name().unwrap_or_default().to_os_string();
        name.push(".f32.tmp");
        let path = args.out.with_file_name(name);
        eprintln!("converting {} to f32 first", args.input.display());
        let opts = ConvertOptions {
            outtype: OutType::F32,
            name: None,
        };
        let conv = Conversion::plan(&args.input, &opts).map_err(|e| e.to_string())?;
        conv.write(&path, &mut |_| {}).map_err(|e| e.to_string())?;
        tmp = Some(path);
        tmp.as_deref().unwrap()
    } else {
        &args.input
    };
    let result = if args.rotate || args.rotate_online {
        let mut name = args.out.file_name().unwrap_or_default().to_os_string();
        name.push(".rotated.tmp");
        let rotated = args.out.with_file_name(name);
        let r = rotate(args, input, &rotated, threads)
            .and_then(|()| quantize(args, &rotated, threads, t0));
        let _ = std::fs::remove_file(&rotated);
        r
    } else {
        quantize(args, input, threads, t0)
    };
    if let Some(p) = tmp {
        let _ = std::fs::remove_file(p);
    }
    result
}

/// Writes the rotated f32 model to `out`.
fn rotate(args: &Args, input: &Path, out: &Path, threads: usize) -> Result<(), String> {
    let t0 = Instant::now();
    // SAFETY: as in `quantize`.
    let m = unsafe { MappedGguf::open(input) }.map_err(|e| e.to_string())?;
    let opts = RotateOptions {
        online: args.rotate_online,
        seed: args.rotation_seed,
        keep_outliers: args.rotate_keep_outliers,
    };
    eprintln!(
        "rotating {} (seed {}{})",
        input.display(),
        opts.seed,
        if opts.online {
            ", with online R3/R4"
        } else {
            ""
        }
    );
    let s = rotate_file(m.file(), out, &opts, threads).map_err(|e| e.to_string())?;
    if !s.kept.is_empty() {
        let kept: Vec<String> = s
            .kept
            .iter()
            .map(|(i, share)| format!("{i} ({:.1}%)", share * 100.0))
            .collect();
        eprintln!(
            "channels left out of R1 (mean share of the normalized residual): {}",
            kept.join(", ")
        );
    }
    eprintln!(
        "rotated: R1 {}, R2 {}{}{} in {:.1} s",
        s.r1,
        s.r2,
        if s.untied { ", embeddings untied" } else { "" },
        if opts.online { ", R3 + R4 online" } else { "" },
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn quantize(args: &Args, input: &Path, threads: usize, t0: Instant) -> Result<(), String> {
    // SAFETY: the input is read-only while it is mapped (Spinel's contract
    // for model files).
    let m = unsafe { MappedGguf::open(input) }.map_err(|e| e.to_string())?;
    let file = m.file();
    if mmproj::is_mmproj(file) {
        // Refused before anything is printed or read.
        if !mmproj::MMPROJ_TYPES.contains(&args.ty) {
            return Err(QuantizeError::MmprojType(args.ty).to_string());
        }
        if args.imatrix.is_some() {
            return Err(
                "--imatrix does not apply to an mmproj file (the vision tower is \
                        kept at q8_0 or f16, which quantize without one)"
                    .into(),
            );
        }
    }
    let requant = file
        .tensors()
        .iter()
        .filter(|t| t.ggml_type().is_quantized())
        .count();
    if requant > 0 {
        eprintln!(
            "spinel: warning: {} holds {requant} quantized tensors; they are dequantized \
             and quantized again, which loses more than quantizing the original weights",
            input.display()
        );
    }
    let total: u64 = file.tensors().iter().map(|t| t.n_elements()).sum();
    eprintln!(
        "quantizing {} → {} [{}], {} tensors, {threads} threads",
        args.input.display(),
        args.out.display(),
        args.ty,
        file.tensors().len()
    );
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40.cyan/blue} {percent:>3}% ({eta}) {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let imatrix = match &args.imatrix {
        Some(p) => {
            let m = Imatrix::load(p).map_err(|e| format!("{}: {e}", p.display()))?;
            if !m.legacy && !m.has_metadata {
                return Err(format!(
                    "{}: missing imatrix metadata (imatrix.datasets, imatrix.chunk_count, \
                     imatrix.chunk_size)",
                    p.display()
                ));
            }
            eprintln!(
                "importance matrix {}: {} entries, {} chunks{}",
                p.display(),
                m.entries.len(),
                m.chunk_count,
                m.datasets
                    .first()
                    .map(|d| format!(", dataset {d}"))
                    .unwrap_or_default()
            );
            Some(m)
        }
        None => None,
    };
    if imatrix.is_none() && args.ty == FileType::IQ4XSM {
        eprintln!(
            "note: iq4_xs_m without --imatrix: an importance matrix lowers its error \
             further, most with `spinel imatrix --process-output` (SmolLM2-135M: KL \
             divergence 0.092 without, 0.062 with llama-imatrix's, 0.053 with that one)"
        );
    }
    let weights = imatrix.as_ref().map(Imatrix::quant_weights);
    let file_name = args
        .imatrix
        .as_ref()
        .map(|p| p.to_string_lossy().into_owned());
    let im_use = match (&imatrix, &weights, &file_name) {
        (Some(m), Some(w), Some(f)) => Some(ImatrixUse {
            weights: w,
            file: f,
            dataset: m.datasets.first().map(String::as_str),
            chunk_count: m.chunk_count,
        }),
        _ => None,
    };
    let progress = &mut |p: spinel_runtime::quantize::Progress<'_>| {
        bar.set_position(p.elems_done);
        bar.set_message(format!(
            "[{}/{}] {} {} → {}",
            p.index + 1,
            p.count,
            p.name,
            p.from,
            p.to
        ));
    };
    let summary = quantize_file(file, &args.out, args.ty, threads, im_use.as_ref(), progress)
        .map_err(|e| e.to_string());
    bar.finish_and_clear();
    let s = summary?;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let types: Vec<String> = s
        .type_counts
        .iter()
        .map(|(t, n)| format!("{t}: {n}"))
        .collect();
    eprintln!(
        "wrote {}: {:.2} MiB (tensor data {:.2} MiB → {:.2} MiB), {:.3} bits per weight, \
         {} weights, in {:.1} s\ntensor types: {}",
        args.out.display(),
        mib(s.file_bytes),
        mib(s.data_bytes_in),
        mib(s.data_bytes_out),
        s.bits_per_weight(),
        s.n_elements,
        t0.elapsed().as_secs_f64(),
        types.join(", ")
    );
    Ok(())
}
