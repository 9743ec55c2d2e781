"""A run's log (config.log): TensorBoard events read back with TensorBoard's own reader, the
CSV histories with the csv module, and the calls a Weights & Biases run receives, each
against the run's history.json and results.json."""

from __future__ import annotations

import csv
import io
import json
import sys
import types

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import slade

needs_fashion = pytest.mark.usefixtures("fashion_mnist_root")

TINY = [
    "teacher.steps=6",
    "student.steps=6",
    "pseudo_labels.k=6",
    "data.max_unlabeled=400",
    "data.max_test=300",
    "checkpoint_every=2",
    "progress=false",
    "eval.examples=2",
    "eval.top_k=4",
]
TRAINED = ("teacher", "student_round1")


def tiny(*extra: str) -> slade.Config:
    return slade.config.preset("fashion-mnist-ssl", TINY + list(extra))


class FakeWandb(types.ModuleType):
    """A stand-in for the wandb package that records the calls a run makes."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.init_arguments: dict = {}
        self.logged: list[dict] = []
        self.metrics: list[tuple[str, str | None]] = []
        self.finished = False
        owner = self

        class Image:
            def __init__(self, data):
                self.data = data

        class Run:
            def define_metric(self, name, step_metric=None):
                owner.metrics.append((name, step_metric))

            def log(self, data):
                owner.logged.append(dict(data))

            def finish(self):
                owner.finished = True

        self.Image = Image
        self._run = Run()

    def init(self, **arguments):
        self.init_arguments = arguments
        return self._run


def events(folder) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def points(accumulator: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def as_float32(value: float) -> float:
    """What a TensorBoard scalar (a float32) holds of ``value``."""
    return float(np.float32(value))


def history(out, stage: str) -> list[dict]:
    return json.loads((out / stage / "history.json").read_text())


def assert_history_logged(accumulator: EventAccumulator, out, stage: str) -> None:
    """Every metric of the stage's history.json, one point per row, step for step."""
    rows = history(out, stage)
    for key in {key for row in rows for key in row} - {"step"}:
        expected = [(row["step"], as_float32(row[key])) for row in rows if key in row]
        assert points(accumulator, f"{stage}/{key}") == expected, key


@pytest.fixture(scope="module")
def fashion(fashion_mnist_root):
    return slade.load_data(tiny())


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, fashion):
    """A run with every log on: TensorBoard (in out/tensorboard), CSV and a fake wandb."""
    out = tmp_path_factory.mktemp("logged") / "run"
    wandb = FakeWandb()
    config = tiny(
        "log.tensorboard=tensorboard",
        "log.csv=true",
        "log.wandb=true",
        "log.wandb_project=slade-tests",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "wandb", wandb)
        slade.run(config, data=fashion, out=out)
    return out, events(out / "tensorboard"), wandb


# --------------------------------------------------------------------------- tensorboard


def test_scalars_are_the_history_rows_step_for_step_learning_rates_included(logged_run):
    out, accumulator, _ = logged_run
    scalars = set(accumulator.Tags()["scalars"])
    for stage in TRAINED:
        assert_history_logged(accumulator, out, stage)
        training = {t for t in scalars if t.startswith(f"{stage}/")}
        training -= {t for t in training if t.split("/")[1] in ("eval", "diagnostics")}
        keys = {key for row in history(out, stage) for key in row} - {"step"}
        assert training == {f"{stage}/{key}" for key in keys}
    assert {"teacher/lr/backbone", "student_round1/lr/basis", "student_round1/loss/sd"} <= scalars


def test_eval_metrics_pseudo_label_quality_and_diagnostics_equal_results_json(logged_run):
    out, accumulator, _ = logged_run
    results = json.loads((out / "results.json").read_text())
    for stage in TRAINED:
        for key, value in results["metrics"][stage].items():
            assert points(accumulator, f"{stage}/eval/{key}") == [(6, as_float32(value))], key
    summary = results["pseudo_labels"][0]
    assert {"nmi", "purity", "clusters", "classes"} <= set(summary)
    for key, value in summary.items():
        assert points(accumulator, f"pseudo_labels_round1/{key}") == [(0, as_float32(value))]
    diagnostics = results["rounds"][0]["diagnostics"]
    logged = {
        **{f"pairs/{k}": v for k, v in diagnostics["pairs"].items()},
        **{f"gradient_norms/{k}": v for k, v in diagnostics["gradient_norms"].items()},
        **{f"thresholds/t{i}": v for i, v in enumerate(diagnostics["thresholds"], 1)},
    }
    assert len(logged) > 10
    for key, value in logged.items():
        found = points(accumulator, f"student_round1/diagnostics/{key}")
        assert len(found) == 1 and found[0][0] == 6, key
        assert found[0][1] == as_float32(value) or (np.isnan(value) and np.isnan(found[0][1]))


def test_the_retrieval_examples_figure_is_an_image_of_the_plot(logged_run):
    out, accumulator, _ = logged_run
    (logged,) = accumulator.Images("retrieval_examples")
    with Image.open(io.BytesIO(logged.encoded_image_string)) as image:
        pixels = np.asarray(image.convert("RGB"))
    with Image.open(out / "plots" / "retrieval_examples.png") as plot:
        expected = np.asarray(plot.convert("RGB"))
    assert (logged.width, logged.height) == (expected.shape[1], expected.shape[0])
    assert np.array_equal(pixels, expected)


@needs_fashion
def test_a_resumed_run_logs_each_step_once_and_fills_in_steps_its_events_lost(tmp_path, fashion):
    def stop_at(stage, step, error):
        def callback(name, number, metrics):
            if (name, number) == (stage, step):
                raise error

        return callback

    out, folder = tmp_path / "run", tmp_path / "run" / "tensorboard"
    config = tiny("log.tensorboard=tensorboard", "eval.plots=false")
    with pytest.raises(KeyboardInterrupt):
        slade.run(
            config, data=fashion, out=out, callback=stop_at("teacher", 3, KeyboardInterrupt())
        )
    # A kill before the writer flushed: the teacher's steps 1-3 never reached the files.
    for path in folder.glob("events.out.tfevents.*"):
        path.unlink()
    # Step 5 of the student is logged, then the run fails; the resume repeats it (from the
    # checkpoint at step 4), and evaluates the finished teacher again (read from its cache).
    with pytest.raises(RuntimeError, match="power cut"):
        slade.run(
            config,
            data=fashion,
            out=out,
            callback=stop_at("student_round1", 5, RuntimeError("power cut")),
        )
    slade.run(config, data=fashion, out=out)
    accumulator = events(folder)
    for stage in TRAINED:
        assert_history_logged(accumulator, out, stage)
        assert [step for step, _ in points(accumulator, f"{stage}/loss")] == [1, 2, 3, 4, 5, 6]
        assert len(points(accumulator, f"{stage}/eval/map_at_r")) == 1
    assert len(points(accumulator, "pseudo_labels_round1/k")) == 1


@needs_fashion
def test_a_folder_holding_another_runs_events_is_refused(tmp_path, fashion):
    folder = tmp_path / "events"
    quick = ["teacher.steps=1", "student.steps=1", "eval.plots=false", f"log.tensorboard={folder}"]
    slade.run(tiny(*quick), data=fashion, out=tmp_path / "a")
    other = tiny(*quick, "seed=1")
    with pytest.raises(slade.ConfigError, match=r"log\.tensorboard: .*another configuration.*seed"):
        slade.run(other, data=fashion, out=tmp_path / "b")
    assert not (tmp_path / "b").exists()  # refused before anything was written
    slade.run(other, data=fashion, out=tmp_path / "b", overwrite=True)
    assert points(events(folder), "teacher/loss")[0][0] == 1
    assert len(points(events(folder), "teacher/loss")) == 1
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "events.out.tfevents.1.host").write_bytes(b"")
    with pytest.raises(slade.ConfigError, match="no slade run wrote"):
        slade.run(tiny(*quick, f"log.tensorboard={stranger}"), data=fashion, out=tmp_path / "c")


def test_missing_packages_are_named_by_their_setting_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(slade.ConfigError, match=r"log\.wandb=true needs the wandb package"):
        slade.run(tiny("log.wandb=true"), data=object(), out=tmp_path)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(slade.ConfigError, match=r"log\.tensorboard needs the tensorboard"):
        slade.run(tiny("log.tensorboard=tb"), data=object(), out=tmp_path)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- csv, wandb


def test_history_csv_holds_the_rows_of_history_json(logged_run):
    out, _, _ = logged_run
    for stage in TRAINED:
        rows = history(out, stage)
        with open(out / stage / "history.csv", newline="") as file:
            reader = csv.DictReader(file)
            assert reader.fieldnames[0] == "step"
            assert set(reader.fieldnames) == {key for row in rows for key in row}
            read = [
                {
                    key: float(cell) if key != "step" else int(cell)
                    for key, cell in r.items()
                    if cell
                }
                for r in reader
            ]
        assert read == rows


def test_wandb_gets_each_stage_against_its_own_step(logged_run):
    out, _, wandb = logged_run
    assert wandb.init_arguments["project"] == "slade-tests"
    assert wandb.init_arguments["config"] == json.loads((out / "config.json").read_text())
    for stage in TRAINED:
        assert (f"{stage}/*", f"{stage}/step") in wandb.metrics
        by_step: dict[int, dict] = {}
        for data in wandb.logged:
            if f"{stage}/step" in data:
                by_step.setdefault(data[f"{stage}/step"], {}).update(data)
        logged = [
            {
                "step": step,
                **{
                    k.split("/", 1)[1]: v
                    for k, v in values.items()
                    if k != f"{stage}/step" and k.split("/")[1] not in ("eval", "diagnostics")
                },
            }
            for step, values in sorted(by_step.items())
        ]
        assert logged == history(out, stage)
        results = json.loads((out / "results.json").read_text())
        assert {k: by_step[6][f"{stage}/eval/{k}"] for k in results["metrics"][stage]} == results[
            "metrics"
        ][stage]
    (image,) = [data["retrieval_examples"] for data in wandb.logged if "retrieval_examples" in data]
    with Image.open(out / "plots" / "retrieval_examples.png") as plot:
        assert np.array_equal(image.data, np.asarray(plot.convert("RGB")))
    assert wandb.finished
