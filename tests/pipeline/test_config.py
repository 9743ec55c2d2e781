"""slade.config: presets, key=value overrides, validation and round trips."""

from __future__ import annotations

import dataclasses
import json

import pytest

import slade
from slade.config import Config, parse_overrides, preset, preset_names


def test_every_preset_builds_validates_and_round_trips_through_json():
    assert preset_names() == [
        "fashion-mnist-ssl",
        "omniglot-ssl",
        "cub-nabirds",
        "cars-compcars",
        "inshop-fashion200k",
    ]
    for name in preset_names():
        config = preset(name)
        assert config.preset == name and config.data.protocol == name
        again = Config.from_dict(json.loads(json.dumps(config.to_dict())))
        assert again == config


def test_small_presets_hold_the_start_values():
    fashion, omniglot = preset("fashion-mnist-ssl"), preset("omniglot-ssl")
    for config, steps, k, shift in ((fashion, 400, 50, 0), (omniglot, 600, 250, 2)):
        assert dataclasses.astuple(config.model) == ("convnet", 1, 128)
        assert config.teacher.steps == config.student.steps == steps
        assert (config.teacher.batch_size, config.teacher.m) == (64, 16)
        assert config.pseudo_labels.k == k
        assert config.data.shift == shift
        assert (config.student.labeled_batch_size, config.student.unlabeled_batch_size) == (32, 32)
        assert config.student.variant == "basis_mining"
        assert config.student.lambda1 == config.student.lambda2 == 1.0
        for section in (config.teacher, config.student):
            assert section.loss == "contrastive"
            assert (section.optimizer.name, section.optimizer.lr) == ("adam", 1e-3)
        assert not config.ssl.enabled and config.rounds == 1


def test_paper_presets_use_the_published_network_and_clusters():
    cub = preset("cub-nabirds")
    assert (cub.model.backbone, cub.model.dim) == ("resnet50", 512)
    assert cub.ssl.enabled and cub.pseudo_labels.k == 400


def test_overrides_convert_strings_to_each_field_type():
    config = preset(
        "fashion-mnist-ssl",
        [
            "teacher.steps=12",
            "teacher.optimizer.lr=3e-4",
            "student.optimizer.basis_lr=1e-2",
            "student.miner=true",
            "student.t1=0.25",
            "student.t2=mu-",
            "data.max_unlabeled=none",
            "data.root=/some/where",
            "eval.recall_at=1,5",
            'data.protocol_options={"style": "grayscale"}',
            "seed=3",
        ],
    )
    assert config.teacher.steps == 12
    assert config.teacher.optimizer.lr == 3e-4
    assert config.student.optimizer.basis_lr == 1e-2
    assert config.student.miner is True
    assert config.student.t1 == 0.25 and config.student.t2 == "mu-"
    assert config.data.max_unlabeled is None
    assert config.data.root == "/some/where"
    assert config.eval.recall_at == (1, 5)
    assert config.data.protocol_options == {"style": "grayscale"}
    assert config.seed == 3
    # A mapping applies typed values as they are.
    config.override({"rounds": 2, "student.lambda2": 0.5})
    assert config.rounds == 2 and config.student.lambda2 == 0.5


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("teacher.stepz=3", "teacher.stepz"),
        ("nosuch=1", "nosuch"),
        ("teacher.optimizer.nosuch=1", "teacher.optimizer.nosuch"),
        ("teacher.steps=abc", "teacher.steps"),
        ("teacher.steps=1.5", "teacher.steps"),
        ("student.miner=maybe", "student.miner"),
        ("teacher.optimizer.lr=fast", "teacher.optimizer.lr"),
        ("seed=none", "seed"),
        ("teacher=3", "teacher"),
        ("seed", "key=value"),
        ("=3", "key=value"),
        ("student.variant=everything", "student.variant"),
        ("teacher.batch_size=60", "teacher.batch_size"),
        ("pseudo_labels.k=0", "pseudo_labels.k"),
        ("student.t1=high", "student.t1"),
        ("data.protocol=mnist", "data.protocol"),
        ("device=tpu", "device"),
        ("data.val_in_pool=0.5", "data.val_in_pool"),
        ("data.val_in_pool=1.0", "data.val_in_pool"),
        ("data.val_groups=-1", "data.val_groups"),
        ("student.sd_statistics=running", "student.sd_statistics"),
        ("student.mining=best", "student.mining"),
        ("log.tensorbord=runs/tb", "log.tensorbord"),
        ("log.tensorboard=", "log.tensorboard"),
        ("log.csv=sometimes", "log.csv"),
        ("log.wandb_project=mine", "log.wandb_project"),
    ],
)
def test_bad_overrides_raise_config_errors_naming_the_key(override, pattern):
    with pytest.raises(slade.ConfigError, match=pattern.replace(".", r"\.")) as caught:
        preset("fashion-mnist-ssl", [override])
    assert isinstance(caught.value, ValueError)


def test_research_bounds_and_validation_groups_are_checked_together():
    with pytest.raises(slade.ConfigError, match="student.mining"):
        preset("fashion-mnist-ssl", ["student.mining=oracle", "student.variant=basis"])
    with pytest.raises(slade.ConfigError, match="data.val_groups"):
        preset("omniglot-ssl", ["data.val_groups=1", "data.val_classes=5"])
    config = preset(
        "omniglot-ssl", ["data.val_groups=1", "data.val_in_pool=0.5", "data.evaluate_on=val"]
    )
    assert config.data.val_groups == 1
    with pytest.raises(slade.ConfigError, match="data.val_groups.*no class groups"):
        slade.load_data(preset("fashion-mnist-ssl", ["data.val_groups=1"]))


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(slade.ConfigError, match="fashion-mnist-ssl"):
        preset("mnist")


def test_from_dict_rejects_unknown_keys_and_keeps_defaults_for_missing_ones():
    config = Config.from_dict({"teacher": {"steps": 7}, "seed": 1})
    assert config.teacher.steps == 7 and config.seed == 1
    assert config.student == Config().student
    with pytest.raises(slade.ConfigError, match="teacher.nope"):
        Config.from_dict({"teacher": {"nope": 1}})
    with pytest.raises(slade.ConfigError, match="teacher"):
        Config.from_dict({"teacher": 3})


def test_parse_overrides_keeps_everything_after_the_first_equals_sign():
    assert parse_overrides(["data.root=/a=b"]) == [("data.root", "/a=b")]
    assert parse_overrides(None) == []


def test_semantic_dict_ignores_where_and_how_visibly_a_run_happens():
    a = preset("fashion-mnist-ssl")
    b = preset(
        "fashion-mnist-ssl",
        ["out=elsewhere", "progress=false", "device=cuda", "data.root=/x", "log.tensorboard=tb"],
    )
    assert a.semantic_dict() == b.semantic_dict()
    c = preset("fashion-mnist-ssl", ["teacher.steps=5"])
    assert a.semantic_dict() != c.semantic_dict()


def test_a_cosine_schedule_without_total_steps_spans_its_stage():
    from slade.config import stage_optimizer

    config = preset("cub-nabirds", ["teacher.steps=123"])
    assert config.teacher.optimizer.total_steps is None
    assert stage_optimizer(config.teacher).total_steps == 123
    assert stage_optimizer(config.ssl).total_steps == config.ssl.steps
    assert config.teacher.optimizer.total_steps is None  # the config itself is left alone
    fixed = preset(
        "fashion-mnist-ssl",
        ["teacher.optimizer.schedule=cosine", "teacher.optimizer.total_steps=50"],
    )
    assert stage_optimizer(fixed.teacher).total_steps == 50
