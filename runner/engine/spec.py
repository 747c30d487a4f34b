"""`RunSpec`: everything `prompt-runner run` takes, with every default written once (the CLI's
help, the job file's `[limits]` and the executor's settings read them from here), checked once;
light to import (the CLI's start-up)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runner.engine.endpoint import MOCK_MODEL, PROVIDERS
from runner.errors import InputError


@dataclass(frozen=True)
class Lane:
    """One model of a run (a model matrix has several), with its own endpoint and limits."""

    index: int
    provider: str
    model: str
    api_base: str | None
    api_key_env: str | None
    concurrency: int
    rpm: int | None
    tpm: int | None
    #: Body fields of every request of this model: the run's, then the model's own.
    params: dict[str, Any] = field(default_factory=dict)
    #: Sent through the provider's Batch API (`--batch-api`, `mode = "batch"`) rather than live.
    batch: bool = False


@dataclass
class RunSpec:
    """Everything `prompt-runner run` takes (or a job file gives)."""

    input: str
    output: Path
    provider: str = "openai"
    model: str | None = None
    api_base: str | None = None
    api_key_env: str | None = None
    concurrency: int = 32
    rpm: int | None = None
    tpm: int | None = None
    max_retries: int = 6
    timeout: float = 60.0
    stream: bool = False
    template: str | None = None
    system: str | None = None
    id_column: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    limit: int | None = None
    dry_run: bool = False
    mock_config: str = "{}"
    restart: bool = False
    retry_failed: bool = True
    grace_period: float = 30.0
    #: A model matrix: dicts of provider, model, api_base, api_key_env, concurrency, rpm, tpm.
    #: None runs the single model above.
    models: list[dict[str, Any]] | None = None
    cache: bool = False
    max_cost: float | None = None
    #: The run exits 0 with up to this many rows in error (None: 0).
    max_failures: int | None = None
    #: Price overrides, USD per 1M tokens: {model: [input, output]}.
    prices: dict[str, list[float]] = field(default_factory=dict)
    #: The job file this run came from (scored and reported after the run).
    job: str | None = None
    #: Serve Prometheus metrics on this port while the run goes on.
    metrics_port: int | None = None
    #: Stop when the first rows all fail with the same permanent error (`--no-fail-fast`: send all);
    #: a rerun with rows already settled sends its rows whatever they fail with.
    fail_fast: bool = True
    #: Body fields for every request (`--param`, `[request.params]`), JSON values by name.
    params: dict[str, Any] = field(default_factory=dict)
    #: Extra request headers (`--header`, `[request.headers]`); a credential's value is `env:VAR`.
    headers: dict[str, str] = field(default_factory=dict)
    #: A JSON schema file the answers must match (`--response-format`); the json scorer's default.
    response_format: str | None = None
    #: A JSON file of tool definitions (`--tools`), sent as `tools`.
    tools: str | None = None
    #: Keep each response's JSON in the output's `raw` column.
    keep_raw: bool = False
    #: Azure OpenAI's `api-version` (else the OPENAI_API_VERSION variable).
    api_version: str | None = None
    #: Every model through its provider's Batch API (a job's models may say `mode` each).
    batch_api: bool = False
    #: Wait for the batches and collect them (`--no-wait`: return once they are submitted).
    wait: bool = True
    #: Requests per batch at most (else the provider's limit).
    batch_size: int | None = None
    #: "live": rows a batch could not run (expired, cancelled) are then sent live.
    fallback: str | None = None
    #: "I/N": only the rows whose id hashes to I modulo N (`--shard`; runner.engine.shard).
    shard: str | None = None

    def saved(self) -> dict[str, Any]:
        """The options as kept in run.json, enough for `resume` to run them again."""
        return {k: v for k, v in asdict(self).items() if k not in ("output", "dry_run", "restart", "wait")}

    def lanes(self) -> list[Lane]:
        specs = self.models or [
            {"provider": self.provider, "model": self.model, "api_base": self.api_base, "api_key_env": self.api_key_env}
        ]
        return [
            Lane(
                index=i,
                provider=spec["provider"],
                model=spec.get("model") or MOCK_MODEL,
                api_base=spec.get("api_base"),
                api_key_env=spec.get("api_key_env"),
                concurrency=spec.get("concurrency") or self.concurrency,
                rpm=spec["rpm"] if spec.get("rpm") is not None else self.rpm,
                tpm=spec["tpm"] if spec.get("tpm") is not None else self.tpm,
                params={**self.file_params(spec["provider"]), **self.params, **(spec.get("params") or {})},
                batch=self._batched(spec),
            )
            for i, spec in enumerate(specs)
        ]

    def _batched(self, model: dict[str, Any]) -> bool:
        """Whether a model goes through its provider's Batch API: its own `mode`, else the run's."""
        return (model.get("mode") or ("batch" if self.batch_api else "live")) == "batch"

    def file_params(self, provider: str) -> dict[str, Any]:
        """The body fields the `--response-format` and `--tools` files give."""
        from runner.engine.request import load_json, schema_params

        params: dict[str, Any] = {}
        if self.response_format:
            params.update(schema_params(provider, load_json(self.response_format, "--response-format"), self.response_format))
        if self.tools:
            tools = load_json(self.tools, "--tools")
            if not isinstance(tools, list):
                raise InputError(f"{self.tools}: the --tools file holds a JSON list of tool definitions")
            params["tools"] = tools
        return params

    def check(self) -> None:
        for name in ("concurrency", "rpm", "tpm", "limit", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name.replace('_', '-')}: must be at least 1, got {value}")
        if self.max_retries < 0:
            raise InputError(f"--max-retries: must be 0 or more, got {self.max_retries}")
        if self.timeout <= 0:
            raise InputError(f"--timeout: must be a positive number of seconds, got {self.timeout}")
        if self.grace_period < 0:
            raise InputError(f"--grace-period: must be 0 or more seconds, got {self.grace_period}")
        if self.max_failures is not None and self.max_failures < 0:
            raise InputError(f"--max-failures: must be 0 or more, got {self.max_failures}")
        if self.max_cost is not None and self.max_cost <= 0:
            raise InputError(f"--max-cost: must be a positive number of USD, got {self.max_cost}")
        from runner.engine.request import check_headers, check_params

        check_params(self.params, "--param")
        check_headers(self.headers, "--header")
        providers = [spec["provider"] for spec in self.models or [{"provider": self.provider}]]
        if self.api_version and "azure" not in providers:
            raise InputError("--api-version: only Azure OpenAI takes an api-version (--provider azure)")
        for spec in self.models or [{"provider": self.provider, "model": self.model}]:
            if spec["provider"] not in PROVIDERS:
                raise InputError(f"--provider: expected one of {', '.join(PROVIDERS)}, got {spec['provider']!r}")
            check_params(spec.get("params") or {}, f"model {spec.get('model')}: params")
        self._check_batch()
        if self.shard is not None:
            from runner.engine.shard import parse_shard

            parse_shard(self.shard)
            if self.batch_api or any(s.get("mode") == "batch" for s in self.models or []):
                raise InputError("--shard: a Batch API run is not rate-limited; run it whole, without --shard")

    def _check_batch(self) -> None:
        """What a Batch API run cannot honour is refused, not ignored."""
        specs = self.models or [{"provider": self.provider, "model": self.model}]
        batched = [s for s in specs if self._batched(s)]
        if self.batch_size is not None and not 1 <= self.batch_size <= 100_000:
            raise InputError(f"--batch-size: must be 1 to 100000 (the providers' limits), got {self.batch_size}")
        if self.fallback not in (None, "live"):
            raise InputError(f"--fallback: the only fallback is live, got {self.fallback!r}")
        if not batched:
            for flag, value in (("--no-wait", not self.wait), ("--batch-size", self.batch_size), ("--fallback", self.fallback)):
                if value:
                    raise InputError(f"{flag} applies to Batch API runs: add --batch-api")
            return
        if self.stream:
            raise InputError("--stream: the Batch API answers whole responses; leave --stream out with --batch-api")
        if self.metrics_port is not None:
            raise InputError("--metrics-port: a Batch API run sends no live requests to measure; leave it out")
        for spec in batched:
            if spec["provider"] == "azure":
                raise InputError("--batch-api: Azure OpenAI's batch deployments are not supported; use the live engine")
            if spec["provider"] == "mock" and not self.wait:
                raise InputError("--no-wait: the built-in mock's batches end with this process; "
                                 "run `prompt-runner mock-server` and point --provider openai --api-base at it")
            if spec.get("rpm") is not None or spec.get("tpm") is not None:
                raise InputError(f"model {spec.get('model')}: rpm/tpm: the Batch API is outside the per-minute limits; leave them out")
        if len(batched) == len(specs) and (self.rpm is not None or self.tpm is not None):
            raise InputError("--rpm/--tpm: the Batch API is outside the per-minute limits; leave them out with --batch-api")

    def check_lanes(self, lanes: list[Lane]) -> None:
        """Checks made once the input is known (a Batch API file names its model): every model is
        named, and what a model refuses is caught before anything is sent: a reasoning model
        takes only the default temperature (unless the user insists with `--param`)."""
        for spec in self.models or [{"provider": self.provider, "model": self.model}]:
            if spec["provider"] != "mock" and not spec.get("model"):
                raise InputError(f"--model is required with --provider {spec['provider']}")
        if self.temperature in (None, 1, 1.0):
            return
        from runner._native import is_reasoning_model

        for lane in lanes:
            if lane.provider not in ("openai", "azure") or not is_reasoning_model(lane.model):
                continue
            if "temperature" not in lane.params:
                raise InputError(
                    f"--temperature: {lane.model} is a reasoning model and takes only the default temperature (1); "
                    f"leave --temperature out, or send it anyway with --param temperature={self.temperature:g}"
                )


def default(name: str) -> Any:
    """The default of a `RunSpec` field, for the CLI's help and the job file's defaults."""
    return RunSpec.__dataclass_fields__[name].default


def from_job(job: Any, **extra: Any) -> RunSpec:
    """RunSpec for a loaded (and CLI-merged) job file."""
    limits = job.limits
    return RunSpec(
        input=job.input,
        output=Path(job.output),
        provider=job.models[0].provider,
        model=job.models[0].model,
        concurrency=limits.concurrency,
        rpm=limits.rpm,
        tpm=limits.tpm,
        max_retries=limits.max_retries,
        timeout=limits.timeout,
        stream=job.request.stream,
        template=job.request.template,
        system=job.request.system,
        id_column=job.request.id_column,
        temperature=job.request.temperature,
        max_tokens=job.request.max_tokens,
        params=dict(job.request.params),
        headers=dict(job.request.headers),
        response_format=job.request.response_format,
        tools=job.request.tools,
        models=[
            {
                "provider": m.provider,
                "model": m.model,
                "api_base": m.api_base,
                "api_key_env": m.api_key_env,
                "concurrency": m.concurrency,
                "rpm": m.rpm,
                "tpm": m.tpm,
                "params": dict(m.params),
                # `--batch-api` on the command line wins over the file's [limits] mode.
                "mode": m.mode or ("batch" if extra.get("batch_api") else limits.mode),
            }
            for m in job.models
        ],
        cache=bool(job.cache),
        max_cost=limits.max_cost,
        max_failures=limits.max_failures,
        prices={k: list(v) for k, v in job.prices.items()},
        job=str(job.source) if job.source else None,
        **extra,
    )
