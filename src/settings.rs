//! The settings of the models and training objectives, declared once: each is a serde struct
//! (`deny_unknown_fields`; its `Default` holds the one default of every setting) with a
//! `validate` that checks each rule the values alone decide. The Python package reads its
//! defaults from here and hands settings back as one mapping, which [`parse`] turns into the
//! struct, naming the offending setting in every error ("optimizer.lr must be ...").
//!
//! Rules that need more than the values (a trainer's parameter groups, the model's width)
//! are checked where those are known, when the trainer is built.

use crate::bail;
use crate::basis::BasisConfig;
use crate::error::{Result, SladeError};
use crate::nn::ModelConfig;
use crate::train::optim::OptimizerConfig;
use crate::train::ranking::RankingConfig;
use crate::train::student::StudentObjectiveConfig;
use crate::train::swav::SwavConfig;
use crate::train::TrainerConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use std::fmt::Display;

/// A group of settings.
pub trait Settings: Serialize + DeserializeOwned + Default {
    /// What the group is called in messages ("optimizer", "student", ...).
    const WHAT: &'static str;

    /// Checks every rule the values alone decide. Errors are `SladeError::Config` whose
    /// message starts with the setting's name (nested groups prefixed, see [`within`]).
    fn validate(&self) -> Result<()>;
}

/// The error of a setting outside its range: `"{name} must be {expected}, got {got}"`.
pub fn invalid(name: &str, expected: &str, got: impl Display) -> SladeError {
    SladeError::Config(format!("{name} must be {expected}, got {got}"))
}

/// `one of "a", "b", "c"`.
pub fn one_of(choices: &[&str]) -> String {
    let listed: Vec<String> = choices.iter().map(|c| format!("{c:?}")).collect();
    format!("one of {}", listed.join(", "))
}

/// `result` as a settings error whose message is prefixed by `at` (e.g. `"optimizer."`):
/// argument checks shared with plain functions (`Value` errors) become `Config` errors.
pub fn within<T>(at: &str, result: Result<T>) -> Result<T> {
    result.map_err(|err| match err {
        SladeError::Config(message) | SladeError::Value(message) => {
            SladeError::Config(format!("{at}{message}"))
        }
        other => other,
    })
}

/// Settings `T` from a JSON object (missing keys take their defaults), checked. Errors name
/// the setting as `{at}{key}`, e.g. `at = "teacher.optimizer."`.
pub fn parse<T: Settings>(value: Value, at: &str) -> Result<T> {
    let whole = || match at {
        "" => format!("{} settings", T::WHAT),
        at => at.trim_end_matches('.').to_string(),
    };
    if !value.is_object() {
        bail!(Config, "{} must be a mapping of setting names to values, got {value}", whole());
    }
    let settings: T = serde_path_to_error::deserialize(value).map_err(|err| {
        let place = match err.path().to_string() {
            root if root == "." => whole(),
            path => format!("{at}{path}"),
        };
        // The settings' own types say what a value "must be"; serde's say what went wrong.
        let problem = err.into_inner().to_string();
        let separator = if problem.starts_with("must be ") { " " } else { ": " };
        SladeError::Config(format!("{place}{separator}{problem}"))
    })?;
    within(at, settings.validate())?;
    Ok(settings)
}

fn to_value<T: Serialize>(settings: &T) -> Result<Value> {
    serde_json::to_value(settings).map_err(|e| SladeError::Internal(e.to_string()))
}

/// The groups of settings the Python package declares, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    Model,
    Optimizer,
    Trainer,
    Ranking,
    Swav,
    Basis,
    Student,
}

impl std::str::FromStr for Group {
    type Err = SladeError;
    fn from_str(name: &str) -> Result<Self> {
        Ok(match name {
            "model" => Group::Model,
            "optimizer" => Group::Optimizer,
            "trainer" => Group::Trainer,
            "ranking" => Group::Ranking,
            "swav" => Group::Swav,
            "basis" => Group::Basis,
            "student" => Group::Student,
            other => return Err(SladeError::Value(format!("no settings group {other:?}"))),
        })
    }
}

/// Runs `$body` with `$t` bound to the settings type of `$group`.
macro_rules! with_group {
    ($group:expr, $t:ident => $body:expr) => {
        match $group {
            Group::Model => {
                type $t = ModelConfig;
                $body
            }
            Group::Optimizer => {
                type $t = OptimizerConfig;
                $body
            }
            Group::Trainer => {
                type $t = TrainerConfig;
                $body
            }
            Group::Ranking => {
                type $t = RankingConfig;
                $body
            }
            Group::Swav => {
                type $t = SwavConfig;
                $body
            }
            Group::Basis => {
                type $t = BasisConfig;
                $body
            }
            Group::Student => {
                type $t = StudentObjectiveConfig;
                $body
            }
        }
    };
}

/// The defaults of a group as a JSON object.
pub fn defaults(group: Group) -> Result<Value> {
    with_group!(group, T => to_value(&T::default()))
}

/// `value` parsed and checked as settings of `group` (see [`parse`]), every setting filled in.
pub fn check(group: Group, value: Value, at: &str) -> Result<Value> {
    with_group!(group, T => to_value(&parse::<T>(value, at)?))
}

/// Declares a setting that takes one of a few names: the enum, `NAMES`, `name()`,
/// case-insensitive `FromStr` (aliases accepted but not listed) with an error listing the
/// names ("{what} must be one of ..."), and serde as the name.
#[macro_export]
macro_rules! named_choice {
    (
        $(#[$meta:meta])*
        $vis:vis enum $ty:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $name:literal $(| $alias:literal)*),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        $vis enum $ty {
            $($(#[$vmeta])* $variant),+
        }

        impl $ty {
            /// The names, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($name),+];

            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl $ty {
            fn named(text: &str) -> Option<Self> {
                match text.to_ascii_lowercase().as_str() {
                    $($name $(| $alias)* => Some($ty::$variant),)+
                    _ => None,
                }
            }

            /// What a bad name is told: `must be one of "a", "b", got "x"`.
            fn expectation(text: &str) -> String {
                format!("must be {}, got {text:?}", $crate::settings::one_of(Self::NAMES))
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::error::SladeError;
            fn from_str(text: &str) -> $crate::error::Result<Self> {
                Self::named(text).ok_or_else(|| {
                    $crate::error::SladeError::Config(format!("{} {}", $what, Self::expectation(text)))
                })
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::named(&text).ok_or_else(|| serde::de::Error::custom(Self::expectation(&text)))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn error_of(group: Group, value: Value, at: &str) -> String {
        check(group, value, at).unwrap_err().to_string()
    }

    #[test]
    fn missing_keys_take_the_defaults() {
        for group in ["model", "optimizer", "trainer", "ranking", "swav", "basis", "student"] {
            let group: Group = group.parse().unwrap();
            assert_eq!(check(group, json!({}), "").unwrap(), defaults(group).unwrap());
        }
        let lr = check(Group::Optimizer, json!({"lr": 0.5}), "").unwrap();
        assert_eq!((lr["lr"].as_f64(), lr["name"].as_str()), (Some(0.5), Some("adam")));
    }

    #[test]
    fn errors_name_the_setting_where_it_sits() {
        let at = "teacher.optimizer.";
        let range = error_of(Group::Optimizer, json!({"lr": -1.0}), at);
        assert!(range.starts_with("teacher.optimizer.lr must be"), "{range}");
        let kind = error_of(Group::Optimizer, json!({"lr": "fast"}), at);
        assert!(kind.starts_with("teacher.optimizer.lr: invalid type"), "{kind}");
        let name = error_of(Group::Optimizer, json!({"name": "lamb"}), "");
        assert!(name.starts_with("name must be one of \"sgd\", \"adam\", \"adamw\", got \"lamb\""));
        let unknown = error_of(Group::Optimizer, json!({"learning_rate": 1.0}), at);
        assert!(unknown.starts_with("teacher.optimizer.learning_rate: unknown field"), "{unknown}");
        let root = error_of(Group::Model, json!({"width": 3}), "");
        assert!(root.starts_with("width: unknown field"), "{root}");
        let shape = error_of(Group::Model, json!([1, 2]), "");
        assert!(shape.starts_with("model settings must be a mapping"), "{shape}");
        let nested = error_of(Group::Trainer, json!({"optimizer": {"lr": -1.0}}), "");
        assert!(nested.starts_with("optimizer.lr must be"), "{nested}");
    }

    #[test]
    fn every_settings_error_is_a_config_error() {
        let value_check = within("ranking.", crate::losses::check_finite_param(f64::NAN, "base"));
        assert!(matches!(value_check, Err(SladeError::Config(m)) if m.starts_with("ranking.base")));
        let ranking = check(Group::Ranking, json!({"loss": "multi_similarity", "alpha": 0.0}), "");
        assert!(matches!(ranking, Err(SladeError::Config(m)) if m.starts_with("alpha")));
    }
}
