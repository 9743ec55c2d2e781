//! Bounded per-row candidate lists for the blocked k-NN scan.
//!
//! Each row keeps at least its `c` smallest keys seen so far: keys below the row's threshold
//! are appended to a buffer of `c + c/2 + 32` slots; when it is full, a selection keeps the `c`
//! smallest and the threshold drops to the largest of them. A key is therefore rejected with
//! one comparison, and (the invariant the exact re-rank relies on) every key ever rejected or
//! dropped is >= the largest key finally kept. Keys are approximate; candidates are re-ranked
//! exactly afterwards.

/// Keys are compared 64 at a time into a bit mask, and only the keys below their list's
/// threshold (the set bits) touch a buffer: after the first keys a row has seen, most
/// chunks have none.
pub const CHUNK: usize = 64;

/// The candidate lists of all rows, in one flat buffer.
pub struct CandidateLists {
    c: usize,
    slots: usize,
    items: Vec<(f32, u32)>,
    lens: Vec<u32>,
    thresholds: Vec<f32>,
}

/// One row's list, borrowed mutably from a `CandidateLists`.
pub struct RowList<'a> {
    c: usize,
    items: &'a mut [(f32, u32)],
    len: &'a mut u32,
    threshold: &'a mut f32,
}

impl CandidateLists {
    pub fn new(rows: usize, c: usize) -> Self {
        let slots = c + c / 2 + 32;
        CandidateLists {
            c,
            slots,
            items: vec![(0.0, 0); rows * slots],
            lens: vec![0; rows],
            thresholds: vec![f32::INFINITY; rows],
        }
    }

    /// Rows that each hold exactly `c` candidates (keys and ids row-major, `rows x c`).
    pub fn from_full(rows: usize, c: usize, keys: Vec<f32>, ids: Vec<u32>) -> Self {
        CandidateLists {
            c,
            slots: c,
            items: keys.into_iter().zip(ids).collect(),
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
            for &(key, id) in &other.items[base..base + other.lens[r] as usize] {
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
        let by_key_then_id =
            |a: &(f32, u32), b: &(f32, u32)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
        if items.len() > self.c {
            items.select_nth_unstable_by(self.c - 1, by_key_then_id);
            items.truncate(self.c);
        }
        items.sort_unstable_by(by_key_then_id);
        items
    }
}

impl RowList<'_> {
    #[inline]
    fn push(&mut self, key: f32, id: u32) {
        let len = *self.len as usize;
        self.items[len] = (key, id);
        *self.len += 1;
        if len + 1 == self.items.len() {
            self.compact();
        }
    }

    /// Keeps the `c` smallest keys and lowers the threshold to the largest of them.
    fn compact(&mut self) {
        let len = *self.len as usize;
        let (_, &mut (largest_kept, _), _) =
            self.items[..len].select_nth_unstable_by(self.c - 1, |a, b| a.0.total_cmp(&b.0));
        *self.len = self.c as u32;
        *self.threshold = largest_kept;
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

#[inline(always)]
fn scan_columns_with<M>(
    lists: &mut [RowList<'_>],
    block: &[f32],
    block_cols: usize,
    first_col: usize,
    base: &[f32],
    first_id: u32,
    mask_of: M,
) where
    M: Fn(&[f32; CHUNK], f32, &[f32; CHUNK], &mut [f32; CHUNK]) -> u64,
{
    let width = lists.len();
    assert!(width <= CHUNK, "scan_columns takes at most {CHUNK} columns");
    let mut thresholds = [f32::NEG_INFINITY; CHUNK];
    for (threshold, list) in thresholds.iter_mut().zip(lists.iter()) {
        *threshold = *list.threshold;
    }
    let mut keys = [0f32; CHUNK];
    for (i, &b) in base.iter().enumerate() {
        let start = i * block_cols + first_col;
        let mut mask = match <&[f32; CHUNK]>::try_from(&block[start..start + width]) {
            Ok(dots) => mask_of(dots, b, &thresholds, &mut keys),
            Err(_) => {
                mask_of(&padded(&block[start..start + width], 0.0), b, &thresholds, &mut keys)
            }
        };
        while mask != 0 {
            let l = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if keys[l] < thresholds[l] {
                lists[l].push(keys[l], first_id + i as u32);
                thresholds[l] = *lists[l].threshold;
            }
        }
    }
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

/// Offers the columns `first_col..first_col + lists.len()` (at most `CHUNK`) of a row-major
/// block (`block_cols` wide) to one list per column: the transposed scan used when the query
/// set is the reference set, so each block product serves both its rows and its columns.
/// Row `i` of the block has reference id `first_id + i` and key `base[i] - 2 * block[i, col]`.
pub fn scan_columns(
    lists: &mut [RowList<'_>],
    block: &[f32],
    block_cols: usize,
    first_col: usize,
    base: &[f32],
    first_id: u32,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // Sound: the CPU has AVX-512F.
            return unsafe {
                x86::scan_columns_avx512(lists, block, block_cols, first_col, base, first_id)
            };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // Sound: the CPU has AVX2.
            return unsafe {
                x86::scan_columns_avx2(lists, block, block_cols, first_col, base, first_id)
            };
        }
    }
    scan_columns_with(lists, block, block_cols, first_col, base, first_id, |d, b, t, k| {
        mask_portable(d, b, t, k)
    });
}

/// The scans compiled for AVX-512 and AVX2, with their masks in intrinsics.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{scan_columns_with, scan_row_with, Lanes, RowList, CHUNK};
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
        ($feature:literal, $row:ident, $columns:ident, $mask:ident) => {
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

            #[target_feature(enable = $feature)]
            pub(super) unsafe fn $columns(
                lists: &mut [RowList<'_>],
                block: &[f32],
                block_cols: usize,
                first_col: usize,
                base: &[f32],
                first_id: u32,
            ) {
                scan_columns_with(
                    lists,
                    block,
                    block_cols,
                    first_col,
                    base,
                    first_id,
                    |d, b, t, k| unsafe { $mask(d, b, t, k) },
                );
            }
        };
    }

    scans!("avx512f", scan_row_avx512, scan_columns_avx512, mask_avx512);
    scans!("avx2", scan_row_avx2, scan_columns_avx2, mask_avx2);
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

    #[test]
    fn columns_scan_like_rows() {
        // A 3 x 2 block: column 0 holds dots (1, 3, 2), column 1 holds (0, 0, 5).
        let block = [1.0f32, 0.0, 3.0, 0.0, 2.0, 5.0];
        let mut lists = CandidateLists::new(2, 2);
        let mut rows = lists.rows_mut(0, 2);
        scan_columns(&mut rows, &block, 2, 0, &[0.0, 0.0, 0.0], 100);
        drop(rows);
        assert_eq!(lists.sorted_row(0), vec![(-6.0, 101), (-4.0, 102)]);
        assert_eq!(lists.sorted_row(1), vec![(-10.0, 102), (0.0, 100)]);
    }
}
