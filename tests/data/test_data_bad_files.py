"""Bad image files and empty class folders (slade.data.bad_files): without skip_bad_files the
first one stops with an error naming it and what to do; with it, every file is checked when
the data loads, the bad ones are left out and reported. The files are real, written and then
broken the ways users' files break."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from torch.utils.data import DataLoader

import slade
from data_layouts import (
    break_folders,
    truncate,
    write_cub,
    write_folders,
    write_nabirds,
    written_images,
)
from slade.data import ImageFolderDataset, cub_nabirds, folders
from slade.errors import ConfigError, MissingFileError, SladeIOError, SladeWarning


def test_an_empty_class_folder_stops_the_load_naming_it_and_what_to_do(tmp_path):
    broken = break_folders(tmp_path)
    with pytest.raises(MissingFileError) as err:
        folders(tmp_path)
    message = str(err.value)
    assert str(broken["empty_folder"]) in message
    assert "notes.txt" in message and "skip_bad_files" in message
    with pytest.raises(MissingFileError, match="yak"):
        ImageFolderDataset(tmp_path / "labeled")


def test_files_without_an_image_ending_are_not_read(tmp_path):
    write_folders(tmp_path)
    (tmp_path / "labeled" / "dog" / "notes.txt").write_text("two dogs")
    dataset = ImageFolderDataset(tmp_path / "labeled")
    assert dataset.paths == written_images(tmp_path, "labeled")


BREAKS = {
    "not_an_image": lambda path: path.write_text("a caption"),
    "truncated": truncate,
    "empty_file": lambda path: path.write_bytes(b""),
    "missing": Path.unlink,
}


@pytest.mark.parametrize("kind", sorted(BREAKS))
def test_an_unreadable_image_raises_naming_the_file_when_it_is_read(tmp_path, kind):
    write_folders(tmp_path)
    data = folders(tmp_path)
    path = data.labeled.paths[1]
    BREAKS[kind](path)
    error = MissingFileError if kind == "missing" else SladeIOError
    with pytest.raises(error) as err:
        data.labeled[1]
    assert str(path) in str(err.value) and "skip_bad_files=True" in str(err.value)
    assert isinstance(err.value, slade.SladeError)


def test_dataloader_workers_report_the_file(tmp_path):
    write_folders(tmp_path)
    data = folders(tmp_path)
    bad = data.labeled.paths[2]
    bad.write_text("a caption")
    loader = DataLoader(data.labeled, batch_size=4, num_workers=1)
    with pytest.raises(SladeIOError) as err:
        list(loader)
    assert str(bad) in str(err.value) and "worker" in str(err.value)


def test_skip_bad_files_leaves_them_out_and_reports_each(tmp_path):
    broken = break_folders(tmp_path)
    with pytest.warns(SladeWarning) as caught:
        data = folders(tmp_path, skip_bad_files=True)
    message = str(caught[0].message)
    assert "3 unreadable image file(s) and 1 class folder(s)" in message
    assert all(str(path) in message for path in broken.values())
    bad = {broken[k] for k in ("not_an_image", "truncated", "empty_file")}
    assert {Path(entry.path) for entry in data.skipped.files} == bad
    assert [Path(entry.path) for entry in data.skipped.folders] == [broken["empty_folder"]]
    assert data.counts()["skipped"] == {"files": 3, "folders": 1}
    for part, dataset in (("labeled", data.labeled), ("test", data.test)):
        assert dataset.paths == [p for p in written_images(tmp_path, part) if p not in bad]
    assert data.unlabeled._images.paths == [
        p for p in written_images(tmp_path, "unlabeled") if p not in bad
    ]
    assert data.labeled.classes == ["cat", "dog", "emu"] and data.test.classes == ["fox", "gnu"]
    for dataset in (data.labeled, data.unlabeled, data.test):
        assert all(dataset[i][0].shape[0] == 3 for i in range(len(dataset)))


def test_skip_bad_files_changes_nothing_on_good_data(tmp_path):
    write_folders(tmp_path)
    plain = folders(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        checked = folders(tmp_path, skip_bad_files=True)
    assert plain.skipped is None and checked.counts()["skipped"] == {"files": 0, "folders": 0}
    for a, b in ((plain.labeled, checked.labeled), (plain.test, checked.test)):
        assert a.paths == b.paths and a.classes == b.classes and a.labels.equal(b.labels)
    assert plain.unlabeled._images.paths == checked.unlabeled._images.paths


def test_a_part_without_one_readable_image_is_an_error_even_when_skipping(tmp_path):
    write_folders(tmp_path)
    for path in written_images(tmp_path, "test"):
        path.write_text("a caption")
    with pytest.raises(SladeIOError, match="no image of the test part can be read"):
        folders(tmp_path, skip_bad_files=True)


def test_paper_pairings_leave_out_missing_and_corrupt_listed_files(tmp_path):
    cub = write_cub(tmp_path / "cub", num_classes=4)
    nabirds = write_nabirds(tmp_path / "nab")
    missing = cub["base"] / "images" / cub["paths"][0]
    missing.unlink()
    corrupt = nabirds["base"] / "images" / nabirds["images"][3][1]
    corrupt.write_bytes(b"\xff\xd8 not a JPEG")
    with pytest.warns(SladeWarning, match="2 unreadable image file"):
        data = cub_nabirds(tmp_path / "cub", tmp_path / "nab", skip_bad_files=True)
    assert {(Path(e.path), e.problem) for e in data.skipped.files} == {
        (missing, "not found"),
        (corrupt, f"cannot identify image file '{corrupt}'"),
    }
    assert len(data.labeled) == 2 * 3 - 1 and len(data.unlabeled) == len(nabirds["images"]) - 1
    assert missing not in data.labeled.paths and corrupt not in data.unlabeled._images.paths


@pytest.mark.parametrize("protocol", ["fashion-mnist-ssl", "omniglot-ssl"])
def test_skip_bad_files_is_a_setting_of_image_file_protocols(protocol):
    with pytest.raises(ConfigError, match=f"data.skip_bad_files must be False for {protocol}"):
        slade.config.preset(protocol, ["data.skip_bad_files=true"]).validate()
    own = slade.config.preset(protocol, ["data.protocol=folders", "data.root=x"])
    assert own.override(["data.skip_bad_files=true"]).validate().data.skip_bad_files
