//! The ranking loss L_rank of the teacher and the student (DESIGN.md §2.2): contrastive or
//! multi-similarity, over all pairs the labels define or over the pairs of the
//! multi-similarity miner, with pytorch-metric-learning's values (see `crate::losses`).
//! Also the scalar-metrics helper the trainers share.

use super::Metrics;
use crate::error::Result;
use crate::losses::distance::{cosine_similarity, euclidean_distance};
use crate::losses::{
    contrastive_from_distances, multi_similarity_from_similarity, ContrastiveParams,
    MultiSimilarityParams, PairMasks,
};
use crate::mining::multi_similarity_masks;
use crate::settings::{invalid, within, Settings};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

crate::named_choice! {
    /// Which ranking loss (DESIGN.md §2.2).
    pub enum LossKind ("loss") {
        Contrastive = "contrastive",
        MultiSimilarity = "multi_similarity",
    }
}

/// Settings of a ranking loss.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RankingConfig {
    pub loss: LossKind,
    /// Mine the labeled pairs with the multi-similarity miner (else: all pairs).
    pub miner: bool,
    /// Contrastive margins (PML defaults 0 and 1).
    pub pos_margin: f64,
    pub neg_margin: f64,
    /// Multi-similarity weights (PML defaults 2, 50, 0.5).
    pub alpha: f64,
    pub beta: f64,
    pub base: f64,
    /// Margin of the multi-similarity miner (PML default 0.1).
    pub epsilon: f64,
}

impl Default for RankingConfig {
    fn default() -> Self {
        let c = ContrastiveParams::default();
        let m = MultiSimilarityParams::default();
        RankingConfig {
            loss: LossKind::Contrastive,
            miner: false,
            pos_margin: c.pos_margin,
            neg_margin: c.neg_margin,
            alpha: m.alpha,
            beta: m.beta,
            base: m.base,
            epsilon: 0.1,
        }
    }
}

impl RankingConfig {
    /// The chosen loss with its parameters.
    pub fn kind(&self) -> RankingKind {
        match self.loss {
            LossKind::Contrastive => RankingKind::Contrastive(ContrastiveParams {
                pos_margin: self.pos_margin,
                neg_margin: self.neg_margin,
            }),
            LossKind::MultiSimilarity => RankingKind::MultiSimilarity(MultiSimilarityParams {
                alpha: self.alpha,
                beta: self.beta,
                base: self.base,
            }),
        }
    }
}

impl Settings for RankingConfig {
    const WHAT: &'static str = "ranking";

    /// The chosen loss's parameters (the other loss's are not read), and the miner's
    /// epsilon when the miner is on.
    fn validate(&self) -> Result<()> {
        within(
            "",
            match self.kind() {
                RankingKind::Contrastive(p) => p.check(),
                RankingKind::MultiSimilarity(p) => p.check(),
            },
        )?;
        if self.miner && !self.epsilon.is_finite() {
            return Err(invalid("epsilon", "a finite number", self.epsilon));
        }
        Ok(())
    }
}

/// Which ranking loss, with its parameters.
#[derive(Clone, Copy, Debug)]
pub enum RankingKind {
    Contrastive(ContrastiveParams),
    MultiSimilarity(MultiSimilarityParams),
}

/// A checked ranking loss: the kind and, with the miner, its epsilon.
#[derive(Clone, Copy, Debug)]
pub struct RankingLoss {
    pub kind: RankingKind,
    pub miner_epsilon: Option<f64>,
}

impl RankingLoss {
    pub fn from_config(config: &RankingConfig) -> Result<Self> {
        config.validate()?;
        Ok(RankingLoss {
            kind: config.kind(),
            miner_epsilon: config.miner.then_some(config.epsilon),
        })
    }

    /// The loss of `embeddings` (N x D, float) over the pairs of `labels` (int64, on the
    /// embeddings' device): all of them, or the multi-similarity miner's. Returns the pairs
    /// used as masks.
    pub fn labeled(&self, embeddings: &Tensor, labels: &Tensor) -> Result<(Tensor, PairMasks)> {
        let Some(epsilon) = self.miner_epsilon else {
            let masks = PairMasks::from_labels(labels)?;
            return Ok((self.on_masks(embeddings, &masks)?, masks));
        };
        match self.kind {
            RankingKind::MultiSimilarity(params) => {
                let similarity = cosine_similarity(embeddings)?;
                let masks = multi_similarity_masks(&similarity, labels, epsilon)?;
                let loss = multi_similarity_from_similarity(&similarity, &masks, &params)?;
                Ok((loss, masks))
            }
            RankingKind::Contrastive(params) => {
                let similarity = tch::no_grad(|| cosine_similarity(embeddings))?;
                let masks = multi_similarity_masks(&similarity, labels, epsilon)?;
                let distances = euclidean_distance(embeddings)?;
                Ok((contrastive_from_distances(&distances, &masks, &params)?, masks))
            }
        }
    }

    /// The loss of `embeddings` over the pairs of `masks` (each pair once), as PML's loss
    /// with the equivalent indices tuple.
    pub fn on_masks(&self, embeddings: &Tensor, masks: &PairMasks) -> Result<Tensor> {
        match self.kind {
            RankingKind::Contrastive(params) => {
                contrastive_from_distances(&euclidean_distance(embeddings)?, masks, &params)
            }
            RankingKind::MultiSimilarity(params) => {
                multi_similarity_from_similarity(&cosine_similarity(embeddings)?, masks, &params)
            }
        }
    }
}

/// Numbers of positive and negative pairs of `masks` (0-d tensors, not yet read).
pub fn pair_counts(masks: &PairMasks) -> Result<(Tensor, Tensor)> {
    Ok((masks.pos.f_sum(Kind::Float)?, masks.neg.f_sum(Kind::Float)?))
}

/// Reads 0-d tensors into `metrics` with one device-to-host copy.
pub fn read_scalars(metrics: &mut Metrics, named: Vec<(String, Tensor)>) -> Result<()> {
    if named.is_empty() {
        return Ok(());
    }
    let values = tch::no_grad(|| -> Result<Tensor> {
        let flat = named
            .iter()
            .map(|(_, t)| Ok(t.f_detach()?.f_to_kind(Kind::Double)?.f_reshape([1])?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::f_cat(&flat, 0)?.f_to_device(tch::Device::Cpu)?)
    })?;
    let mut host = vec![0f64; named.len()];
    values.f_copy_data(&mut host, named.len())?;
    for ((name, _), value) in named.into_iter().zip(host) {
        metrics.insert(name, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::{contrastive, multi_similarity, PairSource};
    use crate::mining::multi_similarity_miner;
    use tch::Device;

    fn batch() -> (Tensor, Tensor) {
        tch::manual_seed(11);
        let x = Tensor::randn([24, 6], (Kind::Float, Device::Cpu));
        let labels = Tensor::randint(4, [24], (Kind::Int64, Device::Cpu));
        (x, labels)
    }

    fn loss(name: &str, miner: bool) -> RankingLoss {
        let config = RankingConfig { loss: name.parse().unwrap(), miner, ..Default::default() };
        RankingLoss::from_config(&config).unwrap()
    }

    #[test]
    fn labeled_losses_equal_the_loss_functions() {
        let (x, labels) = batch();
        let close = |a: &Tensor, b: &Tensor| {
            approx::assert_abs_diff_eq!(a.double_value(&[]), b.double_value(&[]), epsilon = 1e-6)
        };
        let (c, _) = loss("contrastive", false).labeled(&x, &labels).unwrap();
        let params = ContrastiveParams::default();
        close(&c, &contrastive(&x, PairSource::Labels(&labels), &params).unwrap());
        let mined = multi_similarity_miner(&x, &labels, 0.1).unwrap();
        let (cm, masks) = loss("contrastive", true).labeled(&x, &labels).unwrap();
        close(&cm, &contrastive(&x, PairSource::Pairs(&mined), &params).unwrap());
        assert_eq!(masks.pos.sum(Kind::Int64).int64_value(&[]), mined.num_pos() as i64);
        let ms = MultiSimilarityParams::default();
        let (m, _) = loss("multi_similarity", false).labeled(&x, &labels).unwrap();
        close(&m, &multi_similarity(&x, PairSource::Labels(&labels), &ms).unwrap());
        let (mm, _) = loss("multi_similarity", true).labeled(&x, &labels).unwrap();
        close(&mm, &multi_similarity(&x, PairSource::Pairs(&mined), &ms).unwrap());
    }

    #[test]
    fn unknown_loss_is_a_config_error() {
        let err = "triplet".parse::<LossKind>().unwrap_err();
        assert!(matches!(err, crate::SladeError::Config(_)), "{err}");
        assert!(err.to_string().contains("multi_similarity"), "{err}");
    }

    #[test]
    fn scalars_are_read_in_order() {
        let mut metrics = Metrics::new();
        let named =
            vec![("a".to_string(), Tensor::from(1.5f32)), ("b".to_string(), Tensor::from(3i64))];
        read_scalars(&mut metrics, named).unwrap();
        assert_eq!(metrics["a"], 1.5);
        assert_eq!(metrics["b"], 3.0);
    }
}
