"""The model repository: which models and numbered versions exist, and each model's own settings.

The layout is Triton's and TF Serving's::

    DIR/<name>/<version>/model.keras     (or model.h5; versions are positive integers)
    DIR/<name>/model-config.json         (optional: version policy, limits, batching)

Scanning reads only names and the small config file; loading a version is the registry's job.
Entries that cannot be models (names that are not model names, version folders that are not
positive integers, symlinks that lead out of the repository) are skipped with a log line saying
why; a model whose config file cannot be used is listed with that reason and none of its versions
is loaded.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

MODEL_FILES = ("model.keras", "model.h5")
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
CONFIG_FILE = "model-config.json"
DEFAULT_MODEL_NAME = "default-lstm"  # the seeded model's name, when --model-name gives none
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MAX_CONFIG_BYTES = 64 * 1024


class RepositoryError(Exception):
    """A model's config file, or a ``--model`` given, cannot be used; the message says why."""


def check_model_name(name: str) -> str:
    if not NAME.fullmatch(name) or name in (".", ".."):
        raise RepositoryError(
            f"{name!r} is not a model name: up to 128 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model to serve, as TF Serving and Triton say it: the ``latest`` N
    (the default, N = 1), ``all``, or ``specific`` ones."""

    kind: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def choose(self, available: Iterable[int]) -> set[int]:
        ordered = sorted(available, reverse=True)
        if self.kind == "all":
            return set(ordered)
        if self.kind == "specific":
            return set(ordered) & set(self.versions)
        return set(ordered[: self.num_versions])

    def describe(self) -> dict[str, Any]:
        if self.kind == "latest":
            return {"latest": {"num_versions": self.num_versions}}
        if self.kind == "specific":
            return {"specific": {"versions": list(self.versions)}}
        return {"all": {}}


# What a model's config file may set beyond its version policy: the server's flag of the same
# name, for this model alone.
MODEL_SETTINGS: dict[str, type] = {
    "max_batch_rows": int,
    "batching": bool,
    "max_timesteps": int,
    "max_batch_size": int,
}


@dataclass(frozen=True)
class ModelConfig:
    """A model's own settings (``model-config.json``); unset ones are the server's."""

    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    settings: Mapping[str, int | bool] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"version_policy": self.version_policy.describe(), **self.settings}


def _policy(value: Any) -> VersionPolicy:
    if not isinstance(value, dict) or len(value) != 1:
        raise RepositoryError(
            'version_policy must be one of {"latest": {"num_versions": N}}, {"all": {}}, '
            '{"specific": {"versions": [...]}}'
        )
    [(kind, body)] = value.items()
    if not isinstance(body, dict):
        raise RepositoryError(f"version_policy.{kind} must be an object")
    if kind == "latest":
        count = body.get("num_versions", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise RepositoryError("version_policy.latest.num_versions must be an integer >= 1")
        return VersionPolicy("latest", count)
    if kind == "all":
        return VersionPolicy("all")
    if kind == "specific":
        versions = body.get("versions")
        if (
            not isinstance(versions, list)
            or not versions
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in versions)
        ):
            raise RepositoryError(
                "version_policy.specific.versions must be a list of positive integers"
            )
        return VersionPolicy("specific", versions=tuple(sorted(set(versions))))
    raise RepositoryError(f"version_policy {kind!r} is not latest, all or specific")


def parse_config(text: str) -> ModelConfig:
    """A model's config from the text of its ``model-config.json``."""
    try:
        document = json.loads(text)
    except ValueError as error:
        raise RepositoryError(f"{CONFIG_FILE} is not JSON: {error}") from None
    if not isinstance(document, dict):
        raise RepositoryError(f"{CONFIG_FILE} must hold a JSON object")
    policy = VersionPolicy()
    settings: dict[str, int | bool] = {}
    for key, value in document.items():
        if key == "version_policy":
            policy = _policy(value)
            continue
        kind = MODEL_SETTINGS.get(key)
        if kind is None:
            known = ", ".join(["version_policy", *MODEL_SETTINGS])
            raise RepositoryError(f"{key!r} is not a model setting (known: {known})")
        if kind is bool and not isinstance(value, bool):
            raise RepositoryError(f"{key} must be true or false")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise RepositoryError(f"{key} must be an integer >= 1")
        settings[key] = value
    return ModelConfig(policy, settings)


@dataclass(frozen=True)
class ModelSource:
    """One version to load: a model file or SavedModel directory, or (``path`` None) the
    embedded default model."""

    name: str
    version: int
    path: Path | None
    config: ModelConfig = field(default_factory=ModelConfig)
    # (mtime in ns, size) of the model file when scanned: a version whose load failed is tried
    # again once its file changes (a copy that was still being written, say).
    stamp: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class RepositoryModel:
    """A model as the repository has it: its config and its versions' sources. ``error``, when
    set, says why none of them can be served."""

    name: str
    config: ModelConfig
    versions: Mapping[int, ModelSource]
    error: str = ""

    def wanted(self) -> set[int]:
        """The versions its policy serves."""
        return set() if self.error else self.config.version_policy.choose(self.versions)


class Repository(Protocol):
    """Where models come from; ``scan()`` may be called again to see what changed."""

    def scan(self) -> dict[str, RepositoryModel]: ...


class FixedRepository:
    """One model that never changes: ``--model PATH`` (version 1), or the embedded default."""

    def __init__(self, name: str, path: Path | None) -> None:
        check_model_name(name)
        self._model = RepositoryModel(
            name, ModelConfig(), {1: ModelSource(name, 1, path, ModelConfig())}
        )

    def scan(self) -> dict[str, RepositoryModel]:
        return {self._model.name: self._model}


class DirectoryRepository:
    """A model repository directory, scanned anew on every ``scan()``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._reported: set[str] = set()  # skipped entries already logged (polls repeat them)

    def _skip(self, path: Path, why: str) -> None:
        key = f"{path}: {why}"
        if key not in self._reported:
            self._reported.add(key)
            log.warning("model repository: skipped %s: %s", path, why)

    def _inside(self, path: Path) -> bool:
        try:
            path.resolve().relative_to(self.root.resolve())
        except ValueError:
            return False
        return True

    def scan(self) -> dict[str, RepositoryModel]:
        if not self.root.is_dir():
            raise RepositoryError(f"the model repository {self.root} is not a directory")
        models: dict[str, RepositoryModel] = {}
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith("."):
                continue
            if not entry.is_dir():
                self._skip(entry, "not a directory (a model is a folder of numbered versions)")
                continue
            if not self._inside(entry):
                self._skip(entry, "a link to outside the repository")
                continue
            try:
                check_model_name(entry.name)
            except RepositoryError as error:
                self._skip(entry, str(error))
                continue
            models[entry.name] = self._model(entry)
        return models

    def _model(self, folder: Path) -> RepositoryModel:
        name = folder.name
        config, error = ModelConfig(), ""
        config_path = folder / CONFIG_FILE
        if config_path.exists():
            try:
                if not self._inside(config_path):
                    raise RepositoryError(f"{CONFIG_FILE} links to outside the repository")
                if config_path.stat().st_size > MAX_CONFIG_BYTES:
                    raise RepositoryError(f"{CONFIG_FILE} is larger than {MAX_CONFIG_BYTES} bytes")
                config = parse_config(config_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, RepositoryError) as exc:
                error = f"{config_path}: {exc}"
                self._skip(config_path, str(exc))
        versions: dict[int, ModelSource] = {}
        for entry in sorted(folder.iterdir()):
            if entry.name == CONFIG_FILE or entry.name.startswith("."):
                continue
            if not entry.is_dir():
                self._skip(entry, "not a version folder")
                continue
            if (
                not entry.name.isdigit()
                or int(entry.name) < 1
                or entry.name != str(int(entry.name))
            ):
                self._skip(entry, "a version folder's name is a positive integer (1, 2, ...)")
                continue
            if not self._inside(entry):
                self._skip(entry, "a link to outside the repository")
                continue
            source = self._source(name, int(entry.name), entry, config)
            if source is not None:
                versions[source.version] = source
        return RepositoryModel(name, config, dict(sorted(versions.items())), error)

    def _source(
        self, name: str, version: int, folder: Path, config: ModelConfig
    ) -> ModelSource | None:
        for file_name in MODEL_FILES:
            path = folder / file_name
            if path.exists():
                if not self._inside(path):
                    self._skip(path, "a link to outside the repository")
                    return None
                return ModelSource(name, version, path, config, _stamp(path))
        if any((folder / marker).exists() for marker in SAVED_MODEL_FILES):
            # The loader says what it is and what to do instead.
            return ModelSource(name, version, folder, config, _stamp(folder))
        self._skip(folder, f"holds none of {', '.join(MODEL_FILES)} (nor a SavedModel)")
        return None


def _stamp(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (0, 0)
    return (stat.st_mtime_ns, stat.st_size)
