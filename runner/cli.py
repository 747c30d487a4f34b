"""The `prompt-runner` command line: thin Typer commands; domain errors become one line and an exit code."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from runner.errors import RunnerError

app = typer.Typer(
    name="prompt-runner",
    help="Run prompt datasets against LLM APIs: fast, at the rate limit, resumable. Results land in Parquet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@app.command()
def run(
    input: Annotated[str, typer.Argument(help="A .jsonl, .jsonl.gz or .parquet file, a directory or a glob of them.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The output Parquet file; its run state lives beside it.")],
    provider: Annotated[str, typer.Option(help="openai, anthropic, or mock (a built-in server, no key needed).")] = "openai",
    model: Annotated[Optional[str], typer.Option(help="The model name sent to the provider.")] = None,
    api_base: Annotated[Optional[str], typer.Option(help="Base URL (else OPENAI_BASE_URL / ANTHROPIC_BASE_URL).")] = None,
    api_key_env: Annotated[Optional[str], typer.Option(help="Read the API key from this variable instead.")] = None,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at most.")] = 32,
    rpm: Annotated[Optional[int], typer.Option(help="Requests per minute at most.")] = None,
    tpm: Annotated[Optional[int], typer.Option(help="Tokens per minute at most (prompt estimate + max tokens).")] = None,
    max_retries: Annotated[int, typer.Option(help="Retries of a transient failure per row.")] = 6,
    timeout: Annotated[float, typer.Option(help="Seconds per attempt.")] = 60.0,
    stream: Annotated[bool, typer.Option("--stream", help="Stream responses (SSE); records time to first token.")] = False,
    template: Annotated[Optional[str], typer.Option(help="A Jinja template over the row's columns, e.g. 'Q: {{ question }}'.")] = None,
    template_file: Annotated[Optional[Path], typer.Option(help="Read the template from a file.")] = None,
    system: Annotated[Optional[str], typer.Option(help="A system prompt for every row.")] = None,
    id_column: Annotated[Optional[str], typer.Option(help="The column holding each row's id (default: the row's position).")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Sampling temperature.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Most tokens to generate per row.")] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N rows.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check and render the input, count rows, send nothing.")] = False,
    mock_config: Annotated[str, typer.Option(hidden=True, help="JSON settings of the built-in mock (tests).")] = "{}",
    # observability
    log_level: Annotated[Optional[str], typer.Option(help="Log requests and retries to stderr at this level (error, warning, info, debug).", envvar="PROMPT_RUNNER_LOG")] = None,
    log_format: Annotated[str, typer.Option(help="Log format: text, or json (one object per line).")] = "text",
    metrics_port: Annotated[Optional[int], typer.Option(help="Serve Prometheus metrics on http://127.0.0.1:PORT/metrics during the run.")] = None,
) -> None:
    """Run every row of INPUT against a model and write one result row per input row."""
    from runner import observability
    from runner.batch import Batch, RunOptions

    try:  # observability
        observability.setup_logging(log_level, log_format)
    except RunnerError as err:
        raise fail(str(err)) from None

    if template and template_file:
        raise fail("give --template or --template-file, not both")
    if template_file is not None:
        try:
            template = template_file.read_text()
        except OSError as err:
            raise fail(f"{template_file}: cannot read the template: {err.strerror}") from None
    opts = RunOptions(
        input=input,
        output=output,
        provider=provider,
        model=model,
        api_base=api_base,
        api_key_env=api_key_env,
        concurrency=concurrency,
        rpm=rpm,
        tpm=tpm,
        max_retries=max_retries,
        timeout=timeout,
        stream=stream,
        template=template,
        system=system,
        id_column=id_column,
        temperature=temperature,
        max_tokens=max_tokens,
        limit=limit,
        dry_run=dry_run,
        mock_config=mock_config,
        metrics_port=metrics_port,  # observability
    )
    try:
        code = Batch(opts).run()
    except RunnerError as err:
        raise fail(str(err)) from None
    except KeyboardInterrupt:
        typer.echo("interrupted before the run started; nothing was sent", err=True)
        raise typer.Exit(130) from None
    raise typer.Exit(code)


@app.command("mock-server")
def mock_server(
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = 8000,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    api_key: Annotated[str, typer.Option(help="The key the server accepts.")] = "mock-key",
    latency_ms: Annotated[int, typer.Option(help="Delay before each response, in ms.")] = 0,
    rate_limit: Annotated[Optional[int], typer.Option(help="Requests per second before answering 429.")] = None,
    fault_rate: Annotated[float, typer.Option(help="Share of requests that get an injected fault (0..1).")] = 0.0,
    faults: Annotated[str, typer.Option(help="Comma-separated fault kinds: 429,500,502,503,529,reset,cut.")] = "429,500,502,503,529,reset,cut",
    bad_marker: Annotated[str, typer.Option(help="Prompts containing this text get a permanent 400.")] = "[[bad]]",
    seed: Annotated[int, typer.Option(help="Seed of the fault draws.")] = 0,
) -> None:
    """Serve the OpenAI- and Anthropic-compatible mock API until Ctrl-C."""
    from runner._native import MockServer, NativeError

    config = {
        "api_key": api_key,
        "latency_ms": latency_ms,
        "rate_limit_rps": rate_limit,
        "fault_rate": fault_rate,
        "faults": [f.strip() for f in faults.split(",") if f.strip()],
        "bad_marker": bad_marker,
        "seed": seed,
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


def main() -> None:
    app()
