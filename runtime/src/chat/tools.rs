//! Tool calls in a model's answer: the Llama 3.1+ JSON format, shared by
//! the server (OpenAI `tool_calls`) and the SDK (`GenerationStats`).

use serde_json::{Value, json};

/// One tool call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments as JSON text (OpenAI's `function.arguments`).
    pub arguments: String,
}

/// Reads the model's answer as Llama 3.1+ JSON tool calls:
/// `{"name": ..., "parameters": {...}}` (or `"arguments"`), optionally after
/// `<|python_tag|>`, several separated by `;` or new lines. `None` when the
/// text is anything else (an ordinary answer).
pub fn parse_tool_calls(text: &str) -> Option<Vec<ToolCall>> {
    let mut rest = text.trim();
    if let Some(r) = rest.strip_prefix("<|python_tag|>") {
        rest = r.trim_start();
    }
    for end in ["<|eom_id|>", "<|eot_id|>"] {
        if let Some(r) = rest.strip_suffix(end) {
            rest = r.trim_end();
        }
    }
    if !rest.starts_with('{') {
        return None;
    }
    let mut calls = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
    loop {
        let value = match stream.next() {
            None => break,
            Some(Ok(v)) => v,
            Some(Err(_)) => return None,
        };
        let obj = value.as_object()?;
        let name = obj.get("name")?.as_str()?;
        let args = obj
            .get("parameters")
            .or_else(|| obj.get("arguments"))
            .cloned()
            .unwrap_or_else(|| json!({}));
        let arguments = match args {
            Value::String(s) => s,
            v => v.to_string(),
        };
        calls.push(ToolCall {
            name: name.to_string(),
            arguments,
        });
        // Separators between calls.
        let offset = stream.byte_offset();
        let tail = rest[offset..].trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        if tail.is_empty() {
            break;
        }
        let skipped = rest.len() - offset - tail.len();
        stream = serde_json::Deserializer::from_str(&rest[offset + skipped..]).into_iter();
        rest = &rest[offset + skipped..];
    }
    if calls.is_empty() { None } else { Some(calls) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_calls_parse_llama_json_format() {
        let calls = parse_tool_calls(
            "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}",
        )
        .unwrap();
        assert_eq!(
            calls,
            vec![ToolCall {
                name: "get_weather".into(),
                arguments: "{\"city\":\"Paris\"}".into()
            }]
        );
        let two = parse_tool_calls(
            " {\"name\": \"a\", \"parameters\": {}}; {\"name\": \"b\", \"arguments\": {\"x\": 1}}\n",
        )
        .unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[1].name, "b");
        assert_eq!(two[1].arguments, "{\"x\":1}");
        assert_eq!(parse_tool_calls("The weather is nice."), None);
        assert_eq!(parse_tool_calls("{\"not\": \"a call\"}"), None);
        assert_eq!(
            parse_tool_calls("{\"name\": \"a\", \"parameters\": {"),
            None
        );
        assert_eq!(parse_tool_calls("{\"name\": \"a\"} and then text"), None);
    }
}
