"""Faults in real runs: bad image files in your own folders (the run stops naming the file,
or leaves the bad ones out and counts them), and training steps whose loss goes NaN or Inf
(the run stops naming the stage and step with the last good checkpoint intact, or skips and
counts them)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import slade
from data_layouts import break_folders, write_folders, write_image
from slade.cli import main
from slade.errors import NonFiniteError, SladeWarning

needs_fashion = pytest.mark.usefixtures("fashion_mnist_root")

TINY = [
    "teacher.steps=6",
    "student.steps=6",
    "pseudo_labels.k=6",
    "data.max_unlabeled=400",
    "data.max_test=300",
    "checkpoint_every=1",
    "progress=false",
    "eval.plots=false",
]

#: `slade run` on a folders layout of a few images, as tests/pipeline/test_cli.py runs it.
FOLDERS_RUN = [
    "run",
    "--preset",
    "fashion-mnist-ssl",
    "--layout",
    "folders",
    "--no-progress",
    "teacher.steps=3",
    "student.steps=3",
    "teacher.batch_size=4",
    "teacher.m=2",
    "student.labeled_batch_size=4",
    "student.labeled_m=2",
    "student.unlabeled_batch_size=4",
    "student.unlabeled_m=2",
    "pseudo_labels.k=2",
    "eval.recall_at=1,2",
    "eval.plots=false",
]


def folders_run(root, out, *extra: str) -> list[str]:
    return FOLDERS_RUN + ["--data", str(root), "--out", str(out), *extra]


# --------------------------------------------------------------------------- bad files


def test_bad_files_stop_the_run_or_are_left_out_and_counted_in_results_json(capsys, tmp_path):
    root = tmp_path / "mine"
    broken = break_folders(root)
    for n in range(2):  # the pool keeps enough images for its pseudo classes
        write_image(root / "unlabeled" / f"more{n}.png", 100 + n)
    out = tmp_path / "run"
    assert main(folders_run(root, out)) == 1
    error = capsys.readouterr().err
    assert str(broken["empty_folder"]) in error and "skip_bad_files" in error
    with pytest.warns(SladeWarning, match="left out 3 unreadable image file"):
        assert main(folders_run(root, out, "data.skip_bad_files=true")) == 0
    data = json.loads((out / "results.json").read_text())["data"]
    assert (data["skipped"]["files"], data["skipped"]["folders"]) == (3, 1)
    assert {entry["path"] for entry in data["skipped"]["entries"]} == {
        str(path) for path in broken.values()
    }
    # what is left of the layout write_folders wrote (cat 3, dog 2, emu 2; fox 2, gnu 3)
    assert data["labeled"] == {"images": 7, "classes": 3}
    assert data["test"] == {"images": 4, "classes": 2}
    assert data["unlabeled"] == {"images": 5, "classes": None}


def test_a_bad_image_read_in_a_dataloader_worker_stops_the_run_naming_it(capsys, tmp_path):
    write_folders(tmp_path / "mine")
    bad = tmp_path / "mine" / "test" / "fox" / "0.png"
    bad.write_text("a caption, not a photograph")
    assert main(folders_run(tmp_path / "mine", tmp_path / "run", "data.num_workers=1")) == 1
    error = capsys.readouterr().err
    assert f"cannot decode the image {bad}" in error and "DataLoader worker" in error


# --------------------------------------------------------------------------- non-finite steps


def finite(trainer) -> bool:
    return all(torch.isfinite(t).all() for t in trainer.state_dict().values())


@needs_fashion
@pytest.mark.parametrize("stage", ["teacher", "student_round1"])
def test_a_nan_loss_stops_the_run_naming_stage_and_step_and_the_last_checkpoint_stays(
    tmp_path, stage
):
    # An absurd learning rate: step 1 throws the weights far away, step 2's loss is NaN.
    section = stage.split("_")[0]
    config = slade.config.preset("fashion-mnist-ssl", TINY + [f"{section}.optimizer.lr=1e30"])
    checkpoint = tmp_path / stage / "checkpoint.safetensors"
    taken: list = []
    for attempt in range(2):  # the same command again resumes at step 1 and meets step 2
        taken.clear()
        with pytest.raises(NonFiniteError) as err:
            slade.run(config, out=tmp_path, callback=lambda s, n, m: taken.append((s, n)))
        message = str(err.value)
        assert message.startswith(f"{stage}, step 2: ") and "NaN" in message
        assert f"{checkpoint} (step 1), is intact" in message
        assert [n for s, n in taken if s == stage] == ([1] if attempt == 0 else [])
        saved = slade.load_trainer(checkpoint)
        assert saved.step_count == 1 and finite(saved)
        history = json.loads((tmp_path / stage / "history.json").read_text())
        assert [row["step"] for row in history] == [1]
    assert not (tmp_path / stage / "final.safetensors").exists()


class Poisoned:
    """A training transform that turns one image into NaN, as a transform dividing by the
    spread of a blank image would, and notes when it did."""

    def __init__(self, transform, image: np.ndarray) -> None:
        self.transform, self.image, self.hit = transform, image, False

    def __call__(self, image):
        out = self.transform(image)
        if np.array_equal(np.asarray(image), self.image):
            self.hit = True
            return out * float("nan")
        return out


def poisoned_data(config: slade.Config):
    data = slade.load_data(config)
    poison = Poisoned(data.train_transform, data.labeled.images[3].numpy())
    data.labeled = data.labeled.with_transform(poison)
    return data, poison


def steps_with_poison(poison: Poisoned, steps: dict):
    """A callback recording, per stage, the steps whose batch held the poisoned image."""

    def callback(stage, number, metrics):
        if poison.hit:
            steps.setdefault(stage, []).append(number)
        poison.hit = False

    return callback


PER_IMAGE = TINY + ["data.augment=transform", "data.max_labeled=100"]


@needs_fashion
def test_a_batch_of_nan_images_stops_the_run_at_its_step(tmp_path):
    config = slade.config.preset("fashion-mnist-ssl", PER_IMAGE)
    data, poison = poisoned_data(config)
    taken = []

    def callback(stage, number, metrics):
        taken.append(number)
        poison.hit = False

    with pytest.raises(NonFiniteError, match="images contains") as err:
        slade.run(config, data=data, out=tmp_path, callback=callback)
    assert poison.hit  # the image came in the step that failed, after len(taken) good ones
    assert str(err.value).startswith(f"teacher, step {len(taken) + 1}: ")


def _not_json(constant: str) -> None:
    raise AssertionError(f"history.json holds {constant}, which strict JSON parsers refuse")


@needs_fashion
def test_skipped_steps_are_counted_and_leave_the_weights_finite(tmp_path):
    sections = ("teacher", "student")
    skip = [f"{s}.optimizer.nonfinite=skip" for s in sections]
    config = slade.config.preset("fashion-mnist-ssl", PER_IMAGE + skip)
    data, poison = poisoned_data(config)
    poisoned: dict = {}
    with pytest.warns(SladeWarning) as caught:
        result = slade.run(
            config, data=data, out=tmp_path, callback=steps_with_poison(poison, poisoned)
        )
    for stage in ("teacher", "student_round1"):
        history = json.loads(
            (tmp_path / stage / "history.json").read_text(), parse_constant=_not_json
        )
        skipped = [row["step"] for row in history if row["skipped"] == 1]
        assert skipped == poisoned[stage] and 0 < len(skipped) < len(history)
        assert all((row["loss"] is None) == (row["skipped"] == 1) for row in history)
        counted = f"{stage}: {len(skipped)} of {len(history)} steps skipped"
        assert any(counted in str(w.message) for w in caught)
        assert finite(slade.load_trainer(tmp_path / stage / "final.safetensors"))
    assert all(np.isfinite(v) for v in result.student.values())
