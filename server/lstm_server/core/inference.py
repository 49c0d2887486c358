"""Predict and PredictStream: run a batch of sequences, whole or chunk by chunk, on the model
version a request names."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from lstm_server.core.registry import ModelRef, ModelRegistry, ServedModel
from lstm_server.core.types import Array, GivenState, Limits, Row, RowResult, State
from lstm_server.core.validation import LSTM_V1, Fields, RaggedSequence, predict_rows


@dataclass(frozen=True)
class StreamChunk:
    """Results (k, timestep_width) of a sequence from ``start_timestep``; its last chunk has
    the final state."""

    sequence_index: int
    start_timestep: int
    results: Array
    final_state: State | None = None


class InferenceService:
    """Runs validated sequences through the scheduler of the model version they are for."""

    def __init__(
        self,
        models: ModelRegistry,
        limits: Limits,
        *,
        stream_chunk_timesteps: int = 64,
    ) -> None:
        """``limits``: the server's, which bound what a request may be before its model is
        known; each model's own (``ServedModel.limits``) may be tighter."""
        self.models = models
        self.limits = limits
        self.stream_chunk_timesteps = stream_chunk_timesteps

    def model(
        self, ref: ModelRef, *, deadline: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[ServedModel]:
        """The version ``ref`` names, held for the call, which its statistics count (see
        ``ModelRegistry.acquire``)."""
        return self.models.acquire(ref, deadline=deadline, counted=True)

    async def predict(
        self,
        model: ServedModel,
        sequences: list[RaggedSequence],
        initial_states: list[GivenState],
        *,
        deadline: float | None = None,
        fields: Fields = LSTM_V1,
    ) -> list[RowResult]:
        """Each sequence's results and final state, exactly as Keras gives them alone
        (``fields``: how the caller's protocol names what is checked)."""
        validated = predict_rows(sequences, initial_states, model.info, model.limits, fields)
        rows = [Row(x, s) for x, s in validated]
        return await model.scheduler.run(rows, deadline=deadline)

    async def predict_stream(
        self,
        model: ServedModel,
        sequences: list[RaggedSequence],
        initial_states: list[GivenState],
        *,
        timesteps_per_message: int = 1,
        deadline: float | None = None,
    ) -> AsyncIterator[StreamChunk]:
        """Run all sequences chunk by chunk, carrying states, and yield outputs as they come."""
        validated = predict_rows(sequences, initial_states, model.info, model.limits)
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
            results = await model.scheduler.run(rows, deadline=deadline)
            for i, result in zip(active, results, strict=True):
                states[i] = result.state
                last = start + result.sequence.shape[0] >= validated[i][0].shape[0]
                for offset in range(0, result.sequence.shape[0], per_message):
                    part = result.sequence[offset : offset + per_message]
                    ends = last and offset + per_message >= result.sequence.shape[0]
                    yield StreamChunk(i, start + offset, part, result.state if ends else None)
