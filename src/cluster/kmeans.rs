//! k-means (Lloyd's algorithm) with exact assignments, computed on the input's device.
//!
//! "Exact" means that every assignment is the centroid with the smallest squared distance
//! `sum_l (x_l - c_l)^2` evaluated in float64 (`exact_sq_dist`), ties going to the smaller
//! centroid index, and that the inertia is the float64 sum of those distances. Distances
//! are found by blocked GEMM keys `|c|^2 - 2 x.c` (never more than one block of rows x k at
//! a time); a point whose best key is not ahead of the runner-up by more than twice the
//! key's error bound is re-decided by exact distances (see `lloyd`). So, given the initial
//! centroids, a CPU result does not depend on the BLAS, the thread count or the block size.
//!
//! One iteration assigns every point, then moves each centroid to the mean of its points
//! (summed in float64). A cluster left empty is re-seeded with the point farthest from its
//! own centroid (farthest first, ties to the smaller point index; that point leaves its old
//! cluster), as scikit-learn does. The loop stops after `iters` iterations, when no label
//! changes, or when the total squared centroid shift is at most `tol` times the mean
//! per-feature variance of `x` (scikit-learn's `tol`); the returned labels are the
//! assignment to the returned centroids.

use super::init::{kmeans_plus_plus, random_points};
use super::lloyd::{DeviceEngine, Engine, HostEngine};
use crate::bail;
use crate::error::Result;
use crate::retrieval::knn::{host_rows, HostRows};
use crate::validate;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

/// How the first centroids are chosen.
pub enum Init {
    /// Greedy k-means++ (Arthur & Vassilvitskii, 2007; scikit-learn's default): each next
    /// centroid is the best of 2 + ln k candidates drawn by D^2 sampling. See `init`.
    KMeansPlusPlus,
    /// `k` distinct points drawn uniformly at random.
    Random,
    /// These `k x dim` centroids.
    Centroids(Tensor),
}

impl Init {
    /// `"k-means++"` or `"random"`.
    pub fn from_name(name: &str) -> Result<Init> {
        match name {
            "k-means++" => Ok(Init::KMeansPlusPlus),
            "random" => Ok(Init::Random),
            other => bail!(
                Config,
                "unknown k-means init {other:?}; expected \"k-means++\", \"random\" or a (k, dim) tensor of centroids"
            ),
        }
    }
}

/// Options of `kmeans`.
pub struct KMeansOptions {
    /// Number of clusters, 1 <= k <= number of points.
    pub k: usize,
    /// Maximum number of Lloyd iterations (0: assign to the initial centroids only).
    pub iters: usize,
    /// Seed of the initialisation; the same seed gives the same result.
    pub seed: u64,
    pub init: Init,
    /// Relative tolerance on the centroid shift (scikit-learn's `tol`); 0 stops only when
    /// no label changes or after `iters` iterations.
    pub tol: f64,
}

impl KMeansOptions {
    /// `k` clusters, 20 iterations, seed 0, k-means++, tol 0.
    pub fn new(k: usize) -> Self {
        KMeansOptions { k, iters: 20, seed: 0, init: Init::KMeansPlusPlus, tol: 0.0 }
    }
}

/// The result of `kmeans`, on the input's device.
pub struct KMeans {
    /// `k x dim` centroids (float64 for float64 input, float32 otherwise).
    pub centroids: Tensor,
    /// Cluster id of each point (int64), its exact nearest centroid.
    pub labels: Tensor,
    /// Sum of the exact squared distances of the points to their centroids.
    pub inertia: f64,
    /// Lloyd iterations run.
    pub iterations: usize,
}

/// k-means of the rows of `x` (see the module docs).
pub fn kmeans(x: &Tensor, options: &KMeansOptions) -> Result<KMeans> {
    kmeans_of(x, "x", options)
}

/// Pseudo labels (SLADE Sec 3.2, DESIGN.md §2.3): the k-means cluster ids (int64) of the
/// L2-normalised rows of `embeddings`, `f / max(|f|, 1e-12)`.
pub fn pseudo_label(embeddings: &Tensor, options: &KMeansOptions) -> Result<Tensor> {
    let _no_grad = tch::no_grad_guard();
    validate::embeddings(embeddings, "embeddings")?;
    let x = embeddings.f_to_kind(work_kind(embeddings.kind()))?;
    let norms = x.f_square()?.f_sum_dim_intlist(1, true, x.kind())?.f_sqrt()?;
    let unit = x.f_div(&norms.f_clamp_min(1e-12)?)?;
    Ok(kmeans_of(&unit, "embeddings", options)?.labels)
}

/// float64 stays float64; every other floating dtype is clustered in float32.
fn work_kind(kind: Kind) -> Kind {
    if kind == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

fn kmeans_of(x: &Tensor, name: &str, options: &KMeansOptions) -> Result<KMeans> {
    let _no_grad = tch::no_grad_guard();
    let (n, dim) = validate::embeddings(x, name)?;
    let k = options.k;
    if k == 0 {
        bail!(Value, "k must be at least 1");
    }
    if k > n {
        bail!(
            Value,
            "k={k} is larger than the number of points in {name} ({n}); k-means needs k <= N"
        );
    }
    if !(options.tol.is_finite() && options.tol >= 0.0) {
        bail!(Value, "tol must be a finite number >= 0, got {}", options.tol);
    }
    let kind = work_kind(x.kind());
    let x = x.f_to_kind(kind)?.f_contiguous()?;
    let given = match &options.init {
        Init::Centroids(c) => Some(given_centroids(c, &x, name, k, dim)?),
        _ => None,
    };
    if x.device() == Device::Cpu {
        match host_rows(&x)? {
            HostRows::F32(rows) => run(&HostEngine::new(rows)?, options, given),
            HostRows::F64(rows) => run(&HostEngine::new(rows)?, options, given),
        }
    } else {
        run(&DeviceEngine::new(x)?, options, given)
    }
}

/// Checks user-given initial centroids and returns them in the work dtype.
fn given_centroids(c: &Tensor, x: &Tensor, name: &str, k: usize, dim: usize) -> Result<Tensor> {
    let (rows, cols) = validate::embeddings(c, "init")?;
    if rows != k || cols != dim {
        bail!(Shape, "init has shape [{rows}, {cols}] but k={k} centroids of dim {dim} (the dim of {name}) are needed");
    }
    validate::same_device(c, "init", x, name)?;
    Ok(c.f_to_kind(x.kind())?.f_contiguous()?)
}

/// Initialisation and Lloyd iterations on one engine (host or device).
fn run<E: Engine>(engine: &E, options: &KMeansOptions, given: Option<Tensor>) -> Result<KMeans> {
    let k = options.k;
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut centroids = match (given, &options.init) {
        (Some(c), _) => c,
        (None, Init::Random) => engine.rows(&random_points(engine.len(), k, &mut rng))?,
        (None, _) => engine.rows(&kmeans_plus_plus(engine, k, &mut rng)?)?,
    };
    let tol = if options.tol > 0.0 { options.tol * engine.mean_variance()? } else { 0.0 };
    let mut previous: Option<E::Labels> = None;
    let mut settled: Option<E::Labels> = None;
    let mut iterations = 0;
    for _ in 0..options.iters {
        let labels = engine.assign(&centroids)?;
        if let Some(previous) = &previous {
            if engine.same_labels(previous, &labels)? {
                // The centroids are already the means of these labels.
                settled = Some(labels);
                break;
            }
        }
        let (updated, shift) = engine.update(&labels, &centroids)?;
        centroids = updated;
        previous = Some(labels);
        iterations += 1;
        if shift <= tol {
            break;
        }
    }
    let labels = match settled {
        Some(labels) => labels,
        None => engine.assign(&centroids)?,
    };
    let inertia = engine.inertia(&labels, &centroids)?;
    Ok(KMeans { labels: engine.labels_tensor(labels)?, centroids, inertia, iterations })
}

#[cfg(test)]
mod tests {
    use super::super::test_points as points;
    use super::*;

    /// The device engine runs on CPU tensors too: it must give the host engine's answer.
    #[test]
    fn device_engine_matches_host_engine() {
        for (n, dim, k, seed) in [(700, 12, 13, 1), (300, 3, 40, 2), (64, 7, 64, 3)] {
            let x = points(n, dim, seed);
            for init in ["k-means++", "random"] {
                let options = KMeansOptions {
                    init: Init::from_name(init).unwrap(),
                    seed: 5,
                    ..KMeansOptions::new(k)
                };
                let host = kmeans(&x, &options).unwrap();
                let device =
                    run(&DeviceEngine::new(x.shallow_clone()).unwrap(), &options, None).unwrap();
                assert!(host.labels.equal(&device.labels), "n {n} k {k} {init}");
                assert!(host.centroids.allclose(&device.centroids, 1e-6, 1e-6, false));
                assert!((host.inertia - device.inertia).abs() <= 1e-9 * host.inertia.max(1.0));
                assert_eq!(host.iterations, device.iterations);
            }
        }
    }

    /// Unstructured points: Lloyd runs every iteration, so the host engine's bounds skip
    /// most points in the later ones; the plain device engine must agree.
    #[test]
    fn bounded_host_iterations_match_plain_device_iterations() {
        tch::manual_seed(9);
        let x = Tensor::randn([3000, 6], (Kind::Float, Device::Cpu));
        let options = KMeansOptions { iters: 40, ..KMeansOptions::new(50) };
        let host = kmeans(&x, &options).unwrap();
        let device = run(&DeviceEngine::new(x.shallow_clone()).unwrap(), &options, None).unwrap();
        assert!(host.iterations > 20);
        assert_eq!(host.iterations, device.iterations);
        assert!(host.labels.equal(&device.labels));
        assert!(host.centroids.allclose(&device.centroids, 1e-6, 1e-6, false));
    }

    #[test]
    fn device_engine_reseeds_empty_clusters_like_the_host_engine() {
        let x = points(400, 5, 4);
        let repeated = x.narrow(0, 3, 1).repeat([3, 1]);
        let init = Tensor::cat(&[x.narrow(0, 0, 3), repeated], 0);
        let options = KMeansOptions {
            init: Init::Centroids(init.shallow_clone()),
            iters: 6,
            ..KMeansOptions::new(6)
        };
        let host = kmeans(&x, &options).unwrap();
        let device =
            run(&DeviceEngine::new(x.shallow_clone()).unwrap(), &options, Some(init)).unwrap();
        assert!(host.labels.equal(&device.labels));
        assert!(host.centroids.allclose(&device.centroids, 1e-6, 1e-6, false));
    }

    #[test]
    fn rejects_bad_k() {
        let x = points(10, 2, 5);
        assert!(kmeans(&x, &KMeansOptions::new(11)).is_err());
        assert!(kmeans(&x, &KMeansOptions::new(0)).is_err());
        assert!(kmeans(&x, &KMeansOptions::new(10)).is_ok());
    }
}
