//! Optimizers written with tensor operations under `no_grad`, so that their state (momentum
//! buffers, Adam moments, step counts) is plain named tensors that can be saved, restored and
//! inspected. Each equals torch.optim's single-tensor implementation step for step:
//!
//! - SGD: g <- grad + wd p; b <- g (first step) else mu b + g; g <- g + mu b (nesterov) or b;
//!   p <- p - lr g.
//! - Adam: g <- grad + wd p; m <- lerp(m, g, 1 - b1); v <- b2 v + (1 - b2) g^2;
//!   p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
//! - AdamW: as Adam without the wd term in g, after p <- p (1 - lr wd) (decoupled decay).
//!
//! Adam's elementwise update of contiguous float32 CPU tensors runs in two passes over
//! memory (`adam_kernel`), with the same bits as the operations (`adam_by_ops`) used elsewhere.
//!
//! Gradient clipping equals torch.nn.utils.clip_grad_norm_: the total 2-norm over all
//! gradients, and every gradient times min(1, max_norm / (norm + 1e-6)).

use super::adam_kernel::{self, AdamStep};
use super::finite_kernel;
use super::schedule::Schedule;
use crate::bail;
use crate::error::Result;
use crate::nn::store::detached_copy;
use crate::settings::{invalid, Settings};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use tch::{Kind, Tensor};

/// Optimizer, learning rates per parameter group, weight decay, schedule and clipping.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimizerConfig {
    pub name: OptimizerName,
    /// Learning rate of every group without an entry in `group_lr`.
    pub lr: f64,
    /// Learning rate per group ("backbone", "head", "basis").
    pub group_lr: BTreeMap<String, f64>,
    /// Weight decay; None: 0 for SGD and Adam, 0.01 for AdamW (torch's defaults).
    pub weight_decay: Option<f64>,
    /// Weight decay per group, overriding `weight_decay`.
    pub group_weight_decay: BTreeMap<String, f64>,
    /// SGD momentum (dampening is 0).
    pub momentum: f64,
    pub nesterov: bool,
    /// Adam's (beta1, beta2).
    pub betas: (f64, f64),
    /// Adam's epsilon.
    pub eps: f64,
    /// The decay after the warm-up.
    pub schedule: ScheduleName,
    /// Linear warm-up length in steps (0: none).
    pub warmup_steps: i64,
    /// Learning-rate factor at step 0 of the warm-up (as LinearLR's start_factor).
    pub warmup_start_factor: f64,
    /// Length of the whole run in steps (needed by "cosine").
    pub total_steps: Option<i64>,
    /// Cosine: the factor reached at `total_steps`.
    pub min_lr_factor: f64,
    /// Step: the factor is multiplied by `gamma` every `step_size` steps.
    pub step_size: i64,
    pub gamma: f64,
    /// Clip the total gradient 2-norm to this value (None: no clipping).
    pub clip_grad_norm: Option<f64>,
    /// What a step whose loss or gradients are NaN or Inf does (see `NonFiniteSteps`).
    pub nonfinite: NonFiniteSteps,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            name: OptimizerName::Adam,
            lr: 1e-3,
            group_lr: BTreeMap::new(),
            weight_decay: None,
            group_weight_decay: BTreeMap::new(),
            momentum: 0.9,
            nesterov: false,
            betas: (0.9, 0.999),
            eps: 1e-8,
            schedule: ScheduleName::Constant,
            warmup_steps: 0,
            warmup_start_factor: 0.01,
            total_steps: None,
            min_lr_factor: 0.0,
            step_size: 1000,
            gamma: 0.1,
            clip_grad_norm: None,
            nonfinite: NonFiniteSteps::Raise,
        }
    }
}

crate::named_choice! {
    /// The update rule: torch.optim's SGD, Adam or AdamW.
    pub enum OptimizerName ("optimizer") {
        Sgd = "sgd",
        Adam = "adam",
        Adamw = "adamw",
    }
}

crate::named_choice! {
    /// What a step whose loss or gradients are NaN or Inf does. Either way the update is not
    /// applied and the BatchNorm running statistics (every buffer) the step's forward pass
    /// touched are restored.
    pub enum NonFiniteSteps ("nonfinite") {
        /// The step fails with `SladeError::NonFinite`; the trainer is as before it.
        Raise = "raise",
        /// The step counts (step count, schedule, random generator advance) without an
        /// update, and its metrics hold "skipped" = 1 (0 on the other steps).
        Skip = "skip",
    }
}

crate::named_choice! {
    /// The learning-rate decay after the warm-up (see `super::schedule`).
    pub enum ScheduleName ("schedule") {
        Constant = "constant" | "none",
        Cosine = "cosine",
        Step = "step",
    }
}

impl Settings for OptimizerConfig {
    const WHAT: &'static str = "optimizer";

    fn validate(&self) -> Result<()> {
        self.rule()?;
        Schedule::from_config(self)?;
        Ok(())
    }
}

/// The update rule and its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    Sgd { momentum: f64, nesterov: bool },
    Adam { beta1: f64, beta2: f64, eps: f64, decoupled: bool },
}

impl OptimizerConfig {
    /// Checks the optimizer fields and returns the update rule.
    pub fn rule(&self) -> Result<Rule> {
        let non_negative = "a non-negative number";
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(invalid("lr", non_negative, self.lr));
        }
        for (group, lr) in &self.group_lr {
            if !(lr.is_finite() && *lr >= 0.0) {
                return Err(invalid(&format!("{group}_lr"), non_negative, lr));
            }
        }
        let decays = self.weight_decay.iter().chain(self.group_weight_decay.values());
        for wd in decays {
            if !(wd.is_finite() && *wd >= 0.0) {
                return Err(invalid("weight_decay", non_negative, wd));
            }
        }
        if let Some(max_norm) = self.clip_grad_norm {
            if !(max_norm.is_finite() && max_norm > 0.0) {
                return Err(invalid("clip_grad_norm", "a positive number or None", max_norm));
            }
        }
        let adam = |decoupled| {
            let (beta1, beta2) = self.betas;
            if !((0.0..1.0).contains(&beta1) && (0.0..1.0).contains(&beta2)) {
                return Err(invalid("betas", "in [0, 1)", format!("({beta1}, {beta2})")));
            }
            if !(self.eps.is_finite() && self.eps >= 0.0) {
                return Err(invalid("eps", non_negative, self.eps));
            }
            Ok(Rule::Adam { beta1, beta2, eps: self.eps, decoupled })
        };
        match self.name {
            OptimizerName::Sgd => {
                if !(self.momentum.is_finite() && self.momentum >= 0.0) {
                    return Err(invalid("momentum", non_negative, self.momentum));
                }
                if self.nesterov && self.momentum == 0.0 {
                    bail!(Config, "nesterov momentum needs momentum > 0");
                }
                Ok(Rule::Sgd { momentum: self.momentum, nesterov: self.nesterov })
            }
            OptimizerName::Adam => adam(false),
            OptimizerName::Adamw => adam(true),
        }
    }

    /// Weight decay of `group` (per-group override, then the global value, then the rule's
    /// default).
    pub fn weight_decay_of(&self, group: &str, rule: Rule) -> f64 {
        let default = match rule {
            Rule::Adam { decoupled: true, .. } => 0.01,
            _ => 0.0,
        };
        self.group_weight_decay.get(group).copied().or(self.weight_decay).unwrap_or(default)
    }

    pub fn lr_of(&self, group: &str) -> f64 {
        self.group_lr.get(group).copied().unwrap_or(self.lr)
    }

    /// Group names used by `group_lr` / `group_weight_decay` must exist.
    pub fn check_groups(&self, groups: &[String]) -> Result<()> {
        for name in self.group_lr.keys().chain(self.group_weight_decay.keys()) {
            if !groups.contains(name) {
                bail!(
                    Config,
                    "this trainer has no parameter group {name:?}; its groups are {groups:?}"
                );
            }
        }
        Ok(())
    }
}

/// One parameter group: its tensors, learning rate (base and scheduled) and weight decay.
#[derive(Debug)]
pub struct ParamGroup {
    pub name: String,
    pub params: Vec<(String, Tensor)>,
    pub base_lr: f64,
    pub lr: f64,
    pub weight_decay: f64,
}

/// Per-parameter state, as torch.optim keeps it.
#[derive(Debug, Default)]
struct ParamState {
    /// Number of updates applied to this parameter (int64 scalar).
    step: Option<Tensor>,
    momentum_buffer: Option<Tensor>,
    exp_avg: Option<Tensor>,
    exp_avg_sq: Option<Tensor>,
}

/// An optimizer over named parameter groups.
#[derive(Debug)]
pub struct Optimizer {
    rule: Rule,
    groups: Vec<ParamGroup>,
    state: BTreeMap<String, ParamState>,
}

impl Optimizer {
    /// `groups` holds (group name, parameters); learning rates and weight decays come from
    /// `config`. Empty groups are dropped.
    pub fn new(
        config: &OptimizerConfig,
        groups: Vec<(String, Vec<(String, Tensor)>)>,
    ) -> Result<Self> {
        let rule = config.rule()?;
        let names: Vec<String> = groups.iter().map(|(g, _)| g.clone()).collect();
        config.check_groups(&names)?;
        let mut seen = HashSet::new();
        let groups = groups
            .into_iter()
            .filter(|(_, params)| !params.is_empty())
            .map(|(name, params)| {
                for (param, _) in &params {
                    if !seen.insert(param.clone()) {
                        bail!(Internal, "parameter {param} is in two optimizer groups");
                    }
                }
                let lr = config.lr_of(&name);
                let weight_decay = config.weight_decay_of(&name, rule);
                Ok(ParamGroup { name, params, base_lr: lr, lr, weight_decay })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Optimizer { rule, groups, state: BTreeMap::new() })
    }

    pub fn rule(&self) -> Rule {
        self.rule
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Sets every group's learning rate to its base rate times `factor` (the schedule).
    pub fn set_lr_factor(&mut self, factor: f64) {
        for group in &mut self.groups {
            group.lr = group.base_lr * factor;
        }
    }

    /// Parameters that take part in an update: requiring grad, with a gradient, not skipped.
    fn active<'a>(
        &'a self,
        skip: &'a HashSet<String>,
    ) -> impl Iterator<Item = (&'a ParamGroup, &'a String, &'a Tensor)> {
        self.groups.iter().flat_map(move |g| {
            g.params
                .iter()
                .filter(move |(name, p)| {
                    p.requires_grad() && p.grad().defined() && !skip.contains(name)
                })
                .map(move |(name, p)| (g, name, p))
        })
    }

    /// Total 2-norm of the gradients of the active parameters.
    pub fn grad_norm(&self, skip: &HashSet<String>) -> Result<Option<Tensor>> {
        let norms = self
            .active(skip)
            .map(|(_, _, p)| Ok(p.grad().f_norm()?))
            .collect::<Result<Vec<_>>>()?;
        if norms.is_empty() {
            return Ok(None);
        }
        Ok(Some(Tensor::f_stack(&norms, 0)?.f_norm()?))
    }

    /// Scales every active gradient by min(1, max_norm / (total_norm + 1e-6)); returns the
    /// total norm before clipping.
    pub fn clip_grad_norm(&self, max_norm: f64, skip: &HashSet<String>) -> Result<Option<f64>> {
        let Some(total) = self.grad_norm(skip)? else { return Ok(None) };
        tch::no_grad(|| -> Result<()> {
            let coef = total
                .f_add_scalar(1e-6)?
                .f_reciprocal()?
                .f_mul_scalar(max_norm)?
                .f_clamp_max(1.0)?;
            for (_, _, p) in self.active(skip) {
                let _ = p.grad().f_mul_(&coef)?;
            }
            Ok(())
        })?;
        Ok(Some(total.f_double_value(&[])?))
    }

    /// Multiplies every active gradient by `factor` (loss-scale removal); returns whether
    /// all of them are finite afterwards.
    pub fn scale_grads(&self, factor: f64, skip: &HashSet<String>) -> Result<bool> {
        tch::no_grad(|| -> Result<bool> {
            let mut finite = true;
            for (_, _, p) in self.active(skip) {
                let g = p.grad().f_mul_scalar_(factor)?;
                finite &= g.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0;
            }
            Ok(finite)
        })
    }

    /// Whether every active gradient is finite: contiguous float32 CPU gradients are
    /// scanned in place (`finite_kernel`), the others checked by torch operations with one
    /// device synchronisation.
    pub fn grads_finite(&self, skip: &HashSet<String>) -> Result<bool> {
        tch::no_grad(|| -> Result<bool> {
            let mut flags = Vec::new();
            for (_, _, p) in self.active(skip) {
                let grad = p.grad();
                match finite_kernel::all_finite(&grad) {
                    Some(true) => {}
                    Some(false) => return Ok(false),
                    None => flags.push(grad.f_isfinite()?.f_all()?),
                }
            }
            if flags.is_empty() {
                return Ok(true);
            }
            Ok(Tensor::f_stack(&flags, 0)?.f_all()?.f_int64_value(&[])? != 0)
        })
    }

    /// Sets the gradient of every parameter that requires one to NaN (creating it where
    /// none exists yet), so that an all-reduce of the gradients carries a skipped step to
    /// every process.
    pub fn poison_grads(&self) -> Result<()> {
        self.zero_grad()?;
        let params = self.groups.iter().flat_map(|g| g.params.iter().map(|(_, p)| p));
        let wanted: Vec<&Tensor> = params.filter(|p| p.requires_grad()).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        tch::with_grad(|| -> Result<()> {
            let sums = wanted
                .iter()
                .map(|p| p.f_sum(Kind::Float))
                .collect::<std::result::Result<Vec<_>, tch::TchError>>()?;
            Tensor::f_stack(&sums, 0)?.f_sum(Kind::Float)?.f_mul_scalar(f64::NAN)?.f_backward()?;
            Ok(())
        })
    }

    /// Zeroes every gradient (in place, keeping the gradient tensors, so that holders of
    /// `p.grad` such as torch.distributed buckets keep seeing them).
    pub fn zero_grad(&self) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            for group in &self.groups {
                for (_, p) in &group.params {
                    let mut g = p.grad();
                    if g.defined() {
                        g = g.f_detach_()?;
                        let _ = g.f_zero_()?;
                    }
                }
            }
            Ok(())
        })
    }

    /// One update of every active parameter; the names in `skip` are left untouched (their
    /// state does not advance either, as torch does for parameters whose grad is None).
    pub fn step(&mut self, skip: &HashSet<String>) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let rule = self.rule;
        for group in &self.groups {
            for (name, param) in &group.params {
                if !param.requires_grad() || skip.contains(name) {
                    continue;
                }
                let grad = param.grad();
                if !grad.defined() {
                    continue;
                }
                let state = self.state.entry(name.clone()).or_default();
                update(rule, group.lr, group.weight_decay, param, &grad, state)?;
            }
        }
        Ok(())
    }

    /// The state as named tensors `<param>.<key>` with key in step, momentum_buffer,
    /// exp_avg, exp_avg_sq (the very tensors, not copies).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (name, s) in &self.state {
            let entries = [
                ("step", &s.step),
                ("momentum_buffer", &s.momentum_buffer),
                ("exp_avg", &s.exp_avg),
                ("exp_avg_sq", &s.exp_avg_sq),
            ];
            for (key, tensor) in entries {
                if let Some(t) = tensor {
                    out.push((format!("{name}.{key}"), t.shallow_clone()));
                }
            }
        }
        out
    }

    /// Replaces the state with `named` (as written by `state_tensors`), copied to the
    /// parameters' devices. Names of unknown parameters or keys are an error.
    pub fn load_state_tensors(&mut self, named: &[(String, Tensor)]) -> Result<()> {
        let params: BTreeMap<&String, &Tensor> =
            self.groups.iter().flat_map(|g| g.params.iter().map(|(n, p)| (n, p))).collect();
        let mut state: BTreeMap<String, ParamState> = BTreeMap::new();
        for (full, tensor) in named {
            let Some((name, key)) = full.rsplit_once('.') else {
                bail!(Value, "optimizer state entry {full:?} has no key");
            };
            let Some(param) = params.get(&name.to_string()) else {
                bail!(Value, "optimizer state for unknown parameter {name:?}");
            };
            let s = state.entry(name.to_string()).or_default();
            let slot = match key {
                "step" => {
                    s.step = Some(detached_copy(
                        &tensor.f_to_kind(Kind::Int64)?.f_to_device(tch::Device::Cpu)?,
                    )?);
                    continue;
                }
                "momentum_buffer" => &mut s.momentum_buffer,
                "exp_avg" => &mut s.exp_avg,
                "exp_avg_sq" => &mut s.exp_avg_sq,
                _ => bail!(Value, "unknown optimizer state key {key:?} for {name}"),
            };
            if tensor.size() != param.size() {
                bail!(
                    Shape,
                    "optimizer state {full} has shape {:?} but the parameter has {:?}",
                    tensor.size(),
                    param.size()
                );
            }
            let value =
                detached_copy(&tensor.f_to_device(param.device())?.f_to_kind(param.kind())?)?;
            *slot = Some(value);
        }
        self.state = state;
        Ok(())
    }
}

/// a + alpha b rounded once, as torch's `a.add(b, alpha=alpha)` (a fused multiply-add with
/// alpha in the tensors' precision): float32 inputs are combined in float64, where the
/// product is exact, then rounded back. It matters for Adam's L2 decay, where grad and
/// wd * param can nearly cancel and Adam's normalisation magnifies any rounding difference.
fn add_scaled(a: &Tensor, b: &Tensor, alpha: f64) -> Result<Tensor> {
    if a.kind() != Kind::Float {
        return Ok(a.f_add(&b.f_mul_scalar(alpha)?)?);
    }
    let alpha = alpha as f32 as f64;
    let wide =
        a.f_to_kind(Kind::Double)?.f_add(&b.f_to_kind(Kind::Double)?.f_mul_scalar(alpha)?)?;
    Ok(wide.f_to_kind(Kind::Float)?)
}

/// `value` as a 0-dim tensor of `like`'s dtype and device, for fused scalar operations.
/// Adam's elementwise update by torch operations (any device and dtype):
/// `m <- lerp(m, g, 1 - b1)`, `v <- b2 v + (1 - b2) g^2`,
/// `p <- p - step_size * m / (sqrt(v) / sqrt(bc2) + eps)`.
fn adam_by_ops(
    p: &mut Tensor,
    g: &Tensor,
    exp_avg: &mut Tensor,
    exp_avg_sq: &mut Tensor,
    h: &AdamStep,
) -> Result<()> {
    let _ = exp_avg.f_lerp_(g, 1.0 - h.beta1)?;
    let _ = exp_avg_sq.f_mul_scalar_(h.beta2)?;
    let _ = exp_avg_sq.f_addcmul_(g, &g.f_mul_scalar(1.0 - h.beta2)?)?;
    let mut denom = exp_avg_sq.f_sqrt()?;
    let _ = denom.f_div_scalar_(h.root_bias_correction)?;
    let _ = denom.f_add_scalar_(h.eps)?;
    let _ = denom.f_div_scalar_(-h.step_size)?;
    let _ = p.f_addcdiv_(exp_avg, &denom)?;
    Ok(())
}

fn scalar(value: f64, like: &Tensor) -> Result<Tensor> {
    Ok(Tensor::f_scalar_tensor(value, (like.kind(), like.device()))?)
}

fn next_step(s: &mut ParamState) -> Result<f64> {
    let step = match s.step.take() {
        Some(step) => step.f_add_scalar(1)?,
        None => Tensor::f_ones([], (Kind::Int64, tch::Device::Cpu))?,
    };
    let t = step.f_int64_value(&[])? as f64;
    s.step = Some(step);
    Ok(t)
}

fn update(
    rule: Rule,
    lr: f64,
    weight_decay: f64,
    param: &Tensor,
    grad: &Tensor,
    s: &mut ParamState,
) -> Result<()> {
    let mut p = param.shallow_clone();
    next_step(s)?;
    match rule {
        Rule::Sgd { momentum, nesterov } => {
            let mut d = if weight_decay != 0.0 {
                grad.f_addcmul(param, &scalar(weight_decay, param)?)?
            } else {
                grad.shallow_clone()
            };
            if momentum != 0.0 {
                let buf = match s.momentum_buffer.take() {
                    None => detached_copy(&d)?,
                    Some(mut buf) => {
                        let _ = buf.f_mul_scalar_(momentum)?;
                        let _ = buf.f_add_(&d)?;
                        buf
                    }
                };
                d = if nesterov {
                    d.f_addcmul(&buf, &scalar(momentum, param)?)?
                } else {
                    buf.shallow_clone()
                };
                s.momentum_buffer = Some(buf);
            }
            let _ = p.f_addcmul_(&d, &scalar(-lr, param)?)?;
        }
        Rule::Adam { beta1, beta2, eps, decoupled } => {
            let t = s.step.as_ref().map_or(Ok(1), |step| step.f_int64_value(&[]))? as f64;
            let g = if weight_decay != 0.0 && !decoupled {
                add_scaled(grad, param, weight_decay)?
            } else {
                grad.shallow_clone()
            };
            if weight_decay != 0.0 && decoupled {
                let _ = p.f_mul_scalar_(1.0 - lr * weight_decay)?;
            }
            let mut exp_avg = match s.exp_avg.take() {
                Some(m) => m,
                None => param.f_zeros_like()?,
            };
            let mut exp_avg_sq = match s.exp_avg_sq.take() {
                Some(v) => v,
                None => param.f_zeros_like()?,
            };
            let bias_correction1 = 1.0 - beta1.powf(t);
            let bias_correction2 = 1.0 - beta2.powf(t);
            let h = AdamStep {
                beta1,
                beta2,
                eps,
                step_size: lr / bias_correction1,
                root_bias_correction: bias_correction2.sqrt(),
            };
            if adam_kernel::fits(&[&p, &g, &exp_avg, &exp_avg_sq]) {
                adam_kernel::step(&p, &g, &exp_avg, &exp_avg_sq, &h)?;
            } else {
                adam_by_ops(&mut p, &g, &mut exp_avg, &mut exp_avg_sq, &h)?;
            }
            s.exp_avg = Some(exp_avg);
            s.exp_avg_sq = Some(exp_avg_sq);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn quadratic_run(config: &OptimizerConfig, steps: usize) -> Vec<f64> {
        let p = Tensor::from_slice(&[1.0f32, -2.0, 3.0]).set_requires_grad(true);
        let mut opt =
            Optimizer::new(config, vec![("head".into(), vec![("p".into(), p.shallow_clone())])])
                .unwrap();
        for _ in 0..steps {
            opt.zero_grad().unwrap();
            (&p * &p).sum(Kind::Float).backward();
            opt.step(&HashSet::new()).unwrap();
        }
        Vec::<f64>::try_from(p.detach().to_kind(Kind::Double)).unwrap()
    }

    #[test]
    fn sgd_matches_hand_computed_momentum() {
        // p' = p - lr (mu b + g): with g = 2p, b1 = g1, b2 = mu b1 + g2.
        let config = OptimizerConfig {
            name: OptimizerName::Sgd,
            lr: 0.1,
            momentum: 0.5,
            ..Default::default()
        };
        let got = quadratic_run(&config, 2);
        let p0 = 1.0f64;
        let p1 = p0 - 0.1 * 2.0 * p0;
        let p2 = p1 - 0.1 * (0.5 * 2.0 * p0 + 2.0 * p1);
        assert!((got[0] - p2).abs() < 1e-6, "{got:?} vs {p2}");
    }

    /// The two-pass kernel gives the weights and moments of the torch operations bit for bit
    /// (vector bodies and scalar tails, both branches of lerp's weight).
    #[test]
    fn adam_kernel_is_the_torch_operations_bit_for_bit() {
        for (len, beta1, beta2) in [(100_003, 0.9, 0.999), (37, 0.3, 0.5), (5, 0.9, 0.99)] {
            tch::manual_seed(len);
            let opts = (Kind::Float, tch::Device::Cpu);
            let p = Tensor::randn([len], opts);
            let (m, v) = (Tensor::zeros([len], opts), Tensor::zeros([len], opts));
            let (mut p2, mut m2, mut v2) = (p.copy(), m.copy(), v.copy());
            for t in 1..=4 {
                let g = Tensor::randn([len], opts) * 0.1;
                let h = AdamStep {
                    beta1,
                    beta2,
                    eps: 1e-8,
                    step_size: 1e-3 / (1.0 - f64::powi(beta1, t)),
                    root_bias_correction: (1.0 - f64::powi(beta2, t)).sqrt(),
                };
                assert!(adam_kernel::fits(&[&p, &g, &m, &v]));
                adam_kernel::step(&p, &g, &m, &v, &h).unwrap();
                adam_by_ops(&mut p2, &g, &mut m2, &mut v2, &h).unwrap();
                for (a, b) in [(&p, &p2), (&m, &m2), (&v, &v2)] {
                    assert!(a.equal(b), "len {len}, step {t}");
                }
            }
        }
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        // After one step, Adam moves every coordinate by lr * sign(grad) (up to eps).
        let config = OptimizerConfig { name: OptimizerName::Adam, lr: 0.01, ..Default::default() };
        let got = quadratic_run(&config, 1);
        let expected = [0.99, -1.99, 2.99];
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn state_round_trips_and_names_are_checked() {
        let p = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let config = OptimizerConfig { name: OptimizerName::Adamw, ..Default::default() };
        let mut opt =
            Optimizer::new(&config, vec![("head".into(), vec![("w".into(), p.shallow_clone())])])
                .unwrap();
        assert_eq!(opt.groups()[0].weight_decay, 0.01);
        p.sum(Kind::Float).backward();
        opt.step(&HashSet::new()).unwrap();
        let state = opt.state_tensors();
        let keys: Vec<&str> = state.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["w.step", "w.exp_avg", "w.exp_avg_sq"]);
        opt.load_state_tensors(&state).unwrap();
        let bad = vec![("v.step".to_string(), Tensor::from(1i64))];
        assert!(opt.load_state_tensors(&bad).is_err());
    }

    #[test]
    fn unknown_names_are_config_errors() {
        let err = "lamb".parse::<OptimizerName>().unwrap_err();
        assert!(matches!(err, crate::SladeError::Config(_)));
        assert!(err.to_string().contains("\"sgd\", \"adam\", \"adamw\""));
        let config = OptimizerConfig {
            group_lr: BTreeMap::from([("basis".to_string(), 0.1)]),
            ..Default::default()
        };
        assert!(Optimizer::new(&config, vec![("head".into(), vec![])]).is_err());
    }
}
