"""The Open Inference Protocol's HTTP/JSON binding, with Triton's binary tensor extension, on
aiohttp in the server's event loop: ``/v2/health/{live,ready}``, ``/v2``,
``/v2/models/{name}[/versions/{version}][/ready|/infer]``.

Every request runs inside the same chain of policies as the gRPC services (``calls.py``):
authentication with the same Bearer tokens (health excepted), the same concurrency caps (one
count for both doors), metrics, the access log and tracing; TLS takes the gRPC port's certificate
and key. This module only translates. Errors are the protocol's body ``{"error": "<message>"}``
with, beside it, the ``reason`` and ``metadata`` a gRPC caller finds in the ErrorInfo (and the
``violations`` of its BadRequest), under the HTTP status the one error table gives.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
from aiohttp import web

from lstm_server.core.errors import (
    InvalidInput,
    LimitExceeded,
    ModelNotFound,
    ModelNotReady,
    ServingError,
    Unauthenticated,
)
from lstm_server.transport.auth import principal
from lstm_server.transport.calls import HTTP, Call, Chain, Method
from lstm_server.transport.connections import ConnectionCaps
from lstm_server.transport.off_loop import OFF_LOOP_BYTES, converted
from lstm_server.transport.oip.extensions import model_config, model_statistics
from lstm_server.transport.oip.grpc_servicer import triton_state
from lstm_server.transport.oip.model import EXTENSIONS, ModelMetadata, OpenInference
from lstm_server.transport.oip.tensors import (
    InferRequest,
    InferResponse,
    check_input_names,
    from_raw,
    from_values,
)
from lstm_server.transport.status import CODE_OF_HTTP, Status, http_status, status_of

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
# The most bytes a float32 takes as JSON text (``-1.2345678e-05,``), for the reply limit.
JSON_VALUE_BYTES = 16


def error_body(error: BaseException) -> dict[str, Any]:
    """The protocol's error body, with the reason, metadata and violations gRPC sends."""
    status = status_of(error)
    body: dict[str, Any] = {"error": status.message, "reason": status.reason}
    if status.metadata:
        body["metadata"] = status.metadata
    if isinstance(error, InvalidInput):
        body["violations"] = [
            {"field": v.field, "description": v.description} for v in error.violations
        ]
    return body


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


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInput.single("body", f"is not JSON: {error}") from None
    except RecursionError:
        raise InvalidInput.single("body", "is JSON nested too deeply") from None


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
    request = _object(_json(body[:end]), "body")
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
        check_input_names([name])
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
        else:  # written by orjson straight from the array (its floats' shortest text)
            item["data"] = np.ascontiguousarray(tensor.data, np.float32)
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
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return web.Response(body=header, content_type="application/json")
    return web.Response(
        body=b"".join((header, *chunks)),
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UNMATCHED = Method(HTTP, "inference.http", "unmatched", display="unmatched")


async def _body(request: web.Request, limit: int, seconds: float) -> bytes:
    """The request's body; one over the size limit is refused as gRPC refuses it, one that takes
    longer than ``seconds`` to arrive is 408 (and its connection closed)."""
    try:
        async with asyncio.timeout(seconds):
            return await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            text=f"the request body did not arrive within {seconds:g} s",
            headers={"Connection": "close"},
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise LimitExceeded(
            f"the request is larger than the limit of {limit} bytes (max_message_bytes)",
            limit="max_message_bytes",
            value=limit,
        ) from None


class RestServer:
    """The HTTP binding's routes over ``OpenInference``; ``start`` binds and returns the port."""

    def __init__(
        self,
        model: OpenInference,
        *,
        ready: Callable[[], bool],
        server_version: str,
        chain: Chain,
        max_body_bytes: int = 4 * 1024 * 1024,
        shutdown_timeout: float = 10.0,
        idle_timeout: float = 15.0,
        body_timeout: float = 30.0,
        caps: ConnectionCaps | None = None,
    ) -> None:
        """``idle_timeout``: seconds a connection may go without a whole request (the first
        one's headers, or the next one after a reply); ``body_timeout``: seconds a request's
        body may take to arrive; ``caps``: on open connections."""
        self.model = model
        self._ready = ready
        self._version = server_version
        self._chain = chain
        self._max_body_bytes = max_body_bytes
        self._idle_timeout = idle_timeout
        self._body_timeout = body_timeout
        self.caps = caps or ConnectionCaps(0, 0)
        self._listener: asyncio.Server | None = None
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[self._served])
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
        self._methods: dict[tuple[str, str], Method] = {}
        for verb, path, handler, label in routes:
            self.app.router.add_route(verb, path, handler)
            self._methods[(verb, path)] = Method.http(verb, path, label)
        self._runner: web.AppRunner | None = None
        self._shutdown_timeout = shutdown_timeout

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        """Listen on host:port (0: a free port), each connection counted by the caps; return
        the port."""
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self._shutdown_timeout,
            keepalive_timeout=self._idle_timeout,
            # What is left of a refused request's body is read (so its client gets the reply)
            # for this long at most before the connection closes.
            lingering_time=1.0,
        )
        await self._runner.setup()
        server = self._runner.server
        assert server is not None  # made by setup()
        self._listener = await asyncio.get_running_loop().create_server(
            self.caps.protocol(cast(Callable[[], asyncio.Protocol], server)),
            host,
            port,
            ssl=ssl_context,
        )
        return int(self._listener.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()  # no new connections; the runner closes the open ones
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _method(self, request: web.Request) -> Method:
        resource = request.match_info.route.resource
        if resource is None:
            return UNMATCHED
        return self._methods.get((request.method, resource.canonical), UNMATCHED)

    @web.middleware
    async def _served(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The request inside the chain; its end as the protocol answers it."""
        call = Call(self._method(request), lambda: _headers(request), lambda: request.remote or "")
        policies = self._chain.of(call.method)
        try:
            entered = policies.enter(call)
        except ServingError as error:
            return _refusal(error)
        try:
            response = await handler(request)
            call.end(None)
            call.http_status = response.status
            return response
        except web.HTTPException as error:  # no such route or method; a body too slow
            call.status = Status(CODE_OF_HTTP.get(error.status, "UNKNOWN"), error.text or "")
            call.http_status = error.status
            response = web.json_response(
                {"error": error.text or error.reason, "reason": ""}, status=error.status
            )
            if error.headers.get("Connection") == "close":
                response.force_close()
            return response
        except Exception as error:
            call.end(error)
            if not isinstance(error, ServingError):
                log.exception("unexpected error in %s %s", request.method, request.path)
            return _refusal(error)
        except BaseException as error:  # cancelled: the client went away
            call.end(error)
            raise
        finally:
            policies.exit(call, entered)

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
        body = await _body(request, self._max_body_bytes, self._body_timeout)
        ready = False
        if body.strip():
            ready = _object(_json(body), "body").get("ready", False)
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
        self.model.ref(info["model"], info.get("version", ""))  # an unknown model: 404 first
        body = await _body(request, self._max_body_bytes, self._body_timeout)
        length = request.headers.get(HEADER_LENGTH)
        try:
            header_length = None if length is None else int(length)
        except ValueError:
            raise InvalidInput.single(HEADER_LENGTH, f"is {length!r}, not a number") from None
        model, version = info["model"], info.get("version", "")
        parsed, binary = await converted(
            len(body) > OFF_LOOP_BYTES, request_in, model, version, body, header_length
        )
        value_bytes = JSON_VALUE_BYTES if not all(binary.values()) else 4
        response = await self.model.infer(
            parsed, owner=principal(), method="infer", value_bytes=value_bytes
        )
        size = sum(t.data.size for t in response.outputs) * value_bytes
        return await converted(size > OFF_LOOP_BYTES, response_out, response, binary)


def _headers(request: web.Request) -> list[tuple[str, str]]:
    return [(key.lower(), value) for key, value in request.headers.items()]


def _refusal(error: BaseException) -> web.Response:
    body = error_body(error)
    response = web.json_response(body, status=http_status(status_of(error).code))
    if isinstance(error, Unauthenticated):
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


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
