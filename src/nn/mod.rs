//! Embedding networks: a backbone (small ConvNet, ResNet-18 or ResNet-50 with torchvision's
//! names) followed by an embedding head, f = normalize(W h + b) (DESIGN.md §2: the paper's
//! R50 with a 512-d embedding). Weights import from torchvision-style state_dicts.

pub mod convnet;
pub mod io;
pub mod layers;
pub mod pool;
pub mod resnet;
pub mod store;

use crate::bail;
use crate::error::Result;
use crate::settings::{invalid, Settings};
use crate::validate;
use layers::{l2_normalize, Builder, Linear};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::Path;
use store::{LoadOptions, LoadReport, ParamStore};
use tch::{Device, Kind, Tensor};

/// Optimizer group of the backbone's parameters.
pub const BACKBONE_GROUP: &str = "backbone";
/// Optimizer group of the embedding head's parameters.
pub const HEAD_GROUP: &str = "head";
/// Name prefix of the embedding head (`embedding.weight`, `embedding.bias`).
pub const HEAD_PREFIX: &str = "embedding";

/// A model and a batch shared by rayon workers that only run the model's evaluation-mode
/// forward pass without autograd on views of the batch: they read the weights, running
/// statistics and images and write none of them (torch's reads of a tensor are
/// thread-safe), and both outlive the workers (`par_iter` joins).
struct SharedForEval<'a> {
    model: &'a Model,
    images: &'a Tensor,
}

// Sound: see the type's docs; `embed_on_workers` is the only user.
unsafe impl Sync for SharedForEval<'_> {}

impl SharedForEval<'_> {
    /// Backbone features of images `start..start + len` of the batch.
    fn features_of_rows(&self, start: i64, len: i64) -> Result<Tensor> {
        self.model.features_t(&self.images.f_narrow(0, start, len)?, false)
    }
}

/// Which network, how many input channels, how wide the embedding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    pub backbone: BackboneKind,
    /// 1 (grayscale) or 3 (RGB).
    pub in_channels: i64,
    /// Width of the L2-normalised embedding.
    pub dim: i64,
}

impl Default for ModelConfig {
    /// The small presets' network (DESIGN.md §3, the embedded default job): ConvNet, grayscale,
    /// 128-d. The paper's ResNet-50 / RGB / 512-d is set by the paper presets.
    fn default() -> Self {
        ModelConfig { backbone: BackboneKind::ConvNet, in_channels: 1, dim: 128 }
    }
}

crate::named_choice! {
    /// The backbone architectures.
    pub enum BackboneKind ("backbone") {
        ConvNet = "convnet",
        ResNet18 = "resnet18",
        ResNet50 = "resnet50",
    }
}

impl BackboneKind {
    pub fn feature_dim(self) -> i64 {
        match self {
            BackboneKind::ConvNet => convnet::CHANNELS,
            BackboneKind::ResNet18 => resnet::Depth::R18.feature_dim(),
            BackboneKind::ResNet50 => resnet::Depth::R50.feature_dim(),
        }
    }

    /// Smallest image side the network accepts.
    pub fn min_side(self) -> i64 {
        match self {
            BackboneKind::ConvNet => convnet::MIN_SIDE,
            BackboneKind::ResNet18 | BackboneKind::ResNet50 => 1,
        }
    }
}

impl Settings for ModelConfig {
    const WHAT: &'static str = "model";

    fn validate(&self) -> Result<()> {
        if self.in_channels != 1 && self.in_channels != 3 {
            return Err(invalid("in_channels", "1 (grayscale) or 3 (RGB)", self.in_channels));
        }
        if self.dim < 1 {
            return Err(invalid("dim", "a positive integer", self.dim));
        }
        Ok(())
    }
}

#[derive(Debug)]
enum Backbone {
    ConvNet(convnet::ConvNet),
    ResNet(resnet::ResNet),
}

/// Backbone + embedding head, their parameters and buffers in one [`ParamStore`].
///
/// Parameter names: the backbone's (torchvision's for ResNets, e.g. `layer1.0.conv1.weight`)
/// then `embedding.weight`, `embedding.bias`. The backbone's parameters are in optimizer
/// group "backbone", the head's in "head".
#[derive(Debug)]
pub struct Model {
    config: ModelConfig,
    kind: BackboneKind,
    store: ParamStore,
    backbone: Backbone,
    head: Linear,
    training: bool,
    backbone_frozen: bool,
}

impl Model {
    /// A freshly initialised model (torchvision's initialisation for ResNets, torch's
    /// defaults for the head), its random values drawn from `rng`.
    pub fn new(config: &ModelConfig, device: Device, rng: &mut ChaCha8Rng) -> Result<Self> {
        config.validate()?;
        let kind = config.backbone;
        let mut store = ParamStore::new(device);
        let mut b = Builder { store: &mut store, rng, group: BACKBONE_GROUP.to_string() };
        let backbone = match kind {
            BackboneKind::ConvNet => {
                Backbone::ConvNet(convnet::ConvNet::new(&mut b, config.in_channels)?)
            }
            BackboneKind::ResNet18 => Backbone::ResNet(resnet::ResNet::new(
                &mut b,
                resnet::Depth::R18,
                config.in_channels,
            )?),
            BackboneKind::ResNet50 => Backbone::ResNet(resnet::ResNet::new(
                &mut b,
                resnet::Depth::R50,
                config.in_channels,
            )?),
        };
        b.group = HEAD_GROUP.to_string();
        let head = Linear::new(&mut b, HEAD_PREFIX, kind.feature_dim(), config.dim)?;
        Ok(Model {
            config: config.clone(),
            kind,
            store,
            backbone,
            head,
            training: true,
            backbone_frozen: false,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn backbone_kind(&self) -> BackboneKind {
        self.kind
    }

    pub fn device(&self) -> Device {
        self.store.device()
    }

    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    /// The mode `forward` uses (BatchNorm batch statistics and running-stat updates).
    pub fn is_training(&self) -> bool {
        self.training
    }

    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    pub fn is_backbone_frozen(&self) -> bool {
        self.backbone_frozen
    }

    /// Freezes the backbone: its parameters stop requiring gradients (so optimizers skip
    /// them), it runs without autograd and its BatchNorm layers use (and keep) their running
    /// statistics even in training mode. The head still trains.
    pub fn set_backbone_frozen(&mut self, frozen: bool) -> Result<()> {
        self.store.set_group_trainable(BACKBONE_GROUP, !frozen)?;
        self.backbone_frozen = frozen;
        Ok(())
    }

    /// Checks a batch of images: 4-D float (N, C, H, W) with the model's channel count, big
    /// enough for the backbone, finite; on the model's device unless `any_device`.
    pub fn check_images(&self, images: &Tensor, name: &str, any_device: bool) -> Result<()> {
        validate::images(images, name, self.config.in_channels, self.kind.min_side())?;
        if !any_device && images.device() != self.device() {
            bail!(
                Device,
                "{name} is on {} but the model is on {}; move the batch with .to(\"{}\")",
                validate::device_name(images.device()),
                validate::device_name(self.device()),
                validate::device_name(self.device())
            );
        }
        Ok(())
    }

    /// Pooled backbone features (N, feature_dim), without input checks.
    pub fn features_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let x = images.f_to_kind(Kind::Float)?;
        let run = |train: bool| match &self.backbone {
            Backbone::ConvNet(net) => net.forward_t(&x, train),
            Backbone::ResNet(net) => net.forward_t(&x, train),
        };
        if self.backbone_frozen {
            tch::no_grad(|| run(false))
        } else {
            run(train)
        }
    }

    /// L2-normalised embeddings (N, dim) in the given mode, without input checks.
    /// The head maps float32 features whatever kind the convolutions computed in
    /// ([`layers::computing_in`]): with the head in bfloat16 as well (torch's CPU autocast),
    /// `fashion-mnist-ssl` lost 1.5-2.1 MAP@R on validation over five seeds; with it in
    /// float32 the runs are within noise of fp32 (bench/README.md, "bfloat16 steps").
    pub fn forward_t(&self, images: &Tensor, train: bool) -> Result<Tensor> {
        let features = self.features_t(images, train)?;
        l2_normalize(&self.head.forward(&features.f_to_kind(Kind::Float)?)?)
    }

    /// Embeddings in the model's current mode, after checking the input.
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        self.check_images(images, "images", false)?;
        self.forward_t(images, self.training)
    }

    /// Embeddings of `images` (any device) in evaluation mode without autograd, `batch_size`
    /// images at a time on the model's device; returned on the images' device. The model's
    /// mode is left as it was.
    pub fn embed(&self, images: &Tensor, batch_size: usize) -> Result<Tensor> {
        self.check_images(images, "images", true)?;
        if batch_size == 0 {
            bail!(Value, "batch_size must be a positive integer, got 0");
        }
        let n = images.size()[0];
        let source_device = images.device();
        let threads = tch::get_num_threads();
        tch::no_grad(|| {
            let mut parts = Vec::new();
            let mut start = 0;
            while start < n {
                let len = (batch_size as i64).min(n - start);
                let chunk = images.f_narrow(0, start, len)?.f_to_device(self.device())?;
                let embedded = match self.worker_rows(&chunk) {
                    Some(rows) if self.device() == Device::Cpu && threads > 1 => {
                        self.embed_on_workers(&chunk, threads as usize, rows)?
                    }
                    _ => self.forward_t(&chunk, false)?,
                };
                parts.push(embedded.f_to_device(source_device)?);
                start += len;
            }
            Ok(Tensor::f_cat(&parts, 0)?)
        })
    }

    /// Evaluation-mode embeddings of a CPU batch: `threads` rayon workers each take a
    /// contiguous strand of the batch and compute its backbone features with torch on one
    /// thread, `rows` images a call; the head then maps all the features at once on the
    /// calling thread. The backbone is per image in evaluation mode, and the head's GEMM
    /// sees the whole batch as in the plain forward pass (MKL's result for a few rows on a
    /// worker can differ in the last bit), so the embeddings are the plain pass's to float
    /// rounding (tested), and bit for bit where oneDNN runs the same convolution kernel for
    /// one thread and a few images as for the whole batch (the ConvNet on the machines
    /// measured, see bench/README.md).
    fn embed_on_workers(&self, x: &Tensor, threads: usize, rows: i64) -> Result<Tensor> {
        let n = x.size()[0];
        let strand = (n + threads as i64 - 1) / threads as i64;
        let rows = rows.min(strand).max(1);
        let shared = SharedForEval { model: self, images: x };
        let strands: Vec<Result<Vec<Tensor>>> = (0..n)
            .step_by(strand as usize)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|first| {
                let _one_thread = crate::threads::single_threaded_torch();
                let _no_grad = tch::no_grad_guard();
                let end = (first + strand).min(n);
                (first..end)
                    .step_by(rows as usize)
                    .map(|start| shared.features_of_rows(start, rows.min(end - start)))
                    .collect()
            })
            .collect();
        let parts: Vec<Tensor> =
            strands.into_iter().collect::<Result<Vec<_>>>()?.into_iter().flatten().collect();
        l2_normalize(&self.head.forward(&Tensor::f_cat(&parts, 0)?)?)
    }

    /// Images per forward call on an embedding worker, for the backbones embedded on
    /// workers. The ConvNet's weights are small and its first activation large (64 x H x W
    /// floats an image), so a worker runs as many images as keep that activation within
    /// `ACTIVATION_BYTES`, about a core's L2 cache (at 28 px: 10 images; about 2.5x the
    /// images/s of one OpenMP batch of 1,024 on two cores). ResNets stay on torch's
    /// threads: one thread per image ran other oneDNN kernels there (ResNet-50's
    /// embeddings moved by 1e-6), for at most 5-30% more images/s with ResNet-18.
    fn worker_rows(&self, x: &Tensor) -> Option<i64> {
        /// Bytes of the ConvNet's first activation per worker call.
        const ACTIVATION_BYTES: i64 = 2 << 20;
        let size = x.size();
        match self.backbone {
            Backbone::ConvNet(_) => {
                Some(ACTIVATION_BYTES / (convnet::CHANNELS * size[2] * size[3] * 4))
            }
            Backbone::ResNet(_) => None,
        }
    }

    /// Loads backbone weights from a torchvision-style state_dict (names as torchvision's
    /// `resnet18()/resnet50()`, or this ConvNet's). Keys starting with an entry of
    /// `ignore_prefixes` (by default torchvision's classifier "fc.") are skipped; with
    /// `strict`, any other key the backbone lacks, or a backbone tensor the source lacks,
    /// is an error listing them all. A missing `num_batches_tracked` is tolerated (older
    /// checkpoints, as torch does). Shapes must always match.
    pub fn load_backbone_weights(
        &self,
        source: &[(String, Tensor)],
        strict: bool,
        ignore_prefixes: &[String],
        strip_prefix: Option<&str>,
    ) -> Result<LoadReport> {
        let groups = HashSet::from([BACKBONE_GROUP.to_string()]);
        let mut ignore = ignore_prefixes.to_vec();
        ignore.push(format!("{HEAD_PREFIX}."));
        let options = LoadOptions {
            strict,
            ignore_prefixes: ignore,
            strip_prefix: strip_prefix.map(str::to_string),
            optional_suffixes: vec![".num_batches_tracked".into()],
            only_groups: Some(&groups),
            source_name: "the weights".into(),
            target_name: format!("the {} backbone", self.config.backbone),
        };
        self.store.load(source, &options)
    }

    /// [`Model::load_backbone_weights`] from a `.safetensors` file.
    pub fn load_backbone_file(
        &self,
        path: &Path,
        strict: bool,
        ignore_prefixes: &[String],
        strip_prefix: Option<&str>,
    ) -> Result<LoadReport> {
        let file = io::read_safetensors(path)?;
        self.load_backbone_weights(&file.tensors, strict, ignore_prefixes, strip_prefix)
    }

    /// Loads the whole model (backbone and head) from a state_dict with this model's names.
    pub fn load_state_dict(&self, source: &[(String, Tensor)], strict: bool) -> Result<LoadReport> {
        let mut options = LoadOptions::strict("the state_dict", "the model");
        options.strict = strict;
        self.store.load(source, &options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn model(backbone: &str, in_channels: i64) -> Model {
        let config = ModelConfig { backbone: backbone.parse().unwrap(), in_channels, dim: 16 };
        Model::new(&config, Device::Cpu, &mut ChaCha8Rng::seed_from_u64(0)).unwrap()
    }

    #[test]
    fn resnet_names_and_counts_follow_torchvision() {
        let m = model("resnet18", 3);
        let names: Vec<String> =
            m.store().state_dict().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names[0], "conv1.weight");
        assert_eq!(names[5], "bn1.num_batches_tracked");
        assert!(names.contains(&"layer2.0.downsample.0.weight".to_string()));
        assert!(names.contains(&"layer4.1.bn2.running_var".to_string()));
        assert!(!names.contains(&"layer1.0.downsample.0.weight".to_string()));
        // torchvision resnet18: 122 state_dict entries with fc; ours has embedding instead.
        assert_eq!(names.len(), 122);
        let params: i64 = m.store().named_parameters().iter().map(|(_, t)| t.numel() as i64).sum();
        assert_eq!(params, 11_689_512 - 513_000 + 512 * 16 + 16);
        let r50 = model("resnet50", 1);
        let count = r50.store().state_dict().unwrap().len();
        assert_eq!(count, 320);
        assert_eq!(r50.store().get("conv1.weight").unwrap().tensor.size(), [64, 1, 7, 7]);
    }

    /// The workers' strands and calls (uneven ones included) put every row back in place:
    /// the plain forward pass's embeddings.
    #[test]
    fn workers_embed_as_the_plain_forward_pass() {
        for (backbone, channels, side, count) in
            [("convnet", 1, 28, 23), ("convnet", 1, 64, 5), ("resnet18", 3, 32, 7)]
        {
            let rows = if backbone == "convnet" { 4 } else { 2 };
            let m = model(backbone, channels);
            tch::manual_seed(1);
            let x = Tensor::randn([count, channels, side, side], (Kind::Float, Device::Cpu));
            let plain = tch::no_grad(|| m.forward_t(&x, false)).unwrap();
            for threads in [2, 3, 8] {
                let split = tch::no_grad(|| m.embed_on_workers(&x, threads, rows)).unwrap();
                assert!(split.allclose(&plain, 0.0, 1e-6, false), "{backbone} {threads}");
            }
        }
    }

    #[test]
    fn embeddings_are_normalised_for_every_backbone() {
        for (backbone, side) in [("convnet", 28), ("resnet18", 32), ("resnet50", 32)] {
            let m = model(backbone, 1);
            let x = Tensor::randn([2, 1, side, side], (Kind::Float, Device::Cpu));
            let f = m.forward_t(&x, false).unwrap();
            assert_eq!(f.size(), [2, 16]);
            let norms = f.norm_scalaropt_dim(2, [1i64].as_slice(), false);
            assert!(norms.allclose(
                &Tensor::ones([2], (Kind::Float, Device::Cpu)),
                1e-5,
                1e-6,
                false
            ));
        }
    }

    #[test]
    fn training_mode_updates_running_stats_and_eval_does_not() {
        let m = model("convnet", 1);
        let x = Tensor::randn([4, 1, 28, 28], (Kind::Float, Device::Cpu));
        let mean = m.store().get("blocks.0.bn.running_mean").unwrap().tensor.shallow_clone();
        let before = mean.copy();
        let _ = m.forward_t(&x, false).unwrap();
        assert!(mean.equal(&before));
        let _ = m.forward_t(&x, true).unwrap();
        assert!(!mean.equal(&before));
        let tracked = m.store().get("blocks.3.bn.num_batches_tracked").unwrap();
        assert_eq!(tracked.tensor.int64_value(&[]), 1);
    }

    #[test]
    fn bad_config_and_images_are_clear_errors() {
        let err = "vgg".parse::<BackboneKind>().unwrap_err();
        assert!(matches!(err, crate::SladeError::Config(_)), "{err}");
        assert!(err.to_string().contains("\"resnet50\""), "{err}");
        let bad = ModelConfig { in_channels: 2, ..Default::default() };
        let err = Model::new(&bad, Device::Cpu, &mut ChaCha8Rng::seed_from_u64(0)).unwrap_err();
        assert!(err.to_string().starts_with("in_channels must be"), "{err}");
        let m = model("convnet", 1);
        let rgb = Tensor::zeros([2, 3, 28, 28], (Kind::Float, Device::Cpu));
        assert!(m.forward(&rgb).unwrap_err().to_string().contains("channel"));
        let small = Tensor::zeros([2, 1, 8, 8], (Kind::Float, Device::Cpu));
        assert!(m.forward(&small).is_err());
    }

    #[test]
    fn frozen_backbone_gets_no_gradient() {
        let mut m = model("convnet", 1);
        m.set_backbone_frozen(true).unwrap();
        let x = Tensor::randn([4, 1, 28, 28], (Kind::Float, Device::Cpu));
        m.forward_t(&x, true).unwrap().sum(Kind::Float).backward();
        assert!(!m.store().get("blocks.0.conv.weight").unwrap().tensor.grad().defined());
        assert!(m.store().get("embedding.weight").unwrap().tensor.grad().defined());
    }
}
