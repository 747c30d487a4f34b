//! Rate-limit header parsing: Retry-After, retry-after-ms, the providers' reset headers, and the
//! limits a server states (`x-ratelimit-*`, `anthropic-ratelimit-*`).

use reqwest::header::HeaderMap;
use std::time::{Duration, SystemTime};

/// Parses a duration as providers write it: Go-style `1m30s`, `6m0s`, `100ms`, `0.5s`,
/// `2h1m`, `17ms` (OpenAI's `x-ratelimit-reset-*`), or plain, possibly fractional, seconds
/// (`30`, `1.5`). Units: `h`, `m`, `s`, `ms`, `us`/`µs`, `ns`. Negative, empty or malformed
/// input gives `None`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(secs) = s.parse::<f64>() {
        return seconds(secs);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            // Go writes micro as U+00B5 and accepts U+03BC too.
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    seconds(total)
}

fn seconds(secs: f64) -> Option<Duration> {
    // Rejects NaN, negatives and values too large for a Duration in one check.
    Duration::try_from_secs_f64(secs).ok()
}

/// How long the server asked us to wait, from a response's headers, in this order:
///
/// 1. `retry-after-ms` (milliseconds, fractional allowed; OpenAI),
/// 2. `retry-after` (seconds or an HTTP date), then the same hint as gateways forward it under
///    other names (`llm_provider-retry-after`, LiteLLM's copy of the upstream's header),
/// 3. Anthropic's `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-reset`
///    (RFC 3339 timestamps), for the limits whose `-remaining` is 0 or absent; the latest wins,
/// 4. OpenAI's `x-ratelimit-reset-{requests,tokens}` (durations such as `6m0s`), for the
///    limits whose `x-ratelimit-remaining-*` is 0 or absent; the longest wins.
///
/// Reset headers of limits with room left are ignored: they say when a window rolls over, not
/// that we must wait for it. A date or timestamp already in the past gives `Some(ZERO)` (the
/// server did ask us to wait, just not any longer; backoff still applies). Unparseable values
/// are skipped as if absent.
pub fn retry_delay(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = header_str(headers, "retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if let Some(delay) = seconds(ms / 1000.0) {
            return Some(delay);
        }
    }
    for name in RETRY_AFTER_NAMES {
        if let Some(delay) = header_str(headers, name).and_then(|v| parse_retry_after(v, now)) {
            return Some(delay);
        }
    }
    const ANTHROPIC_LIMITS: [&str; 4] = ["requests", "tokens", "input-tokens", "output-tokens"];
    let anthropic = ANTHROPIC_LIMITS
        .iter()
        .filter(|limit| exhausted(headers, &format!("anthropic-ratelimit-{limit}-remaining")))
        .filter_map(|limit| header_str(headers, &format!("anthropic-ratelimit-{limit}-reset")))
        .filter_map(|value| humantime::parse_rfc3339(value.trim()).ok())
        .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO))
        .max();
    if anthropic.is_some() {
        return anthropic;
    }
    ["requests", "tokens"]
        .iter()
        .filter(|limit| exhausted(headers, &format!("x-ratelimit-remaining-{limit}")))
        .filter_map(|limit| header_str(headers, &format!("x-ratelimit-reset-{limit}")))
        .filter_map(parse_duration)
        .max()
}

/// `retry-after` and the names gateways forward it under, most authoritative first.
const RETRY_AFTER_NAMES: [&str; 2] = ["retry-after", "llm_provider-retry-after"];

/// What one response says about the server's rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatedLimits {
    /// Requests allowed per minute (OpenAI `x-ratelimit-limit-requests`, Anthropic
    /// `anthropic-ratelimit-requests-limit`; both providers state RPM).
    pub requests_per_minute: Option<u32>,
    /// Tokens allowed per minute (`x-ratelimit-limit-tokens`, `anthropic-ratelimit-tokens-limit`).
    pub tokens_per_minute: Option<u32>,
    /// Some stated limit has nothing left (its `-remaining` is 0): the next request would be
    /// refused until it resets.
    pub exhausted: bool,
}

/// (limit kind, limit header, remaining header) for both providers.
const STATED_LIMIT_HEADERS: [(&str, &str, &str); 8] = [
    (
        "requests",
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
    ),
    (
        "tokens",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
    ),
    (
        "requests",
        "anthropic-ratelimit-requests-limit",
        "anthropic-ratelimit-requests-remaining",
    ),
    (
        "tokens",
        "anthropic-ratelimit-tokens-limit",
        "anthropic-ratelimit-tokens-remaining",
    ),
    (
        "input-tokens",
        "anthropic-ratelimit-input-tokens-limit",
        "anthropic-ratelimit-input-tokens-remaining",
    ),
    (
        "output-tokens",
        "anthropic-ratelimit-output-tokens-limit",
        "anthropic-ratelimit-output-tokens-remaining",
    ),
    (
        "input-tokens",
        "x-ratelimit-limit-input-tokens",
        "x-ratelimit-remaining-input-tokens",
    ),
    (
        "output-tokens",
        "x-ratelimit-limit-output-tokens",
        "x-ratelimit-remaining-output-tokens",
    ),
];

/// The limits a response states, or `None` when it states none (a gateway, a local server).
/// Reads OpenAI's `x-ratelimit-{limit,remaining}-{requests,tokens}` and Anthropic's
/// `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining}`.
pub fn stated_limits(headers: &HeaderMap) -> Option<StatedLimits> {
    let number = |name: &str| {
        header_str(headers, name)
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|n| n.is_finite() && *n >= 0.0)
    };
    let per_minute = |name: &str| number(name).map(|n| n.min(f64::from(u32::MAX)) as u32);
    let mut limits = StatedLimits::default();
    let mut stated = false;
    for (kind, limit, remaining) in STATED_LIMIT_HEADERS {
        let Some(value) = per_minute(limit) else {
            continue;
        };
        stated = true;
        match kind {
            "requests" => limits.requests_per_minute = Some(value),
            "tokens" => limits.tokens_per_minute = Some(value),
            _ => {}
        }
        if number(remaining).is_some_and(|n| n < 1.0) {
            limits.exhausted = true;
        }
    }
    stated.then_some(limits)
}

fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return seconds(secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A limit counts as exhausted when its remaining count says 0, or is not sent at all.
fn exhausted(headers: &HeaderMap, remaining: &str) -> bool {
    match header_str(headers, remaining) {
        None => true,
        Some(v) => v.trim().parse::<f64>().map(|n| n <= 0.0).unwrap_or(true),
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name)?.to_str().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};
    use std::time::UNIX_EPOCH;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
                HeaderValue::from_str(value).expect("test header value"),
            );
        }
        headers
    }

    /// Response headers and the delay they should give.
    type Case<'a> = (Vec<(&'a str, &'a str)>, Option<Duration>);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("1m30s", Some(ms(90_000))),
            ("6m0s", Some(ms(360_000))),
            ("100ms", Some(ms(100))),
            ("17ms", Some(ms(17))),
            ("0.5s", Some(ms(500))),
            ("2h1m", Some(ms(7_260_000))),
            ("1h0m0.25s", Some(ms(3_600_250))),
            ("30", Some(ms(30_000))),
            ("1.5", Some(ms(1_500))),
            (" 2s ", Some(ms(2_000))),
            ("0s", Some(Duration::ZERO)),
            ("250us", Some(Duration::from_micros(250))),
            ("3\u{b5}s", Some(Duration::from_micros(3))),
            ("1.5\u{3bc}s", Some(Duration::from_nanos(1_500))),
            ("", None),
            ("-1", None),
            ("-1s", None),
            ("s", None),
            ("10x", None),
            ("1m30", None),
            ("abc", None),
            ("NaN", None),
        ];
        for &(input, want) in cases {
            let got = parse_duration(input);
            match (got, want) {
                (Some(g), Some(w)) => {
                    let diff = g.abs_diff(w);
                    assert!(diff < Duration::from_micros(1), "{input:?}: {g:?} vs {w:?}");
                }
                _ => assert_eq!(got, want, "{input:?}"),
            }
        }
    }

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let in_20s = httpdate::fmt_http_date(now + Duration::from_secs(20));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(20));
        let cases: Vec<Case> = vec![
            (vec![], None),
            (vec![("retry-after", "7")], Some(ms(7_000))),
            (vec![("retry-after", "0.25")], Some(ms(250))),
            (vec![("retry-after-ms", "1500")], Some(ms(1_500))),
            (
                vec![("retry-after-ms", "12.5")],
                Some(Duration::from_micros(12_500)),
            ),
            (vec![("retry-after", &in_20s)], Some(ms(20_000))),
            (vec![("retry-after", &past)], Some(Duration::ZERO)),
            (vec![("retry-after", "soon")], None),
            // Precedence: ms beats seconds beats reset headers.
            (
                vec![("retry-after", "7"), ("retry-after-ms", "300")],
                Some(ms(300)),
            ),
            (
                vec![("retry-after", "7"), ("x-ratelimit-reset-requests", "1m")],
                Some(ms(7_000)),
            ),
            (
                vec![("retry-after-ms", "bad"), ("retry-after", "3")],
                Some(ms(3_000)),
            ),
        ];
        for (headers, want) in cases {
            assert_eq!(retry_delay(&map(&headers), now), want, "{headers:?}");
        }
    }

    #[test]
    fn anthropic_reset_timestamps() {
        let now = humantime::parse_rfc3339("2026-11-25T12:00:00Z").expect("fixed time");
        let cases: Vec<Case> = vec![
            (
                vec![("anthropic-ratelimit-requests-reset", "2026-11-25T12:00:05Z")],
                Some(ms(5_000)),
            ),
            (
                vec![(
                    "anthropic-ratelimit-tokens-reset",
                    "2026-11-25T12:00:01.500Z",
                )],
                Some(ms(1_500)),
            ),
            (
                vec![(
                    "anthropic-ratelimit-input-tokens-reset",
                    "2026-11-25T12:00:02+00:00",
                )],
                Some(ms(2_000)),
            ),
            (
                vec![("anthropic-ratelimit-requests-reset", "2026-11-25T11:59:00Z")],
                Some(Duration::ZERO),
            ),
            // Only exhausted limits count; the latest exhausted one wins.
            (
                vec![
                    ("anthropic-ratelimit-requests-remaining", "10"),
                    ("anthropic-ratelimit-requests-reset", "2026-11-25T12:00:30Z"),
                    ("anthropic-ratelimit-tokens-remaining", "0"),
                    ("anthropic-ratelimit-tokens-reset", "2026-11-25T12:00:04Z"),
                    ("anthropic-ratelimit-output-tokens-remaining", "0"),
                    (
                        "anthropic-ratelimit-output-tokens-reset",
                        "2026-11-25T12:00:09Z",
                    ),
                ],
                Some(ms(9_000)),
            ),
            (
                vec![
                    ("anthropic-ratelimit-requests-remaining", "10"),
                    ("anthropic-ratelimit-requests-reset", "2026-11-25T12:00:30Z"),
                ],
                None,
            ),
            // Retry-After still wins over the reset headers.
            (
                vec![
                    ("retry-after", "2"),
                    ("anthropic-ratelimit-requests-reset", "2026-11-25T12:00:30Z"),
                ],
                Some(ms(2_000)),
            ),
            (
                vec![("anthropic-ratelimit-requests-reset", "tomorrow")],
                None,
            ),
        ];
        for (headers, want) in cases {
            assert_eq!(retry_delay(&map(&headers), now), want, "{headers:?}");
        }
    }

    #[test]
    fn gateway_retry_after_names() {
        let now = SystemTime::now();
        let cases: Vec<Case> = vec![
            (vec![("llm_provider-retry-after", "60")], Some(ms(60_000))),
            // The standard header wins over a gateway's copy.
            (
                vec![("retry-after", "2"), ("llm_provider-retry-after", "60")],
                Some(ms(2_000)),
            ),
        ];
        for (headers, want) in cases {
            assert_eq!(retry_delay(&map(&headers), now), want, "{headers:?}");
        }
    }

    #[test]
    fn stated_limits_of_both_providers() {
        let none: Vec<(&str, &str)> = vec![("retry-after", "1")];
        assert_eq!(stated_limits(&map(&none)), None);
        let openai = map(&[
            ("x-ratelimit-limit-requests", "2400"),
            ("x-ratelimit-remaining-requests", "2399"),
            ("x-ratelimit-limit-tokens", "200000"),
            ("x-ratelimit-remaining-tokens", "199000"),
        ]);
        let want = StatedLimits {
            requests_per_minute: Some(2400),
            tokens_per_minute: Some(200_000),
            exhausted: false,
        };
        assert_eq!(stated_limits(&openai), Some(want));
        let anthropic_out = map(&[
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "12"),
            ("anthropic-ratelimit-output-tokens-limit", "8000"),
            ("anthropic-ratelimit-output-tokens-remaining", "0"),
        ]);
        let want = StatedLimits {
            requests_per_minute: Some(50),
            tokens_per_minute: None,
            exhausted: true,
        };
        assert_eq!(stated_limits(&anthropic_out), Some(want));
        // A fractional remaining below one request is nothing left; junk values are ignored.
        let frac = map(&[
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-remaining-requests", "0.4"),
            ("x-ratelimit-limit-tokens", "lots"),
        ]);
        let got = stated_limits(&frac).expect("requests stated");
        assert!(got.exhausted);
        assert_eq!(got.tokens_per_minute, None);
    }

    #[test]
    fn openai_reset_durations() {
        let now = SystemTime::now();
        let cases: Vec<Case> = vec![
            (
                vec![("x-ratelimit-reset-requests", "1m30s")],
                Some(ms(90_000)),
            ),
            (
                vec![
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-requests", "17ms"),
                    ("x-ratelimit-remaining-tokens", "1000"),
                    ("x-ratelimit-reset-tokens", "6m0s"),
                ],
                Some(ms(17)),
            ),
            (
                vec![
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-requests", "100ms"),
                    ("x-ratelimit-remaining-tokens", "0"),
                    ("x-ratelimit-reset-tokens", "2.5s"),
                ],
                Some(ms(2_500)),
            ),
            (
                vec![
                    ("x-ratelimit-remaining-requests", "5"),
                    ("x-ratelimit-reset-requests", "100ms"),
                ],
                None,
            ),
            // Anthropic resets take precedence over OpenAI's.
            (
                vec![
                    ("x-ratelimit-reset-requests", "9s"),
                    ("anthropic-ratelimit-requests-reset", "2000-01-01T00:00:00Z"),
                ],
                Some(Duration::ZERO),
            ),
        ];
        for (headers, want) in cases {
            assert_eq!(retry_delay(&map(&headers), now), want, "{headers:?}");
        }
    }
}
