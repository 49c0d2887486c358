"""Character-level sequence to sequence, served: numbers written in digits to numbers in words.

Keras' character-level seq2seq example, small enough to train in seconds: an encoder LSTM reads
the digits; its final state [h, c] is the initial state of a decoder LSTM with a softmax head that
writes the words one character at a time, fed its own previous character (greedy decoding).

Both halves are saved into one model repository (``models/encoder/1/model.keras`` and
``models/decoder/1/model.keras``) and served by one server, called by name: the encoder's final
(h, c) come back from Predict on ``encoder`` and open a session on ``decoder``, which is stepped
one character at a time. The server holds the decoder's state between steps. ``keras_decode``
does the same in-process with the same saved models; ``served_decode`` must give the same text.

    python examples/seq2seq/seq2seq.py train --out /tmp/seq2seq
    lstm-server --model-repository /tmp/seq2seq/models &
    python examples/seq2seq/seq2seq.py decode --out /tmp/seq2seq 42 93 15 60
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
START, END = "\t", "\n"  # the decoder's first input, and the character that ends its output


@dataclass(frozen=True)
class Vocabulary:
    """The characters of the inputs and of the targets (with START and END)."""

    source: str
    target: str

    @classmethod
    def of(cls, pairs: Sequence[tuple[str, str]]) -> Vocabulary:
        source = "".join(sorted({ch for text, _ in pairs for ch in text}))
        target = "".join(sorted({ch for _, text in pairs for ch in text} | {START, END}))
        return cls(source, target)

    def encode(self, text: str) -> np.ndarray:
        """One-hot (len(text), len(source)) float32."""
        x = np.zeros((len(text), len(self.source)), np.float32)
        x[np.arange(len(text)), [self.source.index(ch) for ch in text]] = 1.0
        return x

    def one_hot_target(self, ch: str) -> np.ndarray:
        x = np.zeros((1, len(self.target)), np.float32)
        x[0, self.target.index(ch)] = 1.0
        return x

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"source": self.source, "target": self.target}))

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        return cls(**json.loads(path.read_text()))


def read_pairs(path: Path = HERE / "numbers.txt") -> list[tuple[str, str]]:
    pairs = []
    for line in path.read_text().splitlines():
        source, target = line.split("\t")
        pairs.append((source, target))
    return pairs


def train(out: Path, *, epochs: int = 400, latent: int = 64, seed: int = 0) -> Vocabulary:
    """Train the encoder-decoder on the shipped pairs; save ``encoder.keras`` (inputs -> [h, c]),
    ``decoder.keras`` ([chars, h, c] -> [softmax, h, c]) and the vocabulary."""
    import keras

    keras.utils.set_random_seed(seed)
    pairs = read_pairs()
    vocab = Vocabulary.of(pairs)
    longest_in = max(len(s) for s, _ in pairs)
    longest_out = max(len(t) for _, t in pairs) + 2
    enc_x = np.zeros((len(pairs), longest_in, len(vocab.source)), np.float32)
    dec_x = np.zeros((len(pairs), longest_out, len(vocab.target)), np.float32)
    dec_y = np.zeros_like(dec_x)
    for i, (source, target) in enumerate(pairs):
        enc_x[i, : len(source)] = vocab.encode(source)
        written = START + target + END
        for t, ch in enumerate(written):
            dec_x[i, t] = vocab.one_hot_target(ch)[0]
            if t > 0:
                dec_y[i, t - 1] = vocab.one_hot_target(ch)[0]
    encoder_inputs = keras.Input((None, len(vocab.source)), name="digits")
    _, h, c = keras.layers.LSTM(latent, return_state=True, name="encoder")(encoder_inputs)
    decoder_inputs = keras.Input((None, len(vocab.target)), name="chars")
    decoder_lstm = keras.layers.LSTM(
        latent, return_sequences=True, return_state=True, name="decoder"
    )
    sequence, _, _ = decoder_lstm(decoder_inputs, initial_state=[h, c])
    head = keras.layers.Dense(len(vocab.target), activation="softmax", name="next_char")
    model = keras.Model([encoder_inputs, decoder_inputs], head(sequence))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="categorical_crossentropy")
    model.fit([enc_x, dec_x], dec_y, batch_size=20, epochs=epochs, verbose=0)

    for name in ("encoder", "decoder"):
        model_path(out, name).parent.mkdir(parents=True, exist_ok=True)
    keras.Model(encoder_inputs, [h, c]).save(model_path(out, "encoder"))
    h_in = keras.Input((latent,), name="h_in")
    c_in = keras.Input((latent,), name="c_in")
    seq, h_out, c_out = decoder_lstm(decoder_inputs, initial_state=[h_in, c_in])
    decoder = keras.Model([decoder_inputs, h_in, c_in], [head(seq), h_out, c_out])
    decoder.save(model_path(out, "decoder"))
    vocab.save(out / "vocabulary.json")
    return vocab


def model_path(out: Path, name: str) -> Path:
    """Where a half is saved: version 1 of its model in the repository ``out/models``."""
    return out / "models" / name / "1" / "model.keras"


def _greedy(vocab: Vocabulary, step: Any, limit: int) -> str:
    """Feed START, then each predicted character, until END: ``step(one_hot) -> probabilities``."""
    text, ch = "", START
    for _ in range(limit):
        probabilities = step(vocab.one_hot_target(ch))
        ch = vocab.target[int(np.argmax(probabilities[-1]))]
        if ch == END:
            break
        text += ch
    return text


def keras_decode(out: Path, sources: Sequence[str], limit: int = 30) -> list[str]:
    """Decode in-process with the saved models, one character per decoder call."""
    import keras

    vocab = Vocabulary.load(out / "vocabulary.json")
    encoder = keras.saving.load_model(model_path(out, "encoder"), compile=False)
    decoder = keras.saving.load_model(model_path(out, "decoder"), compile=False)
    decoded = []
    for source in sources:
        state = [np.asarray(s) for s in encoder(vocab.encode(source)[None], training=False)]
        decoded.append(_greedy(vocab, _KerasStep(decoder, state), limit))
    return decoded


class _KerasStep:
    """One decoder call per character, the state carried in between."""

    def __init__(self, decoder: Any, state: list[np.ndarray]) -> None:
        self.decoder = decoder
        self.state = state

    def __call__(self, x: np.ndarray) -> np.ndarray:
        probabilities, *state = self.decoder([x[None], *self.state], training=False)
        self.state = [np.asarray(s) for s in state]
        return np.asarray(probabilities)[0]


def served_decode(out: Path, sources: Sequence[str], target: str, limit: int = 30) -> list[str]:
    """Decode through one lstm-serving server that serves both models: Predict on the encoder,
    a session on the decoder opened from the encoder's final (h, c) and stepped one character
    at a time."""
    from lstm_client import LstmClient

    vocab = Vocabulary.load(out / "vocabulary.json")
    decoded = []
    with LstmClient(target) as client:
        encoder, decoder = client.with_model("encoder"), client.with_model("decoder")
        for source in sources:
            encoded = encoder.predict(vocab.encode(source))
            with decoder.session(initial_state=encoded.state) as session:
                decoded.append(_greedy(vocab, lambda x: session.step(x).outputs, limit))
    return decoded


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["train", "decode"])
    parser.add_argument("sources", nargs="*", default=["42", "93", "15", "60"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/seq2seq"))
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--server", default="localhost:50051", help="the server of both models")
    args = parser.parse_args(argv)
    if args.command == "train":
        train(args.out, epochs=args.epochs)
        print(f"saved the model repository {args.out}/models (encoder, decoder)")
        return
    served = served_decode(args.out, args.sources, args.server)
    local = keras_decode(args.out, args.sources)
    for source, mine, theirs in zip(args.sources, served, local, strict=True):
        print(f"{source!r:>6} -> served {mine!r:24} keras {theirs!r:24} same: {mine == theirs}")
    if served != local:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
