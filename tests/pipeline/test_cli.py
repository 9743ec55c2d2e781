"""The `slade` command: run, evaluate, presets, and its error messages."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import pytest

import slade
from data_layouts import write_folders
from slade.cli import main

needs_fashion = pytest.mark.usefixtures("fashion_mnist_root")

TINY = [
    "teacher.steps=3",
    "student.steps=3",
    "pseudo_labels.k=4",
    "data.max_unlabeled=200",
    "data.max_test=200",
    "eval.examples=1",
]


def test_presets_lists_every_preset_and_layout_also_through_python_dash_m():
    done = subprocess.run(
        [sys.executable, "-m", "slade", "presets"], capture_output=True, text=True, check=True
    )
    presets, layouts = done.stdout.split("\n\n")
    assert [line.split()[0] for line in presets.splitlines()] == slade.config.preset_names()
    header, *lines = layouts.splitlines()
    assert "--layout" in header
    names = [line.split()[0] for line in lines if not line.startswith(" ")]
    assert names == list(slade.data.PROTOCOLS)
    folders = layouts[layouts.index("folders") :]
    assert "ROOT/labeled/<class>/*, ROOT/unlabeled/**/*, ROOT/test/<class>/*" in folders
    assert "--data: the folder holding labeled/, unlabeled/ and test/" in folders


def test_the_console_script_points_at_main():
    scripts = {e.name: e.value for e in metadata.entry_points(group="console_scripts")}
    assert scripts.get("slade") == "slade.cli:main"


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (
            ["run", "--preset", "mnist"],
            "unknown preset 'mnist'; available presets: fashion-mnist-ssl",
        ),
        (
            ["run", "--preset", "fashion-mnist-ssl", "teacher.stepz=3"],
            "unknown config key 'teacher.stepz'",
        ),
        (
            ["run", "--preset", "fashion-mnist-ssl", "teacher.steps=many"],
            "teacher.steps: expected int, got 'many'",
        ),
        (
            ["run", "--preset", "fashion-mnist-ssl", "student.variant=all"],
            "student.variant must be one of",
        ),
        (["run", "--preset", "fashion-mnist-ssl", "teacher.steps"], "key=value"),
        (["run", "--preset", "cub-nabirds"], "data.root is required"),
        (
            ["run", "--preset", "fashion-mnist-ssl", "--layout", "fodlers"],
            "--layout: unknown layout 'fodlers'; expected one of fashion-mnist-ssl, omniglot-ssl, "
            "folders",
        ),
        (
            ["run", "--preset", "omniglot-ssl", "--layout", "folders"],
            "data.root is required by this protocol: the folder holding labeled/, unlabeled/ and "
            "test/ (e.g. --data PATH)",
        ),
    ],
)
def test_configuration_errors_exit_2_with_a_message_naming_the_problem(
    argv, pattern, capsys, tmp_path
):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slade: error: ") and pattern in err


def test_missing_data_exits_1_naming_the_file(capsys, tmp_path):
    assert (
        main(
            [
                "run",
                "--preset",
                "omniglot-ssl",
                "--data",
                str(tmp_path),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 1
    )
    assert "images_background_small1.zip" in capsys.readouterr().err
    assert (
        main(
            [
                "run",
                "--preset",
                "fashion-mnist-ssl",
                "--data",
                str(tmp_path),
                "--out",
                str(tmp_path / "f"),
            ]
        )
        == 1
    )
    assert "train-images-idx3-ubyte" in capsys.readouterr().err
    assert not (tmp_path / "f" / "config.json").exists()  # nothing written before the data loads
    assert main(["evaluate", str(tmp_path / "none.safetensors")]) == 1
    assert "none.safetensors" in capsys.readouterr().err


def test_run_with_layout_folders_trains_on_your_own_images(capsys, tmp_path):
    write_folders(tmp_path / "mine", size=(40, 30))
    out = tmp_path / "run"
    small = [
        "teacher.batch_size=4",
        "teacher.m=2",
        "student.labeled_batch_size=4",
        "student.labeled_m=2",
        "student.unlabeled_batch_size=4",
        "student.unlabeled_m=2",
        "pseudo_labels.k=2",
        "eval.recall_at=1,2",
    ]
    argv = ["run", "--preset", "fashion-mnist-ssl", "--layout", "folders"]
    argv += ["--data", str(tmp_path / "mine"), "--out", str(out), "--no-progress"]
    assert main(argv + TINY[:2] + small + TINY[-1:]) == 0
    assert "student_round1" in capsys.readouterr().out
    saved = slade.Config.from_dict(json.loads((out / "config.json").read_text()))
    assert saved.data.protocol == "folders" and saved.data.root == str(tmp_path / "mine")
    data = slade.load_data(saved)  # what the run trained on: grayscale, the preset's 28 px
    assert tuple(data.labeled[0][0].shape) == (1, 28, 28) and len(data.unlabeled) == 4
    assert slade.load_trainer(out / "student_round1" / "final.safetensors").step_count == 3


def test_tensorboard_and_csv_options_set_the_log_section(monkeypatch, tmp_path, capsys):
    started = []

    class Finished:
        def table(self):
            return "table"

    def run(config, **options):
        started.append(config)
        return Finished()

    monkeypatch.setattr(slade.pipeline, "run", run)
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--preset", "fashion-mnist-ssl", "--out", "o", "--tensorboard", "events"]
    assert main(argv + ["--csv"]) == 0
    # DIR is relative to the current folder, as every path on the command line
    assert started[0].log.tensorboard == str(tmp_path / "events") and started[0].log.csv
    assert main(argv[:5]) == 0
    assert started[1].log.tensorboard is None and not started[1].log.csv


def test_usage_errors_exit_2():
    with pytest.raises(SystemExit) as caught:
        main(["run"])
    assert caught.value.code == 2


@needs_fashion
def test_run_then_evaluate_the_student_checkpoint(capsys, tmp_path):
    out = tmp_path / "run"
    assert (
        main(["run", "--preset", "fashion-mnist-ssl", "--out", str(out), "--no-progress", *TINY])
        == 0
    )
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert {"teacher", "student", "config"} <= set(results)
    assert results["config"]["teacher"]["steps"] == 3 and results["config"]["out"] == str(out)
    rows = {line.split()[0]: line.split()[1:] for line in printed.splitlines()[1:3]}
    assert float(rows["student_round1"][0]) == pytest.approx(
        100 * results["student"]["map_at_r"], abs=0.006
    )
    assert (out / "plots" / "training_curves.png").is_file()

    checkpoint = out / "student_round1" / "final.safetensors"
    assert main(["evaluate", str(checkpoint), "--json"]) == 0  # data from the run's config.json
    assert json.loads(capsys.readouterr().out) == results["student"]
    assert (
        main(["evaluate", str(checkpoint), "--preset", "fashion-mnist-ssl", "data.max_test=200"])
        == 0
    )
    assert "map_at_r" in capsys.readouterr().out

    # The same command again finds the finished run and only reports it.
    assert (
        main(["run", "--preset", "fashion-mnist-ssl", "--out", str(out), "--no-progress", *TINY])
        == 0
    )
    assert capsys.readouterr().out == printed
    assert (
        main(
            ["run", "--preset", "fashion-mnist-ssl", "--out", str(out), "--no-progress", *TINY[1:]]
        )
        == 2
    )
    assert "another configuration" in capsys.readouterr().err
