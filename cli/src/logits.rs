//! `spinel logits`: the logits after a prompt given as token ids, for tests
//! and debugging.

use std::path::PathBuf;

use spinel_runtime::model::{KvType, Model, StateOptions};

use crate::run::KvArgs;

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF model file.
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// The prompt as comma-separated token ids (nothing is added).
    #[arg(long, value_delimiter = ',', required = true, num_args = 1..)]
    prompt_ids: Vec<u32>,
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

pub fn run(args: &Args) -> Result<(), String> {
    let (kv_type, kv_type_v) = args.kv.types(KvType::F32)?;
    let model = Model::load(&args.model).map_err(|e| format!("{}: {e}", args.model.display()))?;
    let mut state = model
        .new_state_with(&StateOptions {
            n_ctx: Some(args.ctx.unwrap_or(args.prompt_ids.len())),
            kv_type,
            kv_type_v: Some(kv_type_v),
            kv_rotation: args.kv.kv_rotation(),
            n_threads: args.threads,
            ..StateOptions::default()
        })
        .map_err(|e| e.to_string())?;
    let logits = model
        .forward(&mut state, &args.prompt_ids)
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
        args.prompt_ids.len(),
        args.top.min(logits.len())
    );
    for &id in order.iter().take(args.top) {
        println!("{id:>8} {:>12.6}", logits[id]);
    }
    Ok(())
}
