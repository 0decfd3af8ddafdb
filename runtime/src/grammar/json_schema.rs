//! JSON Schema → GBNF, the job of llama.cpp's `json-schema-to-grammar`.
//!
//! A structured-output request carries a JSON Schema; sampling is
//! constrained by a GBNF [`Grammar`](super::Grammar), so the schema is
//! turned into one whose sentences are the JSON documents the schema
//! accepts. Every subschema becomes a rule (`$defs` entries become one rule
//! each, referenced by name, so recursive schemas work), and the grammar is
//! kept finite where a model could otherwise loop: whitespace and digits are
//! bounded.
//!
//! What is supported, and where the grammar is narrower or wider than
//! the schema, is documented on [`json_schema_to_gbnf`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde_json::{Map, Value};

/// A grammar for any JSON object (with any values inside), the grammar of
/// `response_format: {"type": "json_object"}`: `root ::= object`.
///
/// Its `value`, `object`, `array`, `string`, `number`, `integer`, `boolean`,
/// `null` and `space` rules are the ones [`json_schema_to_gbnf`] emits.
pub const JSON_GBNF: &str = r#"root ::= object
value ::= object | array | string | number | boolean | null
object ::= "{" space ( string space ":" space value space ( "," space string space ":" space value space )* )? "}"
array ::= "[" space ( value space ( "," space value space )* )? "]"
string ::= "\"" char* "\""
char ::= [^"\\\x00-\x1F\x7F] | escape
escape ::= "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )
number ::= integer ( "." [0-9]{1,16} )? ( [eE] ( "-" | "+" )? [0-9]{1,16} )?
integer ::= "-"? ( "0" | [1-9] [0-9]{0,15} )
boolean ::= "true" | "false"
null ::= "null"
space ::= | " " | "\n" [ \t]{0,20}
"#;

/// Deepest nesting of subschemas (and of `$ref`s, `allOf`s and values).
const MAX_DEPTH: usize = 64;
/// Largest `minItems`, `maxItems`, `minLength`, `maxLength`.
const MAX_REPEAT: u64 = 10_000;
/// Most subschemas visited (distributing `anyOf` over siblings copies them).
const MAX_VISITS: usize = 100_000;
/// Most alternatives one `allOf` of several `anyOf`s may multiply into.
const MAX_ALTERNATIVES: usize = 64;
/// Largest grammar text.
const MAX_GRAMMAR_BYTES: usize = 4 << 20;
/// Digits in an integer part, a fraction or an exponent.
const MAX_DIGITS: u64 = 16;
/// The largest integer the grammar writes (16 digits).
const MAX_UINT: u64 = 9_999_999_999_999_999;
/// Longest rule name (before a deduplicating suffix).
const MAX_NAME: usize = 64;
/// Longest property name excluded from `additionalProperties` keys.
const MAX_TRIE_KEY: usize = 256;
/// Trie levels written inline in one rule before a new rule starts (keeps
/// parentheses nesting well under the parser's limit).
const TRIE_LEVELS_PER_RULE: usize = 12;
/// A character class no character matches: the body of a `$ref` rule whose
/// target accepts nothing.
const NOTHING: &str = r"[^\x00-\U0010FFFF]";

/// A rule [`json_schema_to_gbnf`] may emit verbatim.
struct Primitive {
    name: &'static str,
    body: &'static str,
    deps: &'static [&'static str],
}

const PRIMITIVES: &[Primitive] = &[
    Primitive {
        name: "value",
        body: "object | array | string | number | boolean | null",
        deps: &["object", "array", "string", "number", "boolean", "null"],
    },
    Primitive {
        name: "object",
        body: r#""{" space ( string space ":" space value space ( "," space string space ":" space value space )* )? "}""#,
        deps: &["space", "string", "value"],
    },
    Primitive {
        name: "array",
        body: r#""[" space ( value space ( "," space value space )* )? "]""#,
        deps: &["space", "value"],
    },
    Primitive {
        name: "string",
        body: r#""\"" char* "\"""#,
        deps: &["char"],
    },
    Primitive {
        name: "char",
        body: r#"[^"\\\x00-\x1F\x7F] | escape"#,
        deps: &["escape"],
    },
    Primitive {
        name: "escape",
        body: r#""\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} )"#,
        deps: &[],
    },
    Primitive {
        name: "number",
        body: r#"integer ( "." [0-9]{1,16} )? ( [eE] ( "-" | "+" )? [0-9]{1,16} )?"#,
        deps: &["integer"],
    },
    Primitive {
        name: "integer",
        body: r#""-"? ( "0" | [1-9] [0-9]{0,15} )"#,
        deps: &[],
    },
    Primitive {
        name: "boolean",
        body: r#""true" | "false""#,
        deps: &[],
    },
    Primitive {
        name: "null",
        body: r#""null""#,
        deps: &[],
    },
    Primitive {
        name: "date",
        body: r#"[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [1-2] [0-9] | "3" [0-1] )"#,
        deps: &[],
    },
    Primitive {
        name: "time",
        body: r#"( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{1,9} )? ( "Z" | ( "+" | "-" ) ( [01] [0-9] | "2" [0-3] ) ":" [0-5] [0-9] )"#,
        deps: &[],
    },
    Primitive {
        name: "date-time",
        body: r#"date "T" time"#,
        deps: &["date", "time"],
    },
    Primitive {
        name: "uuid",
        body: r#"[0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12}"#,
        deps: &[],
    },
    Primitive {
        name: "space",
        body: r#"| " " | "\n" [ \t]{0,20}"#,
        deps: &[],
    },
];

/// The `format`s with a grammar (each a primitive of the same name).
const FORMATS: &[&str] = &["date", "time", "date-time", "uuid"];

/// The `type` names.
const TYPES: &[&str] = &[
    "null", "boolean", "integer", "number", "string", "array", "object",
];

/// Keywords this converter turns into grammar. Any other keyword not in
/// [`UNSUPPORTED`] is an annotation (or unknown) and ignored.
const HANDLED: &[&str] = &[
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "unevaluatedProperties",
    "items",
    "prefixItems",
    "additionalItems",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "nullable",
];

/// Validation keywords that constrain documents in ways the grammar cannot
/// express: a schema using them is an error rather than a looser grammar.
const UNSUPPORTED: &[&str] = &[
    "pattern",
    "multipleOf",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "minContains",
    "maxContains",
    "patternProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "unevaluatedItems",
    "$dynamicRef",
    "$recursiveRef",
];

static ANY: Value = Value::Bool(true);

/// Why a schema cannot be turned into a grammar. Every variant carries the
/// JSON pointer (`/properties/age`) of the schema where it happened; `""`
/// is the root.
#[derive(Clone, Debug, PartialEq)]
pub enum SchemaError {
    /// A schema that is neither an object nor a boolean.
    NotASchema { path: String, found: String },
    /// A keyword (or a value of it) the grammar cannot express.
    Unsupported {
        path: String,
        keyword: String,
        detail: String,
    },
    /// A keyword whose value is malformed (`"minItems": "two"`).
    Invalid {
        path: String,
        keyword: String,
        reason: String,
    },
    /// A `$ref` that is not a pointer into this document, or points nowhere.
    BadRef {
        path: String,
        reference: String,
        reason: String,
    },
    /// The schema accepts no document (`false`, an empty `enum`,
    /// `minItems` above `maxItems`, ...).
    Unsatisfiable { path: String, reason: String },
    /// Schemas nested deeper than the limit (or a `$ref`/`allOf` loop).
    TooDeep { path: String, limit: usize },
    /// A count or the grammar itself above a limit.
    TooLarge { path: String, reason: String },
    /// A `$ref` that reaches itself before any character of the document
    /// (`"A": {"anyOf": [{"$ref": "#/$defs/A"}, ...]}`).
    LeftRecursion { path: String },
}

impl SchemaError {
    /// The JSON pointer of the schema where the error happened.
    pub fn path(&self) -> &str {
        match self {
            SchemaError::NotASchema { path, .. }
            | SchemaError::Unsupported { path, .. }
            | SchemaError::Invalid { path, .. }
            | SchemaError::BadRef { path, .. }
            | SchemaError::Unsatisfiable { path, .. }
            | SchemaError::TooDeep { path, .. }
            | SchemaError::TooLarge { path, .. }
            | SchemaError::LeftRecursion { path } => path,
        }
    }
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.path() {
            "" => write!(f, "at the root: ")?,
            path => write!(f, "at {path}: ")?,
        }
        match self {
            SchemaError::NotASchema { found, .. } => {
                write!(f, "a schema must be an object or a boolean, not {found}")
            }
            SchemaError::Unsupported {
                keyword, detail, ..
            } => {
                write!(f, "unsupported keyword \"{keyword}\"")?;
                if !detail.is_empty() {
                    write!(f, " ({detail})")?;
                }
                Ok(())
            }
            SchemaError::Invalid {
                keyword, reason, ..
            } => write!(f, "\"{keyword}\" {reason}"),
            SchemaError::BadRef {
                reference, reason, ..
            } => write!(f, "bad $ref \"{reference}\": {reason}"),
            SchemaError::Unsatisfiable { reason, .. } => {
                write!(f, "no document can match: {reason}")
            }
            SchemaError::TooDeep { limit, .. } => {
                write!(f, "schemas nested deeper than {limit} levels")
            }
            SchemaError::TooLarge { reason, .. } => write!(f, "too large: {reason}"),
            SchemaError::LeftRecursion { .. } => write!(
                f,
                "this schema refers to itself (through $ref) before any character of the document"
            ),
        }
    }
}

impl std::error::Error for SchemaError {}

/// The GBNF grammar (root rule `root`) of the JSON documents `schema`
/// accepts, as llama.cpp's `json_schema_to_grammar` makes it.
///
/// ## The documents the grammar writes
///
/// * Whitespace: `space ::= | " " | "\n" [ \t]{0,20}` after every `{`, `[`,
///   `,` and `:`, and after every value and key inside a container; none
///   before or after the document.
/// * Numbers: up to 16 integer digits, 16 fraction digits and 16 exponent
///   digits (`1e05` is allowed, `01` is not).
/// * Strings: any character but `"`, `\`, U+0000-U+001F and U+007F, plus the
///   JSON escapes `\" \\ \/ \b \f \n \r \t \uXXXX`.
/// * Object members come in `properties` order, required ones first, then
///   the optional ones that are present, then extra keys
///   (`additionalProperties`), as llama.cpp does; a document with the same
///   members in another order is rejected. `properties` order is the order
///   of [`serde_json::Map`]: the schema's own order with serde_json's
///   `preserve_order` feature, alphabetical without it.
///
/// ## Keywords
///
/// Supported: `type` (a name or a list; none, `{}` or `true` is any value,
/// and a missing `type` is inferred from the keywords present), `enum`,
/// `const`, `properties`, `required`, `additionalProperties` (also
/// `unevaluatedProperties` where `additionalProperties` is absent), `items`,
/// `prefixItems` (and draft-7 array `items` with `additionalItems`),
/// `minItems`, `maxItems`, `minLength`, `maxLength`, `format` (`date`,
/// `time`, `date-time`, `uuid`; other formats are annotations), `minimum`,
/// `maximum`, `exclusiveMinimum`, `exclusiveMaximum` (draft-4 booleans too),
/// `anyOf`, `oneOf`, `allOf`, `$ref` to a JSON pointer in the document
/// (`#/$defs/X`, `#/definitions/X`, `#`), OpenAPI's `nullable`. Annotations
/// and unknown keywords are ignored.
///
/// Rejected with [`SchemaError::Unsupported`]: `pattern`, `multipleOf`,
/// `not`, `if`/`then`/`else`, `uniqueItems: true`, `contains`,
/// `patternProperties`, `propertyNames`, `minProperties`, `maxProperties`,
/// `dependentRequired`, `dependentSchemas`, `dependencies`,
/// `unevaluatedItems`, `$dynamicRef`, `$recursiveRef`, and non-integer
/// bounds on `"type": "number"`.
///
/// ## Where the grammar is narrower or wider than the schema
///
/// * `additionalProperties` absent: no extra keys when `properties` is
///   given (as llama.cpp, unlike JSON Schema's default); an object schema
///   with neither `properties` nor `additionalProperties` accepts any object.
/// * Without `type`, only the types the keywords imply are accepted
///   (`{"minimum": 0}` accepts numbers only; JSON Schema would also accept
///   any string, object, ...).
/// * Integers outside ±9999999999999999 (16 digits) are never written;
///   bounds beyond them are ignored. `-0` is accepted where 0 is.
/// * A number with bounds is written without an exponent.
/// * `oneOf` is read as `anyOf`: a document matching several alternatives
///   is accepted.
/// * `enum`/`const` values are written as serde_json prints them (strings
///   with minimal escaping, `1.0` as `1.0`, not `1`), with the grammar's
///   whitespace inside arrays and objects; with an explicit `type`, values of
///   other types are dropped, but other keywords are not checked against
///   them.
/// * `format` wins over `minLength`/`maxLength`; `date` accepts any day
///   01-31 in any month, `time` needs seconds and an offset (`Z` or
///   `±hh:mm`), leap seconds are rejected.
/// * `minLength`/`maxLength` count characters and escapes, so a surrogate
///   pair (`\ud83d\ude00`) counts as two.
/// * Extra keys (`additionalProperties`) may repeat each other; they cannot
///   spell a declared property name unescaped, but can with `\u` escapes,
///   and names over 256 characters or holding `"`, `\` or control
///   characters are not excluded.
/// * `$ref` resolves against the document root; `$id` and anchors are not
///   followed. `$ref` beside other keywords, and `allOf`, merge the schemas
///   keyword by keyword; two different values of a keyword that cannot be
///   merged (`format`, `prefixItems`) are [`SchemaError::Unsupported`].
///
/// Limits against hostile schemas: nesting depth 64, repetition counts
/// (`minItems`, `maxItems`, `minLength`, `maxLength`) 10 000, 100 000
/// subschemas visited, 64 alternatives from one `allOf` of `anyOf`s, 4 MiB of
/// grammar.
///
/// # Example
///
/// ```
/// use spinel_runtime::grammar::json_schema_to_gbnf;
///
/// let schema = serde_json::json!({
///     "type": "object",
///     "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
///     "required": ["name"]
/// });
/// let gbnf = json_schema_to_gbnf(&schema).unwrap();
/// assert!(gbnf.starts_with("root ::= "));
///
/// let schema = serde_json::json!({"properties": {"id": {"type": "string", "pattern": "a+"}}});
/// let err = json_schema_to_gbnf(&schema).unwrap_err();
/// assert!(err.to_string().starts_with("at /properties/id: unsupported keyword \"pattern\""));
/// ```
pub fn json_schema_to_gbnf(schema: &Value) -> Result<String, SchemaError> {
    let mut c = Converter::new(schema);
    let root = c.visit(schema, "", "root", 0)?;
    c.finish(&root)
}

// ---------------------------------------------------------------------------
// Grammar expressions

/// A GBNF expression, rendered only when the grammar is written out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Expr {
    /// Text matched exactly.
    Lit(String),
    /// A character class as GBNF text (`[0-9]`); matches one character.
    Class(String),
    /// A reference to a rule.
    Rule(String),
    /// A sequence; empty matches the empty string.
    Seq(Vec<Expr>),
    /// Alternatives (never empty).
    Alt(Vec<Expr>),
    /// `item{min,max}`; `None` is unbounded.
    Repeat(Box<Expr>, u64, Option<u64>),
}

fn lit(s: impl Into<String>) -> Expr {
    Expr::Lit(s.into())
}

fn class(s: &str) -> Expr {
    Expr::Class(s.to_owned())
}

fn space() -> Expr {
    Expr::Rule("space".to_owned())
}

fn empty() -> Expr {
    Expr::Seq(Vec::new())
}

fn is_empty(e: &Expr) -> bool {
    matches!(e, Expr::Seq(v) if v.is_empty())
}

/// A sequence, nested sequences flattened and adjacent literals joined.
fn seq(items: Vec<Expr>) -> Expr {
    let mut out: Vec<Expr> = Vec::with_capacity(items.len());
    for e in items {
        let parts = match e {
            Expr::Seq(inner) => inner,
            other => vec![other],
        };
        for p in parts {
            match (out.last_mut(), p) {
                (_, Expr::Lit(s)) if s.is_empty() => {}
                (Some(Expr::Lit(last)), Expr::Lit(s)) => last.push_str(&s),
                (_, p) => out.push(p),
            }
        }
    }
    match <[Expr; 1]>::try_from(out) {
        Ok([one]) => one,
        Err(out) => Expr::Seq(out),
    }
}

/// Alternatives, nested alternatives flattened; `items` must not be empty.
fn alt(items: Vec<Expr>) -> Expr {
    let mut out: Vec<Expr> = Vec::with_capacity(items.len());
    for e in items {
        match e {
            Expr::Alt(inner) => out.extend(inner),
            other => out.push(other),
        }
    }
    match <[Expr; 1]>::try_from(out) {
        Ok([one]) => one,
        Err(out) => Expr::Alt(out),
    }
}

fn repeat(item: Expr, min: u64, max: Option<u64>) -> Expr {
    if max == Some(0) || is_empty(&item) {
        empty()
    } else if min == 1 && max == Some(1) {
        item
    } else {
        Expr::Repeat(Box::new(item), min, max)
    }
}

fn opt(item: Expr) -> Expr {
    repeat(item, 0, Some(1))
}

/// Writes `e`; `prec` is what the context binds tighter than: 0 anywhere,
/// 1 inside a sequence, 2 under a repetition.
fn render(e: &Expr, prec: u8, out: &mut String) {
    match e {
        Expr::Lit(s) => render_literal(s, out),
        Expr::Class(c) => out.push_str(c),
        Expr::Rule(name) => out.push_str(name),
        Expr::Seq(items) => render_joined(items, " ", prec >= 2, out),
        Expr::Alt(items) => render_joined(items, " | ", prec >= 1, out),
        Expr::Repeat(item, min, max) => {
            let multi_char = matches!(&**item, Expr::Lit(s) if s.chars().count() > 1);
            if multi_char {
                out.push_str("( ");
            }
            render(item, 2, out);
            if multi_char {
                out.push_str(" )");
            }
            match (*min, *max) {
                (0, Some(1)) => out.push('?'),
                (0, None) => out.push('*'),
                (1, None) => out.push('+'),
                (n, None) => out.push_str(&format!("{{{n},}}")),
                (n, Some(m)) if n == m => out.push_str(&format!("{{{n}}}")),
                (n, Some(m)) => out.push_str(&format!("{{{n},{m}}}")),
            }
        }
    }
}

/// `items` separated by `sep`, in parentheses when `paren`.
fn render_joined(items: &[Expr], sep: &str, paren: bool, out: &mut String) {
    if paren {
        out.push_str("( ");
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        render(item, 1, out);
    }
    if paren {
        out.push_str(" )");
    }
}

fn render_literal(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' || c == '\x7f' => out.push_str(&format!("\\x{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `c` escaped for a character class (alphanumerics as themselves).
fn class_char(c: char, out: &mut String) {
    let n = c as u32;
    if c.is_ascii_alphanumeric() {
        out.push(c);
    } else if n <= 0xFF {
        out.push_str(&format!("\\x{n:02X}"));
    } else if n <= 0xFFFF {
        out.push_str(&format!("\\u{n:04X}"));
    } else {
        out.push_str(&format!("\\U{n:08X}"));
    }
}

/// A character a JSON string may hold unescaped (by the `char` rule).
fn is_plain_char(c: char) -> bool {
    c != '"' && c != '\\' && c >= ' ' && c != '\x7f'
}

// ---------------------------------------------------------------------------
// Integers and numbers as digit patterns

/// One decimal digit in `a..=b` (ASCII digits).
fn digit_class(a: u8, b: u8) -> Expr {
    if a == b {
        lit(char::from(a).to_string())
    } else {
        Expr::Class(format!("[{}-{}]", char::from(a), char::from(b)))
    }
}

fn any_digits(n: u64) -> Expr {
    repeat(class("[0-9]"), n, Some(n))
}

fn ascii(b: &[u8]) -> String {
    b.iter().map(|&c| char::from(c)).collect()
}

/// The decimal numbers from `from` to `to`, both written with the same
/// number of digits (`from <= to`).
fn digits_range(from: &[u8], to: &[u8]) -> Expr {
    let i = from.iter().zip(to).take_while(|(a, b)| a == b).count();
    if i == from.len() {
        return lit(ascii(from));
    }
    let prefix = lit(ascii(&from[..i]));
    let (a, b) = (from[i], to[i]);
    let rest = from.len() - i - 1;
    if rest == 0 {
        return seq(vec![prefix, digit_class(a, b)]);
    }
    let (from_rest, to_rest) = (&from[i + 1..], &to[i + 1..]);
    let low_zeros = from_rest.iter().all(|&c| c == b'0');
    let high_nines = to_rest.iter().all(|&c| c == b'9');
    let mut alts = Vec::new();
    let mid_lo = if low_zeros {
        a
    } else {
        alts.push(seq(vec![
            digit_class(a, a),
            digits_range(from_rest, &vec![b'9'; rest]),
        ]));
        a + 1
    };
    let mid_hi = if high_nines { b } else { b - 1 };
    if mid_lo <= mid_hi {
        alts.push(seq(vec![
            digit_class(mid_lo, mid_hi),
            any_digits(rest as u64),
        ]));
    }
    if !high_nines {
        alts.push(seq(vec![
            digit_class(b, b),
            digits_range(&vec![b'0'; rest], to_rest),
        ]));
    }
    seq(vec![prefix, alt(alts)])
}

fn n_digits(n: u64) -> u32 {
    n.checked_ilog10().unwrap_or(0) + 1
}

/// The non-negative integers in `lo..=hi` without leading zeros (`hi`
/// `None`: up to 16 digits); `lo <= hi <= MAX_UINT`.
fn uint_range(lo: u64, hi: Option<u64>) -> Expr {
    let top = hi.unwrap_or(MAX_UINT).min(MAX_UINT);
    let (lo_digits, top_digits) = (n_digits(lo), n_digits(top));
    let mut alts = Vec::new();
    for d in lo_digits..=top_digits {
        if hi.is_none() && d > lo_digits {
            let more = u64::from(d - 1);
            alts.push(seq(vec![
                class("[1-9]"),
                repeat(class("[0-9]"), more, Some(MAX_DIGITS - 1)),
            ]));
            break;
        }
        let from = lo.max(if d == 1 { 0 } else { 10u64.pow(d - 1) });
        let to = top.min(10u64.pow(d) - 1);
        alts.push(digits_range(
            from.to_string().as_bytes(),
            to.to_string().as_bytes(),
        ));
    }
    alt(alts)
}

/// The integers in `lo..=hi` (`None`: unbounded); `lo <= hi`, both within
/// ±`MAX_UINT`.
fn int_range(lo: Option<i128>, hi: Option<i128>) -> Expr {
    let mut alts = Vec::new();
    if lo.is_none_or(|l| l < 0) {
        let m_lo = match hi {
            Some(h) if h < 0 => h.unsigned_abs() as u64,
            _ => 1,
        };
        let m_hi = lo.map(|l| l.unsigned_abs() as u64);
        alts.push(seq(vec![lit("-"), uint_range(m_lo, m_hi)]));
    }
    if hi.is_none_or(|h| h >= 0) {
        let from = lo.map_or(0, |l| l.max(0) as u64);
        alts.push(uint_range(from, hi.map(|h| h as u64)));
    }
    alt(alts)
}

/// A bound on a number: its value and whether it is exclusive.
type Bound = (i128, bool);

fn fraction() -> Expr {
    seq(vec![lit("."), repeat(class("[0-9]"), 1, Some(MAX_DIGITS))])
}

/// A fraction with a non-zero digit.
fn fraction_nonzero() -> Expr {
    seq(vec![
        lit("."),
        repeat(lit("0"), 0, Some(MAX_DIGITS - 1)),
        class("[1-9]"),
        repeat(class("[0-9]"), 0, Some(MAX_DIGITS - 1)),
    ])
}

/// A fraction of zeros.
fn fraction_zero() -> Expr {
    seq(vec![lit("."), repeat(lit("0"), 1, Some(MAX_DIGITS))])
}

/// Unsigned decimals `I[.F]` (no exponent) whose value lies between the
/// whole-number bounds `lo` and `hi` (`None`: below 10^16).
fn magnitude((a, a_ex): (u64, bool), hi: Option<(u64, bool)>) -> Option<Expr> {
    let mut alts = Vec::new();
    // Integer parts whose every fraction is inside the bounds.
    let any_lo = if a_ex { a + 1 } else { a };
    let any_hi = match hi {
        None => Some(MAX_UINT),
        Some((h, _)) => h.checked_sub(1),
    };
    if any_hi.is_some_and(|h| any_lo <= h) {
        alts.push(seq(vec![
            uint_range(any_lo, hi.and(any_hi)),
            opt(fraction()),
        ]));
    }
    // Just above an exclusive lower bound.
    if a_ex && hi.is_none_or(|(h, _)| a < h) {
        alts.push(seq(vec![lit(a.to_string()), fraction_nonzero()]));
    }
    // Exactly an inclusive upper bound.
    if let Some((h, false)) = hi.filter(|&(h, _)| h > a || (h == a && !a_ex)) {
        alts.push(seq(vec![lit(h.to_string()), opt(fraction_zero())]));
    }
    (!alts.is_empty()).then(|| alt(alts))
}

/// Decimals (no exponent) between whole-number bounds; `None` when no
/// number is.
fn number_range(lo: Option<Bound>, hi: Option<Bound>) -> Option<Expr> {
    let mut alts = Vec::new();
    if hi.is_none_or(|(h, ex)| h > 0 || (h == 0 && !ex)) {
        let m_lo = match lo {
            Some((l, ex)) if l >= 0 => (l as u64, ex),
            _ => (0, false),
        };
        let m_hi = hi.map(|(h, ex)| (h as u64, ex));
        alts.extend(magnitude(m_lo, m_hi));
    }
    if lo.is_none_or(|(l, _)| l < 0) {
        // Written "-m": m > 0 and -hi <= m <= -lo.
        let m_lo = match hi {
            Some((h, ex)) if h < 0 => (h.unsigned_abs() as u64, ex),
            _ => (0, true),
        };
        let m_hi = lo.map(|(l, ex)| (l.unsigned_abs() as u64, ex));
        if let Some(m) = magnitude(m_lo, m_hi) {
            alts.push(seq(vec![lit("-"), m]));
        }
    }
    (!alts.is_empty()).then(|| alt(alts))
}

// ---------------------------------------------------------------------------
// Reading keywords

fn child(path: &str, segment: &str) -> String {
    format!("{path}/{}", segment.replace('~', "~0").replace('/', "~1"))
}

/// The name hint for a part of the schema named `name`.
fn child_name(name: &str, segment: &str) -> String {
    if name == "root" {
        segment.to_owned()
    } else {
        format!("{name}-{segment}")
    }
}

/// `base` as a rule name: `[a-zA-Z0-9-]+`, starting with a letter.
fn sanitize(base: &str) -> String {
    let mut s: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(MAX_NAME)
        .collect();
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        s.insert(0, 'r');
    }
    s
}

fn describe(v: &Value) -> String {
    crate::chat::openai::json_kind(v).to_owned()
}

fn invalid(path: &str, keyword: &str, reason: &str) -> SchemaError {
    SchemaError::Invalid {
        path: path.to_owned(),
        keyword: keyword.to_owned(),
        reason: reason.to_owned(),
    }
}

fn unsatisfiable(path: &str, reason: impl Into<String>) -> SchemaError {
    SchemaError::Unsatisfiable {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn unsupported(path: &str, keyword: &str, detail: &str) -> SchemaError {
    SchemaError::Unsupported {
        path: path.to_owned(),
        keyword: keyword.to_owned(),
        detail: detail.to_owned(),
    }
}

/// Errors on keywords the grammar cannot express.
fn check_keywords(map: &Map<String, Value>, path: &str) -> Result<(), SchemaError> {
    for (k, v) in map {
        let bad = match k.as_str() {
            "uniqueItems" => *v != Value::Bool(false),
            k => UNSUPPORTED.contains(&k),
        };
        if bad {
            let detail = match k.as_str() {
                "pattern" => "regular expressions are not turned into grammar",
                _ => "",
            };
            return Err(unsupported(path, k, detail));
        }
    }
    Ok(())
}

/// Whether keyword `k` constrains documents (rather than annotating).
fn constrains(k: &str) -> bool {
    HANDLED.contains(&k)
}

/// A count keyword (`minItems`, ...): a non-negative integer up to
/// `MAX_REPEAT`.
fn count(map: &Map<String, Value>, key: &str, path: &str) -> Result<Option<u64>, SchemaError> {
    let Some(v) = map.get(key) else {
        return Ok(None);
    };
    let n = v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0)
            .map(|f| f as u64)
    });
    let n = n.ok_or_else(|| invalid(path, key, "must be a non-negative integer"))?;
    if n > MAX_REPEAT {
        return Err(SchemaError::TooLarge {
            path: path.to_owned(),
            reason: format!("\"{key}\": {n} is above the limit of {MAX_REPEAT}"),
        });
    }
    Ok(Some(n))
}

/// A numeric keyword as an integer, rounded up (`ceil`) or down.
fn int_bound(v: &Value, key: &str, path: &str, ceil: bool) -> Result<i128, SchemaError> {
    if let Some(i) = v.as_i64() {
        return Ok(i128::from(i));
    }
    if let Some(u) = v.as_u64() {
        return Ok(i128::from(u));
    }
    let f = v
        .as_f64()
        .filter(|f| f.is_finite())
        .ok_or_else(|| invalid(path, key, "must be a number"))?;
    let r = if ceil { f.ceil() } else { f.floor() };
    Ok(r.clamp(-1e20, 1e20) as i128)
}

/// The draft-4 form: `exclusiveMinimum: true` makes `minimum` exclusive.
fn draft4_exclusive(map: &Map<String, Value>, key: &str) -> bool {
    map.get(key) == Some(&Value::Bool(true))
}

/// The numeric value of `key` unless it is a draft-4 boolean.
fn numeric<'m>(map: &'m Map<String, Value>, key: &str) -> Option<&'m Value> {
    map.get(key).filter(|v| !v.is_boolean())
}

/// Inclusive integer bounds, within ±`MAX_UINT` (`None` beyond).
fn integer_bounds(
    map: &Map<String, Value>,
    path: &str,
) -> Result<(Option<i128>, Option<i128>), SchemaError> {
    let mut lo: Option<i128> = None;
    let mut hi: Option<i128> = None;
    if let Some(v) = numeric(map, "minimum") {
        let b = if draft4_exclusive(map, "exclusiveMinimum") {
            int_bound(v, "minimum", path, false)? + 1
        } else {
            int_bound(v, "minimum", path, true)?
        };
        lo = lo.max(Some(b));
    }
    if let Some(v) = numeric(map, "exclusiveMinimum") {
        lo = lo.max(Some(int_bound(v, "exclusiveMinimum", path, false)? + 1));
    }
    for (key, exclusive) in [("maximum", false), ("exclusiveMaximum", true)] {
        if let Some(v) = numeric(map, key) {
            let exclusive = exclusive || draft4_exclusive(map, "exclusiveMaximum");
            let b = if exclusive {
                int_bound(v, key, path, true)? - 1
            } else {
                int_bound(v, key, path, false)?
            };
            hi = Some(hi.map_or(b, |h| h.min(b)));
        }
    }
    let d = i128::from(MAX_UINT);
    if lo.is_some_and(|l| l > d) || hi.is_some_and(|h| h < -d) {
        return Err(unsatisfiable(
            path,
            "the bounds leave no integer of at most 16 digits",
        ));
    }
    let (lo, hi) = (lo.filter(|&l| l > -d), hi.filter(|&h| h < d));
    if let (Some(l), Some(h)) = (lo, hi) {
        if l > h {
            return Err(unsatisfiable(path, format!("no integer from {l} to {h}")));
        }
    }
    Ok((lo, hi))
}

/// A whole-number bound on a number.
fn whole_bound(v: &Value, key: &str, path: &str) -> Result<i128, SchemaError> {
    if v.as_f64().is_some_and(|f| f.fract() != 0.0) {
        return Err(unsupported(
            path,
            key,
            "only whole-number bounds are enforced on \"number\"",
        ));
    }
    int_bound(v, key, path, false)
}

/// Whole-number bounds on a number, `None` beyond ±10^16.
fn number_bounds(
    map: &Map<String, Value>,
    path: &str,
) -> Result<(Option<Bound>, Option<Bound>), SchemaError> {
    let mut lo: Option<Bound> = None;
    let mut hi: Option<Bound> = None;
    let lows = [
        ("minimum", draft4_exclusive(map, "exclusiveMinimum")),
        ("exclusiveMinimum", true),
    ];
    for (key, ex) in lows {
        if let Some(v) = numeric(map, key) {
            let b = (whole_bound(v, key, path)?, ex);
            // The larger bound wins; at a tie the exclusive one.
            lo = Some(lo.map_or(b, |l| if (b.0, b.1) > (l.0, l.1) { b } else { l }));
        }
    }
    let highs = [
        ("maximum", draft4_exclusive(map, "exclusiveMaximum")),
        ("exclusiveMaximum", true),
    ];
    for (key, ex) in highs {
        if let Some(v) = numeric(map, key) {
            let b = (whole_bound(v, key, path)?, ex);
            hi = Some(hi.map_or(b, |h| if (b.0, !b.1) < (h.0, !h.1) { b } else { h }));
        }
    }
    let limit = i128::from(MAX_UINT) + 1;
    if lo.is_some_and(|l| l.0 >= limit) || hi.is_some_and(|h| h.0 <= -limit) {
        return Err(unsatisfiable(
            path,
            "the bounds leave no number with at most 16 integer digits",
        ));
    }
    Ok((lo.filter(|l| l.0 > -limit), hi.filter(|h| h.0 < limit)))
}

/// The `type` names of a schema; `None` when it accepts every type. Without
/// `type`, the types are inferred from the keywords present.
fn schema_types(
    map: &Map<String, Value>,
    path: &str,
) -> Result<Option<Vec<&'static str>>, SchemaError> {
    let type_name = |v: &Value| {
        v.as_str()
            .and_then(|s| TYPES.iter().copied().find(|t| *t == s))
            .ok_or_else(|| {
                invalid(
                    path,
                    "type",
                    &format!(
                        "must name JSON types, not {v} (one of {})",
                        TYPES.join(", ")
                    ),
                )
            })
    };
    let mut types = match map.get("type") {
        Some(Value::Array(list)) if list.is_empty() => {
            return Err(unsatisfiable(path, "\"type\" is an empty list"));
        }
        Some(Value::Array(list)) => list.iter().map(type_name).collect::<Result<Vec<_>, _>>()?,
        Some(v) => vec![type_name(v)?],
        None => {
            let has = |keys: &[&str]| keys.iter().any(|k| map.contains_key(*k));
            let mut inferred = Vec::new();
            if has(&["properties", "required", "additionalProperties"]) {
                inferred.push("object");
            }
            if has(&[
                "items",
                "prefixItems",
                "additionalItems",
                "minItems",
                "maxItems",
            ]) {
                inferred.push("array");
            }
            let format = map.get("format").and_then(Value::as_str);
            if has(&["minLength", "maxLength"]) || format.is_some_and(|f| FORMATS.contains(&f)) {
                inferred.push("string");
            }
            if has(&["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"]) {
                inferred.push("number");
            }
            if inferred.is_empty() {
                return Ok(None);
            }
            inferred
        }
    };
    if map.get("nullable") == Some(&Value::Bool(true)) {
        types.push("null");
    }
    if types.contains(&"number") {
        types.retain(|t| *t != "integer");
    }
    let mut seen = HashSet::new();
    types.retain(|t| seen.insert(*t));
    Ok(Some(types))
}

/// Whether `v` is of JSON Schema type `t`.
fn has_type(v: &Value, t: &str) -> bool {
    match (t, v) {
        ("null", Value::Null)
        | ("boolean", Value::Bool(_))
        | ("number", Value::Number(_))
        | ("string", Value::String(_))
        | ("array", Value::Array(_))
        | ("object", Value::Object(_)) => true,
        ("integer", Value::Number(n)) => {
            n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        _ => false,
    }
}

/// The text of a JSON value, with the grammar's whitespace allowed inside
/// arrays and objects.
fn json_literal(v: &Value, path: &str, depth: usize) -> Result<Expr, SchemaError> {
    if depth > MAX_DEPTH {
        return Err(SchemaError::TooDeep {
            path: path.to_owned(),
            limit: MAX_DEPTH,
        });
    }
    let (open, close, members): (&str, &str, Vec<Expr>) = match v {
        Value::Array(items) => {
            let members = items
                .iter()
                .map(|x| json_literal(x, path, depth + 1))
                .collect::<Result<_, _>>()?;
            ("[", "]", members)
        }
        Value::Object(map) => {
            let mut members = Vec::with_capacity(map.len());
            for (k, x) in map {
                let key = lit(Value::String(k.clone()).to_string());
                let value = json_literal(x, path, depth + 1)?;
                members.push(seq(vec![key, space(), lit(":"), space(), value]));
            }
            ("{", "}", members)
        }
        other => return Ok(lit(other.to_string())),
    };
    let mut items = vec![lit(open), space()];
    for (i, m) in members.into_iter().enumerate() {
        if i > 0 {
            items.extend([lit(","), space()]);
        }
        items.extend([m, space()]);
    }
    items.push(lit(close));
    Ok(seq(items))
}

// ---------------------------------------------------------------------------
// Merging schemas (`allOf`, `$ref` beside other keywords, `anyOf` beside
// other keywords)

/// The `type` keywords of two schemas intersected.
fn intersect_types(a: &Value, b: &Value, path: &str) -> Result<Value, SchemaError> {
    let names = |v: &Value| -> Vec<String> {
        match v {
            Value::String(s) => vec![s.clone()],
            Value::Array(list) => list
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    };
    let (a, b) = (names(a), names(b));
    let mut out: Vec<Value> = Vec::new();
    for t in &a {
        let keep = if b.contains(t) {
            Some(t.as_str())
        } else if (t == "integer" && b.iter().any(|x| x == "number"))
            || (t == "number" && b.iter().any(|x| x == "integer"))
        {
            Some("integer")
        } else {
            None
        };
        if let Some(k) = keep.filter(|k| !out.iter().any(|x| x == k)) {
            out.push(Value::String(k.to_owned()));
        }
    }
    if out.is_empty() {
        return Err(unsatisfiable(path, "allOf: no type satisfies every schema"));
    }
    Ok(Value::Array(out))
}

fn all_of(a: Value, b: Value) -> Value {
    let mut m = Map::new();
    m.insert("allOf".to_owned(), Value::Array(vec![a, b]));
    Value::Object(m)
}

/// Both `a` and `b`: keyword `k` of `b` merged into `a`.
fn merge_keyword(
    a: &mut Map<String, Value>,
    k: String,
    v: Value,
    path: &str,
) -> Result<(), SchemaError> {
    let Some(old) = a.get_mut(&k) else {
        a.insert(k, v);
        return Ok(());
    };
    if *old == v || !constrains(&k) {
        return Ok(());
    }
    let as_f64 = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
    match k.as_str() {
        "type" => *old = intersect_types(old, &v, path)?,
        "properties" => {
            let (Some(old), Value::Object(new)) = (old.as_object_mut(), v) else {
                return Err(invalid(path, "properties", "must be an object"));
            };
            for (name, schema) in new {
                match old.get_mut(&name) {
                    Some(o) if *o != schema => *o = all_of(o.take(), schema),
                    Some(_) => {}
                    None => {
                        old.insert(name, schema);
                    }
                }
            }
        }
        "required" => {
            let (Some(old), Value::Array(new)) = (old.as_array_mut(), v) else {
                return Err(invalid(path, "required", "must be an array of strings"));
            };
            let mut have: HashSet<String> = old.iter().map(Value::to_string).collect();
            old.extend(new.into_iter().filter(|x| have.insert(x.to_string())));
        }
        "enum" => {
            let (Some(old), Value::Array(new)) = (old.as_array_mut(), v) else {
                return Err(invalid(path, "enum", "must be an array"));
            };
            let keep: HashSet<String> = new.iter().map(Value::to_string).collect();
            old.retain(|x| keep.contains(&x.to_string()));
        }
        "const" => return Err(unsatisfiable(path, "allOf: two different \"const\" values")),
        "minimum" | "exclusiveMinimum" | "minLength" | "minItems"
            if old.is_number() && v.is_number() =>
        {
            if as_f64(&v) > as_f64(old) {
                *old = v;
            }
        }
        "maximum" | "exclusiveMaximum" | "maxLength" | "maxItems"
            if old.is_number() && v.is_number() =>
        {
            if as_f64(&v) < as_f64(old) {
                *old = v;
            }
        }
        "items" | "additionalItems" | "additionalProperties" | "unevaluatedProperties" => {
            *old = if *old == Value::Bool(false) || v == Value::Bool(false) {
                Value::Bool(false)
            } else {
                all_of(old.take(), v)
            };
        }
        "nullable" => *old = Value::Bool(old.as_bool() == Some(true) && v.as_bool() == Some(true)),
        "anyOf" | "oneOf" => {
            let (Some(x), Some(y)) = (old.as_array(), v.as_array()) else {
                return Err(invalid(path, &k, "must be an array of schemas"));
            };
            if x.len().saturating_mul(y.len()) > MAX_ALTERNATIVES {
                return Err(SchemaError::TooLarge {
                    path: path.to_owned(),
                    reason: format!(
                        "allOf of several \"{k}\" makes over {MAX_ALTERNATIVES} alternatives"
                    ),
                });
            }
            let product = x
                .iter()
                .flat_map(|p| y.iter().map(|q| all_of(p.clone(), q.clone())))
                .collect();
            *old = Value::Array(product);
        }
        _ => {
            return Err(unsupported(
                path,
                &k,
                "two different values of it under allOf (or beside $ref) cannot be combined",
            ));
        }
    }
    Ok(())
}

fn merge_maps(
    mut a: Map<String, Value>,
    b: Map<String, Value>,
    path: &str,
) -> Result<Map<String, Value>, SchemaError> {
    for (k, v) in b {
        merge_keyword(&mut a, k, v, path)?;
    }
    Ok(a)
}

/// A pointer fragment with `%XX` decoded.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------
// The converter

/// Adds the rules `e` references to `out`.
fn references<'e>(e: &'e Expr, out: &mut Vec<&'e str>) {
    match e {
        Expr::Rule(name) => out.push(name),
        Expr::Seq(items) | Expr::Alt(items) => items.iter().for_each(|x| references(x, out)),
        Expr::Repeat(item, _, _) => references(item, out),
        Expr::Lit(_) | Expr::Class(_) => {}
    }
}

/// The primitives `root` and `rules` use, with their dependencies.
fn used_primitives(root: &Expr, rules: &[(String, Option<Expr>)]) -> HashSet<&'static str> {
    let mut refs = Vec::new();
    references(root, &mut refs);
    for body in rules.iter().filter_map(|(_, body)| body.as_ref()) {
        references(body, &mut refs);
    }
    let mut todo: Vec<&'static str> = PRIMITIVES
        .iter()
        .filter(|p| refs.contains(&p.name))
        .map(|p| p.name)
        .collect();
    let mut used = HashSet::new();
    while let Some(n) = todo.pop() {
        if used.insert(n) {
            todo.extend(
                PRIMITIVES
                    .iter()
                    .filter(|p| p.name == n)
                    .flat_map(|p| p.deps),
            );
        }
    }
    used
}

/// A trie of property names (for extra keys that must differ from them).
#[derive(Default)]
struct TrieNode {
    children: BTreeMap<char, usize>,
    terminal: bool,
}

struct Converter<'a> {
    doc: &'a Value,
    /// Rules in creation order; `None` while a `$ref` rule is being built.
    rules: Vec<(String, Option<Expr>)>,
    names: HashSet<String>,
    /// Base name → the next suffix to try.
    suffixes: HashMap<String, u64>,
    /// Rendered body → rule name, to share identical rules.
    by_body: HashMap<String, String>,
    /// JSON pointer → rule name of resolved (or resolving) `$ref`s.
    refs: HashMap<String, String>,
    /// JSON pointer → why its schema failed.
    failed_refs: HashMap<String, SchemaError>,
    /// Rule name → JSON pointer of `$ref` rules.
    ref_paths: HashMap<String, String>,
    /// `$ref` rules being built, with `guards` when they started.
    owners: Vec<(String, usize)>,
    /// How many containers (`{`, `[`) enclose the schema being visited.
    guards: usize,
    /// `(a, b)`: `$ref` rule `a` may start with `$ref` rule `b`.
    left_edges: Vec<(String, String)>,
    visits: usize,
}

impl<'a> Converter<'a> {
    fn new(doc: &'a Value) -> Converter<'a> {
        Converter {
            doc,
            rules: Vec::new(),
            names: HashSet::new(),
            suffixes: HashMap::new(),
            by_body: HashMap::new(),
            refs: HashMap::new(),
            failed_refs: HashMap::new(),
            ref_paths: HashMap::new(),
            owners: Vec::new(),
            guards: 0,
            left_edges: Vec::new(),
            visits: 0,
        }
    }

    /// A reference to primitive `name` (written out by [`Self::finish`]
    /// when referenced).
    fn prim(&mut self, name: &'static str) -> Expr {
        Expr::Rule(name.to_owned())
    }

    /// An unused rule name made from `base` (and claims it).
    fn fresh_name(&mut self, base: &str) -> String {
        let base = sanitize(base);
        let taken = |names: &HashSet<String>, n: &str| {
            n == "root" || names.contains(n) || PRIMITIVES.iter().any(|p| p.name == n)
        };
        let mut name = base.clone();
        if taken(&self.names, &name) {
            let next = self.suffixes.entry(base.clone()).or_insert(2);
            loop {
                name = format!("{base}-{next}");
                *next += 1;
                if !taken(&self.names, &name) {
                    break;
                }
            }
        }
        self.names.insert(name.clone());
        name
    }

    /// A rule named after `base` whose body comes later ([`Self::set_rule`]
    /// with the index returned).
    fn reserve(&mut self, base: &str) -> (String, usize) {
        let name = self.fresh_name(base);
        self.rules.push((name.clone(), None));
        (name, self.rules.len() - 1)
    }

    fn set_rule(&mut self, index: usize, body: Expr) {
        let mut text = String::new();
        render(&body, 0, &mut text);
        let name = &self.rules[index].0;
        self.by_body.entry(text).or_insert_with(|| name.clone());
        self.rules[index].1 = Some(body);
    }

    /// A rule named after `base` with `body` (an existing one if some rule
    /// already has that body).
    fn add_rule(&mut self, base: &str, body: Expr) -> Expr {
        let mut text = String::new();
        render(&body, 0, &mut text);
        if let Some(name) = self.by_body.get(&text) {
            return Expr::Rule(name.clone());
        }
        let name = self.fresh_name(base);
        self.by_body.insert(text, name.clone());
        self.rules.push((name.clone(), Some(body)));
        Expr::Rule(name)
    }

    /// `body` as a rule unless it is a single literal, class or reference.
    fn named(&mut self, base: &str, body: Expr) -> Expr {
        match body {
            Expr::Lit(_) | Expr::Class(_) | Expr::Rule(_) => body,
            _ => self.add_rule(base, body),
        }
    }

    /// The grammar text: `root`, the rules made, the primitives used.
    fn finish(self, root: &Expr) -> Result<String, SchemaError> {
        self.check_left_recursion()?;
        let mut out = String::from("root ::= ");
        render(root, 0, &mut out);
        out.push('\n');
        for (name, body) in &self.rules {
            out.push_str(name);
            out.push_str(" ::= ");
            match body {
                Some(body) => render(body, 0, &mut out),
                None => out.push_str(NOTHING),
            }
            out.push('\n');
        }
        let used = used_primitives(root, &self.rules);
        for p in PRIMITIVES {
            if used.contains(p.name) {
                out.push_str(&format!("{} ::= {}\n", p.name, p.body));
            }
        }
        if out.len() > MAX_GRAMMAR_BYTES {
            return Err(SchemaError::TooLarge {
                path: String::new(),
                reason: format!(
                    "the grammar would be {} bytes (limit {MAX_GRAMMAR_BYTES})",
                    out.len()
                ),
            });
        }
        Ok(out)
    }

    /// Errors if some `$ref` rule can reach itself without a character in
    /// between (the `left_edges` graph has a cycle).
    fn check_left_recursion(&self) -> Result<(), SchemaError> {
        let mut succ: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut pred: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut indegree: HashMap<&str, usize> = HashMap::new();
        let edges: HashSet<(&str, &str)> = self
            .left_edges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        for &(a, b) in &edges {
            succ.entry(a).or_default().push(b);
            pred.entry(b).or_default().push(a);
            indegree.entry(a).or_insert(0);
            *indegree.entry(b).or_insert(0) += 1;
        }
        // Kahn's algorithm: what is left has a cycle behind it.
        let mut ready: Vec<&str> = indegree
            .iter()
            .filter(|(_, d)| **d == 0)
            .map(|(n, _)| *n)
            .collect();
        while let Some(n) = ready.pop() {
            indegree.remove(n);
            for &s in succ.get(n).into_iter().flatten() {
                if let Some(d) = indegree.get_mut(s) {
                    *d -= 1;
                    if *d == 0 {
                        ready.push(s);
                    }
                }
            }
        }
        let Some(mut n) = indegree.keys().min().copied() else {
            return Ok(());
        };
        // Walk back along remaining predecessors onto the cycle itself.
        for _ in 0..indegree.len() {
            let back = pred.get(n).into_iter().flatten();
            if let Some(&p) = back.filter(|p| indegree.contains_key(*p)).min() {
                n = p;
            }
        }
        let path = self.ref_paths.get(n).cloned().unwrap_or_default();
        Err(SchemaError::LeftRecursion { path })
    }

    fn visit(
        &mut self,
        schema: &Value,
        path: &str,
        name: &str,
        depth: usize,
    ) -> Result<Expr, SchemaError> {
        if depth > MAX_DEPTH {
            return Err(SchemaError::TooDeep {
                path: path.to_owned(),
                limit: MAX_DEPTH,
            });
        }
        self.visits += 1;
        if self.visits > MAX_VISITS {
            return Err(SchemaError::TooLarge {
                path: path.to_owned(),
                reason: format!("over {MAX_VISITS} subschemas to visit"),
            });
        }
        match schema {
            Value::Bool(true) => Ok(self.prim("value")),
            Value::Bool(false) => Err(unsatisfiable(path, "the schema `false` accepts nothing")),
            Value::Object(map) => self.visit_map(map, path, name, depth),
            other => Err(SchemaError::NotASchema {
                path: path.to_owned(),
                found: describe(other),
            }),
        }
    }

    fn visit_map(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        name: &str,
        depth: usize,
    ) -> Result<Expr, SchemaError> {
        check_keywords(map, path)?;
        let beside_ref = map.keys().any(|k| k != "$ref" && constrains(k));
        if map.contains_key("allOf") || (map.contains_key("$ref") && beside_ref) {
            let merged = self.flatten_map(map, path, depth + 1)?;
            return self.visit_map(&merged, path, name, depth + 1);
        }
        if let Some(r) = map.get("$ref") {
            return self.visit_ref(r, path, depth);
        }
        if let Some(key) = ["anyOf", "oneOf"]
            .into_iter()
            .find(|k| map.contains_key(*k))
        {
            return self.visit_union(map, key, path, name, depth);
        }
        if map.contains_key("const") || map.contains_key("enum") {
            return self.visit_enum(map, path, depth);
        }
        let Some(types) = schema_types(map, path)? else {
            return Ok(self.prim("value"));
        };
        let mut alts = Vec::with_capacity(types.len());
        for t in types {
            let e = match t {
                "null" => self.prim("null"),
                "boolean" => self.prim("boolean"),
                "integer" => self.visit_integer(map, path)?,
                "number" => self.visit_number(map, path)?,
                "string" => self.visit_string(map, path)?,
                "array" => self.visit_array(map, path, name, depth)?,
                _ => self.visit_object(map, path, name, depth)?,
            };
            alts.push(e);
        }
        Ok(alt(alts))
    }

    /// `schema` as one keyword map, its `$ref` and `allOf` merged in.
    fn flatten(
        &mut self,
        schema: &Value,
        path: &str,
        depth: usize,
    ) -> Result<Map<String, Value>, SchemaError> {
        match schema {
            Value::Bool(true) => Ok(Map::new()),
            Value::Bool(false) => Err(unsatisfiable(path, "the schema `false` accepts nothing")),
            Value::Object(map) => self.flatten_map(map, path, depth),
            other => Err(SchemaError::NotASchema {
                path: path.to_owned(),
                found: describe(other),
            }),
        }
    }

    fn flatten_map(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<Map<String, Value>, SchemaError> {
        if depth > MAX_DEPTH {
            return Err(SchemaError::TooDeep {
                path: path.to_owned(),
                limit: MAX_DEPTH,
            });
        }
        check_keywords(map, path)?;
        let mut out = map.clone();
        let reference = out.remove("$ref");
        let parts = out.remove("allOf");
        if let Some(r) = reference {
            let (target, pointer) = self.resolve_ref(&r, path)?;
            let target = self.flatten(target, &pointer, depth + 1)?;
            out = merge_maps(out, target, path)?;
        }
        if let Some(parts) = parts {
            let parts = parts
                .as_array()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| invalid(path, "allOf", "must be a non-empty array of schemas"))?;
            for (i, part) in parts.iter().enumerate() {
                let ppath = child(&child(path, "allOf"), &i.to_string());
                let part = self.flatten(part, &ppath, depth + 1)?;
                out = merge_maps(out, part, path)?;
            }
        }
        Ok(out)
    }

    /// The schema `r` (a `$ref` value) points at, and its JSON pointer.
    fn resolve_ref(&self, r: &Value, path: &str) -> Result<(&'a Value, String), SchemaError> {
        let at = child(path, "$ref");
        let s = r
            .as_str()
            .ok_or_else(|| invalid(&at, "$ref", "must be a string"))?;
        let bad = |reason: &str| SchemaError::BadRef {
            path: at.clone(),
            reference: s.to_owned(),
            reason: reason.to_owned(),
        };
        let fragment = s
            .strip_prefix('#')
            .ok_or_else(|| bad("only references inside this document (#/...) are supported"))?;
        let pointer = percent_decode(fragment).ok_or_else(|| bad("bad %-escape"))?;
        if !pointer.is_empty() && !pointer.starts_with('/') {
            return Err(bad(
                "anchors are not supported, use a JSON pointer (#/$defs/...)",
            ));
        }
        let target = self
            .doc
            .pointer(&pointer)
            .ok_or_else(|| bad("it points at nothing in this document"))?;
        Ok((target, pointer))
    }

    /// A `$ref`: one rule per target, built the first time it is met.
    fn visit_ref(&mut self, r: &Value, path: &str, depth: usize) -> Result<Expr, SchemaError> {
        let (target, pointer) = self.resolve_ref(r, path)?;
        if let Some(e) = self.failed_refs.get(&pointer) {
            return Err(e.clone());
        }
        let (name, new_slot) = match self.refs.get(&pointer) {
            Some(name) => (name.clone(), None),
            None => {
                let last = pointer.rsplit('/').next().unwrap_or_default();
                let base = last.replace("~1", "/").replace("~0", "~");
                let (name, slot) = self.reserve(if base.is_empty() { "schema" } else { &base });
                self.refs.insert(pointer.clone(), name.clone());
                self.ref_paths.insert(name.clone(), pointer.clone());
                (name, Some(slot))
            }
        };
        if let Some((owner, _)) = self.owners.last().filter(|(_, l)| *l == self.guards) {
            self.left_edges.push((owner.clone(), name.clone()));
        }
        if let Some(slot) = new_slot {
            self.owners.push((name.clone(), self.guards));
            let body = self.visit(target, &pointer, &name, depth + 1);
            self.owners.pop();
            match body {
                Ok(body) => self.set_rule(slot, body),
                Err(e) => {
                    self.set_rule(slot, class(NOTHING));
                    self.failed_refs.insert(pointer, e.clone());
                    return Err(e);
                }
            }
        }
        Ok(Expr::Rule(name))
    }

    /// `anyOf`/`oneOf`: the alternatives, each with the sibling keywords
    /// merged in; alternatives that accept nothing are dropped.
    fn visit_union(
        &mut self,
        map: &Map<String, Value>,
        key: &str,
        path: &str,
        name: &str,
        depth: usize,
    ) -> Result<Expr, SchemaError> {
        let choices = map
            .get(key)
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| invalid(path, key, "must be a non-empty array of schemas"))?;
        let mut rest = map.clone();
        rest.remove(key);
        let constrained = rest.keys().any(|k| constrains(k));
        let mut alts = Vec::new();
        let mut seen = HashSet::new();
        for (i, choice) in choices.iter().enumerate() {
            let cpath = child(&child(path, key), &i.to_string());
            let cname = child_name(name, &format!("alt-{i}"));
            let e = if constrained {
                self.flatten(choice, &cpath, depth + 1)
                    .and_then(|c| merge_maps(rest.clone(), c, &cpath))
                    .and_then(|merged| self.visit_map(&merged, &cpath, &cname, depth + 1))
            } else {
                self.visit(choice, &cpath, &cname, depth + 1)
            };
            match e {
                Ok(e) => {
                    let e = self.named(&cname, e);
                    if seen.insert(e.clone()) {
                        alts.push(e);
                    }
                }
                Err(SchemaError::Unsatisfiable { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        if alts.is_empty() {
            return Err(unsatisfiable(
                path,
                format!("no alternative of \"{key}\" accepts anything"),
            ));
        }
        Ok(alt(alts))
    }

    /// `const`/`enum`: the values as literals.
    fn visit_enum(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> Result<Expr, SchemaError> {
        let mut values: Vec<&Value> = match map.get("enum") {
            Some(Value::Array(list)) => list.iter().collect(),
            Some(_) => return Err(invalid(path, "enum", "must be an array")),
            None => Vec::new(),
        };
        if let Some(c) = map.get("const") {
            if map.contains_key("enum") && !values.contains(&c) {
                return Err(unsatisfiable(path, "\"const\" is not in \"enum\""));
            }
            values = vec![c];
        }
        if let Some(types) = schema_types(map, path)?.filter(|_| map.contains_key("type")) {
            values.retain(|v| types.iter().any(|t| has_type(v, t)));
        }
        if values.is_empty() {
            return Err(unsatisfiable(
                path,
                "no value of \"enum\" has the schema's type",
            ));
        }
        let mut alts = Vec::with_capacity(values.len());
        let mut seen = HashSet::new();
        for v in values {
            let e = json_literal(v, path, depth)?;
            if seen.insert(e.clone()) {
                alts.push(e);
            }
        }
        Ok(alt(alts))
    }

    fn visit_integer(&mut self, map: &Map<String, Value>, path: &str) -> Result<Expr, SchemaError> {
        match integer_bounds(map, path)? {
            (None, None) => Ok(self.prim("integer")),
            (lo, hi) => Ok(int_range(lo, hi)),
        }
    }

    fn visit_number(&mut self, map: &Map<String, Value>, path: &str) -> Result<Expr, SchemaError> {
        match number_bounds(map, path)? {
            (None, None) => Ok(self.prim("number")),
            (lo, hi) => number_range(lo, hi)
                .ok_or_else(|| unsatisfiable(path, "no number lies within the bounds")),
        }
    }

    fn visit_string(&mut self, map: &Map<String, Value>, path: &str) -> Result<Expr, SchemaError> {
        let format = map.get("format").and_then(Value::as_str);
        if let Some(f) = format.and_then(|f| FORMATS.iter().copied().find(|x| *x == f)) {
            return Ok(seq(vec![lit("\""), self.prim(f), lit("\"")]));
        }
        let min = count(map, "minLength", path)?;
        let max = count(map, "maxLength", path)?;
        if min.is_none() && max.is_none() {
            return Ok(self.prim("string"));
        }
        let min = min.unwrap_or(0);
        if max.is_some_and(|m| m < min) {
            return Err(unsatisfiable(path, "\"minLength\" is above \"maxLength\""));
        }
        let chars = repeat(self.prim("char"), min, max);
        Ok(seq(vec![lit("\""), chars, lit("\"")]))
    }

    fn visit_array(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        name: &str,
        depth: usize,
    ) -> Result<Expr, SchemaError> {
        let (prefix_key, prefix, rest_key) = match (map.get("prefixItems"), map.get("items")) {
            (Some(p), _) => {
                let p = p
                    .as_array()
                    .ok_or_else(|| invalid(path, "prefixItems", "must be an array of schemas"))?;
                ("prefixItems", p.as_slice(), "items")
            }
            (None, Some(Value::Array(p))) => ("items", p.as_slice(), "additionalItems"),
            (None, _) => ("items", &[][..], "items"),
        };
        let rest = match map.get(rest_key) {
            None => Some(&ANY),
            Some(Value::Bool(false)) => None,
            Some(v) => Some(v),
        };
        let min = count(map, "minItems", path)?.unwrap_or(0);
        let max = count(map, "maxItems", path)?;
        if max.is_some_and(|m| m < min) {
            return Err(unsatisfiable(path, "\"minItems\" is above \"maxItems\""));
        }
        let any_item = rest.is_some_and(|r| r == &ANY || r.as_object().is_some_and(Map::is_empty));
        if prefix.is_empty() && any_item && min == 0 && max.is_none() {
            return Ok(self.prim("array"));
        }
        self.guards += 1;
        let items = ArrayItems {
            prefix_key,
            prefix,
            rest_key,
            rest,
            min,
            max,
        };
        let body = self.array_body(&items, path, name, depth);
        self.guards -= 1;
        body
    }

    fn array_body(
        &mut self,
        a: &ArrayItems<'_>,
        path: &str,
        name: &str,
        depth: usize,
    ) -> Result<Expr, SchemaError> {
        let reachable = a
            .max
            .map_or(a.prefix.len(), |m| a.prefix.len().min(m as usize));
        let mut items = Vec::new();
        for (i, schema) in a.prefix[..reachable].iter().enumerate() {
            let ipath = child(&child(path, a.prefix_key), &i.to_string());
            let iname = child_name(name, &format!("item-{i}"));
            match self.visit(schema, &ipath, &iname, depth + 1) {
                Ok(e) => items.push(self.named(&iname, e)),
                // No array goes past an item that accepts nothing.
                Err(SchemaError::Unsatisfiable { .. }) => break,
                Err(e) => return Err(e),
            }
        }
        let p = items.len() as u64;
        let rest = match a.rest {
            Some(schema) if items.len() == a.prefix.len() && a.max.is_none_or(|m| m > p) => {
                let iname = child_name(name, "item");
                match self.visit(schema, &child(path, a.rest_key), &iname, depth + 1) {
                    Ok(e) => Some(self.named(&iname, e)),
                    Err(SchemaError::Unsatisfiable { .. }) => None,
                    Err(e) => return Err(e),
                }
            }
            _ => None,
        };
        let most = if rest.is_none() {
            Some(a.max.map_or(p, |m| m.min(p)))
        } else {
            a.max
        };
        if most.is_some_and(|m| m < a.min) {
            return Err(unsatisfiable(
                path,
                format!(
                    "\"minItems\" is {} but at most {most:?} items can match",
                    a.min
                ),
            ));
        }
        let comma = || seq(vec![lit(","), space()]);
        let mut tail = match rest {
            Some(r) => {
                let lo = a.min.saturating_sub(p);
                let hi = a.max.map(|m| m - p);
                let more = |lo: u64, hi: Option<u64>| {
                    repeat(seq(vec![comma(), r.clone(), space()]), lo, hi)
                };
                if p == 0 {
                    let t = seq(vec![
                        r.clone(),
                        space(),
                        more(lo.saturating_sub(1), hi.map(|h| h - 1)),
                    ]);
                    if lo == 0 { opt(t) } else { t }
                } else {
                    more(lo, hi)
                }
            }
            None => empty(),
        };
        for (i, item) in items.into_iter().enumerate().rev() {
            let lead = if i == 0 { empty() } else { comma() };
            tail = seq(vec![lead, item, space(), tail]);
            if i as u64 >= a.min {
                tail = opt(tail);
                if i > 0 {
                    tail = self.add_rule(&child_name(name, &format!("tail-{i}")), tail);
                }
            }
        }
        Ok(seq(vec![lit("["), space(), tail, lit("]")]))
    }

    fn visit_object(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        name: &str,
        depth: usize,
    ) -> Result<Expr, SchemaError> {
        let empty_map = Map::new();
        let props = match map.get("properties") {
            Some(Value::Object(p)) => p,
            Some(_) => return Err(invalid(path, "properties", "must be an object")),
            None => &empty_map,
        };
        let required: Vec<&str> = match map.get("required") {
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| invalid(path, "required", "must be an array of strings"))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid(path, "required", "must be an array of strings")),
            None => Vec::new(),
        };
        let extra_key = ["additionalProperties", "unevaluatedProperties"]
            .into_iter()
            .find(|k| map.contains_key(*k));
        let extra = match extra_key.and_then(|k| map.get(k)) {
            Some(Value::Bool(false)) => None,
            Some(v) => Some(v),
            None if map.contains_key("properties") => None,
            None => Some(&ANY),
        };
        if props.is_empty() && required.is_empty() && extra == Some(&ANY) {
            return Ok(self.prim("object"));
        }
        let spec = ObjectSpec {
            props,
            required,
            extra_key: extra_key.unwrap_or("additionalProperties"),
            extra,
            extra_forbidden: extra_key.is_some() && extra.is_none(),
        };
        self.guards += 1;
        let members = self.object_members(&spec, path, name, depth);
        self.guards -= 1;
        let members = members?;
        Ok(self.object_body(members, name))
    }

    /// The `key: value` rules of an object, required ones first.
    fn object_members(
        &mut self,
        o: &ObjectSpec<'_, '_>,
        path: &str,
        name: &str,
        depth: usize,
    ) -> Result<Members, SchemaError> {
        let mut m = Members::default();
        let mut declared: Vec<&str> = Vec::new();
        let required: HashSet<&str> = o.required.iter().copied().collect();
        let mut extra_required: Vec<(&str, &Value)> = Vec::new();
        let mut seen = HashSet::new();
        for &key in &o.required {
            if !o.props.contains_key(key) && seen.insert(key) {
                if o.extra_forbidden {
                    return Err(unsatisfiable(
                        path,
                        format!(
                            "required \"{key}\" is not a property and {} is false",
                            o.extra_key
                        ),
                    ));
                }
                extra_required.push((key, o.extra.unwrap_or(&ANY)));
            }
        }
        let props = o.props.iter().map(|(k, v)| (k.as_str(), v, "properties"));
        let extras = extra_required.iter().map(|&(k, v)| (k, v, o.extra_key));
        for (key, schema, keyword) in props.chain(extras) {
            declared.push(key);
            let is_required = required.contains(key);
            let vpath = if keyword == "properties" {
                child(&child(path, keyword), key)
            } else {
                child(path, keyword)
            };
            let vname = child_name(name, key);
            let value = match self.visit(schema, &vpath, &vname, depth + 1) {
                Ok(v) => self.named(&vname, v),
                // An optional property that accepts nothing is left out.
                Err(SchemaError::Unsatisfiable { .. }) if !is_required => continue,
                Err(e) => return Err(e),
            };
            let key_lit = lit(Value::String(key.to_owned()).to_string());
            let kv = seq(vec![key_lit, space(), lit(":"), space(), value, space()]);
            let kv = self.add_rule(&format!("{vname}-kv"), kv);
            if is_required {
                m.required.push(kv);
            } else {
                m.optional.push((key.to_owned(), kv));
            }
        }
        if let Some(schema) = o.extra {
            let vname = child_name(name, "additional-value");
            let value = match self.visit(schema, &child(path, o.extra_key), &vname, depth + 1) {
                Ok(v) => Some(self.named(&vname, v)),
                Err(SchemaError::Unsatisfiable { .. }) => None,
                Err(e) => return Err(e),
            };
            if let Some(value) = value {
                let key = self.key_not_in(&declared, name);
                let kv = seq(vec![key, space(), lit(":"), space(), value, space()]);
                m.extra = Some(self.add_rule(&child_name(name, "additional-kv"), kv));
            }
        }
        Ok(m)
    }

    /// `{ required, optional..., extra... }`: required members in order, then
    /// any ordered subset of the optional ones, then extra keys.
    fn object_body(&mut self, m: Members, name: &str) -> Expr {
        let comma = || seq(vec![lit(","), space()]);
        let mut items = vec![lit("{"), space()];
        for (i, r) in m.required.iter().enumerate() {
            if i > 0 {
                items.push(comma());
            }
            items.push(r.clone());
        }
        // (kv, repeatable) in order; the extra keys last.
        let mut opts: Vec<(String, Expr, bool)> =
            m.optional.into_iter().map(|(k, e)| (k, e, false)).collect();
        if let Some(e) = m.extra {
            opts.push(("additional".to_owned(), e, true));
        }
        if !opts.is_empty() {
            let more = |e: &Expr, repeatable: bool| {
                repeat(seq(vec![comma(), e.clone()]), 0, (!repeatable).then_some(1))
            };
            // rest[j]: members j.. each present or not, after a comma.
            let mut rest: Vec<Expr> = vec![empty(); opts.len() + 1];
            for j in (1..opts.len()).rev() {
                let (key, kv, repeatable) = &opts[j];
                let body = seq(vec![more(kv, *repeatable), rest[j + 1].clone()]);
                rest[j] = self.add_rule(&child_name(name, &format!("{key}-rest")), body);
            }
            let firsts = opts
                .iter()
                .enumerate()
                .map(|(i, (_, kv, repeatable))| {
                    let own = if *repeatable { more(kv, true) } else { empty() };
                    seq(vec![kv.clone(), own, rest[i + 1].clone()])
                })
                .collect();
            let choice = alt(firsts);
            if m.required.is_empty() {
                items.push(opt(choice));
            } else {
                items.push(opt(seq(vec![comma(), choice])));
            }
        }
        items.push(lit("}"));
        seq(items)
    }

    /// A JSON string that is none of `names` (written unescaped).
    fn key_not_in(&mut self, names: &[&str], name: &str) -> Expr {
        let mut trie = vec![TrieNode::default()];
        let plain = names
            .iter()
            .filter(|n| n.chars().count() <= MAX_TRIE_KEY && n.chars().all(is_plain_char));
        let mut any = false;
        for n in plain {
            any = true;
            let mut at = 0;
            for c in n.chars() {
                at = match trie[at].children.get(&c) {
                    Some(&next) => next,
                    None => {
                        trie.push(TrieNode::default());
                        let next = trie.len() - 1;
                        trie[at].children.insert(c, next);
                        next
                    }
                };
            }
            trie[at].terminal = true;
        }
        if !any {
            return self.prim("string");
        }
        let body = self.trie_node(&trie, 0, name, 0);
        let key = seq(vec![lit("\""), body, lit("\"")]);
        self.add_rule(&child_name(name, "additional-key"), key)
    }

    /// The rest of a key after the trie path to `node`, `level` levels into
    /// the current rule.
    fn trie_node(&mut self, trie: &[TrieNode], node: usize, name: &str, level: usize) -> Expr {
        let n = &trie[node];
        let mut alts = Vec::new();
        let mut other = String::from(r#"[^"\\\x00-\x1F\x7F"#);
        for (&c, &next) in &n.children {
            class_char(c, &mut other);
            let cont = if trie[next].children.is_empty() {
                repeat(self.prim("char"), 1, None)
            } else if level + 1 >= TRIE_LEVELS_PER_RULE {
                let e = self.trie_node(trie, next, name, 0);
                self.add_rule(&child_name(name, "key"), e)
            } else {
                self.trie_node(trie, next, name, level + 1)
            };
            alts.push(seq(vec![lit(c.to_string()), cont]));
        }
        if !n.children.is_empty() {
            other.push(']');
            let first = alt(vec![Expr::Class(other), self.prim("escape")]);
            alts.push(seq(vec![first, repeat(self.prim("char"), 0, None)]));
        }
        let body = alt(alts);
        if n.terminal { body } else { opt(body) }
    }
}

/// An array schema's item keywords, read.
struct ArrayItems<'s> {
    prefix_key: &'static str,
    prefix: &'s [Value],
    rest_key: &'static str,
    /// The schema of items after the prefix; `None`: there are none.
    rest: Option<&'s Value>,
    min: u64,
    max: Option<u64>,
}

/// An object schema's property keywords, read.
struct ObjectSpec<'s, 'r> {
    props: &'s Map<String, Value>,
    required: Vec<&'r str>,
    /// `additionalProperties` or `unevaluatedProperties`.
    extra_key: &'static str,
    /// The schema of extra keys' values; `None`: no extra keys.
    extra: Option<&'s Value>,
    /// Extra keys are forbidden explicitly (`false`), not by default.
    extra_forbidden: bool,
}

/// An object's member rules.
#[derive(Default)]
struct Members {
    required: Vec<Expr>,
    optional: Vec<(String, Expr)>,
    extra: Option<Expr>,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::super::{Grammar, Matcher};
    use super::*;

    fn gbnf(schema: &Value) -> String {
        json_schema_to_gbnf(schema).unwrap_or_else(|e| panic!("{schema}: {e}"))
    }

    fn matcher(gbnf: &str) -> Matcher {
        let g = Grammar::parse(gbnf).unwrap_or_else(|e| panic!("{e}\n{gbnf}"));
        Matcher::new(Arc::new(g))
    }

    fn text_accepted(gbnf: &str, doc: &str) -> bool {
        let mut m = matcher(gbnf);
        m.accept_str(doc) && m.is_complete()
    }

    fn accepts(schema: Value, doc: &str) -> bool {
        text_accepted(&gbnf(&schema), doc)
    }

    /// Checks that every `good` document is accepted and every `bad` one
    /// rejected, printing the grammar on failure.
    fn check(schema: Value, good: &[&str], bad: &[&str]) {
        let g = gbnf(&schema);
        for doc in good {
            assert!(
                text_accepted(&g, doc),
                "should accept {doc}\nschema {schema}\n{g}"
            );
        }
        for doc in bad {
            assert!(
                !text_accepted(&g, doc),
                "should reject {doc}\nschema {schema}\n{g}"
            );
        }
    }

    fn error(schema: Value) -> SchemaError {
        match json_schema_to_gbnf(&schema) {
            Ok(g) => panic!("{schema} converted:\n{g}"),
            Err(e) => e,
        }
    }

    #[test]
    fn json_gbnf_is_the_primitives() {
        let mut expected = String::from("root ::= object\n");
        let names = [
            "value", "object", "array", "string", "char", "escape", "number", "integer", "boolean",
            "null", "space",
        ];
        for n in names {
            let p = PRIMITIVES.iter().find(|p| p.name == n).unwrap();
            expected.push_str(&format!("{} ::= {}\n", p.name, p.body));
        }
        assert_eq!(JSON_GBNF, expected);
        // Every primitive parses (with its dependencies).
        for p in PRIMITIVES {
            let mut c = Converter::new(&ANY);
            let root = c.prim(p.name);
            matcher(&c.finish(&root).unwrap());
        }
    }

    #[test]
    fn json_gbnf_accepts_objects_only() {
        let good = [
            "{}",
            "{ }",
            r#"{"a":1}"#,
            r#"{"a": [1, 2.5, -3e+10, true, false, null], "b": {"c": {"d": "x\n\"\\/\u00e9"}}}"#,
            "{\n  \"a\": 1,\n  \"b\": [ ]\n}",
            r#"{"é": "ü ✓ 😀", "": 0}"#,
            r#"{"a" : 1 , "b" : 2 }"#,
        ];
        let bad = [
            "1",
            "[1]",
            "\"s\"",
            "null",
            " {}",
            "{} ",
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{a:1}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":"\q"}"#,
            r#"{"a":"\u12G4"}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":"unterminated}"#,
            r#"{"a":tru}"#,
        ];
        for doc in good {
            assert!(text_accepted(JSON_GBNF, doc), "should accept {doc}");
        }
        for doc in bad {
            assert!(!text_accepted(JSON_GBNF, doc), "should reject {doc}");
        }
        // Whitespace is bounded.
        let long = format!("{{\n{}\"a\":1}}", " ".repeat(21));
        assert!(!text_accepted(JSON_GBNF, &long));
        let ok = format!("{{\n{}\"a\":1}}", " ".repeat(20));
        assert!(text_accepted(JSON_GBNF, &ok));
    }

    #[test]
    fn any_value() {
        for schema in [json!({}), json!(true), json!({"description": "anything"})] {
            check(
                schema,
                &[
                    "1",
                    "\"s\"",
                    "null",
                    "[1, {}]",
                    r#"{"a": []}"#,
                    "-0.5e3",
                    "true",
                ],
                &["", "nul", "[1,]", "'s'"],
            );
        }
    }

    #[test]
    fn primitive_types() {
        check(
            json!({"type": "string"}),
            &[r#""""#, r#""a b""#, r#""\u00e9\n""#],
            &["1", r#""a"#, r#""\x""#, "null"],
        );
        check(
            json!({"type": "boolean"}),
            &["true", "false"],
            &["1", "\"true\"", "True"],
        );
        check(
            json!({"type": "null"}),
            &["null"],
            &["nil", "0", "\"null\""],
        );
        check(
            json!({"type": "number"}),
            &[
                "0",
                "-0",
                "1.5",
                "-12.25e-3",
                "1E+9",
                "1e05",
                "1234567890123456",
            ],
            &[
                "01",
                ".5",
                "1.",
                "+1",
                "1e",
                "\"1\"",
                "12345678901234567",
                "NaN",
            ],
        );
        check(
            json!({"type": "integer"}),
            &["0", "-7", "42", "9999999999999999"],
            &["1.0", "1.5", "1e3", "01", "-", "\"3\"", "10000000000000000"],
        );
        check(
            json!({"type": ["string", "null"]}),
            &["null", r#""x""#],
            &["1", "[]"],
        );
        check(
            json!({"type": ["integer", "number"]}),
            &["1", "1.5"],
            &["true"],
        );
    }

    #[test]
    fn objects_required_optional() {
        // Keys in alphabetical order so the test holds whether or not
        // serde_json keeps the schema's order (feature `preserve_order`).
        let schema = json!({
            "type": "object",
            "properties": {
                "age": {"type": "integer"},
                "email": {"type": "string"},
                "name": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["name", "age"]
        });
        check(
            schema,
            &[
                r#"{"age":1,"name":"a"}"#,
                r#"{ "age" : 1 , "name" : "a" }"#,
                r#"{"age":1,"name":"a","email":"e"}"#,
                r#"{"age":1,"name":"a","tags":["x","y"]}"#,
                r#"{"age":1,"name":"a","email":"e","tags":[]}"#,
            ],
            &[
                r#"{"name":"a"}"#,
                r#"{"age":1}"#,
                "{}",
                r#"{"age":1,"name":"a","other":1}"#,
                r#"{"age":"1","name":"a"}"#,
                r#"{"age":1.5,"name":"a"}"#,
                r#"{"age":1,"name":"a","tags":[1]}"#,
                r#"{"age":1,"name":"a","email":"e","email":"f"}"#,
                r#"{"age":1,"name":"a",}"#,
                // Order: required first, in properties order, then optional.
                r#"{"name":"a","age":1}"#,
                r#"{"age":1,"email":"e","name":"a"}"#,
                r#"{"age":1,"name":"a","tags":[],"email":"e"}"#,
            ],
        );
        // No required: any ordered subset, including none.
        check(
            json!({"properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}),
            &["{}", r#"{"a":1}"#, r#"{"b":2}"#, r#"{"a":1,"b":2}"#],
            &[r#"{"b":2,"a":1}"#, r#"{"c":3}"#, r#"{,"a":1}"#, "[]"],
        );
    }

    #[test]
    fn empty_and_open_objects() {
        check(
            json!({"type": "object", "properties": {}}),
            &["{}", "{ }"],
            &[r#"{"a":1}"#],
        );
        check(
            json!({"type": "object", "additionalProperties": false}),
            &["{}"],
            &[r#"{"a":1}"#],
        );
        check(
            json!({"type": "object"}),
            &["{}", r#"{"a":{"b":[1]}}"#],
            &["[]", "1"],
        );
        check(
            json!({"type": "object", "additionalProperties": {"type": "integer"}}),
            &["{}", r#"{"a":1,"b":2}"#],
            &[r#"{"a":"x"}"#],
        );
    }

    #[test]
    fn additional_properties_beside_properties() {
        let schema = json!({
            "type": "object",
            "properties": {"id": {"type": "integer"}, "idx": {"type": "string"}},
            "required": ["id"],
            "additionalProperties": {"type": "boolean"}
        });
        check(
            schema,
            &[
                r#"{"id":1}"#,
                r#"{"id":1,"idx":"a"}"#,
                r#"{"id":1,"x":true}"#,
                r#"{"id":1,"idx":"a","x":true,"y":false}"#,
                r#"{"id":1,"i":true}"#,
                r#"{"id":1,"ids":true}"#,
                r#"{"id":1,"idxx":true}"#,
                r#"{"id":1,"":true}"#,
                r#"{"id":1,"\n":true}"#,
            ],
            &[
                r#"{"id":1,"x":1}"#,
                r#"{"id":1,"id":true}"#,
                r#"{"id":1,"idx":true}"#,
                r#"{"x":true}"#,
            ],
        );
        check(
            json!({"properties": {"a": {"type": "integer"}}, "additionalProperties": true}),
            &["{}", r#"{"a":1}"#, r#"{"b":"x"}"#, r#"{"a":1,"b":[null]}"#],
            &[r#"{"a":"x"}"#],
        );
    }

    #[test]
    fn nested_objects_and_arrays_of_objects() {
        let schema = json!({
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {"qty": {"type": "integer"}, "sku": {"type": "string"}},
                        "required": ["sku", "qty"]
                    }
                },
                "user": {
                    "type": "object",
                    "properties": {
                        "address": {
                            "type": "object",
                            "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                            "required": ["city"]
                        },
                        "name": {"type": "string"}
                    },
                    "required": ["name", "address"]
                }
            },
            "required": ["user", "items"]
        });
        check(
            schema,
            &[
                r#"{"items":[],"user":{"address":{"city":"c"},"name":"n"}}"#,
                r#"{"items":[{"qty":1,"sku":"a"},{"qty":2,"sku":"b"}],"user":{"address":{"city":"c","zip":"z"},"name":"n"}}"#,
                "{\n  \"items\": [\n    {\"qty\": 1, \"sku\": \"a\"}\n  ],\n  \"user\": {\n    \"address\": {\"city\": \"c\"},\n    \"name\": \"n\"\n  }\n}",
            ],
            &[
                r#"{"items":[],"user":{"address":{},"name":"n"}}"#,
                r#"{"items":[{"sku":"a"}],"user":{"address":{"city":"c"},"name":"n"}}"#,
                r#"{"items":[{"qty":1.5,"sku":"a"}],"user":{"address":{"city":"c"},"name":"n"}}"#,
                r#"{"user":{"address":{"city":"c"},"name":"n"}}"#,
            ],
        );
    }

    #[test]
    fn arrays() {
        check(
            json!({"type": "array", "items": {"type": "integer"}}),
            &["[]", "[ ]", "[1]", "[1,2,3]", "[ 1 , 2 ]", "[\n 1,\n 2\n]"],
            &["[1,]", "[,1]", "[1.5]", "[\"a\"]", "{}", "[1 2]"],
        );
        check(
            json!({"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 3}),
            &[r#"["a","b"]"#, r#"["a","b","c"]"#],
            &["[]", r#"["a"]"#, r#"["a","b","c","d"]"#],
        );
        check(
            json!({"type": "array", "minItems": 1}),
            &["[1]", r#"[1,"a",null]"#],
            &["[]"],
        );
        check(json!({"type": "array", "maxItems": 0}), &["[]"], &["[1]"]);
        check(
            json!({"type": "array", "maxItems": 1}),
            &["[]", "[{}]"],
            &["[1,2]"],
        );
        check(json!({"type": "array", "items": false}), &["[]"], &["[1]"]);
        check(json!({"type": "array"}), &["[]", "[1,[2]]"], &["{}"]);
    }

    #[test]
    fn tuples() {
        // A closed tuple (as pydantic writes one).
        check(
            json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}],
                   "minItems": 2, "maxItems": 2}),
            &[r#"["a",1]"#, r#"[ "a" , 1 ]"#],
            &[r#"["a"]"#, r#"[1,"a"]"#, r#"["a",1,2]"#, "[]"],
        );
        // prefixItems with items: later items follow the items schema; the
        // prefix may be cut short.
        check(
            json!({"prefixItems": [{"type": "string"}, {"type": "integer"}],
                   "items": {"type": "boolean"}}),
            &["[]", r#"["a"]"#, r#"["a",1]"#, r#"["a",1,true,false]"#],
            &[r#"[1]"#, r#"["a","b"]"#, r#"["a",1,2]"#],
        );
        check(
            json!({"prefixItems": [{"type": "string"}, {"type": "integer"}], "items": false,
                   "minItems": 1}),
            &[r#"["a"]"#, r#"["a",1]"#],
            &["[]", r#"["a",1,true]"#],
        );
        // Draft-7 tuples.
        check(
            json!({"type": "array", "items": [{"type": "null"}], "additionalItems": {"type": "integer"}}),
            &["[]", "[null]", "[null,1,2]"],
            &["[1]", "[null,null]"],
        );
    }

    #[test]
    fn strings_with_lengths_and_formats() {
        check(
            json!({"type": "string", "minLength": 2, "maxLength": 4}),
            &[r#""ab""#, r#""abcd""#, r#""a\nb""#, r#""\u0041b""#],
            &[r#""a""#, r#""abcde""#, r#""""#],
        );
        check(
            json!({"type": "string", "maxLength": 0}),
            &[r#""""#],
            &[r#""a""#],
        );
        check(
            json!({"type": "string", "format": "date"}),
            &[r#""2024-02-29""#, r#""1999-12-31""#],
            &[r#""2024-13-01""#, r#""2024-1-01""#, r#""x""#],
        );
        check(
            json!({"type": "string", "format": "time"}),
            &[r#""23:59:59Z""#, r#""00:00:00.123+05:30""#],
            &[r#""24:00:00Z""#, r#""12:00""#],
        );
        check(
            json!({"type": "string", "format": "date-time"}),
            &[r#""2024-05-01T12:30:00Z""#],
            &[r#""2024-05-01 12:30:00Z""#],
        );
        check(
            json!({"type": "string", "format": "uuid"}),
            &[r#""123e4567-e89b-12d3-a456-426614174000""#],
            &[r#""123e4567e89b12d3a456426614174000""#],
        );
        // Other formats are annotations.
        check(
            json!({"type": "string", "format": "email"}),
            &[r#""not an email""#],
            &["1"],
        );
    }

    #[test]
    fn enums_and_consts() {
        check(
            json!({"enum": ["red", "green", 3, null, true, [1, "a"], {"k": "v"}]}),
            &[
                r#""red""#,
                r#""green""#,
                "3",
                "null",
                "true",
                r#"[1,"a"]"#,
                r#"[ 1, "a" ]"#,
                r#"{"k": "v"}"#,
            ],
            &[
                r#""blue""#,
                r#""Red""#,
                "4",
                "false",
                r#"[1]"#,
                r#"{"k":"w"}"#,
            ],
        );
        check(
            json!({"type": "string", "enum": ["a", "b", 1]}),
            &[r#""a""#, r#""b""#],
            &["1"],
        );
        check(json!({"const": "x\"y"}), &[r#""x\"y""#], &[r#""xy""#]);
        check(
            json!({"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "number"}},
                   "required": ["kind", "r"]}),
            &[r#"{"kind":"circle","r":1.5}"#],
            &[r#"{"kind":"square","r":1.5}"#],
        );
        assert!(matches!(
            error(json!({"enum": []})),
            SchemaError::Unsatisfiable { .. }
        ));
        assert!(matches!(
            error(json!({"type": "integer", "enum": ["a"]})),
            SchemaError::Unsatisfiable { .. }
        ));
    }

    #[test]
    fn integer_ranges() {
        let cases: &[(Value, i64, i64)] = &[
            (json!({"type": "integer", "minimum": 0}), 0, 1200),
            (
                json!({"type": "integer", "minimum": 1, "maximum": 100}),
                1,
                100,
            ),
            (
                json!({"type": "integer", "minimum": -15, "maximum": 27}),
                -15,
                27,
            ),
            (
                json!({"type": "integer", "minimum": -300, "maximum": -12}),
                -300,
                -12,
            ),
            (json!({"type": "integer", "minimum": 7, "maximum": 7}), 7, 7),
            (
                json!({"type": "integer", "minimum": 95, "maximum": 1005}),
                95,
                1005,
            ),
            (
                json!({"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 10}),
                4,
                9,
            ),
            (
                json!({"type": "integer", "minimum": 2.5, "maximum": 11.5}),
                3,
                11,
            ),
            (json!({"type": "integer", "maximum": -5}), -1200, -5),
            (json!({"type": "integer", "minimum": 123}), 123, 1200),
            (
                json!({"type": "integer", "maximum": 0, "exclusiveMaximum": true}),
                -1200,
                -1,
            ),
        ];
        for (schema, lo, hi) in cases {
            let g = gbnf(schema);
            for n in -1200i64..=1200 {
                let inside = (*lo..=*hi).contains(&n);
                assert_eq!(
                    text_accepted(&g, &n.to_string()),
                    inside,
                    "{n} with {schema}\n{g}"
                );
            }
            assert!(!text_accepted(&g, "1.0"));
        }
        // Unbounded sides go to 16 digits.
        let g = gbnf(&json!({"type": "integer", "minimum": 5}));
        assert!(text_accepted(&g, "9999999999999999"));
        assert!(!text_accepted(&g, "10000000000000000"));
        assert!(!text_accepted(&g, "-1"));
        assert!(!text_accepted(&g, "05"));
        let g = gbnf(&json!({"type": "integer", "minimum": 1000000, "maximum": 98765432}));
        for n in [
            1000000, 1234567, 9999999, 10000000, 98765432, 98765431, 90000000,
        ] {
            assert!(text_accepted(&g, &n.to_string()), "{n}");
        }
        for n in [999999, 98765433, 98765440, 99000000, 100000000] {
            assert!(!text_accepted(&g, &n.to_string()), "{n}");
        }
        assert!(matches!(
            error(json!({"type": "integer", "minimum": 5, "maximum": 4})),
            SchemaError::Unsatisfiable { .. }
        ));
    }

    #[test]
    fn number_ranges() {
        check(
            json!({"type": "number", "minimum": 0}),
            &["0", "0.0", "1.5", "123"],
            &["-1", "-0.5", "1e3"],
        );
        check(
            json!({"type": "number", "minimum": 0, "maximum": 1}),
            &["0", "0.25", "1", "1.0", "1.000", "0.999"],
            &["1.01", "2", "-0.1", "1.0001"],
        );
        check(
            json!({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}),
            &["0.5", "0.0001", "0.999"],
            &["0", "0.0", "1", "1.0", "-0.5"],
        );
        check(
            json!({"type": "number", "minimum": -2, "maximum": 3}),
            &["-2", "-2.0", "-1.5", "-0.5", "0", "2.9", "3", "3.00"],
            &["-2.1", "-3", "3.1", "4"],
        );
        check(
            json!({"type": "number", "minimum": -10, "exclusiveMaximum": -2}),
            &["-10", "-9.5", "-2.001", "-3"],
            &["-2", "-2.0", "-1", "0", "-10.5", "1"],
        );
        let e = error(json!({"type": "number", "minimum": 0.5}));
        assert_eq!(
            e.to_string(),
            "at the root: unsupported keyword \"minimum\" (only whole-number bounds are enforced on \"number\")"
        );
    }

    #[test]
    fn any_of_one_of_and_nullable() {
        check(
            json!({"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]}),
            &[r#""s""#, "1", "null"],
            &["1.5", "true", "[]"],
        );
        check(
            json!({"oneOf": [
                {"type": "object", "properties": {"cat": {"type": "string"}}, "required": ["cat"]},
                {"type": "object", "properties": {"dog": {"type": "integer"}}, "required": ["dog"]}
            ]}),
            &[r#"{"cat":"c"}"#, r#"{"dog":1}"#],
            &[r#"{"cat":1}"#, r#"{"dog":"d"}"#, "{}"],
        );
        // Pydantic's Optional[str].
        check(
            json!({"type": "object", "properties": {
                "x": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": null, "title": "X"}
            }, "required": ["x"]}),
            &[r#"{"x":null}"#, r#"{"x":"a"}"#],
            &[r#"{"x":1}"#],
        );
        // Sibling keywords apply to every alternative.
        check(
            json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "anyOf": [{"required": ["a"]}, {"required": ["b"]}]}),
            &[r#"{"a":1}"#, r#"{"b":1}"#, r#"{"a":1,"b":2}"#],
            &["{}", r#"{"c":1}"#],
        );
        check(
            json!({"type": "string", "anyOf": [{"maxLength": 1}, {"type": "null"}]}),
            &[r#""a""#],
            &[r#""ab""#, "null"],
        );
        check(
            json!({"type": "integer", "nullable": true}),
            &["1", "null"],
            &[r#""1""#],
        );
    }

    #[test]
    fn all_of_merges_objects() {
        check(
            json!({"allOf": [
                {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"properties": {"b": {"type": "string"}}, "required": ["b"]},
                {"properties": {"c": {"type": "boolean"}}}
            ]}),
            &[r#"{"a":1,"b":"x"}"#, r#"{"a":1,"b":"x","c":true}"#],
            &[r#"{"a":1}"#, r#"{"b":"x"}"#, r#"{"a":1,"b":"x","d":1}"#],
        );
        check(
            json!({"allOf": [{"type": "integer", "minimum": 0}, {"maximum": 10}]}),
            &["0", "10"],
            &["11", "-1"],
        );
        check(
            json!({"allOf": [{"enum": ["a", "b", "c"]}, {"enum": ["b", "c", "d"]}]}),
            &[r#""b""#, r#""c""#],
            &[r#""a""#, r#""d""#],
        );
        assert!(matches!(
            error(json!({"allOf": [{"type": "string"}, {"type": "integer"}]})),
            SchemaError::Unsatisfiable { .. }
        ));
    }

    #[test]
    fn refs_and_recursion() {
        let tree = json!({
            "$defs": {
                "node": {
                    "type": "object",
                    "properties": {
                        "value": {"type": "integer"},
                        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}
                    },
                    "required": ["value"]
                }
            },
            "$ref": "#/$defs/node"
        });
        check(
            tree,
            &[
                r#"{"value":1}"#,
                r#"{"value":1,"children":[]}"#,
                r#"{"value":1,"children":[{"value":2},{"value":3,"children":[{"value":4}]}]}"#,
            ],
            &[
                r#"{"value":1,"children":[{}]}"#,
                r#"{"value":1,"children":[{"value":"x"}]}"#,
            ],
        );
        // definitions, and a ref used twice, and the whole document by "#".
        let linked = json!({
            "type": "object",
            "properties": {
                "head": {"type": "integer"},
                "tail": {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
                "a": {"$ref": "#/definitions/pt"},
                "b": {"$ref": "#/definitions/pt"}
            },
            "required": ["head", "tail"],
            "definitions": {"pt": {"type": "array", "items": {"type": "number"}, "maxItems": 2}}
        });
        let g = gbnf(&linked);
        assert_eq!(g.matches("pt ::=").count(), 1, "{g}");
        check(
            linked,
            &[
                r#"{"head":1,"tail":null}"#,
                r#"{"head":1,"tail":{"head":2,"tail":null},"a":[1,2],"b":[]}"#,
            ],
            &[r#"{"head":1}"#, r#"{"head":1,"tail":null,"a":[1,2,3]}"#],
        );
        // $ref beside other keywords merges them.
        check(
            json!({"$defs": {"base": {"type": "object", "properties": {"x": {"type": "integer"}}}},
                   "$ref": "#/$defs/base", "required": ["x"]}),
            &[r#"{"x":1}"#],
            &["{}"],
        );
    }

    #[test]
    fn rule_names_are_sanitized_and_unique() {
        let schema = json!({
            "type": "object",
            "properties": {
                "9lives": {"type": "object", "properties": {"w": {"type": "integer"}}},
                "first name": {"type": "object", "properties": {"x": {"type": "integer"}}},
                "first-name": {"type": "object", "properties": {"y": {"type": "integer"}}},
                "value": {"type": "object", "properties": {"z": {"type": "integer"}}},
                "ünï": {"enum": ["a", "b"]}
            }
        });
        let g = gbnf(&schema);
        for line in g.lines() {
            let name = line.split(" ::= ").next().unwrap();
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "{name}\n{g}"
            );
        }
        assert_eq!(g.matches("\nvalue ::=").count(), 0, "{g}");
        check(
            schema,
            &[
                r#"{"9lives":{"w":4},"first name":{"x":1},"first-name":{"y":2},"value":{"z":3},"ünï":"a"}"#,
                r#"{"value":{"z":3}}"#,
            ],
            &[r#"{"first name":{"y":1}}"#],
        );
    }

    #[test]
    fn property_names_needing_escapes() {
        check(
            json!({"type": "object", "properties": {"a\"b": {"type": "integer"}, "c\\d\n": {"type": "integer"}}}),
            &[r#"{"a\"b":1}"#, r#"{"c\\d\n":2}"#],
            &[r#"{"ab":1}"#],
        );
    }

    #[test]
    fn unsupported_keywords_are_errors() {
        let e = error(
            json!({"type": "object", "properties": {"age": {"type": "string", "pattern": "^a"}}}),
        );
        assert_eq!(e.path(), "/properties/age");
        assert!(
            e.to_string()
                .starts_with("at /properties/age: unsupported keyword \"pattern\""),
            "{e}"
        );
        for kw in [
            json!({"not": {}}),
            json!({"type": "number", "multipleOf": 2}),
            json!({"type": "array", "uniqueItems": true}),
            json!({"if": {}, "then": {}}),
            json!({"type": "object", "patternProperties": {}}),
            json!({"type": "object", "minProperties": 1}),
        ] {
            assert!(
                matches!(error(kw.clone()), SchemaError::Unsupported { .. }),
                "{kw}"
            );
        }
        // Annotations and unknown keywords are fine.
        gbnf(
            &json!({"type": "array", "uniqueItems": false, "title": "t", "x-foo": 1, "$comment": "c"}),
        );
    }

    #[test]
    fn bad_refs_are_errors() {
        for (schema, path) in [
            (json!({"$ref": "#/$defs/missing"}), "/$ref"),
            (json!({"$ref": "https://example.com/schema.json"}), "/$ref"),
            (json!({"$ref": "other.json#/a"}), "/$ref"),
            (json!({"$ref": "#anchor"}), "/$ref"),
            (
                json!({"properties": {"a": {"$ref": "#/definitions/x"}}}),
                "/properties/a/$ref",
            ),
        ] {
            let e = error(schema.clone());
            assert!(matches!(e, SchemaError::BadRef { .. }), "{schema}: {e}");
            assert_eq!(e.path(), path);
        }
        let e = error(json!({"$ref": 3}));
        assert!(matches!(e, SchemaError::Invalid { .. }), "{e}");
    }

    #[test]
    fn left_recursive_refs_are_errors() {
        let e = error(json!({
            "$defs": {"a": {"anyOf": [{"$ref": "#/$defs/b"}, {"type": "null"}]},
                      "b": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "integer"}]}},
            "$ref": "#/$defs/a"
        }));
        assert!(matches!(e, SchemaError::LeftRecursion { .. }), "{e}");
        let e = error(json!({"anyOf": [{"$ref": "#"}, {"type": "null"}]}));
        assert!(matches!(e, SchemaError::LeftRecursion { .. }), "{e}");
        // A self-reference through allOf is an endless merge.
        let e =
            error(json!({"$defs": {"a": {"allOf": [{"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"}));
        assert!(matches!(e, SchemaError::TooDeep { .. }), "{e}");
    }

    #[test]
    fn hostile_schemas() {
        // Deep nesting.
        let mut deep = json!({"type": "integer"});
        for _ in 0..200 {
            deep = json!({"type": "array", "items": deep});
        }
        assert!(matches!(error(deep), SchemaError::TooDeep { .. }));
        let mut deep = json!({"type": "integer"});
        for _ in 0..200 {
            deep = json!({"anyOf": [deep]});
        }
        assert!(matches!(error(deep), SchemaError::TooDeep { .. }));
        // Huge counts.
        for schema in [
            json!({"type": "array", "minItems": 1_000_000}),
            json!({"type": "array", "maxItems": 10_001}),
            json!({"type": "string", "minLength": 99_999_999}),
        ] {
            assert!(
                matches!(error(schema.clone()), SchemaError::TooLarge { .. }),
                "{schema}"
            );
        }
        // Not schemas.
        let e = error(json!(42));
        assert_eq!(
            e.to_string(),
            "at the root: a schema must be an object or a boolean, not a number"
        );
        let e = error(json!({"properties": {"a": "string"}}));
        assert_eq!(e.path(), "/properties/a");
        assert!(matches!(e, SchemaError::NotASchema { .. }));
        assert!(matches!(
            error(json!(false)),
            SchemaError::Unsatisfiable { .. }
        ));
        assert!(matches!(
            error(json!({"type": "strin"})),
            SchemaError::Invalid { .. }
        ));
        assert!(matches!(
            error(json!({"type": "array", "minItems": -1})),
            SchemaError::Invalid { .. }
        ));
        assert!(matches!(
            error(json!({"type": "array", "minItems": 3, "maxItems": 2})),
            SchemaError::Unsatisfiable { .. }
        ));
        // anyOf distributed over many allOf parts multiplies, within limits.
        let parts: Vec<Value> = (0..5)
            .map(|i| json!({"anyOf": [{"minimum": i}, {"maximum": i}, {"type": "string"}]}))
            .collect();
        let e = error(json!({"allOf": parts}));
        assert!(matches!(e, SchemaError::TooLarge { .. }), "{e}");
        // A 10 000-character string bound is fine.
        let g = gbnf(&json!({"type": "string", "maxLength": 10_000}));
        matcher(&g);
    }

    #[test]
    fn forbidden_and_impossible_members() {
        check(
            json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": false},
                   "additionalProperties": true}),
            &[r#"{"a":1}"#, r#"{"c":1}"#],
            &[r#"{"b":1}"#],
        );
        assert!(matches!(
            error(json!({"type": "object", "properties": {"b": false}, "required": ["b"]})),
            SchemaError::Unsatisfiable { .. }
        ));
        check(
            json!({"type": "object", "required": ["a"]}),
            &[r#"{"a":1}"#, r#"{"a":[]}"#],
            &["{}", r#"{"b":1}"#],
        );
    }

    #[test]
    fn real_world_tool_schema() {
        // An OpenAI-style function parameters schema.
        let schema = json!({
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City and state"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 14}
            },
            "required": ["location", "unit"],
            "additionalProperties": false
        });
        check(
            schema,
            &[
                r#"{"location": "Paris, FR", "unit": "celsius"}"#,
                r#"{"location": "Paris, FR", "unit": "celsius", "days": 14}"#,
            ],
            &[
                r#"{"location": "Paris, FR", "unit": "kelvin"}"#,
                r#"{"location": "Paris, FR", "unit": "celsius", "days": 15}"#,
                r#"{"location": "Paris, FR", "unit": "celsius", "days": 0}"#,
            ],
        );
        assert!(accepts(json!({"type": "integer"}), "12"));
    }

    #[test]
    fn refs_and_members_that_accept_nothing() {
        // The failed $ref rule and the rules of the dropped property stay
        // in the grammar unused; it must still parse.
        check(
            json!({"$defs": {"never": false}, "anyOf": [{"$ref": "#/$defs/never"}, {"type": "null"}]}),
            &["null"],
            &["1", "false"],
        );
        check(
            json!({"$defs": {"never": false},
                   "properties": {"a": {"$ref": "#/$defs/never"}, "b": {"$ref": "#/$defs/never"},
                                  "c": {"type": "integer"}}}),
            &["{}", r#"{"c":1}"#],
            &[r#"{"a":1}"#, r#"{"b":null}"#],
        );
        check(
            json!({"properties": {"a": {"type": "object",
                "properties": {"x": {"type": "integer"}, "y": false}, "required": ["x", "y"]}}}),
            &["{}"],
            &[r#"{"a":{"x":1}}"#],
        );
    }

    #[test]
    fn extra_keys_differ_from_long_and_unusual_names() {
        let long = "abcdefghijklmnopqrstuvwxyz0123456789";
        let schema = json!({
            "type": "object",
            "properties": {long: {"type": "integer"}, "a-b": {"type": "integer"}, "é✓": {"type": "integer"}},
            "additionalProperties": {"type": "string"}
        });
        let extra = |k: &str| format!(r#"{{"{k}":"s"}}"#);
        let g = gbnf(&schema);
        for k in [
            &long[..30],
            &format!("{long}x"),
            "a-",
            "a-bc",
            "é",
            "é✓✓",
            "b",
            "",
        ] {
            assert!(text_accepted(&g, &extra(k)), "extra key {k}\n{g}");
        }
        for k in [long, "a-b", "é✓"] {
            assert!(!text_accepted(&g, &extra(k)), "extra key {k}\n{g}");
            assert!(text_accepted(&g, &format!(r#"{{"{k}":1}}"#)), "{k}\n{g}");
        }
    }
}
