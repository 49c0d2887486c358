"""A call through any door, as the policies see it, and the one chain of policies every door
runs: authentication, limits, metrics, the access log and tracing are written once against
``Call`` and applied alike to lstm.v1, the Open Inference Protocol's gRPC service and its HTTP
binding. A door (``grpc_door``, ``oip.rest``) only makes the ``Call`` of a request, runs the
chain around its handler, and turns the call's ``Status`` into its protocol's answer.

Policies are plain objects with ``enter`` and ``exit`` hooks, resolved once per method: a chain
of awaitables around every call would cost the event loop more than the work of a small call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from lstm_server.transport.status import OK, Status, http_status, status_of

GRPC, HTTP = "grpc", "http"
HEALTH_SERVICE = "grpc.health.v1.Health"
# The services that serve models; the concurrency caps count their calls.
SERVING_SERVICES = ("lstm.v1.LstmService", "inference.GRPCInferenceService")


@dataclass(frozen=True)
class Method:
    """What is called: a gRPC method, or an HTTP route.

    ``name`` is the gRPC method, or the route's label (``infer``, ``model_metadata``);
    ``display`` names it in logs and spans (``lstm.v1.LstmService/Predict``,
    ``POST /v2/models/{model}/infer``); ``health``: a health check (no credentials, no caps, no
    access line, no span); ``serving``: it serves models (the concurrency caps count it).
    """

    protocol: str
    service: str
    name: str
    kind: str = "unary"
    display: str = ""
    health: bool = False
    serving: bool = False

    @classmethod
    def grpc(cls, path: str, kind: str) -> Method:
        """A gRPC method from its path (``/package.Service/Method``)."""
        service, _, name = path.lstrip("/").rpartition("/")
        return cls(
            GRPC,
            service,
            name,
            kind,
            f"{service}/{name}",
            health=service == HEALTH_SERVICE,
            serving=service in SERVING_SERVICES,
        )

    @classmethod
    def http(cls, verb: str, route: str, label: str) -> Method:
        """An HTTP route (its template, never a path: paths name models) and its label."""
        return cls(
            HTTP,
            "inference.http",
            label,
            "unary",
            f"{verb} {route}",
            health=route.startswith("/v2/health/"),
            serving=not route.startswith("/v2/health/"),
        )


Metadata = Callable[[], Iterable[tuple[str, Any]]]


class Call:
    """One call: what it is, who makes it (once authenticated), and how it ended."""

    __slots__ = ("_metadata", "_peer", "began", "http_status", "method", "principal", "status")

    def __init__(self, method: Method, metadata: Metadata, peer: Callable[[], str]) -> None:
        """``metadata()`` gives the call's headers (lower-case names), ``peer()`` its peer."""
        self.method = method
        self._metadata = metadata
        self._peer = peer
        self.principal = ""
        self.status: Status = OK
        self.began = time.perf_counter()
        self.http_status = 200  # the HTTP status of the call's end (HTTP calls)

    def metadata(self) -> Iterable[tuple[str, Any]]:
        return self._metadata() or ()

    def header(self, name: str) -> str | None:
        for key, value in self.metadata():
            if key == name and isinstance(value, str):
                return value
        return None

    def peer(self) -> str:
        return self._peer() or "-"

    def end(self, error: BaseException | None) -> None:
        """Record how the call ended: ``error`` (None: it succeeded)."""
        self.status = status_of(error)
        self.http_status = http_status(self.status.code)

    def seconds(self) -> float:
        return time.perf_counter() - self.began


class Policy:
    """What to do around the calls of each method it ``applies_to``. ``enter`` runs before the
    call (raising a ``ServingError`` refuses it) and returns what ``exit`` is given after it,
    once ``call.status`` says how it ended."""

    def applies_to(self, method: Method) -> bool:
        return True

    def enter(self, call: Call) -> Any:
        return None

    def exit(self, call: Call, entered: Any) -> None:
        return None


class MethodChain:
    """The policies (outermost first) that apply to one method."""

    __slots__ = ("policies",)

    def __init__(self, policies: Sequence[Policy]) -> None:
        self.policies = tuple(policies)

    def enter(self, call: Call) -> list[Any]:
        """Enter every policy, outermost first. If one refuses the call, the call ends with its
        error, the policies already entered are exited, and the error is raised."""
        entered: list[Any] = []
        for policy in self.policies:
            try:
                entered.append(policy.enter(call))
            except BaseException as error:
                call.end(error)
                self.exit(call, entered)
                raise
        return entered

    def exit(self, call: Call, entered: list[Any]) -> None:
        """Exit the policies ``enter`` entered, innermost first."""
        for index in range(len(entered) - 1, -1, -1):
            self.policies[index].exit(call, entered[index])


class Chain:
    """Every policy, outermost first; ``of(method)`` is the part that applies to a method."""

    def __init__(self, policies: Sequence[Policy]) -> None:
        self.policies = tuple(policies)
        self._resolved: dict[Method, MethodChain] = {}

    def of(self, method: Method) -> MethodChain:
        found = self._resolved.get(method)
        if found is None:
            found = self._resolved[method] = MethodChain(
                [p for p in self.policies if p.applies_to(method)]
            )
        return found
