//! The teacher (SLADE Sec 3.1, DESIGN.md §2.2): the embedding model fine-tuned with a
//! ranking loss on labeled batches, as an [`Objective`].
//!
//! Per step: f = g(x) in training mode, then L_rank(f, y): contrastive (pos_margin 0,
//! neg_margin 1) or multi-similarity (alpha 2, beta 50, base 0.5), over all pairs of the
//! batch or over the pairs of the multi-similarity miner (epsilon 0.1), with
//! pytorch-metric-learning's values. In fp16 mode only the network runs under autocast; the
//! loss is computed in float32.

use super::ranking::{pair_counts, read_scalars, RankingConfig, RankingLoss};
use super::{Metrics, Objective, StepContext};
use crate::error::Result;
use crate::nn::Model;
use crate::validate;
use tch::{Kind, Tensor};

/// Images (N, C, H, W) on the model's device and their labels (N, any integer dtype, any
/// device: they are moved to the images' device, as PML does).
pub struct LabeledBatch {
    pub images: Tensor,
    pub labels: Tensor,
}

/// Checks a labeled batch; errors name `images_name` and `labels_name`.
pub(crate) fn check_labeled(
    model: &Model,
    images: &Tensor,
    labels: &Tensor,
    images_name: &str,
    labels_name: &str,
) -> Result<()> {
    model.check_images(images, images_name, false)?;
    validate::label_tensor(labels, images.size()[0] as usize, labels_name, images_name)
}

/// The teacher objective: a ranking loss on labeled batches.
pub struct Teacher {
    config: RankingConfig,
    ranking: RankingLoss,
}

impl Teacher {
    pub fn new(config: RankingConfig) -> Result<Self> {
        let ranking = RankingLoss::from_config(&config)?;
        Ok(Teacher { config, ranking })
    }

    pub fn settings(&self) -> &RankingConfig {
        &self.config
    }

    /// L_rank and its metrics on given `embeddings` (N x D, floating, finite) and `labels`
    /// (N, any integer dtype, any device), checked first; errors name the argument.
    pub fn loss_on(&self, embeddings: &Tensor, labels: &Tensor) -> Result<(Tensor, Metrics)> {
        let (n, _) = validate::embeddings(embeddings, "embeddings")?;
        validate::label_tensor(labels, n, "labels", "embeddings")?;
        self.terms(embeddings, labels)
    }

    /// L_rank of the embeddings `f` with `labels`, and its metrics.
    fn terms(&self, f: &Tensor, labels: &Tensor) -> Result<(Tensor, Metrics)> {
        let labels = labels.f_to_device(f.device())?.f_to_kind(Kind::Int64)?;
        let (loss, masks) = self.ranking.labeled(f, &labels)?;
        let (pos, neg) = pair_counts(&masks)?;
        let mut metrics = Metrics::new();
        read_scalars(
            &mut metrics,
            vec![
                ("loss/rank".into(), loss.shallow_clone()),
                ("pairs/positive".into(), pos),
                ("pairs/negative".into(), neg),
            ],
        )?;
        Ok((loss, metrics))
    }
}

impl Objective for Teacher {
    type Batch = LabeledBatch;
    const KIND: &'static str = "teacher";

    fn config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).expect("plain settings serialise")
    }

    fn check_batch(&self, model: &Model, batch: &LabeledBatch) -> Result<()> {
        check_labeled(model, &batch.images, &batch.labels, "images", "labels")
    }

    fn loss(&mut self, ctx: &mut StepContext, batch: &LabeledBatch) -> Result<(Tensor, Metrics)> {
        let f = ctx.model.forward_t(&batch.images, true)?;
        tch::autocast(false, || self.terms(&f.f_to_kind(Kind::Float)?, &batch.labels))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{optim::OptimizerConfig, Trainer, TrainerConfig};
    use super::*;
    use crate::nn::ModelConfig;
    use tch::Device;

    fn trainer(loss: &str, miner: bool) -> Trainer<Teacher> {
        let config = TrainerConfig {
            model: ModelConfig { dim: 16, ..Default::default() },
            optimizer: OptimizerConfig { lr: 3e-3, ..Default::default() },
            precision: super::super::Precision::Fp32,
            seed: 2,
        };
        let ranking = RankingConfig { loss: loss.parse().unwrap(), miner, ..Default::default() };
        Trainer::new(config, Device::Cpu, |_, _| Teacher::new(ranking)).unwrap()
    }

    fn batch() -> LabeledBatch {
        tch::manual_seed(4);
        let labels = Tensor::arange(4, (Kind::Int64, Device::Cpu)).repeat([4]);
        let noise = Tensor::randn([16, 1, 28, 28], (Kind::Float, Device::Cpu));
        let images = noise * 0.3 + labels.view([16, 1, 1, 1]).to_kind(Kind::Float);
        LabeledBatch { images, labels }
    }

    #[test]
    fn every_loss_trains_and_reports_pairs() {
        let b = batch();
        for (loss, miner) in [("contrastive", false), ("multi_similarity", true)] {
            let mut t = trainer(loss, miner);
            let first = t.step(&b).unwrap();
            assert_eq!(first["loss"], first["loss/rank"]);
            if !miner {
                assert_eq!((first["pairs/positive"], first["pairs/negative"]), (48.0, 192.0));
            }
            let mut last = first["loss"];
            for _ in 0..8 {
                last = t.step(&b).unwrap()["loss"];
            }
            assert!(last < first["loss"], "{loss}: {} -> {last}", first["loss"]);
        }
    }

    #[test]
    fn bad_batches_name_the_argument() {
        let mut t = trainer("contrastive", false);
        let b = batch();
        let short =
            LabeledBatch { images: b.images.shallow_clone(), labels: b.labels.narrow(0, 0, 3) };
        let err = t.step(&short).unwrap_err().to_string();
        assert!(err.contains("labels") && err.contains("images"), "{err}");
        let float = LabeledBatch {
            images: b.images.shallow_clone(),
            labels: b.labels.to_kind(Kind::Float),
        };
        assert!(matches!(t.step(&float), Err(crate::SladeError::Dtype(_))));
        assert_eq!(t.step_count(), 0);
    }
}
