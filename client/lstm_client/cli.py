"""``lstm-client``: call a running lstm-server from the command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

import numpy as np

from lstm_client import bench
from lstm_client.client import LstmClient
from lstm_client.connection import TlsOptions
from lstm_client.errors import LstmError
from lstm_client.results import LayerState

TUTORIAL_INPUT = [0.1, 0.2, 0.3]


def _fmt(array: np.ndarray) -> str:
    return np.array2string(np.asarray(array), precision=6, suppress_small=True, separator=", ")


def _sequence(client: LstmClient, values: list[str], features: int) -> np.ndarray:
    """The command line's values: token ids for a token model, else floats in timesteps of
    ``features``."""
    try:
        if client.metadata().vocabulary_size:
            return np.asarray([int(v) for v in values], np.int64)
        numbers = [float(v) for v in values]
    except ValueError as error:
        raise SystemExit(f"cannot read the input values: {error}") from None
    if len(numbers) % features:
        raise SystemExit(
            f"{len(numbers)} values do not split into timesteps of {features} features"
        )
    return np.asarray(numbers, np.float32).reshape(-1, features)


def _print_results(
    outputs: np.ndarray | None,
    hidden: np.ndarray | None,
    states: tuple[LayerState, ...],
    indent: str = "",
) -> None:
    """The model's outputs, the top LSTM's hidden sequence when it differs, every layer's state."""
    if hidden is not None and hidden is outputs:  # a model without output layers
        print(f"{indent}hidden sequence (one row per timestep):\n{_fmt(hidden)}")
    else:
        if outputs is not None:
            print(f"{indent}outputs (one row per timestep):\n{_fmt(outputs)}")
        if hidden is not None:
            print(f"{indent}hidden sequence of the top LSTM:\n{_fmt(hidden)}")
    for k, state in enumerate(states):
        label = f"layer {k} " if len(states) > 1 else ""
        print(f"{indent}{label}h: {_fmt(state.h)}")
        print(f"{indent}{label}c: {_fmt(state.c)}")


def cmd_metadata(client: LstmClient, args: argparse.Namespace) -> None:
    meta = client.metadata()
    for key, value in vars(meta).items():
        print(f"{key}: {value}")


def cmd_predict(client: LstmClient, args: argparse.Namespace) -> None:
    result = client.predict(_sequence(client, args.values, args.features), include=_INCLUDE)
    _print_results(result.outputs, result.sequence, result.states)


# What the CLI asks for: the model's outputs and, for models with output layers, the hidden ones.
_INCLUDE = ("outputs", "hidden")


def cmd_stream(client: LstmClient, args: argparse.Namespace) -> None:
    x = _sequence(client, args.values, args.features)
    for item in client.stream(x, timesteps_per_message=args.per_message):
        print(item)


def cmd_demo(client: LstmClient, args: argparse.Namespace) -> None:
    meta = client.metadata()
    if meta.vocabulary_size or meta.has_output_layers or meta.lstm_layers > 1:
        raise SystemExit("the demo replays the tutorial's single LSTM; this model is a chain")
    x = np.asarray(TUTORIAL_INPUT, np.float32).reshape(-1, 1).repeat(meta.input_features, axis=1)
    result = client.predict(x)
    assert result.sequence is not None
    print(
        f"model {meta.name} {meta.version}: {meta.input_features} feature(s), {meta.units} unit(s)"
    )
    print(f"input: {_fmt(x)}")
    print("\n1. return_sequences=True: the hidden output of every timestep")
    print(_fmt(result.sequence))
    print("\n2. return_state=True: the final hidden state h and cell state c")
    print(f"h: {_fmt(result.h)}\nc: {_fmt(result.c)}")
    print("\n3. both: [sequence, h, c]")
    print(f"sequence: {_fmt(result.sequence)}\nh: {_fmt(result.h)}\nc: {_fmt(result.c)}")
    same = np.allclose(result.sequence[-1], result.h, atol=1e-6)
    print(f"\nthe last hidden output equals h: {same}")
    if not same:
        raise SystemExit(1)


def cmd_session(client: LstmClient, args: argparse.Namespace) -> None:
    x = _sequence(client, args.values, args.features)
    whole = client.predict(x)
    outputs = []
    with client.session() as session:
        print(f"session {session.session_id}")
        for start in range(0, len(x), args.chunk):
            step = session.step(x[start : start + args.chunk])
            assert step.outputs is not None
            outputs.append(step.outputs)
            print(f"step {step.step_number}:")
            _print_results(step.outputs, step.sequence, step.states, indent="  ")
    stepped = np.concatenate(outputs)
    same = bool(
        np.allclose(stepped, np.asarray(whole.outputs), atol=1e-5)
        and all(
            np.allclose(a.c, b.c, atol=1e-5) for a, b in zip(step.states, whole.states, strict=True)
        )
    )
    print(f"equals predict over the whole sequence: {same}")
    if not same:
        raise SystemExit(1)


def cmd_bench(args: argparse.Namespace) -> None:
    """Like Triton's perf_analyzer: requests/s, timesteps/s and latency percentiles."""
    metadata = (("authorization", f"Bearer {args.token}"),) if args.token else ()
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.warmup:
        asyncio.run(
            bench.lstm_load(args.target, args.rpc, args.features, args.timesteps, args.batch,
                            levels[0], args.warmup, metadata)
        )  # fmt: skip
    per_request = args.timesteps * (1 if args.rpc == "session" else args.batch)
    print(f"rpc={args.rpc} features={args.features} timesteps={args.timesteps} batch={args.batch}")
    header = ["concurrency", "requests/s", "timesteps/s", "p50 ms", "p90 ms", "p99 ms"]
    print("  ".join(f"{h:>12}" for h in header))
    for level in levels:
        result = asyncio.run(
            bench.lstm_load(args.target, args.rpc, args.features, args.timesteps, args.batch,
                            level, args.duration, metadata)
        )  # fmt: skip
        row = result.row(per_request)
        print(
            "  ".join(f"{row[h]:>12.3f}" if h != "concurrency" else f"{level:>12}" for h in header)
        )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lstm-client", description="Call an lstm-serving server.")
    p.add_argument(
        "--target",
        default=os.environ.get("LSTM_TARGET", "localhost:50051"),
        help="server address [env LSTM_TARGET]",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    p.add_argument(
        "--token", default=os.environ.get("LSTM_TOKEN"), help="bearer token [env LSTM_TOKEN]"
    )
    p.add_argument("--tls-ca", help="PEM CA bundle of the server's certificate: connect over TLS")
    p.add_argument("--tls-cert", help="PEM client certificate chain (mutual TLS)")
    p.add_argument("--tls-key", help="PEM client private key (mutual TLS)")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("metadata", help="show the served model and limits").set_defaults(
        run=cmd_metadata
    )
    sub.add_parser("demo", help="replay the return_sequences/return_state tutorial").set_defaults(
        run=cmd_demo
    )
    b = sub.add_parser("bench", help="load-test the server: throughput and latency percentiles")
    b.add_argument("--target", default=argparse.SUPPRESS, help="server address (as above)")
    b.add_argument("--rpc", choices=["predict", "stream", "session"], default="predict")
    b.add_argument("--features", type=int, default=1)
    b.add_argument("--timesteps", type=int, default=3)
    b.add_argument("--batch", type=int, default=1, help="sequences per request (predict, stream)")
    b.add_argument("--concurrency", default="1,8,64", help="calls in flight, comma-separated")
    b.add_argument("--duration", type=float, default=5.0, help="seconds per concurrency level")
    b.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up first")
    b.set_defaults(run=None)
    for name, run, text in (
        ("predict", cmd_predict, "run one sequence; print its outputs and every layer's h, c"),
        ("stream", cmd_stream, "stream the hidden outputs of one sequence"),
        ("session", cmd_session, "step a server-held session through one sequence"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument(
            "values",
            nargs="+",
            help="input values timestep by timestep (token ids for token models)",
        )
        cmd.add_argument("--features", type=int, default=1, help="values per timestep")
        cmd.set_defaults(run=run)
        if name == "stream":
            cmd.add_argument("--per-message", type=int, default=1, help="timesteps per message")
        if name == "session":
            cmd.add_argument("--chunk", type=int, default=1, help="timesteps per step")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "bench":
        cmd_bench(args)
        return
    try:
        tls = None
        if args.tls_ca or args.tls_cert:
            tls = TlsOptions.from_files(args.tls_ca, args.tls_cert, args.tls_key)
        with LstmClient(args.target, timeout=args.timeout, token=args.token, tls=tls) as client:
            args.run(client, args)
    except LstmError as error:
        print(f"error: {error}", file=sys.stderr)
        for violation in error.violations:
            print(f"  {violation.field}: {violation.description}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
