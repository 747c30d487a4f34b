//! Messages as the JSON text the runner rendered. They are checked and measured once when a
//! row is submitted, then written into the request body as they are, instead of being parsed
//! into values and serialized again for every row.

use super::{content_chars, is_system_role, Message};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// A non-empty JSON array of `{role, content}` objects, kept as text.
#[derive(Debug)]
pub struct RawMessages {
    json: Box<RawValue>,
    /// A `system` or `developer` message is among them (Anthropic takes those apart).
    pub has_system: bool,
    /// Characters of text in the contents, and the number of messages (the TPM estimate).
    pub chars: u64,
    pub count: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Shape<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow)]
    content: &'a RawValue,
}

impl RawMessages {
    /// Keeps `text` when it is a non-empty array of objects holding exactly `role` and
    /// `content`; gives it back otherwise (parse it into [`Message`]s, which says what is wrong
    /// or drops the other keys).
    pub fn new(text: String) -> Result<Self, String> {
        let Some((has_system, chars, count)) = measure(&text) else {
            return Err(text);
        };
        match RawValue::from_string(text) {
            Ok(json) => Ok(Self {
                json,
                has_system,
                chars,
                count,
            }),
            Err(_) => Err(String::new()), // unreachable: `measure` parsed it
        }
    }

    pub fn json(&self) -> &RawValue {
        &self.json
    }

    /// The messages parsed, for the rare request that needs them taken apart.
    pub fn parsed(&self) -> Vec<Message> {
        serde_json::from_str(self.json.get()).unwrap_or_default()
    }

    /// The array with `system` as a first message (OpenAI's run-wide system prompt).
    pub fn with_system(&self, system: &str) -> Option<Box<RawValue>> {
        let system = serde_json::to_string(system).ok()?;
        let rest = self.json.get().strip_prefix('[')?;
        RawValue::from_string(format!(r#"[{{"role":"system","content":{system}}},{rest}"#)).ok()
    }
}

fn measure(text: &str) -> Option<(bool, u64, u64)> {
    if !text.starts_with('[') {
        return None;
    }
    let shapes: Vec<Shape<'_>> = serde_json::from_str(text).ok()?;
    if shapes.is_empty() {
        return None;
    }
    let mut chars = 0;
    for shape in &shapes {
        chars += text_chars(shape.content)?;
    }
    let has_system = shapes.iter().any(|s| is_system_role(&s.role));
    Some((has_system, chars, shapes.len() as u64))
}

/// What [`content_chars`] counts, read from the content's JSON text.
fn text_chars(content: &RawValue) -> Option<u64> {
    let text = content.get();
    if text.starts_with('"') {
        return match serde_json::from_str::<&str>(text) {
            Ok(s) => Some(s.chars().count() as u64),
            // Escapes: the string cannot be borrowed.
            Err(_) => serde_json::from_str::<String>(text)
                .ok()
                .map(|s| s.chars().count() as u64),
        };
    }
    serde_json::from_str(text).ok().map(|v| content_chars(&v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{self, Messages, ProviderKind, RequestParams};
    use crate::secret::ApiKey;
    use serde_json::Value;

    const TEXTS: [&str; 4] = [
        r#"[{"role":"user","content":"hi"}]"#,
        r#"[{"role":"user","content":"été \"quoted\"\n数据"},{"role":"assistant","content":"ok"},{"role":"user","content":"again"}]"#,
        r#"[{"role":"system","content":"be brief"},{"role":"user","content":"q"}]"#,
        r#"[{"role":"user","content":[{"type":"text","text":"part"}]}]"#,
    ];

    fn params(system: Option<&str>) -> RequestParams {
        RequestParams {
            model: "m".into(),
            temperature: Some(0.0),
            max_tokens: Some(16),
            stream: false,
            system: system.map(str::to_string),
            extra: None,
        }
    }

    fn both(text: &str) -> (Messages, Messages) {
        let raw = RawMessages::new(text.to_string()).expect("kept as text");
        (
            Messages::Json(raw),
            Messages::Parsed(serde_json::from_str(text).unwrap()),
        )
    }

    #[test]
    fn bodies_and_estimates_equal_those_of_parsed_messages() {
        let key = ApiKey::new("k");
        for kind in [ProviderKind::OpenAi, ProviderKind::Anthropic] {
            for text in TEXTS {
                for system in [None, Some("sys \"x\"")] {
                    let (raw, parsed) = both(text);
                    let p = params(system);
                    let target = provider::target(kind, "http://h/v1", &key);
                    let a = provider::prepare_row(kind, &target, &p, &raw, None);
                    let b = provider::prepare_row(kind, &target, &p, &parsed, None);
                    let body = |r: &provider::PreparedRequest| -> Value {
                        serde_json::from_slice(&r.body).unwrap()
                    };
                    assert_eq!(body(&a), body(&b), "{kind:?} {text} {system:?}");
                    assert_eq!(
                        provider::estimate_row_tokens(kind, &raw, &p, None),
                        provider::estimate_row_tokens(kind, &parsed, &p, None)
                    );
                }
            }
        }
    }

    #[test]
    fn plain_messages_are_written_into_the_body_as_they_are() {
        let text = r#"[{"role":"user","content":"été"}]"#;
        let (raw, _) = both(text);
        let target = provider::target(ProviderKind::OpenAi, "http://h/v1", &ApiKey::new("k"));
        let req = provider::prepare_row(ProviderKind::OpenAi, &target, &params(None), &raw, None);
        let body = String::from_utf8(req.body.to_vec()).unwrap();
        assert!(body.contains(&format!(r#""messages":{text}"#)), "{body}");
    }

    #[test]
    fn anything_else_is_given_back_to_be_parsed() {
        for text in [
            "[]",
            " [{\"role\":\"user\",\"content\":\"x\"}]",
            r#"[{"role":"user","content":"x","name":"n"}]"#,
            r#"[{"role":"user"}]"#,
            r#"{"role":"user","content":"x"}"#,
            "not json",
        ] {
            assert_eq!(RawMessages::new(text.to_string()).unwrap_err(), text);
        }
    }
}
