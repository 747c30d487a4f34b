"""Prices per million tokens (USD) for known models, and the per-row cost column.

A price is (input, output[, cached input[, cache write]]). Cached input is what a provider's
prompt cache serves (OpenAI `cached_tokens`, Anthropic `cache_read_input_tokens`); a cache write
is Anthropic's `cache_creation_input_tokens`. Both are counted inside `prompt_tokens`. Reasoning
tokens are output tokens (inside `completion_tokens`) and cost as such. Without a cached or
write price, those tokens cost the input price.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

#: USD per 1M tokens: (input, output, cached input, cache write), from the providers' pricing
#: pages (OpenAI: cached input at its listed rate, no write charge; Anthropic: cache reads at
#: 0.1x input, 5-minute cache writes at 1.25x input). Override any with a job's `[prices]`.
PRICES: dict[str, tuple[float, ...]] = {
    "gpt-5": (1.25, 10.00, 0.125, 1.25),
    "gpt-5-mini": (0.25, 2.00, 0.025, 0.25),
    "gpt-5-nano": (0.05, 0.40, 0.005, 0.05),
    "gpt-4.1": (2.00, 8.00, 0.50, 2.00),
    "gpt-4.1-mini": (0.40, 1.60, 0.10, 0.40),
    "gpt-4.1-nano": (0.10, 0.40, 0.025, 0.10),
    "gpt-4o": (2.50, 10.00, 1.25, 2.50),
    "gpt-4o-mini": (0.15, 0.60, 0.075, 0.15),
    "o3": (2.00, 8.00, 0.50, 2.00),
    "o3-mini": (1.10, 4.40, 0.55, 1.10),
    "o4-mini": (1.10, 4.40, 0.275, 1.10),
    "gpt-3.5-turbo": (0.50, 1.50),
    "claude-opus-4-1": (15.00, 75.00, 1.50, 18.75),
    "claude-opus-4-0": (15.00, 75.00, 1.50, 18.75),
    "claude-sonnet-4-5": (3.00, 15.00, 0.30, 3.75),
    "claude-sonnet-4-0": (3.00, 15.00, 0.30, 3.75),
    "claude-haiku-4-5": (1.00, 5.00, 0.10, 1.25),
    "claude-3-7-sonnet-latest": (3.00, 15.00, 0.30, 3.75),
    "claude-3-5-sonnet-latest": (3.00, 15.00, 0.30, 3.75),
    "claude-3-5-haiku-latest": (0.80, 4.00, 0.08, 1.00),
    "claude-3-haiku-20240307": (0.25, 1.25, 0.03, 0.30),
}

#: What the providers' Batch APIs charge, as a share of the live price (OpenAI and Anthropic: 50 %).
BATCH_DISCOUNT = 0.5


def rates_of(model: str, overrides: Mapping[str, Sequence[float]] | None = None) -> tuple[float, float, float, float] | None:
    """The model's (input, output, cached input, cache write) price, from `overrides` (a job's
    `[prices]`) first, then the built-in table; dated snapshots (`gpt-4o-2024-08-06`) match their
    family, the longest family name first."""
    for table in (overrides or {}, PRICES):
        if model in table:
            return _rates(table[model])
        family = max((name for name in table if model.startswith(name + "-")), key=len, default=None)
        if family:
            return _rates(table[family])
    return None


def _rates(price: Sequence[float]) -> tuple[float, float, float, float]:
    given = [float(x) for x in price]
    cached = given[2] if len(given) > 2 else given[0]
    write = given[3] if len(given) > 3 else given[0]
    return (given[0], given[1], cached, write)


def price_of(model: str, overrides: Mapping[str, Sequence[float]] | None = None) -> tuple[float, float] | None:
    """The model's (input, output) price (see `rates_of`)."""
    rates = rates_of(model, overrides)
    return None if rates is None else (rates[0], rates[1])


def row_costs(model: str, results: pa.Table, overrides: Mapping[str, Sequence[float]] | None = None) -> pa.Array:
    """`cost_usd` of result rows (a poll's, or the log's), from their token columns."""
    def optional(name: str) -> pa.Array | None:
        return results.column(name) if name in results.column_names else None

    return cost_column(
        model, results.column("prompt_tokens"), results.column("completion_tokens"), overrides,
        optional("cached_prompt_tokens"), optional("cache_write_tokens"),
    )


def cost_column(
    model: str,
    prompt_tokens: pa.Array,
    completion_tokens: pa.Array,
    overrides: Mapping[str, Sequence[float]] | None = None,
    cached_tokens: pa.Array | None = None,
    write_tokens: pa.Array | None = None,
) -> pa.Array:
    """`cost_usd` for each row: null where the price or the token counts are unknown. Cached and
    written prompt tokens (parts of `prompt_tokens`) cost their own prices."""
    rates = rates_of(model, overrides)
    if rates is None:
        return pa.nulls(len(prompt_tokens), pa.float64())
    price_in, price_out, price_cached, price_write = rates
    prompt = pc.cast(prompt_tokens, pa.float64())
    cost = pc.add(pc.multiply(prompt, price_in / 1e6), pc.multiply(pc.cast(completion_tokens, pa.float64()), price_out / 1e6))
    for tokens, price in ((cached_tokens, price_cached), (write_tokens, price_write)):
        if tokens is not None and price != price_in:
            extra = pc.fill_null(pc.cast(tokens, pa.float64()), 0.0)
            cost = pc.add(cost, pc.multiply(extra, (price - price_in) / 1e6))
    return cost


def with_cost(
    table: pa.Table, models: Sequence[str], input_rows: int, prices: Mapping[str, Sequence[float]] | None
) -> pa.Table:
    """Logged results with their `cost_usd`: row `r` was answered by model `r // input_rows`."""
    if not table.num_rows or not input_rows:
        return table.append_column("cost_usd", pa.nulls(table.num_rows, pa.float64()))
    lanes = pc.divide(table.column("_row"), input_rows)  # integer division
    pieces = []
    for index, model in enumerate(models):
        mine = table.filter(pc.equal(lanes, index))
        cost = row_costs(model, mine, prices)
        pieces.append(mine.append_column("cost_usd", cost))
    return pa.concat_tables(pieces)
