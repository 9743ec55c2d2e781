//! Clustering for pseudo labels (SLADE Sec 3.2, DESIGN.md §2.3): exact k-means with
//! k-means++ seeding, pseudo labels from k-means on normalised embeddings, and the
//! normalized mutual information of two labelings.

mod init;
mod kmeans;
mod lloyd;
mod nmi;

pub use kmeans::{kmeans, pseudo_label, Init, KMeans, KMeansOptions};
pub use nmi::{nmi, nmi_of_tensors};
