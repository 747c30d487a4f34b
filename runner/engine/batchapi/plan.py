"""How rows are cut into provider batches (within the provider's count and size limits, and
`--batch-size`), and what a batch is expected to cost at the Batch API's price."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from runner.engine.pricing import BATCH_DISCOUNT, price_of

#: Each provider's limits per batch: (requests, bytes). The mock speaks OpenAI's API.
LIMITS = {"openai": (50_000, 200 * 1024 * 1024), "anthropic": (100_000, 256 * 1024 * 1024)}
#: Room kept under the byte limit for the request's own framing.
SLACK = 1024 * 1024


@dataclass
class Piece:
    """The rows of one batch to be, with their lines."""

    rows: list[int]
    lines: list[str]
    bytes: int


def limits(wire: str, batch_size: int | None) -> tuple[int, int]:
    requests, size = LIMITS[wire]
    return (min(requests, batch_size) if batch_size else requests), size - SLACK


def split(rows: Sequence[int], lines: Sequence[str], max_requests: int, max_bytes: int) -> Iterator[Piece]:
    """Consecutive pieces of at most `max_requests` lines and `max_bytes` bytes (a newline each)."""
    piece = Piece([], [], 0)
    for row, line in zip(rows, lines):
        size = len(line.encode()) + 1
        if piece.rows and (len(piece.rows) >= max_requests or piece.bytes + size > max_bytes):
            yield piece
            piece = Piece([], [], 0)
        piece.rows.append(row)
        piece.lines.append(line)
        piece.bytes += size
    if piece.rows:
        yield piece


def count_batches(rows: int, size: int, max_requests: int, max_bytes: int) -> int:
    """Batches needed for `rows` requests of `size` bytes in all (for `--dry-run`)."""
    if not rows:
        return 0
    return max(math.ceil(rows / max_requests), math.ceil(size / max_bytes))


def estimate(model: str, prices: Mapping[str, Sequence[float]] | None, prompt_chars: int, rows: int, max_tokens: int | None) -> float | None:
    """USD at the batch price: about 4 characters a prompt token, and `max_tokens` per answer
    (none when unbounded); None without a price for the model."""
    price = price_of(model, prices)
    if price is None:
        return None
    prompt_tokens = prompt_chars / 4
    completion_tokens = (max_tokens or 0) * rows
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6 * BATCH_DISCOUNT
