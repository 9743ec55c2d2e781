//! Named tensors of a network, in registration order: trainable parameters and buffers
//! (BatchNorm running statistics), each tagged with the optimizer group it belongs to.
//!
//! The tensors live in a `tch::nn::VarStore`; this store adds what torch's `nn.Module` keeps
//! and the VarStore does not: the order of `named_parameters()` / `state_dict()`, the split
//! between parameters and buffers, and strict loading with a report of what did not match.

use crate::bail;
use crate::error::{Result, SladeError};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashSet};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Whether a tensor is learned (gets gradients) or a buffer updated by the forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Parameter,
    Buffer,
}

/// One named tensor of a store.
#[derive(Debug)]
pub struct Variable {
    pub name: String,
    pub tensor: Tensor,
    pub role: Role,
    /// Optimizer parameter group: "backbone", "head", "basis", ...
    pub group: String,
}

/// An ordered set of named parameters and buffers on one device.
#[derive(Debug)]
pub struct ParamStore {
    vs: VarStore,
    vars: Vec<Variable>,
}

impl ParamStore {
    pub fn new(device: Device) -> Self {
        ParamStore { vs: VarStore::new(device), vars: Vec::new() }
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The underlying VarStore (every tensor of this store, keyed by its dotted name).
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    fn register(&mut self, name: &str, init: Tensor, role: Role, group: &str) -> Result<Tensor> {
        if name.is_empty() || name.split('.').any(str::is_empty) {
            bail!(Internal, "invalid variable name {name:?}");
        }
        if self.vars.iter().any(|v| v.name == name) {
            bail!(Internal, "variable {name} registered twice");
        }
        let init = init.f_to_device(self.device())?.f_detach()?;
        let components: Vec<&str> = name.split('.').collect();
        let (last, parents) = components.split_last().expect("non-empty name");
        let mut path = self.vs.root();
        for component in parents {
            path = path.sub(*component);
        }
        let tensor = path.add(last, init, role == Role::Parameter);
        self.vars.push(Variable {
            name: name.to_string(),
            tensor: tensor.shallow_clone(),
            role,
            group: group.to_string(),
        });
        Ok(tensor)
    }

    /// Registers a trainable parameter with initial value `init` (moved to the store's device).
    pub fn parameter(&mut self, name: &str, init: Tensor, group: &str) -> Result<Tensor> {
        self.register(name, init, Role::Parameter, group)
    }

    /// Registers a buffer (no gradient; saved and loaded with the parameters).
    pub fn buffer(&mut self, name: &str, init: Tensor, group: &str) -> Result<Tensor> {
        self.register(name, init, Role::Buffer, group)
    }

    pub fn variables(&self) -> &[Variable] {
        &self.vars
    }

    pub fn get(&self, name: &str) -> Option<&Variable> {
        self.vars.iter().find(|v| v.name == name)
    }

    /// Parameters in registration order (the very tensors, not copies).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.with_role(Role::Parameter)
    }

    /// Buffers in registration order (the very tensors, not copies).
    pub fn named_buffers(&self) -> Vec<(String, Tensor)> {
        self.with_role(Role::Buffer)
    }

    fn with_role(&self, role: Role) -> Vec<(String, Tensor)> {
        self.vars
            .iter()
            .filter(|v| v.role == role)
            .map(|v| (v.name.clone(), v.tensor.shallow_clone()))
            .collect()
    }

    /// Parameters and buffers in registration order, detached (sharing memory), as torch's
    /// `state_dict()`.
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        self.vars.iter().map(|v| Ok((v.name.clone(), v.tensor.f_detach()?))).collect()
    }

    /// Sets `requires_grad` on every parameter of `group`.
    pub fn set_group_trainable(&self, group: &str, trainable: bool) -> Result<()> {
        for v in self.vars.iter().filter(|v| v.role == Role::Parameter && v.group == group) {
            let _ = v.tensor.f_set_requires_grad(trainable)?;
        }
        Ok(())
    }

    /// Copies `source` into the store's tensors (in place, so every holder sees the new
    /// values), after checking names and shapes. See [`LoadOptions`].
    pub fn load(&self, source: &[(String, Tensor)], options: &LoadOptions) -> Result<LoadReport> {
        let wanted: Vec<&Variable> = self
            .vars
            .iter()
            .filter(|v| options.only_groups.is_none_or(|g| g.contains(&v.group)))
            .collect();
        let mut by_name: BTreeMap<&str, &Tensor> = BTreeMap::new();
        let mut unexpected = Vec::new();
        let mut ignored = Vec::new();
        for (raw_name, tensor) in source {
            let Some(name) = options.rename(raw_name) else {
                ignored.push(raw_name.clone());
                continue;
            };
            if wanted.iter().any(|v| v.name == name) {
                if by_name.insert(name, tensor).is_some() {
                    bail!(Value, "{} holds {name} twice", options.source_name);
                }
            } else {
                unexpected.push(raw_name.clone());
            }
        }
        let mut missing = Vec::new();
        let mut wrong_shape = Vec::new();
        let mut wrong_dtype = Vec::new();
        for v in &wanted {
            match by_name.get(v.name.as_str()) {
                None if options.optional(&v.name) => {}
                None => missing.push(v.name.clone()),
                Some(t) => {
                    if t.size() != v.tensor.size() {
                        wrong_shape.push(format!(
                            "{} (expected {:?}, got {:?})",
                            v.name,
                            v.tensor.size(),
                            t.size()
                        ));
                    } else if is_floating(t.kind()) != is_floating(v.tensor.kind()) {
                        wrong_dtype.push(format!(
                            "{} (expected {:?}, got {:?})",
                            v.name,
                            v.tensor.kind(),
                            t.kind()
                        ));
                    }
                }
            }
        }
        let strict_failure = options.strict && (!missing.is_empty() || !unexpected.is_empty());
        if strict_failure || !wrong_shape.is_empty() || !wrong_dtype.is_empty() {
            let mut parts = Vec::new();
            if options.strict {
                if !missing.is_empty() {
                    parts.push(format!("missing {} key(s): {}", missing.len(), listing(&missing)));
                }
                if !unexpected.is_empty() {
                    parts.push(format!(
                        "unexpected {} key(s): {}",
                        unexpected.len(),
                        listing(&unexpected)
                    ));
                }
            }
            if !wrong_shape.is_empty() {
                parts.push(format!(
                    "{} tensor(s) of the wrong shape: {}",
                    wrong_shape.len(),
                    listing(&wrong_shape)
                ));
            }
            if !wrong_dtype.is_empty() {
                parts.push(format!(
                    "{} tensor(s) of the wrong dtype: {}",
                    wrong_dtype.len(),
                    listing(&wrong_dtype)
                ));
            }
            let message = format!(
                "{} does not match {}: {}",
                options.source_name,
                options.target_name,
                parts.join("; ")
            );
            if strict_failure {
                return Err(SladeError::Value(message));
            }
            if !wrong_dtype.is_empty() {
                return Err(SladeError::Dtype(message));
            }
            return Err(SladeError::Shape(message));
        }
        tch::no_grad(|| -> Result<()> {
            for v in &wanted {
                if let Some(t) = by_name.get(v.name.as_str()) {
                    v.tensor.shallow_clone().f_copy_(t)?;
                }
            }
            Ok(())
        })?;
        let loaded = wanted.iter().filter(|v| by_name.contains_key(v.name.as_str())).count();
        Ok(LoadReport { loaded, missing, unexpected, ignored })
    }
}

fn is_floating(kind: Kind) -> bool {
    matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16)
}

/// At most 12 names, then "... and N more".
fn listing(names: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut text = names.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(", ... and {} more", names.len() - SHOWN));
    }
    text
}

/// How [`ParamStore::load`] matches the source's names to the store's.
#[derive(Clone, Debug)]
pub struct LoadOptions<'a> {
    /// Missing or unexpected keys are an error (shape and dtype mismatches always are).
    pub strict: bool,
    /// Source keys starting with one of these are skipped (e.g. torchvision's "fc.").
    pub ignore_prefixes: Vec<String>,
    /// Removed from the start of every source key that has it (e.g. "module.").
    pub strip_prefix: Option<String>,
    /// Store names that may be absent from the source, keeping their current value.
    pub optional_suffixes: Vec<String>,
    /// Only the variables of these groups are loaded (and expected); None: all.
    pub only_groups: Option<&'a HashSet<String>>,
    /// Words for the error message: what is loaded into what.
    pub source_name: String,
    pub target_name: String,
}

impl LoadOptions<'_> {
    /// Strict loading of every variable.
    pub fn strict(source_name: &str, target_name: &str) -> Self {
        LoadOptions {
            strict: true,
            ignore_prefixes: Vec::new(),
            strip_prefix: None,
            optional_suffixes: Vec::new(),
            only_groups: None,
            source_name: source_name.to_string(),
            target_name: target_name.to_string(),
        }
    }

    fn rename<'s>(&self, name: &'s str) -> Option<&'s str> {
        let name = match &self.strip_prefix {
            Some(prefix) => name.strip_prefix(prefix.as_str()).unwrap_or(name),
            None => name,
        };
        if self.ignore_prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            None
        } else {
            Some(name)
        }
    }

    fn optional(&self, name: &str) -> bool {
        self.optional_suffixes.iter().any(|s| name.ends_with(s.as_str()))
    }
}

/// What a load did.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub loaded: usize,
    /// Store names absent from the source (only when not strict, or optional).
    pub missing: Vec<String>,
    /// Source names the store does not have (only when not strict).
    pub unexpected: Vec<String>,
    /// Source names skipped through `ignore_prefixes`.
    pub ignored: Vec<String>,
}

/// A copy of `t` in new memory, outside any autograd graph.
pub fn detached_copy(t: &Tensor) -> Result<Tensor> {
    let source = t.f_detach()?;
    let mut out = source.f_empty_like()?;
    out.f_copy_(&source)?;
    Ok(out)
}

/// Standard normal samples (Box-Muller) from a seeded generator, as a float32 tensor.
pub fn randn(rng: &mut ChaCha8Rng, shape: &[i64], std: f64) -> Result<Tensor> {
    let n: i64 = shape.iter().product();
    let mut values = Vec::with_capacity(n as usize);
    while values.len() < n as usize {
        let u1: f64 = 1.0 - rng.gen::<f64>();
        let u2: f64 = rng.gen::<f64>();
        let radius = (-2.0 * u1.ln()).sqrt();
        let angle = std::f64::consts::TAU * u2;
        values.push((std * radius * angle.cos()) as f32);
        values.push((std * radius * angle.sin()) as f32);
    }
    values.truncate(n as usize);
    Ok(Tensor::f_from_slice(&values)?.f_reshape(shape)?)
}

/// Samples of U(-bound, bound) from a seeded generator, as a float32 tensor.
pub fn uniform(rng: &mut ChaCha8Rng, shape: &[i64], bound: f64) -> Result<Tensor> {
    let n: i64 = shape.iter().product();
    let values: Vec<f32> =
        (0..n).map(|_| ((rng.gen::<f64>() * 2.0 - 1.0) * bound) as f32).collect();
    Ok(Tensor::f_from_slice(&values)?.f_reshape(shape)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn store() -> ParamStore {
        let mut store = ParamStore::new(Device::Cpu);
        let _ = store
            .parameter("a.weight", Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)), "g")
            .unwrap();
        let _ =
            store.buffer("a.count", Tensor::zeros([], (Kind::Int64, Device::Cpu)), "g").unwrap();
        let _ = store.parameter("b", Tensor::zeros([4], (Kind::Float, Device::Cpu)), "h").unwrap();
        store
    }

    #[test]
    fn order_roles_and_var_store() {
        let s = store();
        let names: Vec<String> = s.named_parameters().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a.weight", "b"]);
        assert_eq!(s.named_buffers()[0].0, "a.count");
        assert!(s.named_parameters()[0].1.requires_grad());
        assert!(s.var_store().variables().contains_key("a.weight"));
    }

    #[test]
    fn load_copies_in_place_and_reports_mismatches() {
        let s = store();
        let held = s.get("b").unwrap().tensor.shallow_clone();
        let source = vec![
            ("a.weight".to_string(), Tensor::ones([2, 3], (Kind::Float, Device::Cpu))),
            ("a.count".to_string(), Tensor::from(5i64)),
            ("b".to_string(), Tensor::ones([4], (Kind::Double, Device::Cpu))),
        ];
        s.load(&source, &LoadOptions::strict("src", "dst")).unwrap();
        assert_eq!(held.sum(Kind::Float).double_value(&[]), 4.0);

        let bad = vec![
            ("a.weight".to_string(), Tensor::ones([3, 2], (Kind::Float, Device::Cpu))),
            ("c".to_string(), Tensor::ones([1], (Kind::Float, Device::Cpu))),
        ];
        let err = s.load(&bad, &LoadOptions::strict("src", "dst")).unwrap_err().to_string();
        assert!(err.contains("missing 2 key(s): a.count, b"), "{err}");
        assert!(err.contains("unexpected 1 key(s): c"), "{err}");
        assert!(err.contains("a.weight (expected [2, 3], got [3, 2])"), "{err}");
    }

    #[test]
    fn seeded_init_is_reproducible() {
        let a = randn(&mut ChaCha8Rng::seed_from_u64(1), &[1000], 2.0).unwrap();
        let b = randn(&mut ChaCha8Rng::seed_from_u64(1), &[1000], 2.0).unwrap();
        assert!(a.equal(&b));
        let std = a.std(true).double_value(&[]);
        assert!((std - 2.0).abs() < 0.2, "{std}");
    }
}
