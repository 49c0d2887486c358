"""Flags, LSTM_* environment variables and their precedence."""

from __future__ import annotations

from pathlib import Path

import pytest
from lstm_server.config import Settings, load_settings


def test_defaults_serve_the_embedded_model_on_50051() -> None:
    settings = load_settings([], environ={})
    assert settings == Settings()
    assert (settings.port, settings.model, settings.features, settings.units) == (50051, None, 1, 1)


def test_environment_then_flags() -> None:
    env = {
        "LSTM_PORT": "6000",
        "LSTM_UNITS": "4",
        "LSTM_REFLECTION": "false",
        "LSTM_MODEL": "/m.keras",
    }
    settings = load_settings([], environ=env)
    assert (settings.port, settings.units, settings.reflection, settings.model) == (
        6000,
        4,
        False,
        Path("/m.keras"),
    )
    overridden = load_settings(["--port", "7000", "--reflection"], environ=env)
    assert (overridden.port, overridden.reflection, overridden.units) == (7000, True, 4)


def test_port_zero_is_a_free_port_for_every_port_and_off_is_its_own_word() -> None:
    free = load_settings(["--port", "0", "--http-port", "0", "--metrics-port", "0"], environ={})
    assert (free.port, free.http_port, free.metrics_port) == (0, 0, 0)
    off = load_settings(["--http-port", "off"], environ={"LSTM_METRICS_PORT": "OFF"})
    assert (off.http_port, off.metrics_port) == (None, None)
    assert load_settings([], environ={}).http_port == 8080


def test_the_compile_cache_is_per_user_by_default_and_off_is_its_own_word(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    default = load_settings([], environ={}).runtime.compile_cache
    assert default == tmp_path / "lstm-serving" / "xla"
    assert load_settings(["--compile-cache", "off"], environ={}).runtime.compile_cache is None
    given = load_settings([], environ={"LSTM_COMPILE_CACHE": str(tmp_path / "xla")})
    assert given.runtime.compile_cache == tmp_path / "xla"
    sized = load_settings(["--compile-cache-max-bytes", "1000"], environ={})
    assert sized.runtime.compile_cache_max_bytes == 1000


@pytest.mark.parametrize(
    ("argv", "env", "words"),
    [
        (["--units", "0"], {}, "--units must be at least 1"),
        (["--port", "70000"], {}, "--port must be between"),
        ([], {"LSTM_XLA": "maybe"}, "LSTM_XLA: not a boolean"),
        ([], {"LSTM_PORT": "http"}, "LSTM_PORT"),
        (["--http-port", "none"], {}, "not a port number or 'off'"),
        (["--port", "off"], {}, "invalid int value"),  # the gRPC port is never off
        (["--session-ttl", "100", "--max-session-ttl", "10"], {}, "cannot exceed"),
        (["--compile-cache-max-bytes", "0"], {}, "--compile-cache-max-bytes must be at least 1"),
    ],
)
def test_bad_settings_exit_with_a_message(argv, env, words, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        load_settings(argv, environ=env)
    assert caught.value.code == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "a.keras", "--model", "b.keras"], "--model is given more than once"),
        (["--model", "a.keras", "--model-repository", "/r"], "cannot go together"),
        (["--model-repository", "/r", "--model-name", "m"], "--model-name names --model"),
        (["--model-control-mode", "poll"], "needs --model-repository"),
        (["--model-repository", "/r", "--model-control-mode", "auto"], "must be one of"),
        (["--model-name", "my model"], "is not a model name"),
        (["--default-model", "m"], "--default-model is for --model-repository"),
        (["--model-repository", "/r", "--save-model", "/s.keras"], "--save-model saves"),
    ],
)
def test_model_flags_that_conflict_or_repeat_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        load_settings(argv, environ={})
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
