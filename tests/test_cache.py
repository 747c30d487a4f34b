"""The response cache: keys, round trips, batched lookups, concurrent writers, its location."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pyarrow as pa
from runner.store.cache import LOOKUP_CHUNK, CacheError, ResponseCache, cache_key, cache_keys, default_cache_path, hits_table

BASE = dict(
    provider="openai",
    api_base="https://api.openai.com/v1",
    model="gpt-4o-mini",
    messages_json='[{"role":"user","content":"hi"}]',
    system="Be brief.",
    temperature=0.0,
    max_tokens=16,
)


def result(i: int) -> dict[str, object]:
    return {
        "output": f"answer {i}",
        "finish_reason": "stop",
        "prompt_tokens": 10 + i,
        "completion_tokens": 2,
        "http_status": 200,
        "request_hash": f"{i:032x}",
    }


def test_keys_differ_when_any_shaping_field_differs() -> None:
    key = cache_key(**BASE)  # type: ignore[arg-type]
    assert len(key) == 64 and int(key, 16) >= 0
    changes = {
        "provider": "anthropic",
        "api_base": "http://localhost:8000/v1",
        "model": "gpt-4o",
        "messages_json": '[{"role":"user","content":"hi!"}]',
        "system": None,
        "temperature": 0.7,
        "max_tokens": 17,
    }
    keys = {key}
    for field, value in changes.items():
        keys.add(cache_key(**{**BASE, field: value}))  # type: ignore[arg-type]
    assert len(keys) == len(changes) + 1
    # None and "" are different system prompts; 0 and 0.0 the same temperature; a trailing
    # slash on the base URL does not matter.
    assert cache_key(**{**BASE, "system": ""}) != cache_key(**{**BASE, "system": None})  # type: ignore[arg-type]
    assert cache_key(**{**BASE, "temperature": 0}) == key  # type: ignore[arg-type]
    assert cache_key(**{**BASE, "api_base": "https://api.openai.com/v1/"}) == key  # type: ignore[arg-type]
    # field boundaries cannot be shifted to forge a collision
    assert cache_key(**{**BASE, "model": "ab", "system": "c"}) != cache_key(**{**BASE, "model": "a", "system": "bc"})  # type: ignore[arg-type]


def test_keys_ignore_stream_and_limits() -> None:
    # The key function has no stream or limit parameters: a streamed run and a plain run, or
    # runs with different concurrency/rpm, share entries.
    import inspect

    params = set(inspect.signature(cache_key).parameters)
    assert params == {"provider", "api_base", "model", "messages_json", "system", "temperature", "max_tokens", "params"}
    assert cache_key(**BASE) == cache_key(**dict(BASE))  # type: ignore[arg-type]
    # Body parameters are part of the key; none at all keeps the keys of earlier versions.
    assert cache_key(**BASE, params={}) == cache_key(**BASE)  # type: ignore[arg-type]
    assert cache_key(**BASE, params={"seed": 1}) != cache_key(**BASE, params={"seed": 2})  # type: ignore[arg-type]
    assert cache_key(**BASE, params={"a": 1, "b": 2}) == cache_key(**BASE, params={"b": 2, "a": 1})  # type: ignore[arg-type]


def test_batched_keys_match_single_keys() -> None:
    payloads = [f'[{{"role":"user","content":"q{i}"}}]' for i in range(50)]
    shared = {k: v for k, v in BASE.items() if k != "messages_json"}
    assert cache_keys(payloads=payloads, **shared) == [cache_key(messages_json=p, **shared) for p in payloads]  # type: ignore[arg-type]


def test_round_trip(tmp_path: Path) -> None:
    with ResponseCache.open(tmp_path / "c.sqlite") as cache:
        keys = [cache_key(**{**BASE, "messages_json": str(i)}) for i in range(3)]  # type: ignore[arg-type]
        assert cache.lookup(keys) == {}
        stored = cache.store(
            [(keys[0], result(0)), (keys[1], {**result(1), "status": "error"}), (keys[2], {**result(2), "output": None})]
        )
        assert stored == 1  # only ok rows with an output
        assert cache.lookup(keys) == {keys[0]: result(0)}
        # The first answer for a key is kept.
        cache.store([(keys[0], {**result(0), "output": "other"})])
        assert cache.lookup([keys[0]])[keys[0]]["output"] == "answer 0"
        assert len(cache) == 1
    # persisted, in WAL mode
    with ResponseCache.open(tmp_path / "c.sqlite") as cache:
        assert cache.lookup([keys[0]])[keys[0]] == result(0)
    conn = sqlite3.connect(tmp_path / "c.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_lookup_is_one_query_per_chunk(tmp_path: Path) -> None:
    n = 1234
    keys = [cache_key(**{**BASE, "messages_json": str(i)}) for i in range(n)]  # type: ignore[arg-type]
    with ResponseCache.open(tmp_path / "c.sqlite") as cache:
        cache.store([(k, result(i)) for i, k in enumerate(keys) if i % 2 == 0])
        statements: list[str] = []
        cache._conn.set_trace_callback(statements.append)
        found = cache.lookup(keys + keys[:10])  # duplicates are looked up once
        cache._conn.set_trace_callback(None)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) == -(-n // LOOKUP_CHUNK) == 3
    assert len(found) == (n + 1) // 2
    assert found[keys[4]]["prompt_tokens"] == 14


def test_hits_become_executor_shaped_results(tmp_path: Path) -> None:
    keys = [cache_key(**{**BASE, "messages_json": str(i)}) for i in range(4)]  # type: ignore[arg-type]
    hits = {keys[1]: result(1), keys[3]: result(3)}
    table = hits_table([10, 11, 12, 13], keys, hits)
    assert table.column("_row").to_pylist() == [11, 13]
    assert table.column("status").to_pylist() == ["ok", "ok"]
    assert table.column("output").to_pylist() == ["answer 1", "answer 3"]
    assert table.column("attempts").to_pylist() == [0, 0]
    assert table.column("latency_ms").to_pylist() == [0.0, 0.0]
    assert table.column("request_hash").to_pylist() == [f"{1:032x}", f"{3:032x}"]


WRITER = textwrap.dedent(
    """
    import sys
    from runner.store.cache import ResponseCache
    path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    cache = ResponseCache.open(path)
    for start in range(0, n, 25):
        rows = [(f"{tag}-{i}", {"output": f"{tag} {i}", "prompt_tokens": i}) for i in range(start, start + 25)]
        cache.store(rows)
        cache.lookup([key for key, _ in rows])
    cache.close()
    """
)


def test_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    n = 1000
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag, str(n)], stderr=subprocess.PIPE, text=True)
        for tag in ("a", "b")
    ]
    # This process writes and reads too, meanwhile.
    with ResponseCache.open(path) as cache:
        for start in range(0, n, 50):
            cache.store([(f"c-{i}", {"output": str(i)}) for i in range(start, start + 50)])
            cache.lookup([f"a-{i}" for i in range(start, start + 50)])
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        assert len(cache) == 3 * n
        assert cache.lookup(["a-999", "b-0", "c-500"])["b-0"]["output"] == "b 0"


def test_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMPT_RUNNER_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_path() == tmp_path / "xdg" / "prompt-runner" / "cache.sqlite"
    with ResponseCache.open() as cache:
        cache.store([("k", {"output": "v"})])
    assert (tmp_path / "xdg" / "prompt-runner" / "cache.sqlite").is_file()
    monkeypatch.setenv("PROMPT_RUNNER_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_path() == tmp_path / "mine" / "cache.sqlite"
    monkeypatch.delenv("PROMPT_RUNNER_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_path() == tmp_path / "home" / ".cache" / "prompt-runner" / "cache.sqlite"


def test_unusable_location_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CacheError, match=r"cannot open the response cache"):
        ResponseCache.open(blocker / "sub" / "cache.sqlite")


def test_store_results_keeps_only_ok_rows(tmp_path: Path) -> None:
    table = hits_table([0, 1, 2], ["k0", "k1", "k2"], {"k0": result(0), "k1": result(1), "k2": result(2)})
    table = table.set_column(table.schema.get_field_index("status"), "status", pa.array(["ok", "error", "ok"]))
    table = table.set_column(table.schema.get_field_index("output"), "output", pa.array(["answer 0", None, "answer 2"]))
    with ResponseCache.open(tmp_path / "c.sqlite") as cache:
        assert cache.store_results(["a", "b", "c"], table) == 2
        assert set(cache.lookup(["a", "b", "c"])) == {"a", "c"}
        assert cache.lookup(["c"])["c"] == result(2)
        with pytest.raises(ValueError):
            cache.store_results(["a"], table)


def test_an_older_cache_file_gains_the_new_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE responses (key TEXT PRIMARY KEY, output TEXT, finish_reason TEXT, prompt_tokens INTEGER,"
        " completion_tokens INTEGER, http_status INTEGER, request_hash TEXT, created_at REAL) WITHOUT ROWID"
    )
    conn.execute("INSERT INTO responses VALUES ('old', 'kept', 'stop', 1, 2, 200, 'h', 0)")
    conn.commit()
    conn.close()
    with ResponseCache.open(path) as cache:
        assert cache.lookup(["old"])["old"]["output"] == "kept"
        calls = '[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]'
        cache.store([("new", {"output": "", "tool_calls": calls, "reasoning_tokens": 5, "cached_prompt_tokens": 3})])
        hit = cache.lookup(["new"])["new"]
    assert (hit["tool_calls"], hit["reasoning_tokens"], hit["cached_prompt_tokens"]) == (calls, 5, 3)
    table = hits_table([4], ["new"], {"new": hit})
    assert table.column("tool_calls").to_pylist() == [calls]
