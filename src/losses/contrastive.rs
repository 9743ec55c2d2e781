//! Contrastive loss (Hadsell et al. 2006), one of SLADE's ranking losses (DESIGN.md §2.2):
//! `L = mean_{>0}[d_p - m_pos]_+ + mean_{>0}[m_neg - d_n]_+` with `d` the non-squared
//! Euclidean distance of L2-normalised embeddings; each mean runs over the non-zero terms
//! only. Equals pytorch-metric-learning's `ContrastiveLoss()` with its defaults
//! (`LpDistance`, `AvgNonZeroReducer`).

use super::distance::{euclidean_distance, mean_of_positive, zero_loss};
use super::pairs::{PairMasks, PairSource, PairWeights};
use super::{check_finite_param, check_inputs, CheckedPairs};
use crate::error::Result;
use tch::Tensor;

/// The margins of the contrastive loss.
#[derive(Debug, Clone, Copy)]
pub struct ContrastiveParams {
    /// Positive pairs closer than this cost nothing (PML default 0).
    pub pos_margin: f64,
    /// Negative pairs farther than this cost nothing (PML default 1).
    pub neg_margin: f64,
}

impl Default for ContrastiveParams {
    fn default() -> Self {
        ContrastiveParams { pos_margin: 0.0, neg_margin: 1.0 }
    }
}

impl ContrastiveParams {
    pub fn check(&self) -> Result<()> {
        check_finite_param(self.pos_margin, "pos_margin")?;
        check_finite_param(self.neg_margin, "neg_margin")
    }
}

/// The contrastive loss of `embeddings` (N x D) over the pairs `source` names.
pub fn contrastive(
    embeddings: &Tensor,
    source: PairSource<'_>,
    params: &ContrastiveParams,
) -> Result<Tensor> {
    params.check()?;
    let source = check_inputs(embeddings, source)?;
    if let CheckedPairs::Pairs(pairs) = source {
        if pairs.too_few() {
            return zero_loss(embeddings);
        }
    }
    let distances = euclidean_distance(embeddings)?;
    match source {
        CheckedPairs::Labels(labels) => {
            let weights = PairMasks::from_labels(&labels)?.weights(distances.kind())?;
            contrastive_terms(&distances, &weights, params)
        }
        CheckedPairs::Masks(masks) => contrastive_from_distances(&distances, masks, params),
        CheckedPairs::Pairs(pairs) => {
            let pos = distances.f_index(&[Some(pairs.a1()), Some(pairs.p())])?;
            let neg = distances.f_index(&[Some(pairs.a2()), Some(pairs.n())])?;
            let pos_loss = pos.f_sub_scalar(params.pos_margin)?.f_relu()?;
            let neg_loss = neg.f_rsub_scalar(params.neg_margin)?.f_relu()?;
            Ok(mean_of_positive(&pos_loss)?.f_add(&mean_of_positive(&neg_loss)?)?)
        }
    }
}

/// The contrastive loss from a precomputed distance matrix `distances` (N x N) over the
/// pairs of `masks` (each pair once); zero, as in PML, with at most one pair of each kind.
pub fn contrastive_from_distances(
    distances: &Tensor,
    masks: &PairMasks,
    params: &ContrastiveParams,
) -> Result<Tensor> {
    let weights = masks.weights(distances.kind())?;
    weights.zero_if_too_few(&contrastive_terms(distances, &weights, params)?, distances)
}

/// `mean_{>0} w+ [d - m_pos]_+ + mean_{>0} w- [m_neg - d]_+` over the whole matrix.
fn contrastive_terms(
    distances: &Tensor,
    weights: &PairWeights,
    params: &ContrastiveParams,
) -> Result<Tensor> {
    let pos = distances.f_sub_scalar(params.pos_margin)?.f_relu()?.f_mul(&weights.pos)?;
    let neg = distances.f_rsub_scalar(params.neg_margin)?.f_relu()?.f_mul(&weights.neg)?;
    Ok(mean_of_positive(&pos)?.f_add(&mean_of_positive(&neg)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::Pairs;
    use tch::{Device, Kind};

    /// A plain loop over all pairs, written from the definition.
    fn reference(x: &[[f64; 2]], labels: &[i64], m_pos: f64, m_neg: f64) -> f64 {
        let f: Vec<[f64; 2]> = x
            .iter()
            .map(|r| {
                let n = (r[0] * r[0] + r[1] * r[1]).sqrt();
                [r[0] / n, r[1] / n]
            })
            .collect();
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        for i in 0..f.len() {
            for j in 0..f.len() {
                let d = ((f[i][0] - f[j][0]).powi(2) + (f[i][1] - f[j][1]).powi(2)).sqrt();
                if i != j && labels[i] == labels[j] {
                    pos.push((d - m_pos).max(0.0));
                } else if labels[i] != labels[j] {
                    neg.push((m_neg - d).max(0.0));
                }
            }
        }
        let mean = |v: Vec<f64>| {
            let nz: Vec<f64> = v.into_iter().filter(|&t| t > 0.0).collect();
            if nz.is_empty() {
                0.0
            } else {
                nz.iter().sum::<f64>() / nz.len() as f64
            }
        };
        mean(pos) + mean(neg)
    }

    #[test]
    fn equals_the_definition() {
        let x = [[1.0, 0.2], [0.9, 0.5], [-0.3, 1.0], [0.1, 1.0], [1.0, -1.0]];
        let labels = [0i64, 0, 1, 1, 0];
        let xt = Tensor::from_slice(x.as_flattened()).view([5, 2]);
        let lt = Tensor::from_slice(&labels);
        let params = ContrastiveParams { pos_margin: 0.05, neg_margin: 1.2 };
        let loss = contrastive(&xt, PairSource::Labels(&lt), &params).unwrap();
        let expected = reference(&x, &labels, 0.05, 1.2);
        approx::assert_abs_diff_eq!(loss.double_value(&[]), expected, epsilon = 1e-12);
        let pairs = Pairs::all(&lt).unwrap();
        let from_pairs = contrastive(&xt, PairSource::Pairs(&pairs), &params).unwrap();
        approx::assert_abs_diff_eq!(from_pairs.double_value(&[]), expected, epsilon = 1e-12);
    }

    #[test]
    fn no_pairs_give_zero_with_zero_gradient() {
        let params = ContrastiveParams::default();
        let mut x = Tensor::randn([6, 4], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let single = x.narrow(0, 0, 1);
        let label = Tensor::zeros([1], (Kind::Int64, Device::Cpu));
        let empty = Pairs::empty(6, Device::Cpu);
        let losses = [
            contrastive(&single, PairSource::Labels(&label), &params).unwrap(),
            contrastive(&x, PairSource::Pairs(&empty), &params).unwrap(),
        ];
        for loss in losses {
            assert_eq!(loss.double_value(&[]), 0.0);
            x.zero_grad();
            loss.backward();
            let grad = x.grad();
            assert!(bool::try_from(grad.isfinite().all()).unwrap());
            assert_eq!(grad.abs().sum(Kind::Double).double_value(&[]), 0.0);
        }
    }

    #[test]
    fn pairs_of_another_batch_are_refused() {
        let x = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
        let idx = |v: &[i64]| Tensor::from_slice(v);
        let pairs =
            Pairs::new(&idx(&[0, 4]), &idx(&[1, 2]), &idx(&[0]), &idx(&[3]), 5, Device::Cpu)
                .unwrap();
        let err =
            contrastive(&x, PairSource::Pairs(&pairs), &ContrastiveParams::default()).unwrap_err();
        assert!(err.to_string().contains("batch of 5 samples but embeddings has 4 rows"), "{err}");
    }
}
