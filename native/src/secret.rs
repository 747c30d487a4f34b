//! `ApiKey`: a secret that never prints, plus redaction of it (and of anything shaped like a
//! provider key) from provider messages.

use std::fmt;

/// An API key. `Debug`/`Display` print `***`; the value is only read when building headers.
#[derive(Clone, Default)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw key, for the request header only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Removes every occurrence of the key (and of long fragments of it) from `text`.
    ///
    /// Providers echo keys back in 401 messages; nothing we print may contain them.
    pub fn redact(&self, text: &str) -> String {
        if self.0.len() < 8 {
            return if self.0.is_empty() {
                text.to_string()
            } else {
                text.replace(&self.0, "***")
            };
        }
        let mut out = text.replace(&self.0, "***");
        // Masked echoes (`sk-abc****wxyz`) still leak a prefix and suffix; drop any 8-char window.
        let bytes = self.0.as_bytes();
        for window in bytes.windows(8) {
            if let Ok(fragment) = std::str::from_utf8(window) {
                if out.contains(fragment) {
                    out = out.replace(fragment, "***");
                }
            }
        }
        out
    }
}

/// Whether a header's name says its value is a credential (`api-key`, `x-auth-token`,
/// `cookie`, ...): such values are never written into logs or messages, and are redacted from
/// error messages like the key.
pub fn is_credential_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["key", "token", "auth", "secret", "cookie"]
        .iter()
        .any(|word| name.contains(word))
}

/// Removes from `text` anything shaped like a provider credential, whoever's it is: a gateway
/// may echo its upstream key in a relayed 401, which is not the key we sent.
///
/// - `sk-` followed by at least 8 key characters (`sk-...`, `sk-proj-...`, `sk-ant-...`, also
///   masked echoes like `sk-abc***wxyz`), starting a word: becomes `sk-***`;
/// - the word after `API key provided:` (OpenAI's 401 echo, whatever its shape): `***`;
/// - the word after `Bearer `, when at least 8 characters long: `***`.
pub fn redact_secrets(text: &str) -> String {
    let mut out = redact_after(text, "api key provided:", 1);
    out = redact_after(&out, "bearer ", 8);
    redact_sk(&out)
}

/// Characters a key (or a masked echo of one) is made of.
fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*' | '.')
}

/// Replaces the word after each (case-insensitive) `marker` by `***` when it has at least
/// `min` characters; a trailing `.` or `,` is kept as punctuation.
fn redact_after(text: &str, marker: &str, min: usize) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    while let Some(found) = lower[from..].find(marker) {
        let start = from + found + marker.len();
        let rest = &text[start..];
        let blank = rest.len() - rest.trim_start().len();
        let word_start = start + blank;
        let word_len = text[word_start..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(text.len() - word_start);
        let word = text[word_start..word_start + word_len].trim_end_matches(['.', ',']);
        out.push_str(&text[from..word_start]);
        if word.chars().count() >= min {
            out.push_str("***");
            from = word_start + word.len();
        } else {
            from = word_start;
        }
        if from >= text.len() || word_len == 0 {
            break;
        }
    }
    out.push_str(&text[from.min(text.len())..]);
    out
}

/// Replaces `sk-` tokens (see [`redact_secrets`]) by `sk-***`.
fn redact_sk(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("sk-") {
        let at = search + found;
        let starts_word = text[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_ascii_alphanumeric());
        let body = &text[at + 3..];
        let len = body.find(|c: char| !is_key_char(c)).unwrap_or(body.len());
        // A trailing dot ends a sentence, not the key.
        let len = body[..len].trim_end_matches('.').len();
        if starts_word && len >= 8 {
            out.push_str(&text[from..at]);
            out.push_str("sk-***");
            from = at + 3 + len;
            search = from;
        } else {
            search = at + 3;
        }
    }
    out.push_str(&text[from..]);
    out
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_and_redacts() {
        let key = ApiKey::new("sk-test-1234567890abcdef");
        assert_eq!(format!("{key:?} {key}"), "ApiKey(***) ***");
        let msg = "Incorrect API key provided: sk-test-1234567890abcdef.";
        assert!(!key.redact(msg).contains("1234567890"));
        let masked = "Incorrect API key provided: sk-test-****************cdef";
        assert!(!key.redact(masked).contains("sk-test-"));
    }

    #[test]
    fn redacts_anything_shaped_like_a_provider_key() {
        let cases = [
            (
                "Incorrect API key provided: sk-proj-AbCdEf123456789. You can find your key.",
                "Incorrect API key provided: ***. You can find your key.",
            ),
            (
                "upstream said: invalid x-api-key sk-ant-api03-abcdefghijkl_MNOP-qrst",
                "upstream said: invalid x-api-key sk-***",
            ),
            (
                "Incorrect API key provided: gw-upstream-7f3a9c. Check it.",
                "Incorrect API key provided: ***. Check it.",
            ),
            (
                r#"{"message":"bad key sk-abc****wxyz1234","auth":"Bearer eyJhbGciOiJIUzI1NiJ9.x"}"#,
                r#"{"message":"bad key sk-***","auth":"Bearer ***"}"#,
            ),
            // Not keys: too short, or inside a word.
            (
                "use sk-learn and task-manager",
                "use sk-learn and task-manager",
            ),
            ("desk-12345678901 is a desk", "desk-12345678901 is a desk"),
            ("Bearer token", "Bearer token"),
            ("", ""),
        ];
        for (text, want) in cases {
            assert_eq!(redact_secrets(text), want, "{text}");
        }
        let many = "sk-aaaaaaaaaa sk-bbbbbbbbbb, API key provided: x";
        assert_eq!(redact_secrets(many), "sk-*** sk-***, API key provided: ***");
    }

    #[test]
    fn credential_header_names() {
        for name in [
            "api-key",
            "X-Auth-Token",
            "cookie",
            "x-client-secret",
            "Authorization",
        ] {
            assert!(is_credential_header(name), "{name}");
        }
        for name in [
            "anthropic-beta",
            "x-title",
            "http-referer",
            "openai-organization",
        ] {
            assert!(!is_credential_header(name), "{name}");
        }
    }
}
