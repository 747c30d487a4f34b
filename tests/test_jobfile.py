"""Job files: the whole file validated at once with key paths; command-line overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.errors import InputError
from runner.evals.jobfile import Job, JobFileError, Limits, ModelSpec, load_job, merge_cli

REPO = Path(__file__).resolve().parent.parent

GOOD = """
name = "nightly-qa"
input = "examples/data/qa.jsonl"
output = "runs/nightly-qa.parquet"
cache = true

[request]
system = "Answer in one word."
template = "Question: {{ question }}"
temperature = 0
max_tokens = 16

[[models]]
provider = "openai"
model = "gpt-4o-mini"
rpm = 100

[[models]]
provider = "anthropic"
model = "claude-3-5-haiku-latest"
api_base = "http://localhost:9/"
concurrency = 4

[limits]
concurrency = 32
rpm = 500
tpm = 200000
max_retries = 6
timeout = 60
max_cost = 5.0

[score]
expected_column = "answer"
method = "exact"
min_pass_rate = 0.8

[report]
markdown = "runs/nightly-qa.md"
junit = "runs/nightly-qa.xml"

[prices.gpt-4o-mini]
input = 1.0
output = 2.0
"""


def write(tmp_path: Path, text: str, name: str = "job.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def mistakes(tmp_path: Path, text: str) -> list[str]:
    path = write(tmp_path, text)
    with pytest.raises(JobFileError) as info:
        load_job(path)
    err = info.value
    assert isinstance(err, InputError)
    lines = str(err).splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines)
    if len(err.mistakes) > 1:
        assert lines[0] == f"{path}: {len(err.mistakes)} mistakes:"
        assert lines[1:] == [f"{path}: {m}" for m in err.mistakes]
    else:
        assert lines == [f"{path}: {err.mistakes[0]}"]
    return err.mistakes


def test_the_design_example_loads(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, GOOD))
    assert job.name == "nightly-qa" and job.cache is True
    assert job.request.template == "Question: {{ question }}" and job.request.temperature == 0.0
    assert job.models == [
        ModelSpec(provider="openai", model="gpt-4o-mini", rpm=100),
        ModelSpec(provider="anthropic", model="claude-3-5-haiku-latest", api_base="http://localhost:9/", concurrency=4),
    ]
    assert job.limits == Limits(concurrency=32, rpm=500, tpm=200000, max_retries=6, timeout=60.0, max_cost=5.0)
    assert job.limits_for(job.models[0]).rpm == 100 and job.limits_for(job.models[0]).concurrency == 32
    assert job.limits_for(job.models[1]).concurrency == 4 and job.limits_for(job.models[1]).rpm == 500
    assert job.score is not None and job.score.method == "exact" and job.score.min_pass_rate == 0.8
    assert job.report.markdown == "runs/nightly-qa.md" and job.report.json is None
    # [prices] wins over the built-in table, also for dated snapshots; others fall through.
    assert job.price_of("gpt-4o-mini") == (1.0, 2.0)
    assert job.price_of("gpt-4o-mini-2024-07-18") == (1.0, 2.0)
    assert job.price_of("gpt-4o") == (2.50, 10.00)
    assert job.price_of("unknown-model") is None


def test_cost_column_uses_price_overrides(tmp_path: Path) -> None:
    import pyarrow as pa

    job = load_job(write(tmp_path, GOOD))
    cost = job.cost_column("gpt-4o-mini", pa.array([1_000_000, None]), pa.array([500_000, 1]))
    assert cost.to_pylist() == [2.0, None]
    assert job.cost_column("nope", pa.array([1]), pa.array([1])).to_pylist() == [None]


def test_the_shipped_jobs_load() -> None:
    for name in ("mock-qa", "mock-matrix", "openai-qa"):
        job = load_job(REPO / "jobs" / f"{name}.toml")
        assert job.score is not None and job.score.min_pass_rate is not None
    openai = load_job(REPO / "jobs" / "openai-qa.toml")
    assert openai.request.template == (REPO / "examples/templates/question.jinja").read_text()


def test_every_mistake_is_reported_with_its_key_path(tmp_path: Path) -> None:
    text = GOOD.replace("concurrency = 32", "concurency = 32").replace("rpm = 500", 'rpm = "fast"')
    text = text.replace('provider = "anthropic"', 'provider = "bedrock"').replace('method = "exact"', 'method = "fuzzy"')
    text = text.replace("timeout = 60", "timeout = -1").replace("temperature = 0", "temperature = true")
    found = mistakes(tmp_path, text)
    assert found == [
        "request.temperature: expected a number between 0 and 2, got true",
        "models[1].provider: expected 'openai', 'anthropic', 'azure' or 'mock', got \"bedrock\"",
        "limits.concurency: unknown key (did you mean 'concurrency'?)",
        'limits.rpm: expected a positive integer, got "fast"',
        "limits.timeout: expected a positive number, got -1",
        "score.method: expected one of 'exact', 'contains', 'regex', 'json', 'numeric' or "
        "'python:module:function', got \"fuzzy\"",
    ]


def test_missing_keys_and_wrong_shapes(tmp_path: Path) -> None:
    found = mistakes(
        tmp_path,
        """
        inptu = "x.jsonl"
        models = "gpt"
        [limits]
        max_retries = 1.5
        [score]
        expected_column = 3
        [report]
        pdf = "x.pdf"
        """,
    )
    assert "inptu: unknown key (did you mean 'input'?)" in found
    assert "input: required key is missing" in found
    assert "output: required key is missing" in found
    assert "models: expected one or more [[models]] tables" in found
    assert "limits.max_retries: expected an integer of 0 or more, got 1.5" in found
    assert "score.expected_column: expected a non-empty string, got 3" in found
    assert "score.method: required key is missing" in found
    assert "report.pdf: unknown key (expected one of: markdown, junit, json, html)" in found


def test_one_mistake_is_one_line(tmp_path: Path) -> None:
    found = mistakes(tmp_path, GOOD.replace("max_tokens = 16", "max_tokens = 0"))
    assert found == ["request.max_tokens: expected a positive integer, got 0"]


def test_model_rules(tmp_path: Path) -> None:
    text = """
    input = "a.jsonl"
    output = "o.parquet"
    [[models]]
    provider = "openai"
    [[models]]
    provider = "mock"
    [[models]]
    provider = "mock"
    model = "mock-echo"
    [[models]]
    model = "x"
    rpm = 0
    """
    assert mistakes(tmp_path, text) == [
        "models[0].model: required key is missing",
        "models[2]: mock/mock-echo is listed twice (also models[1])",
        "models[3].rpm: expected a positive integer, got 0",
        "models[3].provider: required key is missing",
    ]


def test_score_rules(tmp_path: Path) -> None:
    base = 'input = "a.jsonl"\noutput = "o.parquet"\n[[models]]\nprovider = "mock"\n[score]\n'
    assert mistakes(tmp_path, base + 'method = "exact"\n') == ["score.expected_column: required by method 'exact'"]
    assert mistakes(tmp_path, base + 'method = "python:nomodule"\n') == [
        "score.method: expected 'python:module:function', got \"python:nomodule\""
    ]
    assert mistakes(tmp_path, base + 'method = "regex"\n') == [
        "score.pattern: method 'regex' needs a pattern or an expected_column holding patterns"
    ]
    bad_regex = mistakes(tmp_path, base + 'method = "regex"\npattern = "(unclosed"\n')
    assert len(bad_regex) == 1 and bad_regex[0].startswith("score.pattern: not a valid regex")
    bad_schema = mistakes(tmp_path, base + 'method = "json"\nschema = { type = 12 }\n')
    assert len(bad_schema) == 1 and bad_schema[0].startswith("score.schema: not a valid JSON Schema")
    assert mistakes(tmp_path, base + 'method = "json"\nmin_pass_rate = 1.5\n') == [
        "score.min_pass_rate: expected a number between 0 and 1, got 1.5"
    ]
    assert mistakes(tmp_path, base + 'method = "json"\nschema_file = "missing.json"\n') == [
        "score.schema_file: cannot read missing.json: No such file or directory"
    ]


def test_schema_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # paths are relative to the current directory
    (tmp_path / "schema.json").write_text('{"type": "object", "required": ["a"]}')
    job = load_job(
        write(tmp_path, 'input = "a"\noutput = "o"\n[[models]]\nprovider = "mock"\n[score]\nmethod = "json"\nschema_file = "schema.json"\n')
    )
    assert job.score is not None and job.score.schema == {"type": "object", "required": ["a"]}


def test_template_file_and_template_together_or_missing(tmp_path: Path) -> None:
    base = 'input = "a"\noutput = "o"\n[[models]]\nprovider = "mock"\n[request]\n'
    assert mistakes(tmp_path, base + 'template = "x"\ntemplate_file = "t.jinja"\n') == [
        "request.template_file: give template or template_file, not both"
    ]
    assert mistakes(tmp_path, base + 'template_file = "nowhere/t.jinja"\n') == [
        "request.template_file: cannot read nowhere/t.jinja: No such file or directory"
    ]


def test_file_level_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(JobFileError, match=r"nope.toml: cannot read the job file: No such file"):
        load_job(missing)
    with pytest.raises(JobFileError, match=r"bad.toml: invalid TOML: .*line 1"):
        load_job(write(tmp_path, "input = \n", "bad.toml"))


def load_good(tmp_path: Path) -> Job:
    return load_job(write(tmp_path, GOOD))


def test_cli_flags_override_the_file(tmp_path: Path) -> None:
    job = load_good(tmp_path)
    same = merge_cli(job, {"concurrency": None, "rpm": None, "model": None, "template": None, "stream": None})
    assert same == job
    merged = merge_cli(
        job,
        {"concurrency": 4, "timeout": 5, "stream": True, "system": "Be terse.", "output": Path("o.parquet"), "min_pass_rate": 0.5},
    )
    assert merged.limits.concurrency == 4 and merged.limits.timeout == 5.0 and merged.limits.rpm == 500
    assert merged.request.stream is True and merged.request.system == "Be terse."
    assert merged.request.template == job.request.template
    assert merged.output == "o.parquet" and merged.score is not None and merged.score.min_pass_rate == 0.5
    assert job.limits.concurrency == 32  # the loaded job is left alone


def test_cli_provider_and_model_overrides(tmp_path: Path) -> None:
    job = load_good(tmp_path)
    offline = merge_cli(job, {"provider": "mock"})
    assert [(m.provider, m.model) for m in offline.models] == [("mock", "gpt-4o-mini"), ("mock", "claude-3-5-haiku-latest")]
    single = merge_cli(job, {"model": "gpt-4.1-nano"})
    assert [(m.provider, m.model) for m in single.models] == [("openai", "gpt-4.1-nano")]
    rebased = merge_cli(job, {"api_base": "http://127.0.0.1:1/v1"})
    assert {m.api_base for m in rebased.models} == {"http://127.0.0.1:1/v1"}


def test_cli_template_file_override(tmp_path: Path) -> None:
    job = load_good(tmp_path)
    (tmp_path / "t.jinja").write_text("Q: {{ q }}")
    merged = merge_cli(job, {"template_file": tmp_path / "t.jinja"})
    assert merged.request.template == "Q: {{ q }}"
    with pytest.raises(InputError, match="not both"):
        merge_cli(job, {"template_file": tmp_path / "t.jinja", "template": "x"})


def test_cli_override_values_are_checked(tmp_path: Path) -> None:
    job = load_good(tmp_path)
    with pytest.raises(InputError, match=r"^--rpm: expected a positive integer, got 0$"):
        merge_cli(job, {"rpm": 0})
    with pytest.raises(InputError, match=r"^--provider: expected 'openai', 'anthropic', 'azure' or 'mock', got \"bedrock\"$"):
        merge_cli(job, {"provider": "bedrock"})
    unscored = merge_cli(job, {})
    from dataclasses import replace

    with pytest.raises(InputError, match=r"^--min-pass-rate: the job has no \[score\] section"):
        merge_cli(replace(unscored, score=None), {"min_pass_rate": 0.5})
    with pytest.raises(ValueError, match="unknown override"):
        merge_cli(job, {"colour": "red"})


def test_run_options_for_a_model(tmp_path: Path) -> None:
    from runner.engine.spec import RunSpec

    job = load_good(tmp_path)
    opts = RunSpec(**job.run_options(job.models[1]))
    assert opts.provider == "anthropic" and opts.concurrency == 4 and opts.rpm == 500
    assert opts.template == "Question: {{ question }}" and opts.max_tokens == 16
    opts.check()
