//! Bounded per-row candidate lists for the blocked k-NN scan.
//!
//! Each row keeps at least its `c` smallest keys seen so far: keys below the row's threshold
//! are appended to a buffer of `c + c/2 + 32` slots; when it is full, a selection keeps the `c`
//! smallest and the threshold drops to the largest of them. A key is therefore rejected with
//! one comparison, and (the invariant the exact re-rank relies on) every key ever rejected or
//! dropped is >= the largest key finally kept. A row may start at a finite threshold
//! (`with_thresholds`); the invariant still holds, but it keeps only the keys below it and
//! may end with fewer than `c`. Keys are approximate; candidates are re-ranked exactly
//! afterwards. A candidate is stored as one `u64` whose integer order is (key, id) order,
//! so selections and sorts compare integers.

/// Keys are compared 64 at a time into a bit mask, and only the keys below their list's
/// threshold (the set bits) touch a buffer: after the first keys a row has seen, most
/// chunks have none.
pub const CHUNK: usize = 64;

/// The candidate lists of all rows, in one flat buffer.
pub struct CandidateLists {
    c: usize,
    slots: usize,
    /// Candidates as `pack`ed words.
    items: Vec<u64>,
    lens: Vec<u32>,
    thresholds: Vec<f32>,
}

/// A candidate as one word whose integer order is the order of (key by `f32::total_cmp`,
/// id): the key's bits above the id, negative keys with every bit flipped, the others with
/// the sign bit set.
#[inline(always)]
fn pack(key: f32, id: u32) -> u64 {
    let bits = key.to_bits();
    let ordered = if bits >> 31 == 1 { !bits } else { bits | 1 << 31 };
    u64::from(ordered) << 32 | u64::from(id)
}

/// The (key, id) of a `pack`ed candidate.
#[inline(always)]
fn unpack(word: u64) -> (f32, u32) {
    let ordered = (word >> 32) as u32;
    let bits = if ordered >> 31 == 1 { ordered & !(1 << 31) } else { !ordered };
    (f32::from_bits(bits), word as u32)
}

/// One row's list, borrowed mutably from a `CandidateLists`.
pub struct RowList<'a> {
    c: usize,
    items: &'a mut [u64],
    len: &'a mut u32,
    threshold: &'a mut f32,
}

impl CandidateLists {
    pub fn new(rows: usize, c: usize) -> Self {
        let slots = c + c / 2 + 32;
        CandidateLists {
            c,
            slots,
            items: vec![0; rows * slots],
            lens: vec![0; rows],
            thresholds: vec![f32::INFINITY; rows],
        }
    }

    /// Lists whose rows start at these thresholds instead of +Inf: a key at or above its
    /// row's threshold is never kept, so the invariant holds, but a row may end with fewer
    /// than `c` candidates (`short_rows`) and must then be searched afresh.
    pub fn with_thresholds(c: usize, thresholds: Vec<f32>) -> Self {
        let rows = thresholds.len();
        CandidateLists { thresholds, ..CandidateLists::new(rows, c) }
    }

    /// The rows that hold fewer than `c` candidates, in order.
    pub fn short_rows(&self) -> Vec<usize> {
        let c = self.c as u32;
        self.lens.iter().enumerate().filter(|&(_, &len)| len < c).map(|(row, _)| row).collect()
    }

    /// Replaces the candidates of `row` by those of row `other_row` of `other` (lists of the
    /// same `c`).
    pub fn replace_row(&mut self, row: usize, other: &CandidateLists, other_row: usize) {
        assert_eq!(self.slots, other.slots, "replace_row takes lists of the same c");
        let (to, from) = (row * self.slots, other_row * other.slots);
        self.items[to..to + self.slots].copy_from_slice(&other.items[from..from + other.slots]);
        self.lens[row] = other.lens[other_row];
        self.thresholds[row] = other.thresholds[other_row];
    }

    /// Rows that each hold exactly `c` candidates (keys and ids row-major, `rows x c`).
    pub fn from_full(rows: usize, c: usize, keys: Vec<f32>, ids: Vec<u32>) -> Self {
        CandidateLists {
            c,
            slots: c,
            items: keys.into_iter().zip(ids).map(|(key, id)| pack(key, id)).collect(),
            lens: vec![c as u32; rows],
            thresholds: vec![f32::INFINITY; rows],
        }
    }

    /// Mutable lists for the rows `start..end`, in order (disjoint, so usable in parallel).
    pub fn rows_mut(&mut self, start: usize, end: usize) -> Vec<RowList<'_>> {
        let (c, slots) = (self.c, self.slots);
        let items = self.items[start * slots..end * slots].chunks_mut(slots);
        let lens = self.lens[start..end].iter_mut();
        let thresholds = self.thresholds[start..end].iter_mut();
        items
            .zip(lens.zip(thresholds))
            .map(|(items, (len, threshold))| RowList { c, items, len, threshold })
            .collect()
    }

    /// Offers every candidate of `other` to the rows from `first_row` on (row `r` of `other`
    /// to row `first_row + r`): the merge of lists that saw disjoint references.
    pub fn absorb(&mut self, first_row: usize, other: &CandidateLists) {
        let rows = other.lens.len();
        for (r, list) in self.rows_mut(first_row, first_row + rows).iter_mut().enumerate() {
            let base = r * other.slots;
            for &word in &other.items[base..base + other.lens[r] as usize] {
                let (key, id) = unpack(word);
                if key < *list.threshold {
                    list.push(key, id);
                }
            }
        }
    }

    /// The candidates of `row` sorted by (key, id): at most `c`, all of them when the row
    /// saw fewer. Every key not returned is >= the last key returned.
    pub fn sorted_row(&self, row: usize) -> Vec<(f32, u32)> {
        let base = row * self.slots;
        let len = self.lens[row] as usize;
        let mut items = self.items[base..base + len].to_vec();
        if items.len() > self.c {
            items.select_nth_unstable(self.c - 1);
            items.truncate(self.c);
        }
        items.sort_unstable();
        items.into_iter().map(unpack).collect()
    }
}

impl RowList<'_> {
    #[inline]
    fn push(&mut self, key: f32, id: u32) {
        let len = *self.len as usize;
        self.items[len] = pack(key, id);
        *self.len += 1;
        if len + 1 == self.items.len() {
            self.compact();
        }
    }

    /// Keeps the `c` smallest keys and lowers the threshold to the largest of them.
    fn compact(&mut self) {
        let len = *self.len as usize;
        let (_, &mut largest_kept, _) = self.items[..len].select_nth_unstable(self.c - 1);
        *self.len = self.c as u32;
        *self.threshold = unpack(largest_kept).0;
    }

    /// The key a candidate must be below to be kept.
    #[inline(always)]
    pub fn threshold(&self) -> f32 {
        *self.threshold
    }

    /// Keeps (`key`, `id`) when the key is below the threshold.
    #[inline(always)]
    pub fn offer(&mut self, key: f32, id: u32) {
        if key < *self.threshold {
            self.push(key, id);
        }
    }

    /// Offers the keys `base[j] - 2 * dots[j]` with ids `first_id + j`, skipping `skip`.
    #[inline]
    pub fn scan(&mut self, dots: &[f32], base: &[f32], first_id: u32, skip: Option<usize>) {
        scan_row(self, dots, base, first_id, skip);
    }
}

/// Bit `l` set where the key `base[l] - 2 dots[l]` (written to `keys[l]`) is below
/// `thresholds[l]`: one pass over a chunk, after which only the set bits are visited.
/// `Lanes` is one value per key (`&[f32; CHUNK]`) or one for all (`f32`). The AVX-512 and
/// AVX2 forms compute the same keys (`2 dots` is exact, so one rounding either way) and the
/// same comparison (false for NaN).
trait Lanes: Copy {
    fn lane(self, l: usize) -> f32;
}

impl Lanes for f32 {
    #[inline(always)]
    fn lane(self, _: usize) -> f32 {
        self
    }
}

impl Lanes for &[f32; CHUNK] {
    #[inline(always)]
    fn lane(self, l: usize) -> f32 {
        self[l]
    }
}

/// The portable form of the mask (see `Lanes`).
#[inline(always)]
fn mask_portable(
    dots: &[f32; CHUNK],
    base: impl Lanes,
    thresholds: impl Lanes,
    keys: &mut [f32; CHUNK],
) -> u64 {
    let mut mask = 0u64;
    for l in 0..CHUNK {
        keys[l] = base.lane(l) - 2.0 * dots[l];
        mask |= u64::from(keys[l] < thresholds.lane(l)) << l;
    }
    mask
}

/// The scan loops, each instantiated per instruction set (`x86`) with its mask.
#[inline(always)]
fn scan_row_with<M>(
    list: &mut RowList<'_>,
    dots: &[f32],
    base: &[f32],
    first_id: u32,
    skip: Option<usize>,
    mask_of: M,
) where
    M: Fn(&[f32; CHUNK], &[f32; CHUNK], f32, &mut [f32; CHUNK]) -> u64,
{
    let mut keys = [0f32; CHUNK];
    let full = dots.len() / CHUNK * CHUNK;
    let offer = |start: usize, mut mask: u64, keys: &[f32; CHUNK], list: &mut RowList<'_>| {
        while mask != 0 {
            let l = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if keys[l] < *list.threshold && Some(start + l) != skip {
                list.push(keys[l], first_id + (start + l) as u32);
            }
        }
    };
    for start in (0..full).step_by(CHUNK) {
        let d: &[f32; CHUNK] = dots[start..start + CHUNK].try_into().expect("a whole chunk");
        let b: &[f32; CHUNK] = base[start..start + CHUNK].try_into().expect("a whole chunk");
        let mask = mask_of(d, b, *list.threshold, &mut keys);
        offer(start, mask, &keys, list);
    }
    if full < dots.len() {
        let (d, b) = (padded(&dots[full..], 0.0), padded(&base[full..], f32::INFINITY));
        let mask = mask_of(&d, &b, *list.threshold, &mut keys);
        offer(full, mask, &keys, list);
    }
}

/// A row-major `row_norms.len() x col_norms.len()` block of dot products of rows (ids from
/// `first_row`) with columns (ids from `first_col`), and the squared norms of both.
pub struct Block<'a> {
    pub dots: &'a [f32],
    pub row_norms: &'a [f32],
    pub col_norms: &'a [f32],
    pub first_row: u32,
    pub first_col: u32,
}

/// `scan_tile`'s loop: one pass over the block, each chunk of a row masked for the row's
/// list (`row_mask`: per-column norms, the row's threshold) and for the columns' lists
/// (`col_mask`: the row's norm, per-column thresholds).
#[inline(always)]
fn scan_tile_with<M, N>(
    rows: &mut [RowList<'_>],
    cols: &mut [RowList<'_>],
    block: &Block<'_>,
    row_mask: M,
    col_mask: N,
) where
    M: Fn(&[f32; CHUNK], &[f32; CHUNK], f32, &mut [f32; CHUNK]) -> u64,
    N: Fn(&[f32; CHUNK], f32, &[f32; CHUNK], &mut [f32; CHUNK]) -> u64,
{
    let width = cols.len();
    let padded_width = width.div_ceil(CHUNK) * CHUNK;
    // Padding columns: an infinite norm for the rows, a -inf threshold for the columns.
    let mut col_norms = vec![f32::INFINITY; padded_width];
    col_norms[..width].copy_from_slice(block.col_norms);
    let mut thresholds = vec![f32::NEG_INFINITY; padded_width];
    for (threshold, list) in thresholds.iter_mut().zip(cols.iter()) {
        *threshold = *list.threshold;
    }
    let (mut row_keys, mut col_keys) = ([0f32; CHUNK], [0f32; CHUNK]);
    for (i, list) in rows.iter_mut().enumerate() {
        let dots_row = &block.dots[i * width..(i + 1) * width];
        for start in (0..padded_width).step_by(CHUNK) {
            let end = width.min(start + CHUNK);
            let dots = match <&[f32; CHUNK]>::try_from(&dots_row[start..end]) {
                Ok(dots) => *dots,
                Err(_) => padded(&dots_row[start..end], 0.0),
            };
            let norms: &[f32; CHUNK] = col_norms[start..start + CHUNK].try_into().expect("a chunk");
            let mut mask = row_mask(&dots, norms, *list.threshold, &mut row_keys);
            while mask != 0 {
                let l = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                if row_keys[l] < *list.threshold {
                    list.push(row_keys[l], block.first_col + (start + l) as u32);
                }
            }
            let limits: &[f32; CHUNK] =
                thresholds[start..start + CHUNK].try_into().expect("a chunk");
            let mut mask = col_mask(&dots, block.row_norms[i], limits, &mut col_keys);
            while mask != 0 {
                let l = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                let col = start + l;
                if col_keys[l] < thresholds[col] {
                    cols[col].push(col_keys[l], block.first_row + i as u32);
                    thresholds[col] = *cols[col].threshold;
                }
            }
        }
    }
}

/// Offers every key of `block` to the list of its row (key `col_norms[j] - 2 dots[i, j]`,
/// id `first_col + j`) and to the list of its column (`row_norms[i] - 2 dots[i, j]`, id
/// `first_row + i`), in one pass over the block: a self-search tile off the diagonal, which
/// serves both its rows and its columns. Equal to `RowList::scan` of each row and of each
/// column.
pub fn scan_tile(rows: &mut [RowList<'_>], cols: &mut [RowList<'_>], block: &Block<'_>) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // Sound: the CPU has AVX-512F.
            return unsafe { x86::scan_tile_avx512(rows, cols, block) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // Sound: the CPU has AVX2.
            return unsafe { x86::scan_tile_avx2(rows, cols, block) };
        }
    }
    scan_tile_with(
        rows,
        cols,
        block,
        |d, b, t, k| mask_portable(d, b, t, k),
        |d, b, t, k| mask_portable(d, b, t, k),
    );
}

/// The first `values.len() <= CHUNK` values, padded with `fill`.
#[inline(always)]
fn padded(values: &[f32], fill: f32) -> [f32; CHUNK] {
    let mut out = [fill; CHUNK];
    out[..values.len()].copy_from_slice(values);
    out
}

/// `RowList::scan` (see its doc), on the widest instruction set the CPU has.
fn scan_row(
    list: &mut RowList<'_>,
    dots: &[f32],
    base: &[f32],
    first_id: u32,
    skip: Option<usize>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // Sound: the CPU has AVX-512F.
            return unsafe { x86::scan_row_avx512(list, dots, base, first_id, skip) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // Sound: the CPU has AVX2.
            return unsafe { x86::scan_row_avx2(list, dots, base, first_id, skip) };
        }
    }
    scan_row_with(list, dots, base, first_id, skip, |d, b, t, k| mask_portable(d, b, t, k));
}

/// The scans compiled for AVX-512 and AVX2, with their masks in intrinsics.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{scan_row_with, scan_tile_with, Block, Lanes, RowList, CHUNK};
    use std::arch::x86_64::*;

    /// `Lanes` as a vector of 16 or 8 floats from lane `v` on.
    pub(super) trait Load: Lanes {
        unsafe fn load512(self, v: usize) -> __m512;
        unsafe fn load256(self, v: usize) -> __m256;
    }

    impl Load for f32 {
        #[inline(always)]
        unsafe fn load512(self, _: usize) -> __m512 {
            _mm512_set1_ps(self)
        }
        #[inline(always)]
        unsafe fn load256(self, _: usize) -> __m256 {
            _mm256_set1_ps(self)
        }
    }

    impl Load for &[f32; CHUNK] {
        #[inline(always)]
        unsafe fn load512(self, v: usize) -> __m512 {
            _mm512_loadu_ps(self.as_ptr().add(v))
        }
        #[inline(always)]
        unsafe fn load256(self, v: usize) -> __m256 {
            _mm256_loadu_ps(self.as_ptr().add(v))
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn mask_avx512(
        dots: &[f32; CHUNK],
        base: impl Load,
        thresholds: impl Load,
        keys: &mut [f32; CHUNK],
    ) -> u64 {
        let two = _mm512_set1_ps(2.0);
        let mut mask = 0u64;
        for v in (0..CHUNK).step_by(16) {
            let d = _mm512_loadu_ps(dots.as_ptr().add(v));
            let k = _mm512_sub_ps(base.load512(v), _mm512_mul_ps(two, d));
            _mm512_storeu_ps(keys.as_mut_ptr().add(v), k);
            mask |= u64::from(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(k, thresholds.load512(v))) << v;
        }
        mask
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    pub(super) unsafe fn mask_avx2(
        dots: &[f32; CHUNK],
        base: impl Load,
        thresholds: impl Load,
        keys: &mut [f32; CHUNK],
    ) -> u64 {
        let two = _mm256_set1_ps(2.0);
        let mut mask = 0u64;
        for v in (0..CHUNK).step_by(8) {
            let d = _mm256_loadu_ps(dots.as_ptr().add(v));
            let k = _mm256_sub_ps(base.load256(v), _mm256_mul_ps(two, d));
            _mm256_storeu_ps(keys.as_mut_ptr().add(v), k);
            let below = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(k, thresholds.load256(v)));
            mask |= u64::from(below as u32) << v;
        }
        mask
    }

    /// The two scans compiled with `$feature`, each with the mask `$mask` inlined.
    macro_rules! scans {
        ($feature:literal, $row:ident, $tile:ident, $mask:ident) => {
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn $tile(
                rows: &mut [RowList<'_>],
                cols: &mut [RowList<'_>],
                block: &Block<'_>,
            ) {
                scan_tile_with(
                    rows,
                    cols,
                    block,
                    |d, b, t, k| unsafe { $mask(d, b, t, k) },
                    |d, b, t, k| unsafe { $mask(d, b, t, k) },
                );
            }

            #[target_feature(enable = $feature)]
            pub(super) unsafe fn $row(
                list: &mut RowList<'_>,
                dots: &[f32],
                base: &[f32],
                first_id: u32,
                skip: Option<usize>,
            ) {
                scan_row_with(list, dots, base, first_id, skip, |d, b, t, k| unsafe {
                    $mask(d, b, t, k)
                });
            }
        };
    }

    scans!("avx512f", scan_row_avx512, scan_tile_avx512, mask_avx512);
    scans!("avx2", scan_row_avx2, scan_tile_avx2, mask_avx2);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer_all(lists: &mut CandidateLists, base: &[f32], skip: Option<usize>) {
        let dots = vec![0.0f32; base.len()];
        lists.rows_mut(0, 1)[0].scan(&dots, base, 10, skip);
    }

    #[test]
    fn every_instruction_set_gives_the_portable_mask_and_keys() {
        let mut rng = 12345u32;
        let mut next = || {
            rng = rng.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (rng >> 8) as f32 / (1 << 24) as f32 * 4.0 - 2.0
        };
        for round in 0..200 {
            let dots: [f32; CHUNK] = std::array::from_fn(|_| next());
            let base: [f32; CHUNK] = std::array::from_fn(|_| next());
            let mut thresholds: [f32; CHUNK] = std::array::from_fn(|_| next());
            thresholds[round % CHUNK] = f32::NAN;
            let scalar = next();
            let mut expected = [0f32; CHUNK];
            let want_rows = mask_portable(&dots, &base, scalar, &mut expected);
            let mut expected_cols = [0f32; CHUNK];
            let want_cols = mask_portable(&dots, scalar, &thresholds, &mut expected_cols);
            #[cfg(target_arch = "x86_64")]
            for (name, detected) in [
                ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
                ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ] {
                if !detected {
                    continue;
                }
                let mut keys = [0f32; CHUNK];
                // Sound: the feature was detected above.
                let (rows, cols) = unsafe {
                    match name {
                        "avx512f" => (
                            x86::mask_avx512(&dots, &base, scalar, &mut keys),
                            x86::mask_avx512(&dots, scalar, &thresholds, &mut [0f32; CHUNK]),
                        ),
                        _ => (
                            x86::mask_avx2(&dots, &base, scalar, &mut keys),
                            x86::mask_avx2(&dots, scalar, &thresholds, &mut [0f32; CHUNK]),
                        ),
                    }
                };
                assert_eq!((rows, cols), (want_rows, want_cols), "{name} round {round}");
                assert_eq!(keys.map(f32::to_bits), expected.map(f32::to_bits), "{name} keys");
            }
        }
    }

    /// The packed words sort as `sorted_row`'s tie rule: key by `total_cmp`, then id.
    #[test]
    fn packed_order_is_key_then_id_order() {
        let keys = [
            f32::NEG_INFINITY,
            f32::MIN,
            -3.5,
            -f32::MIN_POSITIVE / 4.0,
            -0.0,
            0.0,
            f32::MIN_POSITIVE / 4.0,
            2.0,
            f32::MAX,
            f32::INFINITY,
            f32::NAN,
            -f32::NAN,
        ];
        let pairs: Vec<(f32, u32)> =
            keys.iter().flat_map(|&k| [0, 1, 7, u32::MAX].map(|id| (k, id))).collect();
        for &(key, id) in &pairs {
            let (back, back_id) = unpack(pack(key, id));
            assert_eq!((back.to_bits(), back_id), (key.to_bits(), id));
            for &(other, other_id) in &pairs {
                let want = key.total_cmp(&other).then(id.cmp(&other_id));
                assert_eq!(pack(key, id).cmp(&pack(other, other_id)), want, "{key} {id} {other}");
            }
        }
    }

    #[test]
    fn keeps_the_smallest_keys() {
        let mut lists = CandidateLists::new(1, 3);
        offer_all(&mut lists, &[5.0, 1.0, 7.0, 3.0, 0.5, 9.0, 2.0, 8.0], Some(1));
        // id 11 (key 1.0) is skipped, so the three smallest left are 0.5, 2.0, 3.0.
        assert_eq!(lists.sorted_row(0), vec![(0.5, 14), (2.0, 16), (3.0, 13)]);
    }

    #[test]
    fn compaction_keeps_the_invariant() {
        // 500 keys in a scrambled order through a list of 7: the result is the 7 smallest.
        let base: Vec<f32> = (0..500).map(|i| ((i * 337) % 500) as f32).collect();
        let mut lists = CandidateLists::new(1, 7);
        offer_all(&mut lists, &base, None);
        let kept: Vec<f32> = lists.sorted_row(0).iter().map(|p| p.0).collect();
        assert_eq!(kept, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    /// One pass over a block gives each row's list what `RowList::scan` of the row gives,
    /// and each column's list what `RowList::scan` of the column (the transposed block, the
    /// rows' norms) gives: the same kept keys and ids, through compactions, with a last
    /// chunk of columns that is not whole.
    #[test]
    fn tile_scan_serves_rows_and_columns() {
        let (height, width) = (70, 130);
        let mut rng = 99u32;
        let mut next = || {
            rng = rng.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (rng >> 8) as f32 / (1 << 24) as f32
        };
        let dots: Vec<f32> = (0..height * width).map(|_| next()).collect();
        let row_norms: Vec<f32> = (0..height).map(|_| next()).collect();
        let col_norms: Vec<f32> = (0..width).map(|_| next()).collect();
        let block = Block {
            dots: &dots,
            row_norms: &row_norms,
            col_norms: &col_norms,
            first_row: 1000,
            first_col: 5000,
        };
        // c = 6: lists compact; c = 200: every key is kept, padding would show.
        for c in [6, 200] {
            let (mut rows, mut cols) =
                (CandidateLists::new(height, c), CandidateLists::new(width, c));
            scan_tile(&mut rows.rows_mut(0, height), &mut cols.rows_mut(0, width), &block);
            let mut want_rows = CandidateLists::new(height, c);
            for (i, list) in want_rows.rows_mut(0, height).iter_mut().enumerate() {
                list.scan(&dots[i * width..(i + 1) * width], &col_norms, 5000, None);
            }
            let mut want_cols = CandidateLists::new(width, c);
            for (j, list) in want_cols.rows_mut(0, width).iter_mut().enumerate() {
                let column: Vec<f32> = (0..height).map(|i| dots[i * width + j]).collect();
                list.scan(&column, &row_norms, 1000, None);
            }
            for i in 0..height {
                assert_eq!(rows.sorted_row(i), want_rows.sorted_row(i), "c {c} row {i}");
            }
            for j in 0..width {
                assert_eq!(cols.sorted_row(j), want_cols.sorted_row(j), "c {c} column {j}");
            }
        }
    }
}
