//! The k-NN tile product with its scan in the kernel (AVX-512): each `MR x NR` block of dot
//! products is summed in registers by FMA over the whole depth, and its keys are compared
//! there with the thresholds of the rows' and the columns' candidate lists. Only keys below
//! a threshold leave the registers, so the tile is never written to memory and read back
//! (at 200,000 x 128 that write and read of the 4 MiB tiles took a fifth of the k-NN's time).
//!
//! The keys are those of the unfused path (`norm - 2 dot`, one rounding, as `topk` computes
//! them) and the dot products are float32 sums in one order, so the k-NN's error bound holds
//! as it is. Keys reach a list in another order than in the unfused scan, which the lists'
//! invariant allows: every key a list rejects is >= the largest it keeps.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use crate::retrieval::topk::RowList;

/// Rows of one block of the kernel.
const MR: usize = 12;

/// Columns of one block of the kernel: two vectors of 16 floats.
const NR: usize = 32;

/// The deepest rows the kernel takes: it sums each block over the whole depth before the
/// scan, reading `MR` rows and a column panel of this depth (48 KiB and 128 KiB here).
const MAX_DIM: usize = 1024;

/// Whether `scan_product` runs here for rows of `dim` floats.
pub fn available(dim: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        dim <= MAX_DIM && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = dim;
        false
    }
}

/// One tile: its rows and columns (row-major, `dim` floats each), their squared norms, the
/// ids of their first entries and, when given, the id of a column each row's list must not
/// take (the row itself in a self-search; any id, in the tile or not).
pub struct Operands<'a> {
    pub rows: &'a [f32],
    pub cols: &'a [f32],
    pub dim: usize,
    pub row_norms: &'a [f32],
    pub col_norms: &'a [f32],
    pub first_row: u32,
    pub first_col: u32,
    pub skip: Option<&'a [usize]>,
}

/// 16 floats on one cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// Columns packed for the kernel: panels of `NR` columns, each stored depth-major (`dim x
/// NR`), the last padded with zero columns, and the columns' squared norms, padded with
/// +inf (no row keeps a padding column).
#[derive(Default)]
pub struct Panels {
    lines: Vec<Line>,
    norms: Vec<f32>,
    len: usize,
    dim: usize,
}

impl Panels {
    /// `cols` (row-major, `dim` floats each) and their squared norms, packed.
    pub fn new(cols: &[f32], norms: &[f32], dim: usize) -> Panels {
        let mut panels = Panels::default();
        panels.pack(cols, norms, dim);
        panels
    }

    /// `new`, reusing this one's memory.
    pub fn pack(&mut self, cols: &[f32], norms: &[f32], dim: usize) {
        assert_eq!(cols.len(), norms.len() * dim);
        pack(cols, dim, NR, &mut self.lines);
        padded(norms, norms.len().div_ceil(NR) * NR, f32::INFINITY, &mut self.norms);
        (self.len, self.dim) = (norms.len(), dim);
    }

    /// The packed columns (all panels, padding included).
    fn floats(&self) -> *const f32 {
        self.lines.as_ptr().cast::<f32>()
    }
}

/// A worker's buffers, reused from tile to tile: the packed columns, the padded last rows,
/// the columns' thresholds and the keys staged for the columns' lists.
#[derive(Default)]
pub struct Scratch {
    last_rows: Vec<f32>,
    panels: Panels,
    col_thresholds: Vec<f32>,
    staged: Vec<Staged>,
}

/// Offers every key of the tile: to the list of its row (key `col_norms[j] - 2 dot`, id
/// `first_col + j`) and, when `cols` is given, to the list of its column (`row_norms[i] -
/// 2 dot`, id `first_row + i`). Equal in what the lists keep to computing the tile and
/// scanning each row and each column (`topk::scan_tile`). Needs `available(t.dim)`.
pub fn scan_product(
    t: &Operands<'_>,
    rows: &mut [RowList<'_>],
    cols: Option<&mut [RowList<'_>]>,
    scratch: &mut Scratch,
) {
    assert!(available(t.dim), "the fused tile kernel needs AVX-512 and dim <= {MAX_DIM}");
    assert_eq!(rows.len(), t.row_norms.len());
    assert_eq!(t.rows.len(), rows.len() * t.dim);
    assert_eq!(t.cols.len(), t.col_norms.len() * t.dim);
    assert!(cols.as_ref().is_none_or(|c| c.len() == t.col_norms.len()));
    assert!(t.skip.is_none_or(|skip| skip.len() == rows.len()));
    #[cfg(target_arch = "x86_64")]
    // Sound: the CPU has AVX-512F (`available`); the operands' lengths are checked above.
    unsafe {
        x86::scan_product(t, rows, cols, scratch)
    }
}

/// Writes `out[i][j] = norm_j - 2 rows_i . col_j` for the packed columns `cols` (`rows`
/// row-major, `out` one slice of a key per column for each row): the keys of
/// `scan_product`, each dot product summed in the same order, all kept. Needs
/// `available(cols.dim)`.
pub fn product_keys(rows: &[f32], cols: &Panels, out: &mut [&mut [f32]]) {
    let dim = cols.dim;
    assert!(available(dim), "the fused tile kernel needs AVX-512 and dim <= {MAX_DIM}");
    assert_eq!(rows.len(), out.len() * dim);
    assert!(out.iter().all(|row| row.len() == cols.len));
    #[cfg(target_arch = "x86_64")]
    // Sound: the CPU has AVX-512F (`available`); the operands' lengths are checked above.
    unsafe {
        x86::product_keys(rows, cols, out)
    }
}

/// Packs `rows` (`dim` floats each) into panels of `width` rows, each stored depth-major
/// (`dim x width`; entry `k * width + lane` of panel `p` is entry `k` of row `p * width +
/// lane`), the last panel padded with zero rows.
fn pack(rows: &[f32], dim: usize, width: usize, panels: &mut Vec<Line>) {
    let n = rows.len() / dim;
    let floats = n.div_ceil(width) * width * dim;
    if panels.len() * 16 < floats {
        panels.resize(floats.div_ceil(16), Line([0.0; 16]));
    }
    // Sound: a Line is 16 contiguous floats; `panels` holds at least `floats` of them.
    let flat = unsafe { std::slice::from_raw_parts_mut(panels.as_mut_ptr().cast::<f32>(), floats) };
    for (i, row) in rows.chunks_exact(dim).enumerate() {
        let panel = &mut flat[i / width * width * dim..];
        for (k, &v) in row.iter().enumerate() {
            panel[k * width + i % width] = v;
        }
    }
    for i in n..n.div_ceil(width) * width {
        let panel = &mut flat[i / width * width * dim..];
        for k in 0..dim {
            panel[k * width + i % width] = 0.0;
        }
    }
}

/// `values` padded with `fill` to `len` entries, in `out`.
fn padded(values: &[f32], len: usize, fill: f32, out: &mut Vec<f32>) {
    out.clear();
    out.extend_from_slice(values);
    out.resize(len, fill);
}

/// A key found below a column's threshold, to be offered to that column's list.
#[derive(Clone, Copy)]
struct Staged {
    col: u32,
    key: f32,
    id: u32,
}

/// The keys of row `i` of one block that are below their thresholds: `row_keys[l]` (column
/// `j0 + l`) where bit `l` of `below_row` is set, offered to the row's list at once (it stays
/// in cache while its row is swept, and its threshold falls as it fills), and `col_keys[l]`
/// where bit `l` of `below_col` is set, staged for column `j0 + l`'s list. Rare after the
/// lists' first keys, so kept out of the kernel's loop.
#[cold]
#[inline(never)]
fn offer_keys(
    row: &mut RowList<'_>,
    staged: &mut Vec<Staged>,
    (i, j0): (usize, usize),
    (row_keys, mut below_row): ([f32; NR], u32),
    (col_keys, mut below_col): ([f32; NR], u32),
    (first_row, first_col): (u32, u32),
) {
    while below_row != 0 {
        let l = below_row.trailing_zeros() as usize;
        below_row &= below_row - 1;
        row.offer(row_keys[l], first_col + (j0 + l) as u32);
    }
    while below_col != 0 {
        let l = below_col.trailing_zeros() as usize;
        below_col &= below_col - 1;
        staged.push(Staged { col: (j0 + l) as u32, key: col_keys[l], id: first_row + i as u32 });
    }
}

/// Offers the staged keys to their columns' lists in one tight loop (the lists' ends are
/// scattered over memory: there the CPU overlaps their cache misses, which it cannot do
/// between the kernel's blocks), and updates the columns' thresholds.
fn offer_staged(staged: &mut Vec<Staged>, cols: &mut [RowList<'_>], col_thresholds: &mut [f32]) {
    for s in staged.iter() {
        let list = &mut cols[s.col as usize];
        list.offer(s.key, s.id);
        col_thresholds[s.col as usize] = list.threshold();
    }
    staged.clear();
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{offer_keys, offer_staged, padded, Operands, Panels, RowList, Scratch, MR, NR};
    use std::arch::x86_64::*;

    /// The `MR x NR` dot products of `MR` rows from `a` (row-major, `dim` wide) and column
    /// panel `b` (`dim x NR`): `acc[r][v]` holds columns `16 v ..16 v + 16` of row `r`.
    #[inline(always)]
    unsafe fn block(a: *const f32, b: *const f32, dim: usize) -> [[__m512; 2]; MR] {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for k in 0..dim {
            let b0 = _mm512_load_ps(b.add(k * NR));
            let b1 = _mm512_load_ps(b.add(k * NR + 16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.add(r * dim + k));
                acc[0] = _mm512_fmadd_ps(x, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(x, b1, acc[1]);
            }
        }
        acc
    }

    /// The `MR` rows from `i0` of `rows` (`dim` wide): in place, or the last ones padded
    /// with zero rows in `last`.
    fn block_rows(rows: &[f32], i0: usize, dim: usize, last: &mut Vec<f32>) -> *const f32 {
        match rows.get(i0 * dim..(i0 + MR) * dim) {
            Some(rows) => rows.as_ptr(),
            None => {
                padded(&rows[i0 * dim..], MR * dim, 0.0, last);
                last.as_ptr()
            }
        }
    }

    /// `super::product_keys`, compiled for AVX-512: for each `MR` rows, the block of each
    /// column panel, its keys stored (the lanes past the last column masked off).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn product_keys(rows: &[f32], cols: &Panels, out: &mut [&mut [f32]]) {
        let (h, w, dim) = (out.len(), cols.len, cols.dim);
        let (b, mut last_rows) = (cols.floats(), Vec::new());
        let two = _mm512_set1_ps(2.0);
        for i0 in (0..h).step_by(MR) {
            let a = block_rows(rows, i0, dim, &mut last_rows);
            for j0 in (0..w).step_by(NR) {
                let norms = [0, 16].map(|v| _mm512_loadu_ps(cols.norms.as_ptr().add(j0 + v)));
                let acc = block(a, b.add(j0 * dim), dim);
                let mask = (u64::MAX >> (64 - (w - j0).min(NR))) as u32;
                for (r, acc) in acc.iter().enumerate().take(h - i0) {
                    let dst = out[i0 + r].as_mut_ptr().add(j0);
                    let keys = [0, 1].map(|v| _mm512_fnmadd_ps(two, acc[v], norms[v]));
                    // Masked-off lanes are neither written nor touched.
                    _mm512_mask_storeu_ps(dst, mask as u16, keys[0]);
                    _mm512_mask_storeu_ps(dst.add(16), (mask >> 16) as u16, keys[1]);
                }
            }
        }
    }

    /// `super::scan_product`, compiled for AVX-512: for each `MR` rows (read in place, so
    /// they stay in L1), the block of each column panel (packed per tile, in L2), then its
    /// keys against the rows' and the columns' thresholds.
    /// Padding columns have an infinite norm (no row keeps them) and a -inf threshold (they
    /// keep nothing); padding rows are not offered.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scan_product(
        t: &Operands<'_>,
        rows: &mut [RowList<'_>],
        mut cols: Option<&mut [RowList<'_>]>,
        s: &mut Scratch,
    ) {
        let (h, w, dim) = (t.row_norms.len(), t.col_norms.len(), t.dim);
        let wide = w.div_ceil(NR) * NR;
        s.panels.pack(t.cols, t.col_norms, dim);
        let b = s.panels.floats();
        s.col_thresholds.clear();
        s.col_thresholds.resize(wide, f32::NEG_INFINITY);
        if let Some(cols) = cols.as_deref() {
            for (threshold, list) in s.col_thresholds.iter_mut().zip(cols.iter()) {
                *threshold = list.threshold();
            }
        }
        let two = _mm512_set1_ps(2.0);
        for i0 in (0..h).step_by(MR) {
            let a = block_rows(t.rows, i0, dim, &mut s.last_rows);
            for j0 in (0..wide).step_by(NR) {
                let panel = b.add(j0 * dim);
                let norms = [0, 16].map(|v| _mm512_loadu_ps(s.panels.norms.as_ptr().add(j0 + v)));
                let acc = block(a, panel, dim);
                // The columns' thresholds change only after the sweep (`offer_staged`).
                let col_thresholds =
                    [0, 16].map(|v| _mm512_loadu_ps(s.col_thresholds.as_ptr().add(j0 + v)));
                for (r, acc) in acc.iter().enumerate().take(h - i0) {
                    let i = i0 + r;
                    // The column the row must not take, relative to this block (or huge).
                    let skip = t.skip.map_or(usize::MAX, |skip| {
                        skip[i].wrapping_sub(t.first_col as usize).wrapping_sub(j0)
                    });
                    let row_threshold = _mm512_set1_ps(rows[i].threshold());
                    let row_norm = _mm512_set1_ps(t.row_norms[i]);
                    let row_keys = [0, 1].map(|v| _mm512_fnmadd_ps(two, acc[v], norms[v]));
                    let col_keys = [0, 1].map(|v| _mm512_fnmadd_ps(two, acc[v], row_norm));
                    let below = |keys: [__m512; 2], limits: [__m512; 2]| {
                        let low = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(keys[0], limits[0]);
                        let high = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(keys[1], limits[1]);
                        u32::from(low) | u32::from(high) << 16
                    };
                    let mut below_row = below(row_keys, [row_threshold; 2]);
                    if skip < NR {
                        below_row &= !(1 << skip);
                    }
                    let below_col = below(col_keys, col_thresholds);
                    if below_row | below_col != 0 {
                        let (mut rk, mut ck) = ([0f32; NR], [0f32; NR]);
                        for v in 0..2 {
                            _mm512_storeu_ps(rk.as_mut_ptr().add(16 * v), row_keys[v]);
                            _mm512_storeu_ps(ck.as_mut_ptr().add(16 * v), col_keys[v]);
                        }
                        offer_keys(
                            &mut rows[i],
                            &mut s.staged,
                            (i, j0),
                            (rk, below_row),
                            (ck, below_col),
                            (t.first_row, t.first_col),
                        );
                    }
                }
            }
            if let Some(cols) = cols.as_deref_mut() {
                offer_staged(&mut s.staged, cols, &mut s.col_thresholds);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retrieval::topk::CandidateLists;

    /// Uniform floats in [-0.5, 0.5) from a fixed linear congruential sequence.
    fn uniform(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// Lists starting at thresholds that are +inf, -inf or finite (by index).
    fn lists(n: usize, c: usize, finite: &[f32]) -> CandidateLists {
        let thresholds = (0..n)
            .map(|i| match i % 3 {
                0 => f32::INFINITY,
                1 => f32::NEG_INFINITY,
                _ => finite[i],
            })
            .collect();
        CandidateLists::with_thresholds(c, thresholds)
    }

    /// The fused kernel against its definition: the dot products summed by scalar FMA in the
    /// kernel's order (the same bits), scanned row by row and column by column. Sizes that
    /// leave partial blocks on both sides; c = 5 (lists compact, thresholds fall) and c = 300
    /// (every key below the start is kept, so a padding key would show); without and with
    /// columns the rows must skip (in this tile or not).
    #[test]
    fn fused_scan_keeps_what_scanning_the_product_keeps() {
        if !available(40) {
            eprintln!("no AVX-512 here: the fused kernel is not used, nothing to test");
            return;
        }
        let (h, w, dim) = (37, 75, 40);
        let (a, b) = (uniform(h * dim, 1), uniform(w * dim, 2));
        let (row_norms, col_norms) = (uniform(h, 3), uniform(w, 4));
        let dots: Vec<Vec<f32>> = (0..h)
            .map(|i| {
                let row = &a[i * dim..(i + 1) * dim];
                let col = |j: usize| &b[j * dim..(j + 1) * dim];
                (0..w)
                    .map(|j| row.iter().zip(col(j)).fold(0.0, |s, (x, y)| x.mul_add(*y, s)))
                    .collect()
            })
            .collect();
        // Odd rows skip a column of the tile (the last one included), even rows an id before it.
        let skips: Vec<usize> =
            (0..h).map(|i| if i % 2 == 1 { 7000 + (i * 7 + 74) % w } else { i }).collect();
        let starts = uniform(h.max(w), 5);
        for (c, with_columns, skip) in [5, 300]
            .into_iter()
            .flat_map(|c| [true, false].map(|columns| (c, columns)))
            .flat_map(|(c, columns)| [None, Some(skips.as_slice())].map(|skip| (c, columns, skip)))
        {
            let operands = Operands {
                rows: &a,
                cols: &b,
                dim,
                row_norms: &row_norms,
                col_norms: &col_norms,
                first_row: 100,
                first_col: 7000,
                skip,
            };
            let (mut rows, mut cols) = (lists(h, c, &starts), lists(w, c, &starts));
            let mut col_lists = cols.rows_mut(0, w);
            let col_lists = with_columns.then_some(col_lists.as_mut_slice());
            scan_product(&operands, &mut rows.rows_mut(0, h), col_lists, &mut Scratch::default());
            let (mut want_rows, mut want_cols) = (lists(h, c, &starts), lists(w, c, &starts));
            for (i, list) in want_rows.rows_mut(0, h).iter_mut().enumerate() {
                let skip = skip.map(|s| s[i]).filter(|&id| id >= 7000).map(|id| id - 7000);
                list.scan(&dots[i], &col_norms, 7000, skip);
            }
            if with_columns {
                for (j, list) in want_cols.rows_mut(0, w).iter_mut().enumerate() {
                    let column: Vec<f32> = dots.iter().map(|row| row[j]).collect();
                    list.scan(&column, &row_norms, 100, None);
                }
            }
            let case = format!("c {c}, columns {with_columns}, skip {}", skip.is_some());
            for (i, row) in rows_sorted(&rows, h).iter().enumerate() {
                assert_eq!(*row, want_rows.sorted_row(i), "{case}: row {i}");
            }
            for (j, col) in rows_sorted(&cols, w).iter().enumerate() {
                assert_eq!(*col, want_cols.sorted_row(j), "{case}: column {j}");
            }
        }
    }

    /// `product_keys` against its definition: `norm_j - 2 dot` with each dot product summed
    /// by scalar FMA in the kernel's order (the same bits), on sizes that leave partial
    /// blocks on both sides, each column written and none past it.
    #[test]
    fn product_keys_are_the_keys_of_the_product() {
        if !available(40) {
            eprintln!("no AVX-512 here: the fused kernel is not used, nothing to test");
            return;
        }
        for (h, w, dim) in [(37, 75, 40), (12, 32, 17), (1, 5, 3), (25, 64, 128)] {
            let (a, b, norms) = (uniform(h * dim, 1), uniform(w * dim, 2), uniform(w, 4));
            let panels = Panels::new(&b, &norms, dim);
            // One guard entry past each row's columns must stay untouched.
            let mut out = vec![f32::NAN; h * (w + 1)];
            let mut rows: Vec<&mut [f32]> =
                out.chunks_mut(w + 1).map(|row| &mut row[..w]).collect();
            product_keys(&a, &panels, &mut rows);
            for i in 0..h {
                for j in 0..w {
                    let (row, col) = (&a[i * dim..(i + 1) * dim], &b[j * dim..(j + 1) * dim]);
                    let dot = row.iter().zip(col).fold(0.0f32, |s, (x, y)| x.mul_add(*y, s));
                    let want = norms[j] - 2.0 * dot;
                    let got = out[i * (w + 1) + j];
                    assert_eq!(got.to_bits(), want.to_bits(), "{h} x {w} x {dim}: ({i}, {j})");
                }
                assert!(out[i * (w + 1) + w].is_nan(), "{h} x {w} x {dim}: row {i} overran");
            }
        }
    }

    fn rows_sorted(lists: &CandidateLists, n: usize) -> Vec<Vec<(f32, u32)>> {
        (0..n).map(|i| lists.sorted_row(i)).collect()
    }
}
