//! SLADE's pair mining on unlabeled samples (Sec 3.3, DESIGN.md §2.4): with s(i, j) the
//! basis similarity cos(W_a f_i, W_a f_j), the positive pairs are P = {(i, j): i != j,
//! s(i, j) >= T1} and the negative pairs N = {(i, j): i != j, s(i, j) <= T2}. By default a
//! positive must also share its pseudo label and a negative must not
//! (`require_pseudo_agreement`). Both orders of a pair are returned, row-major (i, then j),
//! as PML's pair miners do. `Threshold::Auto` uses the basis's running mu+ (T1) or mu- (T2),
//! as they are when the miner is called.

use super::{PairIndices, PairMasks};
use crate::bail;
use crate::basis::FeatureBasis;
use crate::error::Result;
use crate::validate;
use tch::{Kind, Tensor};

/// T1 or T2.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    /// The running mean similarity of the basis (mu+ for T1, mu- for T2).
    Auto,
    Fixed(f64),
}

/// The pairs of the unlabeled batch `emb_u` mined by `basis` (see the module docs).
pub fn basis_pairs(
    basis: &FeatureBasis,
    emb_u: &Tensor,
    pseudo_u: Option<&Tensor>,
    t1: Threshold,
    t2: Threshold,
    require_pseudo_agreement: bool,
) -> Result<PairIndices> {
    let (n, _) = validate::embeddings(emb_u, "emb_u")?;
    let (mu_pos, mu_neg) = basis.running_means()?;
    let resolve = |t: Threshold, running: Option<f64>, name: &str, side: &str| -> Result<f64> {
        match (t, running) {
            (Threshold::Fixed(v), _) if v.is_finite() => Ok(v),
            (Threshold::Fixed(v), _) => bail!(Value, "{name} must be finite, got {v}"),
            (Threshold::Auto, Some(v)) => Ok(v),
            (Threshold::Auto, None) => bail!(
                Value,
                "{name}=\"auto\" uses the basis's running mean similarity of {side} pairs, which no training-mode basis loss has set yet; call the loss first or pass a number"
            ),
        }
    };
    let t1 = resolve(t1, mu_pos, "t1", "positive")?;
    let t2 = resolve(t2, mu_neg, "t2", "negative")?;
    let pseudo = match pseudo_u {
        Some(p) => {
            validate::labels(p, n, "pseudo_u", "emb_u")?;
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
    use tch::Device;

    #[test]
    fn fixed_thresholds_match_a_loop_over_pairs() {
        tch::manual_seed(1);
        let basis = FeatureBasis::new(3, 4, None, BasisConfig::default(), Device::Cpu).unwrap();
        let emb = Tensor::randn([7, 4], (Kind::Float, Device::Cpu));
        let labels = [0i64, 1, 0, 2, 1, 0, 2];
        let pseudo = Tensor::from_slice(&labels);
        let (a1, p, a2, n) = basis_pairs(
            &basis,
            &emb,
            Some(&pseudo),
            Threshold::Fixed(0.2),
            Threshold::Fixed(0.1),
            true,
        )
        .unwrap();
        let s = basis.similarity(&emb).unwrap();
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        for i in 0..7 {
            for j in 0..7 {
                let v = s.double_value(&[i, j]) as f32;
                let same = labels[i as usize] == labels[j as usize];
                if i != j && v >= 0.2 && same {
                    pos.push((i, j));
                }
                if i != j && v <= 0.1 && !same {
                    neg.push((i, j));
                }
            }
        }
        let got = |a: &Tensor, b: &Tensor| -> Vec<(i64, i64)> {
            let a = Vec::<i64>::try_from(a).unwrap();
            let b = Vec::<i64>::try_from(b).unwrap();
            a.into_iter().zip(b).collect()
        };
        assert_eq!(got(&a1, &p), pos);
        assert_eq!(got(&a2, &n), neg);
    }

    #[test]
    fn auto_needs_running_statistics() {
        let basis = FeatureBasis::new(3, 4, None, BasisConfig::default(), Device::Cpu).unwrap();
        let emb = Tensor::randn([4, 4], (Kind::Float, Device::Cpu));
        let pseudo = Tensor::from_slice(&[0i64, 0, 1, 1]);
        let err = basis_pairs(&basis, &emb, Some(&pseudo), Threshold::Auto, Threshold::Auto, true);
        assert!(err.is_err());
        basis.loss(None, Some((&emb, &pseudo)), true).unwrap();
        assert!(basis_pairs(&basis, &emb, Some(&pseudo), Threshold::Auto, Threshold::Auto, true)
            .is_ok());
    }
}
