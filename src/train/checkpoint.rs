//! Checkpoints: one `.safetensors` file with every tensor of a trainer (model parameters and
//! buffers under "model.", the objective's parameters under "params.", optimizer state under
//! "optim.", objective state under "objective.") and, in its metadata, the configuration,
//! step count, random-generator state and loss scale. A small JSON file beside it repeats
//! the metadata for people and tools. Both are written atomically (temporary file, fsync,
//! rename, fsync of the folder), the JSON file first: the `.safetensors` file, the one `load`
//! reads, is the commit point, so a kill between the two writes leaves the previous
//! checkpoint whole, and a written checkpoint always has its JSON file.

use super::{GradScaler, Objective, Trainer, TrainerConfig};
use crate::bail;
use crate::error::{Result, SladeError};
use crate::nn::io::{read_safetensors, write_atomic, write_safetensors};
use crate::nn::store::LoadOptions;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Version of the checkpoint layout.
pub const FORMAT: &str = "1";
const META_FORMAT: &str = "slade.format";
const META_KIND: &str = "slade.trainer";
const META_CONFIG: &str = "slade.config";
const META_OBJECTIVE: &str = "slade.objective";
const META_STEP: &str = "slade.step";
const META_RNG: &str = "slade.rng";
const META_SCALER: &str = "slade.scaler";

/// The random generator's exact position.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct RngState {
    seed: String,
    stream: u64,
    word_pos: String,
}

impl RngState {
    fn of(rng: &ChaCha8Rng) -> Self {
        let seed = rng.get_seed().iter().map(|b| format!("{b:02x}")).collect();
        RngState { seed, stream: rng.get_stream(), word_pos: rng.get_word_pos().to_string() }
    }

    fn restore(&self) -> Result<ChaCha8Rng> {
        use rand::SeedableRng;
        let bad = || SladeError::Io(format!("corrupt random-generator state {self:?}"));
        if self.seed.len() != 64 {
            return Err(bad());
        }
        let mut seed = [0u8; 32];
        for (i, byte) in seed.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&self.seed[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        let mut rng = ChaCha8Rng::from_seed(seed);
        rng.set_stream(self.stream);
        rng.set_word_pos(self.word_pos.parse().map_err(|_| bad())?);
        Ok(rng)
    }
}

/// The JSON file written beside a checkpoint: `run.safetensors` -> `run.json`.
pub fn sidecar_path(path: &Path) -> PathBuf {
    path.with_extension("json")
}

/// What a checkpoint says about itself, read without loading its tensors into a trainer.
#[derive(Clone, Debug)]
pub struct CheckpointInfo {
    pub kind: String,
    pub config: TrainerConfig,
    pub objective: Value,
    pub step: i64,
}

fn meta<'a>(metadata: &'a HashMap<String, String>, key: &str, path: &Path) -> Result<&'a str> {
    metadata.get(key).map(String::as_str).ok_or_else(|| {
        SladeError::Io(format!(
            "{} is not a slade checkpoint (no {key} in its metadata)",
            path.display()
        ))
    })
}

fn parse_info(metadata: &HashMap<String, String>, path: &Path) -> Result<CheckpointInfo> {
    let format = meta(metadata, META_FORMAT, path)?;
    if format != FORMAT {
        bail!(
            Io,
            "{} has checkpoint format {format}; this slade reads format {FORMAT}",
            path.display()
        );
    }
    let corrupt = |what: &str, e: &dyn std::fmt::Display| {
        SladeError::Io(format!(
            "{}: corrupt {what} in the checkpoint metadata: {e}",
            path.display()
        ))
    };
    let config: TrainerConfig = serde_json::from_str(meta(metadata, META_CONFIG, path)?)
        .map_err(|e| corrupt("config", &e))?;
    let objective: Value = serde_json::from_str(meta(metadata, META_OBJECTIVE, path)?)
        .map_err(|e| corrupt("objective", &e))?;
    let step: i64 = meta(metadata, META_STEP, path)?.parse().map_err(|e| corrupt("step", &e))?;
    Ok(CheckpointInfo {
        kind: meta(metadata, META_KIND, path)?.to_string(),
        config,
        objective,
        step,
    })
}

/// Reads the kind, configuration and step of a checkpoint.
pub fn read_info(path: &Path) -> Result<CheckpointInfo> {
    let file = read_safetensors(path)?;
    parse_info(&file.metadata, path)
}

/// Top-level keys whose values differ between two JSON objects.
fn differing_keys(a: &Value, b: &Value, prefix: &str) -> Vec<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| {
                    let (va, vb) =
                        (x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null));
                    differing_keys(va, vb, &format!("{prefix}{k}."))
                })
                .collect()
        }
        _ if a == b => Vec::new(),
        _ => vec![format!("{} (checkpoint {b}, trainer {a})", prefix.trim_end_matches('.'))],
    }
}

fn prefixed(
    prefix: &str,
    named: Vec<(String, Tensor)>,
) -> impl Iterator<Item = (String, Tensor)> + '_ {
    named.into_iter().map(move |(n, t)| (format!("{prefix}{n}"), t))
}

impl<O: Objective> Trainer<O> {
    /// Writes the whole trainer state to `path` (`.safetensors`) and `path` with extension
    /// `.json`, each atomically, the `.json` first.
    pub fn save(&self, path: &Path) -> Result<()> {
        if self.pending.is_some() {
            bail!(
                Value,
                "gradients are pending (compute_gradients ran without apply_gradients); \
                 apply them before saving"
            );
        }
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        tensors.extend(prefixed("model.", self.model.store().state_dict()?));
        tensors.extend(prefixed("params.", self.params.state_dict()?));
        tensors.extend(prefixed("optim.", self.optimizer.state_tensors()));
        tensors.extend(prefixed("objective.", self.objective.state()));
        let rng = serde_json::to_string(&RngState::of(&self.rng)).map_err(internal)?;
        let mut metadata = HashMap::from([
            (META_FORMAT.to_string(), FORMAT.to_string()),
            (META_KIND.to_string(), O::KIND.to_string()),
            (META_CONFIG.to_string(), serde_json::to_string(&self.config).map_err(internal)?),
            (META_OBJECTIVE.to_string(), self.objective.config().to_string()),
            (META_STEP.to_string(), self.step.to_string()),
            (META_RNG.to_string(), rng),
        ]);
        if let Some(scaler) = &self.scaler {
            metadata
                .insert(META_SCALER.to_string(), serde_json::to_string(scaler).map_err(internal)?);
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                bail!(
                    FileNotFound,
                    "cannot save to {}: no folder {}",
                    path.display(),
                    parent.display()
                );
            }
        }
        let sidecar = serde_json::json!({
            "format": FORMAT,
            "trainer": O::KIND,
            "step": self.step,
            "config": self.config,
            "objective": self.objective.config(),
            "rng": RngState::of(&self.rng),
            "scaler": self.scaler,
            "tensors": path.file_name().map(|n| n.to_string_lossy().to_string()),
        });
        let text = serde_json::to_string_pretty(&sidecar).map_err(internal)?;
        write_atomic(&sidecar_path(path), text.as_bytes())?;
        write_safetensors(path, &tensors, metadata)
    }

    /// Restores a state written by `save`: the configuration (model, optimizer, precision,
    /// seed, objective settings) must equal this trainer's.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let file = read_safetensors(path)?;
        let info = parse_info(&file.metadata, path)?;
        if info.kind != O::KIND {
            bail!(
                Config,
                "{} is a {} checkpoint; this is a {} trainer",
                path.display(),
                info.kind,
                O::KIND
            );
        }
        let ours = serde_json::json!({"config": self.config, "objective": self.objective.config()});
        let theirs = serde_json::json!({"config": info.config, "objective": info.objective});
        let differences = differing_keys(&ours, &theirs, "");
        if !differences.is_empty() {
            bail!(
                Config,
                "{} was written with another configuration: {}; build the trainer from the \
                 checkpoint (from_checkpoint) or with the same settings",
                path.display(),
                differences.join(", ")
            );
        }
        let rng: RngState = serde_json::from_str(meta(&file.metadata, META_RNG, path)?)
            .map_err(|e| SladeError::Io(format!("{}: corrupt rng state: {e}", path.display())))?;
        let rng = rng.restore()?;
        let scaler: Option<GradScaler> = match file.metadata.get(META_SCALER) {
            Some(text) => Some(serde_json::from_str(text).map_err(|e| {
                SladeError::Io(format!("{}: corrupt loss scale: {e}", path.display()))
            })?),
            None => None,
        };
        let mut parts: HashMap<&str, Vec<(String, Tensor)>> = HashMap::new();
        for (name, tensor) in file.tensors {
            let Some((section, rest)) = name.split_once('.') else {
                bail!(Io, "{}: unexpected tensor {name:?}", path.display());
            };
            let section = match section {
                "model" => "model",
                "params" => "params",
                "optim" => "optim",
                "objective" => "objective",
                _ => bail!(Io, "{}: unexpected tensor {name:?}", path.display()),
            };
            parts.entry(section).or_default().push((rest.to_string(), tensor));
        }
        let mut take = |section: &str| parts.remove(section).unwrap_or_default();
        let source = path.display().to_string();
        let model_part = take("model");
        let params_part = take("params");
        let optim_part = take("optim");
        let objective_part = take("objective");
        self.model.store().load(&model_part, &LoadOptions::strict(&source, "the model"))?;
        self.params
            .load(&params_part, &LoadOptions::strict(&source, "the objective's parameters"))?;
        self.optimizer.load_state_tensors(&optim_part)?;
        self.objective.load_state(&objective_part)?;
        self.optimizer.zero_grad()?;
        self.pending = None;
        self.step = info.step;
        self.rng = rng;
        if self.scaler.is_some() {
            self.scaler = scaler.or(self.scaler.take());
        }
        self.optimizer.set_lr_factor(self.schedule.factor(self.step));
        Ok(())
    }
}

fn internal(e: serde_json::Error) -> SladeError {
    SladeError::Internal(format!("cannot serialise checkpoint metadata: {e}"))
}
