//! The steps of Lloyd's algorithm on the host (rayon over rows; products by the fused tile
//! kernel of `retrieval::fused_tile` for float32 points on CPUs with AVX-512, else by
//! torch's BLAS GEMM) and on a device (torch ops only), with exact assignments.
//!
//! Assignment: for a block of rows, GEMM gives the keys `key_j = |c_j|^2 - 2 x.c_j`, whose
//! error against the exact `d2_j - |x|^2` is at most `e = gamma (|x| + max_j |c_j|)^2`, with
//! `gamma = 1.1 (dim + 16) u` (u the unit roundoff of the GEMM dtype: accumulation, rounding
//! of `|c|^2` and of the sum). The exact nearest centroid has a key within `2e` of the best
//! key, so when the runner-up key is more than `2e` behind the best, the best is the exact
//! answer; otherwise every centroid whose key is within `2e` of the best is compared by
//! exact float64 distance (ties to the smaller index).
//!
//! The host engine also skips points whose assignment provably cannot change (Hamerly,
//! "Making k-means even faster", SDM 2010): it keeps for every point an upper bound u on
//! the distance to its centroid and a lower bound l on the distance to every other one.
//! When the centroids move by delta_j, u grows by delta of its own centroid and l shrinks by
//! the largest delta of the others; a point keeps its centroid without any distance
//! computation when u < max(l, s), s being half the distance from its centroid to the
//! nearest other centroid, or after recomputing u exactly. Only the other points go
//! through the GEMM. Every comparison is strict and the bounds are widened by a relative
//! 1e-12 (and by the key error bound where they come from keys), so the assignment is the
//! same as the exhaustive one.

use crate::bail;
use crate::error::{Result, SladeError};
use crate::retrieval::fused_tile;
use crate::retrieval::knn::{exact_sq_dist, Element, Rows};
use rayon::prelude::*;
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

/// Elements of a block of GEMM keys (rows x k) held at once.
const BLOCK_ELEMENTS: usize = 1 << 21;
/// Elements of a float64 difference tensor (rows x k x dim) held at once on a device.
const EXACT_ELEMENTS: i64 = 1 << 24;
/// Points per task of the fused tile kernel (a multiple of its 12 rows).
const KERNEL_ROWS: usize = 96;
/// Points per deterministic partial sum.
const SUM_CHUNK: usize = 1024;

/// The float types the host engine computes in.
pub(crate) trait Real: Element + PartialOrd {
    const INFINITY: Self;
    /// Unit roundoff of a GEMM in this type.
    const UNIT_ROUNDOFF: f64;
    fn from_f64(v: f64) -> Self;
    /// The values as float32, when they are.
    fn as_f32(values: &[Self]) -> Option<&[f32]>;
}

impl Real for f32 {
    const INFINITY: Self = f32::INFINITY;
    const UNIT_ROUNDOFF: f64 = 5.960_464_477_539_063e-8; // 2^-24
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn as_f32(values: &[Self]) -> Option<&[f32]> {
        Some(values)
    }
}

impl Real for f64 {
    const INFINITY: Self = f64::INFINITY;
    const UNIT_ROUNDOFF: f64 = 1.110_223_024_625_156_5e-16; // 2^-53
    fn from_f64(v: f64) -> Self {
        v
    }
    fn as_f32(_: &[Self]) -> Option<&[f32]> {
        None
    }
}

/// `gamma` of the module docs for a GEMM of depth `dim` with unit roundoff `u`.
pub(crate) fn key_error_factor(dim: usize, u: f64) -> f64 {
    1.1 * (dim as f64 + 16.0) * u
}

/// Rows of keys per GEMM block for `k` centroids.
fn block_rows(k: usize, n: usize) -> usize {
    (BLOCK_ELEMENTS / k.max(1)).clamp(64, 8192).min(n)
}

/// What the initialisation and the Lloyd loop need from the points, wherever they live.
pub(super) trait Engine {
    /// Cluster ids of all points, in the engine's own form.
    type Labels;
    /// Number of points.
    fn len(&self) -> usize;
    /// The points (`n x dim`, work dtype, contiguous) on their device.
    fn points(&self) -> &Tensor;
    /// Squared distances of the points `ids` to every point, `len(ids) x N` row-major:
    /// GEMM keys `|x|^2 + |p|^2 - 2 x.p`, the entries within the key error bound of 0
    /// recomputed exactly (so coinciding points are at distance 0 exactly). Written into
    /// `out`, whose memory is reused.
    fn distances_from(&self, ids: &[usize], out: &mut Vec<f32>) -> Result<()>;
    /// The points `ids` as a `len(ids) x dim` tensor (initial centroids).
    fn rows(&self, ids: &[usize]) -> Result<Tensor> {
        let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let index = Tensor::f_from_slice(&ids)?.f_to_device(self.points().device())?;
        Ok(self.points().f_index_select(0, &index)?.f_contiguous()?)
    }
    /// Mean over features of the per-feature (population) variance of the points.
    fn mean_variance(&self) -> Result<f64> {
        let var = self.points().f_var_dim([0i64].as_slice(), false, false)?;
        Ok(var.f_mean(Kind::Double)?.f_double_value(&[])?)
    }
    /// Exact nearest centroid of every point.
    fn assign(&self, centroids: &Tensor) -> Result<Self::Labels>;
    fn same_labels(&self, a: &Self::Labels, b: &Self::Labels) -> Result<bool>;
    /// The means of the clusters (empty ones re-seeded) and the total squared shift.
    fn update(&self, labels: &Self::Labels, centroids: &Tensor) -> Result<(Tensor, f64)>;
    /// Sum of the exact squared distances of the points to their centroids.
    fn inertia(&self, labels: &Self::Labels, centroids: &Tensor) -> Result<f64>;
    /// The labels as an int64 tensor on the points' device.
    fn labels_tensor(&self, labels: Self::Labels) -> Result<Tensor>;
}

// ---------------------------------------------------------------------------------------
// Host

/// CPU points, read in place from their contiguous tensor.
pub(super) struct HostEngine<T: Real> {
    x: Rows<T>,
    norms: Vec<f64>,
    /// The largest norm of a point.
    max_norm: f64,
    gamma: f64,
    /// Whether products go through the fused tile kernel (float32 points, AVX-512) rather
    /// than torch's GEMM.
    kernel: bool,
    /// The bounds of the last assignment (see the module docs).
    bounds: Mutex<Option<Bounds<T>>>,
}

/// How an assignment computes its keys: the fused tile kernel on the float32 points and
/// the packed centroids, or torch's GEMM `bias + x (-2 C^T)`.
enum Products<'a> {
    Kernel(&'a [f32], fused_tile::Panels),
    Gemm { bias: Tensor, neg2_ct: Tensor },
}

/// Hamerly's bounds for one set of centroids.
struct Bounds<T> {
    /// The centroids (k x dim, row-major) the bounds refer to.
    centroids: Vec<T>,
    labels: Vec<u32>,
    /// >= the distance of each point to its centroid.
    upper: Vec<f64>,
    /// <= the distance of each point to every other centroid.
    lower: Vec<f64>,
}

/// Relative widening of the bounds against float64 rounding.
const BOUND_SLACK: f64 = 1e-12;

impl<T: Real> HostEngine<T> {
    pub fn new(x: Rows<T>) -> Result<Self> {
        let norms = x.sq_norms();
        let max_norm = norms.iter().cloned().fold(0.0f64, f64::max).sqrt();
        let gamma = key_error_factor(x.dim, T::UNIT_ROUNDOFF);
        let kernel = T::as_f32(x.data()).is_some() && fused_tile::available(x.dim);
        Ok(HostEngine { x, norms, max_norm, gamma, kernel, bounds: Mutex::new(None) })
    }

    /// This engine with its products through torch's GEMM (the path of CPUs without
    /// AVX-512), to test the two paths against each other.
    #[cfg(test)]
    pub fn without_kernel(mut self) -> Self {
        self.kernel = false;
        self
    }

    /// The points as float32 when the fused tile kernel computes their products.
    fn kernel_points(&self) -> Option<&[f32]> {
        T::as_f32(self.x.data()).filter(|_| self.kernel)
    }

    /// Moves the bounds from their centroids to `c`; returns the points that need a full
    /// assignment (the others keep their label, with valid bounds).
    fn tighten(&self, b: &mut Bounds<T>, c: &Rows<T>) -> Result<Vec<u32>> {
        let (k, dim) = (c.n, c.dim);
        let shifts: Vec<f64> = (0..k)
            .map(|j| {
                let old = &b.centroids[j * dim..(j + 1) * dim];
                exact_sq_dist(old, c.row(j)).sqrt() * (1.0 + BOUND_SLACK)
            })
            .collect();
        let (mut top, mut top_id, mut runner_up) = (0.0f64, usize::MAX, 0.0f64);
        for (j, &d) in shifts.iter().enumerate() {
            if d > top {
                runner_up = top;
                top = d;
                top_id = j;
            } else if d > runner_up {
                runner_up = d;
            }
        }
        let half_gaps = half_separations(c)?;
        let x = &self.x;
        Ok(b.labels
            .par_iter()
            .zip(b.upper.par_iter_mut())
            .zip(b.lower.par_iter_mut())
            .enumerate()
            .filter_map(|(i, ((&a, upper), lower))| {
                let a = a as usize;
                let others = if a == top_id { runner_up } else { top };
                *upper = (*upper + shifts[a]) * (1.0 + BOUND_SLACK);
                *lower = ((*lower - others) * (1.0 - BOUND_SLACK)).max(0.0);
                let margin = lower.max(half_gaps[a]);
                if *upper < margin {
                    return None;
                }
                *upper = exact_sq_dist(x.row(i), c.row(a)).sqrt() * (1.0 + BOUND_SLACK);
                (*upper >= margin).then_some(i as u32)
            })
            .collect())
    }

    /// Exact assignment of the points `ids` (all points when None) by blocked GEMM; sets
    /// their labels and bounds in `b`.
    fn assign_rows(&self, b: &mut Bounds<T>, c: &Rows<T>, ids: Option<&[u32]>) -> Result<()> {
        let k = c.n;
        let count = ids.map_or(self.x.n, |ids| ids.len());
        if count == 0 {
            return Ok(());
        }
        let c_norms = c.sq_norms();
        let c_max = c_norms.iter().cloned().fold(0.0f64, f64::max).sqrt();
        let bias: Vec<T> = c_norms.iter().map(|&v| T::from_f64(v)).collect();
        let products = match (self.kernel_points(), T::as_f32(c.data()), T::as_f32(&bias)) {
            (Some(x), Some(c), Some(norms)) => {
                Products::Kernel(x, fused_tile::Panels::new(c, norms, self.x.dim))
            }
            _ => Products::Gemm {
                bias: Tensor::f_from_slice(&bias)?.f_view([1, k as i64])?,
                // -2 C is exact (a power of two), so the GEMM gives the keys directly.
                neg2_ct: c.tensor().f_mul_scalar(-2.0)?.f_tr()?,
            },
        };
        let block = block_rows(k, count);
        let kind = <T as tch::kind::Element>::KIND;
        let buffer = Tensor::f_empty([(block * k) as i64], (kind, Device::Cpu))?;
        for start in (0..count).step_by(block) {
            let rows = block.min(count - start);
            let block_ids: Vec<u32> = match ids {
                None => (start as u32..(start + rows) as u32).collect(),
                Some(ids) => ids[start..start + rows].to_vec(),
            };
            let out = buffer.f_narrow(0, 0, (rows * k) as i64)?.f_view([rows as i64, k as i64])?;
            match &products {
                Products::Kernel(x, panels) => {
                    // Sound: `out` is a contiguous float32 block of the buffer (T is f32 here:
                    // `as_f32` gave the points), owned by `buffer` for this scope.
                    let keys = unsafe {
                        std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, rows * k)
                    };
                    self.kernel_keys(x, &block_ids, ids.is_none(), panels, keys);
                }
                Products::Gemm { bias, neg2_ct } => {
                    let x_block = match ids {
                        None => self.x.tensor().f_narrow(0, start as i64, rows as i64)?,
                        Some(_) => {
                            let index: Vec<i64> = block_ids.iter().map(|&i| i64::from(i)).collect();
                            self.x.tensor().f_index_select(0, &Tensor::f_from_slice(&index)?)?
                        }
                    };
                    let keys = bias.f_addmm_out(&out, &x_block, neg2_ct)?;
                    if keys.data_ptr() != out.data_ptr() {
                        bail!(Internal, "addmm_out did not write into its output buffer");
                    }
                }
            }
            // The keys are the contiguous block buffer, owned by `buffer` for this scope.
            let keys: &mut [T] =
                unsafe { std::slice::from_raw_parts_mut(out.data_ptr() as *mut T, rows * k) };
            let found: Vec<Nearest> = keys
                .par_chunks_mut(k)
                .zip(block_ids.par_iter())
                .map(|(row_keys, &i)| {
                    let i = i as usize;
                    let error = self.gamma * (self.norms[i].sqrt() + c_max).powi(2);
                    nearest(row_keys, self.x.row(i), c, error, self.norms[i])
                })
                .collect();
            for (&i, found) in block_ids.iter().zip(found) {
                let i = i as usize;
                b.labels[i] = found.label;
                b.upper[i] = found.upper;
                b.lower[i] = found.lower;
            }
        }
        Ok(())
    }

    /// The assignment keys `|c_j|^2 - 2 x.c_j` of the points `ids` (float32 `x`, the packed
    /// centroids `c`) by the fused tile kernel into `keys` (a row of `k` per point); `in_place`
    /// when `ids` are consecutive, so their rows are read where they are.
    fn kernel_keys(
        &self,
        x: &[f32],
        ids: &[u32],
        in_place: bool,
        c: &fused_tile::Panels,
        keys: &mut [f32],
    ) {
        let (dim, k) = (self.x.dim, keys.len() / ids.len());
        let gathered: Vec<f32>;
        let rows = match ids.first() {
            Some(&first) if in_place => {
                &x[first as usize * dim..(first as usize + ids.len()) * dim]
            }
            _ => {
                gathered = ids
                    .iter()
                    .flat_map(|&i| &x[i as usize * dim..(i as usize + 1) * dim])
                    .copied()
                    .collect();
                &gathered
            }
        };
        keys.par_chunks_mut(KERNEL_ROWS * k).zip(rows.par_chunks(KERNEL_ROWS * dim)).for_each(
            |(keys, rows)| {
                let mut out: Vec<&mut [f32]> = keys.chunks_mut(k).collect();
                fused_tile::product_keys(rows, c, &mut out);
            },
        );
    }

    /// The bound under which a key of `distances_from` for `centre` is replaced by the
    /// exact squared distance.
    fn exact_below(&self, centre: usize) -> f64 {
        2.0 * self.gamma * (self.norms[centre].sqrt() + self.max_norm).powi(2)
    }

    /// Entry `(centre, j)` of `distances_from` from its key `|x_j|^2 - 2 x_j.x_centre`:
    /// `key + |x_centre|^2`, or the exact squared distance where that is at most `bound`
    /// (`exact_below`, within the key error of 0).
    fn distance(&self, key: f64, j: usize, centre: usize, bound: f64) -> f32 {
        let value = key + self.norms[centre];
        if value <= bound {
            exact_sq_dist(self.x.row(j), self.x.row(centre)) as f32
        } else {
            value as f32
        }
    }

    /// `distances_from` by torch's GEMM.
    fn gemm_distances(&self, ids: &[usize], out: &mut [f32]) -> Result<()> {
        let n = self.x.n;
        let centres = self.rows(ids)?;
        let rounded: Vec<T> = self.norms.iter().map(|&v| T::from_f64(v)).collect();
        let norms_row = Tensor::f_from_slice(&rounded)?.f_view([1, n as i64])?;
        let keys = norms_row.f_addmm(&centres.f_mul_scalar(-2.0)?, &self.x.tensor().f_tr()?)?;
        let keys = keys.f_contiguous()?;
        // The keys are a contiguous `len(ids) x N` tensor of T on the CPU, owned by `keys`.
        let keys: &[T] =
            unsafe { std::slice::from_raw_parts(keys.data_ptr() as *const T, ids.len() * n) };
        out.par_chunks_mut(n).zip(keys.par_chunks(n)).zip(ids).for_each(|((row, keys), &id)| {
            let bound = self.exact_below(id);
            for (j, (d, &key)) in row.iter_mut().zip(keys).enumerate() {
                *d = self.distance(key.into(), j, id, bound);
            }
        });
        Ok(())
    }

    /// `distances_from` by the fused tile kernel (AVX-512, float32 points `x`): the points,
    /// read in place in slices, against the centres packed once; each slice's products are
    /// turned into its distances while they are in cache. The keys round as those of
    /// `gemm_distances` do: `|x_j|^2 - 2 x_j.x_centre` in one float32 rounding (the kernel's
    /// `0 - 2 dot` is exact).
    fn kernel_distances(&self, x: &[f32], ids: &[usize], out: &mut [f32]) {
        let (n, dim, p) = (self.x.n, self.x.dim, ids.len());
        let centres: Vec<f32> =
            ids.iter().flat_map(|&id| &x[id * dim..(id + 1) * dim]).copied().collect();
        let centres = fused_tile::Panels::new(&centres, &vec![0.0; p], dim);
        let norms: Vec<f32> = self.norms.iter().map(|&v| v as f32).collect();
        let mut slices: Vec<Vec<&mut [f32]>> = Vec::new();
        slices.resize_with(n.div_ceil(KERNEL_ROWS), || Vec::with_capacity(p));
        for row in out.chunks_mut(n) {
            for (slice, part) in slices.iter_mut().zip(row.chunks_mut(KERNEL_ROWS)) {
                slice.push(part);
            }
        }
        slices.into_par_iter().enumerate().for_each_init(Vec::new, |products, (s, mut parts)| {
            let points = s * KERNEL_ROWS..(s * KERNEL_ROWS + KERNEL_ROWS).min(n);
            products.resize(points.len() * p, 0.0);
            let mut rows: Vec<&mut [f32]> = products.chunks_mut(p).collect();
            let slice = &x[points.start * dim..points.end * dim];
            fused_tile::product_keys(slice, &centres, &mut rows);
            for (c, (part, &id)) in parts.iter_mut().zip(ids).enumerate() {
                let bound = self.exact_below(id);
                for ((j, d), &norm) in
                    points.clone().zip(part.iter_mut()).zip(&norms[points.clone()])
                {
                    let key = norm + products[(j - points.start) * p + c];
                    *d = self.distance(f64::from(key), j, id, bound);
                }
            }
        });
    }

    fn centroid_rows(&self, centroids: &Tensor) -> Result<Rows<T>> {
        let c = centroids.f_to_kind(<T as tch::kind::Element>::KIND)?.f_contiguous()?;
        let k = c.size()[0] as usize;
        Ok(Rows::new(c, k, self.x.dim))
    }

    /// Points of each cluster, in increasing point order: (counts, point ids by cluster).
    fn members(labels: &[u32], k: usize) -> (Vec<usize>, Vec<usize>, Vec<u32>) {
        let mut counts = vec![0usize; k];
        for &label in labels {
            counts[label as usize] += 1;
        }
        let mut starts = vec![0usize; k];
        for j in 1..k {
            starts[j] = starts[j - 1] + counts[j - 1];
        }
        let mut next = starts.clone();
        let mut order = vec![0u32; labels.len()];
        for (i, &label) in labels.iter().enumerate() {
            order[next[label as usize]] = i as u32;
            next[label as usize] += 1;
        }
        (counts, starts, order)
    }
}

impl<T: Real> Engine for HostEngine<T> {
    type Labels = Vec<u32>;

    fn len(&self) -> usize {
        self.x.n
    }

    fn points(&self) -> &Tensor {
        self.x.tensor()
    }

    fn distances_from(&self, ids: &[usize], out: &mut Vec<f32>) -> Result<()> {
        out.resize(ids.len() * self.x.n, 0.0);
        match self.kernel_points() {
            Some(x) => self.kernel_distances(x, ids, out),
            _ => self.gemm_distances(ids, out)?,
        }
        Ok(())
    }

    fn assign(&self, centroids: &Tensor) -> Result<Vec<u32>> {
        let c = self.centroid_rows(centroids)?;
        let (n, k) = (self.x.n, c.n);
        let mut guard = self
            .bounds
            .lock()
            .map_err(|_| SladeError::Internal("k-means bounds lock poisoned".into()))?;
        let reusable = guard.as_ref().is_some_and(|b| b.centroids.len() == c.data().len());
        if reusable {
            let b = guard.as_mut().expect("checked above");
            let stale = self.tighten(b, &c)?;
            // When most points are stale, all of them in place beat gathering those.
            let some = (stale.len() * 2 <= n).then_some(stale.as_slice());
            self.assign_rows(b, &c, some)?;
        } else {
            let mut b = Bounds {
                centroids: Vec::new(),
                labels: vec![0; n],
                upper: vec![0.0; n],
                lower: vec![0.0; n],
            };
            self.assign_rows(&mut b, &c, None)?;
            *guard = Some(b);
        }
        let b = guard.as_mut().expect("bounds were just set");
        b.centroids = c.data().to_vec();
        debug_assert_eq!(b.centroids.len(), k * self.x.dim);
        Ok(b.labels.clone())
    }

    fn same_labels(&self, a: &Vec<u32>, b: &Vec<u32>) -> Result<bool> {
        Ok(a == b)
    }

    fn update(&self, labels: &Vec<u32>, centroids: &Tensor) -> Result<(Tensor, f64)> {
        let old = self.centroid_rows(centroids)?;
        let (k, dim) = (old.n, self.x.dim);
        let (mut counts, starts, order) = Self::members(labels, k);
        let mut sums = vec![0.0f64; k * dim];
        sums.par_chunks_mut(dim).enumerate().for_each(|(j, sum)| {
            for &i in &order[starts[j]..starts[j] + counts[j]] {
                for (s, &v) in sum.iter_mut().zip(self.x.row(i as usize)) {
                    *s += v.into();
                }
            }
        });
        let empty: Vec<usize> = (0..k).filter(|&j| counts[j] == 0).collect();
        if !empty.is_empty() {
            // Re-seed each empty cluster with the point farthest from its own centroid.
            let far = farthest_points(
                &(0..self.x.n)
                    .into_par_iter()
                    .map(|i| exact_sq_dist(self.x.row(i), old.row(labels[i] as usize)))
                    .collect::<Vec<f64>>(),
                empty.len(),
            );
            for (&j, &p) in empty.iter().zip(&far) {
                let from = labels[p] as usize;
                let point = self.x.row(p);
                for (l, &v) in point.iter().enumerate() {
                    sums[from * dim + l] -= v.into();
                    sums[j * dim + l] = v.into();
                }
                counts[from] -= 1;
                counts[j] = 1;
            }
        }
        let mut means = vec![T::from_f64(0.0); k * dim];
        let shift: Vec<f64> = means
            .par_chunks_mut(dim)
            .enumerate()
            .map(|(j, mean)| {
                let previous = old.row(j);
                if counts[j] == 0 {
                    mean.copy_from_slice(previous);
                    return 0.0;
                }
                let scale = 1.0 / counts[j] as f64;
                let mut shift = 0.0;
                for l in 0..dim {
                    mean[l] = T::from_f64(sums[j * dim + l] * scale);
                    let d = mean[l].into() - previous[l].into();
                    shift += d * d;
                }
                shift
            })
            .collect();
        let means = Tensor::f_from_slice(&means)?.f_view([k as i64, dim as i64])?;
        Ok((means, shift.iter().sum()))
    }

    fn inertia(&self, labels: &Vec<u32>, centroids: &Tensor) -> Result<f64> {
        let c = self.centroid_rows(centroids)?;
        let partial: Vec<f64> = labels
            .par_chunks(SUM_CHUNK)
            .enumerate()
            .map(|(chunk, ids)| {
                ids.iter()
                    .enumerate()
                    .map(|(r, &j)| {
                        exact_sq_dist(self.x.row(chunk * SUM_CHUNK + r), c.row(j as usize))
                    })
                    .sum::<f64>()
            })
            .collect();
        Ok(partial.iter().sum())
    }

    fn labels_tensor(&self, labels: Vec<u32>) -> Result<Tensor> {
        let labels: Vec<i64> = labels.into_iter().map(i64::from).collect();
        Ok(Tensor::f_from_slice(&labels)?)
    }
}

/// The `m` points with the largest distances, farthest first, ties to the smaller index.
fn farthest_points(distances: &[f64], m: usize) -> Vec<usize> {
    let mut ids: Vec<usize> = (0..distances.len()).collect();
    let order = |a: &usize, b: &usize| distances[*b].total_cmp(&distances[*a]).then(a.cmp(b));
    if m < ids.len() {
        ids.select_nth_unstable_by(m, order);
        ids.truncate(m);
    }
    ids.sort_by(order);
    ids
}

/// Smallest value of `v` (vectorisable: 16 independent lanes).
fn min_value<T: Real>(v: &[T]) -> T {
    const LANES: usize = 16;
    let mut lanes = [T::INFINITY; LANES];
    let mut chunks = v.chunks_exact(LANES);
    for chunk in &mut chunks {
        for l in 0..LANES {
            if chunk[l] < lanes[l] {
                lanes[l] = chunk[l];
            }
        }
    }
    lanes.iter().chain(chunks.remainder()).fold(T::INFINITY, |m, &x| if x < m { x } else { m })
}

/// A point's exact nearest centroid with Hamerly's bounds.
struct Nearest {
    label: u32,
    /// >= the distance to that centroid.
    upper: f64,
    /// <= the distance to every other centroid.
    lower: f64,
}

/// The exact nearest centroid of point `x` (squared norm `x_norm`) from its keys, whose
/// error is at most `error` (see the module docs).
fn nearest<T: Real>(keys: &mut [T], x: &[T], c: &Rows<T>, error: f64, x_norm: f64) -> Nearest {
    let best = min_value(keys);
    let at = keys.iter().position(|&v| v == best).unwrap_or(0);
    let bound = |key: f64, widen: f64| (key + x_norm + widen).max(0.0).sqrt();
    let upper = bound(best.into(), error) * (1.0 + BOUND_SLACK);
    if keys.len() == 1 {
        return Nearest { label: 0, upper, lower: f64::INFINITY };
    }
    keys[at] = T::INFINITY;
    let second = min_value(keys);
    keys[at] = best;
    if second.into() - best.into() > 2.0 * error {
        let lower = bound(second.into(), -error) * (1.0 - BOUND_SLACK);
        return Nearest { label: at as u32, upper, lower };
    }
    let limit = best.into() + 2.0 * error;
    let mut winner = (f64::INFINITY, at as u32);
    for (j, &key) in keys.iter().enumerate() {
        if key.into() <= limit {
            let d = exact_sq_dist(x, c.row(j));
            if d < winner.0 {
                winner = (d, j as u32);
            }
        }
    }
    // Every key is >= best, so best bounds all the other centroids from below.
    Nearest {
        label: winner.1,
        upper: winner.0.sqrt() * (1.0 + BOUND_SLACK),
        lower: bound(best.into(), -error) * (1.0 - BOUND_SLACK),
    }
}

/// Half the distance from each centroid to its nearest other centroid, from below
/// (infinite when k = 1): GEMM keys, widened by their error bound.
fn half_separations<T: Real>(c: &Rows<T>) -> Result<Vec<f64>> {
    let k = c.n;
    let norms = c.sq_norms();
    let c_max = norms.iter().cloned().fold(0.0f64, f64::max).sqrt();
    let error = key_error_factor(c.dim, T::UNIT_ROUNDOFF) * (2.0 * c_max).powi(2);
    let all = c.tensor().f_tr()?;
    let block = block_rows(k, k);
    let mut half = Vec::with_capacity(k);
    for start in (0..k).step_by(block) {
        let rows = block.min(k - start);
        let dots = c
            .tensor()
            .f_narrow(0, start as i64, rows as i64)?
            .f_mm(&all)?
            .f_to_kind(Kind::Double)?
            .f_contiguous()?;
        let mut values = vec![0.0f64; rows * k];
        dots.f_copy_data(&mut values, rows * k)?;
        half.extend(values.chunks(k).enumerate().map(|(r, row)| {
            let j = start + r;
            let nearest = row
                .iter()
                .enumerate()
                .filter(|&(m, _)| m != j)
                .map(|(m, &dot)| norms[j] + norms[m] - 2.0 * dot - error)
                .fold(f64::INFINITY, f64::min);
            0.5 * nearest.max(0.0).sqrt() * (1.0 - BOUND_SLACK)
        }));
    }
    Ok(half)
}

// ---------------------------------------------------------------------------------------
// Device

/// Points on a device other than the CPU; every step runs there in torch ops.
pub(super) struct DeviceEngine {
    x: Tensor,
    norms: Tensor,
    norms_host: Vec<f64>,
    gamma: f64,
}

impl DeviceEngine {
    pub fn new(x: Tensor) -> Result<Self> {
        let (n, dim) = (x.size()[0] as usize, x.size()[1] as usize);
        let block = block_rows(dim, n) as i64;
        let mut parts = Vec::new();
        for i0 in (0..n as i64).step_by(block as usize) {
            let rows = x.f_narrow(0, i0, block.min(n as i64 - i0))?.f_to_kind(Kind::Double)?;
            parts.push(rows.f_square()?.f_sum_dim_intlist(1, false, Kind::Double)?);
        }
        let norms = Tensor::f_cat(&parts, 0)?;
        let host = norms.f_to_device(Device::Cpu)?.f_contiguous()?;
        let mut norms_host = vec![0.0f64; n];
        host.f_copy_data(&mut norms_host, n)?;
        let u = if x.kind() == Kind::Double {
            f64::UNIT_ROUNDOFF
        } else {
            // float32 GEMM, plus TF32 input rounding should the caller have enabled it.
            f32::UNIT_ROUNDOFF + 2.0 * f64::powi(2.0, -11) / (dim as f64 + 16.0)
        };
        Ok(DeviceEngine { gamma: key_error_factor(dim, u), x, norms, norms_host })
    }

    fn n(&self) -> i64 {
        self.x.size()[0]
    }

    /// Exact squared distances (float64) of `rows` (m x dim) to their centroids `c` (m x dim).
    fn paired_sq_dist(rows: &Tensor, c: &Tensor) -> Result<Tensor> {
        Ok(rows
            .f_to_kind(Kind::Double)?
            .f_sub(&c.f_to_kind(Kind::Double)?)?
            .f_square()?
            .f_sum_dim_intlist(1, false, Kind::Double)?)
    }

    /// Exact squared distance of every point to its centroid, blockwise.
    fn own_sq_dist(&self, labels: &Tensor, centroids: &Tensor) -> Result<Tensor> {
        let (n, dim) = (self.n(), self.x.size()[1]);
        let block = block_rows(dim as usize, n as usize) as i64;
        let mut parts = Vec::new();
        for i0 in (0..n).step_by(block as usize) {
            let rows = block.min(n - i0);
            let c = centroids.f_index_select(0, &labels.f_narrow(0, i0, rows)?)?;
            parts.push(Self::paired_sq_dist(&self.x.f_narrow(0, i0, rows)?, &c)?);
        }
        Ok(Tensor::f_cat(&parts, 0)?)
    }
}

impl Engine for DeviceEngine {
    type Labels = Tensor;

    fn len(&self) -> usize {
        self.n() as usize
    }

    fn points(&self) -> &Tensor {
        &self.x
    }

    fn distances_from(&self, ids: &[usize], out: &mut Vec<f32>) -> Result<()> {
        let (kind, dim) = (self.x.kind(), self.x.size()[1]);
        let centres = self.rows(ids)?;
        let id_tensor: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let id_tensor = Tensor::f_from_slice(&id_tensor)?.f_to_device(self.x.device())?;
        let c_norms = self.norms.f_index_select(0, &id_tensor)?;
        let mut d2 = self
            .norms
            .f_to_kind(kind)?
            .f_unsqueeze(0)?
            .f_addmm(&centres.f_mul_scalar(-2.0)?, &self.x.f_tr()?)?
            .f_add(&c_norms.f_to_kind(kind)?.f_unsqueeze(1)?)?;
        let x_max = self.norms_host.iter().cloned().fold(0.0f64, f64::max).sqrt();
        let bound = c_norms
            .f_sqrt()?
            .f_add_scalar(x_max)?
            .f_square()?
            .f_mul_scalar(2.0 * self.gamma)?
            .f_to_kind(kind)?;
        let near = d2.f_le_tensor(&bound.f_unsqueeze(1)?)?.f_nonzero()?;
        let pairs = near.size()[0];
        let chunk = (EXACT_ELEMENTS / dim).max(1);
        for start in (0..pairs).step_by(chunk as usize) {
            let part = near.f_narrow(0, start, chunk.min(pairs - start))?;
            let (rows, cols) = (part.f_select(1, 0)?, part.f_select(1, 1)?);
            let exact = Self::paired_sq_dist(
                &centres.f_index_select(0, &rows)?,
                &self.x.f_index_select(0, &cols)?,
            )?;
            d2 = d2.f_index_put_(&[Some(rows), Some(cols)], &exact.f_to_kind(kind)?, false)?;
        }
        let host = d2.f_to_kind(Kind::Float)?.f_to_device(Device::Cpu)?.f_contiguous()?;
        let len = host.numel();
        out.resize(len, 0.0);
        host.f_copy_data(out, len)?;
        Ok(())
    }

    fn assign(&self, centroids: &Tensor) -> Result<Tensor> {
        let (n, k, dim) = (self.n(), centroids.size()[0], self.x.size()[1]);
        let device = self.x.device();
        let c64 = centroids.f_to_kind(Kind::Double)?;
        let c_norms = c64.f_square()?.f_sum_dim_intlist(1, false, Kind::Double)?;
        let c_max = c_norms.f_max()?.f_double_value(&[])?.sqrt();
        let bias = c_norms.f_to_kind(self.x.kind())?.f_view([1, k])?;
        let neg2_ct = centroids.f_mul_scalar(-2.0)?.f_tr()?;
        let block = block_rows(k as usize, n as usize) as i64;
        let exact_rows = (EXACT_ELEMENTS / (k * dim)).max(1);
        let mut parts = Vec::new();
        for i0 in (0..n).step_by(block as usize) {
            let rows = block.min(n - i0);
            let x_block = self.x.f_narrow(0, i0, rows)?;
            if k == 1 {
                parts.push(Tensor::f_zeros([rows], (Kind::Int64, device))?);
                continue;
            }
            let keys = bias.f_addmm(&x_block, &neg2_ct)?;
            let (top, top_ids) = keys.f_topk(2, 1, false, true)?;
            let top = top.f_to_kind(Kind::Double)?;
            let error = self
                .norms
                .f_narrow(0, i0, rows)?
                .f_sqrt()?
                .f_add_scalar(c_max)?
                .f_square()?
                .f_mul_scalar(self.gamma)?;
            let gap = top.f_select(1, 1)?.f_sub(&top.f_select(1, 0)?)?;
            let ambiguous = gap.f_le_tensor(&error.f_mul_scalar(2.0)?)?;
            let mut labels = top_ids.f_select(1, 0)?.f_contiguous()?;
            let unsure = ambiguous.f_nonzero()?.f_squeeze_dim(1)?;
            let m = unsure.size()[0];
            for s0 in (0..m).step_by(exact_rows as usize) {
                let ids = unsure.f_narrow(0, s0, exact_rows.min(m - s0))?;
                let limit = top
                    .f_select(1, 0)?
                    .f_index_select(0, &ids)?
                    .f_add(&error.f_index_select(0, &ids)?.f_mul_scalar(2.0)?)?;
                let window = keys
                    .f_index_select(0, &ids)?
                    .f_to_kind(Kind::Double)?
                    .f_le_tensor(&limit.f_unsqueeze(1)?)?;
                let exact = x_block
                    .f_index_select(0, &ids)?
                    .f_to_kind(Kind::Double)?
                    .f_unsqueeze(1)?
                    .f_sub(&c64.f_unsqueeze(0)?)?
                    .f_square()?
                    .f_sum_dim_intlist(2, false, Kind::Double)?
                    .f_masked_fill(&window.f_logical_not()?, f64::INFINITY)?;
                let winners = exact.f_argmin(1, false)?;
                labels = labels.f_index_put_(&[Some(ids)], &winners, false)?;
            }
            parts.push(labels);
        }
        Ok(Tensor::f_cat(&parts, 0)?)
    }

    fn same_labels(&self, a: &Tensor, b: &Tensor) -> Result<bool> {
        Ok(a.f_equal(b)?)
    }

    fn update(&self, labels: &Tensor, centroids: &Tensor) -> Result<(Tensor, f64)> {
        let (n, k, dim) = (self.n(), centroids.size()[0], self.x.size()[1]);
        let device = self.x.device();
        let counts = labels.f_bincount(None::<Tensor>, k)?;
        // One-hot GEMM sums: deterministic on a device, unlike atomic index_add.
        let mut sums = Tensor::f_zeros([k, dim], (Kind::Double, device))?;
        let block = block_rows(k as usize, n as usize) as i64;
        let cluster_ids = Tensor::f_arange(k, (Kind::Int64, device))?.f_unsqueeze(0)?;
        for i0 in (0..n).step_by(block as usize) {
            let rows = block.min(n - i0);
            let one_hot = labels
                .f_narrow(0, i0, rows)?
                .f_unsqueeze(1)?
                .f_eq_tensor(&cluster_ids)?
                .f_to_kind(Kind::Double)?;
            let x_block = self.x.f_narrow(0, i0, rows)?.f_to_kind(Kind::Double)?;
            sums = sums.f_add(&one_hot.f_tr()?.f_mm(&x_block)?)?;
        }
        let empty_mask = counts.f_eq(0)?;
        let n_empty = empty_mask.f_sum(Kind::Int64)?.f_int64_value(&[])?;
        if n_empty > 0 {
            let distances = self.own_sq_dist(labels, centroids)?;
            // Stable descending sort: farthest first, ties to the smaller point index.
            let (_, order) = distances.f_sort_stable(true, 0, true)?;
            let far = order.f_narrow(0, 0, n_empty)?.f_to_device(Device::Cpu)?;
            let empty = empty_mask.f_nonzero()?.f_squeeze_dim(1)?.f_to_device(Device::Cpu)?;
            for e in 0..n_empty {
                let p = far.f_int64_value(&[e])?;
                let j = empty.f_int64_value(&[e])?;
                let from = labels.f_int64_value(&[p])?;
                let point = self.x.f_get(p)?.f_to_kind(Kind::Double)?;
                let (mut from_sum, mut new_sum) = (sums.f_get(from)?, sums.f_get(j)?);
                let _ = from_sum.f_sub_(&point)?;
                new_sum.f_copy_(&point)?;
                let (mut from_count, mut new_count) = (counts.f_get(from)?, counts.f_get(j)?);
                let _ = from_count.f_sub_scalar_(1)?;
                let _ = new_count.f_fill_(1)?;
            }
        }
        let c64 = centroids.f_to_kind(Kind::Double)?;
        let filled = counts.f_gt(0)?.f_unsqueeze(1)?;
        let means = sums
            .f_div(&counts.f_clamp_min(1)?.f_to_kind(Kind::Double)?.f_unsqueeze(1)?)?
            .f_where_self(&filled, &c64)?
            .f_to_kind(self.x.kind())?;
        let shift = means
            .f_to_kind(Kind::Double)?
            .f_sub(&c64)?
            .f_square()?
            .f_sum(Kind::Double)?
            .f_double_value(&[])?;
        Ok((means, shift))
    }

    fn inertia(&self, labels: &Tensor, centroids: &Tensor) -> Result<f64> {
        Ok(self.own_sq_dist(labels, centroids)?.f_sum(Kind::Double)?.f_double_value(&[])?)
    }

    fn labels_tensor(&self, labels: Tensor) -> Result<Tensor> {
        Ok(labels)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_points as points;
    use super::*;

    fn engine(x: &Tensor) -> HostEngine<f32> {
        let size = x.size();
        HostEngine::new(Rows::new(x.shallow_clone(), size[0] as usize, size[1] as usize)).unwrap()
    }

    /// The nearest centroid of each point by float64 brute force (ties to the smaller id).
    fn brute_force_labels(x: &Tensor, centroids: &Tensor) -> Vec<i64> {
        let d = Tensor::cdist(&x.to_kind(Kind::Double), &centroids.to_kind(Kind::Double), 2.0, 0);
        Vec::<i64>::try_from(d.argmin(1, false)).unwrap()
    }

    /// The fused tile kernel (where the CPU has AVX-512) against torch's GEMM, on depths
    /// that leave partial kernel blocks: the seeding's distances agree within the keys'
    /// error bound and are exactly 0 from a point to itself and its duplicate, and both
    /// paths assign every point to its float64-nearest centroid, before and after the
    /// centroids move (Hamerly's bounds).
    #[test]
    fn kernel_and_gemm_products_agree() {
        if !fused_tile::available(16) {
            eprintln!("no AVX-512 here: k-means uses torch's GEMM only, nothing to compare");
            return;
        }
        for (n, dim, k, seed) in [(700, 12, 13, 1), (530, 40, 37, 2), (300, 515, 25, 3)] {
            let x = points(n, dim, seed);
            let (fused, gemm) = (engine(&x), engine(&x).without_kernel());
            assert!(fused.kernel && !gemm.kernel);
            let n = n as usize;
            let ids: Vec<usize> = (0..n).step_by(7).chain([5]).collect();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            fused.distances_from(&ids, &mut a).unwrap();
            gemm.distances_from(&ids, &mut b).unwrap();
            for (r, &id) in ids.iter().enumerate() {
                let tolerance = 2.0 * fused.exact_below(id);
                for j in 0..n {
                    let (da, db) = (a[r * n + j], b[r * n + j]);
                    let case = format!("dim {dim}, centre {id}, point {j}: {da} vs {db}");
                    assert!(f64::from((da - db).abs()) <= tolerance, "{case}");
                }
                assert_eq!((a[r * n + id], b[r * n + id]), (0.0, 0.0), "dim {dim}, point {id}");
            }
            let last = (ids.len() - 1) * n;
            assert_eq!((a[last], b[last]), (0.0, 0.0), "point 5 repeats point 0");
            let centroids = x.narrow(0, 10, k).copy();
            let moved = &centroids + Tensor::randn([k, dim], (Kind::Float, Device::Cpu)) * 0.1;
            for c in [&centroids, &moved] {
                let want = brute_force_labels(&x, c);
                let labels = [fused.assign(c).unwrap(), gemm.assign(c).unwrap()];
                for (path, labels) in ["kernel", "gemm"].iter().zip(labels) {
                    let labels: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
                    assert_eq!(labels, want, "{path}, dim {dim}");
                }
            }
        }
    }
}
