"""Tests for runner.inputs.render: request source choice, column checks, exact messages JSON, ids."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from runner.inputs.dataset import iter_chunks
from runner.errors import InputError
from runner.inputs.render import Renderer, RequestSpec, plan


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def planned(table: pa.Table, spec: RequestSpec | None = None, where: str = "d.jsonl") -> Renderer:
    return plan(table.column_names, spec or RequestSpec(), where)


def error_of(fn, *args, **kwargs) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# -- plan -----------------------------------------------------------------------------------


def test_plan_prefers_template_then_messages_then_prompt() -> None:
    cols = ["prompt", "messages", "q"]
    assert plan(cols, RequestSpec(template="{{ q }}"), "f").source == "template"
    assert plan(cols, RequestSpec(), "f").source == "messages"
    assert plan(["prompt", "q"], RequestSpec(), "f").source == "prompt"
    assert plan(["custom_id", "method", "url", "body"], RequestSpec(), "f").source == "batch"


def test_plan_without_source_lists_columns() -> None:
    msg = error_of(plan, ["question", "answer"], RequestSpec(), "data.jsonl")
    assert msg == (
        "data.jsonl: no 'prompt' or 'messages' column (columns: question, answer); "
        "pass --template to build prompts from these columns"
    )


def test_plan_template_missing_column() -> None:
    msg = error_of(plan, ["question", "answer"], RequestSpec(template="Q: {{ question }} {{ context }}"), "data.jsonl")
    assert msg == "template uses column 'context' that data.jsonl does not have (columns: question, answer)"


def test_plan_template_ignores_loop_variables_and_globals() -> None:
    spec = RequestSpec(template="{% for x in items %}{{ x }}{% endfor %}{% set y = 1 %}{{ y }}{{ range(2)|list }}")
    assert plan(["items"], spec, "f").columns == ("items",)


def test_plan_template_syntax_error_names_line() -> None:
    msg = error_of(plan, ["q"], RequestSpec(template="line one\n{{ q }\n"), "f")
    assert msg.startswith("template line 2: syntax error: ")
    assert "\n" not in msg


def test_plan_missing_id_column_lists_columns() -> None:
    msg = error_of(plan, ["prompt", "key"], RequestSpec(id_column="uid"), "data.jsonl")
    assert msg == "data.jsonl: id column 'uid' not found (columns: prompt, key)"


# -- render ---------------------------------------------------------------------------------


def test_render_prompt_exact_json() -> None:
    table = pa.table({"prompt": ["hi", 'say "ok"\n', "héllo ✓"]})
    out = planned(table).render(table)
    assert out == [
        '[{"role":"user","content":"hi"}]',
        '[{"role":"user","content":"say \\"ok\\"\\n"}]',
        '[{"role":"user","content":"héllo ✓"}]',
    ]
    assert [json.loads(s)[0]["content"] for s in out] == table.column("prompt").to_pylist()


def test_render_template_exact_json() -> None:
    table = pa.table({"question": ["2+2?", "capital of France?"], "n": [1, 2]})
    spec = RequestSpec(template="Q{{ n }}: {{ question }}\n", system="ignored here")
    assert planned(table, spec).render(table) == [
        '[{"role":"user","content":"Q1: 2+2?\\n"}]',
        '[{"role":"user","content":"Q2: capital of France?\\n"}]',
    ]


def test_render_messages_passthrough_exact_json() -> None:
    table = pa.table(
        {
            "messages": [
                [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ],
            ]
        }
    )
    assert planned(table).render(table) == [
        '[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]',
        '[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]',
    ]


def test_render_messages_stored_as_json_text() -> None:
    table = pa.table({"messages": ['[{"role": "user", "content": "x"}]', '[{"role": "user"}]']})
    r = planned(table)
    assert r.render(table.slice(0, 1)) == ['[{"role":"user","content":"x"}]']
    assert error_of(r.render, table, 40).startswith("d.jsonl:41: messages must be")


def test_render_openai_batch_lines(tmp_path: Path) -> None:
    line = {
        "custom_id": "req-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hey"}]},
    }
    path = write_lines(tmp_path / "batch.jsonl", [json.dumps(line)])
    chunk = next(iter_chunks([path]))
    r = plan(chunk.table.column_names, RequestSpec(), str(path))
    assert r.render(chunk.table, chunk) == ['[{"role":"user","content":"hey"}]']
    assert r.ids(chunk.table, 0, chunk) == ["req-1"]


@pytest.mark.parametrize(
    "bad",
    [
        [],
        None,
        [{"role": "robot", "content": "x"}],
        [{"role": "user", "content": None}],
        [{"role": None, "content": "x"}],
    ],
)
def test_render_messages_validation_names_line(tmp_path: Path, bad: object) -> None:
    good = [{"role": "user", "content": "ok"}]
    lines = [json.dumps({"messages": good}) for _ in range(6)]
    lines[4] = json.dumps({"messages": bad})
    path = write_lines(tmp_path / "m.jsonl", lines)
    msg = ""
    for chunk in iter_chunks([path], chunk_rows=2):
        r = plan(chunk.table.column_names, RequestSpec(), str(path))
        if chunk.first_line < 5:
            r.render(chunk.table, chunk)
        else:
            msg = error_of(r.render, chunk.table, chunk)
            break
    assert (
        msg
        == f"{path}:5: messages must be a non-empty list of {{role, content}} objects with role system, developer, user or assistant"
    )


def test_render_messages_wrong_shape() -> None:
    table = pa.table({"messages": [["just", "strings"]]})
    assert error_of(planned(table).render, table, 3).startswith("d.jsonl:3: messages must be")


@pytest.mark.parametrize("bad", [None, "", "  \n"])
def test_render_null_or_empty_prompt_names_line(bad: str | None) -> None:
    table = pa.table({"prompt": ["a", "b", bad]}, schema=pa.schema([("prompt", pa.string())]))
    assert error_of(planned(table).render, table, 10) == "d.jsonl:12: empty or missing 'prompt'"


def test_render_non_string_prompt() -> None:
    table = pa.table({"prompt": [1, 2]})
    assert error_of(planned(table).render, table) == "d.jsonl:1: 'prompt' must be a string, not int64"


def test_render_uses_chunk_lines_across_blank_lines(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", ['{"prompt": "a"}', "", "", '{"prompt": ""}'])
    chunk = next(iter_chunks([path]))
    r = plan(chunk.table.column_names, RequestSpec(), str(path))
    assert error_of(r.render, chunk.table, chunk) == f"{path}:4: empty or missing 'prompt'"


def test_render_template_runtime_error_and_empty_result() -> None:
    table = pa.table({"q": ["x", "y"], "d": [{"k": "v"}, {"k": None}]})
    r = planned(table, RequestSpec(template="{{ d.k }}"))
    assert error_of(r.render, table) == "d.jsonl:2: template rendered an empty prompt"  # null prints as ""
    assert planned(table, RequestSpec(template="[{{ d.k }}]")).render(table)[1] == '[{"role":"user","content":"[]"}]'
    r2 = planned(table, RequestSpec(template="{{ q.missing }}"))
    assert error_of(r2.render, table).startswith("d.jsonl:1: template failed: ")
    r3 = planned(table, RequestSpec(template="{% if q == 'y' %}{% endif %}{% if q == 'x' %}X{% endif %}"))
    assert error_of(r3.render, table) == "d.jsonl:2: template rendered an empty prompt"


def test_render_template_column_absent_from_chunk_reads_as_null() -> None:
    full = pa.table({"q": ["x"], "ctx": ["c"]})
    r = planned(full, RequestSpec(template="{{ q }}{% if ctx %}+{{ ctx }}{% endif %}"))
    assert r.render(full) == ['[{"role":"user","content":"x+c"}]']
    assert r.render(pa.table({"q": ["y"]})) == ['[{"role":"user","content":"y"}]']


def test_render_empty_table() -> None:
    table = pa.table({"prompt": pa.array([], pa.string())})
    assert planned(table).render(table) == []
    assert planned(table).render_array(table).equals(pa.array([], pa.large_string()))


@pytest.mark.parametrize(
    ("table", "spec"),
    [
        (pa.table({"prompt": ["hi", 'say "ok"\n', "héllo ✓"]}), None),
        (pa.table({"question": ["2+2?", "数据"], "n": [1, 2]}), RequestSpec(template="Q{{ n }}: {{ question }}")),
        (pa.table({"messages": [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]}), None),
    ],
    ids=["prompt", "template", "messages"],
)
def test_render_array_is_render_as_one_large_string_array(table: pa.Table, spec: RequestSpec | None) -> None:
    renderer = planned(table, spec)
    array = renderer.render_array(table)
    assert array.type == pa.large_string() and array.to_pylist() == renderer.render(table)


def test_render_array_raises_what_render_raises() -> None:
    table = pa.table({"prompt": ["ok", "  "]})
    assert error_of(planned(table).render_array, table, 10) == error_of(planned(table).render, table, 10)


# -- ids ------------------------------------------------------------------------------------


def test_ids_without_id_column_are_global_positions() -> None:
    table = pa.table({"prompt": ["a", "b", "c"]})
    assert planned(table).ids(table, 0) == ["0", "1", "2"]
    assert planned(table).ids(table, 8192) == ["8192", "8193", "8194"]


def test_ids_from_id_column_as_strings() -> None:
    table = pa.table({"prompt": ["a", "b"], "key": ["k1", "k2"], "num": [7, 8]})
    assert planned(table, RequestSpec(id_column="key")).ids(table, 100) == ["k1", "k2"]
    assert planned(table, RequestSpec(id_column="num")).ids(table, 100) == ["7", "8"]


def test_ids_null_and_nested_are_errors() -> None:
    table = pa.table({"prompt": ["a", "b"], "key": ["k1", None], "obj": [{"a": 1}, {"a": 2}]})
    assert (
        error_of(planned(table, RequestSpec(id_column="key")).ids, table, 0, 5)
        == "d.jsonl:6: missing id (column 'key' is null)"
    )
    assert "must hold strings or numbers" in error_of(planned(table, RequestSpec(id_column="obj")).ids, table, 0)


@pytest.mark.parametrize(
    ("table", "spec", "first_ok"),
    [
        (pa.table({"prompt": pa.array(["a", None], pa.string())}), None, True),
        (pa.table({"prompt": [1, 2]}), None, False),
        (pa.table({"messages": [["just", "strings"]]}), None, False),
        (pa.table({"messages": [[{"role": "user", "content": "x"}], [{"role": "bot", "content": "y"}]]}), None, True),
        (pa.table({"messages": ['[{"role": "user", "content": "x"}]', "[]"]}), None, True),
        (pa.table({"custom_id": ["a"], "body": [{"model": "m"}]}), None, False),
        (pa.table({"q": ["x", ""]}), RequestSpec(template="{{ q }}"), True),
    ],
)
def test_check_raises_what_render_raises_without_rendering(table: pa.Table, spec: RequestSpec | None, first_ok: bool) -> None:
    r = planned(table, spec)
    assert error_of(r.check, table, 7) == error_of(r.render, table, 7)
    if first_ok:
        assert r.check(table.slice(0, 1), 7) is None and len(r.render(table.slice(0, 1), 7)) == 1


def test_jinja2_loads_only_with_a_template() -> None:
    import subprocess
    import sys

    code = (
        "import sys, runner.engine.live\n"
        "from runner.inputs.render import RequestSpec, plan\n"
        "print('jinja2' in sys.modules)\n"
        "plan(['q'], RequestSpec(template='{{ q }}'), 'f')\n"
        "print('jinja2' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
