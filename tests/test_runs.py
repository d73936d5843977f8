"""Run directories: atomic writes that name their target when they fail, and clear words for what is not a run."""

from __future__ import annotations

import errno
import os

import pytest

from makemore.errors import MakemoreError
from makemore.runs import checkpoint as ckpt


def test_a_failed_write_names_the_target_not_its_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError) as caught:
        ckpt.atomic_write(target, b"weights")
    assert caught.value.filename == str(target)
    assert not list(tmp_path.iterdir())  # the temp file is gone too


def test_a_write_into_a_missing_directory_names_the_target(tmp_path):
    target = tmp_path / "gone" / "run.json"
    with pytest.raises(OSError) as caught:
        ckpt.write_json(target, {})
    assert caught.value.filename == str(target)


def test_a_file_given_as_a_run_is_called_a_file(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("emma\n")
    with pytest.raises(MakemoreError, match="is a file, not a run directory"):
        ckpt.read_run_spec(path)
    with pytest.raises(MakemoreError, match="no such run directory"):
        ckpt.read_run_spec(tmp_path / "missing")
