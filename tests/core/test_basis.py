"""slade.FeatureBasis (L_CE, L_SD, the CE ablations, running statistics) and
slade.miners.basis_pairs against plain-PyTorch re-implementations written here."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

import slade


class ReferenceBasis:
    """DESIGN.md §2.4 in plain PyTorch: W_a, an optional head H and running statistics."""

    def __init__(self, weight, head=None, momentum=0.99, margin=0.5, sd_weight=1.0,
                 regularizer="sd", sd_statistics="batch"):
        self.weight = weight.detach().clone().double().requires_grad_(True)
        self.head = None if head is None else head.detach().clone().double().requires_grad_(True)
        self.beta, self.margin, self.sd_weight = momentum, margin, sd_weight
        self.regularizer, self.sd_statistics = regularizer, sd_statistics
        self.running = {"pos": None, "neg": None}  # (mu, var) once updated

    def similarity(self, emb):
        r = F.normalize(emb @ self.weight.T, dim=1, eps=1e-12)
        return r @ r.T

    def side(self, values, name):
        """(batch mean and variance, their momentum blend with the running ones)."""
        if len(values) == 0:
            return None, None
        mu = values.mean()
        var = ((values - mu) ** 2).mean()
        if self.running[name] is None:
            return (mu, var), (mu, var)
        mu_run, var_run = self.running[name]
        b = self.beta
        return (mu, var), ((1 - b) * mu + b * mu_run, (1 - b) * var + b * var_run)

    def loss(self, emb_l, labels_l, emb_u, pseudo_u, training=True):
        ce = F.cross_entropy(emb_l @ self.weight.T, labels_l) if emb_l is not None else 0.0
        reg = 0.0
        if emb_u is not None:
            n = len(emb_u)
            i, j = torch.triu_indices(n, n, 1)
            values = self.similarity(emb_u)[i, j]
            same = pseudo_u[i] == pseudo_u[j]
            (pos, pos_next), (neg, neg_next) = self.side(values[same], "pos"), self.side(values[~same], "neg")
            if self.sd_statistics == "blended":
                pos, neg = pos_next, neg_next
            if self.regularizer == "sd":
                for stats in (pos, neg):
                    if stats is not None:
                        reg = reg + stats[1]
                if pos is not None and neg is not None:
                    reg = reg + self.sd_weight * torch.relu(self.margin - (pos[0] - neg[0]))
            else:
                logits = (emb_u @ self.weight.T) @ self.head.T
                targets = pseudo_u
                if self.regularizer == "local_ce":
                    present = torch.unique(pseudo_u)
                    logits = logits[:, present]
                    targets = torch.searchsorted(present, pseudo_u)
                reg = F.cross_entropy(logits, targets)
            if training:
                for name, stats in (("pos", pos_next), ("neg", neg_next)):
                    if stats is not None:
                        self.running[name] = (stats[0].detach(), stats[1].detach())
        return ce + reg


def batch(seed, n_l=10, n_u=12, dim=8, classes=4, pseudo_classes=3):
    g = torch.Generator().manual_seed(seed)
    emb_l = F.normalize(torch.randn(n_l, dim, generator=g, dtype=torch.float64), dim=1)
    emb_u = F.normalize(torch.randn(n_u, dim, generator=g, dtype=torch.float64), dim=1)
    labels_l = torch.randint(0, classes, (n_l,), generator=g)
    pseudo_u = torch.randint(0, pseudo_classes, (n_u,), generator=g)
    return emb_l, labels_l, emb_u, pseudo_u


def make(regularizer="sd", num_basis=4, dim=8, k=None, **kwargs):
    torch.manual_seed(0)
    basis = slade.FeatureBasis(num_basis, dim, regularizer=regularizer,
                               num_pseudo_classes=k, dtype=torch.float64, **kwargs)
    reference = ReferenceBasis(basis.weight, basis.pseudo_head, regularizer=regularizer,
                               momentum=basis.momentum, margin=basis.sd_margin,
                               sd_weight=basis.sd_weight, sd_statistics=basis.sd_statistics)
    return basis, reference


def sync_running(reference, basis):
    """Continue the reference from our stored statistics (copies, on the CPU)."""
    reference.running = {
        name: (mu.detach().double().cpu().clone(), var.detach().double().cpu().clone())
        for name, mu, var in (("pos", basis.mu_pos, basis.var_pos),
                              ("neg", basis.mu_neg, basis.var_neg))
    }


def grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=False)


def check_step(basis, reference, emb_l, labels_l, emb_u, pseudo_u, training=True):
    """One loss call of both: same value, same gradients w.r.t. embeddings and parameters."""
    ours_l = None if emb_l is None else emb_l.clone().requires_grad_(True)
    ours_u = None if emb_u is None else emb_u.clone().requires_grad_(True)
    ref_l = None if emb_l is None else emb_l.clone().requires_grad_(True)
    ref_u = None if emb_u is None else emb_u.clone().requires_grad_(True)
    total, parts = basis.loss(ours_l, labels_l, ours_u, pseudo_u)
    expected = reference.loss(ref_l, labels_l, ref_u, pseudo_u, training)
    torch.testing.assert_close(total, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sum(parts.values()), total, rtol=1e-12, atol=1e-12)
    ours_inputs = [t for t in (ours_l, ours_u, basis.weight, basis.pseudo_head) if t is not None]
    ref_inputs = [t for t in (ref_l, ref_u, reference.weight, reference.head) if t is not None]
    for g_ours, g_ref in zip(grads(total, *ours_inputs), grads(expected, *ref_inputs)):
        assert torch.isfinite(g_ours).all()
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-9, atol=1e-12)
    return parts


# ---------------------------------------------------------------------------------------
# Losses against the reference, values and gradients.


@pytest.mark.parametrize("regularizer", ["sd", "blended", "global_ce", "local_ce"])
def test_loss_values_gradients_and_momentum_match_reference(regularizer):
    k = 5 if regularizer not in ("sd", "blended") else None
    if regularizer == "blended":
        basis, reference = make("sd", sd_statistics="blended", momentum=0.9)
    else:
        basis, reference = make(regularizer, k=k)
    for step in range(4):
        parts = check_step(basis, reference, *batch(step, pseudo_classes=5))
        assert set(parts) == {"ce", basis.regularizer}
        for name, stored in (("pos", (basis.mu_pos, basis.var_pos)),
                             ("neg", (basis.mu_neg, basis.var_neg))):
            torch.testing.assert_close(stored[0].double(), reference.running[name][0],
                                       rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(stored[1].double(), reference.running[name][1],
                                       rtol=1e-6, atol=1e-7)
        sync_running(reference, basis)
        assert basis.updates_pos.item() == step + 1 and basis.updates_neg.item() == step + 1


def test_sd_hyper_parameters_and_a_hinge_that_is_active_and_inactive():
    for margin, weight, momentum in ((0.5, 1.0, 0.99), (2.0, 0.3, 0.5), (-3.0, 2.0, 0.0)):
        basis, reference = make(sd_margin=margin, sd_weight=weight, momentum=momentum)
        for step in range(2):
            check_step(basis, reference, *batch(10 + step))
            sync_running(reference, basis)


def test_eval_mode_leaves_the_statistics_unchanged():
    basis, reference = make()
    check_step(basis, reference, *batch(0))
    before = {k: v.clone() for k, v in basis.state_dict().items()}
    sync_running(reference, basis)
    basis.eval()
    check_step(basis, reference, *batch(1), training=False)
    for name, value in basis.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_labeled_or_unlabeled_part_alone():
    basis, reference = make()
    emb_l, labels_l, emb_u, pseudo_u = batch(3)
    parts = check_step(basis, reference, emb_l, labels_l, None, None)
    assert parts["sd"].item() == 0.0
    parts = check_step(basis, reference, None, None, emb_u, pseudo_u)
    assert parts["ce"].item() == 0.0


def test_batches_without_positive_or_negative_pairs():
    basis, reference = make()
    emb_l, labels_l, emb_u, _ = batch(4, n_u=5)
    all_different = torch.arange(5)
    all_same = torch.zeros(5, dtype=torch.long)
    check_step(basis, reference, emb_l, labels_l, emb_u, all_different)
    assert basis.updates_pos.item() == 0 and basis.updates_neg.item() == 1
    check_step(basis, reference, emb_l, labels_l, emb_u, all_same)
    assert basis.updates_pos.item() == 1 and basis.updates_neg.item() == 1
    # A single unlabeled sample has no pair at all: a zero term with zero, finite gradients.
    one = emb_u[:1].clone().requires_grad_(True)
    total, parts = basis.loss(None, None, one, torch.zeros(1, dtype=torch.long))
    assert parts["sd"].item() == 0.0
    (g,) = torch.autograd.grad(total, (one,))
    assert torch.isfinite(g).all() and (g == 0).all()
    # Nothing mined from such batches.
    a1, p, a2, n = slade.miners.basis_pairs(basis, emb_u, all_same, t1=-2.0, t2=2.0)
    assert len(a1) == len(p) == 20 and len(a2) == len(n) == 0
    a1, p, a2, n = slade.miners.basis_pairs(basis, emb_u, all_different, t1=-2.0, t2=2.0)
    assert len(a1) == len(p) == 0 and len(a2) == len(n) == 20


def test_representation_and_similarity_match_reference():
    basis, reference = make(num_basis=6, dim=5)
    emb = torch.randn(9, 5, dtype=torch.float64, requires_grad=True)
    r = basis.representation(emb)
    torch.testing.assert_close(r, emb @ reference.weight.T)
    torch.testing.assert_close(basis(emb), r)
    s = basis.similarity(emb)
    torch.testing.assert_close(s, reference.similarity(emb))
    (g,) = torch.autograd.grad(s.sum(), (basis.weight,))
    (g_ref,) = torch.autograd.grad(reference.similarity(emb).sum(), (reference.weight,))
    torch.testing.assert_close(g, g_ref)


# ---------------------------------------------------------------------------------------
# State: the same tensors as Python's, saved and loaded with the module.


def test_state_is_shared_saved_and_loaded():
    torch.manual_seed(0)
    basis = slade.FeatureBasis(4, 8, regularizer="global_ce", num_pseudo_classes=3)
    assert basis.W_a is basis.weight and basis.weight.requires_grad
    assert basis.weight.shape == (4, 8) and basis.pseudo_head.shape == (3, 4)
    bound = 1 / 8**0.5
    assert basis.weight.abs().max() <= bound
    emb_l, labels_l, emb_u, pseudo_u = (t.float() if t.is_floating_point() else t for t in batch(0))
    optimizer = torch.optim.SGD(basis.parameters(), lr=0.5)
    total, _ = basis.loss(emb_l, labels_l, emb_u, pseudo_u)
    total.backward()
    assert basis.weight.grad is not None and basis.pseudo_head.grad is not None
    optimizer.step()
    # The Rust core reads the updated parameter in place.
    torch.testing.assert_close(basis.representation(emb_l), emb_l @ basis.weight.T)

    state = basis.state_dict()
    assert set(state) == {"weight", "pseudo_head", "mu_pos", "var_pos", "mu_neg", "var_neg",
                          "updates_pos", "updates_neg"}
    assert all(type(v) is torch.Tensor and not v.requires_grad for v in state.values())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored = slade.FeatureBasis(4, 8, regularizer="global_ce", num_pseudo_classes=3)
    restored.load_state_dict(torch.load(buffer))
    from safetensors.torch import load, save

    again = slade.FeatureBasis(4, 8, regularizer="global_ce", num_pseudo_classes=3)
    again.load_state_dict(load(save({k: v.contiguous() for k, v in state.items()})))
    for other in (restored, again):
        other.eval()
        basis.eval()
        for a, b in zip(basis.loss(emb_l, labels_l, emb_u, pseudo_u)[1].values(),
                        other.loss(emb_l, labels_l, emb_u, pseudo_u)[1].values()):
            assert torch.equal(a, b)
        assert torch.equal(other.mu_pos, basis.mu_pos)


# ---------------------------------------------------------------------------------------
# Mining against a loop over all pairs.


def brute_force_pairs(s, pseudo, t1, t2, agree):
    pos, neg = [], []
    n = len(s)
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            same = pseudo is not None and bool(pseudo[i] == pseudo[j])
            if s[i, j] >= t1 and (same or not agree):
                pos.append((i, j))
            if s[i, j] <= t2 and (not same or not agree):
                neg.append((i, j))
    return pos, neg


@pytest.mark.parametrize("agree", [True, False])
@pytest.mark.parametrize("thresholds", [("auto", "auto"), (0.3, -0.1), (0.0, 0.0), (-1.0, 1.0)])
def test_basis_pairs_match_brute_force(agree, thresholds):
    basis, _ = make(num_basis=5, dim=8)
    emb_l, labels_l, emb_u, pseudo_u = batch(7, n_u=16)
    basis.loss(emb_l, labels_l, emb_u, pseudo_u)
    t1, t2 = thresholds
    a1, p, a2, n = slade.miners.basis_pairs(basis, emb_u, pseudo_u, t1=t1, t2=t2,
                                            require_pseudo_agreement=agree)
    for t in (a1, p, a2, n):
        assert t.dtype == torch.int64
    t1 = basis.mu_pos.item() if t1 == "auto" else t1
    t2 = basis.mu_neg.item() if t2 == "auto" else t2
    s = basis.similarity(emb_u).detach()
    pos, neg = brute_force_pairs(s, pseudo_u, t1, t2, agree)
    assert list(zip(a1.tolist(), p.tolist())) == pos
    assert list(zip(a2.tolist(), n.tolist())) == neg
    if thresholds == ("auto", "auto"):
        assert pos and neg, "running means split a batch into both kinds"


def reference_threshold(rule, side, weight_mu_pos, weight_mu_neg):
    """T1 (side 0) or T2 (side 1) of a rule, from DESIGN.md §2.4 (written here)."""
    if not isinstance(rule, str):
        return float(rule)
    rule = ("mu+", "mu-")[side] if rule == "auto" else rule
    return {
        "mu+": weight_mu_pos,
        "mu-": weight_mu_neg,
        "mid": (weight_mu_pos + weight_mu_neg) / 2,
        "all": (-2.0, 2.0)[side],
    }[rule]


RULES = [("mu-", "mu+"), ("mu+", "mu-"), ("mid", "mid"), ("all", "all"), ("mu+", "all"),
         ("all", "mid"), ("auto", 0.1), (0.4, "mu-"), (1, -1)]


@pytest.mark.parametrize("agree", [True, False])
@pytest.mark.parametrize("t1,t2", RULES)
def test_basis_pairs_take_every_threshold_rule_of_the_student(t1, t2, agree):
    """The rules the student takes (formerly the miner took only "auto" and numbers), against
    plain PyTorch: s from W_a, thresholds from the running means, masks by comparison."""
    basis, _ = make(num_basis=5, dim=8)
    emb_l, labels_l, emb_u, pseudo_u = batch(3, n_u=16)
    basis.loss(emb_l, labels_l, emb_u, pseudo_u)
    mu_pos, mu_neg = basis.mu_pos.item(), basis.mu_neg.item()
    v1, v2 = (reference_threshold(t, side, mu_pos, mu_neg) for side, t in enumerate((t1, t2)))
    r = F.normalize(emb_u @ basis.weight.detach().T, dim=1)
    s = r @ r.T
    off_diagonal = ~torch.eye(16, dtype=torch.bool)
    same = pseudo_u[:, None] == pseudo_u[None, :]
    pos, neg = (s >= v1) & off_diagonal, (s <= v2) & off_diagonal
    if agree:
        pos, neg = pos & same, neg & ~same
    a1, p, a2, n = slade.miners.basis_pairs(basis, emb_u, pseudo_u, t1=t1, t2=t2,
                                            require_pseudo_agreement=agree)
    assert (a1.tolist(), p.tolist()) == tuple(t.tolist() for t in torch.where(pos))
    assert (a2.tolist(), n.tolist()) == tuple(t.tolist() for t in torch.where(neg))


def test_rules_reading_unset_statistics_name_the_threshold():
    fresh, _ = make()
    _, _, emb_u, pseudo_u = batch(5)
    with pytest.raises(slade.InvalidArgumentError, match='t1="mu-" reads'):
        slade.miners.basis_pairs(fresh, emb_u, pseudo_u, t1="mu-", t2="all")
    with pytest.raises(slade.InvalidArgumentError, match='t2="mid" reads'):
        slade.miners.basis_pairs(fresh, emb_u, pseudo_u, t1=0.0, t2="mid")
    a1, _, a2, _ = slade.miners.basis_pairs(fresh, emb_u, pseudo_u, t1="all", t2="all")
    assert len(a1) + len(a2) == 12 * 11


def test_basis_pairs_work_as_pml_pairs():
    from pytorch_metric_learning.losses import ContrastiveLoss

    basis, _ = make()
    emb_l, labels_l, emb_u, pseudo_u = batch(8, n_u=16)
    basis.loss(emb_l, labels_l, emb_u, pseudo_u)
    pairs = slade.miners.basis_pairs(basis, emb_u, pseudo_u)
    loss = ContrastiveLoss()(emb_u, pseudo_u, pairs)
    assert torch.isfinite(loss)


def test_basis_pairs_without_pseudo_labels():
    basis, _ = make()
    _, _, emb_u, _ = batch(9)
    a1, p, a2, n = slade.miners.basis_pairs(basis, emb_u, None, t1=0.5, t2=0.0,
                                            require_pseudo_agreement=False)
    pos, neg = brute_force_pairs(basis.similarity(emb_u).detach(), None, 0.5, 0.0, False)
    assert list(zip(a1.tolist(), p.tolist())) == pos
    assert list(zip(a2.tolist(), n.tolist())) == neg


# ---------------------------------------------------------------------------------------
# Bad input.


def test_bad_inputs_raise_clear_errors():
    basis, _ = make()
    emb_l, labels_l, emb_u, pseudo_u = batch(0)
    nan = emb_u.clone()
    nan[0, 0] = float("nan")
    basis.loss(emb_l, labels_l, emb_u, pseudo_u)
    fresh = slade.FeatureBasis(4, 8)
    cases = [
        (lambda: basis.loss(emb_l, labels_l + 4, emb_u, pseudo_u), slade.InvalidArgumentError,
         "labels_l contains"),
        (lambda: basis.loss(emb_l, -labels_l - 1, emb_u, pseudo_u), slade.InvalidArgumentError,
         "labels_l contains"),
        (lambda: basis.loss(emb_l[:, :5], labels_l, emb_u, pseudo_u), slade.ShapeError, "dim"),
        (lambda: basis.loss(emb_l, labels_l[:3], emb_u, pseudo_u), slade.ShapeError, "labels_l"),
        (lambda: basis.loss(emb_l, labels_l.float(), emb_u, pseudo_u), slade.DtypeError, "integer"),
        (lambda: basis.loss(emb_l, labels_l, nan, pseudo_u), slade.NonFiniteError, "emb_u"),
        (lambda: basis.loss(emb_l, labels_l, emb_u, -pseudo_u - 1), slade.InvalidArgumentError,
         "negative"),
        (lambda: basis.loss(emb_l, None, emb_u, pseudo_u), slade.InvalidArgumentError, "labels_l"),
        (lambda: basis.loss(None, None, None, None), slade.InvalidArgumentError, "None"),
        (lambda: basis.loss(emb_l[0], labels_l, emb_u, pseudo_u), slade.ShapeError, "2-D"),
        (lambda: basis.similarity(emb_u[:0]), slade.InvalidArgumentError, "empty"),
        (lambda: slade.FeatureBasis(4, 8, regularizer="ce"), slade.ConfigError, "regularizer"),
        (lambda: slade.FeatureBasis(4, 8, regularizer="global_ce"), slade.InvalidArgumentError,
         "num_pseudo_classes"),
        (lambda: slade.FeatureBasis(4, 8, momentum=1.0), slade.InvalidArgumentError, "momentum"),
        (lambda: slade.FeatureBasis(4, 8, sd_weight=-1.0), slade.InvalidArgumentError, "sd_weight"),
        (lambda: slade.FeatureBasis(0, 8), slade.InvalidArgumentError, "num_basis"),
        (lambda: slade.miners.basis_pairs(fresh, emb_u.float(), pseudo_u),
         slade.InvalidArgumentError, "auto"),
        (lambda: slade.miners.basis_pairs(basis, emb_u, pseudo_u, t1="mean"), slade.ConfigError,
         "t1"),
        (lambda: slade.miners.basis_pairs(basis, emb_u, None), slade.InvalidArgumentError,
         "pseudo_u"),
        (lambda: slade.miners.basis_pairs(basis, emb_u, pseudo_u[:4], t1=0.1, t2=0.1),
         slade.ShapeError, "pseudo_u"),
        (lambda: slade.miners.basis_pairs(basis, emb_u, pseudo_u, t1=float("nan"), t2=0.1),
         slade.InvalidArgumentError, "t1"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
    ce_basis, _ = make("global_ce", k=3)
    with pytest.raises(slade.InvalidArgumentError, match="num_pseudo_classes"):
        ce_basis.loss(emb_l, labels_l, emb_u, pseudo_u + 3)


# ---------------------------------------------------------------------------------------
# CUDA.


@pytest.mark.cuda
@pytest.mark.parametrize("regularizer", ["sd", "global_ce", "local_ce"])
def test_cuda_loss_matches_reference(regularizer):
    k = 5 if regularizer != "sd" else None
    basis, reference = make(regularizer, k=k)
    basis.cuda()
    for step in range(3):
        emb_l, labels_l, emb_u, pseudo_u = batch(step, pseudo_classes=5)
        ours_l = emb_l.cuda().requires_grad_(True)
        ours_u = emb_u.cuda().requires_grad_(True)
        total, _ = basis.loss(ours_l, labels_l.cuda(), ours_u, pseudo_u.cuda())
        assert total.is_cuda and basis.mu_pos.is_cuda
        ref_l, ref_u = emb_l.clone().requires_grad_(True), emb_u.clone().requires_grad_(True)
        expected = reference.loss(ref_l, labels_l, ref_u, pseudo_u)
        torch.testing.assert_close(total.cpu(), expected)
        for g_ours, g_ref in zip(grads(total, ours_l, ours_u, basis.weight),
                                 grads(expected, ref_l, ref_u, reference.weight)):
            torch.testing.assert_close(g_ours.cpu(), g_ref)
        sync_running(reference, basis)


@pytest.mark.cuda
def test_cuda_mining_and_device_checks():
    basis, _ = make()
    basis.cuda()
    emb_l, labels_l, emb_u, pseudo_u = batch(5, n_u=16)
    basis.loss(emb_l.cuda(), labels_l.cuda(), emb_u.cuda(), pseudo_u.cuda())
    a1, p, a2, n = slade.miners.basis_pairs(basis, emb_u.cuda(), pseudo_u.cuda())
    assert a1.is_cuda and n.is_cuda
    s = basis.similarity(emb_u.cuda()).detach().cpu()
    pos, neg = brute_force_pairs(s, pseudo_u, basis.mu_pos.item(), basis.mu_neg.item(), True)
    assert list(zip(a1.tolist(), p.tolist())) == pos
    assert list(zip(a2.tolist(), n.tolist())) == neg
    with pytest.raises(slade.DeviceError):
        basis.loss(emb_l, labels_l, emb_u, pseudo_u)
