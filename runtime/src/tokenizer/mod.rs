//! Tokenizers built from GGUF tokenizer metadata, following llama.cpp.
//!
//! * [`Vocab`]: exactly what a GGUF file stores about its tokenizer
//!   (`tokenizer.ggml.*`), read with [`Vocab::from_gguf`], written with
//!   [`Vocab::write_gguf`], or converted from an HF `tokenizer.json` with
//!   [`Vocab::from_hf_json`] / [`Vocab::from_hf_dir`] (what `spinel convert`
//!   writes).
//! * [`Tokenizer`]: text ↔ token ids for `tokenizer.ggml.model = "llama"`
//!   (SentencePiece BPE with byte fallback: Llama 1/2) and `"gpt2"`
//!   (byte-level BPE with a [`PreTokenizer`]: Llama 3, SmolLM, Llama 4).
//! * [`Detokenizer`]: token ids → text one id at a time, emitting only
//!   complete UTF-8.
//!
//! # Behaviour
//!
//! Encoding follows llama.cpp's `llama_vocab::tokenize`: special tokens are
//! cut out of the text first (control and unknown tokens only when
//! `parse_special`, user-defined ones always; longest token first, see
//! `special.rs`), then each piece of raw text is tokenized on its own. For
//! `llama`, each piece that starts the text or follows a special token gets
//! the SentencePiece space prefix — the same `▁` HF's Llama pipeline puts
//! before every text piece between special tokens. BOS/EOS are added per the
//! vocabulary when `add_special`.
//!
//! Decoding concatenates each token's bytes ([`Tokenizer::token_to_piece`]):
//! `▁` → space for `llama`, the GPT-2 byte alphabet → bytes for `gpt2`,
//! `<0xNN>` → that byte, control/user-defined tokens → their text. With
//! `add_space_prefix` (default for `llama`) one leading space of the first
//! emitted piece is removed, as HF's `Strip` decoder and llama.cpp do.
//! `skip_special` leaves out control and unknown tokens (HF's
//! `skip_special_tokens`). llama.cpp's optional `clean_spaces` rewriting
//! (" ." → ".") is not applied: it is lossy.
//!
//! ```
//! use spinel_runtime::tokenizer::{Tokenizer, TokenType, Vocab};
//!
//! // A tiny byte-level BPE vocabulary: the 256 byte characters (token id =
//! // byte), then "he" (256) and "hel" (257).
//! let mut tokens: Vec<String> = (0..=255u8)
//!     .map(|b| spinel_runtime::tokenizer::byte_level_char(b).to_string())
//!     .collect();
//! tokens.push("he".into());
//! tokens.push("hel".into());
//! let vocab = Vocab {
//!     model: "gpt2".into(),
//!     pre: Some("llama-bpe".into()),
//!     tokens,
//!     merges: Some(vec!["h e".into(), "he l".into()]),
//!     add_bos_token: Some(false),
//!     ..Vocab::default()
//! };
//! let tok = Tokenizer::from_vocab(vocab)?;
//! let ids = tok.encode("help", false, false)?;
//! assert_eq!(ids, [257, u32::from(b'p')]);
//! assert_eq!(tok.decode(&ids, false)?, "help");
//! assert_eq!(tok.token_type(257)?, TokenType::Normal);
//! # Ok::<(), spinel_runtime::tokenizer::TokenizerError>(())
//! ```

mod bpe;
mod detokenizer;
mod error;
mod hf;
mod pretokenize;
mod special;
mod spm;
mod unicode;
mod vocab;

use std::collections::HashMap;

pub use detokenizer::Detokenizer;
pub use error::{Result, TokenizerError};
pub use pretokenize::PreTokenizer;
pub use vocab::{TokenType, Vocab, keys};

use crate::gguf::GgufFile;
use bpe::{BpeScratch, MergeMap, PairSet, pair_key};
use pretokenize::Splitter;
use special::{Fragment, SpecialMatcher};
use spm::{SpmScratch, SpmVocab};

/// GPT-2's byte-level character for byte `b` (`' '` → `'Ġ'`, `'\n'` → `'Ċ'`).
pub fn byte_level_char(b: u8) -> char {
    unicode::BYTE_TO_CHAR[b as usize]
}

/// Token texts llama.cpp treats as end of generation (and forces to control
/// type) whatever the file says; its `special_eog_ids` list without the
/// model-specific exceptions.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<｜end▁of▁sentence｜>",
];

/// Token texts llama.cpp takes as the end-of-turn token when the file names
/// none, in order of preference.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];

/// The most distinct words one `encode` call remembers (a cache local to
/// the call: nothing is shared between calls or threads).
const WORD_CACHE_MAX: usize = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Spm,
    Bpe(PreTokenizer),
}

/// A tokenizer for one vocabulary. Immutable and `Sync`: share it between
/// threads; each call uses its own scratch buffers.
pub struct Tokenizer {
    vocab: Vocab,
    kind: Kind,
    types: Vec<TokenType>,
    scores: Vec<f32>,
    text_to_id: HashMap<String, u32>,
    /// Decoded bytes of every token, concatenated; token `i` is
    /// `piece_data[piece_ends[i-1]..piece_ends[i]]`.
    piece_data: Vec<u8>,
    piece_ends: Vec<usize>,
    /// The token for each byte: `<0xNN>` for `llama`, the byte-level
    /// character for `gpt2`.
    byte_ids: [Option<u32>; 256],
    merges: MergeMap,
    /// `llama`: every pair of adjacent characters inside a normal token (as
    /// `pair_key(c1, c2)`); merging never joins two characters not in here.
    spm_pairs: PairSet,
    /// `gpt2` normal tokens by the bytes they stand for (for
    /// `ignore_merges`: a word that is a whole token is taken as is).
    raw_to_id: HashMap<Vec<u8>, u32>,
    ignore_merges: bool,
    specials: SpecialMatcher,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    eog: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.vocab.model)
            .field("kind", &self.kind)
            .field("n_tokens", &self.types.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish_non_exhaustive()
    }
}

fn check_len<T>(what: &'static str, v: &Option<Vec<T>>, n: usize) -> Result<()> {
    match v {
        Some(v) if v.len() != n => Err(TokenizerError::LengthMismatch {
            what,
            expected: n,
            found: v.len(),
        }),
        _ => Ok(()),
    }
}

fn check_id(what: &'static str, id: Option<u32>, n: usize) -> Result<Option<u32>> {
    match id {
        Some(i) if i as usize >= n => Err(TokenizerError::SpecialTokenOutOfRange {
            what,
            id: i.into(),
            n_tokens: n,
        }),
        _ => Ok(id),
    }
}

/// The byte of an SPM byte token `<0xNN>`.
fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl Tokenizer {
    /// Reads the vocabulary of a GGUF file and builds its tokenizer.
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<Tokenizer> {
        Tokenizer::from_vocab(Vocab::from_gguf(file)?)
    }

    /// Builds the tokenizer of a vocabulary, with llama.cpp's defaults for
    /// absent keys: for `llama`, BOS 1 / EOS 2 / unknown 0 (when in range),
    /// add BOS, space prefix; for `gpt2`, add BOS only with the Llama 3
    /// pre-tokenizer, no space prefix, no default ids. A missing
    /// `tokenizer.ggml.pre` is llama.cpp's `default`.
    ///
    /// Refused with a named error: an unknown model or pre-tokenizer, no
    /// tokens, per-token arrays of the wrong length, duplicate token texts,
    /// special ids out of range, adding a BOS/EOS that is not named,
    /// malformed merges or byte tokens, and `gpt2` without merges.
    pub fn from_vocab(vocab: Vocab) -> Result<Tokenizer> {
        let n = vocab.tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        if n >= u32::MAX as usize {
            return Err(TokenizerError::TooManyTokens { n });
        }
        let kind = match vocab.model.as_str() {
            "llama" => Kind::Spm,
            "gpt2" => {
                let pre = match vocab.pre.as_deref() {
                    None => PreTokenizer::Default,
                    Some(p) => PreTokenizer::from_gguf_name(p).ok_or_else(|| {
                        TokenizerError::UnsupportedPreTokenizer { pre: p.to_string() }
                    })?,
                };
                Kind::Bpe(pre)
            }
            other => {
                return Err(TokenizerError::UnsupportedModel {
                    model: other.to_string(),
                });
            }
        };
        check_len(keys::SCORES, &vocab.scores, n)?;
        check_len(keys::TOKEN_TYPE, &vocab.token_types, n)?;

        let mut types = match &vocab.token_types {
            Some(t) => t.clone(),
            None => vec![TokenType::Normal; n],
        };
        let scores = match &vocab.scores {
            Some(s) => s.clone(),
            None => vec![0.0; n],
        };

        let mut text_to_id: HashMap<String, u32> = HashMap::with_capacity(n);
        for (i, t) in vocab.tokens.iter().enumerate() {
            if t.is_empty() {
                continue;
            }
            if let Some(&first) = text_to_id.get(t.as_str()) {
                return Err(TokenizerError::DuplicateToken {
                    text: t.clone(),
                    first,
                    second: i as u32,
                });
            }
            text_to_id.insert(t.clone(), i as u32);
        }

        // End-of-generation tokens by text, forced to control type (llama.cpp).
        let mut eog = Vec::new();
        for text in EOG_TEXTS {
            if let Some(&id) = text_to_id.get(*text) {
                eog.push(id);
                if types[id as usize] != TokenType::Control {
                    types[id as usize] = TokenType::Control;
                }
            }
        }

        let spm = kind == Kind::Spm;
        let default = |id: u32| (spm && (id as usize) < n).then_some(id);
        let bos = check_id("BOS", vocab.bos_token_id, n)?.or(default(1));
        let eos = check_id("EOS", vocab.eos_token_id, n)?.or(default(2));
        let unk = check_id("unknown", vocab.unknown_token_id, n)?.or(default(0));
        let pad = check_id("padding", vocab.padding_token_id, n)?;
        let find = |texts: &[&str]| texts.iter().find_map(|t| text_to_id.get(*t).copied());
        let eot = check_id("EOT", vocab.eot_token_id, n)?.or_else(|| find(EOT_TEXTS));
        let eom = check_id("EOM", vocab.eom_token_id, n)?.or_else(|| find(&["<|eom_id|>"]));
        for id in [eos, eot, eom].into_iter().flatten() {
            if !eog.contains(&id) {
                eog.push(id);
            }
        }
        eog.sort_unstable();

        let add_bos = vocab.add_bos_token.unwrap_or(match kind {
            Kind::Spm => true,
            Kind::Bpe(pre) => pre == PreTokenizer::Llama3,
        });
        let add_eos = vocab.add_eos_token.unwrap_or(false);
        let add_space_prefix = vocab.add_space_prefix.unwrap_or(spm);
        if add_bos && bos.is_none() {
            return Err(TokenizerError::MissingSpecialToken { what: "BOS" });
        }
        if add_eos && eos.is_none() {
            return Err(TokenizerError::MissingSpecialToken { what: "EOS" });
        }

        // Pieces.
        let mut piece_data = Vec::new();
        let mut piece_ends = Vec::with_capacity(n);
        for (i, t) in vocab.tokens.iter().enumerate() {
            match types[i] {
                TokenType::Normal => match kind {
                    Kind::Spm => piece_data.extend_from_slice(t.replace('▁', " ").as_bytes()),
                    Kind::Bpe(_) => {
                        for c in t.chars() {
                            match unicode::char_to_byte(c) {
                                Some(b) => piece_data.push(b),
                                // Not in the byte alphabet: the character itself.
                                None => {
                                    let mut buf = [0u8; 4];
                                    piece_data.extend_from_slice(c.encode_utf8(&mut buf).as_bytes())
                                }
                            }
                        }
                    }
                },
                TokenType::Byte => {
                    let b =
                        parse_byte_token(t).ok_or_else(|| TokenizerError::MalformedByteToken {
                            id: i as u32,
                            text: t.clone(),
                        })?;
                    piece_data.push(b);
                }
                TokenType::Control | TokenType::Unknown | TokenType::UserDefined => {
                    piece_data.extend_from_slice(t.as_bytes())
                }
                TokenType::Unused | TokenType::Undefined => {}
            }
            piece_ends.push(piece_data.len());
        }

        // Byte tokens.
        let mut byte_ids = [None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = match kind {
                Kind::Spm => {
                    let hex = format!("<0x{b:02X}>");
                    text_to_id.get(hex.as_str()).copied().or_else(|| {
                        // llama.cpp falls back to the byte itself as a token.
                        let c = char::from_u32(b as u32).filter(|c| c.is_ascii())?;
                        text_to_id.get(c.to_string().as_str()).copied()
                    })
                }
                Kind::Bpe(_) => {
                    let c = unicode::BYTE_TO_CHAR[b].to_string();
                    text_to_id.get(c.as_str()).copied()
                }
            };
        }

        // Merges.
        let mut merges = MergeMap::default();
        if let Kind::Bpe(_) = kind {
            let list = vocab.merges.as_ref().ok_or(TokenizerError::MissingMerges)?;
            merges.reserve(list.len());
            for (rank, m) in list.iter().enumerate() {
                let malformed = || TokenizerError::MalformedMerge {
                    index: rank,
                    merge: m.clone(),
                };
                // llama.cpp: split at the first space after the first byte.
                let sp = m
                    .as_bytes()
                    .iter()
                    .skip(1)
                    .position(|&c| c == b' ')
                    .ok_or_else(malformed)?
                    + 1;
                let (a, b) = (&m[..sp], &m[sp + 1..]);
                if b.is_empty() {
                    return Err(malformed());
                }
                let lookup = |s: &str| {
                    text_to_id
                        .get(s)
                        .copied()
                        .ok_or_else(|| TokenizerError::MergeNotInVocab {
                            index: rank,
                            merge: m.clone(),
                            missing: s.to_string(),
                        })
                };
                let ia = lookup(a)?;
                let ib = lookup(b)?;
                let merged = lookup(&format!("{a}{b}"))?;
                merges
                    .entry(pair_key(ia, ib))
                    .or_insert((rank as u32, merged));
            }
        }

        let mut spm_pairs = PairSet::default();
        if spm {
            for (i, t) in vocab.tokens.iter().enumerate() {
                if types[i] == TokenType::Normal {
                    let mut chars = t.chars();
                    let mut prev = chars.next();
                    for c in chars {
                        if let Some(p) = prev {
                            spm_pairs.insert(pair_key(p as u32, c as u32));
                        }
                        prev = Some(c);
                    }
                }
            }
        }

        let ignore_merges = kind == Kind::Bpe(PreTokenizer::Llama3);
        let mut raw_to_id = HashMap::new();
        if ignore_merges {
            for (i, t) in vocab.tokens.iter().enumerate() {
                if types[i] == TokenType::Normal {
                    if let Some(raw) = unicode::byte_level_decode(t) {
                        raw_to_id.entry(raw).or_insert(i as u32);
                    }
                }
            }
        }

        let specials = SpecialMatcher::new(vocab.tokens.iter().enumerate().filter_map(|(i, t)| {
            match types[i] {
                TokenType::Control | TokenType::Unknown => Some((i as u32, t.as_str(), true)),
                TokenType::UserDefined => Some((i as u32, t.as_str(), false)),
                _ => None,
            }
        }));

        Ok(Tokenizer {
            kind,
            types,
            scores,
            text_to_id,
            piece_data,
            piece_ends,
            byte_ids,
            merges,
            spm_pairs,
            raw_to_id,
            ignore_merges,
            specials,
            bos,
            eos,
            eot,
            eom,
            unk,
            pad,
            add_bos,
            add_eos,
            add_space_prefix,
            eog,
            vocab,
        })
    }

    /// The vocabulary this tokenizer was built from.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// The number of tokens.
    pub fn n_tokens(&self) -> usize {
        self.types.len()
    }

    /// The pre-tokenizer (`None` for the SentencePiece model).
    pub fn pre_tokenizer(&self) -> Option<PreTokenizer> {
        match self.kind {
            Kind::Spm => None,
            Kind::Bpe(p) => Some(p),
        }
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    /// The end-of-turn token: the file's, else found by text as llama.cpp does.
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }
    /// The end-of-message token: the file's, else `<|eom_id|>`.
    pub fn eom(&self) -> Option<u32> {
        self.eom
    }
    pub fn unk(&self) -> Option<u32> {
        self.unk
    }
    pub fn pad(&self) -> Option<u32> {
        self.pad
    }
    /// Whether `encode(.., add_special = true, ..)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
    /// Whether `encode(.., add_special = true, ..)` ends with EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }
    /// The tokens that end generation: EOS, EOT, EOM and those llama.cpp
    /// recognises by text (`<|eot_id|>`, `<|im_end|>`, …), sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }
    /// Whether `id` ends generation.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    fn check(&self, id: u32) -> Result<usize> {
        if (id as usize) < self.types.len() {
            Ok(id as usize)
        } else {
            Err(TokenizerError::UnknownTokenId {
                id,
                n_tokens: self.types.len(),
            })
        }
    }

    /// The vocabulary text of token `id` (`"▁Hello"`, `"Ġthere"`, `"<s>"`).
    pub fn token_text(&self, id: u32) -> Result<&str> {
        let i = self.check(id)?;
        Ok(&self.vocab.tokens[i])
    }

    /// The type of token `id` (after llama.cpp's forcing of end-of-generation
    /// tokens to control).
    pub fn token_type(&self, id: u32) -> Result<TokenType> {
        Ok(self.types[self.check(id)?])
    }

    /// The id of the token whose vocabulary text is `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.text_to_id.get(text).copied()
    }

    /// The bytes token `id` stands for in decoded text (control and
    /// user-defined tokens: their text; unused tokens: nothing).
    pub fn token_to_piece(&self, id: u32) -> Result<&[u8]> {
        let i = self.check(id)?;
        let start = if i == 0 { 0 } else { self.piece_ends[i - 1] };
        Ok(&self.piece_data[start..self.piece_ends[i]])
    }

    /// Whether `skip_special` decoding leaves token `id` out.
    fn skipped(&self, i: usize, skip_special: bool) -> bool {
        skip_special && matches!(self.types[i], TokenType::Control | TokenType::Unknown)
    }

    /// Token ids for `text`. `add_special`: add BOS/EOS as the vocabulary
    /// says; `parse_special`: match control-token text (`<|eot_id|>`) as
    /// those tokens.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        if text.len() >= u32::MAX as usize {
            return Err(TokenizerError::TextTooLong { len: text.len() });
        }
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let mut fragments = Vec::new();
        self.specials.partition(text, parse_special, &mut fragments);
        match self.kind {
            Kind::Spm => self.encode_spm(text, &fragments, &mut out)?,
            Kind::Bpe(pre) => self.encode_bpe(pre, text, &fragments, &mut out)?,
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        Ok(out)
    }

    /// [`encode`](Tokenizer::encode) for bytes that should be UTF-8; other
    /// bytes are [`TokenizerError::InvalidUtf8`].
    pub fn encode_bytes(
        &self,
        text: &[u8],
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>> {
        let s = std::str::from_utf8(text).map_err(|e| TokenizerError::InvalidUtf8 {
            valid_up_to: e.valid_up_to(),
        })?;
        self.encode(s, add_special, parse_special)
    }

    fn byte_token(&self, b: u8) -> Result<u32> {
        self.byte_ids[b as usize]
            .or(self.unk)
            .ok_or(TokenizerError::UnrepresentableByte { byte: b })
    }

    fn encode_spm(&self, text: &str, fragments: &[Fragment], out: &mut Vec<u32>) -> Result<()> {
        let mut scratch = SpmScratch::default();
        let mut buf = String::new();
        let mut prev_special = true;
        for f in fragments {
            match *f {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(a, b) => {
                    buf.clear();
                    if self.add_space_prefix && prev_special {
                        buf.push('▁');
                    }
                    for c in text[a..b].chars() {
                        buf.push(if c == ' ' { '▁' } else { c });
                    }
                    // Merging never crosses a character pair that occurs in
                    // no mergeable token, so the text is cut there and each
                    // chunk (about a word) merged on its own — the same
                    // result as merging it whole, with small heaps, and
                    // repeated chunks are looked up instead of merged again.
                    let mut cache: HashMap<&str, (usize, usize)> = HashMap::new();
                    let mut start = 0;
                    let mut prev: Option<char> = None;
                    for (i, c) in buf.char_indices() {
                        if let Some(p) = prev {
                            if !self.spm_pairs.contains(&pair_key(p as u32, c as u32)) {
                                self.spm_chunk(&buf[start..i], &mut cache, &mut scratch, out)?;
                                start = i;
                            }
                        }
                        prev = Some(c);
                    }
                    self.spm_chunk(&buf[start..], &mut cache, &mut scratch, out)?;
                    prev_special = false;
                }
            }
        }
        Ok(())
    }

    fn spm_chunk<'t>(
        &self,
        chunk: &'t str,
        cache: &mut HashMap<&'t str, (usize, usize)>,
        scratch: &mut SpmScratch,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        if let Some(&(a, b)) = cache.get(chunk) {
            out.extend_from_within(a..b);
            return Ok(());
        }
        // Symbol offsets are 32-bit (spaces grow to 3 bytes when escaped).
        if chunk.len() >= u32::MAX as usize {
            return Err(TokenizerError::TextTooLong { len: chunk.len() });
        }
        let a = out.len();
        spm::tokenize(self, chunk, scratch, |sym| {
            match sym {
                Ok(id) => out.push(id),
                Err(piece) => {
                    for &byte in piece.as_bytes() {
                        out.push(self.byte_token(byte)?);
                    }
                }
            }
            Ok(())
        })?;
        if cache.len() < WORD_CACHE_MAX {
            cache.insert(chunk, (a, out.len()));
        }
        Ok(())
    }

    fn encode_bpe(
        &self,
        pre: PreTokenizer,
        text: &str,
        fragments: &[Fragment],
        out: &mut Vec<u32>,
    ) -> Result<()> {
        let mut splitter = Splitter::default();
        let mut words = Vec::new();
        let mut scratch = BpeScratch::default();
        let mut initial = Vec::new();
        // Words seen earlier in this call: their ids are copied from `out`.
        let mut cache: HashMap<&[u8], (usize, usize)> = HashMap::new();
        for f in fragments {
            match *f {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(a, b) => {
                    let piece = &text[a..b];
                    splitter.split(pre, piece, &mut words);
                    for &(s, e) in &words {
                        let word = &piece.as_bytes()[s..e];
                        // `ignore_merges` (Llama 3): a word that is a token is
                        // that token.
                        if self.ignore_merges {
                            if let Some(&id) = self.raw_to_id.get(word) {
                                out.push(id);
                                continue;
                            }
                        }
                        if let Some(&(x, y)) = cache.get(word) {
                            out.extend_from_within(x..y);
                            continue;
                        }
                        let x = out.len();
                        self.bpe_word(word, &mut initial, &mut scratch, out)?;
                        if cache.len() < WORD_CACHE_MAX {
                            cache.insert(word, (x, out.len()));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn bpe_word(
        &self,
        word: &[u8],
        initial: &mut Vec<u32>,
        scratch: &mut BpeScratch,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        initial.clear();
        for &b in word {
            match self.byte_ids[b as usize] {
                Some(id) => initial.push(id),
                None => {
                    // A byte the vocabulary cannot spell: merge what came
                    // before, then the unknown token.
                    let unk = self
                        .unk
                        .ok_or(TokenizerError::UnrepresentableByte { byte: b })?;
                    bpe::merge_word(&self.merges, initial, scratch, out);
                    initial.clear();
                    out.push(unk);
                }
            }
        }
        bpe::merge_word(&self.merges, initial, scratch, out);
        Ok(())
    }

    /// The bytes of `ids` (see the module docs); `skip_special` leaves out
    /// control and unknown tokens.
    pub fn decode_bytes(&self, ids: &[u32], skip_special: bool) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut strip = self.add_space_prefix;
        for &id in ids {
            let i = self.check(id)?;
            if self.skipped(i, skip_special) {
                continue;
            }
            let mut piece = self.token_to_piece(id)?;
            if strip && !piece.is_empty() {
                if piece[0] == b' ' {
                    piece = &piece[1..];
                }
                strip = false;
            }
            out.extend_from_slice(piece);
        }
        Ok(out)
    }

    /// The text of `ids`; bytes that are not UTF-8 become U+FFFD (as HF and
    /// [`Detokenizer`] do).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let bytes = self.decode_bytes(ids, skip_special)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// A streaming decoder; see [`Detokenizer`].
    pub fn detokenizer(&self, skip_special: bool) -> Detokenizer<'_> {
        Detokenizer::new(self, skip_special)
    }

    /// The piece token `id` adds to streamed text, `None` if skipped.
    fn stream_piece(&self, id: u32, skip_special: bool) -> Result<Option<&[u8]>> {
        let i = self.check(id)?;
        if self.skipped(i, skip_special) {
            return Ok(None);
        }
        self.token_to_piece(id).map(Some)
    }
}

impl SpmVocab for Tokenizer {
    #[inline]
    fn mergeable(&self, text: &str) -> Option<u32> {
        let id = *self.text_to_id.get(text)?;
        (self.types[id as usize] == TokenType::Normal).then_some(id)
    }
    #[inline]
    fn score(&self, id: u32) -> f32 {
        self.scores[id as usize]
    }
    #[inline]
    fn final_token(&self, text: &str) -> Option<u32> {
        let id = *self.text_to_id.get(text)?;
        matches!(
            self.types[id as usize],
            TokenType::Normal | TokenType::UserDefined
        )
        .then_some(id)
    }
}
