//! Server-sent events over a byte stream, stopping at the provider's final event.
//!
//! Framing (line endings, multi-line `data:`, comments, chunk boundaries, UTF-8 split across
//! chunks) is eventsource-stream's job; this module adapts its types to ours and guards against
//! input that would make it panic. Which event is final is the provider accumulator's call
//! (`provider::Accumulator`): the caller stops polling there and drops the stream.

use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};

/// One dispatched event. `event` is `message` when the server sent no `event:` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, or `message` when absent.
    pub event: String,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
}

/// Why an event stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SseError<E> {
    /// The underlying byte stream failed (connection reset, body cut mid-chunk, ...).
    #[error("reading the event stream failed: {0}")]
    Transport(E),
    /// The bytes are not a valid event stream (invalid UTF-8 or unparseable lines).
    #[error("malformed event stream: {0}")]
    Malformed(String),
}

/// Parses a byte stream (such as `reqwest::Response::bytes_stream()`) into events.
///
/// Events without data are skipped (per the SSE spec), as are comments (`: ping`). An event
/// still missing its blank line when the bytes end is never dispatched: a cut stream cannot
/// yield a half event.
pub fn events<S, E>(bytes: S) -> impl Stream<Item = Result<SseEvent, SseError<E>>>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    strip_bom(bytes).eventsource().map(|item| match item {
        Ok(event) => Ok(SseEvent {
            event: event.event,
            data: event.data,
        }),
        Err(EventStreamError::Transport(err)) => Err(SseError::Transport(err)),
        Err(EventStreamError::Utf8(err)) => Err(SseError::Malformed(err.to_string())),
        Err(EventStreamError::Parser(err)) => {
            let at: String = err.input.chars().take(80).collect();
            Err(SseError::Malformed(format!("{:?} at {at:?}", err.code)))
        }
    })
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Removes a leading UTF-8 byte-order mark, even one split across chunks.
///
/// eventsource-stream 0.2 slices a leading BOM off by one byte (`&s[1..]`), which panics on
/// the three-byte character; a server sending one must not be able to crash a run.
fn strip_bom<S, E>(bytes: S) -> impl Stream<Item = Result<Bytes, E>>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    // `Some(prefix)` while the first bytes could still be the start of a BOM.
    bytes.scan(Some(Vec::new()), |pending, item| {
        let out = match (pending.as_mut(), item) {
            (None, item) => item,
            (Some(_), Err(err)) => Err(err),
            (Some(prefix), Ok(chunk)) => {
                prefix.extend_from_slice(&chunk);
                if prefix.len() < BOM.len() && BOM.starts_with(prefix) {
                    Ok(Bytes::new())
                } else {
                    let all = std::mem::take(prefix);
                    *pending = None;
                    let start = if all.starts_with(BOM) { BOM.len() } else { 0 };
                    Ok(Bytes::from(all).slice(start..))
                }
            }
        };
        std::future::ready(Some(out))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorType;
    use crate::provider::{Accumulator, ProviderKind, StreamStep};
    use futures_util::stream;

    type Chunks = Vec<Result<Bytes, std::io::Error>>;

    fn chunks(parts: &[&[u8]]) -> Chunks {
        parts
            .iter()
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect()
    }

    fn split_at(bytes: &[u8], cuts: &[usize]) -> Chunks {
        let mut out = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain([bytes.len()].iter()) {
            out.push(Ok(Bytes::copy_from_slice(&bytes[start..cut])));
            start = cut;
        }
        out
    }

    fn collect(input: Chunks) -> Vec<SseEvent> {
        let results: Vec<_> = futures_executor(events(stream::iter(input)));
        results
            .into_iter()
            .map(|r| r.expect("valid stream"))
            .collect()
    }

    /// Drives a stream to its end on a throwaway current-thread runtime.
    fn futures_executor<T>(s: impl Stream<Item = T>) -> Vec<T> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("test runtime")
            .block_on(s.collect())
    }

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn every_split_position_gives_the_same_events() {
        let text = "event: content_block_delta\ndata: {\"text\":\"né 🦀\"}\n\ndata: [DONE]\n\n";
        let bytes = text.as_bytes();
        let want = vec![
            ev("content_block_delta", "{\"text\":\"né 🦀\"}"),
            ev("message", "[DONE]"),
        ];
        for cut in 0..=bytes.len() {
            assert_eq!(collect(split_at(bytes, &[cut])), want, "cut at {cut}");
        }
        // One byte at a time splits inside both multi-byte characters.
        let singles: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(collect(split_at(bytes, &singles)), want);
    }

    #[test]
    fn multi_line_data_comments_and_crlf() {
        let input = chunks(&[
            b": ping\r\n\r\n",
            b"data: line one\r\ndata: line two\r",
            b"\n\r\n",
            b"event: x\ndata:no-space\n\n",
            b"event: empty\n\n",
        ]);
        assert_eq!(
            collect(input),
            vec![ev("message", "line one\nline two"), ev("x", "no-space")]
        );
    }

    #[test]
    fn leading_bom_is_dropped_even_when_split() {
        let input = chunks(&[b"\xEF", b"\xBB", b"\xBFdata: a\n\n"]);
        assert_eq!(collect(input), vec![ev("message", "a")]);
        let input = chunks(&[b"\xEF\xBB\xBFdata: b\n\n"]);
        assert_eq!(collect(input), vec![ev("message", "b")]);
    }

    #[test]
    fn a_cut_event_is_not_dispatched_and_errors_surface() {
        assert_eq!(
            collect(chunks(&[b"data: 1\n\ndata: {\"cho"])),
            vec![ev("message", "1")]
        );
        let broken: Chunks = vec![
            Ok(Bytes::from_static(b"data: 1\n\n")),
            Err(std::io::Error::other("reset")),
        ];
        let results = futures_executor(events(stream::iter(broken)));
        assert!(matches!(
            results.as_slice(),
            [Ok(_), Err(SseError::Transport(_))]
        ));
        let invalid = futures_executor(events(stream::iter(chunks(&[b"data: \xFF\xFE\n\n"]))));
        assert!(invalid
            .iter()
            .any(|r| matches!(r, Err(SseError::Malformed(_)))));
    }

    fn run(kind: ProviderKind, input: Chunks) -> Result<crate::provider::Completion, ErrorType> {
        let mut acc = Accumulator::new(kind);
        for item in futures_executor(events(stream::iter(input))) {
            let event = item.map_err(|_| ErrorType::Connection)?;
            if acc
                .on_event(&event.event, &event.data)
                .map_err(|f| f.kind)?
                == StreamStep::Done
            {
                break;
            }
        }
        acc.finish().map_err(|f| f.kind)
    }

    #[test]
    fn openai_done_through_the_accumulator() {
        let body = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n",
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n",
            "data: [DONE]\n\n",
        );
        let completion = run(
            ProviderKind::OpenAi,
            split_at(body.as_bytes(), &[7, 60, 61, 150]),
        )
        .expect("complete stream");
        assert_eq!(completion.text, "Hi");
        assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
        assert_eq!(completion.completion_tokens, Some(1));
        let cut = &body[..body.len() - 4];
        assert_eq!(
            run(ProviderKind::OpenAi, chunks(&[cut.as_bytes()])),
            Err(ErrorType::IncompleteStream)
        );
    }

    #[test]
    fn anthropic_sequence_assembled() {
        let body = concat!(
            "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\r\n\r\n",
            "event: content_block_start\r\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n\r\n",
            "event: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n",
            "event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Grüß \"}}\r\n\r\n",
            "event: content_block_delta\r\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"dich\"}}\r\n\r\n",
            "event: content_block_stop\r\ndata: {\"type\":\"content_block_stop\",\"index\":0}\r\n\r\n",
            "event: message_delta\r\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":2}}\r\n\r\n",
            "event: message_stop\r\ndata: {\"type\":\"message_stop\"}\r\n\r\n",
        );
        let bytes = body.as_bytes();
        let cuts: Vec<usize> = (1..bytes.len()).step_by(37).collect();
        let completion = run(ProviderKind::Anthropic, split_at(bytes, &cuts)).expect("complete");
        assert_eq!(completion.text, "Grüß dich");
        assert_eq!(completion.finish_reason.as_deref(), Some("max_tokens"));
        assert_eq!(
            (completion.prompt_tokens, completion.completion_tokens),
            (Some(9), Some(2))
        );
        let error = "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
        assert_eq!(
            run(ProviderKind::Anthropic, chunks(&[error.as_bytes()])),
            Err(ErrorType::Overloaded)
        );
    }
}
