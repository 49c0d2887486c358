"""inference.GRPCInferenceService: the Open Inference Protocol's gRPC binding. Converts its
messages to the neutral request (``tensors.py``) and back, and calls ``OpenInference``; errors are
mapped by the same policy as lstm.v1's."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format, message_factory
from grpc.aio import ServicerContext as Context

from lstm_server.core.errors import InvalidInput, ModelNotFound, ModelNotReady, ServingError
from lstm_server.core.registry import VersionState
from lstm_server.core.types import Array
from lstm_server.transport import handlers
from lstm_server.transport.auth import principal
from lstm_server.transport.calls import GRPC
from lstm_server.transport.observation import StepObserver
from lstm_server.transport.off_loop import OFF_LOOP_BYTES, converted
from lstm_server.transport.oip import messages as oip
from lstm_server.transport.oip.extensions import model_config, model_statistics
from lstm_server.transport.oip.model import EXTENSIONS, OpenInference
from lstm_server.transport.oip.tensors import (
    DATATYPES,
    InferRequest,
    InferResponse,
    Parameter,
    Tensor,
    check_input_names,
    from_array,
    from_raw,
    from_values,
    typed_field,
)
from lstm_server.transport.servicer import deadline_of
from lstm_server.transport.wire import length_delimited

_FP32_FIELD = oip.InferTensorContents.DESCRIPTOR.fields_by_name["fp32_contents"].number


def _packed_fp32(contents: Any) -> Array:
    """The floats of a contents message that holds only ``fp32_contents``, read from its bytes
    (one packed field: tag, length, the floats), not float by float."""
    data = contents.SerializeToString()
    if not data:
        return np.zeros(0, np.float32)
    pos, length, shift = 1, 0, 0
    while True:
        byte = data[pos]
        length |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            break
    return np.frombuffer(data, "<f4", count=length // 4, offset=pos)


def _parameters_in(parameters: Any) -> dict[str, Parameter]:
    values: dict[str, Parameter] = {}
    for key, parameter in parameters.items():
        kind = parameter.WhichOneof("parameter_choice")
        if kind is not None:
            values[key] = getattr(parameter, kind)
    return values


def _parameters_out(values: dict[str, Parameter], parameters: Any) -> None:
    for key, value in values.items():
        if isinstance(value, bool):
            parameters[key].bool_param = value
        elif isinstance(value, int) and value >= 2**63:  # a sequence id past int64's range
            parameters[key].uint64_param = value
        elif isinstance(value, int):
            parameters[key].int64_param = value
        elif isinstance(value, float):
            parameters[key].double_param = value
        else:
            parameters[key].string_param = value


def _typed(tensor: Any) -> Tensor:
    """An input from its typed contents: only the field of its datatype may hold values."""
    name, datatype, shape = tensor.name, tensor.datatype, tensor.shape
    if datatype not in DATATYPES or not typed_field(datatype):
        return from_raw(name, datatype, shape, b"")  # refuses the datatype, naming it
    field = typed_field(datatype)
    contents = tensor.contents
    for other, values in contents.ListFields():
        if other.name != field and len(values):
            raise InvalidInput.single(
                f"inputs[{name}]",
                f"has values in contents.{other.name}; a {datatype} tensor's are in "
                f"contents.{field}",
            )
    if field == "fp32_contents":
        contents.DiscardUnknownFields()  # what is left serializes as the one packed field
        return from_array(name, datatype, shape, _packed_fp32(contents))
    return from_values(name, datatype, shape, getattr(contents, field))


def request_in(message: Any) -> InferRequest:
    """The neutral request of a ModelInferRequest (raw or typed contents)."""
    check_input_names([tensor.name for tensor in message.inputs])
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidInput.single(
            "raw_input_contents",
            f"has {len(raw)} entries; there must be one per input ({len(message.inputs)})",
        )
    inputs = []
    for i, tensor in enumerate(message.inputs):
        if raw:
            if tensor.HasField("contents"):
                raise InvalidInput.single(
                    f"inputs[{tensor.name}].contents",
                    "must be empty when raw_input_contents carries the inputs",
                )
            inputs.append(from_raw(tensor.name, tensor.datatype, tensor.shape, raw[i]))
        else:
            inputs.append(_typed(tensor))
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version,
        id=message.id,
        parameters=_parameters_in(message.parameters),
        inputs=inputs,
        outputs=[output.name for output in message.outputs] or None,
    )


def response_out(response: InferResponse, raw: bool) -> Any:
    """A ModelInferResponse, its outputs in raw contents or typed (FP32) contents; typed
    contents are written as the packed bytes protobuf would write, then parsed once."""
    message = oip.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    _parameters_out(response.parameters, message.parameters)
    for tensor in response.outputs:
        out = message.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        data = np.ascontiguousarray(tensor.data, "<f4").tobytes()
        if raw:
            message.raw_output_contents.append(data)
            continue
        out.contents.SetInParent()
        if data:
            out.contents.MergeFromString(length_delimited(_FP32_FIELD, data))  # packed floats
    return message


class InferenceServicer:
    """Every RPC of inference.GRPCInferenceService."""

    def __init__(
        self,
        model: OpenInference,
        *,
        ready: Callable[[], bool],
        server_version: str,
        observer: StepObserver | None = None,
    ) -> None:
        """``observer`` is told of requests refused in-band on a stream."""
        self.model = model
        self._ready = ready
        self._version = server_version
        self._observer = observer

    async def ServerLive(self, request: Any, context: Context) -> Any:
        return oip.message("ServerLiveResponse")(live=True)

    async def ServerReady(self, request: Any, context: Context) -> Any:
        return oip.message("ServerReadyResponse")(ready=self._ready())

    async def ModelReady(self, request: Any, context: Context) -> Any:
        try:
            self.model.find(request.name, request.version)
            ready = self._ready()
        except (ModelNotFound, ModelNotReady):
            ready = False
        return oip.message("ModelReadyResponse")(ready=ready)

    async def ServerMetadata(self, request: Any, context: Context) -> Any:
        return oip.message("ServerMetadataResponse")(
            name="lstm-serving", version=self._version, extensions=EXTENSIONS
        )

    async def ModelMetadata(self, request: Any, context: Context) -> Any:
        found = self.model.metadata(request.name, request.version)
        response = oip.message("ModelMetadataResponse")
        spec = response.TensorMetadata
        return response(
            name=found.name,
            versions=found.versions,
            platform=found.platform,
            inputs=[spec(name=t.name, datatype=t.datatype, shape=t.shape) for t in found.inputs],
            outputs=[spec(name=t.name, datatype=t.datatype, shape=t.shape) for t in found.outputs],
        )

    async def RepositoryIndex(self, request: Any, context: Context) -> Any:
        response = oip.message("RepositoryIndexResponse")()
        for status in self.model.repository_index(ready=request.ready):
            response.models.add(
                name=status.name,
                version=str(status.version) if status.version else "",
                state=triton_state(status.state),
                reason=status.reason,
            )
        return response

    async def RepositoryModelLoad(self, request: Any, context: Context) -> Any:
        await self.model.models.load_model(request.model_name)
        return oip.message("RepositoryModelLoadResponse")()

    async def RepositoryModelUnload(self, request: Any, context: Context) -> Any:
        await self.model.models.unload_model(request.model_name)
        return oip.message("RepositoryModelUnloadResponse")()

    async def ModelConfig(self, request: Any, context: Context) -> Any:
        served = self.model.find(request.name, request.version)
        document = model_config(served, self.model.layout(served.info))
        return oip.message("ModelConfigResponse")(
            config=json_format.ParseDict(document, oip.message("ModelConfig")())
        )

    async def ModelStatistics(self, request: Any, context: Context) -> Any:
        found = self.model.statistics(request.name, request.version)
        document = {"model_stats": [model_statistics(served) for served in found]}
        return json_format.ParseDict(document, oip.message("ModelStatisticsResponse")())

    async def ModelInfer(self, request: Any, context: Context) -> Any:
        return await self._infer(request, deadline_of(context), "ModelInfer")

    async def _infer(self, request: Any, deadline: float | None, method: str) -> Any:
        """Read the request, run it, write the reply; large ones are read and written on a
        worker thread, so that the event loop goes on answering others."""
        large = request.ByteSize() > OFF_LOOP_BYTES
        parsed = await converted(large, request_in, request)
        response = await self.model.infer(
            parsed, owner=principal(), deadline=deadline, method=method
        )
        raw = bool(request.raw_input_contents)
        large = sum(t.data.size for t in response.outputs) * 4 > OFF_LOOP_BYTES
        return await converted(large, response_out, response, raw)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: Context
    ) -> AsyncIterator[Any]:
        """One response per request, in order; a refused request is answered in-band (its
        ``error_message``, as Triton does) and the stream goes on."""
        async for request in request_iterator:
            try:
                response = await self._infer(request, None, "ModelStreamInfer")
            except ServingError as error:
                if self._observer is not None:
                    self._observer.refused(GRPC, error.reason)
                yield oip.ModelStreamInferResponse(error_message=error.message)
                continue
            yield oip.ModelStreamInferResponse(infer_response=response)


def triton_state(state: VersionState) -> str:
    """A version's state in Triton's words: a draining version still serves (READY)."""
    return "READY" if state is VersionState.DRAINING else state.value


def method_handlers(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """A handler for every method of the service, with the messages of the protocol's pool."""
    return handlers.method_handlers(oip.SERVICE, servicer, message_factory.GetMessageClass)
