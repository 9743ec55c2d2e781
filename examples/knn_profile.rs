//! Times the phases of the k-NN engine on clustered data: `cargo run --release --example knn_profile`.
use slade::retrieval::{neighbours, Engine, Wanted};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let (n, dim, classes, k) = (args[0], args[1], args[2], args[3]);
    tch::manual_seed(0);
    let centres = Tensor::randn([classes as i64, dim as i64], (Kind::Float, Device::Cpu));
    let centres = &centres / centres.norm_scalaropt_dim(2, [1], true);
    let labels = Tensor::randint(classes as i64, [n as i64], (Kind::Int64, Device::Cpu));
    let x = centres.index_select(0, &labels)
        + Tensor::randn([n as i64, dim as i64], (Kind::Float, Device::Cpu))
            * (3.0 / (dim as f64).sqrt());
    let x = if std::env::var("RAW").is_ok() {
        x * 3.0
    } else {
        &x / x.norm_scalaropt_dim(2, [1], true)
    };
    for engine in [Engine::Gemm, Engine::KdTree] {
        let start = Instant::now();
        let nn = neighbours(&x, None, k, engine, Wanted::Order).unwrap();
        println!(
            "{engine:?}: {:.3} s, brute-force rows {}",
            start.elapsed().as_secs_f64(),
            nn.brute_force_rows
        );
    }
}
