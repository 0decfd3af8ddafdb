//! SentencePiece-style BPE (`tokenizer.ggml.model = "llama"`): llama.cpp's
//! `llm_tokenizer_spm`.
//!
//! The text (spaces already `▁`) starts as one symbol per character; the
//! adjacent pair whose concatenation is the highest-scoring token is merged
//! first (ties: leftmost), until no adjacent pair forms a token. A final
//! symbol that is not a token becomes byte tokens `<0xNN>`.
//!
//! One deliberate difference from llama.cpp: only `Normal` tokens may be
//! formed by merging (llama.cpp accepts any type, so text like `<s>` can merge
//! into the control token when its pieces are tokens); SentencePiece itself
//! and HF `tokenizers` never produce control tokens from text either.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

#[derive(Clone, Copy)]
struct Symbol {
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
}

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Bigram {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(other.left.cmp(&self.left))
    }
}

/// What the SPM merge needs from the vocabulary.
pub(crate) trait SpmVocab {
    /// The id of the `Normal` token with this text, for merging.
    fn mergeable(&self, text: &str) -> Option<u32>;
    /// The score of token `id`.
    fn score(&self, id: u32) -> f32;
    /// The id of the token a final symbol becomes, if its text is one.
    fn final_token(&self, text: &str) -> Option<u32>;
}

/// Reusable buffers.
#[derive(Default)]
pub(crate) struct SpmScratch {
    symbols: Vec<Symbol>,
    heap: BinaryHeap<Bigram>,
}

/// Tokenizes `text` (whitespace already escaped); each final symbol is
/// passed to `emit` as `Ok(token)` or, when its text is no token, `Err(text)`
/// for byte fallback.
pub(crate) fn tokenize<V: SpmVocab>(
    vocab: &V,
    text: &str,
    scratch: &mut SpmScratch,
    mut emit: impl FnMut(Result<u32, &str>) -> Result<(), super::TokenizerError>,
) -> Result<(), super::TokenizerError> {
    if text.is_empty() {
        return Ok(());
    }
    let symbols = &mut scratch.symbols;
    let heap = &mut scratch.heap;
    symbols.clear();
    heap.clear();
    for (i, c) in text.char_indices() {
        let idx = symbols.len() as u32;
        symbols.push(Symbol {
            start: i as u32,
            len: c.len_utf8() as u32,
            prev: if idx == 0 { NONE } else { idx - 1 },
            next: idx + 1,
        });
    }
    if let Some(last) = symbols.last_mut() {
        last.next = NONE;
    }

    let try_add = |symbols: &[Symbol], heap: &mut BinaryHeap<Bigram>, left: u32, right: u32| {
        if left == NONE || right == NONE {
            return;
        }
        let l = symbols[left as usize];
        let r = symbols[right as usize];
        let size = l.len + r.len;
        let piece = &text[l.start as usize..(l.start + size) as usize];
        if let Some(id) = vocab.mergeable(piece) {
            heap.push(Bigram {
                score: vocab.score(id),
                left,
                right,
                size,
            });
        }
    };

    for i in 1..symbols.len() as u32 {
        try_add(symbols, heap, i - 1, i);
    }

    while let Some(b) = heap.pop() {
        let l = symbols[b.left as usize];
        let r = symbols[b.right as usize];
        // Stale: one side was merged away or grew since.
        if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
            continue;
        }
        symbols[b.left as usize].len = b.size;
        symbols[b.right as usize].len = 0;
        symbols[b.left as usize].next = r.next;
        if r.next != NONE {
            symbols[r.next as usize].prev = b.left;
        }
        try_add(symbols, heap, l.prev, b.left);
        try_add(symbols, heap, b.left, r.next);
    }

    let mut i = 0u32;
    while i != NONE {
        let s = symbols[i as usize];
        let piece = &text[s.start as usize..(s.start + s.len) as usize];
        match vocab.final_token(piece) {
            Some(id) => emit(Ok(id))?,
            None => emit(Err(piece))?,
        }
        i = s.next;
    }
    Ok(())
}
