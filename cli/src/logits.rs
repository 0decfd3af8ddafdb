//! `spinel logits`: the logits after a prompt given as token ids or text
//! (optionally with an image and the model's mmproj file), for tests and
//! debugging.

use std::path::PathBuf;

use spinel_runtime::model::{KvType, Model, StateOptions};
use spinel_runtime::tokenizer::Tokenizer;
use spinel_runtime::vision::{MmprojFile, Vision, VisionPrompt, decode_image};

use crate::run::KvArgs;

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF model file.
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// The prompt as comma-separated token ids (nothing is added).
    #[arg(long, value_delimiter = ',', num_args = 1.., required_unless_present = "prompt", conflicts_with = "prompt")]
    prompt_ids: Vec<u32>,
    /// The prompt as text: special tokens are parsed, nothing is added (a
    /// chat-formatted prompt carries its own `<|begin_of_text|>`). With
    /// `--image`, its `<|image|>` marks where the image goes.
    #[arg(long)]
    prompt: Option<String>,
    /// The vision tower (`OUT.mmproj.gguf` from `spinel convert`).
    #[arg(long, requires = "image")]
    mmproj: Option<PathBuf>,
    /// A PNG or JPEG image for the prompt's `<|image|>` (needs --mmproj).
    #[arg(long, requires = "mmproj", requires = "prompt")]
    image: Option<PathBuf>,
    /// Context length (default: the prompt's length).
    #[arg(short = 'c', long)]
    ctx: Option<usize>,
    /// KV cache types (f32, exact, by default).
    #[command(flatten)]
    kv: KvArgs,
    /// Threads (default: all cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Print one JSON object `{"logits": [...]}` (all of the last position).
    #[arg(long)]
    json: bool,
    /// How many of the largest logits to list without `--json`.
    #[arg(long, default_value_t = 10)]
    top: usize,
}

/// The prompt's tokens, with its image encoded when there is one.
fn prompt_tokens(
    args: &Args,
    model: &Model<'_>,
) -> Result<(Vec<u32>, Option<VisionPrompt>), String> {
    let Some(text) = &args.prompt else {
        return Ok((args.prompt_ids.clone(), None));
    };
    let tok = Tokenizer::from_gguf(model.gguf()).map_err(|e| e.to_string())?;
    let ids = tok.encode(text, false, true).map_err(|e| e.to_string())?;
    let (Some(mmproj), Some(image)) = (&args.mmproj, &args.image) else {
        return Ok((ids, None));
    };
    // SAFETY: the mmproj file is only read; like the model file, it must
    // not be changed while this command runs.
    let file =
        unsafe { MmprojFile::open(mmproj) }.map_err(|e| format!("{}: {e}", mmproj.display()))?;
    let vision =
        Vision::new(&file, model.config()).map_err(|e| format!("{}: {e}", mmproj.display()))?;
    let bytes = std::fs::read(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let img = decode_image(&bytes).map_err(|e| format!("{}: {e}", image.display()))?;
    let vp = vision
        .prompt(&tok, &ids, &[img])
        .map_err(|e| e.to_string())?;
    Ok((vp.tokens().to_vec(), Some(vp)))
}

pub fn run(args: &Args) -> Result<(), String> {
    let (kv_type, kv_type_v) = args.kv.types(KvType::F32)?;
    let model = Model::load(&args.model).map_err(|e| format!("{}: {e}", args.model.display()))?;
    let (tokens, image) = prompt_tokens(args, &model)?;
    let mut state = model
        .new_state_with(&StateOptions {
            n_ctx: Some(args.ctx.unwrap_or(tokens.len())),
            kv_type,
            kv_type_v: Some(kv_type_v),
            kv_rotation: args.kv.kv_rotation(),
            n_threads: args.threads,
            ..StateOptions::default()
        })
        .map_err(|e| e.to_string())?;
    let logits = match &image {
        Some(vp) => vp.prefill(&model, &mut state),
        None => model.forward(&mut state, &tokens),
    }
    .map_err(|e| e.to_string())?;

    if args.json {
        println!("{}", serde_json::json!({ "logits": logits }));
        return Ok(());
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    println!(
        "{} logits after {} tokens; the {} largest:",
        logits.len(),
        tokens.len(),
        args.top.min(logits.len())
    );
    for &id in order.iter().take(args.top) {
        println!("{id:>8} {:>12.6}", logits[id]);
    }
    Ok(())
}
