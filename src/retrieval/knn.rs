//! Exact k-nearest-neighbour search under the Euclidean distance.
//!
//! "Exact" means: the neighbours of a query are the `k` references with the smallest squared
//! distance `sum_l (q_l - r_l)^2` evaluated in float64 (`exact_sq_dist`), ties broken by the
//! smaller reference index (the tie rule). When the reference set is the query set, a query
//! never retrieves itself (duplicates of it are retrieved like any other point).
//!
//! Every engine produces that same answer:
//! - `Gemm` (CPU): blocked float32 GEMM `Q R^T`, never the full N x N matrix; each block is
//!   scanned into bounded candidate lists by the rayon worker that computed it. When query =
//!   reference only the tiles on and above the diagonal are computed and each serves its
//!   rows and its columns.
//! - `Torch`: the same candidates from GEMM + `topk` on the tensors' device (the CUDA path).
//! - `KdTree` (CPU, low dimension): candidates from the `kdtree` crate in float64.
//!
//! GEMM candidates carry the float32 key `|r|^2 - 2 q.r`. With `u = 2^-24` and `R = max|r|`,
//! the dot product of any summation order is off by at most `g |q| R`, `g = gamma_{D+2} =
//! (D+2) u / (1 - (D+2) u)` (the `+2`: float64 inputs rounded to float32; plus `2^-10` for
//! TF32 inputs on a device), the norm by `u R^2` and the subtraction by `u (R^2 + 2 |q| R)`, so
//! the key is off by at most `e = 1.1 (2 (g + u) |q| R + 2 u R^2)` (10% for the higher-order terms).
//! `resolve` then orders the `c > k` candidates of a query: where consecutive keys differ by
//! more than `2e` their order is certain; runs of closer keys are re-ranked by the exact
//! distance. The top k is certified when the k-th distance is below the smallest distance a
//! rejected reference can have; queries that fail (exact ties at the boundary, such as
//! duplicated points) are searched by brute force in float64.

use crate::bail;
use crate::error::{Result, SladeError};
use crate::retrieval::fused_tile::{self, Operands};
use crate::retrieval::tile_gemm::TileGemm;
use crate::retrieval::topk::{scan_tile, Block, CandidateLists, RowList};
use crate::validate;
use multiversion::multiversion;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::ops::Range;
use std::str::FromStr;
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// Embedding dimension at or below which `Engine::Auto` uses the k-d tree on CPU
/// (measured by `bench/knn_crossover.py`; see bench/README.md).
pub const KDTREE_MAX_DIM: usize = 5;

/// Points per k-d tree leaf.
const KDTREE_LEAF_SIZE: usize = 32;

/// Rows per GEMM tile (both sides).
const BLOCK: usize = 1024;

/// Rows per GEMM block on a device (both sides).
const DEVICE_BLOCK: usize = 2048;

/// Which k-NN implementation to run. All return identical results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// `KdTree` on CPU for dim <= `KDTREE_MAX_DIM`, `Gemm` on CPU otherwise, `Torch` on CUDA.
    Auto,
    Gemm,
    KdTree,
    Torch,
}

impl FromStr for Engine {
    type Err = SladeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Engine::Auto),
            "gemm" => Ok(Engine::Gemm),
            "kdtree" => Ok(Engine::KdTree),
            "torch" => Ok(Engine::Torch),
            other => bail!(
                Config,
                "unknown k-NN engine {other:?}; expected one of \"auto\", \"gemm\", \"kdtree\", \"torch\""
            ),
        }
    }
}

/// The k nearest references of every query, row-major (`rows x k`), nearest first.
#[derive(Clone, Debug, PartialEq)]
pub struct Neighbours {
    pub rows: usize,
    pub k: usize,
    /// Queries whose candidates could not be certified and were searched by brute force.
    pub brute_force_rows: usize,
    /// Reference ids (u32: at most 2^32 references; half the memory of int64 at large k).
    pub indices: Vec<u32>,
    /// Exact squared distances, when asked for (empty otherwise).
    pub sq_distances: Vec<f64>,
}

impl Neighbours {
    pub fn row_indices(&self, row: usize) -> &[u32] {
        &self.indices[row * self.k..(row + 1) * self.k]
    }

    pub fn row_sq_distances(&self, row: usize) -> &[f64] {
        &self.sq_distances[row * self.k..(row + 1) * self.k]
    }

    /// (Euclidean distances as float32, indices as int64), each `rows x k`, on `device`.
    pub fn to_tensors(&self, device: Device) -> Result<(Tensor, Tensor)> {
        if self.sq_distances.len() != self.indices.len() {
            bail!(Internal, "neighbours were computed without distances");
        }
        let shape = [self.rows as i64, self.k as i64];
        let dist: Vec<f32> = self.sq_distances.iter().map(|d| d.sqrt() as f32).collect();
        let dist = Tensor::f_from_slice(&dist)?.f_reshape(shape)?.f_to_device(device)?;
        let idx: Vec<i64> = self.indices.iter().map(|&j| i64::from(j)).collect();
        let idx = Tensor::f_from_slice(&idx)?.f_reshape(shape)?.f_to_device(device)?;
        Ok((dist, idx))
    }
}

/// Validates the inputs and returns the number of references a query can retrieve.
pub fn check_inputs(query: &Tensor, reference: Option<&Tensor>) -> Result<usize> {
    let (nq, _) = validate::embeddings(query, "query")?;
    match reference {
        None => Ok(nq - 1),
        Some(r) => {
            let (nr, _) = validate::embeddings(r, "reference")?;
            validate::same_device(query, "query", r, "reference")?;
            validate::same_dim(query, "query", r, "reference")?;
            Ok(nr)
        }
    }
}

/// What a caller needs of each query's `k` neighbours.
#[derive(Clone, Copy)]
pub enum Wanted<'a> {
    /// The exact order (the tie rule) and the exact squared distances.
    Distances,
    /// The exact order, no distances.
    Order,
    /// What retrieval metrics read: which of the neighbours, in order, are relevant
    /// (`reference_labels[j] == query_labels[i]`). Neighbours of equal relevance whose keys
    /// are too close to order by the key may come in either order (the sequence of relevant
    /// and irrelevant neighbours is the exact one), which spares their exact distances.
    Relevance { query_labels: &'a [i64], reference_labels: &'a [i64] },
}

impl Wanted<'_> {
    fn distances(&self) -> bool {
        matches!(self, Wanted::Distances)
    }

    /// Whether the references `ids` are equally relevant to query `i`, so that their order
    /// does not matter.
    fn equally_relevant(&self, i: usize, ids: impl Iterator<Item = u32>) -> bool {
        match *self {
            Wanted::Relevance { query_labels, reference_labels } => {
                let mut relevance = ids.map(|j| reference_labels[j as usize] == query_labels[i]);
                let first = relevance.next();
                relevance.all(|r| Some(r) == first)
            }
            _ => false,
        }
    }
}

/// The `k` exact nearest references of each query row (see the module docs), with what
/// `wanted` asks for. `reference = None` searches the query set itself, excluding each
/// query from its own list.
pub fn neighbours(
    query: &Tensor,
    reference: Option<&Tensor>,
    k: usize,
    engine: Engine,
    wanted: Wanted<'_>,
) -> Result<Neighbours> {
    search(query, reference, k, engine, wanted, None)
}

/// `neighbours`, with the GEMM engine's tile kernel fixed (`None`: the faster one here).
fn search(
    query: &Tensor,
    reference: Option<&Tensor>,
    k: usize,
    engine: Engine,
    wanted: Wanted<'_>,
    tile_gemm: Option<TileGemm>,
) -> Result<Neighbours> {
    let available = check_inputs(query, reference)?;
    // Neighbours are read from values: no engine records gradients (the GEMM engine writes
    // into preallocated blocks, which autograd refuses for inputs that require grad).
    let _no_grad = tch::no_grad_guard();
    if k == 0 {
        bail!(Value, "k must be at least 1");
    }
    if k > available {
        bail!(
            Value,
            "k={k} is larger than the reference set: each query can retrieve {available} reference(s){}",
            if reference.is_none() { " (itself excluded)" } else { "" }
        );
    }
    let dim = query.size()[1] as usize;
    let engine = match engine {
        Engine::Auto if query.device().is_cuda() => Engine::Torch,
        Engine::Auto if dim <= KDTREE_MAX_DIM => Engine::KdTree,
        Engine::Auto => Engine::Gemm,
        e => e,
    };
    let task = Task { engine, query, reference, k, wanted, tile_gemm };
    let q = host_rows(query)?;
    let r = reference.map(host_rows).transpose()?;
    match (&q, &r) {
        (HostRows::F32(q), None) => task.run(q, None),
        (HostRows::F32(q), Some(HostRows::F32(r))) => task.run(q, Some(r)),
        (HostRows::F64(q), None) => task.run(q, None),
        (HostRows::F64(q), Some(HostRows::F64(r))) => task.run(q, Some(r)),
        (HostRows::F32(q), Some(HostRows::F64(r))) => task.run(&q.to_f64(), Some(r)),
        (HostRows::F64(q), Some(HostRows::F32(r))) => task.run(q, Some(&r.to_f64())),
    }
}

/// Public form of `neighbours`: (Euclidean distances, indices) on the query's device.
pub fn knn(
    query: &Tensor,
    reference: Option<&Tensor>,
    k: usize,
    engine: Engine,
) -> Result<(Tensor, Tensor)> {
    neighbours(query, reference, k, engine, Wanted::Distances)?.to_tensors(query.device())
}

// ---------------------------------------------------------------------------------------
// Host-side row access

/// A contiguous CPU copy (or view) of an embedding matrix, in its own precision.
pub(crate) struct Rows<T> {
    tensor: Tensor,
    data: *const T,
    pub n: usize,
    pub dim: usize,
}

// Rows only ever reads the buffer of a tensor it owns and never mutates it, so sharing
// that read-only view between rayon workers is sound.
unsafe impl<T: Sync> Sync for Rows<T> {}

pub(crate) enum HostRows {
    F32(Rows<f32>),
    F64(Rows<f64>),
}

pub(crate) fn host_rows(x: &Tensor) -> Result<HostRows> {
    let size = x.size();
    let (n, dim) = (size[0] as usize, size[1] as usize);
    let cpu = x.f_to_device(Device::Cpu)?;
    Ok(match cpu.kind() {
        Kind::Double => HostRows::F64(Rows::new(cpu.f_contiguous()?, n, dim)),
        _ => HostRows::F32(Rows::new(cpu.f_to_kind(Kind::Float)?.f_contiguous()?, n, dim)),
    })
}

pub(crate) trait Element: Copy + Send + Sync + Into<f64> + tch::kind::Element {}
impl Element for f32 {}
impl Element for f64 {}

impl<T: Element> Rows<T> {
    pub(crate) fn new(tensor: Tensor, n: usize, dim: usize) -> Self {
        let data = tensor.data_ptr() as *const T;
        Rows { tensor, data, n, dim }
    }

    pub fn data(&self) -> &[T] {
        // The tensor is contiguous, of kind T, on the CPU and owned by self.
        unsafe { std::slice::from_raw_parts(self.data, self.n * self.dim) }
    }

    pub fn row(&self, i: usize) -> &[T] {
        &self.data()[i * self.dim..(i + 1) * self.dim]
    }

    /// The contiguous CPU tensor the rows are read from.
    pub(crate) fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    fn float32(&self) -> Result<Tensor> {
        Ok(self.tensor.f_to_kind(Kind::Float)?.f_contiguous()?)
    }

    fn to_f64(&self) -> Rows<f64> {
        Rows::new(self.tensor.to_kind(Kind::Double).contiguous(), self.n, self.dim)
    }

    pub(crate) fn sq_norms(&self) -> Vec<f64> {
        (0..self.n)
            .into_par_iter()
            .map(|i| self.row(i).iter().map(|&v| v.into() * v.into()).sum())
            .collect()
    }
}

/// The exact squared distance: float64 differences accumulated in float64, in a fixed
/// order (eight interleaved partial sums, then summed pairwise), so every engine computes
/// bit-identical values and the compiler can vectorise it.
/// Compiled for AVX-512 and AVX2 as well (runtime dispatch): the same operations in the
/// same order, so the value does not depend on the CPU.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma+bmi1+bmi2+lzcnt+popcnt",
    "x86_64+avx2+fma+bmi1+bmi2+lzcnt+popcnt"
))]
pub(crate) fn exact_sq_dist<T: Element>(a: &[T], b: &[T]) -> f64 {
    const LANES: usize = 8;
    let mut acc = [0.0f64; LANES];
    let mut a_chunks = a.chunks_exact(LANES);
    let mut b_chunks = b.chunks_exact(LANES);
    for (ca, cb) in (&mut a_chunks).zip(&mut b_chunks) {
        for l in 0..LANES {
            let d = ca[l].into() - cb[l].into();
            acc[l] += d * d;
        }
    }
    for (l, (&x, &y)) in a_chunks.remainder().iter().zip(b_chunks.remainder()).enumerate() {
        let d = x.into() - y.into();
        acc[l] += d * d;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// Sorts (squared distance, index) pairs by the tie rule: distance, then index.
fn sort_by_tie_rule(pairs: &mut [(f64, u32)]) {
    pairs.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
}

// ---------------------------------------------------------------------------------------
// Search

/// One query's answer: reference ids nearest first, their exact squared distances when
/// asked for, and whether the candidates were certified to hold the exact top k.
struct RowAnswer {
    ids: Vec<u32>,
    sq: Vec<f64>,
    certified: bool,
}

struct Task<'a> {
    engine: Engine,
    query: &'a Tensor,
    reference: Option<&'a Tensor>,
    k: usize,
    wanted: Wanted<'a>,
    tile_gemm: Option<TileGemm>,
}

/// What the per-query work needs to know (shared by the rayon workers).
#[derive(Clone, Copy)]
struct Ordering<'a> {
    k: usize,
    wanted: Wanted<'a>,
}

impl Task<'_> {
    /// Runs the engine on host rows `q` and `r` (and, for `Torch`, on the original tensors'
    /// device), then brute-forces the queries it could not certify.
    fn run<T: Element>(&self, q: &Rows<T>, r: Option<&Rows<T>>) -> Result<Neighbours> {
        let refs = r.unwrap_or(q);
        let self_search = r.is_none();
        let available = refs.n - usize::from(self_search);
        let c = candidate_count(self.k, available);
        let ordering = Ordering { k: self.k, wanted: self.wanted };
        match self.engine {
            Engine::KdTree => self.collect(
                q,
                refs,
                self_search,
                kdtree_resolver(q, refs, self_search, self.k, c)?,
            ),
            Engine::Torch => {
                let lists = device_candidates(self.query, self.reference, c)?;
                // TF32 input rounding, should the caller enable it: 2 x 2^-11 per product.
                let dot_error = gemm_dot_error(q.dim) + f64::powi(2.0, -10);
                self.collect(q, refs, self_search, ordering.resolver(q, r, &lists, dot_error))
            }
            _ => {
                let lists = gemm_candidates(q, r, c, self.tile_gemm)?;
                let dot_error = gemm_dot_error(q.dim);
                self.collect(q, refs, self_search, ordering.resolver(q, r, &lists, dot_error))
            }
        }
    }

    /// The answers of `answer(i)` for every query, written straight into the output by the
    /// rayon workers; a query whose answer is not certified is searched by brute force.
    fn collect<T: Element>(
        &self,
        q: &Rows<T>,
        refs: &Rows<T>,
        self_search: bool,
        answer: impl Fn(usize) -> Result<RowAnswer> + Sync,
    ) -> Result<Neighbours> {
        let (k, with_distances) = (self.k, self.wanted.distances());
        let fill = |i: usize, ids: &mut [u32], sq: Option<&mut [f64]>| -> Result<bool> {
            let mut found = answer(i)?;
            let certified = found.certified;
            if !certified {
                let best = brute_force_row(q.row(i), refs, self_search.then_some(i), k);
                found.ids = best.iter().map(|p| p.1).collect();
                found.sq = best.iter().map(|p| p.0).collect();
            }
            ids.copy_from_slice(&found.ids);
            if let Some(sq) = sq {
                sq.copy_from_slice(&found.sq);
            }
            Ok(certified)
        };
        let mut indices = vec![0u32; q.n * k];
        let mut sq_distances = vec![0f64; if with_distances { q.n * k } else { 0 }];
        let certified: Vec<bool> = if with_distances {
            let rows = indices.par_chunks_mut(k).zip(sq_distances.par_chunks_mut(k));
            rows.enumerate().map(|(i, (ids, sq))| fill(i, ids, Some(sq))).collect::<Result<_>>()?
        } else {
            let rows = indices.par_chunks_mut(k);
            rows.enumerate().map(|(i, ids)| fill(i, ids, None)).collect::<Result<_>>()?
        };
        let brute_force_rows = certified.iter().filter(|&&c| !c).count();
        Ok(Neighbours { rows: q.n, k, brute_force_rows, indices, sq_distances })
    }
}

impl Ordering<'_> {
    /// Query `i`'s answer from its candidates in `lists` (`resolve`).
    fn resolver<'a, T: Element>(
        &'a self,
        q: &'a Rows<T>,
        r: Option<&'a Rows<T>>,
        lists: &'a CandidateLists,
        dot_error: f64,
    ) -> impl Fn(usize) -> Result<RowAnswer> + Sync + 'a {
        let refs = r.unwrap_or(q);
        let self_search = r.is_none();
        let available = refs.n - usize::from(self_search);
        let q_norms = q.sq_norms();
        let r_norms = if self_search { q_norms.clone() } else { refs.sq_norms() };
        let r_max = r_norms.iter().cloned().fold(0.0f64, f64::max).sqrt();
        move |i| {
            let error = key_error(dot_error, q_norms[i].sqrt(), r_max);
            let candidates = lists.sorted_row(i);
            let exhaustive = candidates.len() >= available;
            Ok(self.resolve(i, q.row(i), refs, q_norms[i], &candidates, error, exhaustive))
        }
    }

    /// Orders one query's candidates (sorted by approximate key) exactly and certifies them.
    /// Keys of consecutive candidates more than `2 error` apart are in certain order; each
    /// run of closer keys is re-ranked by the exact distance (unless `wanted` does not need
    /// its order). `exhaustive` says that the candidates are all the references.
    #[allow(clippy::too_many_arguments)]
    fn resolve<T: Element>(
        &self,
        i: usize,
        qi: &[T],
        refs: &Rows<T>,
        q_norm: f64,
        candidates: &[(f32, u32)],
        error: f64,
        exhaustive: bool,
    ) -> RowAnswer {
        let k = self.k;
        // (id, approximate key, exact squared distance if computed)
        let mut ordered: Vec<(u32, f64, Option<f64>)> = Vec::with_capacity(k + 8);
        let mut start = 0;
        while start < candidates.len() && ordered.len() < k {
            let mut end = start + 1;
            while end < candidates.len()
                && f64::from(candidates[end].0) - f64::from(candidates[end - 1].0) <= 2.0 * error
            {
                end += 1;
            }
            let run = &candidates[start..end];
            if run.len() == 1 || self.wanted.equally_relevant(i, run.iter().map(|p| p.1)) {
                ordered.extend(run.iter().map(|&(key, id)| (id, f64::from(key), None)));
            } else {
                let mut run: Vec<(f64, u32)> = candidates[start..end]
                    .iter()
                    .map(|&(_, id)| (exact_sq_dist(qi, refs.row(id as usize)), id))
                    .collect();
                sort_by_tie_rule(&mut run);
                ordered.extend(run.into_iter().map(|(d, id)| (id, f64::NAN, Some(d))));
            }
            start = end;
        }
        ordered.truncate(k);
        let certified = exhaustive || {
            let (_, key, exact) = ordered[k - 1];
            let kth_upper = exact.unwrap_or(q_norm + key + error);
            let worst_key = f64::from(candidates[candidates.len() - 1].0);
            kth_upper < q_norm + worst_key - error
        };
        let sq = if self.wanted.distances() {
            ordered
                .iter()
                .map(|&(id, _, exact)| {
                    exact.unwrap_or_else(|| exact_sq_dist(qi, refs.row(id as usize)))
                })
                .collect()
        } else {
            Vec::new()
        };
        RowAnswer { ids: ordered.iter().map(|p| p.0).collect(), sq, certified }
    }
}

/// How many candidates to keep per query before the exact ordering.
fn candidate_count(k: usize, available: usize) -> usize {
    (k + 8 + k / 8).min(available)
}

/// `g = gamma_{D+2}`: |float32 dot product error| <= g |q| |r| for depth `dim`, whatever
/// the summation order (see the module docs).
fn gemm_dot_error(dim: usize) -> f64 {
    let n = (dim + 2) as f64 * f64::powi(2.0, -24);
    n / (1.0 - n)
}

/// `e`: |error of a float32 key `|r|^2 - 2 q.r`| for a query of norm `q_norm`, references of
/// norm at most `r_max` and dot products off by at most `dot_error |q| |r|` (module docs).
fn key_error(dot_error: f64, q_norm: f64, r_max: f64) -> f64 {
    let u = f64::powi(2.0, -24);
    1.1 * (2.0 * (dot_error + u) * q_norm * r_max + 2.0 * u * r_max * r_max) + 1e-30
}

/// Exact distances of one query to every reference, sorted by the tie rule, first `k`.
fn brute_force_row<T: Element>(
    q: &[T],
    refs: &Rows<T>,
    skip: Option<usize>,
    k: usize,
) -> Vec<(f64, u32)> {
    let mut all: Vec<(f64, u32)> = (0..refs.n)
        .filter(|&j| Some(j) != skip)
        .map(|j| (exact_sq_dist(q, refs.row(j)), j as u32))
        .collect();
    let k = k.min(all.len());
    if k < all.len() {
        all.select_nth_unstable_by(k, |a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        all.truncate(k);
    }
    sort_by_tie_rule(&mut all);
    all
}

// ---------------------------------------------------------------------------------------
// Candidate generators

/// CPU candidates: tiles of the float32 GEMM, each scanned into bounded candidate lists by
/// the rayon worker that computed it, so no tile is handed between thread pools: in the
/// kernel (`fused_tile`) where the CPU has it and `kernel` is `None`, else computed with
/// `kernel` (`None`: `TileGemm::fastest`) and then scanned. Self-search computes only the
/// tiles (I, J) with J >= I; each serves the rows of I and, transposed, the rows of J. At
/// large `c` the lists start at thresholds sampled from a subset of the references
/// (`Tiles::sampled_thresholds`).
fn gemm_candidates<T: Element>(
    q: &Rows<T>,
    r: Option<&Rows<T>>,
    c: usize,
    kernel: Option<TileGemm>,
) -> Result<CandidateLists> {
    let tiles = Tiles::of(q, r, kernel)?;
    let self_search = r.is_none();
    let thresholds = tiles.sampled_thresholds(c, self_search, gemm_dot_error(q.dim))?;
    tiles.candidates(c, self_search, thresholds.as_deref())
}

/// Sampled starting thresholds (`Tiles::sampled_thresholds`) are used from this many
/// candidates per query on: below it a list's pushes cost little next to its scan.
const SAMPLED_MIN_CANDIDATES: usize = 64;

/// One reference in `SAMPLE_EVERY` is in the threshold sample.
const SAMPLE_EVERY: usize = 32;

/// Fresh lists for `rows` rows, starting at `thresholds[rows]` when given.
fn lists_for(rows: Range<usize>, c: usize, thresholds: Option<&[f32]>) -> CandidateLists {
    match thresholds {
        Some(t) => CandidateLists::with_thresholds(c, t[rows].to_vec()),
        None => CandidateLists::new(rows.len(), c),
    }
}

/// The GEMM tiles of query rows against reference rows, with buffers per worker: scanned
/// in the kernel (`fused`), or computed by `kernel` and then scanned.
struct Tiles {
    q: Tensor,
    r: Tensor,
    q_norms: Vec<f32>,
    r_norms: Vec<f32>,
    kernel: TileGemm,
    fused: bool,
    buffers: Vec<Mutex<Buffers>>,
}

/// A worker's buffers: the tile of dot products, or the fused kernel's.
#[derive(Default)]
struct Buffers {
    tile: Vec<f32>,
    fused: fused_tile::Scratch,
}

// The workers only take views of `q` and `r` and read them (torch's views and reads are
// thread-safe), and each buffer is behind its mutex.
unsafe impl Sync for Tiles {}

impl Tiles {
    /// The tiles of `q` against `r` (`None`: against itself), scanned in the kernel where the
    /// CPU has it and `kernel` is `None`; else, and for the tiles the fused kernel does not
    /// take, computed by `kernel` (`None`: the faster here) and then scanned.
    fn of<T: Element>(q: &Rows<T>, r: Option<&Rows<T>>, kernel: Option<TileGemm>) -> Result<Self> {
        let fused = kernel.is_none() && fused_tile::available(q.dim);
        let kernel = kernel.unwrap_or_else(TileGemm::fastest);
        let qf = q.float32()?;
        let q_norms: Vec<f32> = q.sq_norms().iter().map(|&v| v as f32).collect();
        let tiles = match r {
            Some(r) => {
                let r_norms = r.sq_norms().iter().map(|&v| v as f32).collect();
                Tiles::new(qf, r.float32()?, q_norms, r_norms, kernel)
            }
            None => Tiles::new(qf.shallow_clone(), qf, q_norms.clone(), q_norms, kernel),
        };
        Ok(Tiles { fused, ..tiles })
    }

    /// Unfused tiles of `q` and `r`, contiguous float32 CPU tensors.
    fn new(q: Tensor, r: Tensor, q_norms: Vec<f32>, r_norms: Vec<f32>, kernel: TileGemm) -> Self {
        let buffers = (0..=rayon::current_num_threads()).map(|_| Mutex::default()).collect();
        Tiles { q, r, q_norms, r_norms, kernel, fused: false, buffers }
    }

    /// Tiles of other rows with the same kernels.
    fn like(&self, q: Tensor, r: Tensor, q_norms: Vec<f32>, r_norms: Vec<f32>) -> Self {
        Tiles { fused: self.fused, ..Tiles::new(q, r, q_norms, r_norms, self.kernel) }
    }

    /// The calling worker's buffers.
    fn buffers(&self) -> Result<std::sync::MutexGuard<'_, Buffers>> {
        let slot = rayon::current_thread_index().unwrap_or(self.buffers.len() - 1);
        self.buffers[slot].lock().map_err(|_| SladeError::Internal("a k-NN worker panicked".into()))
    }

    /// Calls `scan` with the row-major dot products of query rows `rows` and reference rows
    /// `cols`, computed on the calling thread into its buffer.
    fn with_tile<R>(
        &self,
        rows: Range<usize>,
        cols: Range<usize>,
        scan: impl FnOnce(&[f32]) -> R,
    ) -> Result<R> {
        let _no_grad = tch::no_grad_guard();
        let mut buffers = self.buffers()?;
        let (height, width) = (rows.len(), cols.len());
        if buffers.tile.len() < height * width {
            buffers.tile.resize(height * width, 0.0);
        }
        let q_rows = self.q.f_narrow(0, rows.start as i64, height as i64)?;
        let r_rows = self.r.f_narrow(0, cols.start as i64, width as i64)?;
        let block = &mut buffers.tile[..height * width];
        self.kernel.product(&q_rows, &r_rows, block)?;
        Ok(scan(block))
    }

    /// Offers the keys of query rows `rows` against reference rows `cols` to `row_lists`
    /// and, when given, by columns to `col_lists`, scanned in the kernel (`fused_tile`);
    /// `skip[r]`: a reference that row `r`'s list must not take.
    fn scan_in_kernel(
        &self,
        rows: Range<usize>,
        cols: Range<usize>,
        row_lists: &mut [RowList<'_>],
        col_lists: Option<&mut [RowList<'_>]>,
        skip: Option<&[usize]>,
    ) -> Result<()> {
        let dim = self.q.size()[1] as usize;
        // Sound: `q` and `r` are contiguous float32 CPU tensors owned by self, `dim` wide.
        let floats = |t: &Tensor, range: &Range<usize>| unsafe {
            std::slice::from_raw_parts(
                (t.data_ptr() as *const f32).add(range.start * dim),
                range.len() * dim,
            )
        };
        let operands = Operands {
            rows: floats(&self.q, &rows),
            cols: floats(&self.r, &cols),
            dim,
            row_norms: &self.q_norms[rows.clone()],
            col_norms: &self.r_norms[cols.clone()],
            first_row: rows.start as u32,
            first_col: cols.start as u32,
            skip,
        };
        fused_tile::scan_product(&operands, row_lists, col_lists, &mut self.buffers()?.fused);
        Ok(())
    }

    /// Every query's candidate lists, starting at `thresholds` when given (rows they leave
    /// with fewer than `c` candidates are searched again without).
    fn candidates(
        &self,
        c: usize,
        self_search: bool,
        thresholds: Option<&[f32]>,
    ) -> Result<CandidateLists> {
        let (nq, nr) = (self.q_norms.len(), self.r_norms.len());
        let mut lists = if self_search {
            self.self_candidates(nq, c, thresholds)?
        } else {
            self.reference_candidates(nq, nr, c, thresholds, None)?
        };
        if thresholds.is_some() {
            self.search_short_rows(&mut lists, c, self_search)?;
        }
        Ok(lists)
    }

    /// Starting thresholds for the queries' lists, so that a list takes a small multiple of
    /// `c` keys (1.6 c at c = 1,225, N = 200,000) instead of the `c (1 + ln(N / c))` a list
    /// that starts empty takes from references in random order (each push costs, in
    /// compactions, tens of scanned keys).
    ///
    /// A fixed random sample of `m = N / SAMPLE_EVERY` references holds on average
    /// `mu = c m / N` of a query's `c` nearest (by key); the query's threshold is its
    /// `s`-th smallest key to the sample, `s = mu + 3 sqrt(mu) + 3` (one more in a
    /// self-search, where the sample may hold the query itself), plus twice the key error
    /// (the sample's keys come from other tiles). About `s N / m` keys fall below it, so
    /// fewer than `c` only with a probability of about 1e-3; such rows are searched afresh
    /// (`search_short_rows`). `None` below `SAMPLED_MIN_CANDIDATES` candidates or when the
    /// sample would hold fewer than `2c` references.
    fn sampled_thresholds(
        &self,
        c: usize,
        self_search: bool,
        dot_error: f64,
    ) -> Result<Option<Vec<f32>>> {
        let (nq, nr) = (self.q_norms.len(), self.r_norms.len());
        if c < SAMPLED_MIN_CANDIDATES || nr < 2 * c * SAMPLE_EVERY {
            return Ok(None);
        }
        let m = nr / SAMPLE_EVERY;
        let mut ids = rand::seq::index::sample(&mut ChaCha8Rng::seed_from_u64(0), nr, m).into_vec();
        ids.sort_unstable();
        let index = Tensor::from_slice(&ids.iter().map(|&j| j as i64).collect::<Vec<_>>());
        let sample_norms = ids.iter().map(|&j| self.r_norms[j]).collect();
        let sample = self.like(
            self.q.shallow_clone(),
            self.r.f_index_select(0, &index)?,
            self.q_norms.clone(),
            sample_norms,
        );
        let mu = (c * m) as f64 / nr as f64;
        let s = (mu + 3.0 * mu.sqrt() + 3.0).ceil() as usize + usize::from(self_search);
        let lists = sample.reference_candidates(nq, m, s, None, None)?;
        let r_max = self.r_norms.iter().fold(0.0f32, |a, &b| a.max(b)).sqrt();
        let thresholds = (0..nq)
            .into_par_iter()
            .map(|i| {
                let kth = lists.sorted_row(i)[s - 1].0;
                let error = key_error(dot_error, f64::from(self.q_norms[i]).sqrt(), r_max.into());
                ((f64::from(kth) + 2.0 * error) as f32).next_up()
            })
            .collect();
        Ok(Some(thresholds))
    }

    /// Searches afresh, without thresholds, the rows whose sampled threshold left them
    /// fewer than `c` candidates, and puts their lists in `lists`.
    fn search_short_rows(
        &self,
        lists: &mut CandidateLists,
        c: usize,
        self_search: bool,
    ) -> Result<()> {
        let short = lists.short_rows();
        if short.is_empty() {
            return Ok(());
        }
        let index = Tensor::from_slice(&short.iter().map(|&i| i as i64).collect::<Vec<_>>());
        let again = self.like(
            self.q.f_index_select(0, &index)?,
            self.r.shallow_clone(),
            short.iter().map(|&i| self.q_norms[i]).collect(),
            self.r_norms.clone(),
        );
        let skip = self_search.then_some(short.as_slice());
        let fresh = again.reference_candidates(short.len(), self.r_norms.len(), c, None, skip)?;
        for (j, &row) in short.iter().enumerate() {
            lists.replace_row(row, &fresh, j);
        }
        Ok(())
    }

    /// Self-search: the tiles (I, J), J >= I, in rounds in which no stripe occurs twice
    /// (`tile_rounds`), so the tiles of a round update disjoint lists in parallel. Lists
    /// start at `thresholds` when given.
    fn self_candidates(
        &self,
        n: usize,
        c: usize,
        thresholds: Option<&[f32]>,
    ) -> Result<CandidateLists> {
        let mut lists = lists_for(0..n, c, thresholds);
        let mut rows = lists.rows_mut(0, n);
        let mut stripes: Vec<Option<&mut [RowList<'_>]>> =
            rows.chunks_mut(BLOCK).map(Some).collect();
        for round in tile_rounds(stripes.len()) {
            let mut tasks: Vec<_> = round
                .iter()
                .map(|&(a, b)| {
                    let rows_a = stripes[a].take().expect("a stripe occurs once per round");
                    let rows_b = (a != b)
                        .then(|| stripes[b].take().expect("a stripe occurs once per round"));
                    (a, b, rows_a, rows_b)
                })
                .collect();
            tasks.par_iter_mut().try_for_each(|(a, b, rows_a, rows_b)| {
                self.self_tile(*a, *b, rows_a, rows_b.as_deref_mut())
            })?;
            for (a, b, rows_a, rows_b) in tasks {
                stripes[a] = Some(rows_a);
                if let Some(rows_b) = rows_b {
                    stripes[b] = Some(rows_b);
                }
            }
        }
        drop(stripes);
        drop(rows);
        Ok(lists)
    }

    /// Tile (I, J) of a self-search offered to the rows of stripe I (itself skipped on the
    /// diagonal) and, when J > I, by columns to the rows of stripe J.
    fn self_tile(
        &self,
        a: usize,
        b: usize,
        rows_a: &mut [RowList<'_>],
        rows_b: Option<&mut [RowList<'_>]>,
    ) -> Result<()> {
        let (i0, j0) = (a * BLOCK, b * BLOCK);
        let (height, width) = (rows_a.len(), rows_b.as_ref().map_or(rows_a.len(), |r| r.len()));
        if self.fused {
            // On the diagonal each row skips itself.
            let diagonal: Option<Vec<usize>> =
                rows_b.is_none().then(|| (i0..i0 + height).collect());
            let (rows, cols) = (i0..i0 + height, j0..j0 + width);
            return self.scan_in_kernel(rows, cols, rows_a, rows_b, diagonal.as_deref());
        }
        self.with_tile(i0..i0 + height, j0..j0 + width, |dots| match rows_b {
            Some(rows_b) => {
                let block = Block {
                    dots,
                    row_norms: &self.q_norms[i0..i0 + height],
                    col_norms: &self.r_norms[j0..j0 + width],
                    first_row: i0 as u32,
                    first_col: j0 as u32,
                };
                scan_tile(rows_a, rows_b, &block);
            }
            None => {
                for (row, list) in rows_a.iter_mut().enumerate() {
                    let dots = &dots[row * width..(row + 1) * width];
                    list.scan(dots, &self.r_norms[j0..j0 + width], j0 as u32, Some(row));
                }
            }
        })
    }

    /// Queries against separate references. Lists start at `thresholds` when given;
    /// `skip[i]` is a reference that query `i` must not retrieve (itself, when the queries
    /// are some of the references). With enough query stripes for every worker, each worker
    /// scans whole stripes into their own lists; otherwise the reference blocks of each
    /// stripe are shared out, each worker into lists of its own, merged at the end.
    fn reference_candidates(
        &self,
        nq: usize,
        nr: usize,
        c: usize,
        thresholds: Option<&[f32]>,
        skip: Option<&[usize]>,
    ) -> Result<CandidateLists> {
        let mut lists = lists_for(0..nq, c, thresholds);
        if nq.div_ceil(BLOCK) >= 2 * rayon::current_num_threads() {
            let mut rows = lists.rows_mut(0, nq);
            rows.par_chunks_mut(BLOCK).enumerate().try_for_each(|(stripe, rows)| {
                (0..nr).step_by(BLOCK).try_for_each(|j0| {
                    self.reference_tile(rows, stripe * BLOCK, j0..nr.min(j0 + BLOCK), skip)
                })
            })?;
            drop(rows);
            return Ok(lists);
        }
        for i0 in (0..nq).step_by(BLOCK) {
            let height = BLOCK.min(nq - i0);
            let fresh = || lists_for(i0..i0 + height, c, thresholds);
            let stripe = (0..nr.div_ceil(BLOCK))
                .into_par_iter()
                .try_fold(fresh, |mut part, block| {
                    let cols = block * BLOCK..nr.min((block + 1) * BLOCK);
                    self.reference_tile(&mut part.rows_mut(0, height), i0, cols, skip)?;
                    Ok::<_, SladeError>(part)
                })
                .try_reduce(fresh, |mut merged, part| {
                    merged.absorb(0, &part);
                    Ok(merged)
                })?;
            lists.absorb(i0, &stripe);
        }
        Ok(lists)
    }

    /// The tile of query rows `i0..i0 + lists.len()` against references `cols`, scanned
    /// into the rows' `lists` (see `reference_candidates` for `skip`).
    fn reference_tile(
        &self,
        lists: &mut [RowList<'_>],
        i0: usize,
        cols: Range<usize>,
        skip: Option<&[usize]>,
    ) -> Result<()> {
        let (j0, width) = (cols.start, cols.len());
        if self.fused {
            let (rows, skip) = (i0..i0 + lists.len(), skip.map(|ids| &ids[i0..i0 + lists.len()]));
            return self.scan_in_kernel(rows, cols, lists, None, skip);
        }
        self.with_tile(i0..i0 + lists.len(), cols.clone(), |dots| {
            for (row, list) in lists.iter_mut().enumerate() {
                let skip = skip.map(|ids| ids[i0 + row]).filter(|id| cols.contains(id));
                list.scan(
                    &dots[row * width..(row + 1) * width],
                    &self.r_norms[cols.clone()],
                    j0 as u32,
                    skip.map(|id| id - j0),
                );
            }
        })
    }
}

/// The tiles (I, J), I <= J, of `stripes` stripes in rounds in which every stripe occurs at
/// most once (a round-robin tournament by the circle method; a stripe paired with the extra
/// player of an odd count, or in the last round of an even one, takes its diagonal tile).
fn tile_rounds(stripes: usize) -> Vec<Vec<(usize, usize)>> {
    let players = stripes + stripes % 2;
    let mut rounds: Vec<Vec<(usize, usize)>> = (0..players - 1)
        .map(|round| {
            let fixed = (round, players - 1);
            let rotating = (1..players / 2)
                .map(|k| ((round + k) % (players - 1), (round + players - 1 - k) % (players - 1)));
            std::iter::once(fixed)
                .chain(rotating)
                .map(|(a, b)| match (a < stripes, b < stripes) {
                    (true, true) => (a.min(b), a.max(b)),
                    (true, false) => (a, a),
                    _ => (b, b),
                })
                .collect()
        })
        .collect();
    if stripes.is_multiple_of(2) {
        rounds.push((0..stripes).map(|i| (i, i)).collect());
    }
    rounds
}

/// Device candidates (the CUDA path): per query block, float32 GEMM against each reference
/// block on the tensors' device and a running `topk` of the keys; only the `c` candidate
/// ids and keys per query come back to the host.
fn device_candidates(
    query: &Tensor,
    reference: Option<&Tensor>,
    c: usize,
) -> Result<CandidateLists> {
    let device = query.device();
    let self_search = reference.is_none();
    let qf = query.f_to_kind(Kind::Float)?;
    let rf = match reference {
        Some(r) => r.f_to_kind(Kind::Float)?,
        None => qf.shallow_clone(),
    };
    let (nq, nr) = (qf.size()[0], rf.size()[0]);
    let r_norms = rf
        .f_to_kind(Kind::Double)?
        .f_square()?
        .f_sum_dim_intlist(1, false, Kind::Double)?
        .f_to_kind(Kind::Float)?;
    let block = DEVICE_BLOCK as i64;
    let c = c as i64;
    let mut keys_host = Vec::with_capacity((nq * c) as usize);
    let mut ids_host = Vec::with_capacity((nq * c) as usize);
    for i0 in (0..nq).step_by(DEVICE_BLOCK) {
        let rows = block.min(nq - i0);
        let q_block = qf.f_narrow(0, i0, rows)?;
        let mut best_keys = Tensor::f_empty([rows, 0], (Kind::Float, device))?;
        let mut best_ids = Tensor::f_empty([rows, 0], (Kind::Int64, device))?;
        for j0 in (0..nr).step_by(DEVICE_BLOCK) {
            let cols = block.min(nr - j0);
            let dots = q_block.f_mm(&rf.f_narrow(0, j0, cols)?.f_tr()?)?;
            let mut keys = r_norms.f_narrow(0, j0, cols)?.f_unsqueeze(0)?.f_sub(&(dots * 2.0))?;
            let col_ids = Tensor::f_arange_start(j0, j0 + cols, (Kind::Int64, device))?;
            if self_search && j0 < i0 + rows && i0 < j0 + cols {
                let row_ids = Tensor::f_arange_start(i0, i0 + rows, (Kind::Int64, device))?;
                let is_self = row_ids.f_unsqueeze(1)?.f_eq_tensor(&col_ids.f_unsqueeze(0)?)?;
                keys = keys.f_masked_fill(&is_self, f64::INFINITY)?;
            }
            let ids = col_ids.f_unsqueeze(0)?.f_expand([rows, cols], false)?;
            let all_keys = Tensor::f_cat(&[&best_keys, &keys], 1)?;
            let all_ids = Tensor::f_cat(&[&best_ids, &ids], 1)?;
            let (top_keys, pos) = all_keys.f_topk(c.min(all_keys.size()[1]), 1, false, true)?;
            best_ids = all_ids.f_gather(1, &pos, false)?;
            best_keys = top_keys;
        }
        let keys = best_keys.f_to_device(Device::Cpu)?.f_contiguous()?;
        let ids = best_ids.f_to_kind(Kind::Int)?.f_to_device(Device::Cpu)?.f_contiguous()?;
        let len = (rows * c) as usize;
        let mut key_buf = vec![0f32; len];
        let mut id_buf = vec![0i32; len];
        keys.f_copy_data(&mut key_buf, len)?;
        ids.f_copy_data(&mut id_buf, len)?;
        keys_host.extend(key_buf);
        ids_host.extend(id_buf.into_iter().map(|j| j as u32));
    }
    Ok(CandidateLists::from_full(nq as usize, c as usize, keys_host, ids_host))
}

/// Builds a k-d tree of the references and returns query `i`'s answer from it: `c`
/// candidates with float64 distances, certified when the c-th is strictly farther than the
/// k-th.
fn kdtree_resolver<'a, T: Element>(
    q: &'a Rows<T>,
    refs: &'a Rows<T>,
    self_search: bool,
    k: usize,
    c: usize,
) -> Result<impl Fn(usize) -> Result<RowAnswer> + Sync + 'a> {
    let mut tree = kdtree::KdTree::with_capacity(refs.dim, KDTREE_LEAF_SIZE);
    for j in 0..refs.n {
        let point: Vec<f64> = refs.row(j).iter().map(|&v| v.into()).collect();
        tree.add(point, j as u32)
            .map_err(|e| SladeError::Internal(format!("k-d tree insert failed: {e:?}")))?;
    }
    let available = refs.n - usize::from(self_search);
    let want = c + usize::from(self_search);
    Ok(move |i| {
        let qi = q.row(i);
        let point: Vec<f64> = qi.iter().map(|&v| v.into()).collect();
        let found = tree
            .nearest(&point, want, &kdtree::distance::squared_euclidean)
            .map_err(|e| SladeError::Internal(format!("k-d tree query failed: {e:?}")))?;
        let mut exact: Vec<(f64, u32)> = found
            .into_iter()
            .map(|(_, &j)| j)
            .filter(|&j| !(self_search && j as usize == i))
            .map(|j| (exact_sq_dist(qi, refs.row(j as usize)), j))
            .collect();
        exact.truncate(c);
        sort_by_tie_rule(&mut exact);
        let certified = exact.len() >= available || exact[k - 1].0 < exact[exact.len() - 1].0;
        exact.truncate(k);
        Ok(RowAnswer {
            ids: exact.iter().map(|p| p.1).collect(),
            sq: exact.iter().map(|p| p.0).collect(),
            certified,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each engine; the GEMM engine with each tile kernel and, with `None`, scanned in the
    /// kernel where the CPU has AVX-512 (`fused_tile`).
    const ENGINES: [(Engine, Option<TileGemm>); 5] = [
        (Engine::Gemm, Some(TileGemm::Torch)),
        (Engine::Gemm, Some(TileGemm::Matrixmultiply)),
        (Engine::Gemm, None),
        (Engine::KdTree, None),
        (Engine::Torch, None),
    ];

    /// Tiles computed by a kernel and then scanned, and (`None`) scanned in the kernel.
    const KERNELS: [Option<TileGemm>; 2] = [Some(TileGemm::Matrixmultiply), None];

    fn brute(q: &[Vec<f64>], r: &[Vec<f64>], self_search: bool, k: usize) -> Vec<Vec<u32>> {
        q.iter()
            .enumerate()
            .map(|(i, qi)| {
                let mut all: Vec<(f64, u32)> = r
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| !(self_search && *j == i))
                    .map(|(j, rj)| (exact_sq_dist(qi, rj), j as u32))
                    .collect();
                sort_by_tie_rule(&mut all);
                all.into_iter().take(k).map(|p| p.1).collect()
            })
            .collect()
    }

    fn to_tensor(rows: &[Vec<f64>]) -> Tensor {
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).reshape([rows.len() as i64, rows[0].len() as i64])
    }

    fn random_rows(n: usize, dim: usize, seed: i64, levels: f64) -> Vec<Vec<f64>> {
        tch::manual_seed(seed);
        let t = Tensor::randn([n as i64, dim as i64], (Kind::Double, Device::Cpu));
        // Quantise so that exact ties and duplicates occur.
        // Dyadic levels keep every distance exact in float64, whatever the summation order.
        let t = (t * levels).round() / levels;
        (0..n).map(|i| Vec::<f64>::try_from(t.get(i as i64)).unwrap()).collect()
    }

    #[test]
    fn every_engine_matches_brute_force_with_ties() {
        for &(n, dim, levels) in
            &[(300, 3, 2.0), (257, 16, 1.0), (64, 2, 1.0), (500, 40, 4.0), (2100, 6, 2.0)]
        {
            let x = random_rows(n, dim, n as i64, levels);
            let xt = to_tensor(&x);
            for k in [1, 5, 37] {
                let expected = brute(&x, &x, true, k);
                for (engine, tile_gemm) in ENGINES {
                    let got = search(&xt, None, k, engine, Wanted::Distances, tile_gemm).unwrap();
                    for (i, row) in expected.iter().enumerate() {
                        let got_row: Vec<u32> = got.row_indices(i).to_vec();
                        assert_eq!(
                            &got_row, row,
                            "engine {engine:?} {tile_gemm:?} n {n} dim {dim} k {k} row {i}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn separate_reference_set() {
        let q = random_rows(50, 8, 1, 4.0);
        let r = random_rows(4100, 8, 2, 4.0);
        let expected = brute(&q, &r, false, 10);
        let (qt, rt) = (to_tensor(&q), to_tensor(&r));
        for (engine, tile_gemm) in ENGINES {
            let got = search(&qt, Some(&rt), 10, engine, Wanted::Distances, tile_gemm).unwrap();
            for (i, row) in expected.iter().enumerate() {
                let got_row: Vec<u32> = got.row_indices(i).to_vec();
                assert_eq!(&got_row, row, "engine {engine:?} {tile_gemm:?} row {i}");
            }
        }
    }

    fn rows(x: &[Vec<f64>]) -> Rows<f64> {
        Rows::new(to_tensor(x), x.len(), x[0].len())
    }

    /// Checks the exact top `k` that `lists` give against brute force, for every query whose
    /// answer is certified; all but a few must be (points on a fine grid: few exact ties).
    fn assert_exact(q: &[Vec<f64>], r: Option<&[Vec<f64>]>, lists: &CandidateLists, k: usize) {
        let expected = brute(q, r.unwrap_or(q), r.is_none(), k);
        let (q_rows, r_rows) = (rows(q), r.map(rows));
        let ordering = Ordering { k, wanted: Wanted::Order };
        let answer = ordering.resolver(&q_rows, r_rows.as_ref(), lists, gemm_dot_error(q[0].len()));
        let mut certified = 0;
        for (i, row) in expected.iter().enumerate() {
            let found = answer(i).unwrap();
            if found.certified {
                assert_eq!(&found.ids, row, "row {i}");
                certified += 1;
            }
        }
        assert!(certified * 100 >= q.len() * 95, "{certified} of {} rows certified", q.len());
    }

    /// Large enough `c` and N for sampled thresholds: the neighbours stay exact, in a
    /// self-search and against separate references, for both ways of sharing out the tiles
    /// (whole query stripes per worker with 1 thread, reference blocks with 64), with the
    /// tiles scanned after the product and in the kernel.
    #[test]
    fn sampled_thresholds_keep_the_neighbours_exact() {
        let (k, c) = (60, candidate_count(60, usize::MAX));
        let x = random_rows(2 * c * SAMPLE_EVERY + 100, 6, 11, 64.0);
        let q = random_rows(2100, 6, 12, 64.0);
        for (threads, kernel) in [1, 64].into_iter().flat_map(|t| KERNELS.map(|k| (t, k))) {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                for (queries, r) in [(&x, None), (&q, Some(x.as_slice()))] {
                    let (q_rows, r_rows) = (rows(queries), r.map(rows));
                    let tiles = Tiles::of(&q_rows, r_rows.as_ref(), kernel).unwrap();
                    let thresholds =
                        tiles.sampled_thresholds(c, r.is_none(), gemm_dot_error(6)).unwrap();
                    assert!(thresholds.is_some(), "the sample is large enough");
                    let lists = tiles.candidates(c, r.is_none(), thresholds.as_deref()).unwrap();
                    assert_exact(queries, r, &lists, k);
                }
            });
        }
    }

    /// Rows that a threshold leaves short are searched again: with every threshold at -inf
    /// (no row keeps a key), the lists still give the exact neighbours, the query itself
    /// excluded in a self-search.
    #[test]
    fn rows_left_short_by_their_threshold_are_searched_again() {
        let x = random_rows(1500, 5, 13, 64.0);
        let q = random_rows(300, 5, 14, 64.0);
        for (queries, r) in [(&x, None), (&q, Some(x.as_slice()))] {
            let (q_rows, r_rows) = (rows(queries), r.map(rows));
            for kernel in KERNELS {
                let tiles = Tiles::of(&q_rows, r_rows.as_ref(), kernel).unwrap();
                let none_kept = vec![f32::NEG_INFINITY; queries.len()];
                let lists = tiles.candidates(30, r.is_none(), Some(&none_kept)).unwrap();
                assert!(lists.short_rows().is_empty());
                assert_exact(queries, r, &lists, 20);
            }
        }
    }

    #[test]
    fn tile_rounds_cover_each_tile_once_with_disjoint_stripes() {
        for stripes in 1..=9 {
            let mut seen = std::collections::HashSet::new();
            for round in tile_rounds(stripes) {
                let mut used = std::collections::HashSet::new();
                for &(a, b) in &round {
                    assert!(a <= b && b < stripes);
                    assert!(
                        used.insert(a) && (a == b || used.insert(b)),
                        "stripe twice in a round"
                    );
                    assert!(seen.insert((a, b)), "tile ({a}, {b}) twice");
                }
            }
            assert_eq!(seen.len(), stripes * (stripes + 1) / 2, "stripes {stripes}");
        }
    }

    #[test]
    fn rejects_bad_k() {
        let x = Tensor::randn([5, 3], (Kind::Float, Device::Cpu));
        assert!(matches!(
            neighbours(&x, None, 5, Engine::Auto, Wanted::Order),
            Err(SladeError::Value(_))
        ));
        assert!(matches!(
            neighbours(&x, None, 0, Engine::Auto, Wanted::Order),
            Err(SladeError::Value(_))
        ));
        assert!(neighbours(&x, None, 4, Engine::Auto, Wanted::Order).is_ok());
    }
}
