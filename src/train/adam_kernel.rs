//! Adam's elementwise update on contiguous float32 CPU tensors in two passes over memory
//! instead of nine torch operations, with those operations' rounding, so that the weights
//! are the same bit for bit (tested against them):
//!
//! - moments: `m <- lerp(m, g, 1 - b1)`, as ATen's lerp: `fma(w, g - m, m)` for a weight
//!   `|w| < 0.5`, else `fma(w - 1, g - m, g)`; `v <- fma(g, g (1 - b2), v b2)`, as
//!   `v.mul_(b2).addcmul_(g, g * (1 - b2))` (ATen's addcmul is a fused multiply-add);
//! - then `r = sqrt(v)` stays ATen's (its vector path is within 1 ulp, not IEEE's rounding);
//! - update: `p <- p + m / ((r / sqrt(1 - b2^t) + eps) / -step)`, one rounding per
//!   operation, as `div_`, `add_`, `div_` and `addcdiv_` on float32 (scalars rounded to
//!   float32 first, as ATen does).
//!
//! The loops run on the calling thread: on rayon's workers they competed with torch's
//! OpenMP threads, which spin for a while after each torch operation, and took longer.

use crate::error::Result;
use multiversion::multiversion;
use tch::{Device, Kind, Tensor};

/// The scalars of one Adam update.
pub(super) struct AdamStep {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// `lr / (1 - beta1^t)`.
    pub step_size: f64,
    /// `sqrt(1 - beta2^t)`.
    pub root_bias_correction: f64,
}

/// One update of `p` with gradient `g` and moments `m`, `v` (all checked by [`fits`]).
pub(super) fn step(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, h: &AdamStep) -> Result<()> {
    moments(m, v, g, h.beta1, h.beta2);
    let root = v.f_sqrt()?;
    update(p, m, &root, h);
    Ok(())
}

/// Whether the tensors are distinct contiguous float32 CPU tensors of one size.
pub(super) fn fits(tensors: &[&Tensor]) -> bool {
    let numel = tensors[0].numel();
    let mut pointers: Vec<usize> = tensors.iter().map(|t| t.data_ptr() as usize).collect();
    pointers.sort_unstable();
    pointers.dedup();
    pointers.len() == tensors.len()
        && tensors.iter().all(|t| {
            t.device() == Device::Cpu
                && t.kind() == Kind::Float
                && t.is_contiguous()
                && t.numel() == numel
        })
}

/// `m <- lerp(m, g, 1 - beta1)`, `v <- beta2 v + (1 - beta2) g^2` in place.
fn moments(m: &Tensor, v: &Tensor, g: &Tensor, beta1: f64, beta2: f64) {
    let weight = (1.0 - beta1) as f32;
    let small = weight.abs() < 0.5;
    let coeff = if small { weight } else { weight - 1.0 };
    let (decay, rest) = (beta2 as f32, (1.0 - beta2) as f32);
    // Sound: `fits` checked that the three tensors are distinct, contiguous float32 CPU
    // tensors of one length, and nothing else touches them during the loop.
    let (m, v, g) = unsafe { (Raw::of(m).slice_mut(), Raw::of(v).slice_mut(), Raw::of(g).slice()) };
    moments_loop(m, v, g, [coeff, decay, rest], small);
}

/// The loop of [`moments`], compiled for AVX-512 and AVX2 with FMA as well (runtime
/// dispatch): `mul_add` is one fused multiply-add on every target, so the result does not
/// depend on the CPU.
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma+bmi1+bmi2+lzcnt+popcnt",
    "x86_64+avx2+fma+bmi1+bmi2+lzcnt+popcnt"
))]
fn moments_loop(
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    [coeff, decay, rest]: [f32; 3],
    small: bool,
) {
    for ((m, v), &g) in m.iter_mut().zip(v.iter_mut()).zip(g) {
        *m = coeff.mul_add(g - *m, if small { *m } else { g });
        *v = g.mul_add(g * rest, *v * decay);
    }
}

/// `p <- p + m / ((root / root_bias_correction + eps) / -step_size)` in place.
fn update(p: &Tensor, m: &Tensor, root: &Tensor, h: &AdamStep) {
    let scale = h.root_bias_correction as f32;
    let (eps, step) = (h.eps as f32, (-h.step_size) as f32);
    // Sound: as in `moments` (`root` is a fresh tensor of the same length).
    let (p, m, r) = unsafe { (Raw::of(p).slice_mut(), Raw::of(m).slice(), Raw::of(root).slice()) };
    update_loop(p, m, r, [scale, eps, step]);
}

/// The loop of [`update`], compiled as [`moments_loop`].
#[multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512dq+avx512vl+avx2+fma+bmi1+bmi2+lzcnt+popcnt",
    "x86_64+avx2+fma+bmi1+bmi2+lzcnt+popcnt"
))]
fn update_loop(p: &mut [f32], m: &[f32], r: &[f32], [scale, eps, step]: [f32; 3]) {
    for ((p, &m), &r) in p.iter_mut().zip(m).zip(r) {
        *p += m / ((r / scale + eps) / step);
    }
}

/// The float32 elements of a contiguous CPU tensor.
struct Raw {
    data: *mut f32,
    len: usize,
}

impl Raw {
    fn of(t: &Tensor) -> Raw {
        Raw { data: t.data_ptr() as *mut f32, len: t.numel() }
    }

    /// Caller: the tensor is contiguous float32 and no other reference to its elements is
    /// alive while the slice is.
    unsafe fn slice_mut<'a>(self) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.data, self.len)
    }

    /// Caller: the tensor is contiguous float32 and no mutable reference to its elements is
    /// alive while the slice is.
    unsafe fn slice<'a>(self) -> &'a [f32] {
        std::slice::from_raw_parts(self.data, self.len)
    }
}
