"""Tests for runner.inputs.dataset: input resolution, bounded chunked reading, error lines, preflight scan."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runner.inputs.dataset import Chunk, ScanSummary, iter_chunks, resolve_inputs, scan, unify
from runner.errors import InputError, RunnerError
from runner.inputs.render import RequestSpec


def write_lines(path: Path, lines: list[str]) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write_lines(path, [json.dumps(r) for r in rows])


def rows(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"r{i}", "prompt": f"p{i}", "n": i} for i in range(start, start + n)]


def read_all(paths: list[Path], chunk_rows: int = 8192) -> tuple[list[Chunk], list[dict]]:
    chunks = list(iter_chunks(paths, chunk_rows))
    return chunks, [r for c in chunks for r in c.table.to_pylist()]


# -- resolve_inputs -------------------------------------------------------------------------


def test_resolve_single_file_kinds(tmp_path: Path) -> None:
    for name in ("a.jsonl", "b.jsonl.gz", "c.ndjson", "d.parquet"):
        (tmp_path / name).write_bytes(b"")
        assert resolve_inputs(str(tmp_path / name)) == [tmp_path / name]


def test_resolve_directory_sorted_non_recursive_supported_only(tmp_path: Path) -> None:
    for name in ("b.jsonl", "a.parquet", "c.jsonl.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.jsonl").write_bytes(b"")
    assert resolve_inputs(str(tmp_path)) == [tmp_path / "a.parquet", tmp_path / "b.jsonl", tmp_path / "c.jsonl.gz"]


def test_resolve_glob(tmp_path: Path) -> None:
    for name in ("x2.jsonl", "x1.jsonl", "y.jsonl"):
        (tmp_path / name).write_bytes(b"")
    assert resolve_inputs(str(tmp_path / "x*.jsonl")) == [tmp_path / "x1.jsonl", tmp_path / "x2.jsonl"]


@pytest.mark.parametrize(
    ("setup", "spec", "needle"),
    [
        (None, "missing.jsonl", "missing.jsonl: no such file or directory"),
        ("data.csv", "data.csv", "data.csv: unsupported file type"),
        (None, "nothing-*.jsonl", "nothing-*.jsonl: pattern matches nothing"),
        ("only.txt", "only*", "only*: pattern matches no input files"),
        ("dir/", "dir", "dir: directory has no input files"),
    ],
)
def test_resolve_errors_name_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup: str | None, spec: str, needle: str
) -> None:
    monkeypatch.chdir(tmp_path)
    if setup and setup.endswith("/"):
        (tmp_path / setup).mkdir()
    elif setup:
        (tmp_path / setup).write_text("x")
    with pytest.raises(InputError) as info:
        resolve_inputs(spec)
    assert str(info.value).startswith(needle)
    assert isinstance(info.value, RunnerError)


# -- reading --------------------------------------------------------------------------------


def test_jsonl_chunk_boundaries(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", rows(10))
    chunks, got = read_all([path], chunk_rows=3)
    assert [c.num_rows for c in chunks] == [3, 3, 3, 1]
    assert [c.first_line for c in chunks] == [1, 4, 7, 10]
    assert got == rows(10)
    assert all(c.path == path for c in chunks)


def test_jsonl_blank_lines_skipped_and_lines_kept(tmp_path: Path) -> None:
    lines = [json.dumps(r) for r in rows(5)]
    path = write_lines(tmp_path / "d.jsonl", ["", lines[0], lines[1], "   ", "", lines[2], lines[3], "", lines[4], ""])
    chunks, got = read_all([path], chunk_rows=2)
    assert got == rows(5)
    assert [c.first_line for c in chunks] == [2, 6, 9]
    # Row 1 of the second chunk is line 7; row 1 of the first chunk is line 3.
    assert chunks[0].place(1) == f"{path}:3"
    assert chunks[1].line_of(1) == 7
    # A chunk with blank lines inside maps rows to their real lines.
    chunks, _ = read_all([path], chunk_rows=3)
    assert [chunks[0].line_of(i) for i in range(3)] == [2, 3, 6]


def test_crlf_bom_and_missing_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "win.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "a"}\r\n\r\n{"prompt": "b"}\r\n{"prompt": "c"}')
    chunks, got = read_all([path])
    assert got == [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}]
    assert [chunks[0].line_of(i) for i in range(3)] == [1, 3, 4]


def test_gz_and_parquet_and_file_order(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl.gz", rows(4))
    b = tmp_path / "b.parquet"
    pq.write_table(pa.Table.from_pylist(rows(5, start=4)), b, row_group_size=2)
    chunks, got = read_all([a, b], chunk_rows=3)
    assert got == rows(9)
    assert [(c.path.name, c.first_line, c.num_rows) for c in chunks] == [
        ("a.jsonl.gz", 1, 3),
        ("a.jsonl.gz", 4, 1),
        ("b.parquet", 1, 3),
        ("b.parquet", 4, 2),
    ]
    assert chunks[3].place(1) == f"{b}:row 5"


def test_directory_and_glob_read_end_to_end(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "1.jsonl", rows(2))
    write_jsonl(tmp_path / "2.jsonl", rows(2, start=2))
    _, got = read_all(resolve_inputs(str(tmp_path)))
    assert [r["n"] for r in got] == [0, 1, 2, 3]
    _, got = read_all(resolve_inputs(str(tmp_path / "2*")))
    assert [r["n"] for r in got] == [2, 3]


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    lines = [json.dumps(r) for r in rows(20)]
    lines[16] = '{"id": "x" "prompt": "y"}'
    path = write_lines(tmp_path / "data.jsonl", lines)
    with pytest.raises(InputError) as info:
        list(iter_chunks([path], chunk_rows=5))
    assert str(info.value) == f"{path}:17: invalid JSON: Expecting ',' delimiter (column 12)"


def test_invalid_json_line_counts_blank_lines(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", ['{"a": 1}', "", "", '{"a": 2}', "{oops"])
    with pytest.raises(InputError, match=r"d\.jsonl:5: invalid JSON: "):
        list(iter_chunks([path]))


@pytest.mark.parametrize(
    ("line", "kind"), [("[1, 2]", "an array"), ('"text"', "a string"), ("null", "null"), ("3", "a number")]
)
def test_non_object_line(tmp_path: Path, line: str, kind: str) -> None:
    path = write_lines(tmp_path / "d.jsonl", ['{"a": 1}', line, '{"a": 3}'])
    with pytest.raises(InputError) as info:
        list(iter_chunks([path]))
    assert str(info.value) == f"{path}:2: expected a JSON object, got {kind}"


def test_conflicting_nested_types_name_the_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", ['{"a": {"x": 1}, "b": 1}', '{"a": {"x": 2}, "b": "s"}', '{"a": [1]}'])
    with pytest.raises(InputError) as info:
        list(iter_chunks([path]))
    assert str(info.value) == f"{path}:3: field 'a' is an array here but an object on line 1"


def test_bounded_reading_many_small_chunks(tmp_path: Path) -> None:
    n, chunk_rows = 5000, 64
    path = write_jsonl(tmp_path / "big.jsonl", rows(n))
    sizes = []
    expected_first = 1
    for chunk in iter_chunks([path], chunk_rows):
        assert chunk.num_rows <= chunk_rows
        assert chunk.first_line == expected_first
        expected_first += chunk.num_rows
        sizes.append(chunk.num_rows)
    assert sum(sizes) == n
    assert len(sizes) == -(-n // chunk_rows)


def test_mixed_scalars_in_a_block_are_coerced_not_errors(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", ['{"b": 1}', '{"b": "s"}'])
    _, got = read_all([path])
    assert got == [{"b": "1"}, {"b": "s"}]


def test_truncated_gzip_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"prompt": "a"}\n' * 1000)[:-20])
    with pytest.raises(InputError, match=r"d\.jsonl\.gz:\d+: cannot read: "):
        list(iter_chunks([path]))


def test_chunk_schemas_may_differ_and_unify_promotes(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "d.jsonl", ['{"a": 1}', '{"a": 2}', '{"a": 2.5, "b": "x"}'])
    chunks = list(iter_chunks([path], chunk_rows=2))
    assert chunks[0].table.schema.field("a").type == pa.int64()
    merged = unify([c.table for c in chunks])
    assert merged.column("a").to_pylist() == [1.0, 2.0, 2.5]
    assert merged.column("b").to_pylist() == [None, None, "x"]


def test_unify_incompatible_types_become_json_text() -> None:
    a = pa.table({"a": [1, None], "k": ["x", "y"]})
    b = pa.table({"a": pa.array([{"x": 1}]), "k": ["z"]})
    c = pa.table({"a": pa.array([[1, 2]]), "k": ["w"]})
    merged = unify([a, b, c])
    assert merged.column("a").to_pylist() == ["1", None, '{"x":1}', "[1,2]"]
    assert merged.column("k").to_pylist() == ["x", "y", "z", "w"]


# -- scan -----------------------------------------------------------------------------------


def test_scan_counts_rows_columns_files(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", rows(7))
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "z", "extra": 1}])
    result = scan([a, b], RequestSpec(id_column=None), chunk_rows=3)
    assert result == ScanSummary(rows=8, columns=["id", "prompt", "n", "extra"], files=[a, b])


def test_scan_duplicate_id_named_with_line(tmp_path: Path) -> None:
    data = rows(10)
    data[8]["id"] = "r2"
    path = write_jsonl(tmp_path / "d.jsonl", data)
    with pytest.raises(InputError) as info:
        scan([path], RequestSpec(id_column="id"), chunk_rows=4)
    assert str(info.value) == f"{path}:9: duplicate id 'r2'"


def test_scan_duplicate_id_within_chunk_and_across_files(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", rows(3))
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "r9", "prompt": "x"}, {"id": "r1", "prompt": "y"}])
    with pytest.raises(InputError, match=r"b\.jsonl:2: duplicate id 'r1'$"):
        scan([a, b], RequestSpec(id_column="id"))
    c = write_jsonl(tmp_path / "c.jsonl", [{"id": "q", "prompt": "x"}, {"id": "q", "prompt": "y"}])
    with pytest.raises(InputError, match=r"c\.jsonl:2: duplicate id 'q'$"):
        scan([c], RequestSpec(id_column="id"))


@pytest.mark.parametrize("bad", ["", "  ", None])
def test_scan_empty_or_missing_id_named_with_line(tmp_path: Path, bad: str | None) -> None:
    data = rows(5)
    data[3]["id"] = bad
    path = write_jsonl(tmp_path / "d.jsonl", data)
    with pytest.raises(InputError) as info:
        scan([path], RequestSpec(id_column="id"), chunk_rows=2)
    assert str(info.value).startswith(f"{path}:4: ")
    assert ("empty id" if bad is not None else "missing id") in str(info.value)


def test_scan_numeric_ids_are_strings_and_checked(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"k": 1, "prompt": "a"}, {"k": 2, "prompt": "b"}, {"k": 1, "prompt": "c"}]
    )
    with pytest.raises(InputError, match=r"d\.jsonl:3: duplicate id '1'$"):
        scan([path], RequestSpec(id_column="k"))


def test_scan_without_id_column_allows_repeated_values(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "same", "prompt": "a"}, {"id": "same", "prompt": "b"}])
    assert scan([path], RequestSpec()).rows == 2


def test_scan_missing_columns_lists_columns(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(InputError) as info:
        scan([path], RequestSpec())
    assert str(info.value).startswith(f"{path}: no 'prompt' or 'messages' column (columns: question, answer)")


def test_scan_validates_rows_before_sending(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a"}, {"prompt": "b"}, {"prompt": ""}, {"prompt": "d"}])
    with pytest.raises(InputError) as info:
        scan([path], RequestSpec(), chunk_rows=2)
    assert str(info.value) == f"{path}:3: empty or missing 'prompt'"


def test_scan_parquet_errors_use_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["a", None, "c"]}), path)
    with pytest.raises(InputError) as info:
        scan([path], RequestSpec())
    assert str(info.value) == f"{path}:row 2: empty or missing 'prompt'"


def test_corrupt_parquet_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match=r"d\.parquet: cannot read Parquet"):
        list(iter_chunks([path]))


def test_corrupt_gzip_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(b"not gzip")
    with pytest.raises(InputError, match=r"d\.jsonl\.gz:1: cannot read"):
        list(iter_chunks([path]))


def test_reading_again_with_the_scans_types_gives_the_same_chunks(tmp_path: Path) -> None:
    lines = []
    for i in range(40):
        row: dict = {"prompt": f"q{i} 数据", "n": i if i % 3 else i + 0.5, "tags": [f"t{i}"] * (i % 3)}
        if i % 4 == 0:
            row["meta"] = {"k": i, "s": None if i % 8 else "x"}
        if i % 5 == 0:
            row["late"] = None
        lines.append(json.dumps(row))
    lines[17:17] = ["", "   "]  # blank lines inside a chunk
    path = write_lines(tmp_path / "d.jsonl", lines)
    summary = scan([path], RequestSpec(), chunk_rows=7)
    assert len(summary.schemas[path]) == 6
    fresh = list(iter_chunks([path], chunk_rows=7))
    again = list(iter_chunks([path], chunk_rows=7, schemas=summary.schemas))
    assert [c.table for c in again] == [c.table for c in fresh]
    assert [c.table.schema for c in again] == [c.table.schema for c in fresh]
    assert [(c.first_line, c.row_lines) for c in again] == [(c.first_line, c.row_lines) for c in fresh]


def test_chunks_parsed_ahead_on_threads_come_in_order_and_so_do_their_errors(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", rows(50))
    assert [c.table for c in iter_chunks([path], 4, ahead=2)] == [c.table for c in iter_chunks([path], 4)]
    lines = [json.dumps(r) for r in rows(50)]
    lines[13] = "{oops"  # chunk 4 of 4-row chunks
    lines[30] = "[1]"  # chunk 8: parsed at the same time or earlier on another thread
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(InputError, match=r"bad\.jsonl:14: invalid JSON"):
        list(iter_chunks([path], 4, ahead=3))
    # A truncated file with a bad line before the cut, near it or none: the same first error.
    for bad in (13, 1960, 1994, 1996, None):
        lines = [json.dumps(r) for r in rows(2000)]
        if bad is not None:
            lines[bad] = "{oops"
        gz = tmp_path / "cut.jsonl.gz"
        gz.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode())[:-30])
        with pytest.raises(InputError) as one_by_one:
            list(iter_chunks([gz], 4))
        with pytest.raises(InputError) as ahead:
            list(iter_chunks([gz], 4, ahead=2))
        assert str(ahead.value) == str(one_by_one.value)
