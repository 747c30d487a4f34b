"""Bad input and usage: one clear line naming the place, exit 2, and not one request sent."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e import base_for, cli, mock, stats, write_jsonl


def run_against_mock(tmp_path: Path, input_path: str, *extra: str) -> tuple[int, str, int]:
    server = mock()
    res = cli(
        "run", input_path, "-o", str(tmp_path / "out.parquet"), "--provider", "openai", "--model", "m",
        "--api-base", base_for(server, "openai"), *extra,
        env={"OPENAI_API_KEY": server.api_key},
    )
    return res.code, res.stderr, stats(server)["requests"]


def assert_refused(code: int, stderr: str, requests: int, *needles: str) -> None:
    assert code == 2, stderr
    assert requests == 0
    assert "Traceback" not in stderr
    error_lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, stderr
    for needle in needles:
        assert needle in error_lines[0], error_lines[0]


def good_rows(n: int) -> list[dict[str, str]]:
    return [{"id": f"id{i}", "prompt": f"prompt {i}"} for i in range(n)]


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    lines = [f'{{"prompt": "p{i}"}}' for i in range(5000)]
    lines[4120] = '{"prompt": "unterminated}'
    path.write_text("\n".join(lines) + "\n")
    assert_refused(*run_against_mock(tmp_path, str(path)), "bad.jsonl:4121", "JSON")


def test_missing_prompt_column_lists_the_columns(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "why", "answer": "because"}])
    assert_refused(*run_against_mock(tmp_path, str(path)), "q.jsonl", "question", "answer")


def test_empty_id_is_named(tmp_path: Path) -> None:
    rows = good_rows(30)
    rows[17]["id"] = ""
    path = write_jsonl(tmp_path / "ids.jsonl", rows)
    assert_refused(*run_against_mock(tmp_path, str(path), "--id-column", "id"), "ids.jsonl:18")


def test_duplicate_id_is_named(tmp_path: Path) -> None:
    rows = good_rows(3000)
    rows[2500]["id"] = "id7"
    path = write_jsonl(tmp_path / "ids.jsonl", rows)
    assert_refused(*run_against_mock(tmp_path, str(path), "--id-column", "id"), "ids.jsonl:2501", "id7")


def test_template_naming_a_missing_column(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"question": "why"}])
    code, err, requests = run_against_mock(tmp_path, str(path), "--template", "Q: {{ question }} {{ context }}")
    assert_refused(code, err, requests, "context", "question")


def test_missing_id_column(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", good_rows(3))
    assert_refused(*run_against_mock(tmp_path, str(path), "--id-column", "key"), "key")


def test_missing_input_file(tmp_path: Path) -> None:
    assert_refused(*run_against_mock(tmp_path, str(tmp_path / "nope.jsonl")), "nope.jsonl")


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--concurrency", "0"], "--concurrency"),
        (["--timeout", "0"], "--timeout"),
        (["--provider", "cohere"], "--provider"),
    ],
)
def test_bad_options(tmp_path: Path, flags: list[str], needle: str) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", good_rows(3))
    assert_refused(*run_against_mock(tmp_path, str(path), *flags), needle)


def test_missing_key(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", good_rows(3))
    res = cli("run", str(path), "-o", str(tmp_path / "o.parquet"), "--provider", "anthropic", "--model", "m",
              env={"ANTHROPIC_API_KEY": ""})
    assert res.code == 2 and "ANTHROPIC_API_KEY" in res.stderr and "Traceback" not in res.stderr


def test_unwritable_output(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", good_rows(3))
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_refused(*run_against_mock(tmp_path, str(path), "-o", str(blocker / "sub" / "out.parquet")), "out.parquet")
