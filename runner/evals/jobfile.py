"""Job files (TOML): load and validate a whole job at once, and merge command-line overrides.

A job file holds what a ``run`` command line would (see the README, "Job files, evals and reports"). The whole file
is checked before anything runs; every mistake is reported with its key path, one per line::

    jobs/x.toml: 3 mistakes:
    jobs/x.toml: limits.concurency: unknown key (did you mean 'concurrency'?)
    jobs/x.toml: limits.rpm: expected a positive integer, got "fast"
    jobs/x.toml: models[1].provider: expected 'openai', 'anthropic' or 'mock', got "azure"

Paths in a job (``input``, ``output``, ``request.template_file``, ``score.schema_file``, the
``report`` files) are relative to the current directory, not to the job file: a job is run
from the repository root (as CI does), and the paths read the same as on a command line.
"""

from __future__ import annotations

import difflib
import json
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from runner.engine.endpoint import MOCK_MODEL, PROVIDERS
from runner.engine.request import OWNED
from runner.engine.spec import default
from runner.errors import InputError
from runner.engine.pricing import cost_column, price_of
from runner.evals.score import ScoreSpec, validate_method

__all__ = [
    "Job",
    "JobFileError",
    "Limits",
    "ModelSpec",
    "ReportSpec",
    "RequestSpec",
    "ScoreSpec",
    "load_job",
    "merge_cli",
    "parse_job",
]


class JobFileError(InputError):
    """Every mistake in a job file; ``str(err)`` has one line per mistake, each prefixed by the
    file name (a single line when there is one mistake)."""

    def __init__(self, where: str, mistakes: list[str]) -> None:
        self.where = where
        self.mistakes = list(mistakes)
        lines = [f"{where}: {m}" for m in self.mistakes]
        if len(lines) > 1:
            lines.insert(0, f"{where}: {len(lines)} mistakes:")
        # Deliberately several lines (InputError would join them into one).
        Exception.__init__(self, "\n".join(lines))


# -- the job -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestSpec:
    """``[request]``: how every row becomes a request. ``template`` holds the template text,
    read from ``template_file`` when that is given."""

    system: str | None = None
    template: str | None = None
    template_file: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    stream: bool = default("stream")
    id_column: str | None = None
    #: Body fields of every request (see runner.engine.request).
    params: dict[str, Any] = field(default_factory=dict)
    #: Extra headers; a credential's value is `env:VARIABLE`.
    headers: dict[str, str] = field(default_factory=dict)
    #: A JSON schema file the answers must match; a JSON file of tool definitions.
    response_format: str | None = None
    tools: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """One ``[[models]]`` entry; ``rpm``/``tpm``/``concurrency`` here override ``[limits]``."""

    provider: str
    model: str
    api_base: str | None = None
    api_key_env: str | None = None
    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    #: Body fields for this model's requests, over the run's.
    params: dict[str, Any] = field(default_factory=dict)
    #: "live" or "batch" (the provider's Batch API); else `[limits] mode`.
    mode: str | None = None


@dataclass(frozen=True)
class Limits:
    """``[limits]``; the defaults are those of ``prompt-runner run`` (`RunSpec`)."""

    concurrency: int = default("concurrency")
    rpm: int | None = None
    tpm: int | None = None
    max_retries: int = default("max_retries")
    timeout: float = default("timeout")
    max_cost: float | None = None
    max_failures: int | None = None
    #: "live" (the default) or "batch": every model through its provider's Batch API.
    mode: str | None = None


@dataclass(frozen=True)
class ReportSpec:
    """``[report]``: files written after the run (paths relative to the current directory)."""

    markdown: str | None = None
    junit: str | None = None
    json: str | None = None
    #: The self-contained HTML report (runner.evals.html_report).
    html: str | None = None


@dataclass(frozen=True)
class Job:
    """A validated job file. ``source`` is the file it came from (for messages)."""

    name: str
    input: str
    output: str
    models: list[ModelSpec]
    cache: bool = False
    request: RequestSpec = field(default_factory=RequestSpec)
    limits: Limits = field(default_factory=Limits)
    score: ScoreSpec | None = None
    report: ReportSpec = field(default_factory=ReportSpec)
    prices: dict[str, tuple[float, ...]] = field(default_factory=dict)
    source: str = ""

    def limits_for(self, model: ModelSpec) -> Limits:
        """The job's limits with the model's own ``concurrency``/``rpm``/``tpm`` applied."""
        return replace(
            self.limits,
            concurrency=model.concurrency or self.limits.concurrency,
            rpm=model.rpm if model.rpm is not None else self.limits.rpm,
            tpm=model.tpm if model.tpm is not None else self.limits.tpm,
        )

    def price_of(self, model: str) -> tuple[float, float] | None:
        """(input, output) USD per 1M tokens: the job's ``[prices]`` first (exact name, then the
        longest ``name-`` prefix, as for dated snapshots), else the built-in table."""
        return price_of(model, self.prices)

    def cost_column(self, model: str, prompt_tokens: pa.Array, completion_tokens: pa.Array) -> pa.Array:
        """``cost_usd`` as :func:`runner.engine.pricing.cost_column`, honouring the job's ``[prices]``."""
        return cost_column(model, prompt_tokens, completion_tokens, self.prices)

    def run_options(self, model: ModelSpec) -> dict[str, Any]:
        """Keyword arguments of ``runner.engine.live.RunSpec`` for one model of the matrix."""
        limits = self.limits_for(model)
        return {
            "input": self.input,
            "output": Path(self.output),
            "provider": model.provider,
            "model": model.model,
            "api_base": model.api_base,
            "api_key_env": model.api_key_env,
            "concurrency": limits.concurrency,
            "rpm": limits.rpm,
            "tpm": limits.tpm,
            "max_retries": limits.max_retries,
            "timeout": limits.timeout,
            "stream": self.request.stream,
            "template": self.request.template,
            "system": self.request.system,
            "id_column": self.request.id_column,
            "temperature": self.request.temperature,
            "max_tokens": self.request.max_tokens,
        }


# -- checking values -----------------------------------------------------------------------------


class Bad(Exception):
    """A value's mistake (the message after the key path)."""


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return str(value)


Check = Callable[[Any], Any]


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise Bad(f"expected a string, got {_shown(value)}")
    return value


def nonempty(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Bad(f"expected a non-empty string, got {_shown(value)}")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Bad(f"expected true or false, got {_shown(value)}")
    return value


def positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Bad(f"expected a positive integer, got {_shown(value)}")
    return value


def count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Bad(f"expected an integer of 0 or more, got {_shown(value)}")
    return value


def _number(value: Any) -> float | None:
    """The value as a float, or None when it is not a (finite or infinite) number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def positive_number(value: Any) -> float:
    number = _number(value)
    if number is None or number <= 0 or math.isinf(number):
        raise Bad(f"expected a positive number, got {_shown(value)}")
    return number


def nonnegative_number(value: Any) -> float:
    number = _number(value)
    if number is None or number < 0 or math.isinf(number):
        raise Bad(f"expected a number of 0 or more, got {_shown(value)}")
    return number


def fraction(value: Any) -> float:
    number = _number(value)
    if number is None or not 0 <= number <= 1:
        raise Bad(f"expected a number between 0 and 1, got {_shown(value)}")
    return number


def temperature(value: Any) -> float:
    number = _number(value)
    if number is None or not 0 <= number <= 2:
        raise Bad(f"expected a number between 0 and 2, got {_shown(value)}")
    return number


def provider(value: Any) -> str:
    if value not in PROVIDERS:
        raise Bad(f"expected 'openai', 'anthropic', 'azure' or 'mock', got {_shown(value)}")
    return str(value)


def mode(value: Any) -> str:
    """How a model's requests are sent: live, or through the provider's Batch API."""
    if value not in ("live", "batch"):
        raise Bad(f"expected 'live' or 'batch', got {_shown(value)}")
    return str(value)


def text_table(value: Any) -> dict[str, str]:
    """A table of strings (headers)."""
    values = table(value)
    for name, item in values.items():
        if not isinstance(item, str):
            raise Bad(f"expected a table of strings, but {name} is {_shown(item)}")
    return values


def table(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Bad(f"expected a table, got {_shown(value)}")
    return value


# Sections: key -> (check, required).
TOP: dict[str, tuple[Check | None, bool]] = {
    "name": (nonempty, False),
    "input": (nonempty, True),
    "output": (nonempty, True),
    "cache": (boolean, False),
    "request": (None, False),
    "models": (None, True),
    "limits": (None, False),
    "score": (None, False),
    "report": (None, False),
    "prices": (None, False),
}
REQUEST: dict[str, tuple[Check, bool]] = {
    "system": (string, False),
    "template": (nonempty, False),
    "template_file": (nonempty, False),
    "temperature": (temperature, False),
    "max_tokens": (positive_int, False),
    "stream": (boolean, False),
    "id_column": (nonempty, False),
    "params": (table, False),
    "headers": (text_table, False),
    "response_format": (nonempty, False),
    "tools": (nonempty, False),
}
MODEL: dict[str, tuple[Check, bool]] = {
    "provider": (provider, True),
    "model": (nonempty, False),  # required unless the provider is mock (checked below)
    "api_base": (nonempty, False),
    "api_key_env": (nonempty, False),
    "rpm": (positive_int, False),
    "tpm": (positive_int, False),
    "concurrency": (positive_int, False),
    "params": (table, False),
    "mode": (mode, False),
}
LIMITS: dict[str, tuple[Check, bool]] = {
    "concurrency": (positive_int, False),
    "rpm": (positive_int, False),
    "tpm": (positive_int, False),
    "max_retries": (count, False),
    "timeout": (positive_number, False),
    "max_cost": (positive_number, False),
    "max_failures": (count, False),
    "mode": (mode, False),
}
SCORE: dict[str, tuple[Check, bool]] = {
    "method": (nonempty, True),
    "expected_column": (nonempty, False),
    "min_pass_rate": (fraction, False),
    "tolerance": (nonnegative_number, False),
    "pattern": (string, False),
    "schema": (table, False),
    "schema_file": (nonempty, False),
}
REPORT: dict[str, tuple[Check, bool]] = {
    "markdown": (nonempty, False),
    "junit": (nonempty, False),
    "json": (nonempty, False),
    "html": (nonempty, False),
}
PRICE: dict[str, tuple[Check, bool]] = {
    "input": (nonnegative_number, True),
    "output": (nonnegative_number, True),
    "cached_input": (nonnegative_number, False),
    "cache_write": (nonnegative_number, False),
}


class _Checker:
    """Collects mistakes while walking the parsed TOML."""

    def __init__(self) -> None:
        self.mistakes: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.mistakes.append(f"{path}: {message}")

    def section(self, data: Any, spec: Mapping[str, tuple[Check | None, bool]], prefix: str) -> dict[str, Any]:
        """Checked values of one table (unknown and bad keys recorded, left out)."""
        where = prefix.rstrip(".") or "job"
        if not isinstance(data, dict):
            self.add(where, f"expected a table, got {_shown(data)}")
            return {}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in spec:
                close = difflib.get_close_matches(key, list(spec), n=1, cutoff=0.6)
                hint = f" (did you mean '{close[0]}'?)" if close else f" (expected one of: {', '.join(spec)})"
                self.add(f"{prefix}{key}", f"unknown key{hint}")
                continue
            check = spec[key][0]
            if check is None:
                values[key] = value
                continue
            try:
                values[key] = check(value)
            except Bad as bad:
                self.add(f"{prefix}{key}", str(bad))
        for key, (_, required) in spec.items():
            if required and key not in data:
                self.add(f"{prefix}{key}", "required key is missing")
        return values

    def read_text(self, path: str, key: str) -> str | None:
        try:
            return Path(path).read_text()
        except OSError as err:
            self.add(key, f"cannot read {path}: {err.strerror}")
            return None


def parse_job(data: dict[str, Any], where: str, *, default_name: str = "job") -> Job:
    """Validates parsed TOML ``data`` into a :class:`Job`; raises :class:`JobFileError` listing
    every mistake. ``where`` names the file in messages."""
    c = _Checker()
    top = c.section(data, TOP, "")

    request = c.section(data.get("request", {}), REQUEST, "request.")
    for key in request.get("params", {}):
        if key in OWNED:
            c.add(f"request.params.{key}", "the request builder writes this field; it is not a parameter")
    if "template" in request and "template_file" in request:
        c.add("request.template_file", "give template or template_file, not both")
    elif "template_file" in request:
        text = c.read_text(request["template_file"], "request.template_file")
        if text is not None:
            request["template"] = text

    models: list[ModelSpec] = []
    seen: dict[tuple[str, str], int] = {}
    raw_models = data.get("models", [])
    if "models" in data and (not isinstance(raw_models, list) or not raw_models):
        c.add("models", "expected one or more [[models]] tables")
        raw_models = []
    for i, raw in enumerate(raw_models):
        values = c.section(raw, MODEL, f"models[{i}].")
        if not isinstance(raw, dict) or "provider" not in values:
            continue
        if "model" not in values:
            if values["provider"] != "mock":
                c.add(f"models[{i}].model", "required key is missing")
                continue
            values["model"] = MOCK_MODEL
        for key in values.get("params", {}):
            if key in OWNED:
                c.add(f"models[{i}].params.{key}", "the request builder writes this field; it is not a parameter")
        spec = ModelSpec(**values)
        if (spec.provider, spec.model) in seen:
            c.add(f"models[{i}]", f"{spec.provider}/{spec.model} is listed twice (also models[{seen[spec.provider, spec.model]}])")
            continue
        seen[spec.provider, spec.model] = i
        models.append(spec)

    limits = c.section(data.get("limits", {}), LIMITS, "limits.")

    score: ScoreSpec | None = None
    if "score" in data:
        values = c.section(data["score"], SCORE, "score.")
        if "schema" in values and "schema_file" in values:
            c.add("score.schema_file", "give schema or schema_file, not both")
        elif "schema_file" in values:
            text = c.read_text(values["schema_file"], "score.schema_file")
            if text is not None:
                try:
                    values["schema"] = table(json.loads(text))
                except (ValueError, Bad) as err:
                    c.add("score.schema_file", f"{values['schema_file']} is not a JSON object: {err}")
        if "method" in values:
            score = ScoreSpec(**values)
            for key, message in validate_method(score):
                c.add(f"score.{key}", message)

    report = c.section(data.get("report", {}), REPORT, "report.")

    prices: dict[str, tuple[float, ...]] = {}
    raw_prices = data.get("prices", {})
    if not isinstance(raw_prices, dict):
        c.add("prices", f"expected a table, got {_shown(raw_prices)}")
        raw_prices = {}
    for model_name, raw in raw_prices.items():
        key = f'prices."{model_name}"' if not model_name.replace("-", "").replace("_", "").isalnum() else f"prices.{model_name}"
        values = c.section(raw, PRICE, key + ".")
        if "input" in values and "output" in values:
            rates = [values["input"], values["output"]]
            if "cached_input" in values or "cache_write" in values:
                rates += [values.get("cached_input", values["input"]), values.get("cache_write", values["input"])]
            prices[model_name] = tuple(rates)

    if c.mistakes:
        raise JobFileError(where, c.mistakes)
    return Job(
        name=top.get("name", default_name),
        input=top["input"],
        output=top["output"],
        models=models,
        cache=top.get("cache", False),
        request=RequestSpec(**request),
        limits=Limits(**limits),
        score=score,
        report=ReportSpec(**report),
        prices=prices,
        source=where,
    )


def load_job(path: str | Path) -> Job:
    """Reads and validates a job file; raises :class:`JobFileError` (an InputError)."""
    where = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise JobFileError(where, [f"cannot read the job file: {err.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise JobFileError(where, ["not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as err:
        raise JobFileError(where, [f"invalid TOML: {err}"]) from None
    return parse_job(data, where, default_name=Path(path).stem)


# -- command-line overrides ----------------------------------------------------------------------

#: Override keys (the `run` command's parameter names) -> what they replace.
_REQUEST_KEYS = ("system", "template", "temperature", "max_tokens", "stream", "id_column", "response_format", "tools")
#: Overrides merged into the job's tables rather than replacing them.
_MERGED_KEYS = ("params", "headers")
_LIMIT_KEYS = ("concurrency", "rpm", "tpm", "max_retries", "timeout", "max_cost", "max_failures")
_MODEL_KEYS = ("provider", "model", "api_base", "api_key_env")
_SCORE_KEYS = ("min_pass_rate",)
_TOP_KEYS = ("input", "output", "cache", "name")
_OVERRIDE_CHECKS: dict[str, Check] = {
    **{k: v[0] for k, v in LIMITS.items()},
    **{k: v[0] for k, v in REQUEST.items()},
    "min_pass_rate": fraction,
    "provider": provider,
    "model": nonempty,
    "api_base": nonempty,
    "api_key_env": nonempty,
    "input": nonempty,
    "output": nonempty,
    "cache": boolean,
    "name": nonempty,
    "params": table,
    "headers": text_table,
}
OVERRIDE_KEYS = frozenset(_OVERRIDE_CHECKS) | {"template_file"}


def merge_cli(job: Job, overrides: Mapping[str, Any]) -> Job:
    """A new job where every override that is not ``None`` replaces the file's value.

    Keys are the ``run`` command's parameter names (``concurrency``, ``template``, ``model``,
    ``output``, ...; ``Path`` values are accepted for paths). ``template`` or ``template_file``
    replaces the file's template (the file is read here). ``provider``/``api_base``/
    ``api_key_env`` apply to every model of the matrix; ``model`` replaces the matrix with that
    one model (of the given provider, else the first model's). Raises InputError naming the
    flag for a bad value; an unknown key is a programming error (ValueError).
    """
    unknown = set(overrides) - OVERRIDE_KEYS
    if unknown:
        raise ValueError(f"merge_cli: unknown override keys {sorted(unknown)}")
    given: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        if key == "timeout" and isinstance(value, int):
            value = float(value)
        check: Check = _OVERRIDE_CHECKS.get(key, nonempty)
        try:
            given[key] = check(value)
        except Bad as bad:
            raise InputError(f"--{key.replace('_', '-')}: {bad}") from None

    if "template" in given and "template_file" in given:
        raise InputError("give --template or --template-file, not both")
    request_changes = {k: given[k] for k in _REQUEST_KEYS if k in given}
    for key in _MERGED_KEYS:
        if key in given:
            request_changes[key] = {**getattr(job.request, key), **given[key]}
    if "template_file" in given:
        try:
            request_changes["template"] = Path(given["template_file"]).read_text()
        except OSError as err:
            raise InputError(f"{given['template_file']}: cannot read the template: {err.strerror}") from None
        request_changes["template_file"] = given["template_file"]
    elif "template" in given:
        request_changes["template_file"] = None

    models = list(job.models)
    if "model" in given:
        base = models[0] if models else ModelSpec(provider="openai", model=given["model"])
        models = [replace(base, model=given["model"])]
    model_changes = {k: given[k] for k in ("provider", "api_base", "api_key_env") if k in given}
    if model_changes:
        models = [replace(m, **model_changes) for m in models]

    limits = replace(job.limits, **{k: given[k] for k in _LIMIT_KEYS if k in given})
    score = job.score
    if "min_pass_rate" in given:
        if score is None:
            raise InputError("--min-pass-rate: the job has no [score] section to apply it to")
        score = replace(score, min_pass_rate=given["min_pass_rate"])
    return replace(
        job,
        **{k: given[k] for k in _TOP_KEYS if k in given},
        models=models,
        request=replace(job.request, **request_changes),
        limits=limits,
        score=score,
    )
