"""Atomic, durable writes (slade._durable) and the removal of killed writes' leftovers."""

from __future__ import annotations

import os

import pytest

from slade import _durable


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "results.json"
    _durable.write_json(path, {"a": 1})
    _durable.write_json(path, {"a": 2})
    assert path.read_text() == '{\n "a": 2\n}'
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "history.json"
    _durable.write_bytes(path, b"old")

    def fail(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        _durable.write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json"]


def test_a_writer_that_fails_halfway_keeps_the_old_file(tmp_path):
    path = tmp_path / "index.safetensors"
    _durable.write_with(path, lambda temporary: temporary.write_bytes(b"old"))

    def half(temporary):
        temporary.write_bytes(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        _durable.write_with(path, half)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.safetensors"]


def test_only_temporary_files_of_killed_writes_are_removed(tmp_path):
    names = ["a.json.tmp-12", "b.safetensors.tmp-3456", "c.tmp", "d.tmp-x", "e.json"]
    for name in names:
        (tmp_path / name).write_text("")
    removed = _durable.remove_temporary_files(tmp_path)
    assert sorted(p.name for p in removed) == names[:2]
    assert sorted(p.name for p in tmp_path.iterdir()) == names[2:]
    assert _durable.remove_temporary_files(tmp_path / "absent") == []
