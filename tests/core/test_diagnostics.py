"""slade.diagnostics against scikit-learn's ROC-AUC and against a plain loop over the pairs
of each batch; slade.diagnose on a trained student and the run's results.json and plot."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import slade
from slade import diagnostics


def test_auc_equals_sklearn_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 7, (500,), generator=g).float()  # many ties
    positive = torch.rand(500, generator=g) < 0.3 + 0.05 * scores
    assert diagnostics.auc(scores, positive) == pytest.approx(
        roc_auc_score(positive.numpy(), scores.numpy()), abs=1e-12
    )
    assert math.isnan(diagnostics.auc(scores, torch.ones(500, dtype=torch.bool)))


def _loop(emb, pseudo, truth, basis, t1, t2, rows, margin):
    """The diagnostics of one batch, pair by pair."""
    f = torch.nn.functional.normalize(emb[rows], dim=1)
    s = basis.similarity(emb[rows]).detach()
    counts = dict(pp=0, pp_true=0, pn=0, pn_true=0, kp=0, kp_true=0, kn=0, kn_true=0, inactive=0)
    for a in range(len(rows)):
        for b in range(a + 1, len(rows)):
            i, j = rows[a], rows[b]
            same_p, same_y = pseudo[i] == pseudo[j], truth[i] == truth[j]
            if same_p:
                counts["pp"] += 1
                counts["pp_true"] += int(same_y)
                if s[a, b] >= t1:
                    counts["kp"] += 1
                    counts["kp_true"] += int(same_y)
            else:
                counts["pn"] += 1
                counts["pn_true"] += int(not same_y)
                if s[a, b] <= t2:
                    counts["kn"] += 1
                    counts["kn_true"] += int(not same_y)
                    counts["inactive"] += int(float((f[a] - f[b]).norm()) >= margin)
    return counts


def test_pair_diagnostics_equal_a_loop_over_pairs():
    torch.manual_seed(0)
    n, dim = 120, 8
    truth = torch.randint(0, 6, (n,))
    pseudo = torch.where(torch.rand(n) < 0.7, truth, torch.randint(0, 6, (n,)))
    emb = torch.randn(6, dim)[truth] + 0.8 * torch.randn(n, dim)
    basis = slade.FeatureBasis(5, dim).eval()
    t1, t2 = 0.3, 0.1
    found = diagnostics.pair_diagnostics(
        emb, pseudo, truth, basis=basis, t1=t1, t2=t2, neg_margin=1.2,
        batch_size=16, m=4, num_batches=3, seed=5,
    )
    total = dict.fromkeys(("pp", "pp_true", "pn", "pn_true", "kp", "kp_true", "kn", "kn_true", "inactive"), 0)
    for rows in diagnostics.training_batches(pseudo, 16, 4, 3, 5):
        for key, value in _loop(emb, pseudo, truth, basis, t1, t2, rows.tolist(), 1.2).items():
            total[key] += value
    assert found["pseudo_positive_precision"] == pytest.approx(total["pp_true"] / total["pp"])
    assert found["pseudo_negative_precision"] == pytest.approx(total["pn_true"] / total["pn"])
    assert found["mined_positive_kept"] == pytest.approx(total["kp"] / total["pp"])
    assert found["mined_negative_kept"] == pytest.approx(total["kn"] / total["pn"])
    assert found["mined_positive_precision"] == pytest.approx(total["kp_true"] / total["kp"])
    assert found["mined_negative_precision"] == pytest.approx(total["kn_true"] / total["kn"])
    assert found["inactive_mined_negative"] == pytest.approx(total["inactive"] / total["kn"])
    assert 0.5 < found["auc_embedding"] <= 1.0
    with pytest.raises(slade.InvalidArgumentError, match="true_labels"):
        diagnostics.pair_diagnostics(emb, pseudo, truth[:-1])


def test_gradient_norms_equal_autograd_of_plain_terms():
    torch.manual_seed(1)
    fl = torch.nn.functional.normalize(torch.randn(12, 6), dim=1)
    fu = torch.nn.functional.normalize(torch.randn(12, 6), dim=1)
    labels, pseudo = torch.arange(3).repeat(4), torch.arange(4).repeat(3)
    basis = slade.FeatureBasis(3, 6)
    norms = diagnostics.gradient_norms(fl, labels, fu, pseudo, basis=basis)
    leaf = fl.clone().requires_grad_(True)
    ce = torch.nn.functional.cross_entropy(leaf @ basis.weight.detach().T, labels)
    (grad,) = torch.autograd.grad(ce, leaf)
    assert norms["ce"] == pytest.approx(float(grad.norm()), rel=1e-5)
    assert set(norms) == {"rank_l", "rank_u", "ce", "sd"}
    assert all(v > 0 for v in norms.values())


def test_threshold_rules_resolve_as_the_student_does():
    stats = {"mu_pos": 0.6, "mu_neg": 0.2}
    assert diagnostics.threshold_value("mu+", stats, 0) == 0.6
    assert diagnostics.threshold_value("mid", stats, 1) == pytest.approx(0.4)
    assert diagnostics.threshold_value("all", stats, 1) == 2.0
    assert diagnostics.threshold_value(0.25, stats, 0) == 0.25
    with pytest.raises(slade.InvalidArgumentError, match="median"):
        diagnostics.threshold_value("median", stats, 0)


def test_run_writes_diagnostics_and_their_plot(tmp_path, fashion_mnist_root):
    config = slade.config.preset(
        "fashion-mnist-ssl",
        [
            f"data.root={fashion_mnist_root}", "data.max_labeled=300", "data.max_unlabeled=300",
            "data.max_test=200", "teacher.steps=4", "student.steps=4", "pseudo_labels.k=10",
            "progress=false", "eval.examples=2",
        ],
    )
    result = slade.run(config, out=tmp_path / "run")
    found = result.rounds[0]["diagnostics"]
    pairs = found["pairs"]
    for key in ("pseudo_positive_precision", "mined_positive_kept", "auc_basis_pseudo_positive"):
        assert 0.0 <= pairs[key] <= 1.0, key
    assert set(found["gradient_norms"]) == {"rank_l", "rank_u", "ce", "sd"}
    assert (tmp_path / "run" / "plots" / "mining_diagnostics.png").stat().st_size > 1000
    import json

    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["rounds"][0]["diagnostics"]["pairs"] == pytest.approx(pairs, nan_ok=True)
    assert np.isfinite(found["thresholds"]).all()
