//! Tokenizer metadata for the output file: the HF tokenizer converted by
//! [`Vocab::from_hf_dir`] (the tokenizer module owns the HF → GGUF rules),
//! checked by building a [`Tokenizer`] from it, plus what that conversion
//! leaves to the model folder: a chat template kept in `chat_template.jinja`
//! / `chat_template.json` (as llama.cpp's `SpecialVocab` reads them), and
//! `generation_config.json`'s BOS/EOS ids where the tokenizer names none.

use std::path::Path;

use crate::gguf::{GgufFile, GgufWriter, Value};
use crate::tokenizer::{Tokenizer, TokenizerError, Vocab};

use super::checkpoint::read_json;
use super::config::GenerationConfig;
use super::error::ConvertError;

/// Adds the `tokenizer.*` keys for the tokenizer files in `dir` to `kv`, or
/// a note when the folder has no tokenizer.
pub fn add_tokenizer(
    dir: &Path,
    gen_cfg: Option<&GenerationConfig>,
    kv: &mut Vec<(String, Value<'static>)>,
    notes: &mut Vec<String>,
) -> Result<(), ConvertError> {
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        if dir.join("tokenizer.model").exists() {
            return Err(ConvertError::Tokenizer {
                path: dir.join("tokenizer.model"),
                message: "SentencePiece model files are not read; the folder needs tokenizer.json"
                    .into(),
            });
        }
        notes.push(format!(
            "no tokenizer.json in {}: the file gets no tokenizer metadata",
            dir.display()
        ));
        return Ok(());
    }
    let err = |e: TokenizerError| ConvertError::Tokenizer {
        path: path.clone(),
        message: e.to_string(),
    };
    let mut vocab = Vocab::from_hf_dir(dir).map_err(err)?;

    if vocab.chat_template.is_none() {
        let jinja = dir.join("chat_template.jinja");
        let json = dir.join("chat_template.json");
        if jinja.is_file() {
            let t = std::fs::read_to_string(&jinja).map_err(|source| ConvertError::Io {
                path: jinja.clone(),
                source,
            })?;
            vocab.chat_template = Some(t);
        } else if json.is_file() {
            let v = read_json(&json)?;
            match v.get("chat_template") {
                Some(serde_json::Value::String(s)) => vocab.chat_template = Some(s.clone()),
                _ => {
                    return Err(ConvertError::BadJson {
                        path: json,
                        message: "no \"chat_template\" string".into(),
                    });
                }
            }
        }
    }
    if let Some(g) = gen_cfg {
        if vocab.bos_token_id.is_none() {
            vocab.bos_token_id = g.bos_token_id.first();
        }
        if vocab.eos_token_id.is_none() {
            vocab.eos_token_id = g.eos_token_id.first();
        }
    }

    // The runtime must be able to use what is written.
    let tok = Tokenizer::from_vocab(vocab.clone()).map_err(err)?;
    if let Some(g) = gen_cfg {
        let missed: Vec<u32> = g
            .eos_token_id
            .0
            .iter()
            .copied()
            .filter(|&id| !tok.is_eog(id))
            .collect();
        if !missed.is_empty() {
            notes.push(format!(
                "generation_config.json ends generation at token ids {missed:?}, which GGUF tokenizer metadata cannot mark as end-of-generation"
            ));
        }
    }

    let mut w = GgufWriter::new();
    vocab.write_gguf(&mut w).map_err(err)?;
    let bytes = w.to_bytes();
    let file = GgufFile::parse(&bytes)?;
    for (k, v) in file.metadata().iter() {
        kv.push((k.to_string(), v.clone().into_owned()));
    }
    Ok(())
}
