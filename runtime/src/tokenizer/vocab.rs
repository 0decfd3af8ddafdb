//! [`Vocab`]: the tokenizer metadata of a GGUF file, as data.

use crate::gguf::{Array, GgufError, GgufFile, GgufWriter, Metadata, Value};

use super::error::{Result, TokenizerError};

/// The GGUF metadata keys of the tokenizer (llama.cpp's names).
pub mod keys {
    pub const MODEL: &str = "tokenizer.ggml.model";
    pub const PRE: &str = "tokenizer.ggml.pre";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    pub const SCORES: &str = "tokenizer.ggml.scores";
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub const MERGES: &str = "tokenizer.ggml.merges";
    pub const BOS_ID: &str = "tokenizer.ggml.bos_token_id";
    pub const EOS_ID: &str = "tokenizer.ggml.eos_token_id";
    pub const EOT_ID: &str = "tokenizer.ggml.eot_token_id";
    pub const EOM_ID: &str = "tokenizer.ggml.eom_token_id";
    pub const UNK_ID: &str = "tokenizer.ggml.unknown_token_id";
    pub const PAD_ID: &str = "tokenizer.ggml.padding_token_id";
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
    pub const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
    pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";
}

/// The type of a token (`tokenizer.ggml.token_type`, llama.cpp's
/// `llama_token_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum TokenType {
    /// 0: no type given.
    Undefined = 0,
    /// 1: an ordinary piece of text.
    Normal = 1,
    /// 2: the unknown token (`<unk>`).
    Unknown = 2,
    /// 3: a control token (BOS, EOS, chat markers): matched in text only
    /// when asked, left out of decoded text when asked.
    Control = 3,
    /// 4: an added token that stands for its text; always matched in text
    /// before the model's own tokenization.
    UserDefined = 4,
    /// 5: a placeholder that never occurs.
    Unused = 5,
    /// 6: a byte-fallback token `<0xNN>`.
    Byte = 6,
}

impl TokenType {
    /// The type with GGUF value `v`.
    pub fn from_i32(v: i32) -> Option<TokenType> {
        Some(match v {
            0 => TokenType::Undefined,
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => return None,
        })
    }

    /// The GGUF value.
    pub fn as_i32(self) -> i32 {
        self as i32
    }
}

/// Everything GGUF stores about a tokenizer, following llama.cpp's keys
/// ([`keys`]). Optional keys are `None` when absent; nothing is defaulted or
/// checked here — [`Tokenizer::from_vocab`](super::Tokenizer::from_vocab)
/// interprets and validates.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Vocab {
    /// `tokenizer.ggml.model`: `"llama"` (SentencePiece BPE with byte
    /// fallback) or `"gpt2"` (byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name (`"llama-bpe"`,
    /// `"smollm"`, …).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: token texts by id (byte-level alphabet for
    /// `gpt2` normal tokens, `▁` for spaces in `llama` ones).
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores`: merge priorities for `llama` (higher first).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type`.
    pub token_types: Option<Vec<TokenType>>,
    /// `tokenizer.ggml.merges`: `"left right"` by rank, for `gpt2`.
    pub merges: Option<Vec<String>>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id` (end of turn).
    pub eot_token_id: Option<u32>,
    /// `tokenizer.ggml.eom_token_id` (end of message, Llama 3.1 tool calls).
    pub eom_token_id: Option<u32>,
    pub unknown_token_id: Option<u32>,
    pub padding_token_id: Option<u32>,
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece's dummy prefix).
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

fn wrong_type(key: &str, expected: &'static str, found: &Value<'_>) -> TokenizerError {
    TokenizerError::Gguf(GgufError::WrongType {
        key: key.to_string(),
        expected,
        found: found.type_description(),
    })
}

fn opt_id(md: &Metadata<'_>, key: &str, what: &'static str) -> Result<Option<u32>> {
    if !md.contains_key(key) {
        return Ok(None);
    }
    let id = md.get_uint(key)?;
    let id = u32::try_from(id).map_err(|_| TokenizerError::SpecialTokenOutOfRange {
        what,
        id,
        n_tokens: 0,
    })?;
    Ok(Some(id))
}

fn opt_bool(md: &Metadata<'_>, key: &str) -> Result<Option<bool>> {
    if md.contains_key(key) {
        Ok(Some(md.get_bool(key)?))
    } else {
        Ok(None)
    }
}

fn opt_str(md: &Metadata<'_>, key: &str) -> Result<Option<String>> {
    if md.contains_key(key) {
        Ok(Some(md.get_str(key)?.to_string()))
    } else {
        Ok(None)
    }
}

impl Vocab {
    /// Reads the tokenizer keys of a GGUF file.
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<Vocab> {
        Vocab::from_gguf_metadata(file.metadata())
    }

    /// Reads the tokenizer keys of GGUF metadata. Scores may be `FLOAT32`
    /// or `INT32` (as llama.cpp accepts); special token ids any non-negative
    /// integer type.
    pub fn from_gguf_metadata(md: &Metadata<'_>) -> Result<Vocab> {
        let model = md.get_str(keys::MODEL)?.to_string();
        let pre = opt_str(md, keys::PRE)?;
        let tokens: Vec<String> = md
            .get_str_array(keys::TOKENS)?
            .map(str::to_string)
            .collect();

        let scores = match md.get(keys::SCORES) {
            None => None,
            Some(v) => {
                let a = v
                    .as_array()
                    .ok_or_else(|| wrong_type(keys::SCORES, "ARRAY of FLOAT32", v))?;
                if let Some(s) = a.to_vec::<f32>() {
                    Some(s)
                } else if let Some(s) = a.to_vec::<i32>() {
                    Some(s.into_iter().map(|x| x as f32).collect())
                } else {
                    return Err(wrong_type(keys::SCORES, "ARRAY of FLOAT32", v));
                }
            }
        };

        let token_types = if md.contains_key(keys::TOKEN_TYPE) {
            let raw = md.get_array_of::<i32>(keys::TOKEN_TYPE)?;
            let mut types = Vec::with_capacity(raw.len());
            for (i, v) in raw.into_iter().enumerate() {
                let t = TokenType::from_i32(v).ok_or(TokenizerError::InvalidTokenType {
                    id: i as u32,
                    value: v,
                })?;
                types.push(t);
            }
            Some(types)
        } else {
            None
        };

        let merges = if md.contains_key(keys::MERGES) {
            Some(
                md.get_str_array(keys::MERGES)?
                    .map(str::to_string)
                    .collect(),
            )
        } else {
            None
        };

        Ok(Vocab {
            model,
            pre,
            tokens,
            scores,
            token_types,
            merges,
            bos_token_id: opt_id(md, keys::BOS_ID, "BOS")?,
            eos_token_id: opt_id(md, keys::EOS_ID, "EOS")?,
            eot_token_id: opt_id(md, keys::EOT_ID, "EOT")?,
            eom_token_id: opt_id(md, keys::EOM_ID, "EOM")?,
            unknown_token_id: opt_id(md, keys::UNK_ID, "unknown")?,
            padding_token_id: opt_id(md, keys::PAD_ID, "padding")?,
            add_bos_token: opt_bool(md, keys::ADD_BOS)?,
            add_eos_token: opt_bool(md, keys::ADD_EOS)?,
            add_space_prefix: opt_bool(md, keys::ADD_SPACE_PREFIX)?,
            chat_template: opt_str(md, keys::CHAT_TEMPLATE)?,
        })
    }

    /// Adds the tokenizer keys to a GGUF writer, with the value types
    /// llama.cpp's converter writes (`UINT32` ids, `FLOAT32` scores, `INT32`
    /// token types). Absent fields are not written.
    pub fn write_gguf(&self, w: &mut GgufWriter<'_>) -> Result<()> {
        w.add_kv(keys::MODEL, Value::from(self.model.clone()))?;
        if let Some(pre) = &self.pre {
            w.add_kv(keys::PRE, Value::from(pre.clone()))?;
        }
        w.add_kv(
            keys::TOKENS,
            Array::from_strings(self.tokens.iter().cloned()),
        )?;
        if let Some(scores) = &self.scores {
            w.add_kv(keys::SCORES, Array::from_scalars(scores))?;
        }
        if let Some(types) = &self.token_types {
            let raw: Vec<i32> = types.iter().map(|t| t.as_i32()).collect();
            w.add_kv(keys::TOKEN_TYPE, Array::from_scalars(&raw))?;
        }
        if let Some(merges) = &self.merges {
            w.add_kv(keys::MERGES, Array::from_strings(merges.iter().cloned()))?;
        }
        let ids = [
            (keys::BOS_ID, self.bos_token_id),
            (keys::EOS_ID, self.eos_token_id),
            (keys::EOT_ID, self.eot_token_id),
            (keys::EOM_ID, self.eom_token_id),
            (keys::UNK_ID, self.unknown_token_id),
            (keys::PAD_ID, self.padding_token_id),
        ];
        for (key, id) in ids {
            if let Some(id) = id {
                w.add_kv(key, Value::U32(id))?;
            }
        }
        let flags = [
            (keys::ADD_BOS, self.add_bos_token),
            (keys::ADD_EOS, self.add_eos_token),
            (keys::ADD_SPACE_PREFIX, self.add_space_prefix),
        ];
        for (key, flag) in flags {
            if let Some(flag) = flag {
                w.add_kv(key, Value::Bool(flag))?;
            }
        }
        if let Some(t) = &self.chat_template {
            w.add_kv(keys::CHAT_TEMPLATE, Value::from(t.clone()))?;
        }
        Ok(())
    }

    /// The type of token `id` (`Normal` when the file gives no types, as in
    /// llama.cpp).
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        if id as usize >= self.tokens.len() {
            return None;
        }
        Some(match &self.token_types {
            Some(t) => t.get(id as usize).copied().unwrap_or(TokenType::Undefined),
            None => TokenType::Normal,
        })
    }
}
