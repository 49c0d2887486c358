"""``lstm-client``: call a running lstm-server from the command line.

Exit codes: 0 done; 1 the call failed (the server refused it or could not be reached; the
message gives the status, its reason and every field violation); 2 a usage error (flags, input
values, files); 3 a check the command makes (``demo``, ``session``) found results that differ.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from importlib import metadata as package_metadata
from typing import Any

import grpc
import numpy as np

from lstm_client import bench
from lstm_client.client import LstmClient
from lstm_client.connection import TlsOptions, call_metadata
from lstm_client.errors import LstmError
from lstm_client.results import FinalState, LayerState, StreamChunk

TUTORIAL_INPUT = [0.1, 0.2, 0.3]
EXIT_CALL_FAILED, EXIT_USAGE, EXIT_CHECK_FAILED = 1, 2, 3


class UsageError(Exception):
    """Input the command cannot use; exit code 2."""


class CheckFailed(Exception):
    """A check the command makes did not hold; exit code 3."""


def _fmt(array: np.ndarray) -> str:
    return np.array2string(np.asarray(array), precision=6, suppress_small=True, separator=", ")


def _json(value: Any) -> Any:
    """Arrays as nested lists, LayerStates as {"h", "c"}, for ``--output json``."""
    if isinstance(value, LayerState):
        return {"h": _json(value.h), "c": _json(value.c)}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    return value


def _emit(value: Any) -> None:
    print(json.dumps(_json(value), default=str))


def _sequence(client: LstmClient, values: list[str], features: int | None) -> np.ndarray:
    """The command line's values as the model takes them (its metadata says how): token ids for a
    token model, else floats in timesteps of the model's input features."""
    meta = client.metadata()
    if features is not None and features != meta.input_features:
        raise UsageError(
            f"--features is {features}, but model {meta.name} takes {meta.input_features} "
            "features per timestep (leave --features out: the CLI reads it from the model)"
        )
    try:
        if meta.vocabulary_size:
            return np.asarray([int(v) for v in values], np.int64)
        numbers = [float(v) for v in values]
    except ValueError as error:
        raise UsageError(f"cannot read the input values: {error}") from None
    width = meta.input_features
    if len(numbers) % width:
        raise UsageError(
            f"{len(numbers)} values do not split into timesteps of model {meta.name}'s "
            f"{width} features"
        )
    return np.asarray(numbers, np.float32).reshape(-1, width)


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
    if args.output == "json":
        _emit(asdict(meta))
        return
    for key, value in vars(meta).items():
        print(f"{key}: {value}")


# What the CLI asks for: the model's outputs and, for models with output layers, the hidden ones.
_INCLUDE = ("outputs", "hidden")


def cmd_predict(client: LstmClient, args: argparse.Namespace) -> None:
    result = client.predict(_sequence(client, args.values, args.features), include=_INCLUDE)
    if args.output == "json":
        _emit({"outputs": result.outputs, "sequence": result.sequence, "states": result.states})
        return
    _print_results(result.outputs, result.sequence, result.states)


def cmd_stream(client: LstmClient, args: argparse.Namespace) -> None:
    x = _sequence(client, args.values, args.features)
    for item in client.stream(x, timesteps_per_message=args.per_message):
        if args.output != "json":
            print(item)
        elif isinstance(item, StreamChunk):
            _emit(
                {
                    "sequence_index": item.sequence_index,
                    "start_timestep": item.start_timestep,
                    "outputs": item.outputs,
                }
            )
        elif isinstance(item, FinalState):
            _emit({"sequence_index": item.sequence_index, "states": item.states})


def cmd_demo(client: LstmClient, args: argparse.Namespace) -> None:
    meta = client.metadata()
    if meta.vocabulary_size or meta.has_output_layers or meta.lstm_layers > 1:
        raise UsageError("the demo replays the tutorial's single LSTM; this model is a chain")
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
        raise CheckFailed("the last hidden output differs from h")


def cmd_session(client: LstmClient, args: argparse.Namespace) -> None:
    x = _sequence(client, args.values, args.features)
    whole = client.predict(x)
    outputs = []
    as_json = args.output == "json"
    with client.session() as session:
        if not as_json:
            print(f"session {session.session_id}")
        for start in range(0, len(x), args.chunk):
            step = session.step(x[start : start + args.chunk])
            assert step.outputs is not None
            outputs.append(step.outputs)
            if as_json:
                _emit(
                    {
                        "session_id": step.session_id,
                        "step_number": step.step_number,
                        "outputs": step.outputs,
                        "states": step.states,
                    }
                )
            else:
                print(f"step {step.step_number}:")
                _print_results(step.outputs, step.sequence, step.states, indent="  ")
    stepped = np.concatenate(outputs)
    same = bool(
        np.allclose(stepped, np.asarray(whole.outputs), atol=1e-5)
        and all(
            np.allclose(a.c, b.c, atol=1e-5) for a, b in zip(step.states, whole.states, strict=True)
        )
    )
    if as_json:
        _emit({"equals_predict": same})
    else:
        print(f"equals predict over the whole sequence: {same}")
    if not same:
        raise CheckFailed("the steps differ from predict over the whole sequence")


def cmd_models(client: LstmClient, args: argparse.Namespace) -> None:
    """Every model version the server has, its state and (for a failed load) why."""
    statuses = client.list_models()
    if args.output == "json":
        for status in statuses:
            _emit(asdict(status))
        return
    for s in statuses:
        reason = f"  ({s.reason})" if s.reason else ""
        print(f"{s.name}  version {s.version}  {s.state}  {s.digest}{reason}".rstrip())


def cmd_bench(args: argparse.Namespace, tls: TlsOptions | None) -> None:
    """Like Triton's perf_analyzer: requests/s, timesteps/s and latency percentiles."""
    metadata = call_metadata(None, args.token)
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.features is None:
        with LstmClient(
            args.target, timeout=args.timeout, token=args.token, tls=tls, model=args.model
        ) as client:
            args.features = client.metadata().input_features

    def load(level: int, seconds: float) -> bench.LoadResult:
        return asyncio.run(
            bench.lstm_load(args.target, args.rpc, args.features, args.timesteps, args.batch,
                            level, seconds, metadata, tls, args.window)
        )  # fmt: skip

    if args.warmup:
        load(levels[0], args.warmup)
    per_request = args.timesteps * (1 if args.rpc == "session" else args.batch)
    header = ["concurrency", "requests/s", "timesteps/s", "p50 ms", "p90 ms", "p99 ms"]
    if args.output != "json":
        print(f"rpc={args.rpc} features={args.features} timesteps={args.timesteps} "
              f"batch={args.batch}")  # fmt: skip
        print("  ".join(f"{h:>12}" for h in header))
    for level in levels:
        row = load(level, args.duration).row(per_request)
        if args.output == "json":
            _emit({"rpc": args.rpc, "concurrency": level, **row})
        else:
            print(
                "  ".join(
                    f"{row[h]:>12.3f}" if h != "concurrency" else f"{level:>12}" for h in header
                )
            )


def _version() -> str:
    try:
        return package_metadata.version("lstm-serving")
    except package_metadata.PackageNotFoundError:
        return "unknown"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lstm-client",
        description="Call an lstm-serving server.",
        epilog="exit codes: 0 done, 1 the call failed, 2 usage error, 3 a check failed",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
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
    p.add_argument(
        "--output", choices=["text", "json"], default="text", help="text, or JSON (one per line)"
    )
    p.add_argument("--model", default="", help="the model to call (default: the server's)")
    p.add_argument(
        "--model-version", type=int, default=0, help="its version (default: the newest loaded)"
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("metadata", help="show the served model and limits").set_defaults(
        run=cmd_metadata
    )
    sub.add_parser("models", help="list the model versions the server has").set_defaults(
        run=cmd_models
    )
    sub.add_parser("demo", help="replay the return_sequences/return_state tutorial").set_defaults(
        run=cmd_demo
    )
    b = sub.add_parser("bench", help="load-test the server: throughput and latency percentiles")
    b.add_argument("--target", default=argparse.SUPPRESS, help="server address (as above)")
    b.add_argument("--rpc", choices=["predict", "stream", "session"], default="predict")
    b.add_argument(
        "--features", type=int, default=None, help="values per timestep (default: the model's)"
    )
    b.add_argument("--timesteps", type=int, default=3)
    b.add_argument("--batch", type=int, default=1, help="sequences per request (predict, stream)")
    b.add_argument("--concurrency", default="1,8,64", help="calls in flight, comma-separated")
    b.add_argument(
        "--window", type=int, default=1, help="steps in flight on each session stream (session)"
    )
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
        cmd.add_argument(
            "--features",
            type=int,
            default=None,
            help="values per timestep (default: the model's, from its metadata; a check if given)",
        )
        cmd.set_defaults(run=run)
        if name == "stream":
            cmd.add_argument("--per-message", type=int, default=1, help="timesteps per message")
        if name == "session":
            cmd.add_argument("--chunk", type=int, default=1, help="timesteps per step")
    return p


def _fail(code: int, message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)  # exits 2 on bad flags
    try:
        tls = None
        if args.tls_ca or args.tls_cert:
            tls = TlsOptions.from_files(args.tls_ca, args.tls_cert, args.tls_key)
        if args.command == "bench":
            cmd_bench(args, tls)
            return
        if args.model_version < 0:
            raise UsageError("--model-version is 1 or more (0: the newest)")
        with LstmClient(
            args.target,
            timeout=args.timeout,
            token=args.token,
            tls=tls,
            model=args.model,
            model_version=args.model_version,
        ) as client:
            args.run(client, args)
    except (LstmError, grpc.RpcError) as failure:
        error = failure if isinstance(failure, LstmError) else LstmError.from_rpc_error(failure)
        reason = f" [{error.reason}]" if error.reason else ""
        lines = [f"{error}{reason}"]
        lines += [f"  {v.field}: {v.description}" for v in error.violations]
        _fail(EXIT_CALL_FAILED, "\n".join(lines))
    except (UsageError, ValueError, OSError) as error:
        _fail(EXIT_USAGE, str(error))
    except CheckFailed as error:
        _fail(EXIT_CHECK_FAILED, str(error))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
