"""The `prompt-runner` command line: thin Typer commands. The one place that turns a run's
outcome, or a user's mistake, into its last lines and an exit code (ARCHITECTURE.md, "The edge")."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

from runner import memory  # before the imports below load pyarrow and allocate

memory.arrow_uses_malloc()
memory.few_arenas()

import typer

from runner.engine.spec import RunSpec, default
from runner.errors import RunnerError
from runner.engine.outcome import RunOutcome, Stop

app = typer.Typer(
    name="prompt-runner",
    help="Run prompt datasets against LLM APIs: fast, at the rate limit, resumable. Results land in Parquet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Every row ok (or within --max-failures); some row failed, the run stopped, or a threshold was
#: missed; a user's mistake (nothing sent); interrupted (finished rows saved).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def run(
    input: Annotated[Optional[str], typer.Argument(help="A .jsonl, .jsonl.gz or .parquet file, a directory or a glob of them.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="The output Parquet file; its run state lives beside it.")] = None,
    job: Annotated[Optional[Path], typer.Option(help="A job file (TOML); flags given here override it.")] = None,
    provider: Annotated[Optional[str], typer.Option(help=f"openai, anthropic, or mock (a built-in server, no key needed); default {default('provider')}.")] = None,
    model: Annotated[Optional[str], typer.Option(help="The model name sent to the provider.")] = None,
    api_base: Annotated[Optional[str], typer.Option(help="Base URL (else OPENAI_BASE_URL / ANTHROPIC_BASE_URL).")] = None,
    api_key_env: Annotated[Optional[str], typer.Option(help="Read the API key from this variable instead.")] = None,
    concurrency: Annotated[Optional[int], typer.Option(help=f"Requests in flight at most (default {default('concurrency')}).")] = None,
    rpm: Annotated[Optional[int], typer.Option(help="Requests per minute at most.")] = None,
    tpm: Annotated[Optional[int], typer.Option(help="Tokens per minute at most (prompt estimate + max tokens).")] = None,
    max_retries: Annotated[Optional[int], typer.Option(help=f"Retries of a transient failure per row (default {default('max_retries')}).")] = None,
    timeout: Annotated[Optional[float], typer.Option(help=f"Seconds per attempt (default {default('timeout'):g}).")] = None,
    stream: Annotated[Optional[bool], typer.Option("--stream", help="Stream responses (SSE); records time to first token.")] = None,
    template: Annotated[Optional[str], typer.Option(help="A Jinja template over the row's columns, e.g. 'Q: {{ question }}'.")] = None,
    template_file: Annotated[Optional[Path], typer.Option(help="Read the template from a file.")] = None,
    system: Annotated[Optional[str], typer.Option(help="A system prompt for every row.")] = None,
    id_column: Annotated[Optional[str], typer.Option(help="The column holding each row's id (default: `id`, else the row's position).")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Sampling temperature.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Most tokens to generate per row (sent as max_completion_tokens to OpenAI reasoning models).")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", help="A body field for every request, KEY=VALUE (VALUE is JSON, else a string): seed=7, top_p=0.9, stop='[\"\\n\"]', reasoning_effort=low. Repeatable; a row's `params` column overrides it.")] = None,
    header: Annotated[Optional[list[str]], typer.Option("--header", help="An extra request header, NAME=VALUE (repeatable); a credential as NAME=env:VARIABLE.")] = None,
    response_format: Annotated[Optional[Path], typer.Option(help="A JSON schema file: answers must match it (OpenAI response_format, Anthropic output_config); the json scorer checks it.")] = None,
    tools: Annotated[Optional[Path], typer.Option(help="A JSON file with a list of tool definitions, sent as `tools`; tool calls land in the `tool_calls` column.")] = None,
    keep_raw: Annotated[bool, typer.Option("--keep-raw", help="Keep each response's JSON in a `raw` column.")] = False,
    api_version: Annotated[Optional[str], typer.Option(help="Azure OpenAI's api-version (else OPENAI_API_VERSION).")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N rows.")] = None,
    cache: Annotated[Optional[bool], typer.Option("--cache", help="Reuse identical earlier responses (SQLite in the user cache dir).")] = None,
    max_cost: Annotated[Optional[float], typer.Option(help="USD; stop dispatching when the run has spent this much.")] = None,
    max_failures: Annotated[Optional[int], typer.Option(help="Exit 0 even when up to N rows end in error (default 0).")] = None,
    min_pass_rate: Annotated[Optional[float], typer.Option(help="With --job: the pass rate each model must reach.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and render the input, count rows and estimate cost; send nothing.")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="Discard the saved state of OUTPUT and start over.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed/--no-retry-failed", help="On a rerun, send rows that ended in error again.")] = default("retry_failed"),
    grace_period: Annotated[float, typer.Option(help="On Ctrl-C/SIGTERM, seconds to let requests in flight finish.")] = default("grace_period"),
    fail_fast: Annotated[bool, typer.Option("--fail-fast/--no-fail-fast", help="Stop when the first 5 rows all fail with the same permanent error (unknown model, refused key); --no-fail-fast sends every row anyway.")] = default("fail_fast"),
    mock_config: Annotated[str, typer.Option(hidden=True, help="JSON settings of the built-in mock (tests).")] = "{}",
    log_level: Annotated[Optional[str], typer.Option(help="Log requests and retries to stderr at this level (error, warning, info, debug).", envvar="PROMPT_RUNNER_LOG")] = None,
    log_format: Annotated[str, typer.Option(help="Log format: text, or json (one object per line).")] = "text",
    metrics_port: Annotated[Optional[int], typer.Option(help="Serve Prometheus metrics on http://127.0.0.1:PORT/metrics during the run.")] = None,
    batch_api: Annotated[bool, typer.Option("--batch-api", help="Send the rows through the provider's Batch API: half price, answers within 24 hours, submitted exactly once.")] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="With --batch-api: return once the batches are submitted; `resume` collects them.")] = False,
    batch_size: Annotated[Optional[int], typer.Option(help="With --batch-api: requests per batch at most (default: the provider's limit, 50,000 OpenAI, 100,000 Anthropic).")] = None,
    fallback: Annotated[Optional[str], typer.Option(help="With --batch-api: `live` sends the rows a batch did not run (expired, cancelled) as live requests.")] = None,
    shard: Annotated[Optional[str], typer.Option(help="Run shard I of N (I/N, I from 0): the rows whose id hashes to I modulo N; join the shards' outputs with `prompt-runner merge`.")] = None,
    ray: Annotated[bool, typer.Option("--ray", help="Run --shards N shards as Ray tasks (pip install 'prompt-runner[ray]'), under one rate limit, then merge them into OUTPUT.")] = False,
    ray_address: Annotated[Optional[str], typer.Option(help="With --ray: the cluster to join (else RAY_ADDRESS, else a local one).")] = None,
    shards: Annotated[Optional[int], typer.Option(help="With --ray: how many shards to split the rows into.")] = None,
) -> None:
    """Run every row of INPUT against a model (or a job file's models) and write one result row per input row and model."""
    flags: dict[str, Any] = {
        "input": input, "output": output, "provider": provider, "model": model, "api_base": api_base,
        "api_key_env": api_key_env, "concurrency": concurrency, "rpm": rpm, "tpm": tpm,
        "max_retries": max_retries, "timeout": timeout, "stream": stream, "template": template,
        "template_file": template_file, "system": system, "id_column": id_column,
        "temperature": temperature, "max_tokens": max_tokens, "cache": cache, "max_cost": max_cost,
        "max_failures": max_failures, "min_pass_rate": min_pass_rate,
        "response_format": str(response_format) if response_format else None, "tools": str(tools) if tools else None,
    }
    extra: dict[str, Any] = {"limit": limit, "dry_run": dry_run, "restart": restart, "retry_failed": retry_failed,
             "grace_period": grace_period, "mock_config": mock_config, "metrics_port": metrics_port,
             "fail_fast": fail_fast, "keep_raw": keep_raw, "api_version": api_version,
             "batch_api": batch_api, "wait": not no_wait, "batch_size": batch_size, "fallback": fallback,
             "shard": shard}
    try:
        from runner.engine import observability
        from runner.engine.request import key_values

        flags["params"] = key_values("--param", param, json_values=True) if param else None
        flags["headers"] = key_values("--header", header, json_values=False) if header else None
        observability.setup_logging(log_level, log_format)
        if job is not None:
            opts, loaded = job_options(job, flags, extra)
        else:
            opts, loaded = flag_options(flags, extra), None
    except RunnerError as err:
        raise fail(str(err)) from None
    if ray or ray_address is not None or shards is not None:
        from runner.ray.driver import cluster_runner

        try:
            runner_ = cluster_runner(opts, ray=ray, address=ray_address, shards=shards)
        except RunnerError as err:
            raise fail(str(err)) from None
        raise typer.Exit(execute(opts, loaded, runner_))
    raise typer.Exit(execute(opts, loaded))


def job_options(path: Path, flags: dict[str, object], extra: dict[str, object]) -> tuple[RunSpec, object]:
    from runner.evals.jobfile import load_job, merge_cli
    from runner.engine.spec import from_job

    job = merge_cli(load_job(path), flags)
    return from_job(job, **extra), job


def flag_options(flags: dict[str, object], extra: dict[str, object]) -> RunSpec:
    from runner.errors import InputError

    if flags.pop("min_pass_rate") is not None:
        raise InputError("--min-pass-rate needs --job (a job file with a [score] section)")
    if flags["input"] is None or flags["output"] is None:
        raise InputError("give INPUT and -o OUTPUT (or --job FILE)")
    if flags["template"] and flags["template_file"]:
        raise InputError("give --template or --template-file, not both")
    template_file = flags.pop("template_file")
    if template_file is not None:
        try:
            flags["template"] = Path(str(template_file)).read_text()
        except OSError as err:
            raise InputError(f"{template_file}: cannot read the template: {err.strerror}") from None
    given = {k: v for k, v in flags.items() if v is not None}
    return RunSpec(**given, **extra)  # type: ignore[arg-type]


def execute(opts: RunSpec, job: object = None, runner: Any = None) -> int:
    """Runs a batch (with `runner`, else `run_spec`: e.g. the shards on a Ray cluster), then
    scores and reports it for a job; user mistakes become one line and exit 2."""
    from runner.engine.pipeline import run_spec

    try:
        outcome = (runner or run_spec)(opts)
        tell(outcome)
        if job is None and opts.job and outcome.stop is not Stop.DRY_RUN:
            from runner.evals.jobfile import load_job

            job = load_job(Path(opts.job))
        scored = outcome.stop in (Stop.COMPLETED, Stop.STOPPED, Stop.BUDGET)
        if job is not None and scored and opts.output.is_file():
            from runner.evals.evaluate import evaluate

            if evaluate(job, opts.output) and outcome.stop is Stop.COMPLETED:  # type: ignore[arg-type]
                outcome.stop = Stop.THRESHOLD
        return exit_code(outcome, opts.max_failures)
    except RunnerError as err:
        typer.echo(f"error: {err}", err=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        typer.echo("interrupted before the run started; nothing was sent", err=True)
        return 130


def tell(outcome: RunOutcome) -> None:
    """The run's last lines: what was written, or why it stopped and how to go on."""
    from runner.engine.pipeline import resume_command

    resume = resume_command(outcome.output)
    stop, message = outcome.stop, outcome.message
    if stop in (Stop.COMPLETED, Stop.THRESHOLD):
        typer.echo(f"wrote {outcome.written} rows to {outcome.output}", err=True)
    elif stop is Stop.STOPPED:
        typer.echo(f"error: run stopped: {message}", err=True)
    elif stop is Stop.BUDGET:
        typer.echo(f"error: {message}; resume with a higher one: {resume} --max-cost N", err=True)
    elif stop is Stop.WRITE_ERROR:
        typer.echo(f"error: {message}", err=True)
        typer.echo(f"the run state is consistent; once there is room, resume with: {resume}", err=True)
    elif stop is Stop.INTERRUPTED:
        typer.echo(f"\ninterrupted: {message}", err=True)
        typer.echo(f"resume with: {resume}", err=True)
    elif stop is Stop.SUBMITTED:
        typer.echo(f"submitted: {message}", err=True)


def exit_code(outcome: RunOutcome, max_failures: int | None) -> int:
    """0 when every row is ok, or at most `max_failures` failed; 130 when interrupted; else 1."""
    if outcome.stop is Stop.INTERRUPTED:
        return EXIT_INTERRUPTED
    if outcome.stop in (Stop.DRY_RUN, Stop.SUBMITTED):
        return EXIT_OK
    if outcome.stop is not Stop.COMPLETED or outcome.written < outcome.rows:
        return EXIT_FAILED
    if outcome.failed and outcome.failed <= (max_failures or 0):
        typer.echo(f"{outcome.failed} rows failed, within --max-failures {max_failures}", err=True)
        return EXIT_OK
    return EXIT_FAILED if outcome.failed else EXIT_OK


@app.command()
def resume(
    output: Annotated[Path, typer.Argument(help="The output of the run to continue.")],
    retry_failed: Annotated[bool, typer.Option("--retry-failed/--no-retry-failed", help="Send rows that ended in error again.")] = True,
    concurrency: Annotated[Optional[int], typer.Option(help="Override the saved concurrency.")] = None,
    rpm: Annotated[Optional[int], typer.Option(help="Override the saved requests per minute.")] = None,
    tpm: Annotated[Optional[int], typer.Option(help="Override the saved tokens per minute.")] = None,
    grace_period: Annotated[Optional[float], typer.Option(help="Seconds to let requests finish on Ctrl-C.")] = None,
    max_cost: Annotated[Optional[float], typer.Option(help="A new budget in USD for the whole run.")] = None,
    fallback: Annotated[Optional[str], typer.Option(help="Batch API runs: `live` sends the rows a batch did not run (expired, cancelled) as live requests.")] = None,
) -> None:
    """Continue a run from its saved state: ok rows are never sent again; a Batch API run's
    batches are waited for and collected."""
    from runner.store.checkpoint import RunDir

    record = RunDir(output).record()
    if record is None or "options" not in record:
        raise fail(f"{output}: no saved run to resume (no {RunDir(output).path.name}/run.json)")
    try:
        opts = RunSpec(output=output, **record["options"])
    except TypeError as err:
        raise fail(f"{output}: the saved run cannot be read by this version: {err}") from None
    opts.retry_failed = retry_failed
    for name, value in (("concurrency", concurrency), ("rpm", rpm), ("tpm", tpm), ("grace_period", grace_period), ("max_cost", max_cost), ("fallback", fallback)):
        if value is not None:
            setattr(opts, name, value)
    raise typer.Exit(execute(opts))


@app.command()
def cancel(
    output: Annotated[Path, typer.Argument(help="The output of a Batch API run.")],
) -> None:
    """Cancel the run's open provider batches; what they finished is kept and written to OUTPUT."""
    from runner.engine.batchapi import BatchEngine
    from runner.engine.pipeline import run_spec
    from runner.store.checkpoint import RunDir

    record = RunDir(output).record()
    if record is None or "options" not in record:
        raise fail(f"{output}: no saved run (no {RunDir(output).path.name}/run.json)")
    try:
        opts = RunSpec(output=output, **record["options"])
        outcome = run_spec(opts, engine=BatchEngine(cancel=True))
    except TypeError as err:
        raise fail(f"{output}: the saved run cannot be read by this version: {err}") from None
    except RunnerError as err:
        raise fail(str(err)) from None
    tell(outcome)
    raise typer.Exit(exit_code(outcome, opts.max_failures))


@app.command()
def merge(
    outputs: Annotated[list[Path], typer.Argument(help="The shard outputs (of `run --shard I/N`), all N of them.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The merged output Parquet file.")],
    input: Annotated[Optional[str], typer.Option("--input", help="The shards' input, when it is no longer where their run record says.")] = None,
) -> None:
    """Join shard outputs into one, in input order, checking that every input row is there exactly once per model (exit 1 naming the missing or duplicated ids)."""
    from runner.merge import MergeError, merge_outputs

    try:
        merged = merge_outputs(outputs, output, input)
    except MergeError as err:
        raise fail(str(err), EXIT_FAILED) from None
    except RunnerError as err:
        raise fail(str(err)) from None
    typer.echo(f"merged {len(outputs)} outputs (shards {', '.join(merged.shards)}): wrote {merged.rows} rows to {merged.output}", err=True)


@app.command()
def status(
    output: Annotated[Path, typer.Argument(help="The output of a run (finished, running or stopped).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
) -> None:
    """Rows done/ok/failed/pending, errors by type, tokens, cost, latencies, and the run's state."""
    from runner.engine.status import format_status, run_status, status_json

    try:
        s = run_status(output)
    except RunnerError as err:
        raise fail(str(err)) from None
    typer.echo(status_json(s) if json_out else format_status(s))


@app.command("mock-server")
def mock_server(
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    api_key: Annotated[str, typer.Option(help="The key the server accepts.")] = "mock-key",
    latency_ms: Annotated[int, typer.Option(help="Delay before each response, in ms.")] = 0,
    latency_jitter_ms: Annotated[int, typer.Option(help="Extra random delay per response, 0..N ms.")] = 0,
    rate_limit: Annotated[Optional[int], typer.Option(help="Requests per second before answering 429 (stated per minute in the headers: 60x).")] = None,
    rate_limit_schedule: Annotated[Optional[str], typer.Option(help="Rate limit over time, START:RPS,... in seconds from the first request, e.g. 0:40,5:20,15:40.")] = None,
    overload: Annotated[Optional[str], typer.Option(help="Overload episodes, START:DURATION,... in seconds from the first request (Anthropic 529, OpenAI 503), e.g. 10:5,40:3.")] = None,
    rate_limit_headers: Annotated[bool, typer.Option("--rate-limit-headers/--no-rate-limit-headers", help="Send the providers' rate-limit headers; off, 429s carry only retry-after.")] = True,
    fault_rate: Annotated[float, typer.Option(help="Share of requests that get an injected fault (0..1).")] = 0.0,
    faults: Annotated[str, typer.Option(help="Comma-separated fault kinds: 429,500,502,503,529,reset,cut.")] = "429,500,502,503,529,reset,cut",
    bad_marker: Annotated[str, typer.Option(help="Prompts containing this text get a permanent 400.")] = "[[bad]]",
    stream_as_json: Annotated[bool, typer.Option("--stream-as-json", help="Answer streaming requests with one JSON body, as some gateways do.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the fault draws.")] = 0,
    batch_seconds: Annotated[float, typer.Option(help="Batch API: seconds a batch takes from created to ended (the real APIs: up to 24 hours).")] = 2.0,
    batch_expire_first: Annotated[int, typer.Option(help="Batch API: the first N batches expire, with --batch-expire-fraction of their requests done.")] = 0,
    batch_expire_fraction: Annotated[float, typer.Option(help="Batch API: the share of an expiring batch's requests that are done.")] = 0.5,
    batch_delay_ms: Annotated[int, typer.Option(help="Batch API: a create or upload waits this long before and after its work; a download, before (crash tests).")] = 0,
) -> None:
    """Serve the OpenAI- and Anthropic-compatible mock API until Ctrl-C."""
    from runner._native import MockServer, NativeError

    try:
        schedule = pairs("--rate-limit-schedule", rate_limit_schedule, "START:RPS", int)
        if any(rps < 1 for _, rps in schedule):
            raise ValueError("--rate-limit-schedule: each RPS must be at least 1")
        episodes = pairs("--overload", overload, "START:DURATION", float)
    except ValueError as err:
        raise fail(str(err)) from None
    config = {
        "api_key": api_key,
        "latency_ms": latency_ms,
        "latency_jitter_ms": latency_jitter_ms,
        "rate_limit_rps": rate_limit,
        "rate_limit_schedule": schedule,
        "rate_limit_headers": rate_limit_headers,
        "overload": episodes,
        "fault_rate": fault_rate,
        "faults": [f.strip() for f in faults.split(",") if f.strip()],
        "bad_marker": bad_marker,
        "stream_as_json": stream_as_json,
        "seed": seed,
        "batch_seconds": batch_seconds,
        "batch_expire_first": batch_expire_first,
        "batch_expire_fraction": batch_expire_fraction,
        "batch_delay_ms": batch_delay_ms,
    }
    try:
        server = MockServer(json.dumps(config), host, port)
    except NativeError as err:
        raise fail(str(err)) from None
    typer.echo(
        f"mock server on {server.url}  (OpenAI base {server.url}/v1, Anthropic base {server.url}, key {api_key!r})",
        err=True,
    )
    sys.stderr.flush()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
        stats = json.loads(server.stats_json())
        typer.echo(f"stopped after {stats.get('requests', 0)} requests", err=True)


def pairs(flag: str, value: Optional[str], shape: str, second: type) -> list[list[float]]:
    """`"0:40,5:20"` as `[[0.0, 40], [5.0, 20]]`; a malformed item is a ValueError naming the flag.
    The ranges (ascending starts, rates of at least 1, ...) are checked by the server."""
    if value is None:
        return []
    out: list[list[float]] = []
    for item in value.split(","):
        try:
            a, b = item.split(":")
            pair = [float(a), second(b)]
            if not all(math.isfinite(x) for x in pair):
                raise ValueError
        except ValueError:
            raise ValueError(f"{flag}: expected {shape}[,{shape}...] (seconds), got {item.strip()!r}") from None
        out.append(pair)
    return out


@app.command()
def report(
    output: Annotated[Path, typer.Argument(help="An output Parquet file of prompt-runner run.")],
    markdown_file: Annotated[Optional[Path], typer.Option("--markdown", help="Write a Markdown summary here.")] = None,
    junit_file: Annotated[Optional[Path], typer.Option("--junit", help="Write JUnit XML here (a test case per row and model).")] = None,
    json_file: Annotated[Optional[Path], typer.Option("--json", help="Write the per-model stats as JSON here.")] = None,
    html_file: Annotated[Optional[Path], typer.Option("--html", help="Write a self-contained HTML report here (cards, charts, rows; opens offline).")] = None,
    min_pass_rate: Annotated[
        Optional[float], typer.Option(min=0.0, max=1.0, help="Exit 1 when a model's pass rate is lower (default: the job's).")
    ] = None,
) -> None:
    """Per-model counts, pass rates, errors, tokens, cost and latency of an output file."""
    from runner.evals.evaluate import write_reports
    from runner.evals.report import ReportError, load_output, print_stats, score_record

    try:
        table = load_output(output)
        if min_pass_rate is not None and "passed" not in table.column_names:
            raise ReportError(f"{output}: --min-pass-rate needs a scored output (no 'passed' column)")
        stats, missed = write_reports(
            table,
            markdown_path=markdown_file,
            junit_path=junit_file,
            json_path=json_file,
            html_path=html_file,
            min_pass_rate=min_pass_rate,
            title=f"prompt-runner report: {output.name}",
            source=str(output),
        )
    except RunnerError as err:
        raise fail(str(err)) from None
    print_stats(stats, f"{output}")
    threshold = min_pass_rate if min_pass_rate is not None else score_record(table).get("min_pass_rate")
    for message in missed:
        typer.echo(f"below the minimum pass rate: {message}", err=True)
    if threshold is not None and "passed" in table.column_names and not missed:
        typer.echo(f"every model reaches the minimum pass rate {threshold:.2f}", err=True)
    if missed:
        raise typer.Exit(EXIT_FAILED)


@app.command()
def compare(
    baseline: Annotated[Path, typer.Argument(help="The earlier output (e.g. last night's).")],
    new: Annotated[Path, typer.Argument(help="The output to check against it.")],
    markdown_file: Annotated[Optional[Path], typer.Option("--markdown", help="Write the comparison as Markdown here (a CI step summary).")] = None,
    html_file: Annotated[Optional[Path], typer.Option("--html", help="Write a self-contained HTML page here.")] = None,
    json_file: Annotated[Optional[Path], typer.Option("--json", help="Write every listed row as JSON here.")] = None,
    max_regressions: Annotated[int, typer.Option(min=0, help="Exit 1 when more rows than this regressed (passed before, not now).")] = 0,
) -> None:
    """Rows matched by id and model: pass-rate, cost and latency deltas per model; regressions, fixes, new errors, changed outputs."""
    from runner.evals import compare as cmp

    try:
        result = cmp.compare_files(baseline, new)
        cmp.write_reports(result, markdown_path=markdown_file, html_path=html_file, json_path=json_file)
    except RunnerError as err:
        raise fail(str(err)) from None
    cmp.print_comparison(result)
    regressions = len(result.regressions)
    if regressions > max_regressions:
        typer.echo(f"{regressions:,} regressions, more than --max-regressions {max_regressions}", err=True)
        raise typer.Exit(EXIT_FAILED)


def main() -> None:
    """The console script. It leaves without Python's interpreter teardown once a command is done:
    by then its files are closed and its threads have finished, and unloading polars and pyarrow
    would add ~50 ms to every command (see `exit_now`)."""
    try:
        app()
    except SystemExit as done:
        exit_now(done.code)
    exit_now(0)


def exit_now(code: object) -> None:
    """Flush what Python would flush at exit, run the atexit hooks, then `os._exit`. Falls back to
    a normal exit while a non-daemon thread still runs, since Python would wait for it."""
    import atexit
    import logging
    import os
    import threading

    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    status = 0 if code is None else int(code)  # type: ignore[call-overload]
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(status)
    logging.shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: Python's own exit reports 120 for stdout
            status = status or 120
    os._exit(status)
