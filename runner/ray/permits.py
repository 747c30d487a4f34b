"""One rate limit for a whole cluster run: a named Ray actor (`PermitPool`) that shares each
model's `--rpm`/`--tpm` among the shards in short leases, and the shard side (`LeaseKeeper`)
that takes leases for its executors.

A lease is a share of a model's rates (requests/s, tokens/s) for the next `LEASE_SECONDS`. The
pool never hands out more than the limit: a new holder gets only what the others' current
leases leave free, and the others shrink to a fair share at their next renewal, so the shares
converge within a lease or two and their sum never exceeds the limit. A shard that dies stops
renewing: its share is free again when its lease runs out, and the others take it up at their
next renewal. A shard that finishes gives its share back at once.

The executors take their permits from outside (`granted` in their settings): each sends at the
rate of its current lease and waits when the lease has run out (native/src/limiter.rs, `Lease`).
A limit the server states (its rate-limit headers) is the cluster's too: a shard that reads one
reports it with its next renewal, and the pool paces the model to the lower of it and the
user's limit. A limit it does not state is learned for the cluster from all the shards'
answers, which each renewal brings (runner.ray.learned), and shared out like the user's limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from runner.ray.learned import SAMPLE_SECONDS, ClusterPace, Sample

__all__ = ["LEASE_SECONDS", "LeaseKeeper", "PermitPool", "pool_name"]

#: How long a lease lasts.
LEASE_SECONDS = 1.0
#: How often a shard renews its leases, reporting its answers: a pace learned from 429s reacts
#: this much later than a single run's.
RENEW_SECONDS = 0.25


def pool_name(run_key: str) -> str:
    return f"prompt-runner-permits-{run_key}"


class _ModelLimit:
    def __init__(self, rpm: float | None, tpm: float | None) -> None:
        self.user_rps = rpm / 60.0 if rpm else None
        self.stated_rps: float | None = None
        self.learned = ClusterPace()
        self.tps = tpm / 60.0 if tpm else None
        #: holder -> (requests/s, tokens/s, lease end)
        self.leases: dict[str, tuple[float, float, float]] = {}

    @property
    def learned_rps(self) -> float | None:
        """The pace learned from 429s, unless the server states its limit (which then wins, as
        in a single run)."""
        return None if self.stated_rps else self.learned.rate

    @property
    def rps(self) -> float | None:
        rates = [r for r in (self.user_rps, self.stated_rps, self.learned_rps) if r]
        return min(rates) if rates else None


class PermitPool:
    """The run's limits per model, shared by its shards (made a named Ray actor by the driver)."""

    def __init__(self, limits: list[tuple[float | None, float | None]], lease_seconds: float = LEASE_SECONDS) -> None:
        self.models = [_ModelLimit(rpm, tpm) for rpm, tpm in limits]
        self.lease_seconds = lease_seconds
        self.granted = 0
        #: shard -> what it has spent, as it last reported (kept after it ends)
        self.spent: dict[str, float] = {}

    def lease(self, model: int, holder: str, stated_rpm: float | None = None,
              answers: Sequence[Sample] = (), until: float | None = None) -> tuple[float, float, float]:
        """`holder`'s share of model `model`'s rates for the next lease: (requests/s, tokens/s,
        seconds), -1 for a rate the model has no limit on. `stated_rpm`: a limit the server
        stated to the holder; `answers`: its answers and 429s since its last lease, counted up
        to `until` (the wall clock; runner.ray.learned)."""
        limit = self.models[model]
        if stated_rpm:
            limit.stated_rps = min(limit.stated_rps or float("inf"), stated_rpm / 60.0)
        now = time.monotonic()
        limit.leases = {h: lease for h, lease in limit.leases.items() if lease[2] > now and h != holder}
        limit.learned.report(holder, answers, time.time() if until is None else until, [holder, *limit.leases])
        holders = len(limit.leases) + 1
        shares = []
        for total, index in ((limit.rps, 0), (limit.tps, 1)):
            if total is None:
                shares.append(-1.0)  # no limit
                continue
            taken = sum(lease[index] for lease in limit.leases.values())
            shares.append(max(0.0, min(total / holders, total - taken)))
        end = now + self.lease_seconds
        limit.leases[holder] = (max(shares[0], 0.0), max(shares[1], 0.0), end)
        self.granted += 1
        return shares[0], shares[1], self.lease_seconds

    def spend(self, shard: str, own: float) -> float:
        """Shard `shard` has spent `own` (USD, all its attempts); returns what the other shards
        have spent, so that each holds the run to one `--max-cost`."""
        self.spent[shard] = own
        return sum(v for k, v in self.spent.items() if k != shard)

    def release(self, holder: str) -> None:
        """`holder` is done: its shares are free at once."""
        for limit in self.models:
            limit.leases.pop(holder, None)
            limit.learned.forget(holder)

    def state(self) -> dict[str, Any]:
        """The current leases (for tests and the driver's progress)."""
        now = time.monotonic()
        return {
            "leases_granted": self.granted,
            "models": [
                {"rps": m.rps, "tps": m.tps, "learned_rps": m.learned_rps, "holders": {h: [round(l[0], 3), round(l[1], 3)] for h, l in m.leases.items() if l[2] > now}}
                for m in self.models
            ],
        }


class LeaseKeeper:
    """A shard's permit source (runner.engine.permits): its executors send on the leases it
    renews from the pool every `RENEW_SECONDS`, on a thread."""

    def __init__(self, pool: Any, shard: str, holder: str) -> None:
        self.pool = pool
        self.shard = shard
        self.holder = holder
        #: This shard's spending as the engine last told it (None: no budget), and the others'
        #: as the pool last told it.
        self._own_spent: float | None = None
        self._others_spent = 0.0
        self._executors: dict[int, Any] = {}
        #: model -> answers counted since the last renewal (runner.ray.learned)
        self._samples: dict[int, list[Sample]] = {}
        self._sampling = threading.Lock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    # -- runner.engine.permits.PermitSource --------------------------------------------------

    def config(self, lane: Any) -> dict[str, Any]:
        # The lane's own --rpm/--tpm are the cluster's, enforced by the pool's leases.
        return {"granted": True, "rpm": None, "tpm": None}

    def attach(self, lane: Any, executor: Any) -> None:
        with self._lock:
            self._executors[lane.index] = executor
        self._renew(lane.index, executor)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="permit-leases", daemon=True)
            self._thread.start()

    def detach(self, lane: Any, executor: Any) -> None:
        with self._lock:
            self._executors.pop(lane.index, None)

    def spent(self, own: float) -> float:
        first = self._own_spent is None
        self._own_spent = own
        if first:
            self._report_spending()  # before the first request is judged against the budget
        return own + self._others_spent

    # -- leases ------------------------------------------------------------------------------

    def _renew(self, model: int, executor: Any) -> None:
        import ray

        stats = executor.stats()
        stated = stats["pace_rps"] * 60.0 if stats.get("pace_source") == "stated" and stats.get("pace_rps") else None
        with self._sampling:
            self._sample(model, executor)
            samples, until = self._samples.pop(model, []), time.time()
        try:
            rps, tps, seconds = ray.get(self.pool.lease.remote(model, self.holder, stated, samples, until),
                                        timeout=max(1.0, LEASE_SECONDS))
        except Exception as err:  # noqa: BLE001 - the pool unreachable: no lease, the executor waits
            self.error = f"{type(err).__name__}: {err}"
            return
        executor.grant(rps, tps, seconds)

    def _report_spending(self) -> None:
        import ray

        try:
            self._others_spent = ray.get(self.pool.spend.remote(self.shard, self._own_spent), timeout=max(1.0, LEASE_SECONDS))
        except Exception as err:  # noqa: BLE001 - the pool unreachable: the others' last figure stands
            self.error = f"{type(err).__name__}: {err}"

    def _sample(self, model: int, executor: Any) -> None:
        """Counts the executor's answers since the last count, with the time (under `_sampling`)."""
        answers, limited = executor.take_answers()
        if answers:
            self._samples.setdefault(model, []).append((time.time(), answers, limited))

    def _loop(self) -> None:
        next_renewal = time.monotonic() + RENEW_SECONDS
        while not self._stop.wait(SAMPLE_SECONDS):
            with self._lock:
                executors = list(self._executors.items())
            if time.monotonic() < next_renewal:
                with self._sampling:
                    for model, executor in executors:
                        self._sample(model, executor)
                continue
            next_renewal = time.monotonic() + RENEW_SECONDS
            for model, executor in executors:
                self._renew(model, executor)
            if self._own_spent is not None:
                self._report_spending()

    def close(self) -> None:
        """Stops renewing, reports what the shard spent in the end, and gives its shares back."""
        import ray

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._own_spent is not None:
            self._report_spending()
        try:
            ray.get(self.pool.release.remote(self.holder), timeout=5)
        except Exception:  # noqa: BLE001 - a pool gone: its leases end on their own
            pass
