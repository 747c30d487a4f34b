"""Prices per million tokens (USD) for known models, and the per-row cost column."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc

#: (input, output) USD per 1M tokens, from the providers' public price pages (2025).
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o3": (2.00, 8.00),
    "o4-mini": (1.10, 4.40),
    "gpt-3.5-turbo": (0.50, 1.50),
    "claude-3-5-haiku-latest": (0.80, 4.00),
    "claude-3-5-sonnet-latest": (3.00, 15.00),
    "claude-3-7-sonnet-latest": (3.00, 15.00),
    "claude-sonnet-4-0": (3.00, 15.00),
    "claude-opus-4-0": (15.00, 75.00),
    "claude-3-haiku-20240307": (0.25, 1.25),
}


def price_of(model: str, overrides: Mapping[str, Sequence[float]] | None = None) -> tuple[float, float] | None:
    """The model's price, from `overrides` (a job's `[prices]`) first, then the built-in table;
    dated snapshots (`gpt-4o-2024-08-06`) match their family."""
    for table in (overrides or {}, PRICES):
        if model in table:
            return (float(table[model][0]), float(table[model][1]))
        family = max((name for name in table if model.startswith(name + "-")), key=len, default=None)
        if family:
            return (float(table[family][0]), float(table[family][1]))
    return None


def cost_column(
    model: str,
    prompt_tokens: pa.Array,
    completion_tokens: pa.Array,
    overrides: Mapping[str, Sequence[float]] | None = None,
) -> pa.Array:
    """`cost_usd` for each row: null where the price or the token counts are unknown."""
    price = price_of(model, overrides)
    if price is None:
        return pa.nulls(len(prompt_tokens), pa.float64())
    cost_in = pc.multiply(pc.cast(prompt_tokens, pa.float64()), price[0] / 1e6)
    cost_out = pc.multiply(pc.cast(completion_tokens, pa.float64()), price[1] / 1e6)
    return pc.add(cost_in, cost_out)
