"""Bounds on a model file, checked before Keras reads it: what its archive inflates to, the
parameters its configuration declares, and the bytes its weights file declares. A file past them
is refused with the reason (exit 2 at start, an unavailable version in a repository), never read
into memory first: an archive whose configuration inflates from 1 MB to 1 GB, or whose layers
declare 10^12 input features, would otherwise take the process's memory."""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lstm_server.core.errors import ModelLoadError

# What a .keras archive may hold once inflated: its configuration, and everything.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
MAX_ARCHIVE_BYTES = 4 * 1024**3
# The most a member may inflate by (zip bombs inflate by thousands; weights by about 1).
MAX_RATIO = 200
# Parameters a served model may declare (float32: 4 GiB of weights).
MAX_PARAMETERS = 1 << 30


def refuse(path: Path, reason: str) -> None:
    raise ModelLoadError(f"model {path} cannot be served: {reason}")


def check_archive(path: Path) -> dict[str, Any] | None:
    """Check a ``.keras`` archive's bounds; return its configuration (None for other files,
    which Keras reads and refuses itself)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        return None
    with archive:
        members = archive.infolist()
        total = sum(m.file_size for m in members)
        if total > MAX_ARCHIVE_BYTES:
            refuse(path, f"its archive inflates to {total} bytes, more than {MAX_ARCHIVE_BYTES}")
        for member in members:
            ratio = member.file_size / max(member.compress_size, 1)
            if member.file_size > 1024 * 1024 and ratio > MAX_RATIO:
                refuse(
                    path,
                    f"{member.filename} inflates {ratio:.0f}-fold ({member.compress_size} to "
                    f"{member.file_size} bytes), more than any model file does",
                )
        try:
            info = archive.getinfo("config.json")
        except KeyError:
            return None
        if info.file_size > MAX_CONFIG_BYTES:
            refuse(path, f"config.json holds {info.file_size} bytes, more than {MAX_CONFIG_BYTES}")
        try:
            config = json.loads(archive.read(info))
        except (ValueError, RecursionError):
            refuse(path, "config.json is not JSON")
        _check_parameters(path, config)
        weights = next((m for m in members if m.filename.endswith(".h5")), None)
        if weights is not None:
            _check_weights(path, archive.read(weights))
    return config if isinstance(config, dict) else None


def _layers(config: Any) -> Iterator[dict[str, Any]]:
    """Every layer configuration in ``config``, nested ones (Sequential, wrappers) included."""
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "class_name" in item and isinstance(item.get("config"), dict):
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _dims(value: Any) -> list[int]:
    return [d for d in value if isinstance(d, int)] if isinstance(value, list) else []


def _check_parameters(path: Path, config: Any) -> None:
    """Refuse a configuration whose layers declare more than ``MAX_PARAMETERS``: each LSTM,
    Dense and Embedding counted from its own sizes and the widest input declared."""
    widest, parameters = 1, 0
    for layer in _layers(config):
        settings = layer["config"]
        for key in ("batch_shape", "batch_input_shape"):
            dims = _dims(settings.get(key))
            if dims:
                widest = max(widest, dims[-1])
                if math.prod(dims) > MAX_PARAMETERS:
                    refuse(path, f"its input is declared as {settings.get(key)}")
        units = settings.get("units")
        kind = layer.get("class_name")
        if isinstance(units, int) and kind == "LSTM":
            parameters += 4 * units * (widest + units + 1)
            widest = max(widest, units)
        elif isinstance(units, int) and kind == "Dense":
            parameters += units * (widest + 1)
            widest = max(widest, units)
        elif kind == "Embedding":
            size = [settings.get("input_dim"), settings.get("output_dim")]
            if all(isinstance(d, int) for d in size):
                parameters += size[0] * size[1]
                widest = max(widest, size[1])
        if parameters > MAX_PARAMETERS:
            refuse(
                path,
                f"its layers declare more than {MAX_PARAMETERS} parameters (at "
                f"{settings.get('name', kind)!r})",
            )


def check_h5(path: Path) -> None:
    """Check a legacy ``.h5`` model file's weights, as an archive's are checked."""
    _check_weights(path, path)


def _check_weights(path: Path, data: bytes | Path) -> None:
    """Refuse a weights file whose datasets declare more bytes than the parameters allow."""
    import h5py  # Keras' own dependency for weights files

    declared = 0
    try:
        source = io.BytesIO(data) if isinstance(data, bytes) else data
        with h5py.File(source, "r") as weights:
            found: list[int] = []

            def visit(_: str, item: Any) -> None:
                if isinstance(item, h5py.Dataset):
                    found.append(math.prod(item.shape) * item.dtype.itemsize)

            weights.visititems(visit)
            declared = sum(found)
    except (OSError, ValueError, TypeError):
        return  # not readable as HDF5: Keras refuses it, saying why
    if declared > 4 * MAX_PARAMETERS:
        refuse(path, f"its weights declare {declared} bytes, more than {4 * MAX_PARAMETERS}")
