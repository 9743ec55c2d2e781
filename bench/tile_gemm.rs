//! The k-NN tile product `Q R^T` (1,024 x 1,024 x 512, float32) through the two kernels of
//! `src/retrieval/tile_gemm.rs`: torch's `mm` with torch on one thread (as inside a rayon
//! worker) and `matrixmultiply::sgemm`, first on one thread, then on every core at once
//! (one tile per thread, as the k-NN's workers run). Prints GFLOP/s and the ratio.
//!
//!     LIBTORCH_USE_PYTORCH=1 LD_LIBRARY_PATH=<torch>/lib cargo run --release --example tile_gemm

use std::time::Instant;
use tch::{Device, Kind, Tensor};

const ROWS: usize = 1024;
const DIM: usize = 512;
const REPEATS: usize = 20;

/// Seconds of `REPEATS` tile products on the calling thread, on its own random tiles.
fn tiles(packed: bool) -> f64 {
    let q = Tensor::randn([ROWS as i64, DIM as i64], (Kind::Float, Device::Cpu));
    let r = Tensor::randn([ROWS as i64, DIM as i64], (Kind::Float, Device::Cpu));
    let out = Tensor::empty([ROWS as i64, ROWS as i64], (Kind::Float, Device::Cpu));
    let rt = r.tr();
    let once = || {
        if packed {
            // Sound: q, r and out are contiguous float32 CPU tensors of the stated shapes.
            unsafe {
                matrixmultiply::sgemm(
                    ROWS,
                    DIM,
                    ROWS,
                    1.0,
                    q.data_ptr() as *const f32,
                    DIM as isize,
                    1,
                    r.data_ptr() as *const f32,
                    1,
                    DIM as isize,
                    0.0,
                    out.data_ptr() as *mut f32,
                    ROWS as isize,
                    1,
                )
            }
        } else {
            let _ = q.mm_out(&out, &rt);
        }
    };
    tch::set_num_threads(1);
    once();
    let start = Instant::now();
    for _ in 0..REPEATS {
        once();
    }
    start.elapsed().as_secs_f64()
}

/// GFLOP/s of `threads` threads each computing its tiles.
fn rate(threads: usize, packed: bool) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| tiles(packed));
        }
    });
    let flops = 2.0 * (ROWS * ROWS * DIM * REPEATS * threads) as f64;
    flops / start.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for threads in [1, cores] {
        let torch = rate(threads, false);
        let packed = rate(threads, true);
        println!(
            "{threads} thread(s): torch.mm {torch:.0} GFLOP/s, matrixmultiply {packed:.0} GFLOP/s \
             (matrixmultiply / torch: {:.2})",
            packed / torch
        );
    }
}
