"""Plain PyTorch + pytorch-metric-learning re-implementations of the SLADE teacher and student
steps (DESIGN.md §2.2, §2.4), written from the definitions rather than from slade's code, for
the tests and bench/train_step.py: the ranking losses and the multi-similarity miner are
PML's, the feature basis, L_SD, the CE regularisers and the pair mining are written here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners

from reference_nets import Embedder


def ranking_loss(loss: str, pos_margin=0.0, neg_margin=1.0, alpha=2.0, beta=50.0, base=0.5):
    if loss == "contrastive":
        return losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin)
    return losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)


def reference_model(trainer, device="cpu") -> Embedder:
    """An Embedder with the trainer's model weights (backbone and head)."""
    config = trainer.model_config
    model = Embedder(config.backbone, config.in_channels, config.dim).to(device)
    state = {k: v.detach().clone() for k, v in trainer.model_state_dict().items()}
    model.load_slade_state(state)
    return model


class ReferenceRanking:
    """L_rank: a PML loss over all pairs or over MultiSimilarityMiner's pairs."""

    def __init__(self, loss="contrastive", miner=False, epsilon=0.1, **params):
        self.loss_fn = ranking_loss(loss, **params)
        self.miner = miners.MultiSimilarityMiner(epsilon=epsilon) if miner else None

    def __call__(self, f, labels):
        pairs = self.miner(f, labels) if self.miner is not None else None
        return self.loss_fn(f, labels, pairs)


class ReferenceBasis:
    """W_a, the optional pseudo-class head H and the running statistics of s = cos(W_a f_i,
    W_a f_j) over unlabeled pairs i < j (positives: same pseudo label)."""

    def __init__(
        self,
        weight,
        pseudo_head=None,
        momentum=0.99,
        sd_margin=0.5,
        sd_weight=1.0,
        regularizer="sd",
        sd_statistics="batch",
    ):
        self.weight = weight.detach().clone().requires_grad_(True)
        self.pseudo_head = None if pseudo_head is None else pseudo_head.detach().clone().requires_grad_(True)
        self.momentum, self.sd_margin, self.sd_weight = momentum, sd_margin, sd_weight
        self.regularizer, self.sd_statistics = regularizer, sd_statistics
        self.running = {"pos": None, "neg": None}  # (mu, var), detached

    def parameters(self):
        return [self.weight] + ([self.pseudo_head] if self.pseudo_head is not None else [])

    def similarity(self, f):
        r = F.normalize(f @ self.weight.t(), dim=1)
        return r @ r.t()

    def loss(self, fl, labels, fu, pseudo):
        """(L_CE, L_reg); updates the running statistics afterwards."""
        ce = F.cross_entropy(fl @ self.weight.t(), labels)
        r = fu @ self.weight.t()
        n = fu.shape[0]
        i, j = torch.triu_indices(n, n, 1, device=fu.device)
        s = self.similarity(fu)[i, j]
        same = pseudo[i] == pseudo[j]
        batch, blended = {}, {}
        for side, mask in (("pos", same), ("neg", ~same)):
            if mask.any():
                values = s[mask]
                mu, var = values.mean(), values.var(unbiased=False)
                batch[side] = (mu, var)
                if self.running[side] is not None:
                    mu0, var0 = self.running[side]
                    b = self.momentum
                    mu, var = (1 - b) * mu + b * mu0, (1 - b) * var + b * var0
                blended[side] = (mu, var)
        used = batch if self.sd_statistics == "batch" else blended
        if self.regularizer == "sd":
            reg = torch.zeros((), device=fu.device)
            for _, var in used.values():
                reg = reg + var
            if len(used) == 2:
                gap = used["pos"][0] - used["neg"][0]
                reg = reg + self.sd_weight * F.relu(self.sd_margin - gap)
        else:
            logits = r @ self.pseudo_head.t()
            targets = pseudo
            if self.regularizer == "local_ce":
                present = torch.unique(pseudo)  # sorted
                logits = logits[:, present]
                targets = torch.searchsorted(present, pseudo)
            reg = F.cross_entropy(logits, targets)
        for side, (mu, var) in blended.items():
            self.running[side] = (mu.detach(), var.detach())
        return ce, reg

    def threshold(self, rule):
        mu = {k: (None if v is None else v[0].item()) for k, v in self.running.items()}
        if not isinstance(rule, str):
            return float(rule)
        if rule == "mu+":
            return mu["pos"]
        if rule == "mu-":
            return mu["neg"]
        if rule == "mid":
            return None if None in mu.values() else (mu["pos"] + mu["neg"]) / 2
        raise ValueError(rule)


def mine_pairs(s, pseudo, t1, t2, require_pseudo_agreement=True):
    """P = {s >= t1}, N = {s <= t2} (i != j; no pair for a threshold of None), restricted by
    the pseudo labels; PML's (a1, p, a2, n) form, row-major."""
    n = s.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=s.device)
    none = torch.zeros_like(off_diagonal)
    pos = none if t1 is None else (s >= t1) & off_diagonal
    neg = none if t2 is None else (s <= t2) & off_diagonal
    if require_pseudo_agreement:
        same = pseudo[:, None] == pseudo[None, :]
        pos, neg = pos & same, neg & ~same
    a1, p = torch.where(pos)
    a2, n_ = torch.where(neg)
    return a1, p, a2, n_


AUTO = ("mu+", "mu-")


class ReferenceStudent:
    """L = L_rank(labeled) + lambda1 L_rank(unlabeled pairs) + lambda2 (L_CE + L_reg), with the
    labeled and unlabeled images embedded in one forward pass."""

    def __init__(
        self,
        model,
        basis,
        *,
        variant="basis_mining",
        lambda1=1.0,
        lambda2=1.0,
        basis_warmup=0,
        t1="auto",
        t2="auto",
        require_pseudo_agreement=True,
        mining="basis",
        loss="contrastive",
        miner=False,
        epsilon=0.1,
        **params,
    ):
        self.model, self.basis = model, basis
        self.variant, self.lambda1, self.lambda2 = variant, lambda1, lambda2
        self.warmup = basis_warmup
        self.t1 = AUTO[0] if t1 == "auto" else t1
        self.t2 = AUTO[1] if t2 == "auto" else t2
        self.require = require_pseudo_agreement
        if mining not in ("basis", "oracle"):
            raise ValueError(f"the reference has no mining {mining!r}")
        self.mining = mining
        self.labeled = ReferenceRanking(loss, miner, epsilon, **params)
        self.unlabeled = ranking_loss(loss, **params)

    def warming_up(self, step):
        return step < self.warmup

    def loss(self, xl, labels, xu, pseudo, step=0, true_labels=None):
        x = torch.cat([xl, xu])
        if self.warming_up(step):
            self.model.body.eval()
            with torch.no_grad():
                h = self.model.body(x)
            f = F.normalize(self.model.embedding(h), dim=1)
        else:
            self.model.train()
            f = self.model(x)
        return self.objective(f[: len(xl)], labels, f[len(xl) :], pseudo, true_labels)

    def objective(self, fl, labels, fu, pseudo, true_labels=None):
        """The objective on given labeled and unlabeled embeddings: (total, parts)."""
        parts = {"loss/rank_labeled": self.labeled(fl, labels)}
        total = parts["loss/rank_labeled"]
        if self.basis is None:
            pairs = None
        else:
            ce, reg = self.basis.loss(fl, labels, fu, pseudo)
            parts["loss/ce"], parts[f"loss/{self.basis.regularizer}"] = ce, reg
            total = total + self.lambda2 * (ce + reg)
            pairs = None
            if self.variant == "basis_mining":
                # "all": thresholds outside the range of a cosine (every pair passes)
                t1 = -2.0 if self.t1 == "all" else self.basis.threshold(self.t1)
                t2 = 2.0 if self.t2 == "all" else self.basis.threshold(self.t2)
                with torch.no_grad():
                    s = self.basis.similarity(fu.detach())
                pairs = mine_pairs(s, pseudo, t1, t2, self.require)
                if self.mining == "oracle":
                    # the pseudo pairs that the true labels confirm
                    same_p = pseudo[:, None] == pseudo[None, :]
                    same_y = true_labels[:, None] == true_labels[None, :]
                    off = ~torch.eye(len(pseudo), dtype=torch.bool)
                    a1, p = torch.where(same_p & same_y & off)
                    a2, n_ = torch.where(~same_p & ~same_y)
                    pairs = (a1, p, a2, n_)
                parts["threshold/t1"], parts["threshold/t2"] = t1, t2
        parts["loss/rank_unlabeled"] = self.unlabeled(fu, pseudo, pairs)
        if pairs is not None:
            parts["pairs/positive"], parts["pairs/negative"] = len(pairs[0]), len(pairs[2])
        total = total + self.lambda1 * parts["loss/rank_unlabeled"]
        return total, parts

    def head_parameters(self):
        return list(self.model.embedding.parameters())

    def after_backward(self, step):
        """During the warm-up the head is not updated (the backbone has no gradient)."""
        if self.warming_up(step):
            for p in self.head_parameters():
                p.grad = None


@torch.no_grad()
def sync_from(trainer, model, basis=None):
    """Copies the trainer's weights (and basis state) into the reference in place, so that the
    next step starts from identical weights: float32 rounding differences of earlier steps
    would otherwise move ReLU inputs near 0 (or max-pool near-ties) to the other side, where
    the network's gradient jumps. Optimizer state (momentum) is left as each side has it."""
    names = model.slade_names()
    state = trainer.state_dict()
    for key, tensor in names.items():
        tensor.copy_(state[key])
    if basis is not None:
        basis.weight.copy_(state["basis.weight"])
        if basis.pseudo_head is not None:
            basis.pseudo_head.copy_(state["basis.pseudo_head"])
        for side in ("pos", "neg"):
            if state[f"basis.updates_{side}"].item() > 0:
                basis.running[side] = (state[f"basis.mu_{side}"].clone(), state[f"basis.var_{side}"].clone())


def param_groups(model, basis, lr, basis_lr=None):
    """torch.optim parameter groups in slade's order: backbone, head, basis."""
    groups = [
        {"params": list(model.body.parameters()), "lr": lr},
        {"params": list(model.embedding.parameters()), "lr": lr},
    ]
    if basis is not None:
        groups.append({"params": basis.parameters(), "lr": basis_lr if basis_lr is not None else lr})
    return groups
