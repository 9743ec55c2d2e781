//! The SLADE student (Sec 3.3, DESIGN.md §2.4) as an [`Objective`]:
//!
//!   L = L_rank(labeled) + lambda1 * L_rank(unlabeled pairs) + lambda2 * L_Basis
//!
//! Per step:
//! 1. The labeled and the unlabeled images are concatenated and embedded in one forward
//!    pass in training mode, so BatchNorm normalises with the statistics of the joint batch
//!    (our choice; the paper does not say).
//! 2. L_rank(labeled): the ranking loss (contrastive or multi-similarity, with or without
//!    the multi-similarity miner) on the labeled embeddings, as the teacher's.
//! 3. L_Basis = L_CE + L_reg of the feature basis W_a (`crate::basis::FeatureBasis`): L_CE
//!    on the labeled embeddings and labels, L_reg ("sd", "global_ce" or "local_ce") on the
//!    unlabeled embeddings and pseudo labels. In training mode it updates the running
//!    statistics mu+/var+/mu-/var- (buffers `basis.*`).
//! 4. The unlabeled pairs: with variant "basis_mining", P = {s >= T1} and N = {s <= T2} of
//!    the basis similarity s(i, j) = cos(W_a f_i, W_a f_j), a positive also sharing its
//!    pseudo label and a negative not (`require_pseudo_agreement`); otherwise all pairs by
//!    pseudo label. T1/T2 are numbers or rules read from the running statistics after
//!    step 3's momentum update: "mu+", "mu-", "mid" = (mu+ + mu-)/2,
//!    "all" (no test on that side: T1 = -2, T2 = 2, outside the range of a cosine) and
//!    "auto" = [`ThresholdRule::AUTO`] (the miner's [`ThresholdRule`]). A rule whose
//!    statistic no batch has defined yet mines no pair of that side.
//! 5. L_rank(unlabeled) on those pairs, with the labeled loss's kind (contrastive or
//!    multi-similarity; no multi-similarity miner on top).
//!
//! Variants (the paper's ablation): "pseudo_only" (no basis, no mining: the unlabeled
//! ranking loss over all pairs by pseudo label), "basis" (+ L_Basis, unlabeled pairs still
//! all pseudo pairs), "basis_mining" (+ mining; the full method). Research bounds
//! of that mining (`mining`): "oracle" keeps the pseudo pairs the hidden labels confirm,
//! "random" as many pseudo pairs per side as basis mining keeps, drawn at random.
//! Warm-up: for the first `basis_warmup` updates the backbone is frozen (no gradient, BatchNorm in evaluation mode)
//! and the embedding head is not updated, so only the basis (W_a, and H for the CE
//! regularisers) trains. In fp16 mode only the network runs under autocast; losses, basis
//! and mining run in float32.
//!
//! Steps 2-5 are [`StudentObjective`], callable on its own on the embeddings of any model
//! (`slade.StudentLoss`); [`Student`] is it on the embeddings of step 1.

use super::ranking::{pair_counts, read_scalars, RankingConfig, RankingLoss};
use super::teacher::check_labeled;
use super::{Metrics, Objective, StepContext, BASIS_GROUP};
use crate::bail;
use crate::basis::{BasisConfig, BasisState, FeatureBasis, Regularizer, SdStatistics};
use crate::error::{Result, SladeError};
use crate::losses::PairMasks;
use crate::mining::{basis_pair_masks, Side, ThresholdRule};
use crate::nn::layers::Builder;
use crate::nn::store::uniform;
use crate::nn::{Model, HEAD_PREFIX};
use crate::settings::{invalid, Settings};
use crate::validate;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use tch::{Kind, Tensor};

/// Prefix of the basis' parameters and buffers (`basis.weight`, `basis.mu_pos`, ...; the
/// names of `slade.FeatureBasis`'s state after the prefix).
pub const BASIS_PREFIX: &str = "basis";

crate::named_choice! {
    /// How the unlabeled pairs of "basis_mining" are chosen: the method's, or a research bound.
    pub enum Mining ("mining") {
        /// P = {s >= T1}, N = {s <= T2} of the basis similarity (the method).
        Basis = "basis",
        /// The pseudo pairs that the hidden labels (`StudentBatch::true_labels`) confirm: an
        /// upper bound on what any filter of the pseudo pairs can do.
        Oracle = "oracle",
        /// As many pseudo pairs of each side as basis mining keeps in this batch, drawn
        /// uniformly: what filtering by chance at the same kept fraction does.
        Random = "random",
    }
}

crate::named_choice! {
    /// Which parts of the method run (the paper's ablation).
    pub enum Variant ("variant") {
        PseudoOnly = "pseudo_only",
        Basis = "basis",
        BasisMining = "basis_mining",
    }
}

/// Settings of the student objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StudentObjectiveConfig {
    /// The ranking loss of both the labeled and the unlabeled pairs.
    pub ranking: RankingConfig,
    /// B, the number of basis vectors (at least the number of labeled classes; labels in
    /// [0, B)). Needed by every variant but "pseudo_only".
    pub num_basis: Option<i64>,
    pub variant: Variant,
    /// Weight of the unlabeled ranking loss.
    pub lambda1: f64,
    /// Weight of L_Basis.
    pub lambda2: f64,
    /// Updates during which only the basis trains.
    pub basis_warmup: i64,
    pub regularizer: Regularizer,
    /// k of the pseudo labels, for the CE regularisers.
    pub num_pseudo_classes: Option<i64>,
    /// Momentum beta of the running statistics.
    pub momentum: f64,
    pub sd_margin: f64,
    pub sd_weight: f64,
    pub t1: ThresholdRule,
    pub t2: ThresholdRule,
    pub require_pseudo_agreement: bool,
    pub sd_statistics: SdStatistics,
    pub mining: Mining,
}

impl Default for StudentObjectiveConfig {
    /// DESIGN.md §2.4: the full method, lambda1 = lambda2 = 1, no warm-up, L_SD with the
    /// basis defaults of [`BasisConfig`], T1/T2 "auto", pseudo-label agreement required.
    fn default() -> Self {
        let basis = BasisConfig::default();
        StudentObjectiveConfig {
            ranking: RankingConfig::default(),
            num_basis: None,
            variant: Variant::BasisMining,
            lambda1: 1.0,
            lambda2: 1.0,
            basis_warmup: 0,
            regularizer: basis.regularizer,
            num_pseudo_classes: None,
            momentum: basis.momentum,
            sd_margin: basis.sd_margin,
            sd_weight: basis.sd_weight,
            t1: ThresholdRule::Auto,
            t2: ThresholdRule::Auto,
            require_pseudo_agreement: true,
            sd_statistics: basis.sd_statistics,
            mining: Mining::Basis,
        }
    }
}

impl StudentObjectiveConfig {
    /// The feature basis' settings.
    pub fn basis_config(&self) -> BasisConfig {
        BasisConfig {
            momentum: self.momentum,
            sd_margin: self.sd_margin,
            sd_weight: self.sd_weight,
            regularizer: self.regularizer,
            sd_statistics: self.sd_statistics,
        }
    }
}

impl Settings for StudentObjectiveConfig {
    const WHAT: &'static str = "student";

    /// The ranking loss' and the basis' rules, and those of the student's own settings.
    /// `num_basis` and `num_pseudo_classes` may be left unset here (the pipeline derives
    /// them from the data); `Student::new` requires them where they are used.
    fn validate(&self) -> Result<()> {
        self.ranking.validate()?;
        self.basis_config().validate()?;
        for (value, name) in [(self.lambda1, "lambda1"), (self.lambda2, "lambda2")] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(invalid(name, "a finite number >= 0", value));
            }
        }
        if self.basis_warmup < 0 {
            return Err(invalid("basis_warmup", ">= 0", self.basis_warmup));
        }
        if self.variant == Variant::PseudoOnly && self.basis_warmup > 0 {
            bail!(
                Config,
                "basis_warmup needs a feature basis; variant \"pseudo_only\" has none (use \
                 \"basis\" or \"basis_mining\", or basis_warmup=0)"
            );
        }
        if self.mining != Mining::Basis && self.variant != Variant::BasisMining {
            bail!(
                Config,
                "mining \"{}\" replaces the basis mining of variant \"basis_mining\"; variant \
                 \"{}\" mines no pairs",
                self.mining,
                self.variant
            );
        }
        for (value, name) in
            [(self.num_basis, "num_basis"), (self.num_pseudo_classes, "num_pseudo_classes")]
        {
            if let Some(count) = value.filter(|&count| count < 1) {
                return Err(invalid(name, "a positive integer", count));
            }
        }
        for (rule, name) in [(self.t1, "t1"), (self.t2, "t2")] {
            if let ThresholdRule::Value(v) = rule {
                ThresholdRule::value_as(v, name)?;
            }
        }
        Ok(())
    }
}

/// Labeled images and labels, unlabeled images and pseudo labels. Images on the model's
/// device with one size; labels of any integer dtype on any device (moved as PML does).
pub struct StudentBatch {
    pub labeled_images: Tensor,
    pub labels: Tensor,
    pub unlabeled_images: Tensor,
    pub pseudo_labels: Tensor,
    /// Hidden true labels of the unlabeled images, for `mining = "oracle"` only.
    pub true_labels: Option<Tensor>,
}

/// The embeddings of a student batch with their labels: what [`StudentObjective::loss`]
/// takes. Labels of any integer dtype on any device (moved as PML does).
pub struct StudentEmbeddings<'a> {
    pub labeled: &'a Tensor,
    pub labels: &'a Tensor,
    pub unlabeled: &'a Tensor,
    pub pseudo_labels: &'a Tensor,
    /// Hidden true labels of the unlabeled samples, for `mining = "oracle"` only.
    pub true_labels: Option<&'a Tensor>,
}

/// The names of the labeled and the unlabeled embeddings in errors of
/// [`StudentObjective::loss`].
const EMBEDDING_NAMES: [&str; 2] = ["emb_labeled", "emb_unlabeled"];

/// The student objective on given embeddings: its settings, ranking loss and feature basis
/// (absent for "pseudo_only"). [`Student`] runs it on the embeddings of its model; it also
/// runs on embeddings of any model (the Python `slade.StudentLoss`).
pub struct StudentObjective {
    config: StudentObjectiveConfig,
    ranking: RankingLoss,
    basis: Option<FeatureBasis>,
}

impl StudentObjective {
    /// The objective over existing basis state (used in place: the running statistics are
    /// updated in the owner's tensors). Checks the settings and that the state matches
    /// them: a basis of `num_basis` rows for every variant but "pseudo_only" (none for it),
    /// and a pseudo head of `num_pseudo_classes` rows for the CE regularisers.
    pub fn from_parts(config: StudentObjectiveConfig, basis: Option<BasisState>) -> Result<Self> {
        config.validate()?;
        let ranking = RankingLoss::from_config(&config.ranking)?;
        let basis = match (config.variant, basis) {
            (Variant::PseudoOnly, None) => None,
            (Variant::PseudoOnly, Some(_)) => {
                bail!(
                    Value,
                    "variant \"pseudo_only\" has no feature basis, but a basis state was given"
                )
            }
            (variant, None) => {
                bail!(Value, "variant \"{variant}\" needs a feature basis, but none was given")
            }
            (_, Some(state)) => Some(Self::basis_over(&config, state)?),
        };
        Ok(StudentObjective { config, ranking, basis })
    }

    fn basis_over(config: &StudentObjectiveConfig, state: BasisState) -> Result<FeatureBasis> {
        let basis = FeatureBasis::from_parts(config.basis_config(), state)?;
        let rows = basis.num_basis() as i64;
        if config.num_basis != Some(rows) {
            bail!(
                Value,
                "the basis weight has {rows} rows but num_basis is {:?}; they must match",
                config.num_basis
            );
        }
        if let (Some(head), Some(k)) = (&basis.state.pseudo_head, config.num_pseudo_classes) {
            if head.size()[0] != k {
                bail!(
                    Value,
                    "the pseudo_head has {} rows but num_pseudo_classes is {k}; they must match",
                    head.size()[0]
                );
            }
        }
        Ok(basis)
    }

    pub fn settings(&self) -> &StudentObjectiveConfig {
        &self.config
    }

    pub fn variant(&self) -> Variant {
        self.config.variant
    }

    /// The feature basis (None for "pseudo_only").
    pub fn basis(&self) -> Option<&FeatureBasis> {
        self.basis.as_ref()
    }

    /// The (T1, T2) rules in use ("auto" resolved).
    pub fn threshold_rules(&self) -> (ThresholdRule, ThresholdRule) {
        (self.config.t1.on_side(Side::T1), self.config.t2.on_side(Side::T2))
    }

    /// Whether the update after `step` updates belongs to the basis warm-up.
    pub fn warming_up(&self, step: i64) -> bool {
        step < self.config.basis_warmup
    }

    /// The objective and its metrics on `emb` (labeled rows `emb.labeled`, unlabeled rows
    /// `emb.unlabeled`, any floating dtype, one device, the basis' dim), checked first;
    /// errors name the argument. `train` updates the running statistics. `warming_up`
    /// detaches the embeddings, so that only the basis receives gradients (the warm-up's
    /// "backbone frozen, head not updated"); the metrics then hold `warmup` = 1.
    pub fn loss(
        &self,
        emb: &StudentEmbeddings,
        train: bool,
        warming_up: bool,
    ) -> Result<(Tensor, Metrics)> {
        self.check_embeddings(emb.labeled, emb.unlabeled)?;
        let n = [emb.labeled.size()[0], emb.unlabeled.size()[0]];
        self.check_labels(emb.labels, emb.pseudo_labels, emb.true_labels, n, EMBEDDING_NAMES)?;
        let device = emb.labeled.device();
        let labels = emb.labels.f_to_device(device)?.f_to_kind(Kind::Int64)?;
        let pseudo = emb.pseudo_labels.f_to_device(device)?.f_to_kind(Kind::Int64)?;
        let (fl, fu) = if warming_up {
            (emb.labeled.f_detach()?, emb.unlabeled.f_detach()?)
        } else {
            (emb.labeled.shallow_clone(), emb.unlabeled.shallow_clone())
        };
        let (loss, mut metrics) = self.terms(&fl, &labels, &fu, &pseudo, emb.true_labels, train)?;
        metrics.insert("warmup".into(), if warming_up { 1.0 } else { 0.0 });
        Ok((loss, metrics))
    }

    /// Checks the labeled and unlabeled embeddings: 2-D floating, on one device with the
    /// basis, of the basis' dim, finite (read last, so that a device error comes first).
    fn check_embeddings(&self, labeled: &Tensor, unlabeled: &Tensor) -> Result<()> {
        let names = EMBEDDING_NAMES;
        validate::matrix(labeled, names[0])?;
        validate::matrix(unlabeled, names[1])?;
        validate::same_device(unlabeled, names[1], labeled, names[0])?;
        validate::same_dim(unlabeled, names[1], labeled, names[0])?;
        if let Some(basis) = &self.basis {
            validate::same_device(labeled, names[0], &basis.state.weight, "the basis W_a")?;
            let dim = labeled.size()[1];
            if dim as usize != basis.dim() {
                bail!(
                    Shape,
                    "the embeddings have dim {dim} but the feature basis has dim {}; build the \
                     loss with the model's embedding dim",
                    basis.dim()
                );
            }
        }
        validate::finite(labeled, names[0])?;
        validate::finite(unlabeled, names[1])
    }

    /// Checks the labels of `n[0]` labeled and the pseudo (and true) labels of `n[1]`
    /// unlabeled samples, whose tensors `of` names.
    fn check_labels(
        &self,
        labels: &Tensor,
        pseudo_labels: &Tensor,
        true_labels: Option<&Tensor>,
        n: [i64; 2],
        of: [&str; 2],
    ) -> Result<()> {
        validate::label_tensor(labels, n[0] as usize, "labels", of[0])?;
        let pseudo = validate::labels(pseudo_labels, n[1] as usize, "pseudo_labels", of[1])?;
        if let Some(&bad) = pseudo.iter().find(|&&l| l < 0) {
            bail!(Value, "pseudo_labels contains {bad}; pseudo labels are cluster ids >= 0");
        }
        if let Some(truth) = true_labels {
            validate::labels(truth, pseudo.len(), "true_labels", of[1])?;
        }
        let Some(basis) = &self.basis else {
            return Ok(());
        };
        let labels = validate::labels(labels, n[0] as usize, "labels", of[0])?;
        validate::label_range(
            &labels,
            basis.num_basis(),
            "labels",
            "num_basis, one basis vector per labeled class; map the labels to 0..num_basis-1",
        )?;
        if let Some(head) = &basis.state.pseudo_head {
            validate::label_range(
                &pseudo,
                head.size()[0] as usize,
                "pseudo_labels",
                "num_pseudo_classes",
            )?;
        }
        Ok(())
    }

    /// The loss terms of the labeled embeddings `fl` with `labels` and the unlabeled `fu`
    /// with `pseudo` (labels int64 on the embeddings' device, inputs checked).
    fn terms(
        &self,
        fl: &Tensor,
        labels: &Tensor,
        fu: &Tensor,
        pseudo: &Tensor,
        true_labels: Option<&Tensor>,
        train: bool,
    ) -> Result<(Tensor, Metrics)> {
        let mut scalars: Vec<(String, Tensor)> = Vec::new();
        let mut metrics = Metrics::new();

        let (rank_labeled, labeled_masks) = self.ranking.labeled(fl, labels)?;
        let (pos, neg) = pair_counts(&labeled_masks)?;
        scalars.push(("loss/rank_labeled".into(), rank_labeled.shallow_clone()));
        scalars.push(("pairs/labeled_positive".into(), pos));
        scalars.push(("pairs/labeled_negative".into(), neg));
        let mut total = rank_labeled;

        let unlabeled_masks = match &self.basis {
            None => PairMasks::from_labels(pseudo)?,
            Some(basis) => {
                let basis_loss = basis.loss(Some((fl, labels)), Some((fu, pseudo)), train)?;
                for (name, value) in &basis_loss.parts {
                    scalars.push((format!("loss/{name}"), value.shallow_clone()));
                }
                scalars.push(("loss/basis".into(), basis_loss.total.shallow_clone()));
                total = total.f_add(&basis_loss.total.f_mul_scalar(self.config.lambda2)?)?;
                let st = &basis.state;
                for (name, t) in [
                    ("mu_pos", &st.mu_pos),
                    ("var_pos", &st.var_pos),
                    ("mu_neg", &st.mu_neg),
                    ("var_neg", &st.var_neg),
                ] {
                    scalars.push((format!("basis/{name}"), t.shallow_clone()));
                }
                if self.config.variant == Variant::BasisMining {
                    self.mined_pairs(basis, fu, pseudo, true_labels, &mut scalars, &mut metrics)?
                } else {
                    PairMasks::from_labels(pseudo)?
                }
            }
        };
        let rank_unlabeled = self.ranking.on_masks(fu, &unlabeled_masks)?;
        let (pos, neg) = pair_counts(&unlabeled_masks)?;
        scalars.push(("loss/rank_unlabeled".into(), rank_unlabeled.shallow_clone()));
        scalars.push(("pairs/positive".into(), pos));
        scalars.push(("pairs/negative".into(), neg));
        total = total.f_add(&rank_unlabeled.f_mul_scalar(self.config.lambda1)?)?;
        read_scalars(&mut metrics, scalars)?;
        Ok((total, metrics))
    }

    /// The unlabeled pairs of "basis_mining": T1/T2 from the running statistics, basis
    /// mining, then the research bound of `self.mining`; records thresholds and counts.
    fn mined_pairs(
        &self,
        basis: &FeatureBasis,
        fu: &Tensor,
        pseudo: &Tensor,
        true_labels: Option<&Tensor>,
        scalars: &mut Vec<(String, Tensor)>,
        metrics: &mut Metrics,
    ) -> Result<PairMasks> {
        let (mu_pos, mu_neg) = basis.running_means()?;
        let t1 = self.config.t1.resolve(Side::T1, mu_pos, mu_neg);
        let t2 = self.config.t2.resolve(Side::T2, mu_pos, mu_neg);
        for (name, t) in [("threshold/t1", t1), ("threshold/t2", t2)] {
            if let Some(value) = t {
                metrics.insert(name.into(), value);
            }
        }
        let similarity = tch::no_grad(|| basis.similarity(&fu.f_detach()?))?;
        let mined = basis_pair_masks(
            &similarity,
            Some(pseudo),
            t1,
            t2,
            self.config.require_pseudo_agreement,
        )?;
        let all = PairMasks::from_labels(pseudo)?;
        let (pos, neg) = pair_counts(&all)?;
        scalars.push(("pairs/pseudo_positive".into(), pos));
        scalars.push(("pairs/pseudo_negative".into(), neg));
        self.bound(mined, all, true_labels)
    }

    /// The pairs of `self.mining` given the basis-mined ones and `all` pseudo pairs.
    fn bound(
        &self,
        mined: PairMasks,
        all: PairMasks,
        true_labels: Option<&Tensor>,
    ) -> Result<PairMasks> {
        let _guard = tch::no_grad_guard();
        match self.config.mining {
            Mining::Basis => Ok(mined),
            Mining::Oracle => {
                let Some(truth) = true_labels else {
                    bail!(Value, "mining \"oracle\" needs the true_labels of the unlabeled batch");
                };
                let truth = truth.f_to_device(all.pos.device())?.f_to_kind(Kind::Int64)?;
                let same = truth.f_unsqueeze(1)?.f_eq_tensor(&truth.f_unsqueeze(0)?)?;
                Ok(PairMasks {
                    pos: all.pos.f_logical_and(&same)?,
                    neg: all.neg.f_logical_and(&same.f_logical_not()?)?,
                })
            }
            Mining::Random => Ok(PairMasks {
                pos: random_subset(&all.pos, &mined.pos)?,
                neg: random_subset(&all.neg, &mined.neg)?,
            }),
        }
    }
}

/// The student trainer's objective: [`StudentObjective`] on the embeddings of the model,
/// which embeds the labeled and the unlabeled images in one forward pass.
pub struct Student {
    objective: StudentObjective,
}

impl Student {
    /// Checks the settings and registers the basis with the builder (group "basis"): W_a
    /// (`basis.weight`, B x dim) and, for the CE regularisers, H (`basis.pseudo_head`,
    /// k x B), both drawn as torch.nn.Linear's weight; the running statistics as buffers.
    pub fn new(
        config: StudentObjectiveConfig,
        builder: &mut Builder,
        model: &Model,
    ) -> Result<Self> {
        config.validate()?;
        let basis = if config.variant == Variant::PseudoOnly {
            None
        } else {
            Some(Self::register_basis(&config, builder, model)?)
        };
        Ok(Student { objective: StudentObjective::from_parts(config, basis)? })
    }

    fn register_basis(
        config: &StudentObjectiveConfig,
        builder: &mut Builder,
        model: &Model,
    ) -> Result<BasisState> {
        let Some(b) = config.num_basis else {
            bail!(
                Config,
                "num_basis must be set for variant \"{}\": the number of basis vectors, at \
                 least the number of labeled classes",
                config.variant
            );
        };
        let dim = model.config().dim;
        builder.group = BASIS_GROUP.into();
        let weight_init = uniform(builder.rng, &[b, dim], 1.0 / (dim as f64).sqrt())?;
        let weight = builder.parameter(BASIS_PREFIX, "weight", weight_init)?;
        let pseudo_head = match (config.regularizer, config.num_pseudo_classes) {
            (Regularizer::Sd, _) => None,
            (_, Some(k)) => {
                let init = uniform(builder.rng, &[k, b], 1.0 / (b as f64).sqrt())?;
                Some(builder.parameter(BASIS_PREFIX, "pseudo_head", init)?)
            }
            (regularizer, None) => bail!(
                Config,
                "num_pseudo_classes must be set for regularizer \"{regularizer}\" (the k of \
                 the pseudo labels, >= 1)"
            ),
        };
        let opts = |kind| (kind, tch::Device::Cpu);
        let mut buffer = |name: &str, kind: Kind| -> Result<Tensor> {
            builder.buffer(BASIS_PREFIX, name, Tensor::f_zeros([], opts(kind))?)
        };
        Ok(BasisState {
            weight,
            pseudo_head,
            mu_pos: buffer("mu_pos", Kind::Float)?,
            var_pos: buffer("var_pos", Kind::Float)?,
            mu_neg: buffer("mu_neg", Kind::Float)?,
            var_neg: buffer("var_neg", Kind::Float)?,
            updates_pos: buffer("updates_pos", Kind::Int64)?,
            updates_neg: buffer("updates_neg", Kind::Int64)?,
        })
    }

    /// The objective on given embeddings, over this trainer's basis.
    pub fn objective(&self) -> &StudentObjective {
        &self.objective
    }

    pub fn settings(&self) -> &StudentObjectiveConfig {
        self.objective.settings()
    }

    pub fn variant(&self) -> Variant {
        self.objective.variant()
    }

    /// The feature basis (None for "pseudo_only").
    pub fn basis(&self) -> Option<&FeatureBasis> {
        self.objective.basis()
    }

    /// The (T1, T2) rules in use ("auto" resolved).
    pub fn threshold_rules(&self) -> (ThresholdRule, ThresholdRule) {
        self.objective.threshold_rules()
    }

    /// The loss terms of the embeddings `f` (float32, labeled rows first) at update `step`.
    fn terms(&self, f: &Tensor, batch: &StudentBatch, step: i64) -> Result<(Tensor, Metrics)> {
        match validate::finite(f, "embeddings") {
            Err(SladeError::NonFinite(_)) => bail!(
                NonFinite,
                "the embeddings are NaN or Inf in step {}; the parameters were not updated \
                 (lower the learning rate, enable clip_grad_norm, check the batch, or set \
                 optimizer.nonfinite=\"skip\" to skip such steps)",
                step + 1
            ),
            other => other?,
        }
        let n_labeled = batch.labeled_images.size()[0];
        let n_unlabeled = batch.unlabeled_images.size()[0];
        let device = f.device();
        let fl = f.f_narrow(0, 0, n_labeled)?;
        let fu = f.f_narrow(0, n_labeled, n_unlabeled)?;
        let labels = batch.labels.f_to_device(device)?.f_to_kind(Kind::Int64)?;
        let pseudo = batch.pseudo_labels.f_to_device(device)?.f_to_kind(Kind::Int64)?;
        let truth = batch.true_labels.as_ref();
        self.objective.terms(&fl, &labels, &fu, &pseudo, truth, true)
    }
}

impl Objective for Student {
    type Batch = StudentBatch;
    const KIND: &'static str = "student";
    const GROUPS: &'static [&'static str] = &[BASIS_GROUP];

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(self.settings()).expect("plain settings serialise")
    }

    fn check_batch(&self, model: &Model, batch: &StudentBatch) -> Result<()> {
        let (labeled, unlabeled) = (&batch.labeled_images, &batch.unlabeled_images);
        check_labeled(model, labeled, &batch.labels, "labeled_images", "labels")?;
        check_labeled(model, unlabeled, &batch.pseudo_labels, "unlabeled_images", "pseudo_labels")?;
        let (side_l, side_u) = (&labeled.size()[2..], &unlabeled.size()[2..]);
        if side_l != side_u {
            bail!(
                Shape,
                "labeled_images are {side_l:?} pixels but unlabeled_images are {side_u:?}; both \
                 go through the backbone in one batch, so they must have one size"
            );
        }
        self.objective.check_labels(
            &batch.labels,
            &batch.pseudo_labels,
            batch.true_labels.as_ref(),
            [labeled.size()[0], unlabeled.size()[0]],
            ["labeled_images", "unlabeled_images"],
        )
    }

    fn loss(&mut self, ctx: &mut StepContext, batch: &StudentBatch) -> Result<(Tensor, Metrics)> {
        let images = Tensor::f_cat(&[&batch.labeled_images, &batch.unlabeled_images], 0)?;
        let f = ctx.model.forward_t(&images, true)?;
        let (step, warming_up) = (ctx.step, self.objective.warming_up(ctx.step));
        tch::autocast(false, || {
            let (loss, mut metrics) = self.terms(&f.f_to_kind(Kind::Float)?, batch, step)?;
            metrics.insert("warmup".into(), if warming_up { 1.0 } else { 0.0 });
            Ok((loss, metrics))
        })
    }

    fn frozen_parameters(&self, step: i64) -> HashSet<String> {
        if self.objective.warming_up(step) {
            ["weight", "bias"].iter().map(|leaf| format!("{HEAD_PREFIX}.{leaf}")).collect()
        } else {
            HashSet::new()
        }
    }

    fn backbone_frozen(&self, step: i64) -> Option<bool> {
        (self.settings().basis_warmup > 0).then(|| self.objective.warming_up(step))
    }
}

/// As many of the symmetric `candidates` pairs as `kept` holds, drawn uniformly (torch's
/// global generator), returned symmetric.
fn random_subset(candidates: &Tensor, kept: &Tensor) -> Result<Tensor> {
    let upper = |m: &Tensor| m.f_triu(1);
    let (candidates, count) = (upper(candidates)?, upper(kept)?.f_sum(Kind::Int64)?);
    let count = count.f_int64_value(&[])?;
    let scores = Tensor::f_rand(candidates.size(), (Kind::Float, candidates.device()))?
        .f_masked_fill(&candidates.f_logical_not()?, -1.0)?;
    let flat = scores.f_flatten(0, -1)?;
    let chosen = flat.f_topk(count, 0, true, false)?.1;
    let picked = flat.f_zeros_like()?.f_index_fill(0, &chosen, 1.0)?.f_gt(0.5)?;
    let picked = picked.f_view_as(&candidates)?.f_logical_and(&candidates)?;
    Ok(picked.f_logical_or(&picked.f_tr()?)?)
}

#[cfg(test)]
mod tests {
    use super::super::{optim::OptimizerConfig, Trainer, TrainerConfig};
    use super::*;
    use crate::nn::ModelConfig;
    use tch::Device;

    fn trainer(config: StudentObjectiveConfig) -> Result<Trainer<Student>> {
        let trainer_config = TrainerConfig {
            model: ModelConfig { dim: 16, ..Default::default() },
            optimizer: OptimizerConfig { lr: 3e-3, ..Default::default() },
            precision: super::super::Precision::Fp32,
            seed: 5,
        };
        Trainer::new(trainer_config, Device::Cpu, |b, m| Student::new(config, b, m))
    }

    fn config(variant: &str) -> StudentObjectiveConfig {
        let variant = variant.parse().unwrap();
        StudentObjectiveConfig { num_basis: Some(4), variant, ..Default::default() }
    }

    fn batch() -> StudentBatch {
        tch::manual_seed(9);
        let opts = (Kind::Float, Device::Cpu);
        let labels = Tensor::arange(4, (Kind::Int64, Device::Cpu)).repeat([3]);
        let pseudo = Tensor::arange(3, (Kind::Int64, Device::Cpu)).repeat([4]);
        let shift = |l: &Tensor| l.view([12, 1, 1, 1]).to_kind(Kind::Float);
        StudentBatch {
            labeled_images: Tensor::randn([12, 1, 28, 28], opts) * 0.3 + shift(&labels),
            labels,
            unlabeled_images: Tensor::randn([12, 1, 28, 28], opts) * 0.3 - shift(&pseudo),
            pseudo_labels: pseudo,
            true_labels: None,
        }
    }

    fn objective_on(config: StudentObjectiveConfig) -> (StudentObjective, Tensor) {
        tch::manual_seed(3);
        let basis = FeatureBasis::new(4, 8, None, config.basis_config(), Device::Cpu).unwrap();
        let weight = basis.state.weight.shallow_clone();
        (StudentObjective::from_parts(config, Some(basis.state)).unwrap(), weight)
    }

    #[test]
    fn warm_up_on_given_embeddings_trains_only_the_basis() {
        let (objective, weight) = objective_on(config("basis_mining"));
        let opts = (Kind::Float, Device::Cpu);
        let fl = Tensor::randn([12, 8], opts).set_requires_grad(true);
        let fu = Tensor::randn([12, 8], opts).set_requires_grad(true);
        let labels = Tensor::arange(4, (Kind::Int64, Device::Cpu)).repeat([3]);
        let pseudo = Tensor::arange(3, (Kind::Int, Device::Cpu)).repeat([4]);
        let emb = StudentEmbeddings {
            labeled: &fl,
            labels: &labels,
            unlabeled: &fu,
            pseudo_labels: &pseudo,
            true_labels: None,
        };
        for warming_up in [true, false] {
            let (loss, metrics) = objective.loss(&emb, true, warming_up).unwrap();
            assert_eq!(metrics["warmup"], if warming_up { 1.0 } else { 0.0 });
            let grads = Tensor::run_backward(&[&loss], &[&weight, &fl], false, true);
            assert!(grads[0].abs().sum(Kind::Float).double_value(&[]) > 0.0);
            let reaches_fl =
                grads[1].defined() && grads[1].abs().sum(Kind::Float).double_value(&[]) > 0.0;
            assert_eq!(reaches_fl, !warming_up);
        }
    }

    #[test]
    fn objective_on_given_embeddings_names_bad_arguments() {
        let (objective, _) = objective_on(config("basis"));
        let opts = (Kind::Float, Device::Cpu);
        let (fl, fu) = (Tensor::randn([12, 8], opts), Tensor::randn([12, 8], opts));
        let labels = Tensor::arange(4, (Kind::Int64, Device::Cpu)).repeat([3]);
        let pseudo = Tensor::arange(3, (Kind::Int64, Device::Cpu)).repeat([4]);
        let err = |labeled: &Tensor, unlabeled: &Tensor, pseudo: &Tensor| {
            let emb = StudentEmbeddings {
                labeled,
                labels: &labels,
                unlabeled,
                pseudo_labels: pseudo,
                true_labels: None,
            };
            objective.loss(&emb, true, false).expect_err("an error").to_string()
        };
        assert!(err(&fl.view([12, 2, 4]), &fu, &pseudo).contains("emb_labeled must be a 2-D"));
        assert!(err(&fl, &fu.narrow(1, 0, 6), &pseudo).contains("emb_unlabeled has dim 6"));
        assert!(err(&fl.narrow(1, 0, 6), &fu.narrow(1, 0, 6), &pseudo)
            .contains("feature basis has dim 8"));
        assert!(err(&fl, &(&fu / 0.0), &pseudo).contains("emb_unlabeled contains"));
        assert!(err(&fl, &fu, &pseudo.narrow(0, 0, 5)).contains("pseudo_labels has 5 entries"));
        let mismatch = StudentObjective::from_parts(
            StudentObjectiveConfig { num_basis: Some(5), ..config("basis") },
            Some(FeatureBasis::new(4, 8, None, BasisConfig::default(), Device::Cpu).unwrap().state),
        );
        assert!(mismatch.err().expect("an error").to_string().contains("num_basis"));
        assert!(StudentObjective::from_parts(config("basis"), None).is_err());
    }

    #[test]
    fn threshold_rules_resolve_auto_and_parse_as_the_miner() {
        let auto = trainer(config("basis_mining")).unwrap();
        assert_eq!(
            auto.objective().threshold_rules(),
            (ThresholdRule::MuPos, ThresholdRule::MuNeg)
        );
        let settings: StudentObjectiveConfig =
            serde_json::from_value(serde_json::json!({"t1": "mu-", "t2": 0.25})).unwrap();
        assert_eq!((settings.t1, settings.t2), (ThresholdRule::MuNeg, ThresholdRule::Value(0.25)));
        let err = crate::settings::parse::<StudentObjectiveConfig>(
            serde_json::json!({"t1": "median"}),
            "student.",
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("student.t1 must be a number or one of"), "{err}");
    }

    #[test]
    fn every_variant_reports_its_terms_and_learns() {
        let b = batch();
        for variant in ["pseudo_only", "basis", "basis_mining"] {
            let mut t = trainer(config(variant)).unwrap();
            let first = t.step(&b).unwrap();
            let expected = first["loss/rank_labeled"]
                + first["loss/rank_unlabeled"]
                + first.get("loss/basis").copied().unwrap_or(0.0);
            assert!((first["loss"] - expected).abs() < 1e-5, "{variant}: {first:?}");
            assert_eq!(first.contains_key("loss/sd"), variant != "pseudo_only");
            assert_eq!(first.contains_key("threshold/t1"), variant == "basis_mining");
            assert_eq!(first.contains_key("lr/basis"), variant != "pseudo_only");
            if variant == "basis_mining" {
                assert_eq!(first["threshold/t1"], first["basis/mu_pos"]);
            } else {
                // All pseudo pairs: 3 clusters of 4 (ordered pairs).
                assert_eq!((first["pairs/positive"], first["pairs/negative"]), (36.0, 96.0));
            }
            let mut last = first["loss"];
            for _ in 0..8 {
                last = t.step(&b).unwrap()["loss"];
            }
            assert!(last < first["loss"], "{variant}: {} -> {last}", first["loss"]);
        }
    }

    #[test]
    fn warmup_trains_only_the_basis() {
        let mut t =
            trainer(StudentObjectiveConfig { basis_warmup: 2, ..config("basis_mining") }).unwrap();
        let store = t.model().store();
        let conv = store.get("blocks.0.conv.weight").unwrap().tensor.copy();
        let bn = store.get("blocks.0.bn.running_mean").unwrap().tensor.copy();
        let head = store.get("embedding.weight").unwrap().tensor.copy();
        let w = t.params().get("basis.weight").unwrap().tensor.copy();
        let b = batch();
        for _ in 0..2 {
            assert_eq!(t.step(&b).unwrap()["warmup"], 1.0);
        }
        let store = t.model().store();
        assert!(store.get("blocks.0.conv.weight").unwrap().tensor.equal(&conv));
        assert!(store.get("blocks.0.bn.running_mean").unwrap().tensor.equal(&bn));
        assert!(store.get("embedding.weight").unwrap().tensor.equal(&head));
        assert!(!t.params().get("basis.weight").unwrap().tensor.equal(&w));
        assert_eq!(t.step(&b).unwrap()["warmup"], 0.0);
        assert!(!t.model().is_backbone_frozen());
        assert!(!t.model().store().get("blocks.0.conv.weight").unwrap().tensor.equal(&conv));
    }

    #[test]
    fn bad_settings_and_batches_are_clear_errors() {
        let bad = |c: StudentObjectiveConfig, needle: &str| {
            let err = trainer(c).err().expect("an error").to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        };
        assert!("everything".parse::<Variant>().unwrap_err().to_string().contains("pseudo_only"));
        bad(StudentObjectiveConfig { num_basis: Some(0), ..config("basis") }, "num_basis");
        bad(StudentObjectiveConfig { num_basis: None, ..config("basis") }, "num_basis");
        assert!(
            trainer(StudentObjectiveConfig { num_basis: None, ..config("pseudo_only") }).is_ok()
        );
        bad(
            StudentObjectiveConfig { regularizer: Regularizer::GlobalCe, ..config("basis") },
            "num_pseudo_classes",
        );
        bad(StudentObjectiveConfig { basis_warmup: 3, ..config("pseudo_only") }, "basis_warmup");
        bad(StudentObjectiveConfig { t2: ThresholdRule::Value(f64::NAN), ..config("basis") }, "t2");
        bad(StudentObjectiveConfig { mining: Mining::Oracle, ..config("basis") }, "basis_mining");
        let mut t = trainer(StudentObjectiveConfig {
            regularizer: Regularizer::LocalCe,
            num_pseudo_classes: Some(2),
            ..config("basis_mining")
        })
        .unwrap();
        let err = t.step(&batch()).unwrap_err().to_string();
        assert!(err.contains("pseudo_labels") && err.contains("num_pseudo_classes"), "{err}");
        let mut b = batch();
        b.labels = b.labels + 4;
        let mut t = trainer(config("basis")).unwrap();
        assert!(t.step(&b).unwrap_err().to_string().contains("num_basis"));
        let mut b = batch();
        b.unlabeled_images = b.unlabeled_images.narrow(2, 0, 20);
        assert!(matches!(t.step(&b), Err(SladeError::Shape(_))));
        assert_eq!(t.step_count(), 0);
    }
}
