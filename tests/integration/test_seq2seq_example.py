"""examples/seq2seq: an encoder and a decoder trained on the shipped text, served by one server
from one model repository and called by name; the decoder stepped one character at a time in a
session opened from the encoder's final (h, c) writes the same text as in-process Keras decoding
with the same models."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from tests.helpers import ROOT
from tests.servers import ThreadedServer, settings


def _example():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("seq2seq", ROOT / "examples/seq2seq/seq2seq.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_served_greedy_decoding_writes_what_keras_writes(tmp_path: Path) -> None:
    example = _example()
    example.train(tmp_path, epochs=40, latent=32)
    server = ThreadedServer(settings(model_repository=tmp_path / "models"))
    sources = ["42", "7", "93", "15", "60"]
    try:
        served = example.served_decode(tmp_path, sources, server.target)
    finally:
        server.stop()
    local = example.keras_decode(tmp_path, sources)
    assert served == local
    assert all(text for text in served), "each source decodes to some text"
