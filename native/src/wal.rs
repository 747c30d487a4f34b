//! The run's write-ahead log: every settled row is appended to it before its concurrency slot
//! is given back, so a `kill -9` costs only the requests on the wire (README, "Run state and
//! crash safety").
//!
//! A log is a series of segment files, `{prefix}{n:06}.wal`. The run loop seals the current
//! segment (`roll`) before it writes a part, and deletes the sealed segments once their rows
//! are in that part. A segment is created at its first record, so an idle run leaves no files.
//!
//! A record is `len: u32 LE | crc32(payload): u32 LE | payload` where the payload is the row's
//! result as JSON. Each record reaches the kernel in one `write`, so a killed process leaves
//! whole records; a power loss can leave a torn or zeroed tail, which `read` ignores (a record
//! that is short, fails its checksum or does not parse ends its segment). The current segment
//! is fsynced at most once per `SYNC_EVERY` by the executor, which bounds what a power loss costs.

use crate::row::RowResult;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How often the current segment is fsynced while records arrive.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);
/// A record longer than this is not a record (a torn length field), and is never written.
const MAX_RECORD: u32 = 256 << 20;
/// Bytes before a record's payload: its length and checksum.
const HEADER: usize = 8;

/// The writer of one executor's log.
pub struct Log {
    prefix: PathBuf,
    /// The number of the current segment.
    segment: u64,
    /// The current segment, once it holds a record.
    file: Option<Arc<File>>,
    /// Records were written since the last fsync.
    dirty: bool,
}

impl Log {
    /// A log whose segments are `{prefix}000001.wal`, `{prefix}000002.wal`, ...
    pub fn new(prefix: impl Into<PathBuf>) -> Self {
        Self {
            prefix: prefix.into(),
            segment: 1,
            file: None,
            dirty: false,
        }
    }

    fn path(&self, segment: u64) -> PathBuf {
        let mut name = self.prefix.clone().into_os_string();
        name.push(format!("{segment:06}.wal"));
        PathBuf::from(name)
    }

    /// Appends one encoded record (see [`encode`]) in a single write.
    pub fn append(&mut self, record: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(self.segment))?;
            self.file = Some(Arc::new(file));
        }
        let file = self.file.as_deref().expect("opened above");
        (&*file).write_all(record)?;
        self.dirty = true;
        Ok(())
    }

    /// Seals the current segment: later records go to the next one. The sealed segment's
    /// path, or `None` when it holds no record (nothing to seal).
    pub fn roll(&mut self) -> Option<PathBuf> {
        self.file.take()?;
        let sealed = self.path(self.segment);
        self.segment += 1;
        self.dirty = false;
        Some(sealed)
    }

    /// The current segment, when records were written to it since the last call: for an
    /// fsync made outside the caller's lock.
    pub fn to_sync(&mut self) -> Option<Arc<File>> {
        if !std::mem::take(&mut self.dirty) {
            return None;
        }
        self.file.clone()
    }
}

/// One row's record: header and JSON payload.
pub fn encode(row: &RowResult) -> Vec<u8> {
    let mut record = vec![0; HEADER];
    serde_json::to_writer(&mut record, row).expect("a row always serializes");
    let len = (record.len() - HEADER) as u32;
    let crc = crc32fast::hash(&record[HEADER..]);
    record[..4].copy_from_slice(&len.to_le_bytes());
    record[4..HEADER].copy_from_slice(&crc.to_le_bytes());
    record
}

/// What a log's segments hold.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every whole record, segment by segment in the order given, in the order written.
    pub rows: Vec<RowResult>,
    /// Segments whose tail was torn (ignored from the first bad record on).
    pub torn: usize,
}

/// Reads `segments` in order. A missing segment counts as empty.
pub fn read(segments: &[impl AsRef<Path>]) -> io::Result<Recovered> {
    let mut recovered = Recovered::default();
    for path in segments {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        let whole = decode(&bytes, &mut recovered.rows);
        if whole < bytes.len() {
            recovered.torn += 1;
        }
    }
    Ok(recovered)
}

/// Appends the whole records at the start of `bytes` to `rows`; the bytes they take.
fn decode(bytes: &[u8], rows: &mut Vec<RowResult>) -> usize {
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes(header[..4].try_into().unwrap());
        let crc = u32::from_le_bytes(header[4..].try_into().unwrap());
        if len == 0 || len > MAX_RECORD {
            break;
        }
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len as usize) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Ok(row) = serde_json::from_slice::<RowResult>(payload) else {
            break;
        };
        rows.push(row);
        at += HEADER + len as usize;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorType;

    fn row(n: u64, ok: bool) -> RowResult {
        RowResult {
            row: n,
            ok,
            output: ok.then(|| format!("Echo: ζ {n} \"quoted\"\n")),
            finish_reason: ok.then(|| "stop".into()),
            prompt_tokens: ok.then_some(3),
            completion_tokens: ok.then_some(4),
            latency_ms: 1.25,
            ttft_ms: None,
            attempts: 2,
            http_status: Some(if ok { 200 } else { 400 }),
            error_type: (!ok).then_some(ErrorType::BadRequest),
            error: (!ok).then(|| "HTTP 400: no".into()),
            started_at_us: 1_700_000_000_000_000 + n as i64,
            finished_at_us: 1_700_000_000_001_500 + n as i64,
            request_hash: format!("h{n}"),
            ..RowResult::default()
        }
    }

    fn dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "wal-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn write(log: &mut Log, rows: &[RowResult]) {
        for r in rows {
            log.append(&encode(r)).unwrap();
        }
    }

    #[test]
    fn records_come_back_whole_and_in_order_across_segments() {
        let dir = dir();
        let mut log = Log::new(dir.join("r1-l0-"));
        assert_eq!(log.roll(), None, "nothing written: nothing sealed, no file");
        write(&mut log, &[row(5, true), row(2, false)]);
        let first = log.roll().unwrap();
        assert!(first.ends_with("r1-l0-000001.wal"));
        write(&mut log, &[row(9, true)]);
        let second = log.roll().unwrap();
        assert!(second.ends_with("r1-l0-000002.wal"));
        let back = read(&[&first, &second]).unwrap();
        assert_eq!(back.torn, 0);
        let rows: Vec<u64> = back.rows.iter().map(|r| r.row).collect();
        assert_eq!(rows, [5, 2, 9]);
        let failed = &back.rows[1];
        assert_eq!(failed.error_type, Some(ErrorType::BadRequest));
        assert_eq!(failed.error.as_deref(), Some("HTTP 400: no"));
        assert_eq!(back.rows[0].output, row(5, true).output);
        assert_eq!(back.rows[2].finished_at_us, row(9, true).finished_at_us);
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_ignored_and_earlier_records_are_kept() {
        let dir = dir();
        let mut log = Log::new(dir.join("t-"));
        write(&mut log, &[row(1, true), row(2, true)]);
        let path = log.roll().unwrap();
        let whole = std::fs::read(&path).unwrap();
        let last = encode(&row(3, true));
        // A record cut anywhere, a flipped byte, or a zeroed tail (what a power loss leaves).
        let mut cases = vec![];
        for cut in [1, 4, HEADER, HEADER + 3, last.len() - 1] {
            cases.push([&whole[..], &last[..cut]].concat());
        }
        let mut flipped = last.clone();
        flipped[HEADER + 2] ^= 0x20;
        cases.push([&whole[..], &flipped[..]].concat());
        cases.push([&whole[..], &[0u8; 4096][..]].concat());
        for bytes in cases {
            std::fs::write(&path, &bytes).unwrap();
            let back = read(&[&path]).unwrap();
            let rows: Vec<u64> = back.rows.iter().map(|r| r.row).collect();
            assert_eq!(rows, [1, 2]);
            assert_eq!(back.torn, 1);
        }
        let missing = dir.join("t-000009.wal");
        assert_eq!(read(&[&missing]).unwrap().rows.len(), 0);
    }

    #[test]
    fn records_of_an_older_log_read_and_the_new_fields_round_trip() {
        // A record as the log wrote it before refusal, tool calls, cache and reasoning tokens
        // and raw existed.
        let old = r#"{"row":4,"ok":true,"output":"Echo: a","finish_reason":"stop","prompt_tokens":3,"completion_tokens":2,"latency_ms":1.0,"ttft_ms":null,"attempts":1,"http_status":200,"error_type":null,"error":null,"started_at_us":1,"finished_at_us":2,"request_hash":"h4"}"#;
        let back: RowResult = serde_json::from_str(old).unwrap();
        assert_eq!((back.row, back.output.as_deref()), (4, Some("Echo: a")));
        assert_eq!(
            (back.tool_calls, back.cached_prompt_tokens, back.raw),
            (None, None, None)
        );
        assert_eq!((back.choices, back.logprobs), (None, None));
        // Empty new fields are left out of a record, so it is as short as before.
        let plain = String::from_utf8(encode(&row(1, true))[HEADER..].to_vec()).unwrap();
        assert!(
            !plain.contains("refusal")
                && !plain.contains("raw")
                && !plain.contains("choices")
                && !plain.contains("logprobs"),
            "{plain}"
        );
        let mut full = row(2, true);
        full.refusal = Some("no".into());
        full.tool_calls = Some("[]".into());
        full.reasoning_tokens = Some(5);
        full.cached_prompt_tokens = Some(6);
        full.cache_write_tokens = Some(7);
        full.raw = Some("{\"id\":1}".into());
        full.choices = Some(vec!["a".into(), "b".into()]);
        full.logprobs = Some(r#"{"content":[]}"#.into());
        let dir = dir();
        let mut log = Log::new(dir.join("n-"));
        write(&mut log, &[full.clone()]);
        let back = read(&[log.roll().unwrap()]).unwrap().rows.remove(0);
        assert_eq!(back.refusal, full.refusal);
        assert_eq!(back.tool_calls, full.tool_calls);
        assert_eq!(
            (
                back.reasoning_tokens,
                back.cached_prompt_tokens,
                back.cache_write_tokens
            ),
            (Some(5), Some(6), Some(7))
        );
        assert_eq!(back.raw, full.raw);
        assert_eq!((back.choices, back.logprobs), (full.choices, full.logprobs));
    }

    #[test]
    fn only_a_segment_written_since_the_last_sync_is_synced() {
        let dir = dir();
        let mut log = Log::new(dir.join("s-"));
        assert!(log.to_sync().is_none());
        write(&mut log, &[row(1, true)]);
        assert!(log.to_sync().is_some());
        assert!(log.to_sync().is_none());
    }
}
