"""The opt-in response cache: ok responses in SQLite, keyed by everything that shapes a response.

Where: ``$PROMPT_RUNNER_CACHE_DIR/cache.sqlite`` if set, else
``$XDG_CACHE_HOME/prompt-runner/cache.sqlite``, else ``~/.cache/prompt-runner/cache.sqlite``.

The key covers provider, base URL, model, the rendered messages JSON, system prompt, temperature
and max_tokens: not ``stream`` (the same text either way) and not the limits. Only ok rows are
stored. Several runs may share the cache at once: WAL mode, a busy timeout, short transactions
and ``INSERT OR IGNORE`` (the first answer stored for a key is kept).

The run loop uses it per input chunk: :meth:`ResponseCache.lookup` the chunk's keys (one query
per 500 keys), turn the hits into executor-shaped results with :func:`hits_table` (``cache_hit``
true, latency 0, attempts 0), submit only the misses, and :meth:`ResponseCache.store_results` new ok
results as they arrive (keys kept per row in flight).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.errors import RunnerError

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "CacheError",
    "ResponseCache",
    "RESULT_FIELDS",
    "cache_key",
    "cache_keys",
    "default_cache_path",
    "hits_table",
]

#: Fields of a cached result (besides the key).
RESULT_FIELDS: tuple[str, ...] = (
    "output",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "http_status",
    "request_hash",
    "refusal",
    "tool_calls",
    "choices",
    "logprobs",
    "reasoning_tokens",
    "cached_prompt_tokens",
    "cache_write_tokens",
    "raw",
)
#: Columns added after the first version of the table, with their SQLite types: an older cache
#: file gets them when it is opened.
_ADDED_COLUMNS = {
    "refusal": "TEXT",
    "tool_calls": "TEXT",
    "choices": "TEXT",  # a list of texts, kept as JSON
    "logprobs": "TEXT",
    "reasoning_tokens": "INTEGER",
    "cached_prompt_tokens": "INTEGER",
    "cache_write_tokens": "INTEGER",
    "raw": "TEXT",
}

#: Keys per ``SELECT ... IN (...)``: well under SQLite's bound-parameter limit.
LOOKUP_CHUNK = 500
BUSY_TIMEOUT_MS = 30_000
_SCHEMA_VERSION = 1


class CacheError(RunnerError):
    """The cache file cannot be opened or used."""


def default_cache_path() -> Path:
    """The cache file's location (see the module docstring); the directory may not exist yet."""
    override = os.environ.get("PROMPT_RUNNER_CACHE_DIR")
    if override:
        return Path(override).expanduser() / "cache.sqlite"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "prompt-runner" / "cache.sqlite"


def _field(value: str | float | None) -> bytes:
    # Length-prefixed, so no choice of texts can make two different requests collide;
    # None differs from "" and 0 from 0.0 does not (temperature 0 == 0.0).
    if value is None:
        return b"-"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    data = str(value).encode()
    return b"%d:" % len(data) + data


def _prefix(
    provider: str,
    api_base: str | None,
    model: str,
    system: str | None,
    temperature: float | None,
    max_tokens: int | None,
    params: Mapping[str, Any] | None = None,
) -> Any:
    h = hashlib.sha256(b"prompt-runner-cache/v%d|" % _SCHEMA_VERSION)
    for value in (provider, (api_base or "").rstrip("/") or None, model, system, temperature, max_tokens):
        h.update(_field(value))
    if params:  # without parameters, keys stay those of earlier versions
        h.update(_field(json.dumps(params, sort_keys=True, separators=(",", ":"))))
    return h


def cache_key(
    provider: str,
    api_base: str | None,
    model: str,
    messages_json: str,
    system: str | None,
    temperature: float | None,
    max_tokens: int | None,
    params: Mapping[str, Any] | None = None,
) -> str:
    """The cache key (sha256 hex) of one request (`params`: the run's body fields)."""
    h = _prefix(provider, api_base, model, system, temperature, max_tokens, params)
    h.update(_field(messages_json))
    key: str = h.hexdigest()
    return key


def cache_keys(
    provider: str,
    api_base: str | None,
    model: str,
    payloads: Iterable[str],
    system: str | None,
    temperature: float | None,
    max_tokens: int | None,
    params: Mapping[str, Any] | None = None,
) -> list[str]:
    """:func:`cache_key` for many rendered messages at once (the shared fields hashed once)."""
    prefix = _prefix(provider, api_base, model, system, temperature, max_tokens, params)
    keys = []
    for payload in payloads:
        h = prefix.copy()
        h.update(_field(payload))
        keys.append(h.hexdigest())
    return keys


class ResponseCache:
    """One process's handle on the cache file; safe to share between threads."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path | None = None) -> ResponseCache:
        """Opens (creating if needed) the cache at ``path`` or :func:`default_cache_path`."""
        file = Path(path) if path is not None else default_cache_path()
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(file, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS responses ("
                " key TEXT PRIMARY KEY, output TEXT, finish_reason TEXT, prompt_tokens INTEGER,"
                " completion_tokens INTEGER, http_status INTEGER, request_hash TEXT, created_at REAL"
                ") WITHOUT ROWID"
            )
            present = {row[1] for row in conn.execute("PRAGMA table_info(responses)")}
            for name, kind in _ADDED_COLUMNS.items():
                if name not in present:
                    conn.execute(f"ALTER TABLE responses ADD COLUMN {name} {kind}")
        except (OSError, sqlite3.Error) as err:
            reason = getattr(err, "strerror", None) or str(err)
            raise CacheError(f"{file}: cannot open the response cache: {reason}") from None
        return cls(conn, file)

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lookup(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The cached results among ``keys`` (missing keys are absent), one query per 500 keys."""
        found: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(keys))
        columns = ", ".join(RESULT_FIELDS)
        with self._lock:
            try:
                for start in range(0, len(unique), LOOKUP_CHUNK):
                    batch = unique[start : start + LOOKUP_CHUNK]
                    marks = ",".join("?" * len(batch))
                    cursor = self._conn.execute(f"SELECT key, {columns} FROM responses WHERE key IN ({marks})", batch)
                    for key, *values in cursor:
                        # The later columns only where an answer had them.
                        found[key] = {
                            f: v for f, v in zip(RESULT_FIELDS, values) if v is not None or f not in _ADDED_COLUMNS
                        }
            except sqlite3.Error as err:
                raise CacheError(f"{self.path}: cache lookup failed: {err}") from None
        return found

    def store(self, rows: Sequence[tuple[str, dict[str, Any]]]) -> int:
        """Stores ``(key, result)`` pairs in one short transaction; an existing key is kept.
        Results whose ``status`` is given and not ``ok`` are skipped. Returns rows offered."""
        now = time.time()
        values = [
            (key, *(result.get(f) for f in RESULT_FIELDS), now)
            for key, result in rows
            if result.get("status", "ok") == "ok" and result.get("output") is not None
        ]
        if not values:
            return 0
        marks = ",".join("?" * (len(RESULT_FIELDS) + 2))
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.executemany(
                        f"INSERT OR IGNORE INTO responses (key, {', '.join(RESULT_FIELDS)}, created_at) VALUES ({marks})",
                        values,
                    )
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as err:
                raise CacheError(f"{self.path}: cache write failed: {err}") from None
        return len(values)

    def store_results(self, keys: Sequence[str], results: pa.Table) -> int:
        """Stores the ok rows of a result table (an executor poll's, or ``hits_table``'s);
        ``keys[i]`` is the cache key of ``results`` row ``i``. Returns rows stored."""
        import pyarrow.compute as pc

        if len(keys) != results.num_rows:
            raise ValueError(f"store_results: {len(keys)} keys for {results.num_rows} rows")
        ok = pc.fill_null(pc.equal(results.column("status"), "ok"), False).to_pylist()
        columns = results.select([f for f in RESULT_FIELDS if f in results.column_names]).to_pydict()
        if "choices" in columns:
            columns["choices"] = [None if v is None else json.dumps(v, ensure_ascii=False) for v in columns["choices"]]
        rows = [(key, {name: values[i] for name, values in columns.items()}) for i, key in enumerate(keys) if ok[i]]
        return self.store(rows)

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_cache(wanted: bool) -> ResponseCache | None:
    """The user's response cache when the run asks for it (`--cache`), else None."""
    return ResponseCache.open() if wanted else None


def hits_table(rows: Sequence[int], keys: Sequence[str], hits: dict[str, dict[str, Any]]) -> pa.Table:
    """Cache hits as result rows (`runner.schema.RESULT_SCHEMA`). ``rows`` are the row positions
    of ``keys``; only keys found in ``hits`` become rows. Timestamps are now, latency 0,
    attempts 0."""
    from runner.schema import result_table

    found = [(row, hits[key]) for row, key in zip(rows, keys) if key in hits]
    now_us = time.time_ns() // 1000
    columns: dict[str, list[Any]] = {"row": [row for row, _ in found]}
    for name in RESULT_FIELDS:
        columns[name] = [hit.get(name) for _, hit in found]
    columns["choices"] = [None if v is None else json.loads(v) for v in columns["choices"]]
    n = len(found)
    columns.update(status=["ok"] * n, latency_ms=[0.0] * n, attempts=[0] * n, started_at=[now_us] * n, finished_at=[now_us] * n)
    return result_table(columns, rows=n)
