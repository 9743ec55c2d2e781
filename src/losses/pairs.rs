//! The pairs and triplets of a batch that a ranking loss runs over, in the tuple forms of
//! pytorch-metric-learning's miners, `(a1, p, a2, n)` and `(a, p, n)`, and as boolean masks.

use crate::bail;
use crate::error::{Result, SladeError};
use crate::validate;
use tch::{Device, Kind, Tensor};

/// Anchor-positive pairs `(a1[i], p[i])` and anchor-negative pairs `(a2[j], n[j])` of a batch
/// of `batch` samples, as int64 index tensors on one device (PML's `(a1, p, a2, n)` tuple).
/// A pair may occur more than once; pair losses then count it more than once.
#[derive(Debug)]
pub struct Pairs {
    a1: Tensor,
    p: Tensor,
    a2: Tensor,
    n: Tensor,
    batch: usize,
}

/// Triplets `(a[i], p[i], n[i])` of a batch of `batch` samples (PML's `(a, p, n)` tuple).
#[derive(Debug)]
pub struct Triplets {
    a: Tensor,
    p: Tensor,
    n: Tensor,
    batch: usize,
}

/// Positive and negative pairs as boolean `(N, N)` masks: `pos[i, j]` marks (i, j) as a
/// positive pair. The form miners produce and mask-based losses consume, with no index lists.
#[derive(Debug)]
pub struct PairMasks {
    pub pos: Tensor,
    pub neg: Tensor,
}

/// Where a pair loss takes its pairs from.
#[derive(Clone, Copy)]
pub enum PairSource<'a> {
    /// All pairs the labels define (PML's default without an indices tuple): positives
    /// share a label (i != j), negatives do not.
    Labels(&'a Tensor),
    /// Explicit index pairs, each counted as often as it occurs.
    Pairs(&'a Pairs),
    /// Pairs as masks, e.g. a miner's output on the same batch.
    Masks(&'a PairMasks),
}

/// Where the triplet loss takes its triplets from.
#[derive(Clone, Copy)]
pub enum TripletSource<'a> {
    /// All triplets the labels define (PML's `triplets_per_anchor="all"`).
    Labels(&'a Tensor),
    /// Explicit triplets.
    Triplets(&'a Triplets),
}

/// `same[i, j]`: samples i and j share a label (`labels`: 1-D integer, on its own device).
pub fn same_label(labels: &Tensor) -> Result<Tensor> {
    let size = labels.size();
    if size.len() != 1 || !validate::is_integer(labels.kind()) {
        bail!(
            Shape,
            "labels must be a 1-D integer tensor, got {:?} of shape {size:?}",
            labels.kind()
        );
    }
    Ok(labels.f_unsqueeze(1)?.f_eq_tensor(&labels.f_unsqueeze(0)?)?)
}

/// Checks the tensors of an index tuple and brings them to int64 on `device`.
fn index_tuple(
    tensors: &[Tensor],
    batch: usize,
    device: Device,
    name: &str,
    fields: &[&str],
) -> Result<Vec<Tensor>> {
    tensors
        .iter()
        .zip(fields)
        .map(|(t, field)| {
            validate::indices(t, batch, &format!("{name}[{field}]"), "embeddings", device)
        })
        .collect()
}

fn as_array<const K: usize>(tensors: Vec<Tensor>) -> Result<[Tensor; K]> {
    let count = tensors.len();
    tensors.try_into().map_err(|_| SladeError::Internal(format!("{count} index tensors, not {K}")))
}

fn same_length(a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
    let (la, lb) = (a.size()[0], b.size()[0]);
    if la != lb {
        bail!(Shape, "{what}: the index tensors have lengths {la} and {lb}; they must match");
    }
    Ok(())
}

impl Pairs {
    /// Pairs from index tensors, checked against a batch of `batch` samples and moved to
    /// `device` as int64.
    pub fn new(
        a1: &Tensor,
        p: &Tensor,
        a2: &Tensor,
        n: &Tensor,
        batch: usize,
        device: Device,
    ) -> Result<Self> {
        let tensors =
            [a1.shallow_clone(), p.shallow_clone(), a2.shallow_clone(), n.shallow_clone()];
        Self::from_tuple(&tensors, batch, device, "pairs")
    }

    /// Pairs from a miner's tuple: `(a1, p, a2, n)`, or `(a, p, n)` read as the pairs
    /// `(a, p)` and `(a, n)` as PML does.
    pub fn from_tuple(
        tensors: &[Tensor],
        batch: usize,
        device: Device,
        name: &str,
    ) -> Result<Self> {
        match tensors.len() {
            4 => {
                let t = index_tuple(tensors, batch, device, name, &["a1", "p", "a2", "n"])?;
                let [a1, p, a2, n] = as_array::<4>(t)?;
                same_length(&a1, &p, &format!("{name} (a1, p)"))?;
                same_length(&a2, &n, &format!("{name} (a2, n)"))?;
                Ok(Pairs { a1, p, a2, n, batch })
            }
            3 => Ok(Triplets::from_tuple(tensors, batch, device, name)?.into_pairs()),
            other => bail!(
                Shape,
                "{name} must be a tuple of 4 index tensors (a1, p, a2, n) or 3 (a, p, n), \
                 got {other}"
            ),
        }
    }

    /// No pairs at all.
    pub fn empty(batch: usize, device: Device) -> Self {
        let empty = || Tensor::empty([0], (Kind::Int64, device));
        Pairs { a1: empty(), p: empty(), a2: empty(), n: empty(), batch }
    }

    /// Every pair the labels define (PML's `get_all_pairs_indices`, in its row-major order).
    pub fn all(labels: &Tensor) -> Result<Self> {
        PairMasks::from_labels(labels)?.to_pairs()
    }

    pub fn a1(&self) -> &Tensor {
        &self.a1
    }
    pub fn p(&self) -> &Tensor {
        &self.p
    }
    pub fn a2(&self) -> &Tensor {
        &self.a2
    }
    pub fn n(&self) -> &Tensor {
        &self.n
    }
    /// The batch size the indices refer to.
    pub fn batch(&self) -> usize {
        self.batch
    }
    pub fn num_pos(&self) -> usize {
        self.a1.size()[0] as usize
    }
    pub fn num_neg(&self) -> usize {
        self.a2.size()[0] as usize
    }

    /// The four tensors `(a1, p, a2, n)`.
    pub fn into_tuple(self) -> (Tensor, Tensor, Tensor, Tensor) {
        (self.a1, self.p, self.a2, self.n)
    }

    /// PML's pair losses return zero when every index tensor holds at most one entry
    /// (`GenericPairLoss.compute_loss`); we keep that rule so the values agree.
    pub fn too_few(&self) -> bool {
        self.num_pos() <= 1 && self.num_neg() <= 1
    }

    /// The pairs as masks (duplicates collapse), as PML's mask-based losses build them.
    pub fn to_masks(&self) -> Result<PairMasks> {
        let n = self.batch as i64;
        let device = self.a1.device();
        let mask = |rows: &Tensor, cols: &Tensor| -> Result<Tensor> {
            let ones = Tensor::f_ones([rows.size()[0]], (Kind::Bool, device))?;
            Ok(Tensor::f_zeros([n, n], (Kind::Bool, device))?.f_index_put(
                &[Some(rows), Some(cols)],
                &ones,
                false,
            )?)
        };
        Ok(PairMasks { pos: mask(&self.a1, &self.p)?, neg: mask(&self.a2, &self.n)? })
    }

    /// Triplets made of a positive and a negative pair that share their anchor, in PML's
    /// order (`convert_to_triplets`): for each positive pair, its negatives in order.
    pub fn to_triplets(&self) -> Result<Triplets> {
        let shared = self.a1.f_unsqueeze(1)?.f_eq_tensor(&self.a2.f_unsqueeze(0)?)?;
        let found = shared.f_nonzero()?;
        let (pos_idx, neg_idx) = (found.f_select(1, 0)?, found.f_select(1, 1)?);
        Ok(Triplets {
            a: self.a1.f_index_select(0, &pos_idx)?,
            p: self.p.f_index_select(0, &pos_idx)?,
            n: self.n.f_index_select(0, &neg_idx)?,
            batch: self.batch,
        })
    }
}

impl Triplets {
    /// Triplets from index tensors, checked against a batch of `batch` samples.
    pub fn new(a: &Tensor, p: &Tensor, n: &Tensor, batch: usize, device: Device) -> Result<Self> {
        let tensors = [a.shallow_clone(), p.shallow_clone(), n.shallow_clone()];
        Self::from_tuple(&tensors, batch, device, "triplets")
    }

    /// Triplets from a miner's tuple: `(a, p, n)`, or pairs `(a1, p, a2, n)` combined where
    /// anchors agree, as PML's `convert_to_triplets` does.
    pub fn from_tuple(
        tensors: &[Tensor],
        batch: usize,
        device: Device,
        name: &str,
    ) -> Result<Self> {
        match tensors.len() {
            3 => {
                let t = index_tuple(tensors, batch, device, name, &["a", "p", "n"])?;
                let [a, p, n] = as_array::<3>(t)?;
                same_length(&a, &p, &format!("{name} (a, p, n)"))?;
                same_length(&a, &n, &format!("{name} (a, p, n)"))?;
                Ok(Triplets { a, p, n, batch })
            }
            4 => Pairs::from_tuple(tensors, batch, device, name)?.to_triplets(),
            other => bail!(
                Shape,
                "{name} must be a tuple of 3 index tensors (a, p, n) or 4 (a1, p, a2, n), \
                 got {other}"
            ),
        }
    }

    /// Every triplet the labels define: a and p share a label (a != p), n has another one.
    /// Row-major order over (a, p, n), as PML's `get_all_triplets_indices`; built in blocks
    /// of anchors so no `N^3` mask is held at once.
    pub fn all(labels: &Tensor) -> Result<Self> {
        let batch = labels.size()[0];
        let device = labels.device();
        let PairMasks { pos: positive, neg: negative } = PairMasks::from_labels(labels)?;
        let block = (1i64 << 24).checked_div(batch * batch).unwrap_or(0).max(1);
        let (mut a, mut p, mut n) = (Vec::new(), Vec::new(), Vec::new());
        let mut start = 0;
        while start < batch {
            let len = block.min(batch - start);
            let found = positive
                .f_narrow(0, start, len)?
                .f_unsqueeze(2)?
                .f_logical_and(&negative.f_narrow(0, start, len)?.f_unsqueeze(1)?)?
                .f_nonzero()?;
            a.push(found.f_select(1, 0)?.f_add_scalar(start)?);
            p.push(found.f_select(1, 1)?);
            n.push(found.f_select(1, 2)?);
            start += len;
        }
        let cat = |parts: &[Tensor]| -> Result<Tensor> {
            if parts.is_empty() {
                Ok(Tensor::f_empty([0], (Kind::Int64, device))?)
            } else {
                Ok(Tensor::f_cat(parts, 0)?)
            }
        };
        Ok(Triplets { a: cat(&a)?, p: cat(&p)?, n: cat(&n)?, batch: batch as usize })
    }

    pub fn a(&self) -> &Tensor {
        &self.a
    }
    pub fn p(&self) -> &Tensor {
        &self.p
    }
    pub fn n(&self) -> &Tensor {
        &self.n
    }
    pub fn batch(&self) -> usize {
        self.batch
    }
    pub fn len(&self) -> usize {
        self.a.size()[0] as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pairs `(a, p)` and `(a, n)` (PML's `convert_to_pairs`).
    pub fn into_pairs(self) -> Pairs {
        Pairs { a1: self.a.shallow_clone(), p: self.p, a2: self.a, n: self.n, batch: self.batch }
    }
}

impl PairMasks {
    /// All pairs by label: positives share a label (i != j), negatives do not.
    pub fn from_labels(labels: &Tensor) -> Result<Self> {
        let mut same = same_label(labels)?;
        let neg = same.f_logical_not()?;
        let pos = same.f_fill_diagonal_(0i64, false)?;
        Ok(PairMasks { pos, neg })
    }

    /// The batch size (masks are `(N, N)`).
    pub fn batch(&self) -> usize {
        self.pos.size()[0] as usize
    }

    /// The masked pairs as index tensors, row-major (the order of `torch.where`).
    pub fn to_pairs(&self) -> Result<Pairs> {
        let split = |mask: &Tensor| -> Result<(Tensor, Tensor)> {
            let found = mask.f_nonzero()?;
            Ok((found.f_select(1, 0)?.f_contiguous()?, found.f_select(1, 1)?.f_contiguous()?))
        };
        let (a1, p) = split(&self.pos)?;
        let (a2, n) = split(&self.neg)?;
        Ok(Pairs { a1, p, a2, n, batch: self.batch() })
    }

    /// Checks that the masks are `(batch, batch)` booleans on `device`.
    pub fn check(&self, batch: usize, device: Device) -> Result<()> {
        for (mask, name) in [(&self.pos, "positive"), (&self.neg, "negative")] {
            let expected = [batch as i64, batch as i64];
            if mask.size() != expected || mask.kind() != Kind::Bool {
                bail!(
                    Shape,
                    "the {name} pair mask must be a ({batch}, {batch}) bool tensor, got {:?} {:?}",
                    mask.size(),
                    mask.kind()
                );
            }
            if mask.device() != device {
                bail!(Device, "the {name} pair mask is on {:?}, not {device:?}", mask.device());
            }
        }
        Ok(())
    }

    /// The masks as 0/1 weights of `kind` (for the mask-based losses: a multiplication
    /// by a weight is far cheaper on the CPU than `where`/`masked_fill` on a random mask).
    pub fn weights(&self, kind: Kind) -> Result<PairWeights> {
        Ok(PairWeights { pos: self.pos.f_to_kind(kind)?, neg: self.neg.f_to_kind(kind)? })
    }
}

/// Positive and negative pairs as 0/1 weights (`(N, N)`, the loss dtype).
pub struct PairWeights {
    pub pos: Tensor,
    pub neg: Tensor,
}

impl PairWeights {
    /// Device-side flag for PML's "at most one pair of each kind" rule (see
    /// [`Pairs::too_few`]), without a host synchronisation.
    pub fn too_few(&self) -> Result<Tensor> {
        let count = |w: &Tensor| -> Result<Tensor> { Ok(w.f_sum(w.kind())?.f_le(1.0)?) };
        Ok(count(&self.pos)?.f_logical_and(&count(&self.neg)?)?)
    }

    /// `loss`, or PML's zero loss (`sum(graph * 0)`, zero gradients) when the rule above
    /// applies; `graph` is any tensor of the loss's graph (embeddings, distances).
    pub fn zero_if_too_few(&self, loss: &Tensor, graph: &Tensor) -> Result<Tensor> {
        Ok(super::distance::zero_loss(graph)?.f_where_self(&self.too_few()?, loss)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(t: &Tensor) -> Vec<i64> {
        Vec::<i64>::try_from(t).unwrap()
    }

    #[test]
    fn all_pairs_follow_labels_row_major() {
        let labels = Tensor::from_slice(&[0i64, 1, 0]);
        let pairs = Pairs::all(&labels).unwrap();
        assert_eq!(ints(pairs.a1()), vec![0, 2]);
        assert_eq!(ints(pairs.p()), vec![2, 0]);
        assert_eq!(ints(pairs.a2()), vec![0, 1, 1, 2]);
        assert_eq!(ints(pairs.n()), vec![1, 0, 2, 1]);
    }

    #[test]
    fn all_triplets_match_brute_force() {
        let labels = Tensor::from_slice(&[0i64, 1, 0, 1, 1, 2]);
        let t = Triplets::all(&labels).unwrap();
        let l = ints(&labels);
        let mut expected = Vec::new();
        for a in 0..6 {
            for p in 0..6 {
                for n in 0..6 {
                    if a != p && l[a] == l[p] && l[a] != l[n] {
                        expected.push((a as i64, p as i64, n as i64));
                    }
                }
            }
        }
        let got: Vec<_> = ints(t.a())
            .into_iter()
            .zip(ints(t.p()))
            .zip(ints(t.n()))
            .map(|((a, p), n)| (a, p, n))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn pairs_to_triplets_combine_shared_anchors() {
        let idx = |v: &[i64]| Tensor::from_slice(v);
        let pairs = Pairs::new(
            &idx(&[0, 1]),
            &idx(&[2, 3]),
            &idx(&[1, 0, 0]),
            &idx(&[4, 5, 6]),
            7,
            Device::Cpu,
        )
        .unwrap();
        let t = pairs.to_triplets().unwrap();
        assert_eq!(ints(t.a()), vec![0, 0, 1]);
        assert_eq!(ints(t.p()), vec![2, 2, 3]);
        assert_eq!(ints(t.n()), vec![5, 6, 4]);
    }

    #[test]
    fn bad_tuples_are_refused() {
        let idx = |v: &[i64]| Tensor::from_slice(v);
        let out_of_range =
            Pairs::new(&idx(&[0]), &idx(&[5]), &idx(&[0]), &idx(&[1]), 5, Device::Cpu).unwrap_err();
        assert!(out_of_range.to_string().contains("index 5"), "{out_of_range}");
        let lengths = Pairs::new(&idx(&[0, 1]), &idx(&[2]), &idx(&[0]), &idx(&[1]), 5, Device::Cpu)
            .unwrap_err();
        assert!(matches!(lengths, crate::SladeError::Shape(_)), "{lengths}");
        let two = Pairs::from_tuple(&[idx(&[0]), idx(&[1])], 5, Device::Cpu, "pairs").unwrap_err();
        assert!(matches!(two, crate::SladeError::Shape(_)), "{two}");
        let float = Tensor::from_slice(&[0.5f32]);
        let kind =
            Pairs::new(&float, &idx(&[1]), &idx(&[0]), &idx(&[1]), 5, Device::Cpu).unwrap_err();
        assert!(matches!(kind, crate::SladeError::Dtype(_)), "{kind}");
    }

    #[test]
    fn masks_round_trip_and_count_too_few() {
        let labels = Tensor::from_slice(&[3i64, 3, 4, 4, 5]);
        let masks = PairMasks::from_labels(&labels).unwrap();
        let pairs = masks.to_pairs().unwrap();
        let back = pairs.to_masks().unwrap();
        assert!(back.pos.equal(&masks.pos) && back.neg.equal(&masks.neg));
        assert!(!pairs.too_few());
        let too_few =
            |m: &PairMasks| bool::try_from(m.weights(Kind::Float).unwrap().too_few().unwrap());
        assert!(!too_few(&masks).unwrap());
        let idx = |v: &[i64]| Tensor::from_slice(v);
        let one =
            Pairs::new(&idx(&[0]), &idx(&[1]), &idx(&[0]), &idx(&[2]), 5, Device::Cpu).unwrap();
        assert!(one.too_few());
        assert!(too_few(&one.to_masks().unwrap()).unwrap());
    }
}
