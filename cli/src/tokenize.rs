//! `spinel tokenize`: text to token ids with a model's tokenizer.

use std::path::PathBuf;

use serde_json::json;
use spinel_runtime::gguf::MappedGguf;
use spinel_runtime::tokenizer::Tokenizer;
use spinel_runtime::vision::{MmprojFile, expand_image_prompt};

/// Turn text into token ids with a model's tokenizer.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF model file (only its tokenizer metadata is read).
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// The text; special tokens written in it (<|im_start|>) are recognised.
    #[arg(long)]
    text: String,
    /// Leave BOS (and EOS) out even where the model's metadata adds them.
    #[arg(long)]
    no_bos: bool,
    /// Print one JSON object {"ids": [...], "tokens": [...]} (tokens are the
    /// vocabulary strings).
    #[arg(long)]
    json: bool,
    /// The vision model (`OUT.mmproj.gguf`): with --image, the text's
    /// <|image|> markers are expanded as the model's processor does.
    #[arg(long)]
    mmproj: Option<PathBuf>,
    /// An image for the next <|image|> marker of the text (repeatable;
    /// needs --mmproj). Only its size matters here.
    #[arg(long = "image")]
    images: Vec<PathBuf>,
}

/// `ids` with the image markers expanded for `args.images`.
fn expand(args: &Args, tok: &Tokenizer, ids: Vec<u32>) -> Result<Vec<u32>, String> {
    let Some(mmproj) = &args.mmproj else {
        return match args.images.is_empty() {
            true => Ok(ids),
            false => Err("--image needs --mmproj (the vision model's processor)".into()),
        };
    };
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", mmproj.display());
    // SAFETY: as the model file below: read-only, unchanged while mapped.
    let file = unsafe { MmprojFile::open(mmproj) }.map_err(|e| at(&e))?;
    let images = crate::run::read_images(&args.images)?;
    expand_image_prompt(&file, tok, &ids, &images).map_err(|e| e.to_string())
}

pub fn run(args: &Args) -> Result<(), String> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", args.model.display());
    // SAFETY: model files are read-only inputs; nothing modifies or
    // truncates this one while it is mapped (the same contract as
    // `Model::load`).
    let mapped = unsafe { MappedGguf::open(&args.model) }.map_err(|e| at(&e))?;
    let tok = Tokenizer::from_gguf(mapped.file()).map_err(|e| at(&e))?;
    let ids = tok
        .encode(&args.text, !args.no_bos, true)
        .map_err(|e| e.to_string())?;
    let ids = expand(args, &tok, ids)?;
    let tokens = ids
        .iter()
        .map(|&id| tok.token_text(id).map(str::to_owned))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;

    if args.json {
        println!("{}", json!({ "ids": ids, "tokens": tokens }));
        return Ok(());
    }
    for (&id, text) in ids.iter().zip(&tokens) {
        let piece = tok.token_to_piece(id).map_err(|e| e.to_string())?;
        println!(
            "{id:>7} -> {:?} ({text})",
            String::from_utf8_lossy(piece).as_ref()
        );
    }
    println!("{} tokens", ids.len());
    Ok(())
}
