//! SLADE's pair mining on unlabeled samples (Sec 3.3, DESIGN.md §2.4): with s(i, j) the
//! basis similarity cos(W_a f_i, W_a f_j), the positive pairs are P = {(i, j): i != j,
//! s(i, j) >= T1} and the negative pairs N = {(i, j): i != j, s(i, j) <= T2}. By default a
//! positive must also share its pseudo label and a negative must not
//! (`require_pseudo_agreement`). Both orders of a pair are returned, row-major (i, then j),
//! as PML's pair miners do. `Threshold::Auto` uses the basis's running mu+ (T1) or mu- (T2),
//! as they are when the miner is called.

use super::PairIndices;
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
    let device = emb_u.device();
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
    let off_diagonal = Tensor::f_eye(n as i64, (Kind::Bool, device))?.f_logical_not()?;
    let mut positive = s.f_ge(t1)?.f_logical_and(&off_diagonal)?;
    let mut negative = s.f_le(t2)?.f_logical_and(&off_diagonal)?;
    if let (Some(p), true) = (&pseudo, require_pseudo_agreement) {
        let same = p.f_unsqueeze(1)?.f_eq_tensor(&p.f_unsqueeze(0)?)?;
        positive = positive.f_logical_and(&same)?;
        negative = negative.f_logical_and(&same.f_logical_not()?)?;
    }
    let (a1, p) = pair_columns(&positive)?;
    let (a2, neg) = pair_columns(&negative)?;
    Ok((a1, p, a2, neg))
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
