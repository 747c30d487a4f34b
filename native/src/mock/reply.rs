//! The deterministic reply and token counts, the rule Python tests compute expected answers from.
//!
//! The rule:
//! - reply = `"Echo: "` + the text of the last user message (its string content, or its text
//!   blocks/parts concatenated without separator; `""` when there is no user message);
//! - tokens are whitespace-separated words (`str.split()` in Python);
//! - if the reply has more words than `max_tokens`, it is cut to its first `max_tokens` words
//!   joined by single spaces and finishes with "length" (OpenAI) / "max_tokens" (Anthropic);
//!   otherwise it is kept verbatim and finishes with "stop" / "end_turn";
//! - prompt tokens = words across every message text plus the system prompt;
//!   completion tokens = words in the reply (so "Echo:" counts as one).
//!
//! A streamed reply is split into one piece per word, each keeping the whitespace before it, so
//! the pieces concatenate to exactly the non-streamed reply.

/// The mock's reply to `last_user_text` and whether `max_tokens` truncated it.
/// See the module documentation for the exact rule.
pub fn reply_text(last_user_text: &str, max_tokens: Option<u32>) -> (String, bool) {
    let full_words = 1 + count_words(last_user_text);
    match max_tokens {
        Some(max) if (max as usize) < full_words => {
            let reply = std::iter::once("Echo:")
                .chain(last_user_text.split_whitespace())
                .take(max as usize)
                .collect::<Vec<_>>()
                .join(" ");
            (reply, true)
        }
        _ => {
            let mut reply = String::with_capacity(6 + last_user_text.len());
            reply.push_str("Echo: ");
            reply.push_str(last_user_text);
            (reply, false)
        }
    }
}

/// Number of whitespace-separated words, the mock's token count.
pub(crate) fn count_words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Splits `reply` into one piece per word, each with its leading whitespace; trailing whitespace
/// goes to the last piece. The pieces concatenate back to `reply`.
pub(crate) fn stream_pieces(reply: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut prev_is_word = false;
    for (i, c) in reply.char_indices() {
        let is_space = c.is_whitespace();
        // A word ends here; cut only if another word follows, so trailing blanks stay attached.
        if is_space && prev_is_word && !reply[i..].trim_start().is_empty() {
            pieces.push(&reply[start..i]);
            start = i;
        }
        prev_is_word = !is_space;
    }
    if start < reply.len() {
        pieces.push(&reply[start..]);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_verbatim_when_short_enough() {
        assert_eq!(
            reply_text("hi  there\n", None),
            ("Echo: hi  there\n".into(), false)
        );
        assert_eq!(reply_text("a b", Some(3)), ("Echo: a b".into(), false));
        assert_eq!(reply_text("", None), ("Echo: ".into(), false));
    }

    #[test]
    fn truncates_to_max_tokens_words() {
        assert_eq!(reply_text("a  b\nc", Some(3)), ("Echo: a b".into(), true));
        assert_eq!(reply_text("a b", Some(1)), ("Echo:".into(), true));
        assert_eq!(reply_text("a b", Some(0)), ("".into(), true));
    }

    #[test]
    fn pieces_concatenate_to_the_reply() {
        for text in [
            "Echo: hello world",
            "Echo:  two\nlines  ",
            "Echo: ",
            "",
            " x",
        ] {
            let pieces = stream_pieces(text);
            assert_eq!(pieces.concat(), text, "{text:?}");
        }
        assert_eq!(stream_pieces("Echo: a b"), vec!["Echo:", " a", " b"]);
        assert_eq!(stream_pieces("Echo: a "), vec!["Echo:", " a "]);
        assert_eq!(count_words(" a\tb\n c "), 3);
    }
}
