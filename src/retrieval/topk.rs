//! Bounded per-row candidate lists for the blocked k-NN scan.
//!
//! Each row keeps at least its `c` smallest keys seen so far: keys below the row's threshold
//! are appended to a buffer of `2c + 32` slots; when it is full, a selection keeps the `c`
//! smallest and the threshold drops to the largest of them. A key is therefore rejected with
//! one comparison, and (the invariant the exact re-rank relies on) every key ever rejected or
//! dropped is >= the largest key finally kept. Keys are approximate; candidates are re-ranked
//! exactly afterwards.

/// Keys are compared 16 at a time: a chunk with no key below the threshold is skipped
/// without touching the buffer (the common case once a row has seen enough keys).
const CHUNK: usize = 16;

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
        let slots = 2 * c + 32;
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

    /// The candidates of `row` sorted by (key, id): at most `c`, all of them when the row
    /// saw fewer. Every key not returned is >= the last key returned.
    pub fn sorted_row(&self, row: usize) -> Vec<(f32, u32)> {
        let base = row * self.slots;
        let len = self.lens[row] as usize;
        let mut items = self.items[base..base + len].to_vec();
        items.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        items.truncate(self.c);
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
        let full = dots.len() / CHUNK * CHUNK;
        for start in (0..full).step_by(CHUNK) {
            let dots: &[f32; CHUNK] = dots[start..start + CHUNK].try_into().unwrap();
            let base: &[f32; CHUNK] = base[start..start + CHUNK].try_into().unwrap();
            let threshold = *self.threshold;
            let mut below = false;
            for l in 0..CHUNK {
                below |= base[l] - 2.0 * dots[l] < threshold;
            }
            if below {
                self.offer(dots, base, start, first_id, skip);
            }
        }
        self.offer(&dots[full..], &base[full..], full, first_id, skip);
    }

    /// Pushes the keys of one chunk that are below the threshold.
    #[inline(never)]
    fn offer(
        &mut self,
        dots: &[f32],
        base: &[f32],
        start: usize,
        first_id: u32,
        skip: Option<usize>,
    ) {
        for (j, (&dot, &b)) in dots.iter().zip(base).enumerate() {
            let key = b - 2.0 * dot;
            let j = start + j;
            if key < *self.threshold && Some(j) != skip {
                self.push(key, first_id + j as u32);
            }
        }
    }
}

/// Offers the columns `first_col..first_col + lists.len()` of a row-major block
/// (`block_cols` wide) to one list per column: the transposed scan used when the query set is
/// the reference set, so each block product serves both its rows and its columns.
/// Row `i` of the block has reference id `first_id + i` and key `base[i] - 2 * block[i, col]`.
pub fn scan_columns(
    lists: &mut [RowList<'_>],
    block: &[f32],
    block_cols: usize,
    first_col: usize,
    base: &[f32],
    first_id: u32,
) {
    let width = lists.len();
    let mut thresholds: Vec<f32> = lists.iter().map(|list| *list.threshold).collect();
    for (i, &b) in base.iter().enumerate() {
        let start = i * block_cols + first_col;
        let dots = &block[start..start + width];
        let mut below = false;
        for (&dot, &threshold) in dots.iter().zip(&thresholds) {
            below |= b - 2.0 * dot < threshold;
        }
        if !below {
            continue;
        }
        for ((list, threshold), &dot) in lists.iter_mut().zip(thresholds.iter_mut()).zip(dots) {
            let key = b - 2.0 * dot;
            if key < *threshold {
                list.push(key, first_id + i as u32);
                *threshold = *list.threshold;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer_all(lists: &mut CandidateLists, base: &[f32], skip: Option<usize>) {
        let dots = vec![0.0f32; base.len()];
        lists.rows_mut(0, 1)[0].scan(&dots, base, 10, skip);
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
