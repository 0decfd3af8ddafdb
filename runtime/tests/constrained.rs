//! Constrained output with the real model: answers under a JSON Schema
//! always parse and validate (checked by an independent JSON Schema
//! validator), GBNF grammars hold, and a grammar that allows everything the
//! model says changes nothing.

use std::sync::Arc;

use serde_json::{Value, json};
use spinel_runtime::engine::{Engine, EngineError, GenerateOptions, SessionOptions, StopReason};
use spinel_runtime::grammar::{Grammar, Matcher};
use spinel_runtime::sampling::SamplingParams;

mod common;

fn engine() -> Arc<Engine> {
    common::test_engine()
}

fn session() -> spinel_runtime::engine::Session {
    engine()
        .session(&SessionOptions {
            n_ctx: Some(1024),
            n_threads: Some(2),
            ..SessionOptions::default()
        })
        .unwrap()
}

fn sampling(seed: Option<u64>) -> SamplingParams {
    match seed {
        None => SamplingParams::greedy(),
        Some(seed) => SamplingParams {
            temperature: 1.0,
            seed,
            ..SamplingParams::default()
        },
    }
}

/// One chat answer under `schema`; asserts it ended by itself (the grammar
/// completed, then end of generation) and returns it parsed.
fn answer(schema: &Value, question: &str, seed: Option<u64>) -> Value {
    let opts = GenerateOptions {
        sampling: sampling(seed),
        max_tokens: Some(400),
        ..GenerateOptions::default()
    }
    .json_schema(schema)
    .unwrap();
    let g = session().chat(question, &opts, |_| {}).unwrap();
    assert!(
        matches!(g.stop, StopReason::EndOfGeneration(_)),
        "{question} (seed {seed:?}): stopped by {:?} after {:?}",
        g.stop,
        g.text
    );
    serde_json::from_str(&g.text)
        .unwrap_or_else(|e| panic!("{question} (seed {seed:?}): {e} in {:?}", g.text))
}

fn check(schema: Value, question: &str) {
    let validator = jsonschema::validator_for(&schema).unwrap();
    for seed in [None, Some(1), Some(2), Some(3)] {
        let doc = answer(&schema, question, seed);
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{doc}: {errors:?}");
    }
}

#[test]
fn nested_objects_enums_and_required_fields_validate() {
    check(
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 24},
                "age": {"type": "integer"},
                "role": {"enum": ["admin", "user", "guest"]},
                "address": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "maxLength": 24},
                        "zip": {"type": "string", "minLength": 5, "maxLength": 5}
                    },
                    "required": ["city", "zip"]
                },
                "verified": {"type": "boolean"}
            },
            "required": ["name", "age", "role", "address"]
        }),
        "Describe a user of a web shop as JSON.",
    );
}

#[test]
fn arrays_of_objects_validate() {
    check(
        json!({
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 4,
                    "items": {
                        "type": "object",
                        "properties": {
                            "fruit": {"type": "string", "maxLength": 16},
                            "count": {"type": "integer"},
                            "price": {"type": "number"}
                        },
                        "required": ["fruit", "count"]
                    }
                }
            },
            "required": ["items"]
        }),
        "List a few fruits to buy, as JSON.",
    );
}

#[test]
fn defs_refs_any_of_and_type_lists_validate() {
    check(
        json!({
            "$defs": {
                "point": {
                    "type": "object",
                    "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                    "required": ["x", "y"]
                }
            },
            "type": "object",
            "properties": {
                "label": {"type": ["string", "null"], "maxLength": 12},
                "points": {"type": "array", "items": {"$ref": "#/$defs/point"}, "maxItems": 3},
                "shape": {"anyOf": [{"const": "circle"}, {"type": "integer"}]}
            },
            "required": ["label", "points", "shape"]
        }),
        "Give a shape with its points as JSON.",
    );
}

#[test]
fn json_object_gives_an_object() {
    let opts = GenerateOptions {
        sampling: SamplingParams::greedy(),
        max_tokens: Some(300),
        ..GenerateOptions::default()
    }
    .json_object();
    let g = session()
        .chat(
            "What is the capital of France? Answer in JSON.",
            &opts,
            |_| {},
        )
        .unwrap();
    let v: Value = serde_json::from_str(&g.text).unwrap_or_else(|e| panic!("{e}: {:?}", g.text));
    assert!(v.is_object(), "{v}");
}

#[test]
fn gbnf_grammar_holds() {
    let gbnf = "root ::= \"Answer: \" (\"yes\" | \"no\") \", because \" [a-z ]{1,40} \".\"";
    let grammar = Arc::new(Grammar::parse(gbnf).unwrap());
    for seed in [None, Some(7), Some(8)] {
        let opts = GenerateOptions {
            sampling: sampling(seed),
            max_tokens: Some(100),
            ..GenerateOptions::default()
        }
        .gbnf(gbnf)
        .unwrap();
        let g = session().chat("Is the sky blue?", &opts, |_| {}).unwrap();
        let mut m = Matcher::new(grammar.clone());
        assert!(m.accept_str(&g.text) && m.is_complete(), "{:?}", g.text);
        assert!(matches!(g.stop, StopReason::EndOfGeneration(_)));
    }
}

/// A grammar that allows every text leaves greedy decoding as it was.
#[test]
fn a_grammar_allowing_everything_changes_nothing() {
    let base = GenerateOptions {
        sampling: SamplingParams::greedy(),
        max_tokens: Some(40),
        ..GenerateOptions::default()
    };
    let free = session()
        .chat("Tell me about the moon.", &base, |_| {})
        .unwrap();
    let any = base.clone().gbnf("root ::= [^\\x00]*").unwrap();
    let constrained = session()
        .chat("Tell me about the moon.", &any, |_| {})
        .unwrap();
    assert_eq!(free.generated_ids, constrained.generated_ids);
    assert_eq!(free.stop, constrained.stop);
}

#[test]
fn unusable_constraints_are_named_errors() {
    let err = |r: Result<GenerateOptions, EngineError>| match r {
        Err(EngineError::Grammar { reason }) => reason,
        other => panic!("expected a grammar error, got {other:?}"),
    };
    let reason = err(GenerateOptions::default().gbnf("root ::= undefined-rule"));
    assert!(reason.contains("undefined-rule"), "{reason}");
    let reason = err(GenerateOptions::default().json_schema(&json!({"$ref": "#/$defs/nowhere"})));
    assert!(reason.contains("JSON schema"), "{reason}");
    let opts = GenerateOptions {
        ignore_eog: true,
        ..GenerateOptions::default().json_object()
    };
    let e = session().chat("hi", &opts, |_| {}).unwrap_err();
    assert!(matches!(e, EngineError::Grammar { .. }), "{e}");
}
