"""What one loaded model version has done, as Triton's statistics extension reports it: requests
that succeeded and failed with their cumulative time, the time requests waited for the model and
spent in it (summed over requests), and how many sequences and model calls there were."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lstm_server.core.scheduler import BatchObservation


@dataclass
class ModelStatistics:
    """Counters of one version; every field only grows while the version is loaded."""

    success_count: int = 0
    success_seconds: float = 0.0
    failure_count: int = 0
    failure_seconds: float = 0.0
    queued_count: int = 0  # requests that reached the model's queue
    queue_seconds: float = 0.0  # summed over those requests
    compute_seconds: float = 0.0  # each model call's time, once per request in it
    inference_count: int = 0  # sequences (session steps included) run by the model
    execution_count: int = 0  # model calls
    last_inference_ms: int = 0  # wall-clock milliseconds since the epoch; 0: none yet
    # Per batch size (rows in one model call): [model calls, their cumulative seconds].
    batches: dict[int, list[float]] = field(default_factory=dict)

    def request_done(self, seconds: float, *, ok: bool) -> None:
        if ok:
            self.success_count += 1
            self.success_seconds += seconds
        else:
            self.failure_count += 1
            self.failure_seconds += seconds

    def batch_done(self, batch: BatchObservation) -> None:
        self.execution_count += 1
        self.inference_count += batch.sequences
        self.queued_count += len(batch.queue_seconds)
        self.queue_seconds += sum(batch.queue_seconds)
        self.compute_seconds += batch.inference_seconds * len(batch.queue_seconds)
        self.last_inference_ms = int(time.time() * 1000)
        calls = self.batches.setdefault(batch.rows, [0, 0.0])
        calls[0] += 1
        calls[1] += batch.inference_seconds
