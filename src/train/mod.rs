//! Training steps in Rust: a generic [`Trainer`] (model + objective + optimizer + schedule +
//! checkpoints) that every training method plugs an [`Objective`] into, and the objectives:
//! SwAV (DESIGN.md §2.1), the teacher's ranking loss (§2.2) and the SLADE student (§2.4).
//!
//! A step is `compute_gradients` (forward, loss, backward; gradients left in each
//! parameter's `.grad`, where torch.distributed can all-reduce them) followed by
//! `apply_gradients` (loss-scale removal, clipping, optimizer update, schedule); `step` runs
//! both.

mod adam_kernel;
pub mod checkpoint;
mod finite_kernel;
pub mod optim;
pub mod ranking;
pub mod schedule;
pub mod student;
pub mod swav;
pub mod teacher;

use crate::bail;
use crate::error::Result;
use crate::nn::layers::{computing_in, Builder};
use crate::nn::store::{detached_copy, LoadOptions, LoadReport, ParamStore};
use crate::nn::{Model, ModelConfig, BACKBONE_GROUP, HEAD_GROUP};
use crate::settings::{within, Settings};
use optim::{NonFiniteSteps, Optimizer, OptimizerConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use schedule::Schedule;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use tch::{Device, Kind, Tensor};

/// Optimizer group of the student's feature basis. Always a known group name, so that one
/// `OptimizerConfig` with a `basis` rate serves teacher and student alike.
pub const BASIS_GROUP: &str = "basis";

/// Named scalar results of a step ("loss", "lr/backbone", "grad_norm" when clipping, ...).
pub type Metrics = BTreeMap<String, f64>;

/// Everything a trainer is built from, apart from the objective's own settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerConfig {
    pub model: ModelConfig,
    pub optimizer: OptimizerConfig,
    pub precision: Precision,
    /// Seeds the initial weights and the trainer's random generator.
    pub seed: u64,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        TrainerConfig {
            model: ModelConfig::default(),
            optimizer: OptimizerConfig::default(),
            precision: Precision::Fp32,
            seed: 0,
        }
    }
}

impl Settings for TrainerConfig {
    const WHAT: &'static str = "trainer";

    fn validate(&self) -> Result<()> {
        within("model.", self.model.validate())?;
        within("optimizer.", self.optimizer.validate())
    }
}

crate::named_choice! {
    /// Arithmetic of the forward pass.
    pub enum Precision ("precision") {
        Fp32 = "fp32" | "float32",
        /// CUDA autocast with dynamic loss scaling (no effect on CPU).
        Fp16 = "fp16" | "float16" | "mixed",
        /// Convolutions in bfloat16 on any device; float32 weights, optimizer, BatchNorm
        /// statistics, embedding head and losses (`nn::layers::computing_in`); no loss
        /// scaling (bfloat16 has float32's range).
        Bf16 = "bf16" | "bfloat16",
    }
}

impl Precision {
    /// The kind the network's convolutions compute in; None: their inputs' (float32, or
    /// float16 under CUDA autocast).
    fn compute_kind(self) -> Option<Kind> {
        match self {
            Precision::Bf16 => Some(Kind::BFloat16),
            Precision::Fp32 | Precision::Fp16 => None,
        }
    }
}

/// Dynamic loss scaling for fp16 autocast, as torch.amp.GradScaler's defaults: start at
/// 2^16, halve on a non-finite gradient (and skip that update), double after 2000 clean
/// steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradScaler {
    pub scale: f64,
    pub growth_tracker: i64,
}

impl GradScaler {
    const GROWTH: f64 = 2.0;
    const BACKOFF: f64 = 0.5;
    const INTERVAL: i64 = 2000;

    fn new() -> Self {
        GradScaler { scale: 65536.0, growth_tracker: 0 }
    }

    fn update(&mut self, found_inf: bool) {
        if found_inf {
            self.scale *= Self::BACKOFF;
            self.growth_tracker = 0;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker == Self::INTERVAL {
                self.scale *= Self::GROWTH;
                self.growth_tracker = 0;
            }
        }
    }
}

/// What an objective sees during a step.
pub struct StepContext<'a> {
    pub model: &'a Model,
    /// The objective's own parameters (registered through `Builder` at construction).
    pub params: &'a ParamStore,
    /// Optimizer updates done so far.
    pub step: i64,
    /// The trainer's seeded generator (saved in checkpoints).
    pub rng: &'a mut ChaCha8Rng,
}

/// A training method: the loss of a batch, plus parameters and state of its own.
pub trait Objective: Send {
    /// What one step consumes.
    type Batch: ?Sized;
    /// Name written into checkpoints ("swav", "teacher", "student").
    const KIND: &'static str;

    /// The objective's settings as JSON (saved in checkpoints and compared on load).
    fn config(&self) -> serde_json::Value;

    /// Checks a batch before anything runs; errors name the argument.
    fn check_batch(&self, model: &Model, batch: &Self::Batch) -> Result<()>;

    /// The scalar loss (with autograd) and metrics of one batch, in training mode.
    fn loss(&mut self, ctx: &mut StepContext, batch: &Self::Batch) -> Result<(Tensor, Metrics)>;

    /// Parameter names whose gradients this update ignores (e.g. SwAV's prototypes during
    /// their first iterations): no update and no optimizer-state change for them.
    fn frozen_parameters(&self, _step: i64) -> HashSet<String> {
        HashSet::new()
    }

    /// Whether the backbone must be frozen for the update after `step` updates (e.g. the
    /// student's basis warm-up); `None` leaves the freezing to the user
    /// (`Trainer::set_backbone_frozen`). Applied at the start of `compute_gradients`.
    fn backbone_frozen(&self, _step: i64) -> Option<bool> {
        None
    }

    /// Runs after each optimizer update.
    fn after_update(&mut self, _ctx: &mut StepContext) -> Result<()> {
        Ok(())
    }

    /// Optimizer groups of the objective that exist even when empty (so that a setting for
    /// them, e.g. `basis_lr`, is accepted by every variant); "backbone" and "head" always do.
    const GROUPS: &'static [&'static str] = &[];

    /// State tensors that are neither parameters nor buffers (e.g. running statistics),
    /// saved in checkpoints under "objective.".
    fn state(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }

    /// Restores what `state` returned.
    fn load_state(&mut self, named: &[(String, Tensor)]) -> Result<()> {
        if let Some((name, _)) = named.first() {
            bail!(Value, "unexpected objective state {name:?} in the checkpoint");
        }
        Ok(())
    }
}

/// A model, an objective and its optimizer, schedule, step count and random generator.
pub struct Trainer<O: Objective> {
    config: TrainerConfig,
    model: Model,
    params: ParamStore,
    objective: O,
    optimizer: Optimizer,
    schedule: Schedule,
    precision: Precision,
    scaler: Option<GradScaler>,
    step: i64,
    rng: ChaCha8Rng,
    /// compute_gradients ran and apply_gradients has not.
    pending: Option<Pending>,
}

/// A step between `compute_gradients` and `apply_gradients`.
struct Pending {
    metrics: Metrics,
    /// What the forward pass may have changed, as it was before (see `Trainer::snapshot`).
    saved: Vec<(Tensor, Tensor)>,
    rng: ChaCha8Rng,
    /// The loss was finite (false only under `NonFiniteSteps::Skip`).
    finite_loss: bool,
}

/// Copies the saved values back into the tensors `Trainer::snapshot` took them from.
fn restore(saved: &[(Tensor, Tensor)]) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        for (value, tensor) in saved {
            tensor.shallow_clone().f_copy_(value)?;
        }
        Ok(())
    })
}

impl<O: Objective> Trainer<O> {
    /// Builds the model (seeded), then the objective through `build`, which may register
    /// parameters of its own with the given builder (group `Builder::group`, which it may
    /// change), then the optimizer over groups "backbone", "head" and the objective's.
    pub fn new(
        config: TrainerConfig,
        device: Device,
        build: impl FnOnce(&mut Builder, &Model) -> Result<O>,
    ) -> Result<Self> {
        config.validate()?;
        let precision = config.precision;
        let schedule = Schedule::from_config(&config.optimizer)?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let model = Model::new(&config.model, device, &mut rng)?;
        let mut params = ParamStore::new(device);
        let objective = {
            let mut builder =
                Builder { store: &mut params, rng: &mut rng, group: HEAD_GROUP.into() };
            build(&mut builder, &model)?
        };
        let mut groups: Vec<(String, Vec<(String, Tensor)>)> = Vec::new();
        let all = model.store().variables().iter().chain(params.variables());
        for v in all.filter(|v| v.role == crate::nn::store::Role::Parameter) {
            let entry = (v.name.clone(), v.tensor.shallow_clone());
            match groups.iter_mut().find(|(g, _)| *g == v.group) {
                Some((_, list)) => list.push(entry),
                None => groups.push((v.group.clone(), vec![entry])),
            }
        }
        for &required in [BACKBONE_GROUP, HEAD_GROUP].iter().chain(O::GROUPS) {
            if !groups.iter().any(|(g, _)| g == required) {
                groups.push((required.to_string(), Vec::new()));
            }
        }
        let mut optimizer = Optimizer::new(&config.optimizer, groups)?;
        optimizer.set_lr_factor(schedule.factor(0));
        let scaler = (precision == Precision::Fp16 && device.is_cuda()).then(GradScaler::new);
        Ok(Trainer {
            config,
            model,
            params,
            objective,
            optimizer,
            schedule,
            precision,
            scaler,
            step: 0,
            rng,
            pending: None,
        })
    }

    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn objective(&self) -> &O {
        &self.objective
    }

    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// The objective's own parameters.
    pub fn params(&self) -> &ParamStore {
        &self.params
    }

    pub fn device(&self) -> Device {
        self.model.device()
    }

    /// Optimizer updates done so far.
    pub fn step_count(&self) -> i64 {
        self.step
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Freezes or unfreezes the backbone (see `Model::set_backbone_frozen`).
    pub fn set_backbone_frozen(&mut self, frozen: bool) -> Result<()> {
        self.model.set_backbone_frozen(frozen)
    }

    /// Model then objective parameters, the very tensors.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = self.model.store().named_parameters();
        out.extend(self.params.named_parameters());
        out
    }

    /// Model then objective buffers, the very tensors.
    pub fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let mut out = self.model.store().named_buffers();
        out.extend(self.params.named_buffers());
        out
    }

    /// Parameters and buffers, detached (sharing memory), as torch's state_dict().
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = self.model.store().state_dict()?;
        out.extend(self.params.state_dict()?);
        Ok(out)
    }

    /// Copies a state_dict (names as `state_dict`) into the model and objective parameters.
    pub fn load_state_dict(&self, source: &[(String, Tensor)], strict: bool) -> Result<LoadReport> {
        let (mut model_part, mut own_part, mut unexpected) = (Vec::new(), Vec::new(), Vec::new());
        for (name, t) in source {
            if self.model.store().get(name).is_some() {
                model_part.push((name.clone(), t.shallow_clone()));
            } else if self.params.get(name).is_some() {
                own_part.push((name.clone(), t.shallow_clone()));
            } else {
                unexpected.push(name.clone());
            }
        }
        if strict && !unexpected.is_empty() {
            bail!(
                Value,
                "the state_dict does not match the trainer: unexpected {} key(s): {}",
                unexpected.len(),
                unexpected.join(", ")
            );
        }
        let mut options = LoadOptions::strict("the state_dict", "the trainer");
        options.strict = strict;
        let mut report = self.model.store().load(&model_part, &options)?;
        let own = self.params.load(&own_part, &options)?;
        report.loaded += own.loaded;
        report.missing.extend(own.missing);
        report.unexpected = unexpected;
        Ok(report)
    }

    /// Embeddings in evaluation mode without autograd (see `Model::embed`).
    pub fn embed(&self, images: &Tensor, batch_size: usize) -> Result<Tensor> {
        self.model.embed(images, batch_size)
    }

    /// Copies of what a failed forward pass may have changed: every buffer (BatchNorm
    /// running statistics) and the objective's own parameters (e.g. SwAV's prototypes,
    /// renormalised at the start of a step). The model's parameters only change in
    /// `apply_gradients`.
    fn snapshot(&self) -> Result<Vec<(Tensor, Tensor)>> {
        let mut tensors = self.named_buffers();
        tensors.extend(self.params.named_parameters());
        tensors.into_iter().map(|(_, t)| Ok((detached_copy(&t)?, t))).collect()
    }

    /// Forward, loss and backward: the gradients are left in the parameters' `.grad` (zeroed
    /// first). On error, the trainer is as it was before the call. A NaN or Inf loss is an
    /// error (`NonFinite`), or under `NonFiniteSteps::Skip` a step to skip: no backward, the
    /// buffers restored, every gradient NaN (an all-reduce then skips it everywhere), and
    /// `apply_gradients` counts it without an update.
    pub fn compute_gradients(&mut self, batch: &O::Batch) -> Result<Metrics> {
        self.pending = None;
        match self.objective.check_batch(&self.model, batch) {
            // NaN or Inf images would make the loss so: a step to skip
            Err(crate::SladeError::NonFinite(_)) if self.skips_nonfinite() => {
                return self.skip_without_forward()
            }
            other => other?,
        }
        if let Some(frozen) = self.objective.backbone_frozen(self.step) {
            if frozen != self.model.is_backbone_frozen() {
                self.model.set_backbone_frozen(frozen)?;
            }
        }
        let saved = self.snapshot()?;
        let rng = self.rng.clone();
        // Autograd on even when the caller runs under torch.no_grad().
        match tch::with_grad(|| self.forward_backward(batch)) {
            Ok((metrics, finite_loss)) => {
                if !finite_loss {
                    restore(&saved)?;
                    self.optimizer.poison_grads()?;
                }
                self.pending = Some(Pending { metrics: metrics.clone(), saved, rng, finite_loss });
                Ok(metrics)
            }
            Err(err) => {
                self.undo(&saved, rng)?;
                Err(err)
            }
        }
    }

    /// A step skipped before its forward pass: every gradient NaN, nothing else changed.
    fn skip_without_forward(&mut self) -> Result<Metrics> {
        self.optimizer.poison_grads()?;
        let metrics = Metrics::from([("loss".to_string(), f64::NAN)]);
        let rng = self.rng.clone();
        self.pending =
            Some(Pending { metrics: metrics.clone(), saved: Vec::new(), rng, finite_loss: false });
        Ok(metrics)
    }

    /// Puts back what a dropped step changed: buffers, objective parameters, the random
    /// generator, and zeroes the gradients.
    fn undo(&mut self, saved: &[(Tensor, Tensor)], rng: ChaCha8Rng) -> Result<()> {
        restore(saved)?;
        self.rng = rng;
        self.optimizer.zero_grad()
    }

    fn skips_nonfinite(&self) -> bool {
        self.config.optimizer.nonfinite == NonFiniteSteps::Skip
    }

    /// The metrics and whether the loss was finite (a non-finite one only returns under
    /// `NonFiniteSteps::Skip`, without a backward pass).
    fn forward_backward(&mut self, batch: &O::Batch) -> Result<(Metrics, bool)> {
        self.optimizer.zero_grad()?;
        let autocast = self.scaler.is_some();
        let skips = self.skips_nonfinite() && !autocast;
        let number = self.step + 1;
        let mut ctx = StepContext {
            model: &self.model,
            params: &self.params,
            step: self.step,
            rng: &mut self.rng,
        };
        let objective = &mut self.objective;
        let kind = self.precision.compute_kind();
        let outcome =
            tch::autocast(autocast, || computing_in(kind, || objective.loss(&mut ctx, batch)));
        let (loss, mut metrics) = match outcome {
            // e.g. the student's check of its embeddings, before any loss exists
            Err(crate::SladeError::NonFinite(_)) if skips => {
                return Ok((Metrics::from([("loss".to_string(), f64::NAN)]), false))
            }
            other => other?,
        };
        if loss.numel() != 1 {
            bail!(Internal, "{} loss is not a scalar: shape {:?}", O::KIND, loss.size());
        }
        let value = loss.f_double_value(&[])?;
        metrics.insert("loss".into(), value);
        if !value.is_finite() && !autocast {
            if skips {
                return Ok((metrics, false));
            }
            bail!(
                NonFinite,
                "the {} loss is {value} in step {number}; the parameters were not updated \
                 (lower the learning rate, enable clip_grad_norm, check the batch, or set \
                 optimizer.nonfinite=\"skip\" to skip such steps)",
                O::KIND
            );
        }
        let scaled = match &self.scaler {
            Some(s) => loss.f_to_kind(Kind::Float)?.f_mul_scalar(s.scale)?,
            None => loss,
        };
        if scaled.requires_grad() {
            scaled.f_backward()?;
        }
        Ok((metrics, true))
    }

    /// Removes the loss scale, clips, updates the parameters, advances the step count and the
    /// schedule. Needs a preceding `compute_gradients`. Without loss scaling, a step whose
    /// loss or gradients are NaN or Inf is not applied: its buffers are restored and it fails
    /// with `NonFinite` (the step does not count), or under `NonFiniteSteps::Skip` it counts
    /// with "skipped" = 1. Under fp16 loss scaling, the scaler skips such updates (counted
    /// the same way) in either mode.
    pub fn apply_gradients(&mut self) -> Result<Metrics> {
        let Some(pending) = self.pending.take() else {
            bail!(Value, "apply_gradients needs gradients: call compute_gradients(batch) first");
        };
        let mut metrics = pending.metrics;
        let skip = self.objective.frozen_parameters(self.step);
        for group in self.optimizer.groups() {
            metrics.insert(format!("lr/{}", group.name), group.lr);
        }
        let finite = match &mut self.scaler {
            Some(scaler) => {
                let finite = self.optimizer.scale_grads(1.0 / scaler.scale, &skip)?;
                metrics.insert("loss_scale".into(), scaler.scale);
                scaler.update(!finite);
                finite
            }
            None => pending.finite_loss && self.optimizer.grads_finite(&skip)?,
        };
        if finite {
            if let Some(max_norm) = self.config.optimizer.clip_grad_norm {
                if let Some(norm) = self.optimizer.clip_grad_norm(max_norm, &skip)? {
                    metrics.insert("grad_norm".into(), norm);
                }
            }
            self.optimizer.step(&skip)?;
        } else if self.scaler.is_none() {
            self.drop_update(&pending.saved, pending.rng)?;
        }
        if self.scaler.is_some() || self.skips_nonfinite() {
            metrics.insert("skipped".into(), if finite { 0.0 } else { 1.0 });
        }
        self.step += 1;
        self.optimizer.set_lr_factor(self.schedule.factor(self.step));
        let mut ctx = StepContext {
            model: &self.model,
            params: &self.params,
            step: self.step,
            rng: &mut self.rng,
        };
        self.objective.after_update(&mut ctx)?;
        metrics.insert("step".into(), self.step as f64);
        Ok(metrics)
    }

    /// A step with NaN or Inf gradients: restores what its forward pass changed, then fails
    /// (`NonFiniteSteps::Raise`, the random generator put back too) or lets it be skipped.
    fn drop_update(&mut self, saved: &[(Tensor, Tensor)], rng: ChaCha8Rng) -> Result<()> {
        if self.skips_nonfinite() {
            restore(saved)?;
            return self.optimizer.zero_grad();
        }
        self.undo(saved, rng)?;
        bail!(
            NonFinite,
            "the {} gradients are NaN or Inf in step {}; the parameters were not updated \
             (lower the learning rate, enable clip_grad_norm, or set optimizer.nonfinite=\"skip\" \
             to skip such steps)",
            O::KIND,
            self.step + 1
        )
    }

    /// One whole training step: `compute_gradients` then `apply_gradients`.
    pub fn step(&mut self, batch: &O::Batch) -> Result<Metrics> {
        self.compute_gradients(batch)?;
        self.apply_gradients()
    }

    /// The optimizer state as named tensors (see `Optimizer::state_tensors`).
    pub fn optimizer_state(&self) -> Vec<(String, Tensor)> {
        self.optimizer.state_tensors()
    }

    /// The current learning rate of each group.
    pub fn learning_rates(&self) -> Vec<(String, f64)> {
        self.optimizer.groups().iter().map(|g| (g.name.clone(), g.lr)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain regression objective: mean squared distance of embeddings to fixed targets.
    struct Regression;

    impl Objective for Regression {
        type Batch = (Tensor, Tensor);
        const KIND: &'static str = "regression";
        fn config(&self) -> serde_json::Value {
            serde_json::json!({})
        }
        fn check_batch(&self, model: &Model, batch: &Self::Batch) -> Result<()> {
            model.check_images(&batch.0, "images", false)
        }
        fn loss(
            &mut self,
            ctx: &mut StepContext,
            batch: &Self::Batch,
        ) -> Result<(Tensor, Metrics)> {
            let f = ctx.model.forward_t(&batch.0, true)?;
            Ok(((f - &batch.1).square().mean(Kind::Float), Metrics::new()))
        }
    }

    fn trainer(optimizer: &str) -> Trainer<Regression> {
        trainer_with(optimizer, NonFiniteSteps::Raise)
    }

    fn trainer_with(optimizer: &str, nonfinite: NonFiniteSteps) -> Trainer<Regression> {
        let config = TrainerConfig {
            model: ModelConfig { dim: 8, ..Default::default() },
            optimizer: OptimizerConfig {
                name: optimizer.parse().unwrap(),
                lr: 0.05,
                warmup_steps: 4,
                nonfinite,
                ..Default::default()
            },
            precision: Precision::Fp32,
            seed: 3,
        };
        Trainer::new(config, Device::Cpu, |_, _| Ok(Regression)).unwrap()
    }

    /// Copies of every parameter and buffer.
    fn state_of(t: &Trainer<Regression>) -> Vec<(String, Tensor)> {
        let mut all = t.named_parameters();
        all.extend(t.named_buffers());
        all.into_iter().map(|(n, x)| (n, x.copy())).collect()
    }

    fn assert_state_is(t: &Trainer<Regression>, before: &[(String, Tensor)]) {
        for ((name, now), (_, then)) in state_of(t).iter().zip(before) {
            assert!(now.equal(then), "{name} changed");
        }
    }

    /// A batch whose loss is NaN although its images are fine (the targets are NaN).
    fn nan_loss_batch() -> (Tensor, Tensor) {
        let (x, y) = batch();
        (x, y * f64::NAN)
    }

    fn batch() -> (Tensor, Tensor) {
        tch::manual_seed(7);
        let x = Tensor::randn([6, 1, 16, 16], (Kind::Float, Device::Cpu));
        let y = Tensor::randn([6, 8], (Kind::Float, Device::Cpu));
        (x, y)
    }

    #[test]
    fn steps_decrease_the_loss_and_count() {
        let mut t = trainer("sgd");
        let b = batch();
        let first = t.step(&b).unwrap()["loss"];
        let mut last = first;
        for _ in 0..10 {
            last = t.step(&b).unwrap()["loss"];
        }
        assert!(last < first, "{first} -> {last}");
        assert_eq!(t.step_count(), 11);
    }

    #[test]
    fn same_seed_same_weights() {
        let (a, b) = (trainer("adam"), trainer("adam"));
        for ((n, x), (_, y)) in a.named_parameters().iter().zip(b.named_parameters()) {
            assert!(x.equal(&y), "{n}");
        }
    }

    #[test]
    fn apply_without_gradients_is_an_error_and_bad_batch_changes_nothing() {
        let mut t = trainer("adam");
        assert!(t.apply_gradients().is_err());
        let bad = (Tensor::zeros([6, 3, 16, 16], (Kind::Float, Device::Cpu)), batch().1);
        assert!(matches!(t.step(&bad), Err(crate::SladeError::Shape(_))));
        let nan = (batch().0 * f64::NAN, batch().1);
        assert!(matches!(t.step(&nan), Err(crate::SladeError::NonFinite(_))));
        assert_eq!(t.step_count(), 0);
    }

    #[test]
    fn a_nan_loss_fails_naming_the_step_and_changes_nothing() {
        let mut t = trainer("adam");
        t.step(&batch()).unwrap();
        let before = state_of(&t);
        let err = t.step(&nan_loss_batch()).unwrap_err();
        assert!(
            matches!(&err, crate::SladeError::NonFinite(m) if m.contains("in step 2")),
            "{err}"
        );
        assert_eq!(t.step_count(), 1);
        assert_state_is(&t, &before);
        assert!(!t.step(&batch()).unwrap().contains_key("skipped"));
    }

    #[test]
    fn skip_mode_counts_a_nan_step_without_touching_weights_or_batchnorm() {
        let mut t = trainer_with("adam", NonFiniteSteps::Skip);
        assert_eq!(t.step(&batch()).unwrap()["skipped"], 0.0);
        let before = state_of(&t);
        let lr_before = t.learning_rates();
        let metrics = t.compute_gradients(&nan_loss_batch()).unwrap();
        assert!(metrics["loss"].is_nan());
        for (name, p) in t.named_parameters() {
            let g = p.grad();
            assert!(g.defined() && g.isnan().all().int64_value(&[]) == 1, "{name}: grad not NaN");
        }
        let metrics = t.apply_gradients().unwrap();
        assert_eq!((metrics["skipped"], metrics["step"]), (1.0, 2.0));
        assert_eq!(t.step_count(), 2);
        assert_state_is(&t, &before);
        assert!(t.learning_rates()[0].1 > lr_before[0].1, "the warm-up schedule advances");
        for (name, p) in t.named_parameters() {
            assert_eq!(p.grad().abs().sum(Kind::Float).double_value(&[]), 0.0, "{name}");
        }
        assert_eq!(t.step(&batch()).unwrap()["skipped"], 0.0);
        let moved = state_of(&t);
        assert!(moved.iter().zip(&before).any(|((_, a), (_, b))| !a.equal(b)));
    }

    #[test]
    fn an_infinite_gradient_under_a_finite_loss_is_not_applied() {
        for (mode, value) in
            [(NonFiniteSteps::Skip, f64::INFINITY), (NonFiniteSteps::Raise, f64::NAN)]
        {
            let mut t = trainer_with("adam", mode);
            let before = state_of(&t);
            let metrics = t.compute_gradients(&batch()).unwrap();
            assert!(metrics["loss"].is_finite());
            let (_, p) = t.named_parameters().pop().unwrap();
            let _ = p.grad().view([-1]).get(0).fill_(value);
            match mode {
                NonFiniteSteps::Skip => assert_eq!(t.apply_gradients().unwrap()["skipped"], 1.0),
                NonFiniteSteps::Raise => {
                    let err = t.apply_gradients().unwrap_err();
                    assert!(
                        matches!(&err, crate::SladeError::NonFinite(m) if m.contains("gradients"))
                    );
                }
            }
            assert_state_is(&t, &before);
        }
    }

    #[test]
    fn skip_mode_skips_a_batch_of_nan_images_and_raise_mode_names_them() {
        let nan_images = (batch().0 * f64::NAN, batch().1);
        let mut raising = trainer("adam");
        let err = raising.step(&nan_images).unwrap_err();
        assert!(matches!(&err, crate::SladeError::NonFinite(m) if m.contains("images")), "{err}");
        let mut t = trainer_with("adam", NonFiniteSteps::Skip);
        let before = state_of(&t);
        assert_eq!(t.step(&nan_images).unwrap()["skipped"], 1.0);
        assert_eq!(t.step_count(), 1);
        assert_state_is(&t, &before);
    }

    #[test]
    fn nan_gradients_from_elsewhere_are_not_applied() {
        // As when an all-reduce brings another process's skipped step.
        for mode in [NonFiniteSteps::Raise, NonFiniteSteps::Skip] {
            let mut t = trainer_with("sgd", mode);
            let before = state_of(&t);
            t.compute_gradients(&batch()).unwrap();
            let weight = t.model().store().get("embedding.weight").unwrap().tensor.grad();
            let _ = weight.shallow_clone().fill_(f64::INFINITY);
            let result = t.apply_gradients();
            assert_state_is(&t, &before);
            match mode {
                NonFiniteSteps::Raise => {
                    let err = result.unwrap_err();
                    assert!(
                        err.to_string().contains("gradients are NaN or Inf in step 1"),
                        "{err}"
                    );
                    assert_eq!(t.step_count(), 0);
                }
                NonFiniteSteps::Skip => {
                    assert_eq!(result.unwrap()["skipped"], 1.0);
                    assert_eq!(t.step_count(), 1);
                }
            }
        }
    }

    #[test]
    fn frozen_backbone_keeps_backbone_weights() {
        let mut t = trainer("sgd");
        t.set_backbone_frozen(true).unwrap();
        let conv = t.model().store().get("blocks.0.conv.weight").unwrap().tensor.copy();
        let mean = t.model().store().get("blocks.0.bn.running_mean").unwrap().tensor.copy();
        let head = t.model().store().get("embedding.weight").unwrap().tensor.copy();
        t.step(&batch()).unwrap();
        let store = t.model().store();
        assert!(store.get("blocks.0.conv.weight").unwrap().tensor.equal(&conv));
        assert!(store.get("blocks.0.bn.running_mean").unwrap().tensor.equal(&mean));
        assert!(!store.get("embedding.weight").unwrap().tensor.equal(&head));
    }
}
