"""Tensors as the Open Inference Protocol carries them, in either binding: a name, a datatype, a
shape and row-major values, read from typed contents, raw bytes or JSON into numpy arrays, and
the neutral request and response that ``model.py`` serves."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lstm_server.core.errors import InvalidInput
from lstm_server.core.types import Array

# The protocol's numeric datatypes, their numpy types (little-endian, as raw contents are) and the
# typed-contents field that carries each.
DATATYPES: dict[str, tuple[np.dtype[Any], str]] = {
    "BOOL": (np.dtype(np.bool_), "bool_contents"),
    "INT8": (np.dtype("<i1"), "int_contents"),
    "INT16": (np.dtype("<i2"), "int_contents"),
    "INT32": (np.dtype("<i4"), "int_contents"),
    "INT64": (np.dtype("<i8"), "int64_contents"),
    "UINT8": (np.dtype("<u1"), "uint_contents"),
    "UINT16": (np.dtype("<u2"), "uint_contents"),
    "UINT32": (np.dtype("<u4"), "uint_contents"),
    "UINT64": (np.dtype("<u8"), "uint64_contents"),
    "FP16": (np.dtype("<f2"), ""),
    "FP32": (np.dtype("<f4"), "fp32_contents"),
    "FP64": (np.dtype("<f8"), "fp64_contents"),
}

Parameter = bool | int | float | str


@dataclass(frozen=True)
class Tensor:
    """A tensor of a request or response: ``data`` holds its values, flat, row-major."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Array

    @property
    def array(self) -> Array:
        return self.data.reshape(self.shape)


@dataclass(frozen=True)
class InferRequest:
    """A request of either binding; ``outputs`` None means every output."""

    model_name: str
    model_version: str = ""
    id: str = ""
    parameters: dict[str, Parameter] = field(default_factory=dict)
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[str] | None = None


@dataclass(frozen=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]
    parameters: dict[str, Parameter] = field(default_factory=dict)


def _field(name: str) -> str:
    return f"inputs[{name}]"


# The inputs any served model may take: x, lengths, and initial states (per layer for stacks).
_INPUT_NAME = re.compile(r"x|lengths|[hc]0(_\d{1,3})?")


def check_input_names(names: list[str]) -> None:
    """Refuse, before any of its values is read, an input no model here takes."""
    for name in names:
        if not _INPUT_NAME.fullmatch(name):
            raise InvalidInput.single(
                _field(name[:64]),
                "is not an input any model here takes (x, lengths, h0, c0; h0_<k>, c0_<k> per "
                "layer of a stack)",
            )


def _dtype(name: str, datatype: str) -> np.dtype[Any]:
    known = DATATYPES.get(datatype)
    if known is None:
        raise InvalidInput.single(
            _field(name), f"has datatype {datatype!r}, which this server does not take"
        )
    return known[0]


def _shape(name: str, shape: Any) -> tuple[int, ...]:
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise InvalidInput.single(_field(name), f"has shape {list(dims)}: dimensions are >= 0")
    return dims


def _sized(name: str, datatype: str, shape: tuple[int, ...], data: Array) -> Tensor:
    expected = math.prod(shape)
    if data.size != expected:
        raise InvalidInput.single(
            _field(name),
            f"has {data.size} values; its shape {list(shape)} holds {expected}",
        )
    return Tensor(name, datatype, shape, data)


def from_raw(name: str, datatype: str, shape: Any, raw: bytes) -> Tensor:
    """A tensor from raw contents: its values' little-endian bytes, row-major."""
    dtype = _dtype(name, datatype)
    dims = _shape(name, shape)
    if len(raw) % dtype.itemsize:
        raise InvalidInput.single(
            _field(name), f"has {len(raw)} raw bytes, not a whole number of {datatype} values"
        )
    return _sized(name, datatype, dims, np.frombuffer(raw, dtype))


def from_array(name: str, datatype: str, shape: Any, data: Array) -> Tensor:
    """A tensor of values already read (flat), checked against its shape."""
    return _sized(name, datatype, _shape(name, shape), data)


def from_values(name: str, datatype: str, shape: Any, values: Any) -> Tensor:
    """A tensor from typed contents or JSON data (flat or nested)."""
    dtype = _dtype(name, datatype)
    dims = _shape(name, shape)
    try:
        data = np.asarray(values, dtype=dtype).reshape(-1)
    except (TypeError, ValueError, OverflowError) as error:
        raise InvalidInput.single(
            _field(name), f"has values that are not {datatype}: {error}"
        ) from None
    return _sized(name, datatype, dims, data)


def typed_field(datatype: str) -> str:
    """The typed-contents field of ``datatype`` ("" when it has none: FP16 travels raw only)."""
    return DATATYPES[datatype][1]
