//! The multi-similarity miner (Wang et al., CVPR 2019, Sec. 3.3), with S the cosine
//! similarity and epsilon a margin:
//! a positive pair (i, j) is kept when `S_ij - epsilon < max_{k in N_i} S_ik`,
//! a negative pair (i, k) when `S_ik + epsilon > min_{j in P_i} S_ij`.
//! Selects the same pairs as pytorch-metric-learning's `MultiSimilarityMiner(epsilon)`
//! (which finds them by sorting; the set is the same, the order row-major).

use crate::error::Result;
use crate::losses::distance::{cosine_similarity, highest, lowest, scalar_like};
use crate::losses::{check_embeddings, check_finite_param, check_labels, PairMasks, Pairs};
use tch::Tensor;

/// The hard pairs of a batch: `(a1, p, a2, n)` int64 index tensors on the embeddings' device.
pub fn multi_similarity_miner(embeddings: &Tensor, labels: &Tensor, epsilon: f64) -> Result<Pairs> {
    check_finite_param(epsilon, "epsilon")?;
    check_embeddings(embeddings)?;
    let labels = check_labels(labels, embeddings)?;
    tch::no_grad(|| {
        let similarity = cosine_similarity(embeddings)?;
        multi_similarity_masks(&similarity, &labels, epsilon)?.to_pairs()
    })
}

/// The hard pairs as masks, from a precomputed cosine-similarity matrix (N x N) and labels
/// on its device. Reads `similarity` without recording gradients and leaves it unchanged.
pub fn multi_similarity_masks(
    similarity: &Tensor,
    labels: &Tensor,
    epsilon: f64,
) -> Result<PairMasks> {
    tch::no_grad(|| {
        let s = similarity.detach();
        let kind = s.kind();
        let candidates = PairMasks::from_labels(labels)?;
        let weights = candidates.weights(kind)?;
        // Entries outside the candidates become -max / +max (PML's ignore values) through a
        // multiply-add, which is much cheaper than `where` on a random mask.
        let not_neg = weights.neg.f_rsub_scalar(1.0)?;
        let not_pos = weights.pos.f_rsub_scalar(1.0)?;
        let hardest_neg = s
            .f_addcmul(&not_neg, &scalar_like(&s, lowest(kind))?)?
            .f_amax([1i64].as_slice(), true)?;
        let easiest_pos = s
            .f_addcmul(&not_pos, &scalar_like(&s, highest(kind))?)?
            .f_amin([1i64].as_slice(), true)?;
        let pos =
            s.f_sub_scalar(epsilon)?.f_lt_tensor(&hardest_neg)?.f_logical_and_(&candidates.pos)?;
        let neg =
            s.f_add_scalar(epsilon)?.f_gt_tensor(&easiest_pos)?.f_logical_and_(&candidates.neg)?;
        Ok(PairMasks { pos, neg })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn pair_set(a: &Tensor, b: &Tensor) -> Vec<(i64, i64)> {
        let a = Vec::<i64>::try_from(a).unwrap();
        let b = Vec::<i64>::try_from(b).unwrap();
        a.into_iter().zip(b).collect()
    }

    #[test]
    fn equals_a_loop_over_the_definition() {
        tch::manual_seed(7);
        let n = 30;
        let x = Tensor::randn([n, 6], (Kind::Double, Device::Cpu));
        let labels = Tensor::randint(4, [n], (Kind::Int64, Device::Cpu));
        let eps = 0.1;
        let pairs = multi_similarity_miner(&x, &labels, eps).unwrap();
        let s = cosine_similarity(&x).unwrap();
        let l = Vec::<i64>::try_from(&labels).unwrap();
        let (mut pos, mut neg) = (Vec::new(), Vec::new());
        for i in 0..n {
            let sim = |j: i64| s.double_value(&[i, j]);
            let others = (0..n).filter(|&j| j != i);
            let ps: Vec<i64> = others.clone().filter(|&j| l[j as usize] == l[i as usize]).collect();
            let ns: Vec<i64> = others.filter(|&j| l[j as usize] != l[i as usize]).collect();
            if ps.is_empty() || ns.is_empty() {
                continue;
            }
            let max_neg = ns.iter().map(|&j| sim(j)).fold(f64::MIN, f64::max);
            let min_pos = ps.iter().map(|&j| sim(j)).fold(f64::MAX, f64::min);
            pos.extend(ps.iter().filter(|&&j| sim(j) - eps < max_neg).map(|&j| (i, j)));
            neg.extend(ns.iter().filter(|&&j| sim(j) + eps > min_pos).map(|&j| (i, j)));
        }
        assert_eq!(pair_set(pairs.a1(), pairs.p()), pos);
        assert_eq!(pair_set(pairs.a2(), pairs.n()), neg);
        assert!(!pos.is_empty() && !neg.is_empty());
    }

    #[test]
    fn one_class_or_distinct_classes_mine_nothing() {
        let x = Tensor::randn([8, 4], (Kind::Float, Device::Cpu));
        for labels in [
            Tensor::zeros([8], (Kind::Int64, Device::Cpu)),
            Tensor::arange(8, (Kind::Int64, Device::Cpu)),
        ] {
            let pairs = multi_similarity_miner(&x, &labels, 0.1).unwrap();
            assert_eq!((pairs.num_pos(), pairs.num_neg()), (0, 0));
            assert_eq!(pairs.a1().kind(), Kind::Int64);
        }
    }
}
