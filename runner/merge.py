"""`prompt-runner merge`: shard outputs joined into one output, checked for completeness.

Every shard output carries its run's record (`prompt_runner.config`): the input (paths, sizes,
sha256), the options and the shard. Merging checks that the outputs are shards of one run (same
input, same requests), reads the input's ids again, and checks that each input row appears
exactly once per model; otherwise nothing is written and `MergeError` names the missing,
duplicated or foreign ids. The merged output has the rows in input order, model by model (as a
single-process run writes them), the first shard's record (without its shard, with the list of
shards merged) and the shards' summaries combined (counters summed, the longest elapsed time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from runner.errors import InputError, RunnerError
from runner.schema import META_CONFIG, META_SUMMARY

__all__ = ["MergeError", "Merged", "merge_outputs"]

#: How many ids an error names before it says "and N more".
SHOWN_IDS = 10
META_SCORE = b"prompt_runner.score"


class MergeError(RunnerError):
    """The outputs do not hold every input row exactly once per model (exit 1)."""


@dataclass
class Merged:
    output: Path
    rows: int
    models: list[str]
    shards: list[str]


def _record(path: Path) -> tuple[dict[str, Any], dict[bytes, bytes]]:
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException) as err:
        raise InputError(f"{path}: not a Parquet file ({err})") from None
    try:
        record = json.loads(meta[META_CONFIG])
        record["options"]["input"]
    except (KeyError, ValueError, TypeError):
        raise InputError(f"{path}: not a prompt-runner output (no run record in its metadata)") from None
    return record, meta


def _same_run(paths: list[Path], records: list[dict[str, Any]]) -> None:
    """Refuses outputs of different runs: another input, or other requests."""
    first = records[0].get("fingerprint", {})
    for path, record in zip(paths[1:], records[1:]):
        other = record.get("fingerprint", {})
        if [(f["size"], f["sha256"]) for f in other.get("input", [])] != [(f["size"], f["sha256"]) for f in first.get("input", [])]:
            raise InputError(f"{path}: a run of another input than {paths[0]}; merge the shards of one run")
        a = {k: v for k, v in first.get("request", {}).items() if k != "shard"}
        b = {k: v for k, v in other.get("request", {}).items() if k != "shard"}
        changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        if changed:
            raise InputError(f"{path}: differs from {paths[0]} in {', '.join(changed)}; merge the shards of one run")
        if record["options"].get("limit") != records[0]["options"].get("limit"):
            raise InputError(f"{path}: differs from {paths[0]} in --limit; merge the shards of one run")


def _shards(paths: list[Path], records: list[dict[str, Any]]) -> list[str]:
    """The shards given ("I/N"), checked: one N, each shard once; an unsharded output stands for all rows."""
    from runner.engine.shard import parse_shard

    seen: dict[Any, Path] = {}
    counts = set()
    names = []
    for path, record in zip(paths, records):
        shard = parse_shard(record["options"].get("shard"), f"{path}: shard")
        key = (shard.index, shard.count) if shard else None
        if key in seen:
            what = f"shard {shard}" if shard else "an unsharded run"
            raise MergeError(f"{path}: {what} is given twice ({seen[key]} and {path}); every row would be there twice")
        seen[key] = path
        counts.add(shard.count if shard else 1)
        names.append(str(shard) if shard else "all")
    if len(counts) > 1:
        raise InputError(f"the outputs split the rows in different numbers of shards ({', '.join(map(str, sorted(counts)))}); merge the shards of one run")
    return names


def _input_ids(record: dict[str, Any], input_override: str | None) -> list[str]:
    """The ids of the run's input rows, in input order (the first --limit rows)."""
    from runner.engine.shard import shard_rows
    from runner.inputs.dataset import resolve_inputs
    from runner.inputs.render import RequestSpec, plan
    from runner.store.checkpoint import file_digest

    options = record["options"]
    source = input_override or options["input"]
    try:
        paths = resolve_inputs(source)
    except InputError as err:
        raise InputError(f"{err}; the shards' input is needed to check the merge (give it with --input)") from None
    saved = [(f["size"], f["sha256"]) for f in record.get("fingerprint", {}).get("input", [])]
    if saved and [(d["size"], d["sha256"]) for d in map(file_digest, paths)] != saved:
        raise InputError(f"{source}: not the input the shards ran (its size or sha256 differs)")
    request = RequestSpec(template=options.get("template"), system=options.get("system"), id_column=record.get("fingerprint", {}).get("request", {}).get("id_column", options.get("id_column")))
    renderers: dict[Path, Any] = {}

    def renderer(path: Path, table: pa.Table) -> Any:
        if path not in renderers:
            renderers[path] = plan(table.column_names, request, str(path))
        return renderers[path]

    ids: list[str] = []
    for _, chunk_ids, _ in shard_rows(paths, None, renderer, options.get("limit"), None):
        ids.extend(chunk_ids.to_pylist())
    return ids


def _models(record: dict[str, Any]) -> list[str]:
    from runner.engine.spec import RunSpec

    options = {k: v for k, v in record["options"].items() if k in RunSpec.__dataclass_fields__}
    options.pop("response_format", None)  # only the models' names are needed, not their files
    options.pop("tools", None)
    try:
        return [lane.model for lane in RunSpec(output=Path("-"), **options).lanes()]
    except (TypeError, KeyError) as err:
        raise InputError(f"the shards' run record cannot be read by this version: {err}") from None


def _listing(ids: list[str]) -> str:
    shown = ", ".join(ids[:SHOWN_IDS])
    return shown + (f" and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else "")


def _check(found: pl.DataFrame, expected: pl.DataFrame, target: Path, shards: list[str]) -> None:
    """Every (model, id) of `expected` exactly once in `found`, and nothing else; else MergeError."""
    counts = found.group_by(["model", "id"]).len()
    problems = []
    given = [s for s in shards if s != "all"]
    if given:
        n = int(given[0].split("/")[1])
        absent = [f"{i}/{n}" for i in range(n) if f"{i}/{n}" not in given]
        if absent:
            problems.append(f"shard{'s' if len(absent) > 1 else ''} {', '.join(absent)} not given")
    for model in expected["model"].unique(maintain_order=True).to_list():
        want = expected.filter(pl.col("model") == model)
        have = counts.filter(pl.col("model") == model)
        missing = want.join(have, on=["model", "id"], how="anti").sort("_pos")["id"].to_list()
        twice = have.filter(pl.col("len") > 1).join(want, on=["model", "id"], how="left").sort("_pos")["id"].to_list()
        foreign = have.join(want, on=["model", "id"], how="anti")["id"].to_list()
        if missing:
            problems.append(f"model {model}: {len(missing)} input rows missing (ids {_listing(missing)})")
        if twice:
            problems.append(f"model {model}: {len(twice)} rows more than once (ids {_listing(twice)})")
        if foreign:
            problems.append(f"model {model}: {len(foreign)} rows not in the input (ids {_listing(foreign)})")
    other = counts.join(expected.select("model").unique(), on="model", how="anti")["model"].unique().to_list()
    if other:
        problems.append(f"rows of models the run does not have: {', '.join(map(str, other))}")
    if problems:
        raise MergeError(f"{target}: not written: " + "; ".join(problems))


def _combined(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The shards' summaries as one: numbers summed (the elapsed time: the longest), the rest
    from the first shard that has it."""

    def add(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            return {k: add(a[k], b[k]) if k in a and k in b else a.get(k, b.get(k)) for k in a.keys() | b.keys()}
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            return a + b
        return a

    total: dict[str, Any] = {}
    for summary in summaries:
        total = add(total, summary) if total else dict(summary)
    elapsed = [s["elapsed_s"] for s in summaries if isinstance(s.get("elapsed_s"), (int, float))]
    if elapsed:
        total["elapsed_s"] = max(elapsed)
    total["shards"] = summaries
    return total


def merge_outputs(outputs: list[Path], target: Path, input_override: str | None = None) -> Merged:
    """Merges shard `outputs` into `target` (atomically); raises MergeError (missing, duplicated
    or foreign rows) or InputError (not outputs of one run) and then writes nothing."""
    from runner.store.checkpoint import concat_rows
    from runner.store.files import OUTPUT_OPTIONS, write_atomic

    if not outputs:
        raise InputError("merge: give the shard outputs to merge")
    paths = [Path(p) for p in outputs]
    if Path(target).resolve() in {p.resolve() for p in paths}:
        raise InputError(f"{target}: -o is one of the outputs to merge; write the merged output elsewhere")
    loaded = [_record(p) for p in paths]
    records = [r for r, _ in loaded]
    _same_run(paths, records)
    shards = _shards(paths, records)
    models = _models(records[0])
    ids = _input_ids(records[0], input_override)
    tables = []
    for path in paths:
        try:
            tables.append(pq.read_table(path))
        except (OSError, pa.ArrowException) as err:
            raise InputError(f"{path}: cannot read: {err}") from None
    table = concat_rows(tables).replace_schema_metadata(None)
    if "id" not in table.column_names or "model" not in table.column_names:
        raise InputError(f"{paths[0]}: not a prompt-runner output (no 'id' or 'model' column)")
    expected = pl.DataFrame(
        {
            "model": [m for m in models for _ in ids],
            "id": ids * len(models),
            "_lane": [i for i in range(len(models)) for _ in ids],
            "_pos": list(range(len(ids))) * len(models),
        },
        schema={"model": pl.String, "id": pl.String, "_lane": pl.Int64, "_pos": pl.Int64},
    )
    found = pl.DataFrame({"model": table.column("model").to_pylist(), "id": table.column("id").to_pylist()},
                         schema={"model": pl.String, "id": pl.String}).with_row_index("_i")
    _check(found, expected, Path(target), shards)
    order = found.join(expected, on=["model", "id"], how="inner").sort(["_lane", "_pos"])["_i"].to_arrow()
    merged = table.take(order)
    record = {**records[0], "options": {**records[0]["options"], "shard": None}}
    record["fingerprint"] = {**record.get("fingerprint", {}), "request": {k: v for k, v in record.get("fingerprint", {}).get("request", {}).items() if k != "shard"}}
    record["rows"], record["input_rows"] = len(ids) * len(models), len(ids)
    record["merged_from"] = [{"output": str(p), "shard": s, "run_id": r.get("run_id")} for p, s, r in zip(paths, shards, records)]
    summaries = []
    for _, meta in loaded:
        try:
            summaries.append(json.loads(meta.get(META_SUMMARY, b"{}")))
        except ValueError:
            summaries.append({})
    metadata = {META_CONFIG: json.dumps(record).encode(), META_SUMMARY: json.dumps(_combined(summaries)).encode()}
    if META_SCORE in loaded[0][1]:
        metadata[META_SCORE] = loaded[0][1][META_SCORE]
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(merged.replace_schema_metadata(metadata), target, **OUTPUT_OPTIONS)
    except OSError as err:
        raise InputError(f"{target}: cannot write the merged output: {err.strerror or err}") from None
    return Merged(target, merged.num_rows, models, shards)
