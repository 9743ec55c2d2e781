//! Multi-similarity loss (Wang et al., CVPR 2019), one of SLADE's ranking losses
//! (DESIGN.md §2.2). With `S` the cosine similarity, per anchor i:
//!
//! `L_i = 1/alpha log(1 + sum_{p in P_i} e^{-alpha (S_ip - base)})
//!      + 1/beta  log(1 + sum_{n in N_i} e^{ beta (S_in - base)})`,
//!
//! a term being 0 when its set is empty, and `L = mean_i L_i` over all N anchors. Equals
//! pytorch-metric-learning's `MultiSimilarityLoss()` with its defaults (`CosineSimilarity`,
//! `MeanReducer`), also with the pairs of its `MultiSimilarityMiner`.

use super::distance::{cosine_similarity, zero_loss};
use super::pairs::{PairMasks, PairSource, PairWeights};
use super::{check_embeddings, check_finite_param, check_inputs, check_labels, CheckedPairs};
use crate::bail;
use crate::error::Result;
use crate::mining::multi_similarity::multi_similarity_masks;
use tch::{Kind, Tensor};

/// The weights of the multi-similarity loss.
#[derive(Debug, Clone, Copy)]
pub struct MultiSimilarityParams {
    /// Weight of the positive pairs (PML default 2).
    pub alpha: f64,
    /// Weight of the negative pairs (PML default 50).
    pub beta: f64,
    /// The similarity both terms are centred on (PML default 0.5).
    pub base: f64,
}

impl Default for MultiSimilarityParams {
    fn default() -> Self {
        MultiSimilarityParams { alpha: 2.0, beta: 50.0, base: 0.5 }
    }
}

impl MultiSimilarityParams {
    pub fn check(&self) -> Result<()> {
        for (value, name) in [(self.alpha, "alpha"), (self.beta, "beta")] {
            if !(value.is_finite() && value > 0.0) {
                bail!(Value, "{name} must be a positive finite number, got {value}");
            }
        }
        check_finite_param(self.base, "base")
    }
}

/// The multi-similarity loss of `embeddings` (N x D) over the pairs `source` names.
pub fn multi_similarity(
    embeddings: &Tensor,
    source: PairSource<'_>,
    params: &MultiSimilarityParams,
) -> Result<Tensor> {
    params.check()?;
    let masks = match check_inputs(embeddings, source)? {
        CheckedPairs::Labels(labels) => PairMasks::from_labels(&labels)?,
        CheckedPairs::Masks(masks) => {
            let similarity = cosine_similarity(embeddings)?;
            return multi_similarity_from_similarity(&similarity, masks, params);
        }
        CheckedPairs::Pairs(pairs) => {
            if pairs.too_few() {
                return zero_loss(embeddings);
            }
            let masks = pairs.to_masks()?;
            let both = masks.pos.f_logical_and(&masks.neg)?.f_any()?;
            if bool::try_from(&both)? {
                bail!(
                    Value,
                    "pairs holds a pair that is both positive and negative; the multi-similarity \
                     loss needs each pair to be one or the other"
                );
            }
            masks
        }
    };
    let similarity = cosine_similarity(embeddings)?;
    multi_similarity_terms(&similarity, &masks.weights(similarity.kind())?, params)
}

/// The multi-similarity loss on the pairs of `MultiSimilarityMiner(epsilon)`, mined on the
/// same similarity matrix the loss uses (computed once). Equals
/// `MultiSimilarityLoss()(x, y, MultiSimilarityMiner(epsilon)(x, y))`. Also returns the
/// mined pairs as masks.
pub fn multi_similarity_with_miner(
    embeddings: &Tensor,
    labels: &Tensor,
    params: &MultiSimilarityParams,
    epsilon: f64,
) -> Result<(Tensor, PairMasks)> {
    params.check()?;
    check_finite_param(epsilon, "epsilon")?;
    check_embeddings(embeddings)?;
    let labels = check_labels(labels, embeddings)?;
    let similarity = cosine_similarity(embeddings)?;
    let masks = multi_similarity_masks(&similarity, &labels, epsilon)?;
    let loss = multi_similarity_from_similarity(&similarity, &masks, params)?;
    Ok((loss, masks))
}

/// The multi-similarity loss from a precomputed cosine-similarity matrix (N x N) over the
/// pairs of `masks` (each pair once); zero, as in PML, with at most one pair of each kind.
pub fn multi_similarity_from_similarity(
    similarity: &Tensor,
    masks: &PairMasks,
    params: &MultiSimilarityParams,
) -> Result<Tensor> {
    let weights = masks.weights(similarity.kind())?;
    weights.zero_if_too_few(&multi_similarity_terms(similarity, &weights, params)?, similarity)
}

/// `mean_i L_i` over all rows, each term a weighted log-sum-exp.
fn multi_similarity_terms(
    similarity: &Tensor,
    weights: &PairWeights,
    params: &MultiSimilarityParams,
) -> Result<Tensor> {
    let pos_exponent = similarity.f_rsub_scalar(params.base)?.f_mul_scalar(params.alpha)?;
    let neg_exponent = similarity.f_sub_scalar(params.base)?.f_mul_scalar(params.beta)?;
    let pos =
        log_one_plus_sum_exp(&pos_exponent, &weights.pos)?.f_mul_scalar(1.0 / params.alpha)?;
    let neg = log_one_plus_sum_exp(&neg_exponent, &weights.neg)?.f_mul_scalar(1.0 / params.beta)?;
    Ok(pos.f_add(&neg)?.f_mean(None::<Kind>)?)
}

/// Row-wise `log(1 + sum_j w_ij e^{x_ij})` (N x 1) for 0/1 weights `w`; 0 for a row without
/// weight. PML masks `x`, appends a zero column and calls `logsumexp`; this is the same value
/// shifted by `m = max(0, max_{w_ij = 1} x_ij)`, `m + log(e^{-m} + sum_j w_ij e^{x_ij - m})`,
/// with no copy and no `masked_fill`. The shift carries no gradient (the value does not
/// depend on it); `x - m` is zeroed before `exp` where `w` is 0, so no masked entry can
/// overflow or underflow.
fn log_one_plus_sum_exp(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let dim = [1i64];
    let shift = x.f_detach()?.f_mul(weight)?.f_amax(dim.as_slice(), true)?.f_clamp_min(0.0)?;
    let terms = x.f_sub(&shift)?.f_mul(weight)?.f_exp()?.f_mul(weight)?;
    let sum = terms.f_sum_dim_intlist(dim.as_slice(), true, x.kind())?;
    Ok(shift.f_neg()?.f_exp()?.f_add(&sum)?.f_log()?.f_add(&shift)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::losses::Pairs;
    use tch::Device;

    /// Plain loops from the definition, in f64.
    fn reference(
        s: &[Vec<f64>],
        pos: &[Vec<bool>],
        neg: &[Vec<bool>],
        p: MultiSimilarityParams,
    ) -> f64 {
        let n = s.len();
        let mut total = 0.0;
        for i in 0..n {
            let (mut sp, mut sn, mut any_p, mut any_n) = (0.0, 0.0, false, false);
            for j in 0..n {
                if pos[i][j] {
                    sp += (-p.alpha * (s[i][j] - p.base)).exp();
                    any_p = true;
                }
                if neg[i][j] {
                    sn += (p.beta * (s[i][j] - p.base)).exp();
                    any_n = true;
                }
            }
            if any_p {
                total += (1.0 + sp).ln() / p.alpha;
            }
            if any_n {
                total += (1.0 + sn).ln() / p.beta;
            }
        }
        total / n as f64
    }

    fn to_rows<T: tch::kind::Element + Copy>(t: &Tensor) -> Vec<Vec<T>> {
        let n = t.size()[0];
        (0..n).map(|i| Vec::<T>::try_from(t.get(i)).unwrap()).collect()
    }

    #[test]
    fn equals_the_definition_with_labels_and_pairs() {
        tch::manual_seed(3);
        let x = Tensor::randn([9, 5], (Kind::Double, Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, 1, 2, 0, 1, 2, 0, 1, 1]);
        let params = MultiSimilarityParams { alpha: 2.0, beta: 10.0, base: 0.3 };
        let masks = PairMasks::from_labels(&labels).unwrap();
        let s = to_rows::<f64>(&cosine_similarity(&x).unwrap());
        let expected = reference(&s, &to_rows(&masks.pos), &to_rows(&masks.neg), params);
        let loss = multi_similarity(&x, PairSource::Labels(&labels), &params).unwrap();
        approx::assert_abs_diff_eq!(loss.double_value(&[]), expected, epsilon = 1e-12);
        let pairs = Pairs::all(&labels).unwrap();
        let loss = multi_similarity(&x, PairSource::Pairs(&pairs), &params).unwrap();
        approx::assert_abs_diff_eq!(loss.double_value(&[]), expected, epsilon = 1e-12);
    }

    #[test]
    fn mined_loss_equals_loss_on_mined_pairs() {
        tch::manual_seed(5);
        let x = Tensor::randn([40, 8], (Kind::Float, Device::Cpu));
        let labels = Tensor::randint(4, [40], (Kind::Int64, Device::Cpu));
        let params = MultiSimilarityParams::default();
        let (loss, masks) = multi_similarity_with_miner(&x, &labels, &params, 0.1).unwrap();
        let pairs = masks.to_pairs().unwrap();
        let again = multi_similarity(&x, PairSource::Pairs(&pairs), &params).unwrap();
        approx::assert_abs_diff_eq!(
            loss.double_value(&[]),
            again.double_value(&[]),
            epsilon = 1e-6
        );
    }

    #[test]
    fn overlapping_pairs_are_refused() {
        let x = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
        let idx = |v: &[i64]| Tensor::from_slice(v);
        let pairs =
            Pairs::new(&idx(&[0, 1]), &idx(&[1, 2]), &idx(&[0, 3]), &idx(&[1, 2]), 4, Device::Cpu)
                .unwrap();
        let params = MultiSimilarityParams::default();
        let err = multi_similarity(&x, PairSource::Pairs(&pairs), &params).unwrap_err();
        assert!(err.to_string().contains("both positive and negative"), "{err}");
    }

    #[test]
    fn bad_params_are_refused() {
        let x = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, 0, 1, 1]);
        let params = MultiSimilarityParams { alpha: 0.0, ..Default::default() };
        let err = multi_similarity(&x, PairSource::Labels(&labels), &params).unwrap_err();
        assert!(err.to_string().contains("alpha"), "{err}");
    }
}
