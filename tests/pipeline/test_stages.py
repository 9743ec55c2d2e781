"""The stage machinery (slade.pipeline.stages): what the training loop saves when an
interrupt surfaces where it cannot be held, and what a resume tidies away. Real Ctrl-C and
kills of whole runs: tests/pipeline/test_resume.py."""

from __future__ import annotations

import json

import pytest
import torch

import slade
from slade.pipeline.stages import StageFiles, stage_files, train_loop

MODEL = slade.ModelConfig("convnet", 1, 8)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return torch.rand(8, 1, 28, 28, generator=g), torch.arange(8) % 2


def batches(start: int):
    step = start
    while True:
        yield batch(step)
        step += 1


def steps_of(trainer):
    return lambda images_labels: trainer.step(*images_labels)


def config() -> slade.Config:
    return slade.config.preset("fashion-mnist-ssl", ["checkpoint_every=2", "progress=false"])


def test_an_interrupt_between_a_step_and_its_row_keeps_the_latest_checkpoint(tmp_path):
    """Where Ctrl-C cannot be held (it surfaced after step 3, before its row), the loop does
    not write a checkpoint at step 3 with two rows: the step-2 checkpoint stays."""
    trainer = slade.TeacherTrainer(MODEL)
    files = stage_files(trainer, tmp_path, None)

    def step(images_labels):
        metrics = trainer.step(*images_labels)
        if trainer.step_count == 3:
            raise KeyboardInterrupt
        return metrics

    with pytest.raises(KeyboardInterrupt):
        train_loop("teacher", trainer, files, 6, batches, step, config(), None)
    resumed = slade.TeacherTrainer(MODEL)
    files = stage_files(resumed, tmp_path, None)
    assert resumed.step_count == 2
    assert [row["step"] for row in files.history(resumed.step_count)] == [1, 2]


def test_a_resume_removes_temporary_files_and_a_finished_stages_checkpoint(tmp_path):
    trainer = slade.TeacherTrainer(MODEL)
    files = StageFiles(tmp_path)
    train_loop("teacher", trainer, files, 2, batches, steps_of(trainer), config(), None)
    trainer.save(tmp_path / "checkpoint.safetensors")  # as if killed before its removal
    for name in ("history.json.tmp-123", "final.safetensors.tmp-45"):
        (tmp_path / name).write_bytes(b"partial")
    (tmp_path / "notes.tmp").write_text("not ours")
    stage_files(slade.TeacherTrainer(MODEL), tmp_path, None)
    kept = ["final.json", "final.safetensors", "history.json", "notes.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == kept
    assert [row["step"] for row in json.loads((tmp_path / "history.json").read_text())] == [1, 2]
