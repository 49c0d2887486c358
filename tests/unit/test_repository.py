"""The model repository on disk: what a scan finds, what it skips and why, version policies and
each model's config file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from lstm_server.core.repository import (
    CONFIG_FILE,
    DirectoryRepository,
    FixedRepository,
    RepositoryError,
    VersionPolicy,
    parse_config,
)


def version(root: Path, name: str, number: str, file: str = "model.keras") -> Path:
    folder = root / name / number
    folder.mkdir(parents=True)
    (folder / file).write_bytes(b"weights")
    return folder


def test_a_scan_finds_models_and_their_numbered_versions(tmp_path: Path) -> None:
    version(tmp_path, "encoder", "1")
    version(tmp_path, "encoder", "3")
    version(tmp_path, "decoder", "2", "model.h5")
    found = DirectoryRepository(tmp_path).scan()
    assert sorted(found) == ["decoder", "encoder"]
    assert list(found["encoder"].versions) == [1, 3]
    assert found["decoder"].versions[2].path == tmp_path / "decoder" / "2" / "model.h5"
    assert found["encoder"].wanted() == {3}  # the default policy: the latest one


def test_what_cannot_be_a_model_is_skipped_saying_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    version(tmp_path, "good", "1")
    version(tmp_path, "good", "v2")  # not an integer
    version(tmp_path, "good", "0")  # not positive
    version(tmp_path, "good", "01")  # not how the number is written
    (tmp_path / "good" / "4").mkdir()  # no model file
    version(tmp_path, "bad name!", "1")
    (tmp_path / "notes.txt").write_text("not a model")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    version(outside, "elsewhere", "1")
    (tmp_path / "linked").symlink_to(outside / "elsewhere")
    with caplog.at_level(logging.WARNING):
        found = DirectoryRepository(tmp_path).scan()
    assert list(found) == ["good"]
    assert list(found["good"].versions) == [1]
    text = caplog.text
    assert "positive integer" in text
    assert "is not a model name" in text
    assert "outside the repository" in text
    assert "holds none of model.keras, model.h5" in text
    assert "not a directory" in text


def test_a_version_file_linking_outside_is_skipped(tmp_path: Path) -> None:
    outside = tmp_path / "outside.keras"
    outside.write_bytes(b"weights")
    repository = tmp_path / "repo"
    folder = repository / "m" / "1"
    folder.mkdir(parents=True)
    (folder / "model.keras").symlink_to(outside)
    assert DirectoryRepository(repository).scan()["m"].versions == {}


def test_a_saved_model_folder_is_listed_for_the_loader_to_refuse(tmp_path: Path) -> None:
    folder = tmp_path / "m" / "1"
    folder.mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    assert DirectoryRepository(tmp_path).scan()["m"].versions[1].path == folder


@pytest.mark.parametrize(
    ("policy", "wanted"),
    [
        (VersionPolicy(), {5}),
        (VersionPolicy("latest", 2), {3, 5}),
        (VersionPolicy("all"), {1, 3, 5}),
        (VersionPolicy("specific", versions=(1, 4)), {1}),
    ],
)
def test_version_policies_choose_as_tf_serving_does(policy: VersionPolicy, wanted: set) -> None:
    assert policy.choose([1, 3, 5]) == wanted


def test_a_config_file_sets_the_policy_and_the_models_own_settings(tmp_path: Path) -> None:
    version(tmp_path, "m", "1")
    version(tmp_path, "m", "2")
    (tmp_path / "m" / CONFIG_FILE).write_text(
        '{"version_policy": {"all": {}}, "max_batch_rows": 8, "batching": false}'
    )
    model = DirectoryRepository(tmp_path).scan()["m"]
    assert model.wanted() == {1, 2}
    assert dict(model.config.settings) == {"max_batch_rows": 8, "batching": False}
    assert model.versions[2].config is model.config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "is not JSON"),
        ("[]", "must hold a JSON object"),
        ('{"version_policy": {"newest": {}}}', "is not latest, all or specific"),
        ('{"version_policy": {"latest": {"num_versions": 0}}}', "integer >= 1"),
        ('{"version_policy": {"specific": {"versions": [0]}}}', "positive integers"),
        ('{"max_batch_rows": true}', "integer >= 1"),
        ('{"batching": 1}', "true or false"),
        ('{"units": 4}', "is not a model setting"),
    ],
)
def test_a_config_that_cannot_be_used_says_why(text: str, message: str) -> None:
    with pytest.raises(RepositoryError, match=message):
        parse_config(text)


def test_a_model_with_a_broken_config_is_listed_with_the_reason_and_serves_nothing(
    tmp_path: Path,
) -> None:
    version(tmp_path, "m", "1")
    (tmp_path / "m" / CONFIG_FILE).write_text('{"version_policy": "all"}')
    model = DirectoryRepository(tmp_path).scan()["m"]
    assert "version_policy must be one of" in model.error
    assert model.wanted() == set()


def test_a_missing_repository_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="is not a directory"):
        DirectoryRepository(tmp_path / "missing").scan()


def test_one_model_is_a_repository_of_one_version(tmp_path: Path) -> None:
    found = FixedRepository("tutorial", tmp_path / "m.keras").scan()
    assert list(found["tutorial"].versions) == [1]
    with pytest.raises(RepositoryError, match="is not a model name"):
        FixedRepository("my model", None)
