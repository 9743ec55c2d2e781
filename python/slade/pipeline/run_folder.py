"""A run's output folder: refused when it holds a run of another configuration, cleared
when overwriting, and the configuration recorded in ``config.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._durable import remove, remove_temporary_files, write_json
from ..config import Config
from ..errors import ConfigError
from .stages import is_stage_id

#: What a run writes besides its stage folders.
RUN_FILES = ("config.json", "results.json", "plots")


def check_run_folder(out: Path, config: Config, overwrite: bool) -> None:
    """Refuses an output folder holding a run of another configuration."""
    saved = out / "config.json"
    if saved.exists() and not overwrite:
        shown = differing_settings(json.loads(saved.read_text()), config)
        if shown:
            raise ConfigError(
                f"{out} holds a run with another configuration ({shown}); "
                "choose another output folder or overwrite it (overwrite=True, --overwrite)"
            )


def differing_settings(saved: Any, config: Config) -> str:
    """The settings that change results where ``saved`` (a :meth:`Config.to_dict`) and
    ``config`` differ, as ``"key: saved -> new; ..."`` (the first five); ``""`` when none."""
    previous = Config.from_dict(saved)
    differences = _differences(previous.semantic_dict(), config.semantic_dict())
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in differences[:5])


def prepare_run_folder(out: Path, config: Config, overwrite: bool) -> None:
    """Clears an earlier run when overwriting (else the temporary files of killed writes),
    then records the configuration."""
    for folder in (out, out / "plots"):
        remove_temporary_files(folder)
    if overwrite and out.exists():
        for entry in out.iterdir():
            if entry.name in RUN_FILES or (entry.is_dir() and is_stage_id(entry.name)):
                remove(entry)
    write_json(out / "config.json", config.to_dict())


def run_config_of(checkpoint: Any) -> dict | None:
    """The ``config.json`` of the run a checkpoint path lies in (up to three folders up);
    None for anything else."""
    if not isinstance(checkpoint, (str, os.PathLike)):
        return None
    for folder in list(Path(checkpoint).resolve().parents)[:3]:
        candidate = folder / "config.json"
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None


def _differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b)):
            found += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return found
    return [] if a == b else [(prefix.rstrip("."), a, b)]
