//! The k-NN tile product `Q R^T` (1,024 x 1,024 x 512, float32) through the two kernels of
//! `src/retrieval/tile_gemm.rs` (`TileGemm::product`, as the k-NN calls it): torch's `mm`
//! with torch on one thread, as inside a rayon worker, and `matrixmultiply::sgemm`; first on
//! one thread, then on every core at once (one tile per thread, as the k-NN's workers run).
//! Prints GFLOP/s, the ratio, and the kernel the k-NN picks on this CPU.
//!
//!     LIBTORCH_USE_PYTORCH=1 LD_LIBRARY_PATH=<torch>/lib cargo run --release --example tile_gemm

use slade::retrieval::TileGemm;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const ROWS: usize = 1024;
const DIM: usize = 512;
const REPEATS: usize = 20;

/// `REPEATS` tile products with `kernel` on the calling thread, on its own random tiles.
fn tiles(kernel: TileGemm) {
    let q = Tensor::randn([ROWS as i64, DIM as i64], (Kind::Float, Device::Cpu));
    let r = Tensor::randn([ROWS as i64, DIM as i64], (Kind::Float, Device::Cpu));
    let mut out = vec![0.0f32; ROWS * ROWS];
    for _ in 0..=REPEATS {
        kernel.product(&q, &r, &mut out).expect("tile product");
    }
}

/// GFLOP/s of `threads` threads each computing its tiles.
fn rate(threads: usize, kernel: TileGemm) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(move || tiles(kernel));
        }
    });
    let flops = 2.0 * (ROWS * ROWS * DIM * (REPEATS + 1) * threads) as f64;
    flops / start.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for threads in [1, cores] {
        let torch = rate(threads, TileGemm::Torch);
        let packed = rate(threads, TileGemm::Matrixmultiply);
        println!(
            "{threads} thread(s): torch.mm {torch:.0} GFLOP/s, matrixmultiply {packed:.0} GFLOP/s \
             (matrixmultiply / torch: {:.2})",
            packed / torch
        );
    }
    println!("the k-NN computes its tiles with {:?} here", TileGemm::fastest());
}
