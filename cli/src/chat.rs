//! `spinel chat`: a multi-turn conversation with the model's chat template.
//!
//! Interactive on a terminal: a `> ` prompt, answers streamed as they come,
//! Ctrl-C stops the answer being written (the conversation goes on with
//! what was said so far), Ctrl-C at the prompt, Ctrl-D or `/exit` quits,
//! `/reset` starts a new conversation. With stdin not a terminal, each line
//! read is one user turn, its answer printed on its own line(s), until EOF.
//!
//! The session keeps the conversation and its KV cache, so each turn only
//! runs the tokens the cache does not hold yet. With `--session FILE` both
//! are saved to FILE after every turn and restored from it at the start, so
//! reopening a long chat costs nothing to reprocess.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use spinel_runtime::engine::{CancelHandle, EngineError, GenerateOptions, StopReason};

use crate::fetch;
use crate::run::{
    SamplingArgs, SessionArgs, SpeculativeArgs, load_engine_with_vision, max_tokens, read_images,
    stats_line,
};

/// Chat with a model (default: the SmolLM2-135M-Instruct demo model,
/// fetched into the cache on first use).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF model file (default: SmolLM2-135M-Instruct.Q4_1.gguf from
    /// ${SPINEL_CACHE:-${XDG_CACHE_HOME:-~/.cache}/spinel}/models, fetched
    /// there once if missing).
    #[arg(short = 'm', long)]
    model: Option<PathBuf>,
    /// A system message to start the conversation with.
    #[arg(long)]
    system: Option<String>,
    /// Tokens per answer at most (-1: until the model ends its turn or the
    /// context is full).
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, allow_negative_numbers = true)]
    n_predict: i64,
    /// Stop an answer when this text appears (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Print each answer's token counts and speeds on stderr.
    #[arg(long)]
    stats: bool,
    /// Save the conversation and its KV cache to this file after every turn,
    /// and go on from it if it exists (same model and KV cache type).
    #[arg(long)]
    session: Option<PathBuf>,
    /// An image for the first turn (repeatable; `/image PATH` adds one to
    /// the next turn). Needs --mmproj.
    #[arg(long, value_name = "PATH")]
    image: Vec<PathBuf>,
    /// The vision model (`OUT.mmproj.gguf` from `spinel convert`).
    #[arg(long, value_name = "PATH")]
    mmproj: Option<PathBuf>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    session_args: SessionArgs,
    #[command(flatten)]
    speculative: SpeculativeArgs,
}

/// What the Ctrl-C handler needs: whether an answer is being generated,
/// and how to stop it.
struct Interrupt {
    generating: AtomicBool,
    cancel: CancelHandle,
}

pub fn run(args: &Args) -> Result<(), String> {
    let path = match &args.model {
        Some(p) => p.clone(),
        None => fetch::default_model()?,
    };
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("spinel: loading {}", path.display());
    }
    let engine = load_engine_with_vision(&path, args.mmproj.as_deref(), &args.session_args)?;
    // Images for the next turn.
    let mut images = read_images(&args.image)?;
    engine
        .chat_template()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut session = engine
        .session(&args.session_args.options()?)
        .map_err(|e| e.to_string())?;
    let restored = match &args.session {
        Some(file) if file.exists() => {
            session.restore(file).map_err(|e| e.to_string())?;
            if interactive {
                eprintln!(
                    "spinel: restored {} messages ({} tokens) from {}",
                    session.messages().len(),
                    session.cached_tokens().len(),
                    file.display()
                );
            }
            true
        }
        _ => false,
    };
    if let (Some(system), false) = (&args.system, restored) {
        session.set_system(system.clone());
    }
    let save = |session: &spinel_runtime::engine::Session| -> Result<(), String> {
        match &args.session {
            Some(file) => session.save(file).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    };
    let opts = args.sampling.constrain(GenerateOptions {
        sampling: args.sampling.params(),
        max_tokens: max_tokens(args.n_predict),
        stop: args.stop.clone(),
        speculative: args.speculative.options(&engine, &args.session_args)?,
        ..GenerateOptions::default()
    })?;

    // Ctrl-C while an answer is being written cancels it; at the prompt it
    // quits. Without a handler SIGINT would kill the program mid-answer.
    let interrupt = Arc::new(Interrupt {
        generating: AtomicBool::new(false),
        cancel: session.cancel_handle(),
    });
    let handler = Arc::clone(&interrupt);
    ctrlc::set_handler(move || {
        if handler.generating.load(Ordering::Acquire) {
            handler.cancel.cancel();
        } else {
            let mut out = std::io::stdout();
            let _ = writeln!(out);
            let _ = out.flush();
            std::process::exit(0);
        }
    })
    .map_err(|e| format!("installing the Ctrl-C handler: {e}"))?;

    if interactive {
        eprintln!(
            "spinel: chatting with {} ({} tokens of context). Ctrl-C stops an answer; \
             Ctrl-C at the prompt, Ctrl-D or /exit quits; /reset starts over.",
            path.file_name().map_or(path.display().to_string(), |n| n
                .to_string_lossy()
                .into_owned()),
            session.n_ctx(),
        );
    }

    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut line = String::new();
    let mut failures = 0usize;
    loop {
        if interactive {
            print!("> ");
            let _ = std::io::stdout().flush();
        }
        line.clear();
        let n = input
            .read_line(&mut line)
            .map_err(|e| format!("reading stdin: {e}"))?;
        if n == 0 {
            if interactive {
                println!();
            }
            break;
        }
        let text = line.trim_end_matches(['\n', '\r']);
        if let Some(path) = text.trim().strip_prefix("/image ") {
            match read_images(&[PathBuf::from(path.trim())]) {
                Ok(img) => {
                    images.extend(img);
                    if interactive {
                        eprintln!("spinel: {} image(s) for the next turn", images.len());
                    }
                }
                Err(e) => {
                    failures += 1;
                    eprintln!("spinel: {e}");
                }
            }
            continue;
        }
        match text.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                session.reset();
                if let Some(system) = &args.system {
                    session.set_system(system.clone());
                }
                save(&session)?;
                if interactive {
                    eprintln!("spinel: new conversation");
                }
                continue;
            }
            _ => {}
        }

        interrupt.generating.store(true, Ordering::Release);
        let mut out = stdout.lock();
        let mut broken = false;
        let turn_images = std::mem::take(&mut images);
        let result = session.chat_with_images(text, turn_images, &opts, |piece| {
            if !broken && !piece.text.is_empty() {
                broken = out
                    .write_all(piece.text.as_bytes())
                    .and_then(|()| out.flush())
                    .is_err();
            }
        });
        interrupt.generating.store(false, Ordering::Release);
        let _ = writeln!(out).and_then(|()| out.flush());
        drop(out);
        save(&session)?;
        if broken {
            // Nobody reads the answers any more.
            return Ok(());
        }
        match result {
            Ok(g) => {
                if g.stop == StopReason::Cancelled && interactive {
                    eprintln!("[stopped]");
                }
                if args.stats {
                    eprintln!("{}", stats_line(&g));
                }
            }
            Err(e) => {
                failures += 1;
                eprintln!("spinel: {e}");
                if matches!(e, EngineError::PromptTooLong { .. }) {
                    eprintln!("spinel: /reset starts a new conversation (or give a longer -c)");
                }
            }
        }
    }
    if failures > 0 && !interactive {
        return Err(format!("{failures} turn(s) failed"));
    }
    Ok(())
}
