//! Triplet margin loss, the usual baseline users compare against:
//! `L = mean_{>0} [d(a, p) - d(a, n) + margin]_+` over triplets, `d` the non-squared
//! Euclidean distance of L2-normalised embeddings. Equals pytorch-metric-learning's
//! `TripletMarginLoss()` with its defaults (margin 0.05, all triplets, `AvgNonZeroReducer`).

use super::distance::{euclidean_distance, mean_of_positive, zero_loss};
use super::pairs::{TripletSource, Triplets};
use super::{check_embeddings, check_finite_param, check_index_batch, check_labels};
use crate::error::Result;
use tch::Tensor;

/// PML's default margin.
pub const DEFAULT_MARGIN: f64 = 0.05;

/// The triplet margin loss of `embeddings` (N x D) over the triplets `source` names.
pub fn triplet_margin(
    embeddings: &Tensor,
    source: TripletSource<'_>,
    margin: f64,
) -> Result<Tensor> {
    check_finite_param(margin, "margin")?;
    let batch = check_embeddings(embeddings)?;
    let all;
    let triplets = match source {
        TripletSource::Labels(labels) => {
            all = Triplets::all(&check_labels(labels, embeddings)?)?;
            &all
        }
        TripletSource::Triplets(triplets) => {
            let (index_batch, index_device) = (triplets.batch(), triplets.a().device());
            check_index_batch("triplets", index_batch, index_device, batch, embeddings.device())?;
            triplets
        }
    };
    if triplets.is_empty() {
        return zero_loss(embeddings);
    }
    triplet_margin_from_distances(&euclidean_distance(embeddings)?, triplets, margin)
}

/// The triplet margin loss from a precomputed distance matrix (N x N).
pub fn triplet_margin_from_distances(
    distances: &Tensor,
    triplets: &Triplets,
    margin: f64,
) -> Result<Tensor> {
    let ap = distances.f_index(&[Some(triplets.a()), Some(triplets.p())])?;
    let an = distances.f_index(&[Some(triplets.a()), Some(triplets.n())])?;
    let violation = ap.f_sub(&an)?.f_add_scalar(margin)?.f_relu()?;
    mean_of_positive(&violation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::distance::normalize;
    use tch::{Device, Kind};

    #[test]
    fn equals_the_definition() {
        tch::manual_seed(11);
        let x = Tensor::randn([7, 3], (Kind::Double, Device::Cpu));
        let labels = [0i64, 1, 0, 1, 2, 2, 0];
        let lt = Tensor::from_slice(&labels);
        let margin = 0.3;
        let f = normalize(&x).unwrap();
        let d = |i: usize, j: usize| -> f64 {
            (f.get(i as i64) - f.get(j as i64)).norm().double_value(&[])
        };
        let mut terms = Vec::new();
        for a in 0..7 {
            for p in 0..7 {
                for n in 0..7 {
                    if a != p && labels[a] == labels[p] && labels[a] != labels[n] {
                        let v = d(a, p) - d(a, n) + margin;
                        if v > 0.0 {
                            terms.push(v);
                        }
                    }
                }
            }
        }
        let expected = terms.iter().sum::<f64>() / terms.len() as f64;
        let loss = triplet_margin(&x, TripletSource::Labels(&lt), margin).unwrap();
        approx::assert_abs_diff_eq!(loss.double_value(&[]), expected, epsilon = 1e-12);
    }

    #[test]
    fn distinct_classes_give_zero_with_zero_gradient() {
        let x = Tensor::randn([5, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let labels = Tensor::arange(5, (Kind::Int64, Device::Cpu));
        let loss = triplet_margin(&x, TripletSource::Labels(&labels), DEFAULT_MARGIN).unwrap();
        loss.backward();
        assert_eq!(loss.double_value(&[]), 0.0);
        assert_eq!(x.grad().abs().sum(Kind::Float).double_value(&[]), 0.0);
    }
}
