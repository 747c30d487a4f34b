"""The pace of a limit the server does not state, learned for a whole cluster run (the pool's
side; README, "Shards and Ray").

A single run learns it from the share of 429s among its answers (native/src/adaptive.rs). A
cluster learns it the same way from all its shards' answers at once: each shard counts its
answers as they come (`Executor.take_answers`, sampled every `SAMPLE_SECONDS` with the time) and
reports the samples with each lease renewal. Here they are put in time bins as long as the
learner's ticks and handed to one native learner (`PaceLearner`) in time order, a bin once every
shard has reported past it; so the learner sees the cluster's answers when they came, not when
the renewals brought them (renewals bunch up when the shards' machines are busy).

A cut reaches the shards with their next lease: answers a shard took before it had a lease at
the cut pace are left out, since they would read as 429s the cut did not stop.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["BIN_SECONDS", "SAMPLE_SECONDS", "ClusterPace"]

#: The learner's tick.
BIN_SECONDS = 0.25
#: How often a shard counts its answers.
SAMPLE_SECONDS = 0.05

#: One shard's answers and 429s counted at a time (seconds, the wall clock: the nodes of a cluster
#: keep theirs in step, with NTP).
Sample = tuple[float, int, int]


class ClusterPace:
    """One model's learned pace, from the answers of every holder of its leases."""

    def __init__(self) -> None:
        self.learner: Any = None
        #: bin index -> [answers, 429s]; bins before `next_bin` are fed
        self.bins: dict[int, list[int]] = {}
        self.next_bin: int | None = None
        #: holder -> the time up to which it has reported its answers (its last renewal)
        self.reported: dict[str, float] = {}
        #: how many times the pace was cut, and how many cuts each holder's lease knows of
        self.cuts = 0
        self.knows: dict[str, int] = {}

    @property
    def rate(self) -> float | None:
        return None if self.learner is None else self.learner.rate

    def report(self, holder: str, samples: Sequence[Sample], until: float, active: Iterable[str]) -> None:
        """`holder`'s answers, counted up to `until`; `active`: the holders whose reports the
        bins wait for (those with a lease running)."""
        self.reported[holder] = until
        if self.knows.get(holder, self.cuts) == self.cuts:  # else taken on a lease from before a cut
            for at, answers, limited in samples:
                index = int(at // BIN_SECONDS)
                if self.next_bin is not None:
                    index = max(index, self.next_bin)  # late: counted in the first bin not fed
                counts = self.bins.setdefault(index, [0, 0])
                counts[0] += answers
                counts[1] += min(limited, answers)
        self._feed([self.reported[h] for h in active if h in self.reported])
        self.knows[holder] = self.cuts  # the lease it gets now is at the current pace

    def forget(self, holder: str) -> None:
        """`holder` is done: the bins no longer wait for it."""
        self.reported.pop(holder, None)
        self.knows.pop(holder, None)

    def _feed(self, horizons: list[float]) -> None:
        if not horizons:
            return
        if self.next_bin is None:
            if not self.bins:
                return
            self.next_bin = min(self.bins)
        horizon = min(horizons)
        while (self.next_bin + 1) * BIN_SECONDS <= horizon:
            answers, limited = self.bins.pop(self.next_bin, (0, 0))
            if not answers:
                # As in a single run, a tick closes only with answers: a quiet spell (every
                # request waiting out a Retry-After) is part of the next tick, not a tick in
                # which the server accepted nothing.
                self.next_bin += 1
                continue
            if self.learner is None:
                from runner._native import PaceLearner

                self.learner = PaceLearner(self.next_bin * BIN_SECONDS)
            before = self.learner.rate
            self.learner.record(answers, limited, (self.next_bin + 1) * BIN_SECONDS)
            after = self.learner.rate
            if after is not None and (before is None or after < before):
                self.cuts += 1
            self.next_bin += 1
