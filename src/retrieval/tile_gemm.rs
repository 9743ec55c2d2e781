//! The float32 product of one k-NN tile, `D = Q R^T` for a block of query rows and a block
//! of reference rows, computed on the calling rayon worker.
//!
//! Two kernels compute it: torch's `mm` (MKL on x86) on one thread, and the `matrixmultiply`
//! crate's packed FMA kernel. Which is faster depends on the CPU: MKL's float32 kernels are
//! fast on Intel cores, while on AMD Zen 5 `matrixmultiply` ran 1.6-1.8x MKL's single-thread
//! rate (bench/README.md, "Retrieval metrics"). `TileGemm::fastest` times both once per process on
//! a tile of random rows and keeps the faster one. The k-NN results do not depend on the
//! choice: the candidates' error bound holds for any summation order, with or without FMA,
//! and the exact re-rank decides the order.

use crate::error::Result;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// A kernel for the tile product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TileGemm {
    /// `torch.mm` into the worker's buffer, with torch on one thread (`crate::threads`).
    Torch,
    /// `matrixmultiply::sgemm` on the rows' memory.
    Matrixmultiply,
}

impl TileGemm {
    /// The faster kernel on this CPU, timed once per process.
    pub fn fastest() -> TileGemm {
        static CHOICE: OnceLock<TileGemm> = OnceLock::new();
        *CHOICE.get_or_init(|| {
            let torch = best_time(TileGemm::Torch);
            let packed = best_time(TileGemm::Matrixmultiply);
            match (torch, packed) {
                (Ok(t), Ok(p)) if p < t => TileGemm::Matrixmultiply,
                _ => TileGemm::Torch,
            }
        })
    }

    /// `out[i * cols + j] = q_rows[i] . r_rows[j]` for row-major `q` (`rows x dim`) and `r`
    /// (`cols x dim`), both contiguous float32 CPU tensors; `out` holds `rows x cols` floats.
    /// Other operands are an internal error (the kernels read the tensors' memory directly).
    pub fn product(self, q: &Tensor, r: &Tensor, out: &mut [f32]) -> Result<()> {
        let operand = |t: &Tensor| {
            t.dim() == 2
                && t.kind() == Kind::Float
                && t.device() == Device::Cpu
                && t.is_contiguous()
        };
        if !operand(q) || !operand(r) || q.size()[1] != r.size()[1] {
            crate::bail!(
                Internal,
                "tile operands must be contiguous 2-D float32 CPU tensors of one width"
            );
        }
        let (rows, dim) = (q.size()[0] as usize, q.size()[1] as usize);
        let cols = r.size()[0] as usize;
        if out.len() < rows * cols {
            crate::bail!(
                Internal,
                "tile buffer of {} floats for a {rows} x {cols} tile",
                out.len()
            );
        }
        match self {
            TileGemm::Torch => {
                let _one_thread = crate::threads::single_threaded_torch();
                // Sound: `out` is a live float32 buffer of at least rows x cols elements,
                // borrowed mutably for the duration of the call.
                let target = unsafe {
                    Tensor::f_from_blob(
                        out.as_mut_ptr() as *const u8,
                        &[rows as i64, cols as i64],
                        &[cols as i64, 1],
                        Kind::Float,
                        Device::Cpu,
                    )?
                };
                let written = q.f_mm_out(&target, &r.f_tr()?)?;
                if written.data_ptr() != out.as_mut_ptr() as *mut std::ffi::c_void {
                    crate::bail!(Internal, "mm_out did not write into the tile buffer");
                }
            }
            TileGemm::Matrixmultiply => {
                // Sound: q and r are contiguous float32 CPU tensors of the stated shapes
                // (checked above), out holds rows x cols floats; B = R^T is read through
                // strides (row stride 1, column stride dim).
                unsafe {
                    matrixmultiply::sgemm(
                        rows,
                        dim,
                        cols,
                        1.0,
                        q.data_ptr() as *const f32,
                        dim as isize,
                        1,
                        r.data_ptr() as *const f32,
                        1,
                        dim as isize,
                        0.0,
                        out.as_mut_ptr(),
                        cols as isize,
                        1,
                    );
                }
            }
        }
        Ok(())
    }
}

/// The best of three timings of one 512 x 1,024 x 256 tile (after one warm-up).
fn best_time(kernel: TileGemm) -> Result<Duration> {
    let _no_grad = tch::no_grad_guard();
    let q = Tensor::f_randn([512, 256], (Kind::Float, Device::Cpu))?;
    let r = Tensor::f_randn([1024, 256], (Kind::Float, Device::Cpu))?;
    let mut out = vec![0.0f32; 512 * 1024];
    kernel.product(&q, &r, &mut out)?;
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        kernel.product(&q, &r, &mut out)?;
        best = best.min(start.elapsed());
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kernels_compute_the_product() {
        let q = Tensor::randn([37, 19], (Kind::Float, Device::Cpu));
        let r = Tensor::randn([53, 19], (Kind::Float, Device::Cpu));
        let expected = q.to_kind(Kind::Double).mm(&r.to_kind(Kind::Double).tr());
        for kernel in [TileGemm::Torch, TileGemm::Matrixmultiply] {
            let mut out = vec![f32::NAN; 37 * 53 + 5];
            kernel.product(&q, &r, &mut out).unwrap();
            let got = Tensor::from_slice(&out[..37 * 53]).view([37, 53]).to_kind(Kind::Double);
            let diff = f64::try_from((got - &expected).abs().max()).unwrap();
            assert!(diff < 1e-4, "{kernel:?}: {diff}");
            assert!(out[37 * 53..].iter().all(|v| v.is_nan()), "{kernel:?} wrote past the tile");
            let mut short = vec![0.0f32; 37 * 53 - 1];
            assert!(kernel.product(&q, &r, &mut short).is_err(), "{kernel:?}: short buffer");
            let strided = r.tr().contiguous().tr();
            assert!(kernel.product(&q, &strided, &mut out).is_err(), "{kernel:?}: strided");
            let double = r.to_kind(Kind::Double);
            assert!(kernel.product(&q, &double, &mut out).is_err(), "{kernel:?}: float64");
        }
    }
}
