"""Scoring methods on output-shaped tables: known pass rates, error rows, thresholds."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from outputs import output_table

from runner.errors import InputError
from runner.evals.score import META_SCORE, ScoreSpec, check_thresholds, pass_rates, score_table


def scored(rows: list[dict[str, Any]], spec: ScoreSpec, expected_type: pa.DataType = pa.string()) -> pa.Table:
    table = output_table(rows, {"answer": expected_type} if any("answer" in r for r in rows) else None)
    return score_table(table, spec)


def test_exact_is_stripped_and_case_sensitive() -> None:
    rows = [
        {"output": "  Paris\n", "answer": "Paris"},
        {"output": "paris", "answer": "Paris"},
        {"output": "Paris.", "answer": "Paris"},
        {"output": "64", "answer": " 64 "},
        {"status": "error", "answer": "x"},
    ]
    table = scored(rows, ScoreSpec(method="exact", expected_column="answer"))
    assert table.column("passed").to_pylist() == [True, False, False, True, False]
    assert table.column("score").to_pylist() == [1.0, 0.0, 0.0, 1.0, None]
    assert pass_rates(table) == {"mock-echo": (0.4, 2, 5)}


def test_exact_compares_numbers_as_written() -> None:
    rows = [{"output": "64", "answer": 64.0}, {"output": "2.5", "answer": 2.5}, {"output": "3", "answer": 4.0}]
    table = scored(rows, ScoreSpec(method="exact", expected_column="answer"), pa.float64())
    assert table.column("passed").to_pylist() == [True, True, False]


def test_contains_is_case_insensitive() -> None:
    rows = [
        {"output": "The capital is PARIS.", "answer": "Paris"},
        {"output": "Echo: what is the capital?", "answer": "Paris"},
        {"output": None, "status": "error", "answer": "Paris"},
        {"output": "1 + 1 = 2", "answer": "2"},
    ]
    table = scored(rows, ScoreSpec(method="contains", expected_column="answer"))
    assert table.column("passed").to_pylist() == [True, False, False, True]


def test_regex_from_the_expected_column_or_a_fixed_pattern() -> None:
    rows = [
        {"output": "Answer: 42", "answer": r"\b42\b"},
        {"output": "Answer: 421", "answer": r"\b42\b"},
        {"output": "yes", "answer": "(?i)^YES$"},
        {"output": "anything", "answer": "(broken"},  # a bad pattern fails its row only
    ]
    table = scored(rows, ScoreSpec(method="regex", expected_column="answer"))
    assert table.column("passed").to_pylist() == [True, False, True, False]
    fixed = scored(rows, ScoreSpec(method="regex", pattern=r"^Answer: \d+$"))
    assert fixed.column("passed").to_pylist() == [True, True, False, False]


def test_numeric_takes_the_first_number_within_tolerance() -> None:
    rows = [
        {"output": "The result is 64.", "answer": "64"},
        {"output": "about 3.14159", "answer": "3.1416"},
        {"output": "1,234.5 apples and 7 pears", "answer": "1234.5"},
        {"output": "-2e3", "answer": "-2000"},
        {"output": "no number here", "answer": "1"},
        {"output": "63", "answer": "64"},
    ]
    strict = scored(rows, ScoreSpec(method="numeric", expected_column="answer"))
    assert strict.column("passed").to_pylist() == [True, False, True, True, False, False]
    loose = scored(rows, ScoreSpec(method="numeric", expected_column="answer", tolerance=1.0))
    assert loose.column("passed").to_pylist() == [True, True, True, True, False, True]


def test_numeric_with_a_numeric_expected_column() -> None:
    rows = [{"output": "64", "answer": 64}, {"output": "x 7", "answer": 8}]
    table = scored(rows, ScoreSpec(method="numeric", expected_column="answer"), pa.int64())
    assert table.column("passed").to_pylist() == [True, False]


SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name"]}


def test_json_parses_and_validates_a_schema() -> None:
    rows = [
        {"output": '{"name": "Ada", "age": 36}'},
        {"output": '```json\n{"name": "Bob"}\n```'},  # a Markdown fence is ignored
        {"output": '{"age": 3}'},  # misses a required key
        {"output": "not json"},
        {"output": '{"name": "Eve", "age": "old"}'},
        {"status": "error"},
    ]
    plain = scored(rows, ScoreSpec(method="json"))
    assert plain.column("passed").to_pylist() == [True, True, True, False, True, False]
    checked = scored(rows, ScoreSpec(method="json", schema=SCHEMA))
    assert checked.column("passed").to_pylist() == [True, True, False, False, False, False]
    assert pass_rates(checked)["mock-echo"] == (2 / 6, 2, 6)


def test_json_compares_with_the_expected_value() -> None:
    rows = [
        {"output": '{"a": 1, "b": [1, 2]}', "answer": '{"b": [1, 2], "a": 1}'},
        {"output": '{"a": 2}', "answer": '{"a": 1}'},
        {"output": "[1, 2]", "answer": "[1, 2]"},
    ]
    table = scored(rows, ScoreSpec(method="json", expected_column="answer"))
    assert table.column("passed").to_pylist() == [True, False, True]


def test_a_user_python_function(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_scorer.py").write_text(
        "def word_overlap(output, expected, row):\n"
        "    want = set(expected.lower().split())\n"
        "    got = set((output or '').lower().split())\n"
        "    assert row['id'] and 'answer' in row\n"
        "    return len(want & got) / len(want)\n"
        "def strict(output, expected, row):\n"
        "    return output == expected\n"
        "def broken(output, expected, row):\n"
        "    return 7\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = [
        {"output": "red green blue", "answer": "red green blue"},
        {"output": "red green", "answer": "red green blue yellow"},
        {"output": "red", "answer": "red green blue"},
        {"status": "error", "answer": "red"},
    ]
    table = scored(rows, ScoreSpec(method="python:my_scorer:word_overlap", expected_column="answer"))
    assert table.column("score").to_pylist() == [1.0, 0.5, pytest.approx(1 / 3), None]
    assert table.column("passed").to_pylist() == [True, True, False, False]
    boolean = scored(rows, ScoreSpec(method="python:my_scorer:strict", expected_column="answer"))
    assert boolean.column("score").to_pylist() == [1.0, 0.0, 0.0, None]
    with pytest.raises(InputError, match=r"python:my_scorer:broken returned 7 for row id r0: expected a bool or a number in \[0, 1\]"):
        scored(rows, ScoreSpec(method="python:my_scorer:broken", expected_column="answer"))
    with pytest.raises(InputError, match=r"score.method: 'my_scorer' has no function 'nope'"):
        scored(rows, ScoreSpec(method="python:my_scorer:nope"))
    with pytest.raises(InputError, match=r"score.method: cannot import 'no_such_module_xyz'"):
        scored(rows, ScoreSpec(method="python:no_such_module_xyz:f"))
    sys.modules.pop("my_scorer", None)


def test_missing_expected_column_is_one_line() -> None:
    with pytest.raises(InputError, match=r"^score.expected_column: column 'answer' is not in the output \(columns: id, model"):
        score_table(output_table([{"output": "x"}]), ScoreSpec(method="exact", expected_column="answer"))


def test_an_expected_column_renamed_by_the_output_schema() -> None:
    # An input column named like a result column is kept as `input.<name>`.
    table = output_table([{"output": "ok", "input.output": "ok"}], {"input.output": pa.string()})
    table = score_table(table, ScoreSpec(method="exact", expected_column="output"))
    assert table.column("passed").to_pylist() == [True]


def test_scoring_keeps_metadata_and_replaces_old_scores() -> None:
    table = output_table([{"output": "a", "answer": "a"}], {"answer": pa.string()})
    table = table.replace_schema_metadata({b"prompt_runner.config": b"{}"})
    once = score_table(table, ScoreSpec(method="exact", expected_column="answer", min_pass_rate=0.9))
    twice = score_table(once, ScoreSpec(method="contains", expected_column="answer"))
    assert twice.column_names.count("score") == 1 and twice.column_names[-2:] == ["score", "passed"]
    meta = twice.schema.metadata
    assert meta[b"prompt_runner.config"] == b"{}"
    assert json.loads(meta[META_SCORE])["method"] == "contains"
    assert json.loads(once.schema.metadata[META_SCORE])["min_pass_rate"] == 0.9


def test_pass_rates_per_model_and_thresholds() -> None:
    rows = []
    for i in range(100):
        rows.append({"model": "gpt-4o-mini", "output": "yes" if i < 72 else "no", "answer": "yes"})
        rows.append({"model": "claude", "output": "yes" if i < 90 else "no", "answer": "yes"})
    rows.append({"model": "claude", "status": "error", "answer": "yes"})
    table = scored(rows, ScoreSpec(method="exact", expected_column="answer"))
    rates = pass_rates(table)
    assert rates["gpt-4o-mini"] == (0.72, 72, 100)
    assert rates["claude"] == (90 / 101, 90, 101)
    assert check_thresholds(table, 0.8) == ["gpt-4o-mini: pass rate 0.72 < 0.80 (short by 0.08)"]
    assert check_thresholds(table, 0.7) == []
    assert check_thresholds(table, None) == []
    # A rate just under the threshold is never shown as equal to it, nor the gap as zero.
    assert check_thresholds(table, 0.8911) == [
        "gpt-4o-mini: pass rate 0.7200 < 0.8911 (short by 0.1711)",
        "claude: pass rate 0.89109 < 0.89110 (short by 0.00001)",
    ]
    assert check_thresholds(table, 0.895) == [
        "gpt-4o-mini: pass rate 0.720 < 0.895 (short by 0.175)",
        "claude: pass rate 0.891 < 0.895 (short by 0.004)",
    ]


def test_pass_rates_need_a_scored_table() -> None:
    with pytest.raises(InputError, match="not scored"):
        pass_rates(output_table([{"output": "x"}]))


def test_empty_table_scores() -> None:
    table = score_table(output_table([], {"answer": pa.string()}), ScoreSpec(method="contains", expected_column="answer"))
    assert table.num_rows == 0 and pass_rates(table) == {}


def test_an_input_column_named_score_is_kept() -> None:
    table = output_table([{"output": "a", "answer": "a", "score": "9/10"}], {"answer": pa.string(), "score": pa.string()})
    table = score_table(table, ScoreSpec(method="exact", expected_column="answer"))
    assert table.column("input.score").to_pylist() == ["9/10"]
    assert table.column("score").to_pylist() == [1.0]


def test_python_scores_many_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "len_scorer.py").write_text("def f(output, expected, row):\n    return row['n'] % 2 == 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = [{"output": "x", "n": i} for i in range(10_000)]
    table = score_table(output_table(rows, {"n": pa.int64()}), ScoreSpec(method="python:len_scorer:f"))
    assert pass_rates(table)["mock-echo"] == (0.5, 5000, 10_000)
    sys.modules.pop("len_scorer", None)
