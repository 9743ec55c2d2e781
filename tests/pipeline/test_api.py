"""The pipeline (slade.pipeline): end-to-end runs in tiny settings, resume, each step alone, and the
reproducible batch and augmentation streams it is built on."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score
from torchvision.transforms import functional as TF

import slade
from slade import PseudoLabels, _images

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


def tiny(name: str = "fashion-mnist-ssl", *extra: str) -> slade.Config:
    return slade.config.preset(name, TINY + list(extra))


@pytest.fixture(scope="module")
def fashion(fashion_mnist_root):
    return slade.load_data(tiny())


def stop_at(stage: str, step: int, error: BaseException):
    def callback(name, number, metrics):
        assert np.isfinite(metrics["loss"])
        if name == stage and number == step:
            raise error

    return callback


# --------------------------------------------------------------------------- end to end


@needs_fashion
def test_fashion_mnist_run_writes_results_checkpoints_and_plots(tmp_path, fashion):
    config = tiny()
    result = slade.run(config, data=fashion, out=tmp_path / "run")
    out = tmp_path / "run"
    for name in (
        "config.json",
        "results.json",
        "teacher/final.safetensors",
        "teacher/history.json",
        "pseudo_labels_round1/pseudo_labels.npy",
        "pseudo_labels_round1/pseudo_labels.json",
        "student_round1/final.safetensors",
        "student_round1/history.json",
        "plots/training_curves.png",
        "plots/retrieval_examples.png",
        "plots/pseudo_labels_round1_purity.png",
    ):
        assert (out / name).is_file(), name
    assert not (out / "teacher" / "checkpoint.safetensors").exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["teacher"] == result.teacher and saved["student"] == result.student
    assert slade.Config.from_dict(saved["config"]) == result.config
    for metrics in (result.teacher, result.student):
        assert {"map_at_r", "r_precision", "precision_at_1", "recall_at_1", "nmi"} <= set(metrics)
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    history = json.loads((out / "student_round1" / "history.json").read_text())
    assert [r["step"] for r in history] == list(range(1, 7))
    assert {"loss", "loss/rank_labeled", "pairs/positive", "pairs/negative"} <= set(history[-1])

    table = result.table()
    lines = table.splitlines()
    assert lines[0].split()[1:] == ["MAP@R", "RP", "P@1", "R@1", "NMI"]
    assert lines[1].split()[0] == "teacher" and lines[2].split()[0] == "student_round1"
    assert float(lines[1].split()[1]) == pytest.approx(100 * result.teacher["map_at_r"], abs=0.006)
    assert "purity" in lines[3]

    # The saved checkpoints are the trained models: reloaded from disk they score the same.
    student = slade.load_trainer(out / "student_round1" / "final.safetensors")
    assert isinstance(student, slade.StudentTrainer) and student.step_count == 6
    assert slade.evaluate(student, fashion, config=config) == result.student
    assert (
        slade.evaluate(out / "teacher" / "final.safetensors", fashion, config=config)
        == result.teacher
    )


@needs_fashion
def test_pseudo_label_quality_matches_scikit_learn(tmp_path):
    config = tiny("fashion-mnist-ssl", "data.shift=2")  # random shifts when training
    fashion = slade.load_data(config)
    teacher = slade.train_teacher(fashion, config)
    pseudo = slade.pseudo_label(teacher, fashion, config=config, out=tmp_path)
    assert isinstance(pseudo, PseudoLabels) and pseudo.labels.shape == (len(fashion.unlabeled),)
    hidden = fashion.hidden_labels.numpy()
    labels = pseudo.labels.numpy()
    assert pseudo.quality["nmi"] == pytest.approx(
        normalized_mutual_info_score(hidden, labels), abs=1e-9
    )
    majority = sum(np.bincount(hidden[labels == c]).max() for c in np.unique(labels))
    assert pseudo.quality["purity"] == pytest.approx(majority / len(labels))
    assert sum(pseudo.sizes) == len(labels) and pseudo.k == 6
    # The clustering is k-means of the teacher's normalised embeddings of the unlabeled images,
    # seen without training augmentation.
    images = torch.stack(
        [fashion.unlabeled.with_transform(fashion.eval_transform)[i][0] for i in range(len(labels))]
    )
    embeddings = teacher.embed(images)
    assert torch.equal(pseudo.labels, slade.pseudo_label(embeddings, 6, seed=config.seed))
    # pseudo_labels.sharded clusters them with slade.sharded_kmeans (another seeding).
    config.pseudo_labels.sharded = True
    sharded = slade.pseudo_label(teacher, fashion, config=config)
    unit = torch.nn.functional.normalize(embeddings, dim=1)
    assert torch.equal(sharded.labels, slade.sharded_kmeans(unit, 6, seed=config.seed).labels)
    config.pseudo_labels.sharded = False
    # Saved labels are read back instead of clustering again.
    again = slade.pseudo_label("not a model", fashion, config=config, out=tmp_path)
    assert torch.equal(again.labels, pseudo.labels) and again.quality == pseudo.quality


def test_omniglot_run_with_ssl_two_self_training_rounds_and_per_image_transforms(
    tmp_path, omniglot_root
):
    called = []
    config = tiny(
        "omniglot-ssl",
        f"data.root={omniglot_root}",
        "data.augment=transform",
        "ssl.enabled=true",
        "ssl.steps=2",
        "ssl.batch_size=16",
        "ssl.num_prototypes=10",
        "rounds=2",
        "teacher.steps=3",
        "student.steps=3",
        "pseudo_labels.k=20",
    )
    result = slade.run(config, out=tmp_path, callback=lambda s, n, m: called.append(s))
    assert len(result.rounds) == 2 and len(result.pseudo_labels) == 2
    # Round 2's teacher is round 1's student.
    assert result.rounds[1]["teacher"] == result.rounds[0]["student"]
    assert result.student == result.rounds[1]["student"]
    assert result.trainers["ssl"].step_count == 2
    assert isinstance(slade.load_trainer(tmp_path / "ssl" / "final.safetensors"), slade.SwavTrainer)
    for name in (
        "pseudo_labels_round2/pseudo_labels.npy",
        "student_round2/final.safetensors",
        "plots/pseudo_labels_round2_purity.png",
    ):
        assert (tmp_path / name).is_file(), name
    hidden = slade.load_data(config).hidden_labels  # characters of the (subsampled) pool
    assert result.pseudo_labels[0]["classes"] == len(set(hidden.tolist())) > 100

    # One stage id names a stage in callbacks, results.json, the table and the folders.
    trained = ["ssl", "teacher", "student_round1", "student_round2"]
    stages = ["ssl", "teacher", "pseudo_labels_round1", "student_round1"]
    stages += ["pseudo_labels_round2", "student_round2"]
    assert list(dict.fromkeys(called)) == trained
    assert list(result.trainers) == trained
    saved = json.loads((tmp_path / "results.json").read_text())
    assert list(saved["metrics"]) == list(result.metrics) == trained[1:]
    assert [key for key in saved["seconds"] if "/" not in key] == stages + ["plots"]
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert folders == sorted(stages + ["plots"])
    rows = [line.split()[0] for line in result.table().splitlines()[1:]]
    assert rows == trained[1:] + ["pseudo_labels_round1:", "pseudo_labels_round2:"]


# --------------------------------------------------------------------------- resume


@needs_fashion
def test_interrupted_runs_resume_to_the_same_results(tmp_path, fashion):
    config = tiny("fashion-mnist-ssl", "eval.plots=false")
    reference = slade.run(config, data=fashion, out=tmp_path / "reference")
    out = tmp_path / "interrupted"
    # Ctrl-C in the teacher (a checkpoint is written at the interrupt), then a crash in the
    # student after its step-4 checkpoint (steps 5.. are lost and redone).
    with pytest.raises(KeyboardInterrupt):
        slade.run(
            config, data=fashion, out=out, callback=stop_at("teacher", 3, KeyboardInterrupt())
        )
    assert (out / "teacher" / "checkpoint.safetensors").exists()
    assert slade.load_trainer(out / "teacher" / "checkpoint.safetensors").step_count == 3
    with pytest.raises(RuntimeError, match="power cut"):
        slade.run(
            config,
            data=fashion,
            out=out,
            callback=stop_at("student_round1", 5, RuntimeError("power cut")),
        )
    assert (out / "teacher" / "final.safetensors").exists()
    assert slade.load_trainer(out / "student_round1" / "checkpoint.safetensors").step_count == 4

    stages = []
    resumed = slade.run(
        config, data=fashion, out=out, callback=lambda s, n, m: stages.append((s, n))
    )
    # the teacher was not trained again
    assert stages == [("student_round1", 5), ("student_round1", 6)]
    assert resumed.teacher == reference.teacher
    assert resumed.student == reference.student
    assert resumed.pseudo_labels == reference.pseudo_labels
    for part in ("teacher", "student_round1"):
        assert json.loads((out / part / "history.json").read_text()) == json.loads(
            (tmp_path / "reference" / part / "history.json").read_text()
        )
    final = slade.load_trainer(out / "student_round1" / "final.safetensors")
    expected = slade.load_trainer(tmp_path / "reference" / "student_round1" / "final.safetensors")
    for (name, a), (_, b) in zip(final.state_dict().items(), expected.state_dict().items()):
        assert torch.equal(a, b), name


@needs_fashion
def test_an_output_folder_of_another_configuration_is_refused(tmp_path, fashion):
    config = tiny("fashion-mnist-ssl", "teacher.steps=2", "student.steps=2", "eval.plots=false")
    slade.run(config, data=fashion, out=tmp_path)
    changed = tiny("fashion-mnist-ssl", "teacher.steps=3", "student.steps=2", "eval.plots=false")
    with pytest.raises(slade.ConfigError, match="teacher.steps: 2 -> 3"):
        slade.run(changed, data=fashion, out=tmp_path)
    result = slade.run(changed, data=fashion, out=tmp_path, overwrite=True)
    assert slade.load_trainer(tmp_path / "teacher" / "final.safetensors").step_count == 3
    assert json.loads((tmp_path / "results.json").read_text())["teacher"] == result.teacher


# --------------------------------------------------------------------------- single steps


@needs_fashion
def test_ssl_weights_initialise_teacher_and_student(tmp_path, fashion):
    config = tiny(
        "fashion-mnist-ssl",
        "ssl.enabled=true",
        "ssl.steps=2",
        "ssl.batch_size=16",
        "ssl.num_prototypes=10",
        "teacher.steps=0",
        "student.steps=0",
        "student.init=ssl",
    )
    ssl = slade.train_ssl(fashion, config, out=tmp_path / "ssl")
    assert ssl.step_count == 2 and len(ssl.history) == 2
    teacher = slade.train_teacher(fashion, config, init=ssl)
    pseudo = torch.arange(len(fashion.unlabeled)) % 6
    student = slade.train_student(fashion, pseudo, config, init=ssl)
    fresh = slade.TeacherTrainer(config.model, seed=config.seed)
    ssl_state, fresh_state = ssl.state_dict(), fresh.state_dict()
    for name, value in teacher.state_dict().items():
        if name.startswith("embedding."):  # the head keeps the seeded initialisation
            assert torch.equal(value, fresh_state[name]), name
        else:
            assert torch.equal(value, ssl_state[name]), name
    student_state = student.state_dict()
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, student_state[name]), name
    # init="teacher" starts the student from the teacher's weights instead.
    trained = slade.train_teacher(fashion, tiny("fashion-mnist-ssl", "teacher.steps=2"))
    copied = slade.train_student(
        fashion,
        pseudo,
        tiny("fashion-mnist-ssl", "student.steps=0", "student.init=teacher"),
        teacher=trained,
    )
    copied_state = copied.state_dict()
    for name, value in trained.state_dict().items():
        assert torch.equal(value, copied_state[name]), name


@needs_fashion
def test_evaluate_equals_metrics_of_per_image_transformed_test_images(fashion):
    config = tiny()
    model = slade.EmbeddingModel(config.model, seed=4)
    test = fashion.test
    images = torch.stack([test[i][0] for i in range(len(test))])
    expected = slade.retrieval_metrics(model.embed(images), test.labels, nmi=True)
    assert slade.evaluate(model, fashion, config=config) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(slade.ConfigError, match="val_classes"):
        slade.evaluate(model, fashion, config=config, split="val")


@needs_fashion
def test_validation_split_and_subsets():
    config = tiny(
        "fashion-mnist-ssl", "data.val_classes=1", "data.evaluate_on=val", "data.max_labeled=900"
    )
    data = slade.load_data(config)
    assert len(data.labeled) == 900
    assert data.val is not None and len(data.val.labels.unique()) == 1
    assert (
        len(data.labeled.labels.unique()) == 4
        and len(data.unlabeled) == 400
        and len(data.test) == 300
    )


def test_paper_protocols_need_their_folders():
    with pytest.raises(slade.ConfigError, match="data.root"):
        slade.load_data(slade.config.preset("cub-nabirds"))
    with pytest.raises(slade.ConfigError, match="data.pool_root"):
        slade.load_data(slade.config.preset("cub-nabirds", ["data.root=/nowhere"]))
    with pytest.raises(slade.MissingFileError, match="images.txt"):
        slade.load_data(
            slade.config.preset("cub-nabirds", ["data.root=/nowhere", "data.pool_root=/x"])
        )


def test_pseudo_label_with_embeddings_is_the_kmeans_function():
    x = torch.nn.functional.normalize(
        torch.randn(60, 8, generator=torch.Generator().manual_seed(1)), dim=1
    )
    assert torch.equal(slade.pseudo_label(x, 4, seed=2), slade.cluster.cluster_labels(x, 4, seed=2))
    assert torch.equal(slade.pseudo_label(x, k=4), slade.cluster.cluster_labels(x, 4))
    with pytest.raises(slade.InvalidArgumentError, match="k is required"):
        slade.pseudo_label(x)
    with pytest.raises(TypeError, match="checkpoint path"):
        slade.evaluate(object(), data=None, config=tiny())


# --------------------------------------------------------------------------- batches


def test_batch_shifts_are_per_image_random_shifts_with_zero_fill():
    images = np.random.default_rng(0).integers(1, 256, size=(64, 9, 7), dtype=np.uint8)
    shifted = _images.shift_batch(images, 2, np.random.default_rng(5))
    found = set()
    for original, result in zip(images, shifted):
        padded = TF.pad(torch.from_numpy(original)[None], [2])[0].numpy()
        matches = [
            (top, left)
            for top in range(5)
            for left in range(5)
            if np.array_equal(padded[top : top + 9, left : left + 7], result)
        ]
        assert len(matches) == 1
        found.add(matches[0])
    assert len(found) > 12  # offsets spread over the 25 possibilities
    assert np.array_equal(_images.shift_batch(images, 2, np.random.default_rng(5)), shifted)
    assert np.array_equal(_images.shift_batch(images, 0, np.random.default_rng(5)), images)
    as_float = _images.to_float(shifted)
    expected = torch.stack([TF.to_tensor(image) for image in shifted])  # ToTensor of (H, W) uint8
    assert as_float.dtype == torch.float32 and torch.equal(as_float, expected)


def test_tensor_path_is_used_only_for_the_grayscale_presets():
    images = torch.zeros(20, 6, 6, dtype=torch.uint8)
    dataset = slade.data.ImageTensorDataset(images, torch.arange(20) % 4, list("abcd"))
    assert (
        _images.tensor_shift(
            dataset.with_transform(slade.data.train_transform("grayscale", shift=3))
        )
        == 3
    )
    assert _images.tensor_shift(dataset.with_transform(slade.data.eval_transform("grayscale"))) == 0
    custom = slade.data.train_transform("grayscale", size=8)
    assert _images.tensor_shift(dataset.with_transform(custom)) is None
    assert isinstance(
        _images.training_images(dataset.with_transform(custom), "auto", 0), _images.TransformImages
    )


@pytest.mark.parametrize("augment", ["auto", "transform"])
def test_step_batches_resumed_midway_repeat_the_uninterrupted_stream(augment):
    images = torch.randint(
        0, 256, (90, 10, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )
    labels = torch.arange(90) % 9
    dataset = slade.data.ImageTensorDataset(
        images,
        labels,
        [str(i) for i in range(9)],
        transform=slade.data.train_transform("grayscale", shift=2),
    )
    source = _images.training_images(dataset, augment, 0)

    def stream(start):
        sampler = slade.data.MPerClassSampler(labels, 4, 12, seed=7)
        return _images.StepBatches(source, sampler, labels, 11, start, torch.device("cpu"))

    full = [next(b) for b in [stream(0)] for _ in range(20)]
    resumed = stream(13)
    for step in range(13, 20):
        x, y = next(resumed)
        assert torch.equal(x, full[step][0]) and torch.equal(y, full[step][1])
    assert len({tuple(b[1].tolist()) for b in full}) > 10
    assert not all(torch.equal(full[0][0], b[0]) for b in full[1:])


def test_dropped_step_batches_stop_their_dataloader_workers_at_once():
    """Not at a later garbage collection, which closes the queues the workers' shutdown
    needs: each worker then lingers 5 s (a tiny fashion-mnist run lost 30 s in its plots)."""
    import multiprocessing

    labels = torch.arange(40) % 4
    dataset = slade.data.ImageTensorDataset(
        torch.zeros(40, 8, 8, dtype=torch.uint8),
        labels,
        [str(i) for i in range(4)],
        transform=slade.data.train_transform("grayscale", shift=1),
    )
    source = _images.training_images(dataset, "transform", num_workers=2)
    sampler = slade.data.MPerClassSampler(labels, 2, 8, seed=0)
    batches = _images.StepBatches(source, sampler, labels, 1, 0, torch.device("cpu"))
    next(batches)
    assert len(multiprocessing.active_children()) == 2
    began = time.perf_counter()
    del batches
    assert multiprocessing.active_children() == []
    assert time.perf_counter() - began < 3


def test_multi_crop_batches_have_the_crop_sizes_and_stay_in_range():
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    source = _images.TensorImages(images, 0, n_local=3)
    crops = source.batch([0, 1, 2, 3], seed=1)
    assert [tuple(c.shape) for c in crops] == [(4, 1, 28, 28)] * 2 + [(4, 1, 16, 16)] * 3
    assert all(float(c.min()) >= 0 and float(c.max()) <= 1 for c in crops)
    assert all(torch.equal(a, b) for a, b in zip(crops, source.batch([0, 1, 2, 3], seed=1)))


@pytest.mark.cuda
@needs_fashion
def test_a_tiny_run_on_cuda(tmp_path, fashion):
    config = tiny("fashion-mnist-ssl", "device=cuda", "eval.plots=false")
    result = slade.run(config, data=fashion, out=tmp_path)
    assert result.trainers["student_round1"].device.type == "cuda"
    assert all(0.0 <= v <= 1.0 for v in result.student.values())
    cpu = slade.evaluate(
        tmp_path / "student_round1" / "final.safetensors",
        fashion,
        config=tiny("fashion-mnist-ssl"),
    )
    assert cpu["map_at_r"] == pytest.approx(result.student["map_at_r"], abs=2e-3)
