//! Tokenizers against the shared reference data: HF `tokenizers` output for
//! Llama 2 (SentencePiece BPE), Llama 3 / 3.1 and SmolLM2 (byte-level BPE),
//! with vocabularies converted from `tokenizer.json` and carried through a
//! GGUF file; the npm packages' own expected ids; the real SmolLM2 GGUF.

use std::io::Read;
use std::path::PathBuf;

use serde_json::Value as Json;
use spinel_runtime::gguf::{Array, GgufError, GgufFile, GgufWriter, Value};
use spinel_runtime::tokenizer::{PreTokenizer, TokenType, Tokenizer, TokenizerError, Vocab};

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata");

fn read_json(path: &str) -> Json {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// tokenizer.json of a test tokenizer (gunzipped where it is stored gzipped).
fn tokenizer_json(name: &str) -> String {
    let dir = format!("{TESTDATA}/tokenizers/{name}");
    let plain = format!("{dir}/tokenizer.json");
    if std::path::Path::new(&plain).exists() {
        return std::fs::read_to_string(&plain).unwrap_or_else(|e| panic!("{plain}: {e}"));
    }
    let gz = format!("{plain}.gz");
    let file = std::fs::File::open(&gz).unwrap_or_else(|e| panic!("{gz}: {e}"));
    let mut s = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut s)
        .unwrap_or_else(|e| panic!("{gz}: {e}"));
    s
}

fn converted_vocab(name: &str) -> Vocab {
    let config_path = format!("{TESTDATA}/tokenizers/{name}/tokenizer_config.json");
    let config =
        std::fs::read_to_string(&config_path).unwrap_or_else(|e| panic!("{config_path}: {e}"));
    Vocab::from_hf_json(&tokenizer_json(name), Some(&config))
        .unwrap_or_else(|e| panic!("converting {name}: {e}"))
}

/// The vocabulary written into a GGUF file and read back.
fn through_gguf(vocab: &Vocab) -> Vocab {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::from("llama"))
        .unwrap();
    vocab.write_gguf(&mut w).expect("write vocab");
    let bytes = w.to_bytes();
    let file = GgufFile::parse(&bytes).expect("parse written GGUF");
    Vocab::from_gguf(&file).expect("read vocab back")
}

/// A tokenizer built, as the issue asks, from a GGUF made from tokenizer.json.
fn tokenizer(name: &str) -> Tokenizer {
    let vocab = converted_vocab(name);
    let back = through_gguf(&vocab);
    assert_eq!(
        back, vocab,
        "{name}: GGUF round trip changes the vocabulary"
    );
    Tokenizer::from_vocab(back).unwrap_or_else(|e| panic!("building {name}: {e}"))
}

fn ids_of(v: &Json) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Streams `ids` through a detokenizer; checks that every chunk is whole
/// text and that the chunks add up to `decode`.
fn streamed(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> String {
    let mut d = tok.detokenizer(skip_special);
    let mut out = String::new();
    for &id in ids {
        out.push_str(&d.push(id).expect("push"));
    }
    out.push_str(&d.finish());
    out
}

/// Runs every case of `tokenization/<name>.json`; returns the number of
/// cases, panicking with all mismatches if there are any.
fn check_cases(name: &str, tok: &Tokenizer) -> usize {
    let data = read_json(&format!("{TESTDATA}/tokenization/{name}.json"));
    let cases = data["cases"].as_array().expect("cases");
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let text = case["text"].as_str().expect("text");
        let want_ids = ids_of(&case["ids"]);
        let want_with = ids_of(&case["ids_with_special"]);
        let mut fail = |what: &str, got: String, want: String| {
            failures.push(format!(
                "case {i} {text:?}: {what}\n   got {got}\n  want {want}"
            ));
        };

        let ids = tok.encode(text, false, true).expect("encode");
        if ids != want_ids {
            fail("ids", format!("{ids:?}"), format!("{want_ids:?}"));
        }
        let with = tok.encode(text, true, true).expect("encode");
        if with != want_with {
            fail(
                "ids_with_special",
                format!("{with:?}"),
                format!("{want_with:?}"),
            );
        }
        let tokens: Vec<&str> = want_ids
            .iter()
            .map(|&id| tok.token_text(id).expect("token"))
            .collect();
        let want_tokens: Vec<&str> = case["tokens"]
            .as_array()
            .expect("tokens")
            .iter()
            .map(|t| t.as_str().expect("token"))
            .collect();
        if tokens != want_tokens {
            fail("tokens", format!("{tokens:?}"), format!("{want_tokens:?}"));
        }
        for (skip, key) in [(false, "decoded"), (true, "decoded_skip_special")] {
            let want = case[key].as_str().expect(key);
            let got = tok.decode(&want_ids, skip).expect("decode");
            if got != want {
                fail(key, format!("{got:?}"), format!("{want:?}"));
            }
            let s = streamed(tok, &want_ids, skip);
            if s != got {
                fail(
                    &format!("streamed {key}"),
                    format!("{s:?}"),
                    format!("{got:?}"),
                );
            }
        }
        let roundtrip = case["roundtrip"].as_bool().expect("roundtrip");
        assert_eq!(
            case["decoded"].as_str() == Some(text),
            roundtrip,
            "case {i}: data"
        );
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(cases.len() >= 40, "{name}: only {} cases", cases.len());
    cases.len()
}

#[test]
fn llama2_matches_hf() {
    let tok = tokenizer("llama2");
    assert_eq!(check_cases("llama2", &tok), 48);
}

#[test]
fn llama3_matches_hf() {
    let tok = tokenizer("llama3");
    assert_eq!(check_cases("llama3", &tok), 48);
}

/// A Llama 3 vocabulary whose `tokenizer.ggml.pre` is another name llama.cpp
/// gives the same split (its converter writes `smaug-bpe`, `dbrx` … for
/// fine-tunes whose tokenizer hashes differently) tokenizes as Llama 3 does.
#[test]
fn llama3_split_under_every_alias_matches_hf() {
    let aliases: Vec<&str> = PreTokenizer::GGUF_NAMES
        .iter()
        .filter(|(_, p)| *p == PreTokenizer::Llama3)
        .map(|(n, _)| *n)
        .collect();
    for name in ["smaug-bpe", "dbrx", "llama-bpe", "llama3"] {
        assert!(aliases.contains(&name), "{name} is not a Llama 3 alias");
    }
    for alias in aliases {
        let vocab = Vocab {
            pre: Some(alias.into()),
            ..converted_vocab("llama3")
        };
        let tok = Tokenizer::from_vocab(through_gguf(&vocab))
            .unwrap_or_else(|e| panic!("pre {alias:?}: {e}"));
        assert_eq!(check_cases("llama3", &tok), 48, "pre {alias:?}");
    }
}

#[test]
fn llama3_1_matches_hf() {
    let tok = tokenizer("llama3_1");
    assert_eq!(check_cases("llama3_1", &tok), 48);
}

#[test]
fn smollm2_matches_hf() {
    let tok = tokenizer("smollm2");
    assert_eq!(check_cases("smollm2", &tok), 48);
}

#[test]
fn npm_package_expected_ids() {
    let data = read_json(&format!("{TESTDATA}/tokenization_js_crosscheck.json"));
    // Llama 2: ids include BOS. Llama 3.1: no BOS; special-token text parsed.
    for (name, add_special) in [("llama2", true), ("llama3_1", false)] {
        let tok = tokenizer(name);
        let cases = data[name]["cases"].as_array().expect("cases");
        assert!(cases.len() >= 12);
        for case in cases {
            let text = case["text"].as_str().expect("text");
            let want = ids_of(&case["ids"]);
            let got = tok.encode(text, add_special, true).expect("encode");
            assert_eq!(got, want, "{name}: {text:?}");
            let decoded = tok.decode(&got, true).expect("decode");
            if !text.contains("<|") {
                assert_eq!(decoded, text, "{name}: decode");
            }
        }
    }
}

/// Rendered chat templates (shared/testdata/chat_template_renders.json):
/// HF's ids for `encode(rendered, add_special_tokens=False)`.
#[test]
fn chat_template_renders_encode_like_hf() {
    let data = read_json(&format!("{TESTDATA}/chat_template_renders.json"));
    let renders = data["renders"].as_object().expect("renders");
    assert_eq!(renders.len(), 3);
    for (name, r) in renders {
        let tok = tokenizer(name);
        let cases = r["cases"].as_array().expect("cases");
        assert!(!cases.is_empty());
        for case in cases {
            let rendered = case["rendered"].as_str().expect("rendered");
            let ids = tok.encode(rendered, false, true).unwrap();
            assert_eq!(ids, ids_of(&case["ids"]), "{name}: {rendered:?}");
            assert_eq!(tok.decode(&ids, false).unwrap(), rendered, "{name}");
        }
    }
}

#[test]
fn converted_metadata_follows_llama_cpp() {
    let v = converted_vocab("llama2");
    assert_eq!(v.model, "llama");
    assert_eq!(v.pre.as_deref(), Some("default"));
    assert_eq!(v.tokens.len(), 32000);
    assert_eq!(
        (v.bos_token_id, v.eos_token_id, v.unknown_token_id),
        (Some(1), Some(2), Some(0))
    );
    assert_eq!(v.padding_token_id, None);
    assert_eq!(
        (v.add_bos_token, v.add_eos_token),
        (Some(true), Some(false))
    );
    assert_eq!(v.add_space_prefix, Some(true));
    assert!(v.merges.is_none());
    let types = v.token_types.as_ref().unwrap();
    let scores = v.scores.as_ref().unwrap();
    assert_eq!(types[0], TokenType::Unknown);
    assert_eq!(types[1], TokenType::Control);
    assert_eq!(types[2], TokenType::Control);
    assert_eq!(&v.tokens[3], "<0x00>");
    assert_eq!(&v.tokens[13], "<0x0A>");
    assert!(types[3..259].iter().all(|&t| t == TokenType::Byte));
    assert!(types[259..].iter().all(|&t| t == TokenType::Normal));
    // "▁t" is the first merge, whitespace runs the last ones.
    assert_eq!(&v.tokens[260], "▁t");
    assert_eq!(scores[260], 0.0);
    assert!(scores[259] < scores[261] && scores[261] < scores[260]);

    let v = converted_vocab("llama3");
    assert_eq!(
        (v.model.as_str(), v.pre.as_deref()),
        ("gpt2", Some("llama-bpe"))
    );
    assert_eq!(v.tokens.len(), 128256);
    assert_eq!(
        (v.bos_token_id, v.eos_token_id),
        (Some(128000), Some(128001))
    );
    assert_eq!(
        (v.add_bos_token, v.add_eos_token),
        (Some(false), Some(false))
    );
    assert_eq!(v.merges.as_ref().unwrap().len(), 280147);
    assert_eq!(&v.merges.as_ref().unwrap()[0], "Ġ Ġ");
    let types = v.token_types.as_ref().unwrap();
    assert!(types[..128000].iter().all(|&t| t == TokenType::Normal));
    assert!(types[128000..].iter().all(|&t| t == TokenType::Control));
    assert!(
        v.chat_template
            .as_deref()
            .unwrap()
            .contains("<|start_header_id|>")
    );

    let v = converted_vocab("llama3_1");
    assert_eq!(
        (v.bos_token_id, v.eos_token_id),
        (Some(128000), Some(128009))
    );
    assert_eq!(v.add_bos_token, Some(true));
    let tok = Tokenizer::from_vocab(v).unwrap();
    assert_eq!(tok.token_text(128008).unwrap(), "<|eom_id|>");
    assert_eq!(tok.eom(), Some(128008));
    assert_eq!(tok.eot(), Some(128009));
    assert!(tok.is_eog(128009) && tok.is_eog(128008) && tok.is_eog(128001));
    assert!(!tok.is_eog(128000));

    let v = converted_vocab("smollm2");
    assert_eq!(
        (v.model.as_str(), v.pre.as_deref()),
        ("gpt2", Some("smollm"))
    );
    assert_eq!(v.tokens.len(), 49152);
    assert_eq!(
        (
            v.bos_token_id,
            v.eos_token_id,
            v.unknown_token_id,
            v.padding_token_id
        ),
        (Some(1), Some(2), Some(0), Some(2))
    );
    assert_eq!(v.add_bos_token, Some(false));
    let types = v.token_types.as_ref().unwrap();
    assert_eq!(
        types.iter().filter(|&&t| t == TokenType::Control).count(),
        17
    );
    assert!(types[..17].iter().all(|&t| t == TokenType::Control));
    let tok = Tokenizer::from_vocab(v).unwrap();
    assert_eq!(tok.pre_tokenizer(), Some(PreTokenizer::Smollm));
    assert_eq!(tok.eot(), Some(2), "<|im_end|> is the end of turn");
}

fn model_path() -> PathBuf {
    spinel_runtime::cache::test_model()
}

#[test]
fn smollm2_real_gguf_matches_hf() {
    let path = model_path();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "the real model {} is needed ({e}); run scripts/fetch-model.sh or set SPINEL_TEST_MODEL",
            path.display()
        )
    });
    let file = GgufFile::parse(&bytes).expect("parse SmolLM2 GGUF");
    let vocab = Vocab::from_gguf(&file).expect("vocab from GGUF");
    assert_eq!(vocab.model, "gpt2");
    assert_eq!(vocab.pre.as_deref(), Some("smollm"));
    assert_eq!(vocab.add_space_prefix, Some(false));
    assert!(
        vocab
            .chat_template
            .as_deref()
            .unwrap()
            .contains("<|im_start|>")
    );

    // The converted tokenizer.json carries the same vocabulary.
    let converted = converted_vocab("smollm2");
    assert_eq!(vocab.tokens, converted.tokens);
    assert_eq!(vocab.token_types, converted.token_types);
    assert_eq!(vocab.merges, converted.merges);
    assert_eq!(vocab.bos_token_id, converted.bos_token_id);
    assert_eq!(vocab.eos_token_id, converted.eos_token_id);

    let tok = Tokenizer::from_gguf(&file).expect("tokenizer from GGUF");
    assert_eq!(check_cases("smollm2", &tok), 48);
}

/// llama.cpp's own tokenization of the real model (shared/testdata/smollm2):
/// prompts encoded with BOS rules from the file and special tokens parsed,
/// and the detokenized greedy continuations.
#[test]
fn smollm2_real_gguf_matches_llama_cpp() {
    let path = model_path();
    let bytes = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "the real model {} is needed ({e}); run scripts/fetch-model.sh or set SPINEL_TEST_MODEL",
            path.display()
        )
    });
    let file = GgufFile::parse(&bytes).expect("parse SmolLM2 GGUF");
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer from GGUF");
    let data = read_json(&format!("{TESTDATA}/smollm2/greedy.json"));
    let cases = data["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 8);
    for case in cases {
        let prompt = case["prompt"].as_str().expect("prompt");
        assert_eq!(
            tok.encode(prompt, true, true).unwrap(),
            ids_of(&case["prompt_ids"]),
            "{prompt:?}"
        );
        let generated = ids_of(&case["generated_ids"]);
        let text = case["text"].as_str().expect("text");
        assert_eq!(tok.decode(&generated, true).unwrap(), text, "{prompt:?}");
        assert_eq!(streamed(&tok, &generated, true), text, "{prompt:?}");
    }
}

fn byte_vocab() -> Tokenizer {
    // <unk> <s> </s>, the 256 byte tokens, then "▁" and "▁a".
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    tokens.push("▁".into());
    tokens.push("▁a".into());
    let mut types = vec![TokenType::Unknown, TokenType::Control, TokenType::Control];
    types.extend([TokenType::Byte; 256]);
    types.extend([TokenType::Normal; 2]);
    let mut scores = vec![0.0; 259];
    scores.extend([-1.0, -2.0]);
    Tokenizer::from_vocab(Vocab {
        model: "llama".into(),
        tokens,
        token_types: Some(types),
        scores: Some(scores),
        ..Vocab::default()
    })
    .unwrap()
}

#[test]
fn streaming_never_splits_utf8() {
    // Llama 2 spells emoji with byte-fallback tokens.
    let tok = tokenizer("llama2");
    let text = "Hi 😀👍🏽 ❤️‍🔥 ok";
    let ids = tok.encode(text, true, false).unwrap();
    let mut d = tok.detokenizer(true);
    let mut chunks = Vec::new();
    for &id in &ids {
        chunks.push(d.push(id).unwrap());
        assert!(d.pending().len() < 4);
    }
    assert_eq!(d.finish(), "");
    assert_eq!(chunks.concat(), text);
    // The four byte tokens of 😀 yield nothing, nothing, nothing, then 😀.
    let smile: Vec<usize> = (0..chunks.len())
        .filter(|&i| chunks[i].contains('😀'))
        .collect();
    assert_eq!(smile.len(), 1);
    assert_eq!(&chunks[smile[0] - 3..smile[0]], ["", "", ""]);
    assert_eq!(chunks[smile[0]], "😀");

    // Llama 3 splits 🦙 (F0 9F A6 99) across byte-level tokens.
    let tok = tokenizer("llama3");
    let ids = tok.encode("🦙", false, false).unwrap();
    assert!(ids.len() > 1);
    let mut d = tok.detokenizer(false);
    let chunks: Vec<String> = ids.iter().map(|&id| d.push(id).unwrap()).collect();
    assert_eq!(chunks.last().unwrap(), "🦙");
    assert!(chunks[..chunks.len() - 1].iter().all(String::is_empty));
}

#[test]
fn streaming_invalid_sequences() {
    let tok = byte_vocab();
    let b = |x: u8| 3 + u32::from(x);
    let mut d = tok.detokenizer(false);
    // A lone continuation byte is replaced at once.
    assert_eq!(d.push(b(0x80)).unwrap(), "\u{FFFD}");
    // A lead byte waits; an ASCII byte after it proves it invalid.
    assert_eq!(d.push(b(0xE2)).unwrap(), "");
    assert_eq!(d.push(b(0x82)).unwrap(), "");
    assert_eq!(d.push(b(b'x')).unwrap(), "\u{FFFD}x");
    // 0xFF can never start a character.
    assert_eq!(d.push(b(0xFF)).unwrap(), "\u{FFFD}");
    // € split in three.
    assert_eq!(d.push(b(0xE2)).unwrap(), "");
    assert_eq!(d.push(b(0x82)).unwrap(), "");
    assert_eq!(d.push(b(0xAC)).unwrap(), "€");
    // An incomplete tail is flushed as one U+FFFD.
    assert_eq!(d.push(b(0xF0)).unwrap(), "");
    assert_eq!(d.push(b(0x9F)).unwrap(), "");
    assert_eq!(d.pending(), [0xF0, 0x9F]);
    assert_eq!(d.finish(), "\u{FFFD}");

    let ids: Vec<u32> = [0x80, 0xE2, 0x82, b'x', 0xFF, 0xE2, 0x82, 0xAC, 0xF0, 0x9F]
        .map(b)
        .to_vec();
    assert_eq!(
        tok.decode(&ids, false).unwrap(),
        "\u{FFFD}\u{FFFD}x\u{FFFD}€\u{FFFD}"
    );
    assert_eq!(
        streamed(&tok, &ids, false),
        tok.decode(&ids, false).unwrap()
    );

    // An unknown id is an error and leaves the stream as it was.
    let mut d = tok.detokenizer(false);
    assert_eq!(d.push(b(0xC3)).unwrap(), "");
    assert!(matches!(
        d.push(9999),
        Err(TokenizerError::UnknownTokenId { id: 9999, .. })
    ));
    assert_eq!(d.push(b(0xA9)).unwrap(), "é");
}

#[test]
fn spm_leading_space_and_specials() {
    let tok = byte_vocab();
    // "▁a" + byte fallback for "b"; the leading ▁ is stripped on decode.
    let ids = tok.encode("a b", true, false).unwrap();
    assert_eq!(ids, [1, 260, 259, 3 + u32::from(b'b')]);
    assert_eq!(tok.decode(&ids, true).unwrap(), "a b");
    assert_eq!(tok.decode(&ids, false).unwrap(), "<s> a b");
    // "<s>" is text unless special tokens are parsed.
    assert_eq!(tok.encode("<s>", false, true).unwrap(), [1]);
    assert_ne!(tok.encode("<s>", false, false).unwrap(), [1]);
    assert_eq!(tok.encode("", true, true).unwrap(), [1]);
    assert_eq!(tok.encode("", false, true).unwrap(), Vec::<u32>::new());
}

#[test]
fn bad_input_is_a_named_error() {
    let tok = byte_vocab();
    assert!(matches!(
        tok.decode(&[1, 100_000], false),
        Err(TokenizerError::UnknownTokenId {
            id: 100_000,
            n_tokens: 261
        })
    ));
    assert!(matches!(
        tok.token_to_piece(261),
        Err(TokenizerError::UnknownTokenId { .. })
    ));
    assert!(matches!(
        tok.token_text(u32::MAX),
        Err(TokenizerError::UnknownTokenId { .. })
    ));
    assert!(matches!(
        tok.encode_bytes(b"ok \xff\xfe", true, true),
        Err(TokenizerError::InvalidUtf8 { valid_up_to: 3 })
    ));
    assert_eq!(tok.encode_bytes(b"a", false, false).unwrap(), [260]);

    let base = || Vocab {
        model: "gpt2".into(),
        pre: Some("llama-bpe".into()),
        tokens: vec!["a".into(), "b".into(), "ab".into()],
        merges: Some(vec!["a b".into()]),
        bos_token_id: Some(0),
        ..Vocab::default()
    };
    assert!(Tokenizer::from_vocab(base()).is_ok());
    let err = |v: Vocab| Tokenizer::from_vocab(v).expect_err("must be refused");
    assert!(matches!(
        err(Vocab {
            model: "bert".into(),
            ..base()
        }),
        TokenizerError::UnsupportedModel { .. }
    ));
    let unknown = err(Vocab {
        pre: Some("qwen2".into()),
        ..base()
    });
    assert!(matches!(
        unknown,
        TokenizerError::UnsupportedPreTokenizer { .. }
    ));
    // The message names the value and lists what is supported.
    let msg = unknown.to_string();
    for name in [
        "\"qwen2\"",
        "llama-bpe",
        "smaug-bpe",
        "smollm",
        "llama4",
        "gpt-2",
    ] {
        assert!(msg.contains(name), "{msg}");
    }
    assert!(matches!(
        err(Vocab {
            tokens: vec![],
            ..base()
        }),
        TokenizerError::EmptyVocab
    ));
    assert!(matches!(
        err(Vocab {
            tokens: vec!["a".into(), "b".into(), "a".into()],
            ..base()
        }),
        TokenizerError::DuplicateToken {
            first: 0,
            second: 2,
            ..
        }
    ));
    assert!(matches!(
        err(Vocab {
            scores: Some(vec![0.0]),
            ..base()
        }),
        TokenizerError::LengthMismatch {
            expected: 3,
            found: 1,
            ..
        }
    ));
    assert!(matches!(
        err(Vocab {
            token_types: Some(vec![TokenType::Normal; 4]),
            ..base()
        }),
        TokenizerError::LengthMismatch { .. }
    ));
    assert!(matches!(
        err(Vocab {
            bos_token_id: Some(3),
            ..base()
        }),
        TokenizerError::SpecialTokenOutOfRange {
            what: "BOS",
            id: 3,
            n_tokens: 3
        }
    ));
    assert!(matches!(
        err(Vocab {
            bos_token_id: None,
            ..base()
        }),
        TokenizerError::MissingSpecialToken { what: "BOS" }
    ));
    assert!(matches!(
        err(Vocab {
            merges: None,
            ..base()
        }),
        TokenizerError::MissingMerges
    ));
    assert!(matches!(
        err(Vocab {
            merges: Some(vec!["ab".into()]),
            ..base()
        }),
        TokenizerError::MalformedMerge { index: 0, .. }
    ));
    assert!(matches!(
        err(Vocab {
            merges: Some(vec!["a b".into(), "b a".into()]),
            ..base()
        }),
        TokenizerError::MergeNotInVocab { index: 1, .. }
    ));
    assert!(matches!(
        err(Vocab {
            model: "llama".into(),
            token_types: Some(vec![TokenType::Byte, TokenType::Normal, TokenType::Normal]),
            ..base()
        }),
        TokenizerError::MalformedByteToken { id: 0, .. }
    ));

    // A byte-level vocabulary without the byte characters cannot spell "c".
    let tok = Tokenizer::from_vocab(base()).unwrap();
    assert_eq!(tok.encode("ab", false, false).unwrap(), [2]);
    assert!(matches!(
        tok.encode("c", false, false),
        Err(TokenizerError::UnrepresentableByte { byte: b'c' })
    ));

    // GGUF keys of the wrong type are named.
    let mut w = GgufWriter::new();
    w.add_kv("tokenizer.ggml.model", Value::from("llama"))
        .unwrap();
    w.add_kv("tokenizer.ggml.tokens", Array::from_strings(["a", "b"]))
        .unwrap();
    w.add_kv(
        "tokenizer.ggml.token_type",
        Array::from_scalars(&[1.0f32, 1.0]),
    )
    .unwrap();
    let bytes = w.to_bytes();
    let file = GgufFile::parse(&bytes).unwrap();
    match Vocab::from_gguf(&file) {
        Err(TokenizerError::Gguf(GgufError::WrongType { key, .. })) => {
            assert_eq!(key, "tokenizer.ggml.token_type")
        }
        other => panic!("expected a wrong-type error, got {other:?}"),
    }
    let mut w = GgufWriter::new();
    w.add_kv("tokenizer.ggml.model", Value::from("llama"))
        .unwrap();
    w.add_kv("tokenizer.ggml.tokens", Array::from_strings(["a", "b"]))
        .unwrap();
    w.add_kv("tokenizer.ggml.token_type", Array::from_scalars(&[1i32, 9]))
        .unwrap();
    let bytes = w.to_bytes();
    let file = GgufFile::parse(&bytes).unwrap();
    assert!(matches!(
        Vocab::from_gguf(&file),
        Err(TokenizerError::InvalidTokenType { id: 1, value: 9 })
    ));
    let bytes = GgufWriter::new().to_bytes();
    let file = GgufFile::parse(&bytes).unwrap();
    assert!(matches!(
        Vocab::from_gguf(&file),
        Err(TokenizerError::Gguf(GgufError::MissingKey { .. }))
    ));

    // Malformed tokenizer.json.
    assert!(matches!(
        Vocab::from_hf_json("{", None),
        Err(TokenizerError::Json { .. })
    ));
    assert!(matches!(
        Vocab::from_hf_json(r#"{"model": {"type": "WordPiece", "vocab": {}}}"#, None),
        Err(TokenizerError::UnsupportedHfTokenizer { .. })
    ));
    assert!(matches!(
        Vocab::from_hf_json(r#"{"model": {"type": "BPE", "vocab": []}}"#, None),
        Err(TokenizerError::BadHfTokenizer { .. })
    ));
    // An id far beyond any real vocabulary is refused before allocating.
    assert!(matches!(
        Vocab::from_hf_json(
            r#"{"model": {"type": "BPE", "vocab": {"a": 4000000000}}}"#,
            None
        ),
        Err(TokenizerError::BadHfTokenizer { .. })
    ));
}

#[test]
fn hf_dir_import_pads_to_config_vocab_size() {
    let dir = std::env::temp_dir().join(format!("spinel-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json("smollm2")).unwrap();
    std::fs::copy(
        format!("{TESTDATA}/tokenizers/smollm2/tokenizer_config.json"),
        dir.join("tokenizer_config.json"),
    )
    .unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"vocab_size": 49160, "bos_token_id": 1}"#,
    )
    .unwrap();
    let v = Vocab::from_hf_dir(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    let v = v.unwrap();
    assert_eq!(v.tokens.len(), 49160);
    assert_eq!(&v.tokens[49159], "[PAD49159]");
    assert_eq!(v.token_types.as_ref().unwrap()[49159], TokenType::Unused);
    let tok = Tokenizer::from_vocab(v).unwrap();
    assert_eq!(tok.token_to_piece(49159).unwrap(), b"");
    assert!(matches!(
        Vocab::from_hf_dir("/nonexistent/spinel"),
        Err(TokenizerError::Io { .. })
    ));
}
