//! Chat templates: turning a conversation into the prompt text a model was
//! trained on.
//!
//! A model file's `tokenizer.chat_template` is a Jinja2 template written for
//! Hugging Face transformers. [`ChatTemplate`] renders it with minijinja set
//! up the way transformers sets up Jinja2 (`apply_chat_template`):
//!
//! * `trim_blocks` and `lstrip_blocks` on, `loopcontrols` (`break`,
//!   `continue`) available;
//! * the variables `messages` (a list of `{role, content}` maps),
//!   `add_generation_prompt`, `bos_token`, `eos_token`, `tools` and
//!   `documents` (`none` unless given), plus any extra keyword arguments;
//! * the globals `raise_exception(message)` (a [`ChatTemplateError::Raised`])
//!   and `strftime_now(format)` (UTC; see [`ChatTemplate::set_time`]);
//! * `tojson` as transformers redefines it (Python's `json.dumps`, no HTML
//!   escaping);
//! * Python's string and dict methods (`.strip()`, `.startswith()`,
//!   `.split()`, `.items()`, `.get()` …) through minijinja-contrib's pycompat;
//! * transformers' `{% generation %}` marker block renders its body.
//!
//! Conversations come as [`Message`]s ([`ChatTemplate::render`]) or as JSON
//! ([`ChatTemplate::render_json_text`]: a whole `apply_chat_template`-style
//! request with `tool_calls`, content parts, `tools` …, key order kept).
//!
//! A file without a template gets a built-in one ([`BuiltinTemplate`]):
//! Llama 3 headers, ChatML, or Llama 2 `[INST]`, chosen from the vocabulary.
//!
//! The rendered text contains special tokens as text (`<|eot_id|>`,
//! `bos_token` where the template writes it); tokenize it with special tokens
//! recognised, and without adding a second BOS when it already starts with one.

mod json;
pub mod openai;
mod request;
mod time;
pub mod tools;

use std::fmt;
use std::time::SystemTime;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::ValueKind;
use minijinja::{Environment, Error as JinjaError, ErrorKind, UndefinedBehavior, Value};

use crate::gguf::{GgufError, GgufFile};

/// The GGUF key of a model's chat template.
pub const GGUF_CHAT_TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// Upper bound on template work (minijinja "fuel": roughly one unit per
/// instruction). Real templates over long conversations use well under a
/// million; a runaway template stops with [`ChatTemplateError::Render`].
const FUEL: u64 = 10_000_000;

const TEMPLATE_NAME: &str = "chat_template";

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// `system`, `user`, `assistant`, `tool`, … as the template expects.
    pub role: String,
    pub content: String,
    /// Images before the text (rendered as `{"type": "image"}` parts, the
    /// content then a list of parts as in Hugging Face's image chats).
    pub images: usize,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
            images: 0,
        }
    }

    /// A user message with `images` images before its text.
    pub fn user_with_images(content: impl Into<String>, images: usize) -> Self {
        Message {
            images,
            ..Message::user(content)
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Message::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Message::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Message::new("assistant", content)
    }
}

/// Why a template could not be loaded or rendered.
#[derive(Debug)]
#[non_exhaustive]
pub enum ChatTemplateError {
    /// The template does not parse (the message has the line).
    Syntax { message: String },
    /// The template called `raise_exception(message)`: the conversation is
    /// not one it accepts (say, roles that do not alternate).
    Raised { message: String },
    /// Rendering failed otherwise: an unknown filter, a type error, an
    /// undefined value used where it cannot be, too much work.
    Render { message: String },
    /// `messages` or an extra variable given as JSON has the wrong shape.
    InvalidInput { message: String },
    /// Reading the template or the special tokens from a GGUF file failed.
    Gguf(GgufError),
    /// A special token id in the GGUF file is not in its vocabulary.
    SpecialTokenOutOfRange {
        key: &'static str,
        id: u64,
        vocab_size: usize,
    },
}

impl fmt::Display for ChatTemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChatTemplateError::Syntax { message } => {
                write!(f, "chat template does not parse: {message}")
            }
            ChatTemplateError::Raised { message } => {
                write!(f, "chat template raised an exception: {message}")
            }
            ChatTemplateError::Render { message } => {
                write!(f, "chat template failed to render: {message}")
            }
            ChatTemplateError::InvalidInput { message } => {
                write!(f, "invalid chat template input: {message}")
            }
            ChatTemplateError::Gguf(e) => write!(f, "chat template from GGUF: {e}"),
            ChatTemplateError::SpecialTokenOutOfRange {
                key,
                id,
                vocab_size,
            } => write!(
                f,
                "{key} = {id} is outside the vocabulary of {vocab_size} tokens"
            ),
        }
    }
}

impl std::error::Error for ChatTemplateError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChatTemplateError::Gguf(e) => Some(e),
            _ => None,
        }
    }
}

impl From<GgufError> for ChatTemplateError {
    fn from(e: GgufError) -> Self {
        ChatTemplateError::Gguf(e)
    }
}

/// The message of `raise_exception`, carried as the minijinja error's
/// source so that rendering can tell it from other failures.
#[derive(Debug)]
struct RaisedException(String);

impl fmt::Display for RaisedException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

/// The templates used when a model file has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuiltinTemplate {
    /// Llama 2 chat: `<s>[INST] <<SYS>>\n…\n<</SYS>>\n\nuser [/INST] answer </s>`
    /// (Meta's Llama-2-chat template; roles must alternate).
    Llama2,
    /// Llama 3 headers:
    /// `<|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|>`
    /// (Meta's Llama-3-Instruct template, BOS first).
    Llama3,
    /// ChatML: `<|im_start|>role\ncontent<|im_end|>\n`.
    ChatMl,
}

impl BuiltinTemplate {
    /// The Jinja source, in transformers' dialect.
    pub fn source(self) -> &'static str {
        match self {
            BuiltinTemplate::Llama2 => LLAMA2_TEMPLATE,
            BuiltinTemplate::Llama3 => LLAMA3_TEMPLATE,
            BuiltinTemplate::ChatMl => CHATML_TEMPLATE,
        }
    }

    /// The fallback for a vocabulary: Llama 3 when it has
    /// `<|start_header_id|>`, ChatML when it has `<|im_start|>`, Llama 2 for
    /// a SentencePiece (`llama`) tokenizer, else ChatML (llama.cpp's default).
    pub fn for_vocab<'t>(
        tokenizer_model: Option<&str>,
        tokens: impl IntoIterator<Item = &'t str>,
    ) -> Self {
        let (mut llama3, mut chatml) = (false, false);
        for t in tokens {
            llama3 |= t == "<|start_header_id|>";
            chatml |= t == "<|im_start|>";
        }
        if llama3 {
            BuiltinTemplate::Llama3
        } else if chatml {
            BuiltinTemplate::ChatMl
        } else if tokenizer_model == Some("llama") {
            BuiltinTemplate::Llama2
        } else {
            BuiltinTemplate::ChatMl
        }
    }
}

// Meta's Llama-2-chat template (tokenizer_config.json of Llama-2-*-chat-hf).
const LLAMA2_TEMPLATE: &str = r#"{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\n' + system_message + '\n<</SYS>>\n\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"#;

// Meta's Llama-3-Instruct template (as in Llama-3.1-8B-Instruct's
// tokenizer_config.json before tool support; the "llama3_1" case of
// shared/testdata/chat_template_renders.json).
const LLAMA3_TEMPLATE: &str = r#"{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>

'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>

' }}{% endif %}"#;

const CHATML_TEMPLATE: &str = r#"{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"#;

/// Where a [`ChatTemplate`]'s source came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateOrigin {
    /// Given as Jinja source (a model file's, a user's).
    Jinja,
    /// A built-in fallback.
    Builtin(BuiltinTemplate),
}

/// A compiled chat template with its special tokens.
///
/// ```
/// use spinel_runtime::chat::{BuiltinTemplate, ChatTemplate, Message};
///
/// let t = ChatTemplate::builtin(BuiltinTemplate::ChatMl, "", "<|im_end|>");
/// let text = t.render(&[Message::user("Hi")], true).unwrap();
/// assert_eq!(text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
/// ```
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    origin: TemplateOrigin,
    bos_token: String,
    eos_token: String,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("source", &self.source)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles Jinja `source` (transformers' dialect). A template that does
    /// not parse is a [`ChatTemplateError::Syntax`].
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self, ChatTemplateError> {
        Self::compile(
            source.into(),
            TemplateOrigin::Jinja,
            bos_token.into(),
            eos_token.into(),
        )
    }

    /// A built-in template.
    pub fn builtin(
        which: BuiltinTemplate,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Self {
        match Self::compile(
            which.source().to_owned(),
            TemplateOrigin::Builtin(which),
            bos_token.into(),
            eos_token.into(),
        ) {
            Ok(t) => t,
            // The built-in sources are constants covered by tests.
            Err(e) => unreachable!("built-in template {which:?} does not compile: {e}"),
        }
    }

    /// The template of a GGUF model: its `tokenizer.chat_template`, or the
    /// built-in fallback for its vocabulary ([`BuiltinTemplate::for_vocab`]).
    /// `bos_token` / `eos_token` are the vocabulary entries of
    /// `tokenizer.ggml.bos_token_id` / `eos_token_id` (empty when absent).
    pub fn from_gguf(file: &GgufFile<'_>) -> Result<Self, ChatTemplateError> {
        let md = file.metadata();
        let tokens_key = "tokenizer.ggml.tokens";
        let token = |key: &'static str| -> Result<String, ChatTemplateError> {
            if !md.contains_key(key) {
                return Ok(String::new());
            }
            let id = md.get_uint(key)?;
            if !md.contains_key(tokens_key) {
                return Ok(String::new());
            }
            let mut tokens = md.get_str_array(tokens_key)?;
            let vocab_size = tokens.len();
            usize::try_from(id)
                .ok()
                .and_then(|i| tokens.nth(i))
                .map(str::to_owned)
                .ok_or(ChatTemplateError::SpecialTokenOutOfRange {
                    key,
                    id,
                    vocab_size,
                })
        };
        let bos = token("tokenizer.ggml.bos_token_id")?;
        let eos = token("tokenizer.ggml.eos_token_id")?;
        if md.contains_key(GGUF_CHAT_TEMPLATE_KEY) {
            let source = md.get_str(GGUF_CHAT_TEMPLATE_KEY)?;
            return ChatTemplate::new(source, bos, eos);
        }
        let model = if md.contains_key("tokenizer.ggml.model") {
            Some(md.get_str("tokenizer.ggml.model")?)
        } else {
            None
        };
        let which = if md.contains_key(tokens_key) {
            BuiltinTemplate::for_vocab(model, md.get_str_array(tokens_key)?)
        } else {
            BuiltinTemplate::for_vocab(model, [])
        };
        Ok(ChatTemplate::builtin(which, bos, eos))
    }

    fn compile(
        source: String,
        origin: TemplateOrigin,
        bos_token: String,
        eos_token: String,
    ) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| ChatTemplateError::Syntax {
                message: e.to_string(),
            })?;
        env.set_syntax(syntax);
        // Jinja2's default `Undefined`: printing or iterating one is fine,
        // using it in arithmetic or looking into it is an error.
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", json::tojson);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, JinjaError> {
                Err(
                    JinjaError::new(ErrorKind::InvalidOperation, message.clone())
                        .with_source(RaisedException(message)),
                )
            },
        );
        let mut t = ChatTemplate {
            env,
            source: String::new(),
            origin,
            bos_token,
            eos_token,
        };
        t.set_time(None);
        t.env
            .add_template_owned(TEMPLATE_NAME, rewrite_generation_blocks(&source))
            .map_err(|e| ChatTemplateError::Syntax {
                message: e.to_string(),
            })?;
        t.source = source;
        Ok(t)
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the source is a file's or a built-in fallback.
    pub fn origin(&self) -> TemplateOrigin {
        self.origin
    }

    /// The `bos_token` the template sees.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The `eos_token` the template sees.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Fixes the time `strftime_now` formats (`None`: the clock), for
    /// reproducible prompts.
    pub fn set_time(&mut self, at: Option<SystemTime>) {
        let fixed = at.map(time::unix_seconds);
        self.env
            .add_function("strftime_now", move |format: String| -> String {
                let secs = fixed.unwrap_or_else(|| time::unix_seconds(SystemTime::now()));
                time::strftime(&format, secs)
            });
    }

    /// Renders `messages`, appending the assistant header when
    /// `add_generation_prompt` (where the template honours it).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        self.render_messages(messages, add_generation_prompt, Vec::new())
    }

    /// [`render`](Self::render) with `tools` (a JSON array of function
    /// declarations) as the template's `tools` variable.
    pub fn render_with_tools(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        tools: &serde_json::Value,
    ) -> Result<String, ChatTemplateError> {
        let extra = vec![("tools".to_string(), json_to_value(tools))];
        self.render_messages(messages, add_generation_prompt, extra)
    }

    fn render_messages(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        extra: Vec<(String, Value)>,
    ) -> Result<String, ChatTemplateError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                let content = if m.images == 0 {
                    Value::from(m.content.as_str())
                } else {
                    let image = || Value::from_pairs([("type", "image")]);
                    let text = Value::from_pairs([
                        ("type", Value::from("text")),
                        ("text", Value::from(m.content.as_str())),
                    ]);
                    let parts: Vec<Value> = std::iter::repeat_with(image)
                        .take(m.images)
                        .chain([text])
                        .collect();
                    Value::from(parts)
                };
                Value::from_pairs([("role", Value::from(m.role.as_str())), ("content", content)])
            })
            .collect();
        self.render_values(Value::from(messages), add_generation_prompt, extra)
    }

    /// Renders messages given as JSON (an array of objects: `content` may be
    /// a list of parts, messages may carry `tool_calls`, …) with extra
    /// variables (`tools`, `documents`, `date_string`, template switches …).
    /// `extra` entries override the defaults, `bos_token` and `eos_token`
    /// included. Object keys come in the order `serde_json::Map` iterates
    /// (sorted, in this build); [`ChatTemplate::render_json_text`] keeps the
    /// document's order.
    pub fn render_json(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, ChatTemplateError> {
        let serde_json::Value::Array(list) = messages else {
            return Err(ChatTemplateError::InvalidInput {
                message: format!("messages must be a JSON array, not {}", json_kind(messages)),
            });
        };
        for (i, m) in list.iter().enumerate() {
            if !m.is_object() {
                return Err(ChatTemplateError::InvalidInput {
                    message: format!("message {i} must be a JSON object, not {}", json_kind(m)),
                });
            }
        }
        let extra = extra
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect();
        self.render_values(json_to_value(messages), add_generation_prompt, extra)
    }

    /// Renders a request given as JSON text, shaped like transformers'
    /// `apply_chat_template` arguments: an object with `messages` (an array
    /// of objects), optional `add_generation_prompt` (default `false`), and
    /// any other key as a template variable (`tools`, `documents`,
    /// `date_string`, `bos_token` …). Object keys keep their order in the
    /// text, as Python dicts do, so `tojson` of a tool schema matches
    /// transformers.
    pub fn render_json_text(&self, request: &str) -> Result<String, ChatTemplateError> {
        let invalid = |message: String| ChatTemplateError::InvalidInput { message };
        let request::Entries(mut entries) = serde_json::from_str(request)
            .map_err(|e| invalid(format!("the request is not a JSON object: {e}")))?;
        let mut take = |key: &str| {
            entries
                .iter()
                .position(|(k, _)| k == key)
                .map(|i| entries.remove(i).1)
        };
        let messages =
            take("messages").ok_or_else(|| invalid("the request has no \"messages\"".into()))?;
        if messages.kind() != ValueKind::Seq {
            return Err(invalid(format!(
                "messages must be an array, not {}",
                messages.kind()
            )));
        }
        for (i, m) in messages
            .try_iter()
            .map_err(|e| invalid(e.to_string()))?
            .enumerate()
        {
            if m.kind() != ValueKind::Map {
                return Err(invalid(format!(
                    "message {i} must be an object, not {}",
                    m.kind()
                )));
            }
        }
        let add_generation_prompt = match take("add_generation_prompt") {
            None => false,
            Some(v) if v.kind() == ValueKind::Bool => v.is_true(),
            Some(v) => {
                return Err(invalid(format!(
                    "add_generation_prompt must be a boolean, not {}",
                    v.kind()
                )));
            }
        };
        self.render_values(messages, add_generation_prompt, entries)
    }

    fn render_values(
        &self,
        messages: Value,
        add_generation_prompt: bool,
        extra: Vec<(String, Value)>,
    ) -> Result<String, ChatTemplateError> {
        let mut vars: Vec<(String, Value)> = vec![
            ("messages".into(), messages),
            (
                "add_generation_prompt".into(),
                Value::from(add_generation_prompt),
            ),
            ("bos_token".into(), Value::from(self.bos_token.as_str())),
            ("eos_token".into(), Value::from(self.eos_token.as_str())),
            // transformers passes these as None when not given.
            ("tools".into(), Value::from(())),
            ("documents".into(), Value::from(())),
        ];
        for (k, v) in extra {
            match vars.iter_mut().find(|(name, _)| *name == k) {
                Some(slot) => slot.1 = v,
                None => vars.push((k, v)),
            }
        }
        let ctx = Value::from_pairs(vars);
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatTemplateError::Render {
                message: e.to_string(),
            })?;
        tmpl.render(ctx).map_err(render_error)
    }
}

fn render_error(e: JinjaError) -> ChatTemplateError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(raised) = s.downcast_ref::<RaisedException>() {
            return ChatTemplateError::Raised {
                message: raised.0.clone(),
            };
        }
        source = s.source();
    }
    ChatTemplateError::Render {
        message: e.to_string(),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// JSON to a template value: objects become maps (in the JSON map's order),
/// arrays lists, null `none`.
fn json_to_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(a) => Value::from(a.iter().map(json_to_value).collect::<Vec<_>>()),
        serde_json::Value::Object(o) => {
            Value::from_pairs(o.iter().map(|(k, v)| (k.as_str(), json_to_value(v))))
        }
    }
}

/// transformers' `AssistantTracker` adds a `{% generation %}` …
/// `{% endgeneration %}` block that renders its body (it only marks which
/// tokens the assistant produced). minijinja has no such tag, so it becomes
/// `{% if true %}` … `{% endif %}`, keeping the tags' whitespace control.
fn rewrite_generation_blocks(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..end];
        let (lead, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, trail) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[b.len()..]),
            None => (body, ""),
        };
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                out.push_str("{%");
                out.push_str(lead);
                out.push(' ');
                out.push_str(r);
                out.push(' ');
                out.push_str(trail);
                out.push_str("%}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_blocks_become_if_true() {
        assert_eq!(
            rewrite_generation_blocks("a{% generation %}b{%- endgeneration -%}c"),
            "a{% if true %}b{%- endif -%}c"
        );
        assert_eq!(
            rewrite_generation_blocks("{%+generation+%}{% if x %}{% endif %}{% endgeneration%}"),
            "{%+ if true +%}{% if x %}{% endif %}{% endif %}"
        );
        // Unterminated tags are left for the parser to report.
        assert_eq!(rewrite_generation_blocks("x {% if"), "x {% if");
    }

    #[test]
    fn fallback_choice_from_the_vocabulary() {
        let llama3 = ["<|begin_of_text|>", "<|start_header_id|>", "a"];
        assert_eq!(
            BuiltinTemplate::for_vocab(Some("gpt2"), llama3),
            BuiltinTemplate::Llama3
        );
        assert_eq!(
            BuiltinTemplate::for_vocab(Some("gpt2"), ["<|im_start|>", "<|im_end|>"]),
            BuiltinTemplate::ChatMl
        );
        assert_eq!(
            BuiltinTemplate::for_vocab(Some("llama"), ["<s>", "</s>"]),
            BuiltinTemplate::Llama2
        );
        assert_eq!(
            BuiltinTemplate::for_vocab(Some("gpt2"), ["<s>"]),
            BuiltinTemplate::ChatMl
        );
        assert_eq!(
            BuiltinTemplate::for_vocab(None, []),
            BuiltinTemplate::ChatMl
        );
    }

    fn render_one(source: &str) -> Result<String, ChatTemplateError> {
        ChatTemplate::new(source, "<s>", "</s>")?.render(&[Message::user(" Hi ")], true)
    }

    #[test]
    fn tojson_filter_is_pythons() {
        assert_eq!(
            render_one(r#"{{ {"a": [1, 2.5, none, true], "b": "<x>"} | tojson }}"#).unwrap(),
            r#"{"a": [1, 2.5, null, true], "b": "<x>"}"#
        );
        assert_eq!(
            render_one(r#"{{ {"b": 1, "a": {}} | tojson(indent=2) }}"#).unwrap(),
            "{\n  \"b\": 1,\n  \"a\": {}\n}"
        );
        assert_eq!(
            render_one(
                r#"{{ {"b": 1, "a": []} | tojson(sort_keys=true, separators=(",", ":")) }}"#
            )
            .unwrap(),
            r#"{"a":[],"b":1}"#
        );
        assert_eq!(
            render_one(r#"{{ "é" | tojson(ensure_ascii=true) }}"#).unwrap(),
            r#""\u00e9""#
        );
        assert!(matches!(
            render_one("{{ nothing | tojson }}"),
            Err(ChatTemplateError::Render { .. })
        ));
    }

    #[test]
    fn python_methods_and_loop_controls() {
        let src = "{% for m in messages %}{{ m.content.strip() }}|{{ m['role'].upper() }}|\
                   {{ m.content.startswith(' H') }}|{{ 'a,b'.split(',') | join('+') }}|\
                   {% for k, v in m.items() %}{{ k }}={{ v.strip() }};{% endfor %}|\
                   {{ m.get('missing', 'dflt') }}{% endfor %}\
                   {% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}";
        assert_eq!(
            render_one(src).unwrap(),
            "Hi|USER|True|a+b|role=user;content=Hi;|dflt02"
        );
    }

    #[test]
    fn strftime_now_uses_the_fixed_time() {
        let mut t = ChatTemplate::new(r#"{{ strftime_now("%d %b %Y") }}"#, "", "").unwrap();
        // 2024-07-26 00:00:00 UTC
        t.set_time(Some(
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_721_952_000),
        ));
        assert_eq!(t.render(&[], false).unwrap(), "26 Jul 2024");
        t.set_time(None);
        let now = t.render(&[], false).unwrap();
        assert_eq!(now.len(), "26 Jul 2024".len(), "{now}");
    }
}
