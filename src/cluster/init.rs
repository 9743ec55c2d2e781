//! k-means++ seeding, in scikit-learn's greedy form (Arthur & Vassilvitskii, "k-means++:
//! the advantages of careful seeding", 2007, Sec 6): the first centroid is a uniformly random
//! point; at each next step `L = 2 + floor(ln k)` candidates are drawn independently with
//! probability D(x)^2 / sum_y D(y)^2 (D(x): distance from x to the nearest centroid so far,
//! "D^2 sampling"), and the candidate that leaves the smallest potential sum_x D(x)^2 is
//! kept. When every point coincides with a centroid (fewer distinct points than k), the next
//! one is drawn uniformly.
//!
//! The textbook loop makes a pass over all N points per step (the candidates' distances to
//! every point): k thin matrix products bound by memory bandwidth. Here the distances come
//! in large GEMMs instead, with the same sampling distribution:
//! - A pool of P points is drawn by D^2 sampling from the distances at that time
//!   (`at_draw`), and the P x N matrix of their squared distances to all points is computed
//!   by one GEMM.
//! - A step walks through the pool in draw order and accepts entry x with probability
//!   D(x)^2 / at_draw(x) (D only shrinks, so this is at most 1). Accepted entries are
//!   independent draws distributed exactly as D(x)^2 / sum_y D(y)^2 (rejection sampling), and
//!   their distance rows are already in the pool matrix, so scoring the L candidates and
//!   updating D costs O(L N).
//! - When the pool runs out, a new one is drawn from the current D (a step's candidates
//!   drawn from the old pool are discarded and drawn afresh).
//!
//! Pool distances are GEMM keys `|x|^2 + |p|^2 - 2 x.p`; those within the key error bound of
//! 0 are recomputed exactly (`Engine::distances_from`), so a point that coincides with a
//! centroid has D = 0 exactly and is never drawn again. The draws depend on the keys' float32
//! rounding, which differs between GEMMs (the fused kernel, MKL's kernels for different
//! CPUs): where a draw falls within that rounding of a boundary, another valid draw follows.
//! The pools' memory is reused from pool to pool.

use super::lloyd::Engine;
use crate::error::Result;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Largest pool.
const MAX_POOL: usize = 256;
/// Elements of the pool's distance matrix (pool x N) held at once.
const POOL_ELEMENTS: usize = 1 << 24;

/// `k` distinct point ids drawn uniformly at random.
pub(super) fn random_points(n: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    rand::seq::index::sample(rng, n, k).into_vec()
}

/// Candidates per step: scikit-learn's `2 + int(ln k)`.
pub(super) fn local_trials(k: usize) -> usize {
    2 + (k as f64).ln() as usize
}

/// Points drawn by D^2 sampling and their squared distances to every point.
struct Pool {
    ids: Vec<usize>,
    /// D(x)^2 of each entry when it was drawn.
    at_draw: Vec<f64>,
    /// `len x N` squared distances, row-major.
    distances: Vec<f32>,
    next: usize,
}

impl Pool {
    fn row(&self, entry: usize) -> &[f32] {
        let n = self.distances.len() / self.ids.len();
        &self.distances[entry * n..(entry + 1) * n]
    }
}

/// The point ids of greedy k-means++ seeding, in the order chosen (see the module docs).
pub(super) fn kmeans_plus_plus<E: Engine>(
    engine: &E,
    k: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<usize>> {
    let n = engine.len();
    let trials = local_trials(k);
    let pool_size = (POOL_ELEMENTS / n).clamp(trials, MAX_POOL);
    let first = rng.gen_range(0..n);
    let mut chosen = vec![first];
    let mut first_row = Vec::new();
    engine.distances_from(&[first], &mut first_row)?;
    let mut nearest: Vec<f64> = first_row.into_iter().map(f64::from).collect();
    let mut total: f64 = nearest.iter().sum();
    let mut pool: Option<Pool> = None;
    while chosen.len() < k {
        if total <= 0.0 {
            // Every point coincides with a centroid: D stays 0 whatever is added.
            chosen.push(rng.gen_range(0..n));
            continue;
        }
        let mut candidates: Vec<usize> = Vec::with_capacity(trials);
        while candidates.len() < trials {
            if pool.as_ref().is_none_or(|p| p.next == p.ids.len()) {
                let memory = pool.take().map(|p| p.distances).unwrap_or_default();
                pool = Some(draw_pool(engine, &nearest, pool_size, memory, rng)?);
                candidates.clear();
            }
            let p = pool.as_mut().expect("a pool was just drawn");
            let entry = p.next;
            p.next += 1;
            if rng.gen::<f64>() * p.at_draw[entry] < nearest[p.ids[entry]] {
                candidates.push(entry);
            }
        }
        let p = pool.as_ref().expect("candidates come from a pool");
        let rows: Vec<&[f32]> = candidates.iter().map(|&entry| p.row(entry)).collect();
        let potentials = potentials(&nearest, &rows);
        let best = (0..potentials.len())
            .min_by(|&a, &b| potentials[a].total_cmp(&potentials[b]).then(a.cmp(&b)))
            .unwrap_or(0);
        chosen.push(p.ids[candidates[best]]);
        nearest.par_iter_mut().zip(rows[best]).for_each(|(d, &e)| {
            *d = d.min(f64::from(e));
        });
        total = potentials[best];
    }
    Ok(chosen)
}

/// The potential `sum_x min(nearest(x), row(x))` of each candidate's distance row, each
/// summed in point order. The rows are split among the workers, and each worker sums its
/// rows in one pass with one accumulator per row in registers: a lone sum waits for each
/// addition's result, several interleaved do not.
fn potentials(nearest: &[f64], rows: &[&[f32]]) -> Vec<f64> {
    let per_worker = rows.len().div_ceil(rayon::current_num_threads()).clamp(1, 4);
    rows.par_chunks(per_worker)
        .flat_map_iter(|rows| match rows {
            [a] => interleaved_sums(nearest, [*a]).to_vec(),
            [a, b] => interleaved_sums(nearest, [*a, *b]).to_vec(),
            [a, b, c] => interleaved_sums(nearest, [*a, *b, *c]).to_vec(),
            [a, b, c, d] => interleaved_sums(nearest, [*a, *b, *c, *d]).to_vec(),
            _ => unreachable!("groups of 1 to 4 rows"),
        })
        .collect()
}

/// `potentials` of `C` rows in one pass.
fn interleaved_sums<const C: usize>(nearest: &[f64], rows: [&[f32]; C]) -> [f64; C] {
    let rows = rows.map(|row| &row[..nearest.len()]);
    let mut sums = [0.0f64; C];
    for (x, &d) in nearest.iter().enumerate() {
        for (sum, row) in sums.iter_mut().zip(&rows) {
            *sum += d.min(f64::from(row[x]));
        }
    }
    sums
}

/// Draws `size` points with probability proportional to `nearest` and computes their
/// distances to every point (into `memory`, the last pool's).
fn draw_pool<E: Engine>(
    engine: &E,
    nearest: &[f64],
    size: usize,
    mut memory: Vec<f32>,
    rng: &mut ChaCha8Rng,
) -> Result<Pool> {
    let mut running = 0.0;
    let cumulative: Vec<f64> = nearest
        .iter()
        .map(|&d| {
            running += d;
            running
        })
        .collect();
    let total = running;
    let last_with_mass = nearest.iter().rposition(|&d| d > 0.0).unwrap_or(0);
    let ids: Vec<usize> = (0..size)
        .map(|_| {
            let target = rng.gen::<f64>() * total;
            cumulative.partition_point(|&c| c <= target).min(last_with_mass)
        })
        .collect();
    let at_draw = ids.iter().map(|&i| nearest[i]).collect();
    engine.distances_from(&ids, &mut memory)?;
    Ok(Pool { distances: memory, ids, at_draw, next: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The interleaved potentials equal plain sums in point order, bit for bit, for every
    /// number of candidates (the groups of 1 to 4 rows each worker takes).
    #[test]
    fn potentials_are_the_sums_in_point_order() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let n = 1001;
        let nearest: Vec<f64> = (0..n).map(|_| rng.gen::<f64>()).collect();
        let rows: Vec<Vec<f32>> =
            (0..9).map(|_| (0..n).map(|_| rng.gen::<f32>() * 1.2).collect()).collect();
        for count in 1..=rows.len() {
            let rows: Vec<&[f32]> = rows[..count].iter().map(Vec::as_slice).collect();
            let want: Vec<f64> = rows
                .iter()
                .map(|row| {
                    let mut sum = 0.0;
                    for (&d, &e) in nearest.iter().zip(row.iter()) {
                        sum += d.min(f64::from(e));
                    }
                    sum
                })
                .collect();
            let got = potentials(&nearest, &rows);
            let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want), "{count} candidates");
        }
    }
}
