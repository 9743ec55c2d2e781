//! Max pooling (the ConvNet's 2x2 windows with stride 2, the ResNets' 3x3 with stride 2 and
//! padding 1), with ATen's values and gradients, faster on the CPU than ATen's kernel for
//! contiguous (NCHW) float tensors, which walks each window with a per-element index
//! computation (about 40% of the ConvNet's forward pass in evaluation, a quarter of its
//! training step).
//!
//! - Without autograd (embedding the pool and the test images, a frozen backbone), 2x2
//!   windows only (the others run ATen's kernel): each output reads its window's four
//!   values in row-major order and keeps ATen's choice: starting from -inf, a value replaces
//!   the maximum when it is larger or NaN (`cpu_max_pool`'s `(val > maxval) || isnan(val)`).
//!   So the maxima are ATen's bit for bit, signed zeros and NaNs included. The planes are
//!   split among rayon's workers where torch may use more than one thread
//!   (`torch.get_num_threads()`, which a user or a launcher may have set to 1).
//! - With autograd (training steps), any window: ATen's channels-last kernel picks the
//!   positions (it chooses as the NCHW kernel does, and runs several times faster even with
//!   the copy into that layout; a Rust loop for the positions measured slower inside a
//!   training step, beside torch's threads), and a `gather` of them gives the values; its
//!   backward scatters the gradient to those positions, as ATen's
//!   `max_pool2d_with_indices_backward` does. Values and gradients are ATen's bit for bit,
//!   overlapping windows included (both add a position's gradients in output order).
//!
//! The autograd path takes float32 and bfloat16 (`precision = "bf16"`; there a NaN maximum
//! keeps its input's bits, which ATen's kernel may rewrite), the own kernel float32;
//! other devices, dtypes and memory layouts run ATen's kernel.

use crate::error::Result;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

/// `max_pool2d(x, kernel 2, stride 2)` of a 4-D tensor (floor mode: an odd last row or
/// column is left out, as in ATen).
pub fn max_pool_2x2(x: &Tensor) -> Result<Tensor> {
    max_pool(x, 2, 2, 0)
}

/// `max_pool2d(x, kernel, stride, padding)` of a 4-D tensor (square windows, dilation 1,
/// floor mode), with ATen's values and gradients (see the module docs).
pub fn max_pool(x: &Tensor, kernel: i64, stride: i64, padding: i64) -> Result<Tensor> {
    let size = x.size();
    let fits = x.device() == Device::Cpu
        && matches!(x.kind(), Kind::Float | Kind::BFloat16)
        && size.len() == 4
        && x.is_contiguous()
        && x.numel() > 0
        && size[2] + 2 * padding >= kernel
        && size[3] + 2 * padding >= kernel;
    let aten = |x: &Tensor| x.f_max_pool2d([kernel; 2], [stride; 2], [padding; 2], [1, 1], false);
    if !fits {
        return Ok(aten(x)?);
    }
    if x.requires_grad() {
        return max_pool_by_gather(x, kernel, stride, padding);
    }
    if (kernel, stride, padding) != (2, 2, 0) || x.kind() != Kind::Float {
        return Ok(aten(x)?);
    }
    let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
    let shape = Plane { w: w as usize, oh: (h / 2) as usize, ow: (w / 2) as usize };
    let out = Tensor::f_empty([n, c, h / 2, w / 2], (Kind::Float, Device::Cpu))?;
    // Sound: a contiguous CPU float32 tensor of n*c*h*w elements, only read here, and a new
    // contiguous float32 tensor of n*c*(h/2)*(w/2) elements that nothing else references.
    let (input, values) = unsafe {
        (
            std::slice::from_raw_parts(x.data_ptr() as *const f32, x.numel()),
            std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, out.numel()),
        )
    };
    let (outputs, inputs) = (shape.outputs(), h as usize * shape.w);
    if tch::get_num_threads() > 1 {
        let planes = values.par_chunks_mut(outputs).zip(input.par_chunks(inputs));
        planes.for_each(|(out, plane)| shape.maxima(plane, out));
    } else {
        let planes = values.chunks_mut(outputs).zip(input.chunks(inputs));
        planes.for_each(|(out, plane)| shape.maxima(plane, out));
    }
    Ok(out)
}

/// With autograd: the positions of the maxima from ATen's channels-last kernel, the values
/// (and the gradient) through a `gather` of them (see the module docs).
fn max_pool_by_gather(x: &Tensor, kernel: i64, stride: i64, padding: i64) -> Result<Tensor> {
    let positions = tch::no_grad(|| -> Result<Tensor> {
        let channels_last = x.f_detach()?.f_permute([0, 2, 3, 1])?.f_contiguous()?;
        let nchw_view = channels_last.f_permute([0, 3, 1, 2])?;
        let (_, at) = nchw_view.f_max_pool2d_with_indices(
            [kernel; 2],
            [stride; 2],
            [padding; 2],
            [1, 1],
            false,
        )?;
        Ok(at.f_contiguous()?)
    })?;
    let gathered = x.f_flatten(2, 3)?.f_gather(2, &positions.f_flatten(2, 3)?, false)?;
    Ok(gathered.f_view_as(&positions)?)
}

/// One input plane's width and its output's size.
struct Plane {
    w: usize,
    oh: usize,
    ow: usize,
}

impl Plane {
    fn outputs(&self) -> usize {
        self.oh * self.ow
    }

    /// The four positions of window (y, x) in ATen's order: row by row.
    fn window(&self, y: usize, x: usize) -> [usize; 4] {
        let top = 2 * y * self.w + 2 * x;
        [top, top + 1, top + self.w, top + self.w + 1]
    }

    /// ATen's choice among a window's values: its position.
    fn choose(plane: &[f32], window: [usize; 4]) -> usize {
        let (mut best, mut at) = (f32::NEG_INFINITY, window[0]);
        for p in window {
            let v = plane[p];
            if v > best || v.is_nan() {
                best = v;
                at = p;
            }
        }
        at
    }

    fn maxima(&self, plane: &[f32], out: &mut [f32]) {
        for y in 0..self.oh {
            for x in 0..self.ow {
                out[y * self.ow + x] = plane[Self::choose(plane, self.window(y, x))];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aten(x: &Tensor) -> Tensor {
        x.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
    }

    /// Inputs with ties, signed zeros, NaNs and -inf, in odd and even sizes.
    fn hostile(n: i64, c: i64, h: i64, w: i64) -> Tensor {
        tch::manual_seed(0);
        let x = (Tensor::randn([n, c, h, w], (Kind::Float, Device::Cpu)) * 2.0).round();
        let flat = x.view([-1]);
        let specials = [0.0, -0.0, f64::NAN, f64::NEG_INFINITY, f64::INFINITY, -0.0];
        for (i, &v) in specials.iter().cycle().take(40).enumerate() {
            let _ = flat.get((i * 7 % flat.size()[0] as usize) as i64).fill_(v);
        }
        x
    }

    fn same_bits(a: &Tensor, b: &Tensor) -> bool {
        a.size() == b.size()
            && Vec::<f32>::try_from(a.flatten(0, -1))
                .unwrap()
                .iter()
                .zip(Vec::<f32>::try_from(b.flatten(0, -1)).unwrap())
                .all(|(x, y)| x.to_bits() == y.to_bits())
    }

    #[test]
    fn values_are_aten_bit_for_bit() {
        for (h, w) in [(28, 28), (7, 7), (2, 3), (5, 4)] {
            let x = hostile(3, 2, h, w);
            let ours = tch::no_grad(|| max_pool_2x2(&x).unwrap());
            assert!(same_bits(&ours, &aten(&x)), "{h}x{w}");
        }
    }

    #[test]
    fn one_torch_thread_gives_the_same_bits() {
        let x = hostile(2, 3, 9, 8);
        let parallel = tch::no_grad(|| max_pool_2x2(&x).unwrap());
        let _one_thread = crate::threads::single_threaded_torch();
        let serial = tch::no_grad(|| max_pool_2x2(&x).unwrap());
        assert!(same_bits(&serial, &parallel) && same_bits(&serial, &aten(&x)));
    }

    #[test]
    fn with_autograd_values_and_gradients_are_aten_bit_for_bit() {
        for (n, c, h, w) in [(2, 3, 7, 6), (4, 16, 28, 28), (3, 5, 2, 3), (1, 70, 5, 5)] {
            let x = hostile(n, c, h, w).set_requires_grad(true);
            let g = Tensor::randn([n, c, h / 2, w / 2], (Kind::Float, Device::Cpu));
            let gradient = |y: &Tensor| {
                let loss = (y * &g).sum(Kind::Float);
                Tensor::run_backward(&[&loss], &[&x], false, false)[0].shallow_clone()
            };
            let (ours, want) = (max_pool_2x2(&x).unwrap(), aten(&x));
            assert!(ours.requires_grad() && ours.is_contiguous());
            assert!(same_bits(&ours.detach(), &want.detach()), "{n}x{c}x{h}x{w}");
            assert!(same_bits(&gradient(&ours), &gradient(&want)), "{n}x{c}x{h}x{w}");
        }
    }

    #[test]
    fn overlapping_padded_windows_with_autograd_are_aten_bit_for_bit() {
        for (n, c, h, w) in [(2, 3, 16, 16), (3, 4, 7, 9), (1, 8, 3, 2)] {
            let x = hostile(n, c, h, w).set_requires_grad(true);
            let want = x.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
            let g = Tensor::randn(want.size(), (Kind::Float, Device::Cpu));
            let gradient = |y: &Tensor| {
                let loss = (y * &g).sum(Kind::Float);
                Tensor::run_backward(&[&loss], &[&x], false, false)[0].shallow_clone()
            };
            let ours = max_pool(&x, 3, 2, 1).unwrap();
            assert!(same_bits(&ours.detach(), &want.detach()), "{n}x{c}x{h}x{w}");
            assert!(same_bits(&gradient(&ours), &gradient(&want)), "{n}x{c}x{h}x{w}");
            let frozen = tch::no_grad(|| max_pool(&x.detach(), 3, 2, 1).unwrap());
            assert!(same_bits(&frozen, &want.detach()));
        }
    }

    #[test]
    fn bfloat16_with_autograd_is_aten_nans_aside() {
        let x = hostile(3, 8, 9, 10).to_kind(Kind::BFloat16).set_requires_grad(true);
        let g = Tensor::randn([3, 8, 4, 5], (Kind::BFloat16, Device::Cpu));
        let gradient = |y: &Tensor| {
            let loss = (y * &g).sum(Kind::Float);
            Tensor::run_backward(&[&loss], &[&x], false, false)[0].to_kind(Kind::Float)
        };
        let (ours, want) = (max_pool_2x2(&x).unwrap(), aten(&x));
        assert_eq!(ours.kind(), Kind::BFloat16);
        // ATen's bfloat16 kernel rounds its maxima through float32, which rewrites a NaN's
        // sign and payload: NaNs are compared as NaNs, every other value by its bits.
        let nans = ours.isnan();
        assert!(nans.equal(&want.isnan()) && nans.any().int64_value(&[]) == 1);
        let numbers = |t: &Tensor| t.to_kind(Kind::Float).masked_fill(&nans, 0.0);
        assert!(same_bits(&numbers(&ours), &numbers(&want)));
        assert!(same_bits(&gradient(&ours), &gradient(&want)));
    }

    #[test]
    fn other_layouts_and_dtypes_run_aten() {
        let x = hostile(2, 3, 6, 6);
        for input in [x.transpose(2, 3), x.to_kind(Kind::Double)] {
            let ours = tch::no_grad(|| max_pool_2x2(&input).unwrap());
            let want = aten(&input);
            assert!(same_bits(&ours.to_kind(Kind::Float), &want.to_kind(Kind::Float)));
        }
    }
}
