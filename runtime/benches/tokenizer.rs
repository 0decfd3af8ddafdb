//! Tokenizing 1 MB of English text with the Llama 2 (SentencePiece BPE),
//! Llama 3 and SmolLM2 (byte-level BPE) vocabularies of the shared test data.
//!
//!     cargo bench -p spinel-runtime --bench tokenizer

use std::hint::black_box;
use std::io::Read;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use spinel_runtime::tokenizer::{Tokenizer, Vocab};

const TESTDATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/testdata/tokenizers"
);

fn load(name: &str) -> Tokenizer {
    let dir = format!("{TESTDATA}/{name}");
    let json = match std::fs::read_to_string(format!("{dir}/tokenizer.json")) {
        Ok(s) => s,
        Err(_) => {
            let gz = std::fs::File::open(format!("{dir}/tokenizer.json.gz"))
                .unwrap_or_else(|e| panic!("{dir}/tokenizer.json(.gz): {e}"));
            let mut s = String::new();
            flate2::read::GzDecoder::new(gz)
                .read_to_string(&mut s)
                .expect("gunzip tokenizer.json.gz");
            s
        }
    };
    let config = std::fs::read_to_string(format!("{dir}/tokenizer_config.json")).ok();
    let vocab = Vocab::from_hf_json(&json, config.as_deref()).expect("convert tokenizer.json");
    Tokenizer::from_vocab(vocab).expect("build tokenizer")
}

/// About `len` bytes of English-like text: words from a fixed list picked by
/// a linear congruential generator, with capitals, punctuation, numbers and
/// paragraph breaks.
fn english(len: usize) -> String {
    const WORDS: &[&str] = &[
        "the",
        "of",
        "and",
        "to",
        "in",
        "a",
        "is",
        "that",
        "for",
        "it",
        "as",
        "was",
        "with",
        "be",
        "by",
        "on",
        "not",
        "he",
        "this",
        "are",
        "or",
        "his",
        "from",
        "at",
        "which",
        "but",
        "have",
        "an",
        "had",
        "they",
        "you",
        "were",
        "their",
        "one",
        "all",
        "we",
        "can",
        "her",
        "has",
        "there",
        "been",
        "if",
        "more",
        "when",
        "will",
        "would",
        "who",
        "so",
        "no",
        "people",
        "language",
        "model",
        "tokenizer",
        "running",
        "quickly",
        "through",
        "between",
        "important",
        "government",
        "understanding",
        "information",
        "development",
        "experience",
        "however",
        "children",
        "although",
        "question",
        "different",
        "following",
        "without",
        "something",
        "llama",
        "weather",
        "mountain",
        "river",
        "history",
        "science",
        "computer",
        "library",
        "don't",
        "it's",
        "we're",
        "they've",
        "I'm",
        "you'll",
        "she'd",
    ];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let mut s = String::with_capacity(len + 64);
    let mut sentence_start = true;
    while s.len() < len {
        let r = next();
        let w = WORDS[r % WORDS.len()];
        if sentence_start {
            let mut c = w.chars();
            if let Some(f) = c.next() {
                s.extend(f.to_uppercase());
                s.push_str(c.as_str());
            }
            sentence_start = false;
        } else if r % 97 == 0 {
            s.push_str(&(r % 10_000).to_string());
        } else {
            s.push_str(w);
        }
        match (r >> 8) % 40 {
            0 => {
                s.push_str(".\n\n");
                sentence_start = true;
            }
            1..=3 => {
                s.push_str(". ");
                sentence_start = true;
            }
            4 | 5 => s.push_str(", "),
            6 => s.push_str("; "),
            _ => s.push(' '),
        }
    }
    s
}

fn bench(c: &mut Criterion) {
    let text = english(1 << 20);
    let mut group = c.benchmark_group("encode_1MiB_english");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(text.len() as u64));
    for name in ["llama2", "llama3", "smollm2"] {
        let tok = load(name);
        group.bench_function(name, |b| {
            b.iter(|| tok.encode(black_box(&text), true, true).expect("encode"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
