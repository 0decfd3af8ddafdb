//! Streaming detokenization: one token id in, the text that is now complete
//! out.

use super::{Result, Tokenizer};

/// Turns token ids into text one at a time, for streaming generation.
///
/// A token may end in the middle of a UTF-8 sequence (byte-fallback tokens
/// `<0xF0>` `<0x9F>` …, or byte-level BPE tokens that split a character);
/// such bytes are held back until the character is complete, so every
/// returned string is whole text and never a split sequence. Bytes that can
/// never become UTF-8 are replaced with U+FFFD as soon as that is certain,
/// and [`finish`](Detokenizer::finish) flushes what is left, replacing an
/// incomplete tail with U+FFFD. The concatenation of everything returned
/// equals [`Tokenizer::decode`] of the same ids.
///
/// ```
/// # use spinel_runtime::tokenizer::{Tokenizer, Vocab, TokenType};
/// # let tokens: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
/// # let vocab = Vocab {
/// #     model: "llama".into(),
/// #     tokens,
/// #     token_types: Some(vec![TokenType::Byte; 256]),
/// #     add_bos_token: Some(false),
/// #     add_space_prefix: Some(false),
/// #     ..Vocab::default()
/// # };
/// # let tok = Tokenizer::from_vocab(vocab)?;
/// // "🦙" is F0 9F A6 99, here one byte token each.
/// let mut d = tok.detokenizer(false);
/// assert_eq!(d.push(0xF0)?, "");
/// assert_eq!(d.push(0x9F)?, "");
/// assert_eq!(d.push(0xA6)?, "");
/// assert_eq!(d.push(0x99)?, "🦙");
/// assert_eq!(d.push(0xF0)?, "");
/// assert_eq!(d.finish(), "\u{FFFD}");
/// # Ok::<(), spinel_runtime::tokenizer::TokenizerError>(())
/// ```
#[derive(Debug)]
pub struct Detokenizer<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    /// Still to remove one leading space (SentencePiece's prefix).
    strip: bool,
    /// Bytes of an incomplete UTF-8 sequence.
    pending: Vec<u8>,
}

impl<'a> Detokenizer<'a> {
    pub(crate) fn new(tok: &'a Tokenizer, skip_special: bool) -> Detokenizer<'a> {
        Detokenizer {
            tok,
            skip_special,
            strip: tok.add_space_prefix,
            pending: Vec::new(),
        }
    }

    /// Adds token `id`; returns the text completed by it (possibly empty).
    /// An unknown id is an error and changes nothing.
    pub fn push(&mut self, id: u32) -> Result<String> {
        let Some(mut piece) = self.tok.stream_piece(id, self.skip_special)? else {
            return Ok(String::new());
        };
        if self.strip && !piece.is_empty() {
            if piece[0] == b' ' {
                piece = &piece[1..];
            }
            self.strip = false;
        }
        self.pending.extend_from_slice(piece);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = start + e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..valid]));
                    match e.error_len() {
                        // Bytes that no continuation can fix.
                        Some(n) => {
                            out.push('\u{FFFD}');
                            start = valid + n;
                        }
                        // An incomplete sequence at the end: wait for more.
                        None => {
                            start = valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        Ok(out)
    }

    /// The bytes held back for an incomplete character.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Flushes what is left: an incomplete sequence becomes U+FFFD.
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}
