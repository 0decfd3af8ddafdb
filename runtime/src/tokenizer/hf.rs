//! [`Vocab`] from HF `tokenizer.json` + `tokenizer_config.json`, following
//! llama.cpp's `convert_hf_to_gguf.py`.
//!
//! * Byte-level BPE (`ByteLevel` pre-tokenizer) → `model = "gpt2"`, as
//!   `_set_vocab_gpt2` / `get_vocab_base`: tokens by id (`[PAD{i}]` of type
//!   unused for ids without a token), added tokens typed control when
//!   `special` (or when they look special: `<|…|>`), user-defined otherwise
//!   (with `▁` turned back into spaces), the rest normal; merges as
//!   `"left right"`.
//! * BPE with byte fallback and SentencePiece whitespace handling (Llama 1/2)
//!   → `model = "llama"`, as `_set_vocab_llama_hf`: `<0xNN>` tokens typed
//!   byte, special tokens control — except the unknown token, typed unknown
//!   as SentencePiece-converted GGUFs (the usual Llama 2 files) have it.
//!   Scores: llama.cpp's HF path writes -1000 for every token, which makes
//!   its own SentencePiece merge order arbitrary; here a token's score is
//!   minus the rank of the first merge that produces it, so merging by score
//!   (highest first) replays the merges of `tokenizer.json` in order — the
//!   same ordering SentencePiece's own scores give.
//! * `tokenizer.ggml.pre`: llama.cpp identifies the pre-tokenizer by hashing
//!   the token ids of a test string (`get_vocab_base_pre`), which needs the
//!   tokenizer running in Python. Here the `pre_tokenizer` JSON is recognised
//!   directly: `Split(<Llama 3 regex>) + ByteLevel` → `llama-bpe` (the name
//!   llama.cpp's hash gives Llama 3), `Split(<Llama 4 regex>) + ByteLevel` →
//!   `llama4`, `Digits(individual) + ByteLevel(regex)` → `smollm`,
//!   `ByteLevel(regex)` → `gpt-2`. Anything else is refused by name, as is a
//!   normalizer on a byte-level tokenizer (llama.cpp would drop it silently).
//! * Special tokens (`gguf.SpecialVocab`): `bos_token` / `eos_token` /
//!   `unk_token` / `pad_token` of `tokenizer_config.json` looked up among the
//!   added tokens; add-BOS/EOS from the `post_processor` (`TemplateProcessing`
//!   with a leading/trailing special token, `ByteLevel` alone: neither), else
//!   from `add_bos_token` / `add_eos_token`; a trailing special token that is
//!   not the EOS becomes EOS and the old EOS becomes EOT. `config.json` ids
//!   fill in what is still missing ([`Vocab::from_hf_dir`]).
//! * Added tokens that are not `normalized` are taken as they are (llama.cpp
//!   round-trips them through the Python tokenizer, which leaves the tokens
//!   of the Llama family unchanged).

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value as Json;

use super::error::{Result, TokenizerError};
use super::pretokenize::PreTokenizer;
use super::vocab::{TokenType, Vocab};

const TOKENIZER_JSON: &str = "tokenizer.json";
/// The largest vocabulary converted (the largest real ones have ~260k tokens;
/// ids are checked against this before anything is allocated for them).
const MAX_VOCAB: usize = 1 << 24;
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// Llama 3's pre-tokenizer regex as tokenizer.json writes it.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 4's.
const LLAMA4_REGEX: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-2's.
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

fn bad(what: &'static str, detail: impl Into<String>) -> TokenizerError {
    TokenizerError::BadHfTokenizer {
        what,
        detail: detail.into(),
    }
}

fn unsupported(detail: impl Into<String>) -> TokenizerError {
    TokenizerError::UnsupportedHfTokenizer {
        detail: detail.into(),
    }
}

fn parse(what: &'static str, text: &str) -> Result<Json> {
    serde_json::from_str(text).map_err(|source| TokenizerError::Json { what, source })
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A pre-tokenizer / normalizer / processor node as a list: the members of a
/// `Sequence`, or the node itself.
fn seq<'a>(node: &'a Json, members: &str) -> Vec<&'a Json> {
    match node.get("type").and_then(Json::as_str) {
        Some("Sequence") => node
            .get(members)
            .and_then(Json::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        _ if node.is_null() => Vec::new(),
        _ => vec![node],
    }
}

fn ty(node: &Json) -> &str {
    node.get("type").and_then(Json::as_str).unwrap_or("")
}

fn flag(node: &Json, key: &str) -> Option<bool> {
    node.get(key).and_then(Json::as_bool)
}

/// A special token entry of tokenizer_config.json: a string or `{content}`.
fn token_content(entry: Option<&Json>) -> Option<String> {
    match entry? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// llama.cpp's `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

fn is_byte_token(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 6
        && t.starts_with("<0x")
        && b[5] == b'>'
        && b[3].is_ascii_hexdigit()
        && b[4].is_ascii_hexdigit()
}

struct Added {
    id: u32,
    content: String,
    special: bool,
}

fn id_of(v: &Json, what: &'static str, ctx: &str) -> Result<u32> {
    v.as_u64()
        .and_then(|x| u32::try_from(x).ok())
        .filter(|&x| x < u32::MAX)
        .ok_or_else(|| bad(what, format!("{ctx}: id {v} is not a 32-bit token id")))
}

/// The merges of a BPE model as `"left right"` strings: the old string form
/// as is, the newer `[left, right]` pairs joined, with spaces inside a part
/// written as U+0120 (as llama.cpp's `SpecialVocab` does).
fn merges_of(model: &Json) -> Result<Vec<String>> {
    let Some(list) = model.get("merges") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| bad(TOKENIZER_JSON, "model.merges is not an array"))?;
    list.iter()
        .enumerate()
        .map(|(i, m)| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) if pair.len() == 2 => {
                let part = |p: &Json| {
                    p.as_str()
                        .map(|s| s.replace(' ', "\u{120}"))
                        .ok_or_else(|| {
                            bad(
                                TOKENIZER_JSON,
                                format!("model.merges[{i}] is not two strings"),
                            )
                        })
                };
                Ok(format!("{} {}", part(&pair[0])?, part(&pair[1])?))
            }
            _ => Err(bad(
                TOKENIZER_JSON,
                format!("model.merges[{i}] is neither \"a b\" nor [a, b]"),
            )),
        })
        .collect()
}

/// Recognises a byte-level tokenizer's pre-tokenizer.
fn byte_level_pre(pre: &Json) -> Result<PreTokenizer> {
    let steps = seq(pre, "pretokenizers");
    let byte_level = |n: &Json, regex: bool| {
        ty(n) == "ByteLevel"
            && !flag(n, "add_prefix_space").unwrap_or(false)
            && flag(n, "use_regex").unwrap_or(true) == regex
    };
    let found = match steps.as_slice() {
        [b] if byte_level(b, true) => Some(PreTokenizer::Gpt2),
        [d, b]
            if ty(d) == "Digits"
                && flag(d, "individual_digits") == Some(true)
                && byte_level(b, true) =>
        {
            Some(PreTokenizer::Smollm)
        }
        [s, b] if ty(s) == "Split" && byte_level(b, false) => {
            let regex = s
                .get("pattern")
                .and_then(|p| p.get("Regex"))
                .and_then(Json::as_str);
            let isolated = s.get("behavior").and_then(Json::as_str) == Some("Isolated")
                && !flag(s, "invert").unwrap_or(false);
            match regex {
                Some(LLAMA3_REGEX) if isolated => Some(PreTokenizer::Llama3),
                Some(LLAMA4_REGEX) if isolated => Some(PreTokenizer::Llama4),
                Some(GPT2_REGEX) if isolated => Some(PreTokenizer::Gpt2),
                _ => None,
            }
        }
        _ => None,
    };
    found.ok_or_else(|| {
        unsupported(format!(
            "byte-level pre_tokenizer {pre} is not one of Llama 3, Llama 4, SmolLM, GPT-2"
        ))
    })
}

/// Whether the normalizer / pre-tokenizer pair is SentencePiece's whitespace
/// handling; `Some(add_space_prefix)` if so.
fn spm_whitespace(normalizer: &Json, pre: &Json) -> Option<bool> {
    let norms = seq(normalizer, "normalizers");
    let is_prepend =
        |n: &Json| ty(n) == "Prepend" && n.get("prepend").and_then(Json::as_str) == Some("▁");
    let is_replace = |n: &Json| {
        ty(n) == "Replace"
            && n.get("pattern")
                .and_then(|p| p.get("String"))
                .and_then(Json::as_str)
                == Some(" ")
            && n.get("content").and_then(Json::as_str) == Some("▁")
    };
    match (norms.as_slice(), pre.is_null()) {
        ([p, r], true) if is_prepend(p) && is_replace(r) => Some(true),
        ([r], true) if is_replace(r) => Some(false),
        ([], false)
            if ty(pre) == "Metaspace"
                && pre.get("replacement").and_then(Json::as_str) == Some("▁") =>
        {
            let prepend = match pre.get("prepend_scheme").and_then(Json::as_str) {
                Some(scheme) => scheme != "never",
                None => flag(pre, "add_prefix_space").unwrap_or(true),
            };
            Some(prepend)
        }
        _ => None,
    }
}

impl Vocab {
    /// Converts an HF tokenizer (the text of `tokenizer.json` and, if there
    /// is one, of `tokenizer_config.json`) to GGUF tokenizer metadata, as
    /// llama.cpp's `convert_hf_to_gguf.py` does:
    ///
    /// * byte-level BPE → `model = "gpt2"`: tokens by id (`[PAD{i}]`, type
    ///   unused, for missing ids), added tokens control when `special` or
    ///   `<|…|>`-shaped, else user-defined; merges as `"left right"`;
    ///   `pre` recognised from the `pre_tokenizer` JSON (`llama-bpe`,
    ///   `llama4`, `smollm`, `gpt-2`) where llama.cpp hashes the ids of a
    ///   test string — any other pre-tokenizer, or a normalizer, is refused;
    /// * BPE with byte fallback and SentencePiece whitespace (Llama 1/2) →
    ///   `model = "llama"`, `pre = "default"`: `<0xNN>` typed byte, special
    ///   tokens control, the unknown token unknown, and scores equal to minus
    ///   the rank of the first merge producing each token (llama.cpp's HF path
    ///   writes -1000 for all, which loses the merge order);
    /// * BOS/EOS/unknown/padding ids from `tokenizer_config.json`'s
    ///   `*_token` looked up among the added tokens; add-BOS/EOS from the
    ///   `post_processor`, else `add_bos_token` / `add_eos_token`; the chat
    ///   template.
    pub fn from_hf_json(
        tokenizer_json: &str,
        tokenizer_config_json: Option<&str>,
    ) -> Result<Vocab> {
        let tj = parse(TOKENIZER_JSON, tokenizer_json)?;
        let config = tokenizer_config_json
            .map(|t| parse(TOKENIZER_CONFIG, t))
            .transpose()?;
        convert(&tj, config.as_ref(), None)
    }

    /// [`from_hf_json`](Vocab::from_hf_json) on the files of an HF model
    /// directory: `tokenizer.json` (required), `tokenizer_config.json` and
    /// `config.json` (optional; its `vocab_size` pads the vocabulary with
    /// unused tokens and its `*_token_id` fill in special ids still unset).
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Vocab> {
        let dir = dir.as_ref();
        let tj = parse(TOKENIZER_JSON, &read(&dir.join(TOKENIZER_JSON))?)?;
        let optional = |name: &'static str| -> Result<Option<Json>> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(Some(parse(name, &read(&p)?)?))
            } else {
                Ok(None)
            }
        };
        let config = optional(TOKENIZER_CONFIG)?;
        let model_config = optional("config.json")?;
        convert(&tj, config.as_ref(), model_config.as_ref())
    }
}

fn convert(tj: &Json, config: Option<&Json>, model_config: Option<&Json>) -> Result<Vocab> {
    let model = tj
        .get("model")
        .ok_or_else(|| bad(TOKENIZER_JSON, "no \"model\""))?;
    let model_type = ty(model);
    if model_type != "BPE" {
        return Err(unsupported(format!(
            "model type {model_type:?} (only BPE is supported)"
        )));
    }
    let base = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| bad(TOKENIZER_JSON, "model.vocab is not an object"))?;

    let mut added = Vec::new();
    if let Some(list) = tj.get("added_tokens") {
        let list = list
            .as_array()
            .ok_or_else(|| bad(TOKENIZER_JSON, "added_tokens is not an array"))?;
        for (i, a) in list.iter().enumerate() {
            let ctx = format!("added_tokens[{i}]");
            let id = id_of(a.get("id").unwrap_or(&Json::Null), TOKENIZER_JSON, &ctx)?;
            let content = a
                .get("content")
                .and_then(Json::as_str)
                .ok_or_else(|| bad(TOKENIZER_JSON, format!("{ctx} has no content")))?
                .to_string();
            let special = flag(a, "special").unwrap_or(false);
            added.push(Added {
                id,
                content,
                special,
            });
        }
    }

    // Token texts by id: the model's vocabulary, then added tokens (which win).
    let mut by_id: HashMap<u32, String> = HashMap::with_capacity(base.len() + added.len());
    for (text, id) in base {
        let id = id_of(id, TOKENIZER_JSON, &format!("model.vocab[{text:?}]"))?;
        if let Some(prev) = by_id.insert(id, text.clone()) {
            return Err(bad(
                TOKENIZER_JSON,
                format!("model.vocab gives id {id} to {prev:?} and {text:?}"),
            ));
        }
    }
    let base_size = by_id.keys().max().map_or(0, |&m| m as usize + 1);
    let added_by_id: HashMap<u32, &Added> = added.iter().map(|a| (a.id, a)).collect();
    for a in &added {
        by_id.insert(a.id, a.content.clone());
    }
    let mut n = by_id.keys().max().map_or(0, |&m| m as usize + 1);
    if let Some(vs) = model_config
        .and_then(|c| c.get("vocab_size"))
        .and_then(Json::as_u64)
    {
        n = n.max(usize::try_from(vs).unwrap_or(usize::MAX));
    }
    if n > MAX_VOCAB {
        return Err(bad(
            TOKENIZER_JSON,
            format!(
                "a vocabulary of {n} tokens (ids or config.json vocab_size) is beyond {MAX_VOCAB}"
            ),
        ));
    }

    let normalizer = tj.get("normalizer").unwrap_or(&Json::Null);
    let pre_tok = tj.get("pre_tokenizer").unwrap_or(&Json::Null);
    let byte_fallback = flag(model, "byte_fallback").unwrap_or(false);

    // Special tokens named by tokenizer_config.json, by content.
    let cfg = |k: &str| config.and_then(|c| token_content(c.get(k)));
    let mut bos = cfg("bos_token");
    let mut eos = cfg("eos_token");
    let unk = cfg("unk_token");
    let pad = cfg("pad_token");
    let mut eot = None;
    let mut add_bos = None;
    let mut add_eos = None;
    if let Some(pp) = tj.get("post_processor").filter(|p| !p.is_null()) {
        for proc in seq(pp, "processors") {
            match ty(proc) {
                "ByteLevel" => {
                    add_bos.get_or_insert(false);
                    add_eos.get_or_insert(false);
                }
                "RobertaProcessing" => {
                    add_bos = Some(true);
                    add_eos = Some(true);
                }
                "TemplateProcessing" => {
                    let single = proc
                        .get("single")
                        .and_then(Json::as_array)
                        .cloned()
                        .unwrap_or_default();
                    let special_id = |e: &Json| {
                        e.get("SpecialToken")
                            .and_then(|s| s.get("id"))
                            .and_then(Json::as_str)
                            .map(str::to_string)
                    };
                    if single.len() > 1 {
                        if let Some(first) = special_id(&single[0]) {
                            if config.is_none() {
                                bos = Some(first.clone());
                            }
                            add_bos = Some(bos.as_deref() == Some(first.as_str()));
                        }
                        if let Some(last) = special_id(&single[single.len() - 1]) {
                            if config.is_none() {
                                eos = Some(last.clone());
                            } else if eos.as_deref() != Some(last.as_str()) {
                                eot = eos.take();
                                eos = Some(last.clone());
                            }
                            add_eos = Some(true);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(c) = config {
        if add_bos.is_none() {
            add_bos = flag(c, "add_bos_token");
        }
        if add_eos.is_none() {
            add_eos = flag(c, "add_eos_token");
        }
    }
    let find = |content: &Option<String>| -> Option<u32> {
        let content = content.as_deref()?;
        added
            .iter()
            .find(|a| a.content == content)
            .map(|a| a.id)
            .filter(|&id| (id as usize) < n)
    };
    let mut bos_id = find(&bos);
    let mut eos_id = find(&eos);
    let mut unk_id = find(&unk);
    let mut pad_id = find(&pad);
    let eot_id = find(&eot);
    if let Some(mc) = model_config {
        let from_config = |key: &str, slot: &mut Option<u32>| {
            if slot.is_none() {
                *slot = mc
                    .get(key)
                    .and_then(Json::as_u64)
                    .and_then(|x| u32::try_from(x).ok())
                    .filter(|&x| (x as usize) < n);
            }
        };
        from_config("bos_token_id", &mut bos_id);
        from_config("eos_token_id", &mut eos_id);
        from_config("unk_token_id", &mut unk_id);
        from_config("pad_token_id", &mut pad_id);
    }

    let chat_template = config.and_then(|c| match c.get("chat_template")? {
        Json::String(s) => Some(s.clone()),
        Json::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(Json::as_str)
            .map(str::to_string),
        _ => None,
    });

    let merges = merges_of(model)?;
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);

    let is_spm = byte_fallback;
    let (model_name, pre, scores, merges_out, add_space_prefix) = if is_spm {
        let add_space_prefix = spm_whitespace(normalizer, pre_tok).ok_or_else(|| {
            unsupported(format!(
                "byte-fallback BPE without SentencePiece whitespace handling (normalizer {normalizer}, pre_tokenizer {pre_tok})"
            ))
        })?;
        let special_ids: Vec<u32> = added
            .iter()
            .filter(|a| a.special)
            .map(|a| a.id)
            .chain([bos_id, eos_id, unk_id, pad_id].into_iter().flatten())
            .collect();
        // Score: minus the rank of the first merge producing the token.
        let mut first_rank: HashMap<String, usize> = HashMap::with_capacity(merges.len());
        for (rank, m) in merges.iter().enumerate() {
            let (a, b) = m.split_once(' ').ok_or_else(|| {
                bad(
                    TOKENIZER_JSON,
                    format!("model.merges[{rank}] {m:?} is not \"a b\""),
                )
            })?;
            first_rank.entry(format!("{a}{b}")).or_insert(rank);
        }
        let mut scores = Vec::with_capacity(n);
        for i in 0..n as u32 {
            let Some(text) = by_id.get(&i) else {
                tokens.push(format!("[PAD{i}]"));
                types.push(TokenType::Unused);
                scores.push(0.0);
                continue;
            };
            let t = if i as usize >= base_size {
                // An added token beyond the model's vocabulary.
                match added_by_id.get(&i) {
                    Some(a) if a.special || special_ids.contains(&i) => TokenType::Control,
                    _ => TokenType::UserDefined,
                }
            } else if is_byte_token(text) {
                TokenType::Byte
            } else if Some(i) == unk_id {
                TokenType::Unknown
            } else if special_ids.contains(&i) {
                TokenType::Control
            } else {
                TokenType::Normal
            };
            let score = match (t, first_rank.get(text.as_str())) {
                (TokenType::Normal, Some(&r)) => -(r as f32),
                (TokenType::Normal, None) => -((merges.len() + i as usize) as f32),
                _ => 0.0,
            };
            tokens.push(text.clone());
            types.push(t);
            scores.push(score);
        }
        (
            "llama",
            "default".to_string(),
            Some(scores),
            None,
            Some(add_space_prefix),
        )
    } else {
        if !normalizer.is_null() {
            return Err(unsupported(format!(
                "byte-level BPE with a normalizer ({normalizer})"
            )));
        }
        let pre = byte_level_pre(pre_tok)?;
        for i in 0..n as u32 {
            let Some(text) = by_id.get(&i) else {
                tokens.push(format!("[PAD{i}]"));
                types.push(TokenType::Unused);
                continue;
            };
            match added_by_id.get(&i) {
                Some(a) if a.special || looks_special(text) => {
                    tokens.push(text.clone());
                    types.push(TokenType::Control);
                }
                Some(_) => {
                    tokens.push(text.replace('▁', " "));
                    types.push(TokenType::UserDefined);
                }
                None => {
                    tokens.push(text.clone());
                    types.push(TokenType::Normal);
                }
            }
        }
        (
            "gpt2",
            pre.gguf_name().to_string(),
            None,
            Some(merges),
            None,
        )
    };

    Ok(Vocab {
        model: model_name.to_string(),
        pre: Some(pre),
        tokens,
        scores,
        token_types: Some(types),
        merges: merges_out,
        bos_token_id: bos_id,
        eos_token_id: eos_id,
        eot_token_id: eot_id,
        eom_token_id: None,
        unknown_token_id: unk_id,
        padding_token_id: pad_id,
        add_bos_token: add_bos,
        add_eos_token: add_eos,
        add_space_prefix,
        chat_template,
    })
}
