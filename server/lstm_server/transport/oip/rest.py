"""The Open Inference Protocol's HTTP/JSON binding, with Triton's binary tensor extension, on
aiohttp in the server's event loop: ``/v2/health/{live,ready}``, ``/v2``,
``/v2/models/{name}[/versions/{version}][/ready|/infer]``.

Errors are the protocol's: an HTTP status (from the same error table as gRPC's codes) and a body
``{"error": "<message>"}``. Authentication takes the same Bearer tokens as the gRPC port
(health excepted); TLS, the same certificate and key.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np
from aiohttp import web

from lstm_server.core.errors import (
    InvalidInput,
    LimitExceeded,
    ModelNotFound,
    ModelNotReady,
    ServingError,
    Unauthenticated,
)
from lstm_server.transport.auth import authenticate
from lstm_server.transport.errors import INTERNAL_MESSAGE, status_code
from lstm_server.transport.oip.extensions import model_config, model_statistics
from lstm_server.transport.oip.grpc_servicer import triton_state
from lstm_server.transport.oip.model import EXTENSIONS, ModelMetadata, OpenInference
from lstm_server.transport.oip.tensors import (
    InferRequest,
    InferResponse,
    from_raw,
    from_values,
)

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
# gRPC codes as HTTP statuses (as gRPC-HTTP gateways map them).
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class HttpObserver(Protocol):
    """Told of every HTTP request (``lstm_server.metrics.Metrics``)."""

    def http_request_done(self, handler: str, code: int, seconds: float) -> None: ...


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def http_status(error: ServingError) -> int:
    return HTTP_STATUS.get(status_code(error), 500)


def _metadata_json(found: ModelMetadata) -> dict[str, Any]:
    def spec(t: Any) -> dict[str, Any]:
        return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}

    return {
        "name": found.name,
        "versions": list(found.versions),
        "platform": found.platform,
        "inputs": [spec(t) for t in found.inputs],
        "outputs": [spec(t) for t in found.outputs],
    }


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput.single(field, "must be a JSON object")
    return value


def request_in(
    model: str, version: str, body: bytes, header_length: int | None
) -> tuple[InferRequest, dict[str, bool]]:
    """The neutral request of an HTTP body (JSON, or JSON then binary tensor data:
    ``Inference-Header-Content-Length`` says where the JSON ends), and which outputs it wants as
    binary data."""
    end = len(body) if header_length is None else header_length
    if not 0 <= end <= len(body):
        raise InvalidInput.single(HEADER_LENGTH, f"is {end}; the body has {len(body)} bytes")
    try:
        document = json.loads(body[:end])
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInput.single("body", f"is not JSON: {error}") from None
    request = _object(document, "body")
    parameters = _object(request.get("parameters", {}), "parameters")
    inputs_json = request.get("inputs")
    if not isinstance(inputs_json, list):
        raise InvalidInput.single("inputs", "must be a list of tensors")
    binary, offset = memoryview(body)[end:], 0
    inputs = []
    for i, item in enumerate(inputs_json):
        tensor = _object(item, f"inputs[{i}]")
        name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidInput.single(f"inputs[{i}]", "needs a name and a datatype (strings)")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape
        ):
            raise InvalidInput.single(f"inputs[{name}].shape", "must be a list of integers")
        size = _object(tensor.get("parameters", {}), f"inputs[{name}].parameters").get(
            "binary_data_size"
        )
        if size is None:
            if "data" not in tensor:
                raise InvalidInput.single(f"inputs[{name}]", "has no data")
            inputs.append(from_values(name, datatype, shape, tensor["data"]))
            continue
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InvalidInput.single(
                f"inputs[{name}].parameters.binary_data_size",
                f"is {size!r}; {len(binary) - offset} bytes of binary data are left",
            )
        inputs.append(from_raw(name, datatype, shape, bytes(binary[offset : offset + size])))
        offset += size
    if offset != len(binary):
        raise InvalidInput.single(
            "body", f"has {len(binary) - offset} bytes of binary data that no input claims"
        )
    outputs = request.get("outputs")
    requested = None
    if outputs is not None:
        if not isinstance(outputs, list):
            raise InvalidInput.single("outputs", "must be a list")
        requested = [str(_object(o, "outputs[]").get("name")) for o in outputs]
    request_id = request.get("id", "")
    neutral = InferRequest(
        model_name=model,
        model_version=version,
        id=request_id if isinstance(request_id, str) else str(request_id),
        parameters={k: v for k, v in parameters.items() if k != "binary_data_output"},
        inputs=inputs,
        outputs=requested,
    )
    return neutral, _binary_outputs(parameters, outputs or [])


def _binary_outputs(parameters: dict[str, Any], outputs: list[Any]) -> dict[str, bool]:
    """Which outputs the request wants as binary data (by name; ``""``: the default)."""
    wanted = {"": bool(parameters.get("binary_data_output", False))}
    for output in outputs:
        binary = _object(output.get("parameters", {}), "outputs[].parameters").get("binary_data")
        if binary is not None:
            wanted[str(output.get("name"))] = bool(binary)
    return wanted


def response_out(response: InferResponse, binary: dict[str, bool]) -> web.Response:
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for tensor in response.outputs:
        item: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if binary.get(tensor.name, binary[""]):
            data = np.ascontiguousarray(tensor.data, "<f4").tobytes()
            item["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            item["data"] = tensor.data.tolist()
        outputs.append(item)
    document: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": outputs,
    }
    if response.id:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = response.parameters
    header = json.dumps(document).encode()
    if not chunks:
        return web.Response(body=header, content_type="application/json")
    return web.Response(
        body=b"".join((header, *chunks)),
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


OWNER = web.RequestKey("owner", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RestServer:
    """The HTTP binding's routes over ``OpenInference``; ``start`` binds and returns the port."""

    def __init__(
        self,
        model: OpenInference,
        *,
        ready: Callable[[], bool],
        server_version: str,
        tokens: list[tuple[bytes, str]] | None = None,
        max_body_bytes: int = 4 * 1024 * 1024,
        max_in_flight: int = 0,
        observer: HttpObserver | None = None,
        shutdown_timeout: float = 10.0,
    ) -> None:
        self.model = model
        self._ready = ready
        self._version = server_version
        self._tokens = tokens
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._observer = observer
        self.app = web.Application(
            client_max_size=max_body_bytes, middlewares=[self._observed, self._guarded]
        )
        named = "/v2/models/{model}"
        versioned = named + "/versions/{version}"
        routes = [
            ("GET", "/v2/health/live", self.live, "health_live"),
            ("GET", "/v2/health/ready", self.ready, "health_ready"),
            ("GET", "/v2", self.server_metadata, "server_metadata"),
            # Before the model routes: Triton's path for every model's statistics.
            ("GET", "/v2/models/stats", self.model_statistics, "model_statistics"),
            ("GET", named, self.model_metadata, "model_metadata"),
            ("GET", versioned, self.model_metadata, "model_metadata"),
            ("GET", named + "/ready", self.model_ready, "model_ready"),
            ("GET", versioned + "/ready", self.model_ready, "model_ready"),
            ("POST", named + "/infer", self.infer, "infer"),
            ("POST", versioned + "/infer", self.infer, "infer"),
            ("GET", named + "/config", self.model_config, "model_config"),
            ("GET", versioned + "/config", self.model_config, "model_config"),
            ("GET", named + "/stats", self.model_statistics, "model_statistics"),
            ("GET", versioned + "/stats", self.model_statistics, "model_statistics"),
            ("POST", "/v2/repository/index", self.repository_index, "repository_index"),
            ("POST", "/v2/repository/models/{model}/load", self.load, "repository_load"),
            ("POST", "/v2/repository/models/{model}/unload", self.unload, "repository_unload"),
        ]
        # Metrics label requests by route, never by path (paths name models: unbounded).
        self._labels: dict[str, str] = {}
        for method, path, handler, label in routes:
            self.app.router.add_route(method, path, handler)
            self._labels[path] = label
        self._runner: web.AppRunner | None = None
        self._shutdown_timeout = shutdown_timeout

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self._shutdown_timeout,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context, reuse_port=False)
        await site.start()
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _handler_name(self, request: web.Request) -> str:
        resource = request.match_info.route.resource
        return "unmatched" if resource is None else self._labels.get(resource.canonical, "other")

    @web.middleware
    async def _observed(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        began = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as error:
            status = error.status
            return _error(error.status, error.reason)
        finally:
            if self._observer is not None:
                self._observer.http_request_done(
                    self._handler_name(request), status, time.perf_counter() - began
                )

    @web.middleware
    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authentication, the in-flight cap, and errors as the protocol reports them."""
        try:
            if not request.path.startswith("/v2/health/"):
                owner = self._authenticated(request)
                request[OWNER] = owner
                if self._max_in_flight and self._in_flight >= self._max_in_flight:
                    raise LimitExceeded(
                        f"the server is at its limit of {self._max_in_flight} concurrent calls",
                        limit="max_concurrent_rpcs",
                        value=self._max_in_flight,
                    )
            self._in_flight += 1
            try:
                return await handler(request)
            finally:
                self._in_flight -= 1
        except ServingError as error:
            response = _error(http_status(error), error.message)
            if isinstance(error, Unauthenticated):
                response.headers["WWW-Authenticate"] = "Bearer"
            return response
        except web.HTTPException:
            raise
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.path)
            return _error(500, INTERNAL_MESSAGE)

    def _authenticated(self, request: web.Request) -> str:
        if self._tokens is None:
            return ""
        name = authenticate(request.headers.get("Authorization"), self._tokens)
        if name is None:
            raise Unauthenticated("a valid 'Authorization: Bearer <token>' is required")
        return name

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = self._ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"name": "lstm-serving", "version": self._version, "extensions": list(EXTENSIONS)}
        )

    async def model_metadata(self, request: web.Request) -> web.Response:
        info = request.match_info
        return web.json_response(
            _metadata_json(self.model.metadata(info["model"], info.get("version", "")))
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        info = request.match_info
        try:
            self.model.find(info["model"], info.get("version", ""))
            ready = self._ready()
        except (ModelNotFound, ModelNotReady):
            ready = False
        return web.json_response(
            {"name": info["model"], "ready": ready}, status=200 if ready else 503
        )

    async def model_config(self, request: web.Request) -> web.Response:
        info = request.match_info
        served = self.model.find(info["model"], info.get("version", ""))
        return web.json_response(model_config(served, self.model.layout(served.info)))

    async def model_statistics(self, request: web.Request) -> web.Response:
        info = request.match_info
        found = self.model.statistics(info.get("model", ""), info.get("version", ""))
        return web.json_response({"model_stats": [model_statistics(s) for s in found]})

    async def repository_index(self, request: web.Request) -> web.Response:
        """Triton's repository index: ``{"ready": true}`` in the body lists only the versions
        that take calls."""
        body = await request.read()
        ready = False
        if body.strip():
            try:
                document = json.loads(body)
            except (ValueError, UnicodeDecodeError) as error:
                raise InvalidInput.single("body", f"is not JSON: {error}") from None
            ready = _object(document, "body").get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidInput.single("ready", "must be true or false")
        return web.json_response(
            [
                {
                    "name": s.name,
                    "version": str(s.version) if s.version else "",
                    "state": triton_state(s.state),
                    "reason": s.reason,
                }
                for s in self.model.repository_index(ready=ready)
            ]
        )

    async def load(self, request: web.Request) -> web.Response:
        await self.model.models.load_model(request.match_info["model"])
        return web.json_response({})

    async def unload(self, request: web.Request) -> web.Response:
        await self.model.models.unload_model(request.match_info["model"])
        return web.json_response({})

    async def infer(self, request: web.Request) -> web.Response:
        info = request.match_info
        body = await request.read()
        length = request.headers.get(HEADER_LENGTH)
        try:
            header_length = None if length is None else int(length)
        except ValueError:
            raise InvalidInput.single(HEADER_LENGTH, f"is {length!r}, not a number") from None
        parsed, binary = request_in(info["model"], info.get("version", ""), body, header_length)
        response = await self.model.infer(parsed, owner=request[OWNER], method="infer")
        return response_out(response, binary)


def server_ssl_context(
    cert: str | Path, key: str | Path, client_ca: str | Path | None = None
) -> ssl.SSLContext:
    """TLS as the gRPC port has it: the same certificate; with a client CA, client certificates
    are required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context
