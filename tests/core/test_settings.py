"""slade.settings: each setting declared once (one default, one check in the core) and shared
by the trainers, slade.FeatureBasis and the pipeline's config sections; the binding layer's
names."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import slade
from slade import _core
from slade.config import Config, preset
from slade.settings import (
    BasisConfig,
    ModelConfig,
    OptimizerConfig,
    RankingConfig,
    StudentObjectiveConfig,
    SwavConfig,
)

MODEL = ModelConfig("convnet", 1, 16)
GROUPS = [
    (ModelConfig, "model"),
    (OptimizerConfig, "optimizer"),
    (RankingConfig, "ranking"),
    (SwavConfig, "swav"),
    (BasisConfig, "basis"),
    (StudentObjectiveConfig, "student"),
]


@pytest.mark.parametrize("cls,group", GROUPS, ids=[g for _, g in GROUPS])
def test_every_default_is_the_cores(cls, group):
    """The dataclass defaults are the core's, and the core completes an empty mapping to
    them (one default per setting)."""
    defaults = _core.default_settings(group)
    assert cls().to_core() == defaults
    assert _core.check_settings(group, {}) == defaults
    assert cls.from_core(defaults) == cls()


def test_the_pipeline_sections_are_the_trainers_settings():
    config = Config()
    assert isinstance(config.model, ModelConfig) and config.model == ModelConfig()
    for section, cls in (("ssl", SwavConfig), ("teacher", RankingConfig),
                         ("student", StudentObjectiveConfig)):
        part = getattr(config, section)
        assert isinstance(part, cls) and isinstance(part.optimizer, OptimizerConfig)
        assert cls.from_core(part.to_core()) == cls(), section
    assert config.ssl.num_prototypes == SwavConfig().num_prototypes == 100
    assert dataclasses.astuple(ModelConfig()) == ("convnet", 1, 128)


def test_the_trainers_defaults_are_the_declarations():
    swav = slade.SwavTrainer(MODEL)
    assert swav.swav_config == SwavConfig() and swav.prototypes.shape == (100, 16)
    teacher = slade.TeacherTrainer()
    assert teacher.model_config == ModelConfig() and teacher.optim_config == OptimizerConfig()
    assert teacher.ranking_config == RankingConfig()
    assert slade.EmbeddingModel().config == ModelConfig()
    student = slade.StudentTrainer(MODEL, num_basis=3)
    assert student.student_config == StudentObjectiveConfig(num_basis=3)
    basis = slade.FeatureBasis(3, 4)
    assert basis._config() == BasisConfig().to_core()


def test_presets_keep_their_values():
    """The defaults moved to one place; the presets' effective values did not."""
    fashion, cub = preset("fashion-mnist-ssl"), preset("cub-nabirds")
    assert dataclasses.astuple(fashion.model) == ("convnet", 1, 128)
    assert dataclasses.astuple(cub.model) == ("resnet50", 3, 512)
    assert fashion.ssl.num_prototypes == 100 and cub.ssl.num_prototypes == 3000
    assert (fashion.student.t1, fashion.student.t2, fashion.student.num_basis) == ("mu+", "all", 128)


def test_the_pipeline_builds_trainers_with_its_sections_values():
    from slade.pipeline.student import _student_trainer
    from slade.pipeline.teacher import _teacher_trainer

    config = preset(
        "fashion-mnist-ssl",
        ["model.dim=16", "teacher.loss=multi_similarity", "teacher.miner=true",
         "teacher.alpha=3", "student.t1=mu-", "student.t2=0.2", "student.regularizer=local_ce",
         "student.optimizer.basis_lr=0.01"],
    )
    teacher = _teacher_trainer(config, None)
    assert teacher.ranking_config == RankingConfig(loss="multi_similarity", miner=True, alpha=3.0)
    student = _student_trainer(config, num_basis=5, k=7, model=None)
    expected = StudentObjectiveConfig.from_core(config.student.to_core())
    expected = dataclasses.replace(expected, num_pseudo_classes=7)
    assert student.student_config == expected
    assert student.optim_config.basis_lr == 0.01 and student.model_config.dim == 16


@pytest.mark.parametrize(
    "trainer_call,config_override,name",
    [
        (lambda: slade.TeacherTrainer(MODEL, OptimizerConfig(lr=-1.0)),
         "teacher.optimizer.lr=-1", "lr must be a non-negative number"),
        (lambda: slade.SwavTrainer(MODEL, num_prototypes=0),
         "ssl.num_prototypes=0", "num_prototypes must be a positive integer"),
        (lambda: slade.TeacherTrainer(MODEL, loss="npair"),
         "teacher.loss=npair", 'loss must be one of "contrastive", "multi_similarity"'),
        (lambda: slade.StudentTrainer(MODEL, num_basis=4, loss="npair"),
         "student.loss=npair", 'loss must be one of "contrastive", "multi_similarity"'),
        (lambda: slade.StudentTrainer(MODEL, num_basis=4, momentum=1.0),
         "student.momentum=1.0", "momentum must be in [0, 1)"),
        (lambda: slade.StudentTrainer(MODEL, num_basis=4, t2="median"),
         "student.t2=median", "t2 must be a number or one of"),
        (lambda: slade.TeacherTrainer(ModelConfig("vgg", 1, 16)),
         "model.backbone=vgg", "backbone must be one of"),
    ],
)
def test_one_check_for_trainers_and_configs(trainer_call, config_override, name):
    """A bad setting fails the trainer and the pipeline config with the core's one message,
    the config's naming the key."""
    with pytest.raises(slade.ConfigError) as from_trainer:
        trainer_call()
    with pytest.raises(slade.ConfigError) as from_config:
        preset("fashion-mnist-ssl", [config_override])
    assert name in str(from_trainer.value)
    section = config_override.split("=")[0].rsplit(".", 1)[0]
    assert f"{section}.{name}" in str(from_config.value)


def test_a_learning_rate_of_zero_is_accepted_everywhere():
    """Formerly the config rejected lr = 0 while the trainers took it (torch does too)."""
    config = preset("fashion-mnist-ssl", ["teacher.optimizer.lr=0", "student.optimizer.head_lr=0"])
    assert config.teacher.optimizer.lr == 0.0
    trainer = slade.TeacherTrainer(MODEL, config.teacher.optimizer)
    assert trainer.learning_rates == {"backbone": 0.0, "head": 0.0}


def test_settings_errors_name_the_setting_and_unknown_keys():
    with pytest.raises(slade.ConfigError, match=r"^optimizer\.lr: invalid type"):
        slade.TeacherTrainer(MODEL, {"lr": "fast"})
    with pytest.raises(slade.ConfigError, match=r"^lossx: unknown field `lossx`"):
        slade.TeacherTrainer(MODEL, lossx="contrastive")
    with pytest.raises(slade.ConfigError, match=r"^num_basis: invalid type"):
        slade.StudentTrainer(MODEL, num_basis="four")
    with pytest.raises(slade.ConfigError, match="num_basis must be set"):
        slade.StudentTrainer(MODEL, num_basis=None)
    assert slade.StudentTrainer(MODEL, num_basis=None, variant="pseudo_only").basis is None
    with pytest.raises(slade.ConfigError, match=r"^momentum: invalid type"):
        slade.FeatureBasis(4, 8, momentum="high")
    with pytest.raises(slade.ConfigError, match="precision must be one of"):
        preset("fashion-mnist-ssl", ["precision=fp8"])


def test_feature_basis_crosses_by_name():
    """State and settings reach the core as named mappings; a missing name is refused."""
    basis = slade.FeatureBasis(3, 4)
    state = basis._state()
    assert list(state) == ["weight", "pseudo_head", "mu_pos", "var_pos", "mu_neg", "var_neg",
                           "updates_pos", "updates_neg"]
    emb = torch.randn(5, 4)
    expected = torch.nn.functional.normalize(emb @ basis.weight.detach().T, dim=1)
    torch.testing.assert_close(basis.similarity(emb), expected @ expected.T)
    del state["mu_neg"]
    with pytest.raises((KeyError, TypeError), match="mu_neg"):
        _core.basis_similarity(state, basis._config(), emb)
    with pytest.raises(slade.ConfigError, match="unknown field `beta`"):
        _core.basis_similarity(basis._state(), {**basis._config(), "beta": 0.9}, emb)


def test_binding_names_are_private_and_name_one_thing():
    for public in ("SwavTrainer", "TeacherTrainer", "StudentTrainer", "EmbeddingModel",
                   "pseudo_label"):
        assert not hasattr(_core, public), public
    assert not hasattr(slade.cluster, "pseudo_label")
    x = torch.nn.functional.normalize(torch.randn(40, 4, generator=torch.Generator().manual_seed(0)))
    labels = slade.cluster.cluster_labels(x, 3, seed=1)
    assert torch.equal(labels, slade.kmeans(x, 3, seed=1).labels)
