//! Input checks shared by every public entry point (DESIGN.md §5): each failure is a
//! `SladeError` whose message names the argument and says what to fix.

use crate::bail;
use crate::error::Result;
use tch::{Device, Kind, Tensor};

/// Floating dtypes accepted for embeddings.
pub fn is_float(kind: Kind) -> bool {
    matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16)
}

/// Integer dtypes accepted for labels and indices.
pub fn is_integer(kind: Kind) -> bool {
    matches!(kind, Kind::Uint8 | Kind::Int8 | Kind::Int16 | Kind::Int | Kind::Int64)
}

/// Checks that `x` is a non-empty 2-D floating tensor of finite values; returns (rows, cols).
pub fn embeddings(x: &Tensor, name: &str) -> Result<(usize, usize)> {
    let shape = matrix(x, name)?;
    finite(x, name)?;
    Ok(shape)
}

/// Checks that `x` is a non-empty 2-D floating tensor without reading its values; returns
/// (rows, cols).
pub fn matrix(x: &Tensor, name: &str) -> Result<(usize, usize)> {
    let size = x.size();
    if size.len() != 2 {
        bail!(
            Shape,
            "{name} must be a 2-D tensor (samples x dim), got {}-D with shape {size:?}",
            size.len()
        );
    }
    if !is_float(x.kind()) {
        bail!(Dtype, "{name} must be a floating tensor (float32 or float64), got {:?}", x.kind());
    }
    if size[0] == 0 || size[1] == 0 {
        bail!(Value, "{name} is empty (shape {size:?}); it needs at least one row and one column");
    }
    Ok((size[0] as usize, size[1] as usize))
}

/// Checks that every element of `x` is finite.
pub fn finite(x: &Tensor, name: &str) -> Result<()> {
    // A NaN or Inf element makes the sum NaN or Inf, so a finite sum (one pass, no
    // temporary) proves them all finite; otherwise (also when a sum of large finite values
    // overflows) count the non-finite elements.
    if !is_float(x.kind()) || x.f_sum(x.kind())?.f_double_value(&[])?.is_finite() {
        return Ok(());
    }
    let all_finite = x.f_isfinite()?.f_all()?.f_int64_value(&[])? != 0;
    if !all_finite {
        let bad = x.f_isfinite()?.logical_not().sum(Kind::Int64).int64_value(&[]);
        bail!(NonFinite, "{name} contains {bad} NaN or Inf value(s); remove or fix them first");
    }
    Ok(())
}

/// Checks that `labels` is a 1-D integer tensor of length `n` without reading its values
/// (no copy, no device synchronisation).
pub fn label_tensor(labels: &Tensor, n: usize, name: &str, of: &str) -> Result<()> {
    let size = labels.size();
    if size.len() != 1 {
        bail!(Shape, "{name} must be a 1-D tensor, got shape {size:?}");
    }
    if !is_integer(labels.kind()) {
        bail!(Dtype, "{name} must be an integer tensor, got {:?}", labels.kind());
    }
    if size[0] as usize != n {
        bail!(Shape, "{name} has {} entries but {of} has {n} rows; they must match", size[0]);
    }
    Ok(())
}

/// Checks that `labels` is a 1-D integer tensor of length `n`; returns its values on the CPU.
pub fn labels(labels: &Tensor, n: usize, name: &str, of: &str) -> Result<Vec<i64>> {
    label_tensor(labels, n, name, of)?;
    let cpu = labels.f_to_kind(Kind::Int64)?.f_to_device(Device::Cpu)?.f_contiguous()?;
    let mut out = vec![0i64; n];
    cpu.f_copy_data(&mut out, n)?;
    Ok(out)
}

/// Checks that two tensors live on the same device.
pub fn same_device(a: &Tensor, a_name: &str, b: &Tensor, b_name: &str) -> Result<()> {
    if a.device() != b.device() {
        bail!(
            Device,
            "{a_name} is on {:?} but {b_name} is on {:?}; move them to one device",
            a.device(),
            b.device()
        );
    }
    Ok(())
}

/// Checks that two embedding matrices have the same number of columns.
pub fn same_dim(a: &Tensor, a_name: &str, b: &Tensor, b_name: &str) -> Result<()> {
    let (da, db) = (a.size()[1], b.size()[1]);
    if da != db {
        bail!(Shape, "{a_name} has dim {da} but {b_name} has dim {db}; they must match");
    }
    Ok(())
}

/// `cpu`, `cuda:0`, ... as torch writes devices.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".to_string(),
        Device::Vulkan => "vulkan".to_string(),
    }
}

/// Parses `cpu`, `cuda`, `cuda:N` or `mps`, checking that the device is present.
pub fn parse_device(name: &str) -> Result<Device> {
    let lower = name.trim().to_ascii_lowercase();
    let device = match lower.as_str() {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        "mps" => Device::Mps,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => Device::Cuda(index),
            _ => bail!(Device, "unknown device {name:?}; use \"cpu\", \"cuda\" or \"cuda:N\""),
        },
    };
    if let Device::Cuda(index) = device {
        let count = tch::Cuda::device_count() as usize;
        if index >= count {
            bail!(
                Device,
                "device {name:?} is not available: this process sees {count} CUDA device(s)"
            );
        }
    }
    Ok(device)
}

/// Checks a batch of images: a non-empty 4-D floating tensor (N, C, H, W) of finite values
/// with `channels` channels and sides of at least `min_side`; returns (N, H, W).
pub fn images(x: &Tensor, name: &str, channels: i64, min_side: i64) -> Result<(i64, i64, i64)> {
    let size = x.size();
    if size.len() != 4 {
        let hint = match size.len() {
            3 if channels == 1 => " (add the channel axis with x.unsqueeze(1))",
            3 => " (add the batch axis with x.unsqueeze(0))",
            _ => "",
        };
        bail!(Shape, "{name} must be a 4-D tensor (N, C, H, W), got shape {size:?}{hint}");
    }
    if !is_float(x.kind()) {
        bail!(
            Dtype,
            "{name} must be a floating tensor, got {:?} (convert uint8 images with x.float() / 255)",
            x.kind()
        );
    }
    if size[1] != channels {
        bail!(
            Shape,
            "{name} has {} channel(s) but the model takes {channels} (shape {size:?}); \
             set in_channels in the model config or convert the images",
            size[1]
        );
    }
    if size[0] == 0 {
        bail!(Value, "{name} is an empty batch (shape {size:?})");
    }
    if size[2] < min_side || size[3] < min_side {
        bail!(
            Shape,
            "{name} is {}x{} pixels but this backbone needs at least {min_side}x{min_side}",
            size[2],
            size[3]
        );
    }
    finite(x, name)?;
    Ok((size[0], size[2], size[3]))
}

/// Checks that every label is in `[0, upper)`; `what` says what the upper bound counts.
pub fn label_range(labels: &[i64], upper: usize, name: &str, what: &str) -> Result<()> {
    if let Some(&bad) = labels.iter().find(|&&l| l < 0 || l >= upper as i64) {
        bail!(
            Value,
            "{name} contains {bad}, but labels must be in [0, {upper}) ({upper} = {what})"
        );
    }
    Ok(())
}

/// Checks that `indices` is a 1-D tensor of integers in `0..bound` (an empty tensor of any
/// dtype is accepted, as `torch.tensor([])` makes one); returns it as int64 on `device`.
pub fn indices(
    indices: &Tensor,
    bound: usize,
    name: &str,
    of: &str,
    device: Device,
) -> Result<Tensor> {
    let size = indices.size();
    if size.len() != 1 {
        bail!(Shape, "{name} must be a 1-D index tensor, got shape {size:?}");
    }
    let on_device = |t: &Tensor| -> Result<Tensor> {
        Ok(t.f_to_kind(Kind::Int64)?.f_to_device(device)?.f_contiguous()?)
    };
    if size[0] == 0 {
        return on_device(indices);
    }
    if !is_integer(indices.kind()) {
        bail!(Dtype, "{name} must be an integer tensor of indices, got {:?}", indices.kind());
    }
    let as_int64 = indices.f_to_kind(Kind::Int64)?;
    let lowest = as_int64.f_min()?.f_int64_value(&[])?;
    let highest = as_int64.f_max()?.f_int64_value(&[])?;
    if lowest < 0 || highest >= bound as i64 {
        let bad = if lowest < 0 { lowest } else { highest };
        bail!(
            Value,
            "{name} holds index {bad} but {of} has {bound} rows; indices must lie in 0..{bound}"
        );
    }
    on_device(&as_int64)
}
