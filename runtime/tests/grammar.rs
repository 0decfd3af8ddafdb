//! GBNF grammars as llama.cpp writes them: every sample grammar llama.cpp
//! ships (tests/data/gbnf) parses, and matches the sentences it describes.

use std::sync::Arc;

use spinel_runtime::grammar::{Grammar, Matcher};

fn load(name: &str) -> Arc<Grammar> {
    let path = format!("{}/tests/data/gbnf/{name}.gbnf", env!("CARGO_MANIFEST_DIR"));
    let src = std::fs::read_to_string(&path).unwrap();
    Arc::new(Grammar::parse(&src).unwrap_or_else(|e| panic!("{name}: {e}")))
}

fn accepts(g: &Arc<Grammar>, text: &str) -> bool {
    let mut m = Matcher::new(g.clone());
    m.accept_str(text) && m.is_complete()
}

/// Feeds `text` in pieces of `n` bytes (splitting characters), as tokens.
fn accepts_in_pieces(g: &Arc<Grammar>, text: &str, n: usize) -> bool {
    let mut m = Matcher::new(g.clone());
    text.as_bytes()
        .chunks(n)
        .all(|p| m.allows_bytes(p) && m.accept_bytes(p))
        && m.is_complete()
}

#[test]
fn every_llama_cpp_sample_grammar_parses() {
    let dir = format!("{}/tests/data/gbnf", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "gbnf") {
            let src = std::fs::read_to_string(&path).unwrap();
            let g = Grammar::parse(&src).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(g.n_rules() > 1);
            n += 1;
        }
    }
    assert_eq!(n, 8);
}

#[test]
fn json_grammar() {
    let g = load("json");
    let good = [
        r#"{}"#,
        r#"{"a": 1}"#,
        "{\"a\": [1, 2.5, -3e+7, true, false, null], \"b\": {\"c\": \"d\\n\\u00e9\"}}",
        "{\n  \"nested\": {\"deeper\": {\"x\": []}}\n}",
        r#"{"unicode": "héllo ✓"}"#,
    ];
    for doc in good {
        assert!(accepts(&g, doc), "{doc}");
        assert!(accepts_in_pieces(&g, doc, 3), "{doc}");
    }
    let bad = [
        "[1, 2]",
        "{\"a\": 1,}",
        "{\"a\" 1}",
        "{\"a\": tru}",
        "{\"a\": \"unterminated}",
        "{\"a\": \"bad \\q escape\"}",
        "{\"a\": 01.}",
        "{a: 1}",
    ];
    for doc in bad {
        assert!(!accepts(&g, doc), "{doc}");
    }
}

#[test]
fn arithmetic_chess_list_c_english_japanese() {
    let cases: [(&str, &[&str], &[&str]); 6] = [
        (
            "arithmetic",
            &["x=1\n", "x+y*2 = (b+2)\n"],
            &["x=\n", "=x\n", "x=1"],
        ),
        (
            "chess",
            &[
                "1. e4 e5\n2. Nf3 Nc6\n",
                "1. d4 d5\n2. c4 dxc4\n3. O-O Qxd1+\n",
            ],
            &["1. e4 e5\n", "1. e9 e5\n2. a3 a4\n"],
        ),
        ("list", &["- one\n- two\n"], &["- \n", "one\n", "- x"]),
        (
            "c",
            &[
                "int main(){return 0;}",
                "int f(int x){while(x<3){x = x+1;}return x;}",
            ],
            &["int main(){return 0}", "main(){}"],
        ),
        (
            "english",
            &["Hello, world!", "one two\tthree"],
            &["héllo", " lead"],
        ),
        (
            "japanese",
            &["こんにちは", "カタカナ 漢字"],
            &["abc", "こんにちは "],
        ),
    ];
    for (name, good, bad) in cases {
        let g = load(name);
        for s in good {
            assert!(accepts(&g, s), "{name}: {s:?}");
            assert!(accepts_in_pieces(&g, s, 2), "{name}: {s:?}");
        }
        for s in bad {
            assert!(!accepts(&g, s), "{name}: {s:?} accepted");
        }
    }
}
