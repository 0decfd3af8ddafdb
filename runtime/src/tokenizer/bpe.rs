//! Byte-level BPE merging of one pre-tokenized word (llama.cpp's
//! `llm_tokenizer_bpe_session`, HF `tokenizers`' `BPE::merge_word`).
//!
//! The word starts as one symbol per byte (the token of its GPT-2 byte-level
//! character); the adjacent pair with the lowest merge rank is merged first
//! (ties: leftmost), until no adjacent pair has a merge. Pairs are token ids,
//! looked up in a hash map `(left, right) → (rank, merged id)`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

/// rustc's Fx hash, for the id-pair keys of the merge table (fixed-size
/// integer keys from the vocabulary; no string hashing).
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type MergeMap = HashMap<u64, (u32, u32), BuildHasherDefault<FxHasher>>;
pub(crate) type PairSet = std::collections::HashSet<u64, BuildHasherDefault<FxHasher>>;

#[inline]
pub(crate) fn pair_key(a: u32, b: u32) -> u64 {
    (u64::from(a) << 32) | u64::from(b)
}

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: u32,
    next: u32,
    alive: bool,
}

/// Reusable buffers.
#[derive(Default)]
pub(crate) struct BpeScratch {
    symbols: Vec<Symbol>,
    heap: BinaryHeap<Reverse<(u32, u32)>>,
}

/// Merges `initial` (token ids, one per byte) and appends the result.
pub(crate) fn merge_word(
    merges: &MergeMap,
    initial: &[u32],
    scratch: &mut BpeScratch,
    out: &mut Vec<u32>,
) {
    match initial.len() {
        0 => return,
        1 => {
            out.push(initial[0]);
            return;
        }
        2 => {
            // The common short case without the heap.
            match merges.get(&pair_key(initial[0], initial[1])) {
                Some(&(_, id)) => out.push(id),
                None => out.extend_from_slice(initial),
            }
            return;
        }
        _ => {}
    }
    let symbols = &mut scratch.symbols;
    let heap = &mut scratch.heap;
    symbols.clear();
    heap.clear();
    let n = initial.len() as u32;
    for (i, &id) in initial.iter().enumerate() {
        let i = i as u32;
        symbols.push(Symbol {
            id,
            prev: if i == 0 { NONE } else { i - 1 },
            next: if i + 1 == n { NONE } else { i + 1 },
            alive: true,
        });
    }
    let add = |symbols: &[Symbol], heap: &mut BinaryHeap<Reverse<(u32, u32)>>, left: u32| {
        if left == NONE {
            return;
        }
        let l = symbols[left as usize];
        if l.next == NONE {
            return;
        }
        let r = symbols[l.next as usize];
        if let Some(&(rank, _)) = merges.get(&pair_key(l.id, r.id)) {
            heap.push(Reverse((rank, left)));
        }
    };
    for i in 0..n - 1 {
        add(symbols, heap, i);
    }
    while let Some(Reverse((rank, left))) = heap.pop() {
        let l = symbols[left as usize];
        if !l.alive || l.next == NONE {
            continue;
        }
        let right = l.next;
        let r = symbols[right as usize];
        // Ranks are unique per pair, so the same rank means the same pair.
        let Some(&(r2, merged)) = merges.get(&pair_key(l.id, r.id)) else {
            continue;
        };
        if r2 != rank {
            continue;
        }
        symbols[left as usize].id = merged;
        symbols[left as usize].next = r.next;
        symbols[right as usize].alive = false;
        if r.next != NONE {
            symbols[r.next as usize].prev = left;
        }
        add(symbols, heap, l.prev);
        add(symbols, heap, left);
    }
    let mut i = 0u32;
    while i != NONE {
        let s = symbols[i as usize];
        out.push(s.id);
        i = s.next;
    }
}
