//! The pairwise distance and similarity of a batch, as pytorch-metric-learning's
//! `LpDistance` and `CosineSimilarity` compute them: both L2-normalise the embeddings first,
//! inside the autograd graph, so gradients flow through the normalisation.

use crate::error::Result;
use tch::{Device, Kind, Tensor};

/// `x / max(||x||_2, 1e-12)` row-wise (`torch.nn.functional.normalize`).
pub fn normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.f_norm_scalaropt_dim(2.0, [1i64].as_slice(), true)?;
    Ok(x.f_div(&norm.f_clamp_min(1e-12)?.f_expand_as(x)?)?)
}

/// `S = f f^T` on normalised rows f: the cosine similarity of every pair.
pub fn cosine_similarity(x: &Tensor) -> Result<Tensor> {
    let f = normalize(x)?;
    Ok(f.f_matmul(&f.f_transpose(-1, -2)?)?)
}

/// `d(i, j) = ||f_i - f_j||_2` on normalised rows (non-squared; `torch.cdist`, whose gradient
/// at zero distance is finite).
pub fn euclidean_distance(x: &Tensor) -> Result<Tensor> {
    let f = normalize(x)?;
    if f.device() == Device::Cpu && matches!(f.kind(), Kind::Half | Kind::BFloat16) {
        // LibTorch has no CPU cdist for these dtypes: compute it in float32 and round back.
        let wide = f.f_to_kind(Kind::Float)?;
        return Ok(Tensor::f_cdist(&wide, &wide, 2.0, None)?.f_to_kind(f.kind())?);
    }
    Ok(Tensor::f_cdist(&f, &f, 2.0, None)?)
}

/// The lowest finite value of a floating dtype (`torch.finfo(dtype).min`).
pub fn lowest(kind: Kind) -> f64 {
    -highest(kind)
}

/// The largest finite value of a floating dtype (`torch.finfo(dtype).max`).
pub fn highest(kind: Kind) -> f64 {
    match kind {
        Kind::Double => f64::MAX,
        Kind::Half => 65504.0,
        Kind::BFloat16 => 3.3895313892515355e38,
        _ => f32::MAX as f64,
    }
}

/// A 0-dim tensor of `like`'s dtype and device holding `value`.
pub fn scalar_like(like: &Tensor, value: f64) -> Result<Tensor> {
    Ok(Tensor::f_scalar_tensor(value, (like.kind(), like.device()))?)
}

/// `sum(x * 0)`: a zero loss that keeps the graph, so backward gives zero (not missing)
/// gradients, as PML's reducers return it.
pub fn zero_loss(embeddings: &Tensor) -> Result<Tensor> {
    Ok(embeddings.f_mul_scalar(0.0)?.f_sum(None::<Kind>)?)
}

/// The mean of the positive entries of non-negative `terms` (zeros contribute nothing), or
/// zero when none is positive: PML's `AvgNonZeroReducer`, computed without a host
/// synchronisation (`sign` counts the positive entries of a non-negative tensor).
pub fn mean_of_positive(terms: &Tensor) -> Result<Tensor> {
    let count = terms.f_detach()?.f_sign()?.f_sum(terms.kind())?.f_clamp_min(1.0)?;
    Ok(terms.f_sum(terms.kind())?.f_div(&count)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_and_distance_of_normalised_rows() {
        let x = Tensor::from_slice(&[3.0f64, 4.0, 0.0, 2.0, 0.0, 0.0]).view([3, 2]);
        let s = cosine_similarity(&x).unwrap();
        let d = euclidean_distance(&x).unwrap();
        approx::assert_abs_diff_eq!(s.double_value(&[0, 1]), 0.8, epsilon = 1e-12);
        approx::assert_abs_diff_eq!(s.double_value(&[2, 2]), 0.0, epsilon = 1e-12);
        let expected = ((0.6f64).powi(2) + (0.2f64).powi(2)).sqrt();
        approx::assert_abs_diff_eq!(d.double_value(&[0, 1]), expected, epsilon = 1e-12);
        approx::assert_abs_diff_eq!(d.double_value(&[1, 2]), 1.0, epsilon = 1e-12);
    }

    #[test]
    fn mean_of_positive_ignores_zeros() {
        let t = Tensor::from_slice(&[0.0f32, 2.0, 0.0, 4.0]);
        approx::assert_abs_diff_eq!(mean_of_positive(&t).unwrap().double_value(&[]), 3.0);
        let z = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        assert_eq!(mean_of_positive(&z).unwrap().double_value(&[]), 0.0);
    }
}
