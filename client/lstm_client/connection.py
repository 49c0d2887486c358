"""How the SDK reaches the server: TLS options and call metadata, shared by both clients."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class TlsOptions:
    """PEM bytes: the CA that signed the server (None: the system roots) and, for mutual TLS,
    this client's certificate chain and key."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None

    @classmethod
    def from_files(
        cls,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
    ) -> TlsOptions:
        def read(path: str | Path | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        return cls(read(ca), read(cert), read(key))

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            self.root_certificates, self.private_key, self.certificate_chain
        )


def call_metadata(
    metadata: Iterable[tuple[str, str]] | None, token: str | None
) -> tuple[tuple[str, str], ...]:
    """The metadata sent with every call; ``token`` becomes ``authorization: Bearer <token>``."""
    pairs = tuple(metadata or ())
    return (*pairs, ("authorization", f"Bearer {token}")) if token else pairs
