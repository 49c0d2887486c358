"""Bearer-token authentication: who is calling, as a principal name the core can own sessions by.
The same tokens and the same policy for every door."""

from __future__ import annotations

import contextlib
import hmac
from contextvars import ContextVar, Token
from pathlib import Path

from lstm_server.core.errors import Unauthenticated
from lstm_server.transport.calls import Call, Method, Policy

# The principal of the call being served ("" when authentication is off).
PRINCIPAL: ContextVar[str] = ContextVar("principal", default="")


def principal() -> str:
    return PRINCIPAL.get()


def load_tokens(path: Path) -> list[tuple[bytes, str]]:
    """Read ``principal token`` lines (blank lines and ``#`` comments are skipped)."""
    tokens: list[tuple[bytes, str]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected 'principal token'")
        name, token = parts
        tokens.append((token.encode(), name))
    if not tokens:
        raise ValueError(f"{path} has no tokens")
    return tokens


def authenticate(header: str | None, tokens: list[tuple[bytes, str]]) -> str | None:
    """The principal whose token the ``authorization`` header carries, or None.

    Every token is compared, in constant time, whatever matched, so timing tells nothing.
    """
    if header is None or not header.startswith("Bearer "):
        return None
    given = header[len("Bearer ") :].strip().encode()
    found: str | None = None
    for token, name in tokens:
        if hmac.compare_digest(token, given):
            found = name
    return found


class AuthPolicy(Policy):
    """Requires ``authorization: Bearer <token>`` on every call but health checks, and makes the
    token's principal the call's (``PRINCIPAL``). Tokens are never logged."""

    def __init__(self, tokens: list[tuple[bytes, str]]) -> None:
        self._tokens = tokens

    def applies_to(self, method: Method) -> bool:
        return not method.health

    def enter(self, call: Call) -> Token[str]:
        name = authenticate(call.header("authorization"), self._tokens)
        if name is None:
            raise Unauthenticated("a valid 'authorization: Bearer <token>' is required")
        call.principal = name
        return PRINCIPAL.set(name)

    def exit(self, call: Call, entered: Token[str]) -> None:
        with contextlib.suppress(ValueError):  # a stream's generator closed from elsewhere
            PRINCIPAL.reset(entered)
