"""Triton's model configuration and statistics extensions, as the JSON documents the HTTP binding
answers with; the gRPC binding parses the same documents into its messages (field names are the
protobuf's), so both doors say the same."""

from __future__ import annotations

from typing import Any

from lstm_server.core.registry import ServedModel
from lstm_server.transport.oip.model import PLATFORM, Layout, TensorSpec

NS = 1_000_000_000


def _dims(spec: TensorSpec) -> list[int]:
    return list(spec.shape[1:])  # the batch dimension is max_batch_size's, as in Triton


def model_config(served: ServedModel, layout: Layout) -> dict[str, Any]:
    """The version's configuration: tensors, batching, version policy and its own settings."""
    scheduler = served.scheduler
    info = served.info
    return {
        "name": served.name,
        "platform": PLATFORM,
        "backend": "tensorflow",
        "version_policy": served.source.config.version_policy.describe(),
        "max_batch_size": served.limits.max_batch_size,
        "input": [
            {"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": _dims(t)}
            | ({} if t.name == "x" else {"optional": True})
            for t in layout.inputs
        ],
        "output": [
            {"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": _dims(t)}
            for t in layout.outputs
        ],
        # A sequence is a session: idle for its TTL, it ends.
        "sequence_batching": {
            "max_sequence_idle_microseconds": served.limits.default_session_ttl_seconds * 1_000_000
        },
        "default_model_filename": "" if served.source.path is None else served.source.path.name,
        "parameters": {
            key: {"string_value": str(value)}
            for key, value in {
                "version_number": served.version,
                "weights_digest": info.version,
                "units": ",".join(str(u) for u in info.layer_units),
                "max_timesteps": served.limits.max_timesteps,
                "max_batch_rows": scheduler.max_batch_rows,
                "dynamic_batching": str(scheduler.batching).lower(),
            }.items()
        },
    }


def _duration(count: int, seconds: float) -> dict[str, int]:
    return {"count": count, "ns": round(seconds * NS)}


def model_statistics(served: ServedModel) -> dict[str, Any]:
    """What the version has done, in Triton's terms: requests that succeeded and failed, time
    queued and in the model (summed over requests), model calls per batch size."""
    stats = served.statistics
    compute = _duration(stats.queued_count, stats.compute_seconds)
    return {
        "name": served.name,
        "version": str(served.version),
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": _duration(stats.success_count, stats.success_seconds),
            "fail": _duration(stats.failure_count, stats.failure_seconds),
            "queue": _duration(stats.queued_count, stats.queue_seconds),
            "compute_input": _duration(stats.queued_count, 0.0),
            "compute_infer": compute,
            "compute_output": _duration(stats.queued_count, 0.0),
            "cache_hit": _duration(0, 0.0),
            "cache_miss": _duration(0, 0.0),
        },
        "batch_stats": [
            {
                "batch_size": rows,
                "compute_input": _duration(int(calls), 0.0),
                "compute_infer": _duration(int(calls), seconds),
                "compute_output": _duration(int(calls), 0.0),
            }
            for rows, (calls, seconds) in sorted(stats.batches.items())
        ],
    }
