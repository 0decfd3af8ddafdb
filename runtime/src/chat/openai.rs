//! OpenAI's chat API shapes mapped to chat templates and back: a request's
//! `messages` and `tools` become what Hugging Face templates expect
//! ([`chat_input`]), and an answer that is a Llama 3.1 JSON tool call
//! becomes OpenAI's `tool_calls` ([`assistant_message`]).
//!
//! Pure functions over `serde_json` values, shared by `spinel serve` and
//! apps that put their own HTTP layer over the runtime. A request that does
//! not fit is an [`InvalidRequest`] naming the offending parameter (a
//! server answers it with 400).
//!
//! ```
//! use serde_json::json;
//! use spinel_runtime::chat::openai::{assistant_message, chat_input};
//!
//! let body = json!({"messages": [
//!     {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
//!     {"role": "user", "content": "Weather in Paris?"},
//! ]});
//! let input = chat_input(body.as_object().unwrap(), true)?;
//! assert_eq!(input.messages[0], json!({"role": "system", "content": "Be brief."}));
//!
//! let answer = r#"{"name": "get_weather", "parameters": {"city": "Paris"}}"#;
//! let (message, is_call) = assistant_message(answer, true, "chatcmpl-1");
//! assert!(is_call);
//! assert_eq!(message["tool_calls"][0]["function"]["name"], "get_weather");
//! # Ok::<(), spinel_runtime::chat::openai::InvalidRequest>(())
//! ```

use std::fmt;

use serde_json::{Map, Value, json};

use super::ChatTemplate;
use super::tools::{ToolCall, parse_tool_calls};

/// A request that does not fit the API: what is wrong, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidRequest {
    pub message: String,
    /// The offending parameter (`messages[2].role`, `tools[0]` …).
    pub param: Option<String>,
}

impl InvalidRequest {
    fn new(message: impl Into<String>, param: impl Into<String>) -> Self {
        InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
        }
    }
}

impl fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for InvalidRequest {}

/// The JSON type of a value as error messages name it (`a string`, `an
/// array` …).
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether a template wants tool results as `ipython` messages (Llama 3.1+
/// header templates) rather than `tool` ones.
pub fn uses_ipython_role(template: &ChatTemplate) -> bool {
    template.source().contains("<|start_header_id|>")
}

/// What a chat template is told: the messages (OpenAI's shape turned into
/// what Hugging Face templates expect) and the tools, and the images the
/// messages carry.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatInput {
    pub messages: Value,
    /// The function declarations offered (`None`: none, or `tool_choice`
    /// is `"none"`).
    pub tools: Option<Value>,
    /// The `image_url` parts of the user messages, in conversation order:
    /// the template shows each as `{"type": "image"}` in its message, which
    /// image templates render as the model's image marker.
    pub images: Vec<ChatImage>,
}

/// An `image_url` content part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatImage {
    pub source: ImageSource,
    /// Where it is in the request (`messages[1].content[0]`), for errors.
    pub param: String,
}

/// Where an image's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A base64 `data:` URL, decoded.
    Data(Vec<u8>),
    /// An `http://` or `https://` URL: the caller decides whether to fetch
    /// it.
    Url(String),
}

/// Turns a request's OpenAI `messages` (and `tools`) into template input.
///
/// * `content` may be a string, null, or a list of `{"type": "text"}` parts
///   (joined); a user message's list may hold `{"type": "image_url"}` parts
///   too (a base64 `data:` URL or an http(s) URL, see [`ChatInput::images`]),
///   and the content is then the list of `image` and `text` parts in order;
/// * `developer` messages are `system` ones;
/// * assistant `tool_calls` keep their shape, with `function.arguments`
///   (a JSON string in OpenAI's API) parsed into an object, as Hugging Face
///   templates (Llama 3.1's `tojson`) expect;
/// * `tool` messages become `ipython` messages when `ipython` is set (Llama
///   3.1+ templates, see [`uses_ipython_role`]);
/// * `tool_choice: "none"` offers no tools.
pub fn chat_input(body: &Map<String, Value>, ipython: bool) -> Result<ChatInput, InvalidRequest> {
    let list = match body.get("messages") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => {
            return Err(InvalidRequest::new(
                "'messages' must not be empty",
                "messages",
            ));
        }
        None => return Err(InvalidRequest::new("'messages' is required", "messages")),
        Some(v) => {
            return Err(InvalidRequest::new(
                format!("'messages' must be an array, not {}", json_kind(v)),
                "messages",
            ));
        }
    };
    let mut images = Vec::new();
    let messages = list
        .iter()
        .enumerate()
        .map(|(i, m)| template_message(m, &format!("messages[{i}]"), ipython, &mut images))
        .collect::<Result<Vec<_>, _>>()?;
    let tools = match body.get("tool_choice").and_then(Value::as_str) {
        Some("none") => None,
        _ => offered_tools(body.get("tools"))?,
    };
    Ok(ChatInput {
        messages: Value::Array(messages),
        tools,
        images,
    })
}

/// One message in the template's shape; `param` names it in errors.
fn template_message(
    m: &Value,
    param: &str,
    ipython: bool,
    images: &mut Vec<ChatImage>,
) -> Result<Value, InvalidRequest> {
    let Value::Object(m) = m else {
        return Err(InvalidRequest::new(
            format!("{param} must be an object, not {}", json_kind(m)),
            param,
        ));
    };
    let role = match m.get("role") {
        Some(Value::String(r)) => r.as_str(),
        _ => {
            return Err(InvalidRequest::new(
                format!("{param}.role must be a string"),
                format!("{param}.role"),
            ));
        }
    };
    let role = match role {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" | "function" if ipython => "ipython",
        "tool" | "function" => "tool",
        other => {
            return Err(InvalidRequest::new(
                format!("{param}.role must be one of system, user, assistant, tool; got '{other}'"),
                format!("{param}.role"),
            ));
        }
    };
    let mut msg = Map::new();
    msg.insert("role".into(), role.into());
    let n_images = images.len();
    let content = message_content(m.get("content"), param, images)?;
    if role != "user" && images.len() > n_images {
        return Err(InvalidRequest::new(
            format!("{param}.content: only user messages may carry images"),
            format!("{param}.content"),
        ));
    }
    msg.insert("content".into(), content);
    if role == "assistant" {
        if let Some(calls) = m.get("tool_calls").filter(|v| !v.is_null()) {
            msg.insert("tool_calls".into(), template_tool_calls(calls, param)?);
        }
    }
    for key in ["tool_call_id", "name"] {
        if let Some(v @ Value::String(_)) = m.get(key) {
            msg.insert(key.into(), v.clone());
        }
    }
    Ok(Value::Object(msg))
}

/// A message's `content`: a string, null (empty), or parts. Text parts
/// alone are joined into one string; with images, the content is the list
/// of `{"type": "image"}` and `{"type": "text"}` parts in order, and the
/// images are added to `images`.
fn message_content(
    content: Option<&Value>,
    param: &str,
    images: &mut Vec<ChatImage>,
) -> Result<Value, InvalidRequest> {
    let parts = match content {
        None | Some(Value::Null) => return Ok(Value::from("")),
        Some(Value::String(s)) => return Ok(Value::from(s.as_str())),
        Some(Value::Array(parts)) => parts,
        Some(v) => {
            return Err(InvalidRequest::new(
                format!("{param}.content must be a string, not {}", json_kind(v)),
                format!("{param}.content"),
            ));
        }
    };
    let mut text = String::new();
    let mut out = Vec::new();
    for (j, part) in parts.iter().enumerate() {
        let part_param = format!("{param}.content[{j}]");
        match (part.get("type").and_then(Value::as_str), part.get("text")) {
            (Some("text") | None, Some(Value::String(t))) => {
                text.push_str(t);
                out.push(json!({"type": "text", "text": t}));
            }
            (Some("image_url"), _) => {
                let source = image_source(part.get("image_url"), &part_param)?;
                images.push(ChatImage {
                    source,
                    param: part_param,
                });
                out.push(json!({"type": "image"}));
            }
            _ => {
                return Err(InvalidRequest::new(
                    format!("{part_param} must be a text or an image_url part"),
                    part_param,
                ));
            }
        }
    }
    Ok(match out.iter().any(|p| p["type"] == "image") {
        true => Value::Array(out),
        false => Value::from(text),
    })
}

/// An `image_url` part's image: `{"url": URL}` (or the URL alone), a base64
/// `data:` URL of an image type, or an http(s) URL.
fn image_source(image_url: Option<&Value>, param: &str) -> Result<ImageSource, InvalidRequest> {
    use base64::Engine as _;
    let bad = |why: String| InvalidRequest::new(format!("{param}: {why}"), param);
    let url = match image_url {
        Some(Value::String(u)) => u.as_str(),
        Some(Value::Object(o)) => match o.get("url") {
            Some(Value::String(u)) => u.as_str(),
            _ => return Err(bad("image_url.url must be a string".into())),
        },
        _ => return Err(bad("image_url must be {\"url\": \"data:image/...\"}".into())),
    };
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(ImageSource::Url(url.to_string()));
    }
    let Some(rest) = url.strip_prefix("data:") else {
        let shown: String = url.chars().take(40).collect();
        return Err(bad(format!(
            "the image URL must be a base64 data: URL or an http(s) URL, not {shown:?}"
        )));
    };
    let Some((meta, data)) = rest.split_once(',') else {
        return Err(bad("the data: URL has no ',' before its data".into()));
    };
    let Some(media) = meta.strip_suffix(";base64") else {
        return Err(bad(
            "only base64 data: URLs are taken (data:image/png;base64,...)".into(),
        ));
    };
    if !media.is_empty() && !media.starts_with("image/") {
        return Err(bad(format!("the data: URL is {media:?}, not an image")));
    }
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map(ImageSource::Data)
        .map_err(|e| bad(format!("the data: URL's base64 does not decode: {e}")))
}

/// The `tools` offered: each must name its function.
fn offered_tools(tools: Option<&Value>) -> Result<Option<Value>, InvalidRequest> {
    match tools {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(t)) if t.is_empty() => Ok(None),
        Some(Value::Array(t)) => {
            for (i, tool) in t.iter().enumerate() {
                if tool
                    .pointer("/function/name")
                    .and_then(Value::as_str)
                    .is_none()
                {
                    return Err(InvalidRequest::new(
                        format!(
                            "tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"
                        ),
                        format!("tools[{i}]"),
                    ));
                }
            }
            Ok(Some(Value::Array(t.clone())))
        }
        Some(v) => Err(InvalidRequest::new(
            format!("'tools' must be an array, not {}", json_kind(v)),
            "tools",
        )),
    }
}

/// An assistant message's `tool_calls` as templates expect them:
/// `function.arguments` as an object.
fn template_tool_calls(calls: &Value, param: &str) -> Result<Value, InvalidRequest> {
    let bad = || {
        InvalidRequest::new(
            format!(
                "{param}.tool_calls must be a list of {{\"function\": {{\"name\", \"arguments\"}}}}"
            ),
            format!("{param}.tool_calls"),
        )
    };
    let Value::Array(calls) = calls else {
        return Err(bad());
    };
    let mut out = Vec::with_capacity(calls.len());
    for call in calls {
        let name = call
            .pointer("/function/name")
            .and_then(Value::as_str)
            .ok_or_else(bad)?;
        let arguments = match call.pointer("/function/arguments") {
            Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
            Some(v) => v.clone(),
            None => json!({}),
        };
        let mut c = json!({
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        });
        if let Some(id) = call.get("id") {
            c["id"] = id.clone();
        }
        out.push(c);
    }
    Ok(Value::Array(out))
}

/// OpenAI's `tool_calls` array for parsed calls, named
/// `call_{id_base}_{i}`; `with_index` adds the `index` streamed deltas
/// carry.
pub fn tool_calls_json(calls: &[ToolCall], id_base: &str, with_index: bool) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut v = json!({
                    "id": format!("call_{id_base}_{i}"),
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                });
                if with_index {
                    v["index"] = json!(i);
                }
                v
            })
            .collect(),
    )
}

/// The assistant message of a finished chat answer: tool calls when tools
/// were offered and the text is a tool call (then `true`), else the text.
pub fn assistant_message(text: &str, tools_offered: bool, id_base: &str) -> (Value, bool) {
    if tools_offered {
        if let Some(calls) = parse_tool_calls(text) {
            return (
                json!({
                    "role": "assistant",
                    "content": null,
                    "tool_calls": tool_calls_json(&calls, id_base, false),
                }),
                true,
            );
        }
    }
    (json!({"role": "assistant", "content": text}), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn messages_become_template_input() {
        let body = obj(json!({
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "wea"}, {"type": "text", "text": "ther?"}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
        }));
        let input = chat_input(&body, true).unwrap();
        let m = input.messages.as_array().unwrap();
        assert_eq!(m[1]["content"], "weather?");
        assert_eq!(m[2]["content"], "");
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            json!({"city": "Paris"})
        );
        assert_eq!(m[2]["tool_calls"][0]["id"], "call_1");
        assert_eq!(m[3]["role"], "ipython");
        assert_eq!(m[3]["tool_call_id"], "call_1");
        assert!(input.tools.is_some());
        assert_eq!(
            chat_input(&body, false).unwrap().messages[3]["role"],
            "tool"
        );
        let mut none = body.clone();
        none.insert("tool_choice".into(), json!("none"));
        assert_eq!(chat_input(&none, true).unwrap().tools, None);
    }

    #[test]
    fn bad_messages_name_the_parameter() {
        for (body, param) in [
            (json!({}), "messages"),
            (json!({"messages": "hi"}), "messages"),
            (json!({"messages": []}), "messages"),
            (json!({"messages": [5]}), "messages[0]"),
            (
                json!({"messages": [{"role": "wizard", "content": "x"}]}),
                "messages[0].role",
            ),
            (json!({"messages": [{"content": "x"}]}), "messages[0].role"),
            (
                json!({"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": 5}]}),
                "messages[1].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}),
                "messages[0].content[0]",
            ),
            (
                json!({"messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]}),
                "messages[0].tool_calls",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}),
                "tools[0]",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "tools": {}}),
                "tools",
            ),
        ] {
            let e = chat_input(&obj(body.clone()), true).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e}");
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn image_parts_become_image_entries_in_order() {
        let body = json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "Compare "},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
                {"type": "text", "text": "with"},
                {"type": "image_url", "image_url": "https://example.org/b.jpg"},
            ]},
        ]});
        let input = chat_input(&obj(body), true).unwrap();
        assert_eq!(
            input.messages[1]["content"],
            json!([
                {"type": "text", "text": "Compare "},
                {"type": "image"},
                {"type": "text", "text": "with"},
                {"type": "image"},
            ])
        );
        assert_eq!(input.messages[0]["content"], "Be brief.");
        assert_eq!(
            input.images,
            vec![
                ChatImage {
                    source: ImageSource::Data(vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a]),
                    param: "messages[1].content[1]".into(),
                },
                ChatImage {
                    source: ImageSource::Url("https://example.org/b.jpg".into()),
                    param: "messages[1].content[3]".into(),
                },
            ]
        );
    }

    #[test]
    fn bad_image_parts_say_what_is_wrong() {
        for (url, why) in [
            (json!("data:image/png,abc"), "only base64"),
            (json!("data:text/plain;base64,aGk="), "not an image"),
            (json!("data:image/png;base64,@@@"), "does not decode"),
            (json!("data:image/png;base64"), "no ','"),
            (json!("file:///etc/passwd"), "must be a base64 data: URL"),
            (json!(5), "image_url must be"),
        ] {
            let body = json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": url},
            ]}]});
            let e = chat_input(&obj(body), true).unwrap_err();
            assert!(e.message.contains(why), "{url}: {e}");
            assert_eq!(e.param.as_deref(), Some("messages[0].content[0]"));
        }
        // Only user messages carry images.
        let body = json!({"messages": [{"role": "assistant", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ]}]});
        let e = chat_input(&obj(body), true).unwrap_err();
        assert!(e.message.contains("only user messages"), "{e}");
    }

    #[test]
    fn assistant_message_maps_tool_calls() {
        let (m, is_call) = assistant_message(
            "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
            true,
            "x",
        );
        assert!(is_call);
        assert_eq!(m["content"], Value::Null);
        assert_eq!(m["tool_calls"][0]["id"], "call_x_0");
        assert_eq!(m["tool_calls"][0]["function"]["name"], "get_weather");
        let args: Value = serde_json::from_str(
            m["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
        assert!(m["tool_calls"][0].get("index").is_none());
        // Without tools offered, the same text is just text.
        let (m, is_call) = assistant_message("{\"name\": \"f\", \"parameters\": {}}", false, "x");
        assert!(!is_call);
        assert_eq!(m["content"], "{\"name\": \"f\", \"parameters\": {}}");
        // Streamed deltas carry an index.
        let calls = parse_tool_calls("{\"name\": \"a\"}; {\"name\": \"b\"}").unwrap();
        let v = tool_calls_json(&calls, "y", true);
        assert_eq!(v[1]["index"], 1);
        assert_eq!(v[1]["id"], "call_y_1");
    }

    /// A Llama 3.1-style tools template (the chat compatibility tests'
    /// `tools_header.jinja`) renders OpenAI tools, an assistant tool call
    /// and its `tool` answer the way Llama 3.1 was trained on.
    #[test]
    fn llama_3_1_template_renders_tools_and_tool_results() {
        let source = include_str!("../../tests/chat_compat/tools_header.jinja");
        let template = ChatTemplate::new(source, "<|begin_of_text|>", "<|eot_id|>").unwrap();
        assert!(uses_ipython_role(&template));
        let body = obj(json!({
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"}
            ],
            "tools": [{"type": "function", "function": {
                "name": "get_weather", "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
        }));
        let input = chat_input(&body, true).unwrap();
        let mut extra = Map::new();
        extra.insert("tools".into(), input.tools.unwrap());
        let text = template.render_json(&input.messages, true, &extra).unwrap();
        assert!(text.contains("Environment: ipython"), "{text}");
        assert!(text.contains("\"name\": \"get_weather\""), "{text}");
        assert!(text.contains("Current weather"), "{text}");
        assert!(
            text.contains("{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}"),
            "{text}"
        );
        assert!(
            text.contains("<|start_header_id|>ipython<|end_header_id|>\n\n21 degrees<|eot_id|>"),
            "{text}"
        );
        assert!(text.ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n"));
        // What the model answers in that format maps back to the call.
        let (m, is_call) = assistant_message(
            "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
            true,
            "t",
        );
        assert!(is_call);
        assert_eq!(
            m["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
    }
}
