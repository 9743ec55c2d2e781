//! SwAV (Caron et al., NeurIPS 2020), the self-supervised initialisation of SLADE (Sec 3.1,
//! DESIGN.md §2.1), as an [`Objective`].
//!
//! Each step: the prototypes C (K x dim) are L2-normalised; every crop is embedded (crops of
//! one resolution that follow each other go through the backbone together, as in the SwAV
//! reference code, so they share BatchNorm statistics); scores s = z C^T; codes q from
//! Sinkhorn-Knopp on the scores of each of the two global crops (no gradient through q); and
//!
//!   L = 1/2 sum_{i in {0,1}} 1/(V-1) sum_{v != i} -mean_n sum_k q_i[n,k] log softmax(s_v[n] / T)_k
//!
//! over all V crops (2 global + local ones). Not included: the feature queue and LARS of the
//! reference code; codes are computed per process (no all-reduce in Sinkhorn).

use super::{Metrics, Objective, StepContext};
use crate::bail;
use crate::error::Result;
use crate::nn::layers::{l2_normalize, Builder};
use crate::nn::store::uniform;
use crate::nn::Model;
use crate::settings::{invalid, Settings};
use crate::validate;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use tch::{Kind, Tensor};

/// Name of the prototype matrix among the trainer's parameters (group "head").
pub const PROTOTYPES: &str = "prototypes";

/// Settings of the SwAV objective.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwavConfig {
    /// Number of prototypes K.
    pub num_prototypes: i64,
    /// Softmax temperature T of the swapped prediction.
    pub temperature: f64,
    /// Entropic regularisation of Sinkhorn-Knopp.
    pub epsilon: f64,
    pub sinkhorn_iterations: i64,
    /// The prototypes are not updated during this many first steps (their gradient is
    /// dropped, as the reference code's `freeze_prototypes_niters`); 0: never frozen.
    pub freeze_prototypes_steps: i64,
}

impl Default for SwavConfig {
    /// SwAV's temperature 0.1, Sinkhorn epsilon 0.05 and 3 iterations (DESIGN.md §2.1); 100
    /// prototypes, sized for the small presets (ours; SwAV's ImageNet value, 3000, is set by
    /// the paper presets).
    fn default() -> Self {
        SwavConfig {
            num_prototypes: 100,
            temperature: 0.1,
            epsilon: 0.05,
            sinkhorn_iterations: 3,
            freeze_prototypes_steps: 0,
        }
    }
}

impl Settings for SwavConfig {
    const WHAT: &'static str = "swav";

    fn validate(&self) -> Result<()> {
        if self.num_prototypes < 1 {
            return Err(invalid("num_prototypes", "a positive integer", self.num_prototypes));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(invalid("temperature", "a positive number", self.temperature));
        }
        if !(self.epsilon.is_finite() && self.epsilon > 0.0) {
            return Err(invalid("epsilon", "a positive number", self.epsilon));
        }
        if self.sinkhorn_iterations < 1 {
            return Err(invalid("sinkhorn_iterations", ">= 1", self.sinkhorn_iterations));
        }
        if self.freeze_prototypes_steps < 0 {
            return Err(invalid("freeze_prototypes_steps", ">= 0", self.freeze_prototypes_steps));
        }
        Ok(())
    }
}

/// Sinkhorn-Knopp codes of scores (B x K), as SwAV: Q = exp(s / eps)^T normalised to sum 1,
/// then `iterations` times rows to sum 1/K and columns to sum 1/B; returns B Q^T (each row a
/// distribution over prototypes). Computed in float32 without autograd. The scores of
/// normalised embeddings and prototypes lie in [-1, 1], so exp(s / eps) cannot overflow for
/// eps >= 0.05.
pub fn sinkhorn(scores: &Tensor, epsilon: f64, iterations: i64) -> Result<Tensor> {
    tch::no_grad(|| {
        let q =
            scores.f_detach()?.f_to_kind(Kind::Float)?.f_div_scalar(epsilon)?.f_exp()?.f_tr()?;
        let (k, b) = (q.size()[0] as f64, q.size()[1] as f64);
        let mut q = q.f_div(&q.f_sum(Kind::Float)?)?;
        for _ in 0..iterations {
            q = q
                .f_div(&q.f_sum_dim_intlist([1i64].as_slice(), true, Kind::Float)?)?
                .f_div_scalar(k)?;
            q = q
                .f_div(&q.f_sum_dim_intlist([0i64].as_slice(), true, Kind::Float)?)?
                .f_div_scalar(b)?;
        }
        Ok(q.f_mul_scalar(b)?.f_tr()?)
    })
}

/// The swapped-prediction loss from the scores of every crop (each B x K) and the codes of
/// crops 0 and 1.
pub fn swapped_prediction_loss(
    scores: &[Tensor],
    codes: &[Tensor; 2],
    temperature: f64,
) -> Result<Tensor> {
    let views = scores.len();
    let mut total: Option<Tensor> = None;
    for (i, q) in codes.iter().enumerate() {
        let mut sub: Option<Tensor> = None;
        for (v, s) in scores.iter().enumerate() {
            if v == i {
                continue;
            }
            let log_p = s
                .f_to_kind(Kind::Float)?
                .f_div_scalar(temperature)?
                .f_log_softmax(1, Kind::Float)?;
            let term = q
                .f_mul(&log_p)?
                .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Float)?
                .f_mean(Kind::Float)?;
            sub = Some(match sub {
                None => term.f_neg()?,
                Some(acc) => acc.f_sub(&term)?,
            });
        }
        let sub = sub.expect("at least two crops").f_div_scalar((views - 1) as f64)?;
        total = Some(match total {
            None => sub,
            Some(acc) => acc.f_add(&sub)?,
        });
    }
    Ok(total.expect("two codes").f_div_scalar(2.0)?)
}

/// The SwAV loss of the crops' embeddings (one `B x dim` tensor per crop, the two global
/// crops first): the prototypes are L2-normalised in place (no gradient), then scores
/// s = z C^T, codes from Sinkhorn-Knopp on the two global crops, and the swapped
/// prediction over every crop. Inputs are not checked (see [`swav_loss_on`]).
pub fn swav_loss(
    config: &SwavConfig,
    prototypes: &Tensor,
    embeddings: &[Tensor],
) -> Result<Tensor> {
    tch::no_grad(|| -> Result<()> {
        let normalised = l2_normalize(prototypes)?;
        prototypes.shallow_clone().f_copy_(&normalised)?;
        Ok(())
    })?;
    let scores = embeddings
        .iter()
        .map(|z| Ok(z.f_matmul(&prototypes.f_tr()?)?))
        .collect::<Result<Vec<_>>>()?;
    let (eps, iters) = (config.epsilon, config.sinkhorn_iterations);
    let codes = [sinkhorn(&scores[0], eps, iters)?, sinkhorn(&scores[1], eps, iters)?];
    swapped_prediction_loss(&scores, &codes, config.temperature)
}

/// [`swav_loss`] on given embeddings, checked first (errors name `embeddings[i]` and
/// `prototypes`): at least two crops, each a finite `B x dim` floating matrix of the same
/// `B`, on the prototypes' device and of their dim. `frozen` detaches the prototypes in
/// the scores, so that they receive no gradient (`freeze_prototypes_steps`).
pub fn swav_loss_on(
    config: &SwavConfig,
    prototypes: &Tensor,
    embeddings: &[Tensor],
    frozen: bool,
) -> Result<Tensor> {
    config.validate()?;
    validate::matrix(prototypes, "prototypes")?;
    if embeddings.len() < 2 {
        bail!(
            Value,
            "embeddings must hold the embeddings of at least the two global crops, got {}",
            embeddings.len()
        );
    }
    let rows = embeddings[0].size()[0];
    for (i, z) in embeddings.iter().enumerate() {
        let name = format!("embeddings[{i}]");
        let (n, _) = validate::matrix(z, &name)?;
        validate::same_device(z, &name, prototypes, "prototypes")?;
        validate::same_dim(z, &name, prototypes, "prototypes")?;
        if n as i64 != rows {
            bail!(
                Shape,
                "every crop must hold the same images: embeddings[0] has {rows} rows but {name} \
                 has {n}"
            );
        }
    }
    for (i, z) in embeddings.iter().enumerate() {
        validate::finite(z, &format!("embeddings[{i}]"))?;
    }
    if frozen {
        // The detached view shares the storage: the normalisation still lands in place.
        return swav_loss(config, &prototypes.f_detach()?, embeddings);
    }
    swav_loss(config, prototypes, embeddings)
}

/// The SwAV objective: its settings and the prototype matrix.
pub struct Swav {
    config: SwavConfig,
    prototypes: Tensor,
}

impl Swav {
    /// Registers the prototypes (K x dim, torch's Linear initialisation, normalised at every
    /// step) with the builder.
    pub fn new(config: SwavConfig, builder: &mut Builder, model: &Model) -> Result<Self> {
        config.validate()?;
        let dim = model.config().dim;
        let init = uniform(builder.rng, &[config.num_prototypes, dim], 1.0 / (dim as f64).sqrt())?;
        let prototypes = builder.parameter("", PROTOTYPES, init)?;
        Ok(Swav { config, prototypes })
    }

    pub fn settings(&self) -> &SwavConfig {
        &self.config
    }

    /// Embeddings of every crop, crops of one resolution that follow each other embedded in
    /// one backbone pass.
    fn embed_crops(model: &Model, crops: &[Tensor]) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(crops.len());
        let mut start = 0;
        while start < crops.len() {
            let side = |t: &Tensor| (t.size()[2], t.size()[3]);
            let mut end = start + 1;
            while end < crops.len() && side(&crops[end]) == side(&crops[start]) {
                end += 1;
            }
            let group = Tensor::f_cat(&crops[start..end], 0)?;
            let z = model.forward_t(&group, true)?;
            out.extend(z.f_split(crops[start].size()[0], 0)?);
            start = end;
        }
        Ok(out)
    }
}

impl Objective for Swav {
    type Batch = [Tensor];
    const KIND: &'static str = "swav";

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("plain settings serialise")
    }

    fn check_batch(&self, model: &Model, crops: &[Tensor]) -> Result<()> {
        if crops.len() < 2 {
            bail!(
                Value,
                "crops must hold at least the two global crops, got {} tensor(s)",
                crops.len()
            );
        }
        for (i, crop) in crops.iter().enumerate() {
            model.check_images(crop, &format!("crops[{i}]"), false)?;
        }
        let n = crops[0].size()[0];
        for (i, crop) in crops.iter().enumerate() {
            if crop.size()[0] != n {
                bail!(
                    Shape,
                    "every crop must hold the same images: crops[0] has {n} but crops[{i}] has {}",
                    crop.size()[0]
                );
            }
        }
        if crops[0].size() != crops[1].size() {
            bail!(
                Shape,
                "the two global crops must have one shape, got {:?} and {:?}",
                crops[0].size(),
                crops[1].size()
            );
        }
        Ok(())
    }

    fn loss(&mut self, ctx: &mut StepContext, crops: &[Tensor]) -> Result<(Tensor, Metrics)> {
        let embeddings = Self::embed_crops(ctx.model, crops)?;
        let loss = swav_loss(&self.config, &self.prototypes, &embeddings)?;
        Ok((loss, Metrics::new()))
    }

    fn frozen_parameters(&self, step: i64) -> HashSet<String> {
        if step < self.config.freeze_prototypes_steps {
            HashSet::from([PROTOTYPES.to_string()])
        } else {
            HashSet::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::optim::{OptimizerConfig, OptimizerName};
    use super::super::{Trainer, TrainerConfig};
    use super::*;
    use crate::nn::ModelConfig;
    use tch::Device;

    fn trainer(freeze: i64) -> Trainer<Swav> {
        let config = TrainerConfig {
            model: ModelConfig { dim: 16, ..Default::default() },
            optimizer: OptimizerConfig { name: OptimizerName::Sgd, lr: 0.1, ..Default::default() },
            precision: super::super::Precision::Fp32,
            seed: 1,
        };
        let swav = SwavConfig {
            num_prototypes: 10,
            freeze_prototypes_steps: freeze,
            ..Default::default()
        };
        Trainer::new(config, Device::Cpu, |b, m| Swav::new(swav, b, m)).unwrap()
    }

    fn crops() -> Vec<Tensor> {
        tch::manual_seed(0);
        let opts = (Kind::Float, Device::Cpu);
        vec![
            Tensor::randn([8, 1, 28, 28], opts),
            Tensor::randn([8, 1, 28, 28], opts),
            Tensor::randn([8, 1, 16, 16], opts),
        ]
    }

    #[test]
    fn sinkhorn_codes_are_balanced_distributions() {
        let scores = Tensor::randn([12, 5], (Kind::Float, Device::Cpu)).tanh();
        let q = sinkhorn(&scores, 0.05, 3).unwrap();
        let rows = q.sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        // The last normalisation is over samples: each code sums to one.
        assert!(rows.allclose(&Tensor::ones([12], (Kind::Float, Device::Cpu)), 1e-5, 1e-5, false));
        assert!(q.min().double_value(&[]) >= 0.0);
    }

    #[test]
    fn prototypes_stay_normalised_and_frozen_ones_do_not_move() {
        let mut t = trainer(1);
        let crops = crops();
        t.step(&crops).unwrap();
        let c = t.params().get(PROTOTYPES).unwrap().tensor.detach().copy();
        let norms = c.norm_scalaropt_dim(2, [1i64].as_slice(), false);
        assert!(norms.allclose(&Tensor::ones([10], (Kind::Float, Device::Cpu)), 1e-5, 1e-6, false));
        t.step(&crops).unwrap();
        assert!(!t.params().get(PROTOTYPES).unwrap().tensor.equal(&c));
    }

    #[test]
    fn bad_crops_are_rejected() {
        let mut t = trainer(0);
        let c = crops();
        assert!(t.step(&c[..1]).is_err());
        let mixed = vec![c[0].shallow_clone(), c[1].narrow(0, 0, 4)];
        assert!(t.step(&mixed).unwrap_err().to_string().contains("crops[1]"));
    }

    #[test]
    fn save_load_resumes_bitwise() {
        let dir = std::env::temp_dir().join(format!("slade-swav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ckpt.safetensors");
        let crops = crops();
        let mut a = trainer(0);
        a.step(&crops).unwrap();
        a.save(&path).unwrap();
        let expected = a.step(&crops).unwrap()["loss"];
        let mut b = trainer(0);
        b.load(&path).unwrap();
        assert_eq!(b.step_count(), 1);
        let got = b.step(&crops).unwrap()["loss"];
        assert_eq!(got.to_bits(), expected.to_bits());
        for ((n, x), (_, y)) in a.named_parameters().iter().zip(b.named_parameters()) {
            assert!(x.equal(&y), "{n}");
        }
        assert!(dir.join("ckpt.json").exists());
        let mut other = Trainer::new(
            TrainerConfig {
                model: ModelConfig { dim: 8, ..Default::default() },
                ..Default::default()
            },
            Device::Cpu,
            |b, m| Swav::new(SwavConfig { num_prototypes: 10, ..Default::default() }, b, m),
        )
        .unwrap();
        let err = other.load(&path).unwrap_err().to_string();
        assert!(err.contains("config.model.dim"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
