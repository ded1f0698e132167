"""ModelRepository.recover_uploads on leftovers no crash of the commit itself leaves.

The crashes the commit's own steps can leave are tested with real processes
(tests/reliability/test_model_upload_faults.py). These are the cases the rule must survive
anyway: an old folder set aside whose intent is gone, an intent that cannot be read.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from server_mock._models import ModelRecord, ModelRepository, ModelType


def repository_with_model(root: Path) -> tuple[ModelRepository, ModelRecord]:
    repository = ModelRepository(root)
    model_id = uuid.uuid4()
    record = ModelRecord(
        model_id=model_id, name="liver", type=ModelType.UNKNOWN, root=root / model_id.hex
    )
    (record.files / "liver").mkdir(parents=True)
    (record.files / "liver" / "config.pbtxt").write_text("name: 'liver'")
    repository.restore_model(record)
    return repository, record


def test_an_old_folder_set_aside_is_put_back_when_its_model_has_none(tmp_path: Path) -> None:
    repository, record = repository_with_model(tmp_path)
    aside = tmp_path / ".uploads" / f"replaced-{record.model_id.hex}"
    aside.parent.mkdir()
    record.root.rename(aside)
    partial = tmp_path / ".uploads" / "model-abc"
    partial.mkdir()

    assert repository.recover_uploads() == [partial.name, aside.name]
    assert (record.files / "liver" / "config.pbtxt").read_text() == "name: 'liver'"
    assert list((tmp_path / ".uploads").iterdir()) == []


def test_an_old_folder_set_aside_is_removed_when_its_model_has_one(tmp_path: Path) -> None:
    repository, record = repository_with_model(tmp_path)
    aside = tmp_path / ".uploads" / f"replaced-{record.model_id.hex}"
    (aside / "files").mkdir(parents=True)

    assert repository.recover_uploads() == [aside.name]
    assert record.files.is_dir() and list((tmp_path / ".uploads").iterdir()) == []


def test_an_unreadable_intent_keeps_it_and_the_folder_it_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repository, record = repository_with_model(tmp_path)
    uploads = tmp_path / ".uploads"
    intent = uploads / f"commit-{record.model_id.hex}.json"
    aside = uploads / f"replaced-{record.model_id.hex}"
    (aside / "files").mkdir(parents=True)
    intent.write_text("{not json")

    with caplog.at_level(logging.ERROR, "server_mock.models"):
        assert repository.recover_uploads() == []
    assert sorted(p.name for p in uploads.iterdir()) == sorted([intent.name, aside.name])
    assert record.files.is_dir()
    assert "is unreadable" in caplog.text and intent.name in caplog.text
