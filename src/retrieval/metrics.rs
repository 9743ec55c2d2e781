//! Retrieval metrics as defined by Musgrave et al., "A Metric Learning Reality Check"
//! (DESIGN.md §2.5), equal to pytorch-metric-learning's `AccuracyCalculator(k="max_bin_count")`.
//!
//! For a query with label y, R = number of references labelled y (itself excluded when the
//! reference set is the query set), and hit(i) = 1 when its i-th neighbour is labelled y:
//! - P@1 = hit(1)
//! - R-Precision = (1/R) sum_{i<=R} hit(i)
//! - MAP@R = (1/R) sum_{i<=R} P(i) hit(i), with P(i) = (1/i) sum_{j<=i} hit(j)
//! - Recall@K = 1 if any hit(i), i <= K (the retrieval "recall" of the DML literature)
//!
//! Queries with R = 0 ("lone" queries) are excluded by default; otherwise they score 0.
//! Per-query values are averaged over queries, or over classes first with `avg_of_avgs`.
//!
//! With `nmi`, also the NMI of a k-means clustering of the query embeddings against the
//! query labels, as PML's AccuracyCalculator computes it: as many clusters as distinct query
//! labels, 20 Lloyd iterations (k-means++ seeding with seed 0 here, where PML runs faiss with
//! random seeding), every query included.

use crate::bail;
use crate::cluster::{self, KMeansOptions};
use crate::error::Result;
use crate::retrieval::knn::{check_inputs, neighbours, Engine, Neighbours, Wanted};
use crate::validate;
use rayon::prelude::*;
use std::collections::HashMap;
use tch::Tensor;

/// Options of `retrieval_metrics`.
#[derive(Clone, Debug)]
pub struct MetricOptions {
    /// Neighbours to retrieve; `None` retrieves exactly as many as the metrics need
    /// (max R and max K), which is PML's `k="max_bin_count"`.
    pub k: Option<usize>,
    pub recall_at: Vec<usize>,
    pub avg_of_avgs: bool,
    pub exclude_lone_queries: bool,
    pub engine: Engine,
    /// Also compute `nmi` (a k-means run on the queries; off by default).
    pub nmi: bool,
}

impl Default for MetricOptions {
    fn default() -> Self {
        MetricOptions {
            k: None,
            recall_at: vec![1, 2, 4, 8],
            avg_of_avgs: false,
            exclude_lone_queries: true,
            engine: Engine::Auto,
            nmi: false,
        }
    }
}

/// Metric name and value, in a fixed order: map_at_r, r_precision, precision_at_1,
/// recall_at_K..., then nmi when asked for.
pub type Metrics = Vec<(String, f64)>;

/// Computes the retrieval metrics of `query` against `reference` (or against itself).
pub fn retrieval_metrics(
    query: &Tensor,
    query_labels: &Tensor,
    reference: Option<(&Tensor, &Tensor)>,
    options: &MetricOptions,
) -> Result<Metrics> {
    let available = check_inputs(query, reference.map(|r| r.0))?;
    let nq = query.size()[0] as usize;
    let q_labels = validate::labels(query_labels, nq, "query_labels", "query")?;
    let r_labels = match reference {
        Some((r, labels)) => {
            validate::labels(labels, r.size()[0] as usize, "reference_labels", "reference")?
        }
        None => q_labels.clone(),
    };
    let self_search = reference.is_none();
    let relevant = relevant_counts(&q_labels, &r_labels, self_search);
    let max_r = relevant.iter().copied().max().unwrap_or(0);
    if max_r == 0 && options.exclude_lone_queries {
        if self_search {
            bail!(
                Value,
                "every label of query_labels occurs once, so no query has another sample of its \
                 class to retrieve: every query is lone and the metrics are undefined"
            );
        }
        bail!(
            Value,
            "no label of query_labels occurs in reference_labels, so every query is lone and \
             the metrics are undefined"
        );
    }
    let max_recall = options.recall_at.iter().copied().max().unwrap_or(0);
    if let Some(&bad) = options.recall_at.iter().find(|&&kk| kk == 0 || kk > available) {
        bail!(
            Value,
            "recall_at contains {bad}, but K must be between 1 and the {available} reference(s) a query can retrieve"
        );
    }
    let needed = max_r.max(max_recall).max(1);
    let k = match options.k {
        None => needed,
        Some(k) if k > available => bail!(
            Value,
            "k={k} is larger than the reference set: each query can retrieve {available} reference(s)"
        ),
        Some(k) if k < needed => bail!(
            Value,
            "k={k} is smaller than {needed}, the largest class size R (or largest recall K); MAP@R and R-Precision would be wrong. Pass k=None"
        ),
        Some(k) => k,
    };
    let wanted = Wanted::Relevance { query_labels: &q_labels, reference_labels: &r_labels };
    let nn = neighbours(query, reference.map(|r| r.0), k, options.engine, wanted)?;
    let mut metrics = summarise(&nn, &q_labels, &r_labels, &relevant, options);
    if options.nmi {
        metrics.push(("nmi".to_string(), clustering_nmi(query, &q_labels)?));
    }
    Ok(metrics)
}

/// NMI of k-means on the queries (k = number of distinct query labels) against the labels.
fn clustering_nmi(query: &Tensor, q_labels: &[i64]) -> Result<f64> {
    let classes = q_labels.iter().collect::<std::collections::HashSet<_>>().len();
    let clusters = cluster::kmeans(query, &KMeansOptions::new(classes))?.labels;
    let n = q_labels.len();
    let mut assigned = vec![0i64; n];
    clusters.f_to_device(tch::Device::Cpu)?.f_copy_data(&mut assigned, n)?;
    cluster::nmi(q_labels, &assigned)
}

/// R for every query: references sharing its label, itself excluded in self-retrieval.
fn relevant_counts(q_labels: &[i64], r_labels: &[i64], self_search: bool) -> Vec<usize> {
    let mut counts: HashMap<i64, usize> = HashMap::new();
    for &label in r_labels {
        *counts.entry(label).or_default() += 1;
    }
    q_labels
        .iter()
        .map(|label| counts.get(label).copied().unwrap_or(0) - usize::from(self_search))
        .collect()
}

/// Per-query scores: [MAP@R, R-Precision, P@1, Recall@K for each K].
fn query_scores(hits: &[bool], r: usize, recall_at: &[usize]) -> Vec<f64> {
    let mut found = 0usize;
    let mut average_precision = 0.0;
    for (i, &hit) in hits.iter().take(r).enumerate() {
        if hit {
            found += 1;
            average_precision += found as f64 / (i + 1) as f64;
        }
    }
    let mut scores =
        vec![average_precision / r as f64, found as f64 / r as f64, f64::from(u8::from(hits[0]))];
    scores.extend(recall_at.iter().map(|&kk| f64::from(u8::from(hits[..kk].iter().any(|&h| h)))));
    scores
}

fn summarise(
    nn: &Neighbours,
    q_labels: &[i64],
    r_labels: &[i64],
    relevant: &[usize],
    options: &MetricOptions,
) -> Metrics {
    let n_metrics = 3 + options.recall_at.len();
    let per_query: Vec<Option<Vec<f64>>> = (0..nn.rows)
        .into_par_iter()
        .map(|i| {
            let r = relevant[i];
            if r == 0 {
                return (!options.exclude_lone_queries).then(|| vec![0.0; n_metrics]);
            }
            let hits: Vec<bool> =
                nn.row_indices(i).iter().map(|&j| r_labels[j as usize] == q_labels[i]).collect();
            Some(query_scores(&hits, r, &options.recall_at))
        })
        .collect();

    let mut names = vec!["map_at_r".to_string(), "r_precision".into(), "precision_at_1".into()];
    names.extend(options.recall_at.iter().map(|kk| format!("recall_at_{kk}")));
    let values = if options.avg_of_avgs {
        let mut by_class: HashMap<i64, (Vec<f64>, usize)> = HashMap::new();
        for (scores, &label) in per_query.iter().zip(q_labels) {
            if let Some(scores) = scores {
                let entry = by_class.entry(label).or_insert_with(|| (vec![0.0; n_metrics], 0));
                entry.0.iter_mut().zip(scores).for_each(|(s, v)| *s += v);
                entry.1 += 1;
            }
        }
        let classes = by_class.len() as f64;
        let mut totals = vec![0.0; n_metrics];
        for (sums, count) in by_class.values() {
            totals.iter_mut().zip(sums).for_each(|(t, s)| *t += s / *count as f64);
        }
        totals.into_iter().map(|t| t / classes).collect::<Vec<f64>>()
    } else {
        let mut totals = vec![0.0; n_metrics];
        let mut count = 0usize;
        for scores in per_query.iter().flatten() {
            totals.iter_mut().zip(scores).for_each(|(t, v)| *t += v);
            count += 1;
        }
        totals.into_iter().map(|t| t / count as f64).collect()
    };
    names.into_iter().zip(values).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retrieval::knn::{neighbours, Wanted};
    use tch::{Device, Kind};

    #[test]
    fn map_at_r_of_a_hand_example() {
        // R = 3, hits at ranks 1 and 3: MAP@R = (1/1 + 2/3) / 3, RP = 2/3.
        let scores = query_scores(&[true, false, true, true], 3, &[1, 2]);
        assert!((scores[0] - (1.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        assert!((scores[1] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(&scores[2..], &[1.0, 1.0, 1.0]);
    }

    #[test]
    fn perfect_clusters_score_one() {
        let labels = Tensor::from_slice(&[0i64, 0, 0, 1, 1, 1, 2]);
        let centres = Tensor::from_slice(&[0.0f32, 0.0, 10.0, 0.0, -10.0, 5.0]).reshape([3, 2]);
        let x = centres.index_select(0, &labels)
            + Tensor::randn([7, 2], (Kind::Float, Device::Cpu)) * 0.01;
        let m = retrieval_metrics(
            &x,
            &labels,
            None,
            &MetricOptions { recall_at: vec![1], ..Default::default() },
        )
        .unwrap();
        for (name, value) in m {
            assert!((value - 1.0).abs() < 1e-12, "{name} = {value}");
        }
    }

    #[test]
    fn relevance_order_gives_the_hits_of_the_exact_order() {
        // Many near-equal distances (points on a coarse grid plus float32 noise below the key
        // error), so runs of candidates that only the exact distance orders are common.
        tch::manual_seed(3);
        let grid = (Tensor::randn([3000, 16], (Kind::Double, Device::Cpu)) * 2.0).round() / 2.0;
        let x = (grid + Tensor::randn([3000, 16], (Kind::Double, Device::Cpu)) * 1e-7)
            .to_kind(Kind::Float);
        let labels = Tensor::randint(4, [3000], (Kind::Int64, Device::Cpu));
        let label_vec: Vec<i64> = Vec::try_from(&labels).unwrap();
        let wanted = Wanted::Relevance { query_labels: &label_vec, reference_labels: &label_vec };
        let fast = neighbours(&x, None, 40, Engine::Gemm, wanted).unwrap();
        let exact = neighbours(&x, None, 40, Engine::Gemm, Wanted::Order).unwrap();
        let mut reordered = 0;
        for i in 0..3000 {
            let hits = |nn: &Neighbours| -> Vec<bool> {
                nn.row_indices(i).iter().map(|&j| label_vec[j as usize] == label_vec[i]).collect()
            };
            assert_eq!(hits(&fast), hits(&exact), "row {i}");
            reordered += usize::from(fast.row_indices(i) != exact.row_indices(i));
        }
        assert!(reordered > 0, "the data should contain runs ordered only by relevance");
    }

    #[test]
    fn all_lone_is_an_error() {
        let x = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, 1, 2, 3]);
        let err = retrieval_metrics(&x, &labels, None, &MetricOptions::default()).unwrap_err();
        assert!(err.to_string().contains("lone"));
    }
}
