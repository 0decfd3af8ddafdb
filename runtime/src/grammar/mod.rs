//! Constrained output: GBNF grammars (llama.cpp's grammar format) and JSON
//! Schemas turned into them, matched token by token in the sampler.
//!
//! * [`Grammar`]: a parsed GBNF grammar (rules of literals, character
//!   classes, rule references, groups and repetitions).
//! * [`Matcher`]: the pushdown automaton over a grammar: which code points
//!   may come next, fed text as the model generates it.
//! * [`json_schema_to_gbnf`]: a JSON Schema as a GBNF grammar whose
//!   sentences are exactly the JSON documents the schema accepts (within the
//!   supported keywords), as llama.cpp's json-schema-to-grammar.

mod constraint;
mod gbnf;
mod json_schema;
mod matcher;

pub use constraint::TokenConstraint;
pub use gbnf::{Grammar, GrammarError};
pub use json_schema::{JSON_GBNF, SchemaError, json_schema_to_gbnf};
pub use matcher::Matcher;
