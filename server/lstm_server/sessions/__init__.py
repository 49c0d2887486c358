"""Where session state lives: the ``SessionStore`` contract and its implementations."""

from lstm_server.sessions.memory import MemorySessionStore
from lstm_server.sessions.store import AppliedStep, SessionRecord, SessionStore

__all__ = ["AppliedStep", "MemorySessionStore", "SessionRecord", "SessionStore"]
