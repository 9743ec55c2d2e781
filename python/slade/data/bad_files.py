"""Unreadable image files and empty class folders, left out at load time (``skip_bad_files``).

Without the option a bad file stops the run: an empty class folder when the data is loaded
(:class:`~slade.errors.MissingFileError` naming the folder), a missing, corrupt, truncated
or non-image file (``x.jpg`` holding text) when it is decoded
(:class:`~slade.errors.MissingFileError` or :class:`~slade.errors.SladeIOError` naming the
file, also from DataLoader workers). Files whose names have no image ending (``notes.txt``)
are not images of the data set and are never read, as in torchvision's ImageFolder.

With ``skip_bad_files=True`` (``data.skip_bad_files`` in a config) a loader decodes every
image file of the data once, in full, drops those it cannot read and the class folders
without images, warns (:class:`~slade.errors.SladeWarning`, listing the first few) and
records them in ``SemiSupervisedData.skipped`` (``counts()`` and a run's ``results.json``
under ``data``). The check decodes every file in full, one after the other: 2,000 PNGs of
64 x 64 px take 0.4 s, 2,000 JPEGs of 500 x 375 px (the size of CUB's photographs) 2.6 s on
one CPU core, so about 15 s for CUB-200-2011 and a minute for NABirds, once per load. Data
without bad files keeps its images, labels and classes as they are, so runs on it are the
same with or without the option.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SladeIOError, SladeWarning
from ._files import image_problem
from .base import ImageFileDataset, UnlabeledDataset

#: How many skipped files the warning names.
SHOWN = 5

#: The parts of a SemiSupervisedData that may hold image files.
_PARTS = ("labeled", "unlabeled", "test", "val", "gallery")


@dataclass(frozen=True)
class BadFile:
    """A file or folder left out, and why."""

    path: str
    problem: str


@dataclass
class SkippedFiles:
    """What a loader with ``skip_bad_files`` left out.

    Attributes:
        files: image files it could not read (missing, corrupt, truncated, not images).
        folders: class folders without image files.
    """

    files: list[BadFile] = field(default_factory=list)
    folders: list[BadFile] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"files": len(self.files), "folders": len(self.folders)}

    def to_dict(self) -> dict[str, Any]:
        """The counts and every entry, as JSON-ready values."""
        entries = [dataclasses.asdict(entry) for entry in self.folders + self.files]
        return {**self.counts(), "entries": entries}

    def message(self) -> str:
        """One line: how many were skipped, and the first few with their problems."""
        entries = self.folders + self.files
        shown = "; ".join(f"{entry.path} ({entry.problem})" for entry in entries[:SHOWN])
        more = f"; and {len(entries) - SHOWN} more" if len(entries) > SHOWN else ""
        return (
            f"skip_bad_files: left out {len(self.files)} unreadable image file(s) and "
            f"{len(self.folders)} class folder(s) without images: {shown}{more} "
            "(all of them: data.skipped, results.json 'data')"
        )


def bad_files(paths: Sequence[Path], mode: str) -> dict[Path, str]:
    """The files of ``paths`` that :func:`~slade.data._files.load_image` cannot read in
    ``mode``, with their problems; each file is decoded once."""
    problems = {path: image_problem(path, mode) for path in dict.fromkeys(paths)}
    return {path: problem for path, problem in problems.items() if problem is not None}


def without_bad_files(data: Any, empty_folders: Sequence[BadFile] = ()) -> Any:
    """``data`` (a :class:`~slade.data.SemiSupervisedData`) without the image files no part
    can read, its ``skipped`` recording them and ``empty_folders``; warns when anything was
    left out. Labeled parts lose classes left without images; the other parts keep their
    label numbering (query and gallery share one)."""
    parts = {name: _files_of(getattr(data, name)) for name in _PARTS}
    found: dict[Path, str] = {}
    for dataset in parts.values():
        if dataset is not None:
            found.update(bad_files(dataset.paths, dataset.mode))
    changes: dict[str, Any] = {
        name: _dropped(name, getattr(data, name), dataset, found)
        for name, dataset in parts.items()
        if dataset is not None and any(path in found for path in dataset.paths)
    }
    skipped = SkippedFiles(
        [BadFile(str(path), problem) for path, problem in sorted(found.items())],
        list(empty_folders),
    )
    if skipped.files or skipped.folders:
        warnings.warn(skipped.message(), SladeWarning, stacklevel=4)
    return dataclasses.replace(data, **changes, skipped=skipped)


def _files_of(part: Any) -> ImageFileDataset | None:
    """The image-file dataset of a part (an unlabeled part wraps one), else None."""
    if isinstance(part, UnlabeledDataset):
        part = part._images
    return part if isinstance(part, ImageFileDataset) else None


def _dropped(name: str, part: Any, files: ImageFileDataset, found: dict[Path, str]) -> Any:
    keep = np.array([path not in found for path in files.paths], dtype=bool)
    if not keep.any():
        first = files.paths[0]
        raise SladeIOError(
            f"no image of the {name} part can be read (e.g. {first}: {found[first]}); "
            "check the data folder"
        )
    if isinstance(part, UnlabeledDataset):
        return part.subset(keep)
    return part.subset(keep, relabel=name == "labeled")
