//! Normalized mutual information of two labelings, with the arithmetic-mean normalisation
//! (scikit-learn's `normalized_mutual_info_score` default):
//!
//! NMI(A, B) = I(A; B) / ((H(A) + H(B)) / 2), natural logarithms, where
//! I = sum_ij (n_ij / n) ln(n n_ij / (a_i b_j)) over the contingency counts n_ij with row
//! sums a_i and column sums b_j, and H(A) = -sum_i (a_i / n) ln(a_i / n).
//! Two labelings with one cluster each score 1 (nothing to split); otherwise I = 0 scores 0.

use crate::bail;
use crate::error::Result;
use crate::validate;
use std::collections::HashMap;
use tch::Tensor;

/// NMI of two equally long, non-empty labelings (see the module docs).
pub fn nmi(a: &[i64], b: &[i64]) -> Result<f64> {
    if a.len() != b.len() {
        bail!(
            Shape,
            "labels_a has {} entries but labels_b has {}; they must match",
            a.len(),
            b.len()
        );
    }
    if a.is_empty() {
        bail!(Value, "labels_a and labels_b are empty; NMI needs at least one sample");
    }
    let n = a.len() as f64;
    let (a_ids, a_counts) = dense_ids(a);
    let (b_ids, b_counts) = dense_ids(b);
    if a_counts.len() == 1 && b_counts.len() == 1 {
        return Ok(1.0);
    }
    let mut joint: HashMap<(usize, usize), usize> = HashMap::new();
    for (&i, &j) in a_ids.iter().zip(&b_ids) {
        *joint.entry((i, j)).or_default() += 1;
    }
    let mut cells: Vec<((usize, usize), usize)> = joint.into_iter().collect();
    // A fixed summation order makes the value reproducible.
    cells.sort_unstable();
    let mut mutual = 0.0;
    if a_counts.len() > 1 && b_counts.len() > 1 {
        for ((i, j), count) in cells {
            let c = count as f64;
            mutual +=
                c / n * (c.ln() + n.ln() - (a_counts[i] as f64).ln() - (b_counts[j] as f64).ln());
        }
    }
    let mutual = mutual.max(0.0);
    if mutual == 0.0 {
        return Ok(0.0);
    }
    let normaliser = (entropy(&a_counts, n) + entropy(&b_counts, n)) / 2.0;
    Ok(mutual / normaliser)
}

/// NMI of two label tensors (1-D integer, same length).
pub fn nmi_of_tensors(a: &Tensor, b: &Tensor) -> Result<f64> {
    let n = a.size().first().copied().unwrap_or(0).max(0) as usize;
    let a = validate::labels(a, n, "labels_a", "labels_a")?;
    let b = validate::labels(b, n, "labels_b", "labels_a")?;
    nmi(&a, &b)
}

/// Each label replaced by a dense id (in order of first appearance), and the count of each id.
fn dense_ids(labels: &[i64]) -> (Vec<usize>, Vec<usize>) {
    let mut ids: HashMap<i64, usize> = HashMap::new();
    let mut counts = Vec::new();
    let dense = labels
        .iter()
        .map(|label| {
            let id = *ids.entry(*label).or_insert_with(|| {
                counts.push(0);
                counts.len() - 1
            });
            counts[id] += 1;
            id
        })
        .collect();
    (dense, counts)
}

fn entropy(counts: &[usize], n: f64) -> f64 {
    if counts.len() == 1 {
        return 0.0;
    }
    -counts.iter().map(|&c| c as f64 / n * ((c as f64).ln() - n.ln())).sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_partitions_score_one_whatever_the_ids() {
        let a = [0, 0, 1, 1, 2, 2];
        let b = [7, 7, 3, 3, 9, 9];
        assert!((nmi(&a, &b).unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn hand_example() {
        // Cells (0,0) = 1, (0,1) = 1, (1,1) = 2; row sums 2, 2; column sums 1, 3.
        let a = [0, 0, 1, 1];
        let b = [0, 1, 1, 1];
        let n = 4.0f64;
        let mutual = (1.0 / n) * (4.0f64 / 2.0).ln()
            + (1.0 / n) * (4.0f64 / 6.0).ln()
            + (2.0 / n) * (8.0f64 / 6.0).ln();
        let h_a = 2.0f64.ln();
        let h_b = -(0.25f64 * 0.25f64.ln() + 0.75 * 0.75f64.ln());
        let expected = mutual / ((h_a + h_b) / 2.0);
        assert!((nmi(&a, &b).unwrap() - expected).abs() < 1e-12);
    }

    #[test]
    fn single_clusters_and_independence() {
        assert_eq!(nmi(&[1, 1, 1], &[4, 4, 4]).unwrap(), 1.0);
        assert_eq!(nmi(&[1, 1, 1, 1], &[0, 1, 0, 1]).unwrap(), 0.0);
        assert_eq!(nmi(&[0, 0, 1, 1], &[0, 1, 0, 1]).unwrap(), 0.0);
        assert!(nmi(&[], &[]).is_err());
        assert!(nmi(&[1], &[1, 2]).is_err());
    }
}
