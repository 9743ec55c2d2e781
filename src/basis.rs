//! The feature basis of the SLADE student (Sec 3.3, DESIGN.md §2.4).
//!
//! W_a (B x dim) maps an embedding f to its basis representation r = W_a f; the basis
//! similarity of two samples is s(i, j) = cos(r_i, r_j). The basis is trained by
//! L_Basis = L_CE + L_reg:
//! - L_CE: softmax cross-entropy of r (B logits) against the true labels of the labeled
//!   samples (labels in [0, B)).
//! - L_reg = L_SD ("sd", the paper's): over the pairs i < j of unlabeled samples, positives
//!   share their pseudo label and negatives do not. With mu and var the mean and (population)
//!   variance of s over a batch's positive or negative pairs,
//!   L_SD = (var+ + var-) + w [m - (mu+ - mu-)]_+, computed on the batch statistics with
//!   full gradient (`SdStatistics::Batch`, DESIGN.md §2.4). The comparison switch
//!   `SdStatistics::Blended` computes it on (1 - beta) batch + beta running (the running part
//!   detached), which scales its gradient by 1 - beta.
//!   A batch without positive (negative) pairs contributes no var+ (var-) term and no margin
//!   term, and leaves that side's running statistics unchanged. Our definition where the
//!   paper is silent.
//! - L_reg = "global_ce" (ablation 3): softmax cross-entropy of H r against the pseudo labels,
//!   H (num_pseudo_classes x B) being a second linear head without bias on the basis
//!   representation, trained with it. "local_ce": the same, the softmax restricted to the
//!   pseudo classes present in the batch.
//!
//! Running statistics: a training-mode call updates mu <- (1 - beta) mu_batch + beta mu
//! (same for var; the first update of a side sets it to the batch values), for every
//! regulariser, so that miners can use them as thresholds. Evaluation-mode calls never
//! change them.

use crate::bail;
use crate::error::{Result, SladeError};
use crate::settings::{invalid, Settings};
use crate::validate;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tch::{Device, Kind, Reduction, Tensor};

crate::named_choice! {
    /// Which term regularises the basis on the unlabeled samples.
    pub enum Regularizer ("regularizer") {
        /// Similarity distribution loss L_SD (the paper's).
        Sd = "sd",
        /// Cross-entropy against all pseudo classes through a second head.
        GlobalCe = "global_ce",
        /// Cross-entropy against the pseudo classes present in the batch.
        LocalCe = "local_ce",
    }
}

crate::named_choice! {
    /// Which statistics L_SD is computed on.
    pub enum SdStatistics ("sd_statistics") {
        /// The batch's, with full gradient (DESIGN.md §2.4; the default).
        Batch = "batch",
        /// (1 - beta) batch + beta running, the running part detached (the comparison switch).
        Blended = "blended",
    }
}

/// Hyper-parameters of a feature basis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BasisConfig {
    /// Momentum beta of the running statistics, in [0, 1).
    pub momentum: f64,
    /// Margin m_sd between mu+ and mu-.
    pub sd_margin: f64,
    /// Weight w of the margin term.
    pub sd_weight: f64,
    pub regularizer: Regularizer,
    /// The statistics L_SD is computed on.
    pub sd_statistics: SdStatistics,
}

impl Default for BasisConfig {
    /// beta 0.99, m_sd 0.5, w 1 and L_SD on the batch statistics (DESIGN.md §2.4).
    fn default() -> Self {
        BasisConfig {
            momentum: 0.99,
            sd_margin: 0.5,
            sd_weight: 1.0,
            regularizer: Regularizer::Sd,
            sd_statistics: SdStatistics::Batch,
        }
    }
}

impl Settings for BasisConfig {
    const WHAT: &'static str = "basis";

    fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(invalid("momentum", "in [0, 1)", self.momentum));
        }
        if !self.sd_margin.is_finite() {
            return Err(invalid("sd_margin", "finite", self.sd_margin));
        }
        if !(self.sd_weight.is_finite() && self.sd_weight >= 0.0) {
            return Err(invalid("sd_weight", "a finite number >= 0", self.sd_weight));
        }
        Ok(())
    }
}

/// The state of a basis, all tensors (shared with their owner, e.g. a Python module).
pub struct BasisState {
    /// W_a, `B x dim`, requires grad.
    pub weight: Tensor,
    /// H, `num_pseudo_classes x B`, for the "global_ce" / "local_ce" regularisers.
    pub pseudo_head: Option<Tensor>,
    /// Running mean and variance of s over positive pairs (0-d floating; float32 when new).
    pub mu_pos: Tensor,
    pub var_pos: Tensor,
    /// Running mean and variance of s over negative pairs (0-d floating).
    pub mu_neg: Tensor,
    pub var_neg: Tensor,
    /// Updates of each side's running statistics so far (0-d integer; int64 when new).
    pub updates_pos: Tensor,
    pub updates_neg: Tensor,
}

/// Names of the state tensors, in `BasisState` order (the keys of a state dict).
pub const STATE_NAMES: [&str; 8] = [
    "weight",
    "pseudo_head",
    "mu_pos",
    "var_pos",
    "mu_neg",
    "var_neg",
    "updates_pos",
    "updates_neg",
];

/// L_Basis and its summands.
pub struct BasisLoss {
    pub total: Tensor,
    /// "ce" and the regulariser's name ("sd", "global_ce" or "local_ce"), 0-d tensors that
    /// sum to `total`.
    pub parts: Vec<(String, Tensor)>,
}

/// A feature basis W_a with its running similarity statistics.
pub struct FeatureBasis {
    pub config: BasisConfig,
    pub state: BasisState,
}

/// Mean and variance of s over one side's pairs in a batch.
struct SideStatistics {
    mean: Tensor,
    var: Tensor,
}

impl SideStatistics {
    fn shallow(&self) -> SideStatistics {
        SideStatistics { mean: self.mean.shallow_clone(), var: self.var.shallow_clone() }
    }
}

impl FeatureBasis {
    /// A new basis of `num_basis` vectors of dimension `dim` on `device`. W_a and H are
    /// initialised as torch.nn.Linear initialises its weight, U(-1/sqrt(fan_in),
    /// 1/sqrt(fan_in)), from torch's global generator; the running statistics are 0.
    pub fn new(
        num_basis: usize,
        dim: usize,
        num_pseudo_classes: Option<usize>,
        config: BasisConfig,
        device: Device,
    ) -> Result<Self> {
        config.validate()?;
        if num_basis == 0 || dim == 0 {
            bail!(Value, "num_basis and dim must be at least 1, got {num_basis} and {dim}");
        }
        let needs_head = config.regularizer != Regularizer::Sd;
        let pseudo_head = match (needs_head, num_pseudo_classes) {
            (true, None) | (true, Some(0)) => bail!(
                Value,
                "regularizer {:?} needs num_pseudo_classes (the k of the pseudo labels, >= 1)",
                config.regularizer.name()
            ),
            (true, Some(k)) => Some(uniform([k as i64, num_basis as i64], device)?),
            (false, _) => None,
        };
        let scalar = |kind| Tensor::f_zeros([], (kind, device));
        let state = BasisState {
            weight: uniform([num_basis as i64, dim as i64], device)?,
            pseudo_head,
            mu_pos: scalar(Kind::Float)?,
            var_pos: scalar(Kind::Float)?,
            mu_neg: scalar(Kind::Float)?,
            var_neg: scalar(Kind::Float)?,
            updates_pos: scalar(Kind::Int64)?,
            updates_neg: scalar(Kind::Int64)?,
        };
        Ok(FeatureBasis { config, state })
    }

    /// A basis over existing state tensors (used in place: updates are visible to their
    /// owner). Checks their shapes, dtypes and devices.
    pub fn from_parts(config: BasisConfig, state: BasisState) -> Result<Self> {
        config.validate()?;
        let w = &state.weight;
        if w.dim() != 2 || !validate::is_float(w.kind()) {
            bail!(
                Shape,
                "weight must be a 2-D floating tensor (num_basis x dim), got {:?} {:?}",
                w.size(),
                w.kind()
            );
        }
        let b = w.size()[0];
        match (&state.pseudo_head, config.regularizer) {
            (None, Regularizer::GlobalCe | Regularizer::LocalCe) => bail!(
                Value,
                "regularizer {:?} needs a pseudo_head; build the basis with num_pseudo_classes",
                config.regularizer.name()
            ),
            (Some(h), _) => {
                if h.dim() != 2 || h.size()[1] != b || h.kind() != w.kind() {
                    bail!(Shape, "pseudo_head must be (num_pseudo_classes x {b}) of dtype {:?}, got {:?} {:?}", w.kind(), h.size(), h.kind());
                }
                validate::same_device(h, "pseudo_head", w, "weight")?;
            }
            (None, Regularizer::Sd) => {}
        }
        for (name, t, floating) in [
            ("mu_pos", &state.mu_pos, true),
            ("var_pos", &state.var_pos, true),
            ("mu_neg", &state.mu_neg, true),
            ("var_neg", &state.var_neg, true),
            ("updates_pos", &state.updates_pos, false),
            ("updates_neg", &state.updates_neg, false),
        ] {
            let kind_ok = if floating {
                validate::is_float(t.kind())
            } else {
                validate::is_integer(t.kind())
            };
            if t.dim() != 0 || !kind_ok {
                let expected = if floating { "floating" } else { "integer" };
                bail!(
                    Shape,
                    "{name} must be a 0-d {expected} tensor, got shape {:?} {:?}",
                    t.size(),
                    t.kind()
                );
            }
            validate::same_device(t, name, w, "weight")?;
        }
        Ok(FeatureBasis { config, state })
    }

    pub fn num_basis(&self) -> usize {
        self.state.weight.size()[0] as usize
    }

    pub fn dim(&self) -> usize {
        self.state.weight.size()[1] as usize
    }

    /// Checks embeddings against the basis (`name` in the messages); returns them in the
    /// weight's dtype.
    pub(crate) fn embeddings(&self, emb: &Tensor, name: &str) -> Result<Tensor> {
        validate::embeddings(emb, name)?;
        validate::same_device(emb, name, &self.state.weight, "the basis weight")?;
        let dim = emb.size()[1];
        if dim as usize != self.dim() {
            bail!(
                Shape,
                "{name} has dim {dim} but the basis has dim {}; they must match",
                self.dim()
            );
        }
        // Row-major whatever the caller's layout: the GEMM then rounds as for a
        // contiguous tensor, so views give the contiguous result bit for bit.
        Ok(emb.f_to_kind(self.state.weight.kind())?.f_contiguous()?)
    }

    /// r = W_a f for each row f of `emb` (`N x B`).
    pub fn representation(&self, emb: &Tensor) -> Result<Tensor> {
        let emb = self.embeddings(emb, "emb")?;
        Ok(emb.f_mm(&self.state.weight.f_tr()?)?)
    }

    /// s(i, j) = cos(r_i, r_j) (`N x N`), each r scaled by 1 / max(|r|, 1e-12).
    pub fn similarity(&self, emb: &Tensor) -> Result<Tensor> {
        cosine_matrix(&self.representation(emb)?)
    }

    /// The running (mu+, mu-), or None for a side never updated.
    pub fn running_means(&self) -> Result<(Option<f64>, Option<f64>)> {
        let side = |mu: &Tensor, updates: &Tensor| -> Result<Option<f64>> {
            Ok((updates.f_int64_value(&[])? > 0).then_some(mu.f_double_value(&[])?))
        };
        Ok((
            side(&self.state.mu_pos, &self.state.updates_pos)?,
            side(&self.state.mu_neg, &self.state.updates_neg)?,
        ))
    }

    /// L_Basis = L_CE + L_reg (see the module docs). `labeled` = (embeddings, labels in
    /// [0, B)), `unlabeled` = (embeddings, pseudo labels); either may be absent, and its
    /// term is then 0. `train` updates the running statistics after computing the loss.
    pub fn loss(
        &self,
        labeled: Option<(&Tensor, &Tensor)>,
        unlabeled: Option<(&Tensor, &Tensor)>,
        train: bool,
    ) -> Result<BasisLoss> {
        if labeled.is_none() && unlabeled.is_none() {
            bail!(Value, "the basis loss needs labeled or unlabeled embeddings (both are None)");
        }
        let w = &self.state.weight;
        let zero = || -> Result<Tensor> { Ok(w.f_sum(w.kind())?.f_mul_scalar(0.0)?.f_abs()?) };
        let ce = match labeled {
            Some((emb, labels)) => {
                let emb = self.embeddings(emb, "emb_l")?;
                let labels = self.labels(labels, emb.size()[0], "labels_l", "emb_l")?;
                validate::label_range(&labels.1, self.num_basis(), "labels_l", "num_basis")?;
                let r = emb.f_mm(&w.f_tr()?)?;
                r.f_cross_entropy_loss(&labels.0, None::<Tensor>, Reduction::Mean, -100, 0.0)?
            }
            None => zero()?,
        };
        let reg = match unlabeled {
            Some((emb, pseudo)) => {
                let emb = self.embeddings(emb, "emb_u")?;
                let pseudo = self.labels(pseudo, emb.size()[0], "pseudo_u", "emb_u")?;
                if pseudo.1.iter().any(|&l| l < 0) {
                    bail!(
                        Value,
                        "pseudo_u contains negative labels; pseudo labels are cluster ids >= 0"
                    );
                }
                let r = emb.f_mm(&w.f_tr()?)?;
                self.regularizer(&r, &pseudo, train)?
            }
            None => zero()?,
        };
        Ok(BasisLoss {
            total: ce.f_add(&reg)?,
            parts: vec![("ce".to_string(), ce), (self.config.regularizer.name().to_string(), reg)],
        })
    }

    /// Labels as (int64 tensor on the weight's device, host values).
    fn labels(&self, labels: &Tensor, n: i64, name: &str, of: &str) -> Result<(Tensor, Vec<i64>)> {
        let host = validate::labels(labels, n as usize, name, of)?;
        validate::same_device(labels, name, &self.state.weight, "the basis weight")?;
        Ok((labels.f_to_kind(Kind::Int64)?, host))
    }

    /// L_reg of the unlabeled representations `r`, and the running-statistics update.
    fn regularizer(&self, r: &Tensor, pseudo: &(Tensor, Vec<i64>), train: bool) -> Result<Tensor> {
        let s = cosine_matrix(r)?;
        let (pos, neg) = pair_statistics(&s, &pseudo.0, &pseudo.1)?;
        let beta = self.config.momentum;
        let st = &self.state;
        let blended_pos =
            pos.as_ref().map(|b| blend(b, &st.mu_pos, &st.var_pos, &st.updates_pos, beta));
        let blended_neg =
            neg.as_ref().map(|b| blend(b, &st.mu_neg, &st.var_neg, &st.updates_neg, beta));
        let (blended_pos, blended_neg) = (blended_pos.transpose()?, blended_neg.transpose()?);
        let (pos, neg) = match self.config.sd_statistics {
            SdStatistics::Batch => (pos, neg),
            SdStatistics::Blended => (
                blended_pos.as_ref().map(SideStatistics::shallow),
                blended_neg.as_ref().map(SideStatistics::shallow),
            ),
        };
        let zero = r.f_sum(r.kind())?.f_mul_scalar(0.0)?.f_abs()?;
        let loss = match self.config.regularizer {
            Regularizer::Sd => {
                let mut loss = zero;
                for side in [&pos, &neg].into_iter().flatten() {
                    loss = loss.f_add(&side.var)?;
                }
                if let (Some(p), Some(n)) = (&pos, &neg) {
                    let gap = p.mean.f_sub(&n.mean)?;
                    let hinge = gap.f_neg()?.f_add_scalar(self.config.sd_margin)?.f_relu()?;
                    loss = loss.f_add(&hinge.f_mul_scalar(self.config.sd_weight)?)?;
                }
                loss
            }
            Regularizer::GlobalCe | Regularizer::LocalCe => self.pseudo_ce(r, pseudo)?,
        };
        if train {
            let _guard = tch::no_grad_guard();
            for (side, mu, var, updates) in [
                (&blended_pos, &st.mu_pos, &st.var_pos, &st.updates_pos),
                (&blended_neg, &st.mu_neg, &st.var_neg, &st.updates_neg),
            ] {
                if let Some(side) = side {
                    let (mut mu, mut var, mut updates) =
                        (mu.shallow_clone(), var.shallow_clone(), updates.shallow_clone());
                    mu.f_copy_(&side.mean.f_detach()?)?;
                    var.f_copy_(&side.var.f_detach()?)?;
                    let _ = updates.f_add_scalar_(1)?;
                }
            }
        }
        Ok(loss)
    }

    /// Cross-entropy of H r against the pseudo labels, over all pseudo classes
    /// ("global_ce") or over those present in the batch ("local_ce").
    fn pseudo_ce(&self, r: &Tensor, pseudo: &(Tensor, Vec<i64>)) -> Result<Tensor> {
        let head = self.state.pseudo_head.as_ref().ok_or_else(|| {
            SladeError::Value("this basis has no pseudo_head (regularizer \"sd\")".into())
        })?;
        let k = head.size()[0] as usize;
        validate::label_range(&pseudo.1, k, "pseudo_u", "num_pseudo_classes")?;
        let logits = r.f_mm(&head.f_tr()?)?;
        let (logits, targets) = if self.config.regularizer == Regularizer::LocalCe {
            let present: BTreeMap<i64, i64> = {
                let mut classes: Vec<i64> = pseudo.1.clone();
                classes.sort_unstable();
                classes.dedup();
                classes.into_iter().enumerate().map(|(i, c)| (c, i as i64)).collect()
            };
            let columns: Vec<i64> = present.keys().copied().collect();
            let targets: Vec<i64> = pseudo.1.iter().map(|c| present[c]).collect();
            let device = r.device();
            let columns = Tensor::f_from_slice(&columns)?.f_to_device(device)?;
            (
                logits.f_index_select(1, &columns)?,
                Tensor::f_from_slice(&targets)?.f_to_device(device)?,
            )
        } else {
            (logits, pseudo.0.shallow_clone())
        };
        Ok(logits.f_cross_entropy_loss(&targets, None::<Tensor>, Reduction::Mean, -100, 0.0)?)
    }
}

/// `shape` tensor drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), requiring grad.
fn uniform(shape: [i64; 2], device: Device) -> Result<Tensor> {
    let bound = 1.0 / (shape[1] as f64).sqrt();
    let mut t = Tensor::f_empty(shape, (Kind::Float, device))?;
    let _ = t.f_uniform_(-bound, bound)?;
    Ok(t.set_requires_grad(true))
}

/// cos(r_i, r_j) for all rows, each row scaled by 1 / max(|r|, 1e-12).
pub(crate) fn cosine_matrix(r: &Tensor) -> Result<Tensor> {
    let norms = r.f_square()?.f_sum_dim_intlist(1, true, r.kind())?.f_sqrt()?.f_clamp_min(1e-12)?;
    let unit = r.f_div(&norms)?;
    Ok(unit.f_mm(&unit.f_tr()?)?)
}

/// Mean and population variance of `s` over the positive and the negative pairs i < j
/// (None for a side without pairs).
fn pair_statistics(
    s: &Tensor,
    pseudo: &Tensor,
    pseudo_host: &[i64],
) -> Result<(Option<SideStatistics>, Option<SideStatistics>)> {
    let n = pseudo_host.len() as i64;
    let mut sizes: BTreeMap<i64, i64> = BTreeMap::new();
    for &label in pseudo_host {
        *sizes.entry(label).or_default() += 1;
    }
    let positives: i64 = sizes.values().map(|&c| c * (c - 1) / 2).sum();
    let negatives = n * (n - 1) / 2 - positives;
    let upper = Tensor::f_ones([n, n], (Kind::Bool, s.device()))?.f_triu(1)?;
    let same = pseudo.f_unsqueeze(1)?.f_eq_tensor(&pseudo.f_unsqueeze(0)?)?;
    let side = |mask: Tensor, count: i64| -> Result<Option<SideStatistics>> {
        if count == 0 {
            return Ok(None);
        }
        let values = s.f_masked_select(&mask.f_logical_and(&upper)?)?;
        let mean = values.f_mean(values.kind())?;
        let var = values.f_sub(&mean)?.f_square()?.f_mean(values.kind())?;
        Ok(Some(SideStatistics { mean, var }))
    };
    Ok((side(same.shallow_clone(), positives)?, side(same.f_logical_not()?, negatives)?))
}

/// (1 - beta) batch + beta running (the running part detached), or the batch statistics
/// alone while the side has never been updated: the next running values, and the statistics
/// of `SdStatistics::Blended`.
fn blend(
    batch: &SideStatistics,
    mu: &Tensor,
    var: &Tensor,
    updates: &Tensor,
    beta: f64,
) -> Result<SideStatistics> {
    if updates.f_int64_value(&[])? == 0 {
        return Ok(batch.shallow());
    }
    let mix = |b: &Tensor, running: &Tensor| -> Result<Tensor> {
        let running = running.f_detach()?.f_to_kind(b.kind())?;
        Ok(b.f_mul_scalar(1.0 - beta)?.f_add(&running.f_mul_scalar(beta)?)?)
    };
    Ok(SideStatistics { mean: mix(&batch.mean, mu)?, var: mix(&batch.var, var)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basis(regularizer: Regularizer, k: Option<usize>) -> FeatureBasis {
        tch::manual_seed(0);
        let config = BasisConfig { regularizer, ..Default::default() };
        FeatureBasis::new(4, 6, k, config, Device::Cpu).unwrap()
    }

    #[test]
    fn sd_loss_matches_its_definition_and_updates_statistics() {
        let b = basis(Regularizer::Sd, None);
        let emb = Tensor::randn([5, 6], (Kind::Float, Device::Cpu));
        let pseudo = Tensor::from_slice(&[0i64, 0, 1, 1, 1]);
        let s = b.similarity(&emb).unwrap();
        let pairs = |same: bool| -> Vec<f64> {
            let labels = [0, 0, 1, 1, 1];
            let mut v = Vec::new();
            for i in 0..5 {
                for j in i + 1..5 {
                    if (labels[i] == labels[j]) == same {
                        v.push(s.double_value(&[i as i64, j as i64]));
                    }
                }
            }
            v
        };
        let stats = |v: Vec<f64>| {
            let m = v.iter().sum::<f64>() / v.len() as f64;
            (m, v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len() as f64)
        };
        let (mp, vp) = stats(pairs(true));
        let (mn, vn) = stats(pairs(false));
        let loss = b.loss(None, Some((&emb, &pseudo)), true).unwrap();
        let expected = vp + vn + (0.5 - (mp - mn)).max(0.0);
        assert!((loss.total.double_value(&[]) - expected).abs() < 1e-5);
        assert!((b.state.mu_pos.double_value(&[]) - mp).abs() < 1e-5);
        assert_eq!(b.state.updates_neg.int64_value(&[]), 1);
        // Second call: the batch statistics again, whatever the running ones are.
        let again = b.loss(None, Some((&emb, &pseudo)), false).unwrap();
        assert!((again.total.double_value(&[]) - expected).abs() < 1e-5);
        assert_eq!(b.state.updates_pos.int64_value(&[]), 1);
    }

    /// The weight gradient of L_SD (variance terms only: sd_weight 0) on a second call, from
    /// the given weight and embeddings (tests share torch's global generator across threads,
    /// so both bases are built from the same draws).
    fn sd_gradient(statistics: SdStatistics, weight: &Tensor, emb: &Tensor) -> Tensor {
        let config =
            BasisConfig { sd_weight: 0.0, sd_statistics: statistics, ..Default::default() };
        let mut b = FeatureBasis::new(4, 6, None, config, Device::Cpu).unwrap();
        b.state.weight = weight.copy().set_requires_grad(true);
        let pseudo = Tensor::from_slice(&[0i64, 0, 1, 1, 2, 2]);
        b.loss(None, Some((emb, &pseudo)), true).unwrap();
        let loss = b.loss(None, Some((emb, &pseudo)), true).unwrap();
        let grad = Tensor::run_backward(&[&loss.total], &[&b.state.weight], false, false);
        grad[0].shallow_clone()
    }

    #[test]
    fn blended_statistics_damp_the_gradient_by_one_minus_beta() {
        let weight = Tensor::randn([4, 6], (Kind::Float, Device::Cpu));
        let emb = Tensor::randn([6, 6], (Kind::Float, Device::Cpu));
        let full = sd_gradient(SdStatistics::Batch, &weight, &emb);
        let damped = sd_gradient(SdStatistics::Blended, &weight, &emb);
        assert!(full.abs().max().double_value(&[]) > 1e-4);
        let ratio = (damped - &full * 0.01).abs().max().double_value(&[]);
        assert!(ratio < 1e-7, "blended gradient is not 1% of the batch one: {ratio}");
        assert!("blend".parse::<SdStatistics>().is_err());
    }

    #[test]
    fn bad_inputs_are_errors() {
        let b = basis(Regularizer::Sd, None);
        let emb = Tensor::randn([3, 6], (Kind::Float, Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, 4, 1]);
        assert!(matches!(b.loss(Some((&emb, &labels)), None, true), Err(SladeError::Value(_))));
        let wrong_dim = Tensor::randn([3, 5], (Kind::Float, Device::Cpu));
        assert!(matches!(b.representation(&wrong_dim), Err(SladeError::Shape(_))));
        assert!(matches!(b.loss(None, None, true), Err(SladeError::Value(_))));
        let config = BasisConfig { regularizer: Regularizer::GlobalCe, ..Default::default() };
        assert!(FeatureBasis::new(4, 6, None, config, Device::Cpu).is_err());
    }
}
