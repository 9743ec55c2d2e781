//! SLADE's pair mining on unlabeled samples (Sec 3.3, DESIGN.md §2.4): with s(i, j) the
//! basis similarity cos(W_a f_i, W_a f_j), the positive pairs are P = {(i, j): i != j,
//! s(i, j) >= T1} and the negative pairs N = {(i, j): i != j, s(i, j) <= T2}. By default a
//! positive must also share its pseudo label and a negative must not
//! (`require_pseudo_agreement`). Both orders of a pair are returned, row-major (i, then j),
//! as PML's pair miners do. T1 and T2 are [`ThresholdRule`]s, the one rule type of the
//! standalone miner and of the student.

use super::{PairIndices, PairMasks};
use crate::bail;
use crate::basis::FeatureBasis;
use crate::error::{Result, SladeError};
use crate::settings::invalid;
use crate::validate;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use tch::{Kind, Tensor};

/// Which threshold a rule sets: T1 (positive pairs, `s >= T1`) or T2 (negative pairs,
/// `s <= T2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    T1,
    T2,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::T1 => "t1",
            Side::T2 => "t2",
        }
    }
}

/// A mining threshold: a number, or a rule read from the basis' running statistics when
/// the pairs are mined.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ThresholdRule {
    /// A fixed similarity (finite).
    Value(f64),
    /// The running mean similarity of positive pairs, mu+.
    MuPos,
    /// The running mean similarity of negative pairs, mu-.
    MuNeg,
    /// (mu+ + mu-) / 2.
    Mid,
    /// No test on that side: T1 = -2 or T2 = 2, outside the range of a cosine.
    All,
    /// The side's default rule, [`ThresholdRule::AUTO`].
    Auto,
}

impl ThresholdRule {
    /// What "auto" means for (T1, T2): the one place to change the default thresholds.
    pub const AUTO: (ThresholdRule, ThresholdRule) = (ThresholdRule::MuPos, ThresholdRule::MuNeg);

    /// The rule names, as `FromStr` reads them.
    pub const NAMES: [&'static str; 5] = ["auto", "mu+", "mu-", "mid", "all"];

    /// What a threshold must be.
    const EXPECTED: &'static str =
        "a number or one of \"auto\", \"mu+\", \"mu-\", \"mid\", \"all\"";

    /// A fixed threshold; it must be finite (`name` names it in the error).
    pub fn value_as(v: f64, name: &str) -> Result<Self> {
        if !v.is_finite() {
            return Err(invalid(name, "a finite number", v));
        }
        Ok(ThresholdRule::Value(v))
    }

    /// The rule called `text` (`name` names the threshold in the error).
    pub fn parse_as(text: &str, name: &str) -> Result<Self> {
        Self::named(text).ok_or_else(|| invalid(name, Self::EXPECTED, format!("{text:?}")))
    }

    fn named(text: &str) -> Option<Self> {
        Some(match text {
            "auto" => ThresholdRule::Auto,
            "mu+" => ThresholdRule::MuPos,
            "mu-" => ThresholdRule::MuNeg,
            "mid" => ThresholdRule::Mid,
            "all" => ThresholdRule::All,
            _ => return None,
        })
    }

    /// The rule in force on `side`: "auto" replaced by the side's default.
    pub fn on_side(self, side: Side) -> Self {
        match (self, side) {
            (ThresholdRule::Auto, Side::T1) => Self::AUTO.0,
            (ThresholdRule::Auto, Side::T2) => Self::AUTO.1,
            (rule, _) => rule,
        }
    }

    /// The threshold on `side` given the running means (None where the rule's statistic is
    /// undefined: no batch has updated it yet).
    pub fn resolve(self, side: Side, mu_pos: Option<f64>, mu_neg: Option<f64>) -> Option<f64> {
        match self.on_side(side) {
            ThresholdRule::Value(v) => Some(v),
            ThresholdRule::MuPos => mu_pos,
            ThresholdRule::MuNeg => mu_neg,
            ThresholdRule::Mid => Some((mu_pos? + mu_neg?) / 2.0),
            ThresholdRule::All => Some(match side {
                Side::T1 => -2.0,
                Side::T2 => 2.0,
            }),
            ThresholdRule::Auto => unreachable!("on_side replaces auto"),
        }
    }

    fn name(self) -> Option<&'static str> {
        match self {
            ThresholdRule::Value(_) => None,
            ThresholdRule::Auto => Some("auto"),
            ThresholdRule::MuPos => Some("mu+"),
            ThresholdRule::MuNeg => Some("mu-"),
            ThresholdRule::Mid => Some("mid"),
            ThresholdRule::All => Some("all"),
        }
    }
}

impl std::str::FromStr for ThresholdRule {
    type Err = SladeError;
    fn from_str(text: &str) -> Result<Self> {
        Self::parse_as(text, "a threshold rule")
    }
}

impl fmt::Display for ThresholdRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.name()) {
            (ThresholdRule::Value(v), _) => write!(f, "{v}"),
            (_, Some(name)) => f.write_str(name),
            (_, None) => unreachable!("every rule but a value has a name"),
        }
    }
}

impl Serialize for ThresholdRule {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match (self, self.name()) {
            (ThresholdRule::Value(v), _) => s.serialize_f64(*v),
            (_, Some(name)) => s.serialize_str(name),
            (_, None) => unreachable!("every rule but a value has a name"),
        }
    }
}

impl<'de> Deserialize<'de> for ThresholdRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(RuleVisitor)
    }
}

struct RuleVisitor;

impl Visitor<'_> for RuleVisitor {
    type Value = ThresholdRule;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(ThresholdRule::EXPECTED)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<ThresholdRule, E> {
        match v.is_finite() {
            true => Ok(ThresholdRule::Value(v)),
            false => Err(E::custom(format!("must be a finite number, got {v}"))),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<ThresholdRule, E> {
        self.visit_f64(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<ThresholdRule, E> {
        self.visit_f64(v as f64)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<ThresholdRule, E> {
        let expectation = || E::custom(format!("must be {}, got {v:?}", ThresholdRule::EXPECTED));
        ThresholdRule::named(v).ok_or_else(expectation)
    }
}

/// The pairs of the unlabeled batch `emb_u` mined by `basis` (see the module docs), with the
/// thresholds resolved from the basis' running statistics as they are at this call; a rule
/// whose statistic is still undefined is an error.
pub fn basis_pairs(
    basis: &FeatureBasis,
    emb_u: &Tensor,
    pseudo_u: Option<&Tensor>,
    t1: ThresholdRule,
    t2: ThresholdRule,
    require_pseudo_agreement: bool,
) -> Result<PairIndices> {
    let n = basis.embeddings(emb_u, "emb_u")?.size()[0] as usize;
    let (mu_pos, mu_neg) = basis.running_means()?;
    let resolve = |rule: ThresholdRule, side: Side| -> Result<f64> {
        let Some(value) = rule.resolve(side, mu_pos, mu_neg) else {
            bail!(
                Value,
                "{}=\"{rule}\" reads the basis's running statistics ({}), which no \
                 training-mode basis loss has set yet; call the loss first or pass a number",
                side.name(),
                rule.on_side(side)
            );
        };
        Ok(value)
    };
    let (t1, t2) = (resolve(t1, Side::T1)?, resolve(t2, Side::T2)?);
    let pseudo = match pseudo_u {
        Some(p) => {
            if validate::labels(p, n, "pseudo_u", "emb_u")?.iter().any(|&l| l < 0) {
                bail!(
                    Value,
                    "pseudo_u contains negative labels; pseudo labels are cluster ids >= 0"
                );
            }
            validate::same_device(p, "pseudo_u", emb_u, "emb_u")?;
            Some(p.f_to_kind(Kind::Int64)?)
        }
        None if require_pseudo_agreement => {
            bail!(Value, "pseudo_u is needed when require_pseudo_agreement is True")
        }
        None => None,
    };
    let _guard = tch::no_grad_guard();
    let s = basis.similarity(emb_u)?;
    let masks =
        basis_pair_masks(&s, pseudo.as_ref(), Some(t1), Some(t2), require_pseudo_agreement)?;
    let (a1, p) = pair_columns(&masks.pos)?;
    let (a2, neg) = pair_columns(&masks.neg)?;
    Ok((a1, p, a2, neg))
}

/// The mined pairs as masks, from a precomputed basis similarity matrix `similarity`
/// (N x N, read without gradient) and pseudo labels on its device (needed when
/// `require_pseudo_agreement`): `pos = {s >= t1, i != j}`, `neg = {s <= t2, i != j}`, each
/// restricted by the pseudo labels when asked. A threshold of `None` mines no pair of that
/// side (e.g. a running mean that no batch has defined yet).
pub fn basis_pair_masks(
    similarity: &Tensor,
    pseudo: Option<&Tensor>,
    t1: Option<f64>,
    t2: Option<f64>,
    require_pseudo_agreement: bool,
) -> Result<PairMasks> {
    let _guard = tch::no_grad_guard();
    let s = similarity.f_detach()?;
    let n = s.size()[0];
    let off_diagonal = Tensor::f_eye(n, (Kind::Bool, s.device()))?.f_logical_not()?;
    let side = |threshold: Option<f64>, above: bool| -> Result<Tensor> {
        match threshold {
            Some(t) if above => Ok(s.f_ge(t)?.f_logical_and(&off_diagonal)?),
            Some(t) => Ok(s.f_le(t)?.f_logical_and(&off_diagonal)?),
            None => Ok(Tensor::f_zeros([n, n], (Kind::Bool, s.device()))?),
        }
    };
    let (mut pos, mut neg) = (side(t1, true)?, side(t2, false)?);
    if require_pseudo_agreement {
        let Some(p) = pseudo else {
            bail!(Value, "pseudo labels are needed when require_pseudo_agreement is True");
        };
        let same = p.f_unsqueeze(1)?.f_eq_tensor(&p.f_unsqueeze(0)?)?;
        pos = pos.f_logical_and(&same)?;
        neg = neg.f_logical_and(&same.f_logical_not()?)?;
    }
    Ok(PairMasks { pos, neg })
}

/// Row and column indices of the true entries of a square mask, row-major.
fn pair_columns(mask: &Tensor) -> Result<(Tensor, Tensor)> {
    let ids = mask.f_nonzero()?;
    Ok((ids.f_select(1, 0)?.f_contiguous()?, ids.f_select(1, 1)?.f_contiguous()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::basis::BasisConfig;
    use serde_json::json;
    use tch::Device;

    type PairList = Vec<(i64, i64)>;

    /// The pairs of a plain loop over s with the given thresholds.
    fn loop_pairs(s: &Tensor, labels: &[i64], t1: f64, t2: f64) -> (PairList, PairList) {
        let n = labels.len() as i64;
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        for i in 0..n {
            for j in 0..n {
                let v = s.double_value(&[i, j]) as f32;
                let same = labels[i as usize] == labels[j as usize];
                if i != j && v >= t1 as f32 && same {
                    pos.push((i, j));
                }
                if i != j && v <= t2 as f32 && !same {
                    neg.push((i, j));
                }
            }
        }
        (pos, neg)
    }

    fn listed(a: &Tensor, b: &Tensor) -> PairList {
        let a = Vec::<i64>::try_from(a).unwrap();
        let b = Vec::<i64>::try_from(b).unwrap();
        a.into_iter().zip(b).collect()
    }

    #[test]
    fn every_rule_mines_as_a_loop_over_pairs() {
        tch::manual_seed(1);
        let basis = FeatureBasis::new(3, 4, None, BasisConfig::default(), Device::Cpu).unwrap();
        let emb = Tensor::randn([7, 4], (Kind::Float, Device::Cpu));
        let labels = [0i64, 1, 0, 2, 1, 0, 2];
        let pseudo = Tensor::from_slice(&labels);
        basis.loss(None, Some((&emb, &pseudo)), true).unwrap();
        let (mu_pos, mu_neg) = basis.running_means().unwrap();
        let (mu_pos, mu_neg) = (mu_pos.unwrap(), mu_neg.unwrap());
        let s = basis.similarity(&emb).unwrap();
        let rules = [
            (ThresholdRule::Value(0.2), ThresholdRule::Value(0.1), 0.2, 0.1),
            (ThresholdRule::Auto, ThresholdRule::Auto, mu_pos, mu_neg),
            (ThresholdRule::MuNeg, ThresholdRule::MuPos, mu_neg, mu_pos),
            (
                ThresholdRule::Mid,
                ThresholdRule::Mid,
                (mu_pos + mu_neg) / 2.0,
                (mu_pos + mu_neg) / 2.0,
            ),
            (ThresholdRule::All, ThresholdRule::All, -2.0, 2.0),
        ];
        for (t1, t2, v1, v2) in rules {
            let (a1, p, a2, n) = basis_pairs(&basis, &emb, Some(&pseudo), t1, t2, true).unwrap();
            let (pos, neg) = loop_pairs(&s, &labels, v1, v2);
            assert_eq!(listed(&a1, &p), pos, "{t1} {t2}");
            assert_eq!(listed(&a2, &n), neg, "{t1} {t2}");
        }
    }

    #[test]
    fn rules_resolve_on_their_side() {
        let auto = ThresholdRule::Auto;
        assert_eq!((auto.on_side(Side::T1), auto.on_side(Side::T2)), ThresholdRule::AUTO);
        assert_eq!(ThresholdRule::Mid.resolve(Side::T1, Some(0.8), Some(0.2)), Some(0.5));
        assert_eq!(ThresholdRule::All.resolve(Side::T1, None, None), Some(-2.0));
        assert_eq!(ThresholdRule::All.resolve(Side::T2, None, None), Some(2.0));
        assert_eq!(ThresholdRule::MuPos.resolve(Side::T2, None, Some(0.2)), None);
        assert_eq!(ThresholdRule::Mid.resolve(Side::T2, Some(0.8), None), None);
        assert_eq!(auto.resolve(Side::T2, Some(0.8), Some(0.2)), Some(0.2));
    }

    #[test]
    fn rules_parse_and_serialise_as_written() {
        for name in ThresholdRule::NAMES {
            let rule: ThresholdRule = name.parse().unwrap();
            assert_eq!(rule.to_string(), name);
            assert_eq!(serde_json::to_value(rule).unwrap(), json!(name));
            assert_eq!(serde_json::from_value::<ThresholdRule>(json!(name)).unwrap(), rule);
        }
        let value: ThresholdRule = serde_json::from_value(json!(0.25)).unwrap();
        assert_eq!(
            (value, serde_json::to_value(value).unwrap()),
            (ThresholdRule::Value(0.25), json!(0.25))
        );
        assert_eq!(
            serde_json::from_value::<ThresholdRule>(json!(1)).unwrap(),
            ThresholdRule::Value(1.0)
        );
        let err = "median".parse::<ThresholdRule>().unwrap_err();
        assert!(
            matches!(err, SladeError::Config(_)) && err.to_string().contains("\"mu-\""),
            "{err}"
        );
        let err = ThresholdRule::value_as(f64::NAN, "t2").unwrap_err().to_string();
        assert!(err.starts_with("t2 must be a finite number"), "{err}");
        let err = ThresholdRule::parse_as("low", "t1").unwrap_err().to_string();
        assert!(err.starts_with("t1 must be a number or one of \"auto\""), "{err}");
        assert!(serde_json::from_value::<ThresholdRule>(json!([0.5])).is_err());
    }

    #[test]
    fn undefined_statistics_are_an_error_of_the_miner() {
        let basis = FeatureBasis::new(3, 4, None, BasisConfig::default(), Device::Cpu).unwrap();
        let emb = Tensor::randn([4, 4], (Kind::Float, Device::Cpu));
        let pseudo = Tensor::from_slice(&[0i64, 0, 1, 1]);
        let auto = ThresholdRule::Auto;
        let err = basis_pairs(&basis, &emb, Some(&pseudo), auto, auto, true).unwrap_err();
        assert!(err.to_string().starts_with("t1=\"auto\" reads"), "{err}");
        let fixed = ThresholdRule::Value(0.0);
        let err = basis_pairs(&basis, &emb, Some(&pseudo), fixed, ThresholdRule::Mid, true);
        assert!(err.unwrap_err().to_string().starts_with("t2=\"mid\""));
        assert!(basis_pairs(&basis, &emb, Some(&pseudo), fixed, ThresholdRule::All, true).is_ok());
        basis.loss(None, Some((&emb, &pseudo)), true).unwrap();
        assert!(basis_pairs(&basis, &emb, Some(&pseudo), auto, auto, true).is_ok());
    }
}
