//! `ApiKey`: a secret that never prints, plus redaction of it from provider messages.

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
}
