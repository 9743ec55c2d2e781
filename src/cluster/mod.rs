//! Clustering for pseudo labels (SLADE Sec 3.2, DESIGN.md §2.3): exact k-means with
//! k-means++ seeding, pseudo labels from k-means on normalised embeddings, and the
//! normalized mutual information of two labelings.

mod init;
mod kmeans;
mod lloyd;
mod nmi;

pub use kmeans::{kmeans, pseudo_label, Init, KMeans, KMeansOptions};
pub use nmi::{nmi, nmi_of_tensors};

/// Well-spread float32 points around 9 centres, rows 5..10 repeating rows 0..5 (exact
/// duplicates), for the tests of the k-means engines.
#[cfg(test)]
fn test_points(n: i64, dim: i64, seed: i64) -> tch::Tensor {
    use tch::{Device, Kind, Tensor};
    tch::manual_seed(seed);
    let centres = Tensor::randn([9, dim], (Kind::Float, Device::Cpu)) * 4.0;
    let ids = Tensor::randint(9, [n], (Kind::Int64, Device::Cpu));
    let x = centres.index_select(0, &ids) + Tensor::randn([n, dim], (Kind::Float, Device::Cpu));
    let dup = x.narrow(0, 0, 5).shallow_clone();
    x.narrow(0, 5, 5).copy_(&dup);
    x
}
