"""Predict and PredictStream: run a batch of sequences, whole or chunk by chunk."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from lstm_server.core.scheduler import BatchScheduler
from lstm_server.core.types import Array, GivenState, Limits, ModelInfo, Row, RowResult, State
from lstm_server.core.validation import RaggedSequence, predict_rows


@dataclass(frozen=True)
class StreamChunk:
    """Results (k, timestep_width) of a sequence from ``start_timestep``; its last chunk has
    the final state."""

    sequence_index: int
    start_timestep: int
    results: Array
    final_state: State | None = None


class InferenceService:
    """Runs validated sequences through the scheduler."""

    def __init__(
        self,
        scheduler: BatchScheduler,
        limits: Limits,
        *,
        stream_chunk_timesteps: int = 64,
    ) -> None:
        self.scheduler = scheduler
        self.limits = limits
        self.stream_chunk_timesteps = stream_chunk_timesteps

    @property
    def info(self) -> ModelInfo:
        return self.scheduler.runtime.info

    async def predict(
        self,
        sequences: list[RaggedSequence],
        initial_states: list[GivenState],
        *,
        deadline: float | None = None,
    ) -> list[RowResult]:
        """Each sequence's results and final state, exactly as Keras gives them alone."""
        rows = [
            Row(x, s) for x, s in predict_rows(sequences, initial_states, self.info, self.limits)
        ]
        return await self.scheduler.run(rows, deadline=deadline)

    async def predict_stream(
        self,
        sequences: list[RaggedSequence],
        initial_states: list[GivenState],
        *,
        timesteps_per_message: int = 1,
        deadline: float | None = None,
    ) -> AsyncIterator[StreamChunk]:
        """Run all sequences chunk by chunk, carrying states, and yield outputs as they come."""
        validated = predict_rows(sequences, initial_states, self.info, self.limits)
        per_message = max(1, timesteps_per_message)
        chunk = max(self.stream_chunk_timesteps, per_message)
        chunk -= chunk % per_message  # every message but each sequence's last is full
        states = [s for _, s in validated]
        longest = max(x.shape[0] for x, _ in validated)
        for start in range(0, longest, chunk):
            active = [i for i, (x, _) in enumerate(validated) if x.shape[0] > start]
            rows = [
                Row(validated[i][0][start : start + chunk], states[i], start > 0) for i in active
            ]
            results = await self.scheduler.run(rows, deadline=deadline)
            for i, result in zip(active, results, strict=True):
                states[i] = result.state
                last = start + result.sequence.shape[0] >= validated[i][0].shape[0]
                for offset in range(0, result.sequence.shape[0], per_message):
                    part = result.sequence[offset : offset + per_message]
                    ends = last and offset + per_message >= result.sequence.shape[0]
                    yield StreamChunk(i, start + offset, part, result.state if ends else None)
