//! Reading and writing named tensors as `.safetensors` files, with string metadata.
//! Writes are atomic and durable: a temporary file in the same folder, fsynced, renamed, then
//! the folder fsynced (so that the rename survives a power cut).

use crate::bail;
use crate::error::{Result, SladeError};
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// A tensor copied to host memory, ready to serialise.
struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn to_host(name: &str, tensor: &Tensor) -> Result<HostTensor> {
    let dtype = Dtype::try_from(tensor.kind()).map_err(|_| {
        SladeError::Dtype(format!("{name}: dtype {:?} cannot be saved", tensor.kind()))
    })?;
    let cpu = tensor.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?;
    let numel = cpu.numel();
    let mut bytes = vec![0u8; numel * cpu.kind().elt_size_in_bytes()];
    cpu.f_copy_data_u8(&mut bytes, numel)?;
    let shape = cpu.size().iter().map(|&d| d as usize).collect();
    Ok(HostTensor { dtype, shape, bytes })
}

/// A sibling path for the temporary file of an atomic write.
fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the folder).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_path(path);
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_folder(path)
    })();
    if let Err(err) = result {
        let _ = std::fs::remove_file(&tmp);
        bail!(Io, "cannot write {}: {err}", path.display());
    }
    Ok(())
}

/// Makes a rename into `path`'s folder durable: fsyncs the folder (Unix; elsewhere a no-op).
fn sync_folder(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
        std::fs::File::open(folder.unwrap_or(Path::new(".")))?.sync_all()?;
    }
    Ok(())
}

/// Writes named tensors (any device) and string metadata to a `.safetensors` file atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let host = tensors
        .iter()
        .map(|(name, t)| Ok((name.clone(), to_host(name, t)?)))
        .collect::<Result<Vec<_>>>()?;
    let views = host.iter().map(|(name, t)| (name.as_str(), t));
    let bytes = safetensors::tensor::serialize(views, &Some(metadata))
        .map_err(|e| SladeError::Io(format!("cannot serialise {}: {e:?}", path.display())))?;
    write_atomic(path, &bytes)
}

/// Named tensors (on the CPU, in file order) and the metadata of a `.safetensors` file.
pub struct SafetensorsFile {
    pub tensors: Vec<(String, Tensor)>,
    pub metadata: HashMap<String, String>,
}

/// Reads a whole `.safetensors` file.
pub fn read_safetensors(path: &Path) -> Result<SafetensorsFile> {
    if !path.exists() {
        bail!(FileNotFound, "no such file: {}", path.display());
    }
    let bytes = std::fs::read(path)
        .map_err(|e| SladeError::Io(format!("cannot read {}: {e}", path.display())))?;
    let corrupt = |e: safetensors::SafeTensorError| {
        SladeError::Io(format!("{} is not a valid .safetensors file: {e:?}", path.display()))
    };
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(corrupt)?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let file = SafeTensors::deserialize(&bytes).map_err(corrupt)?;
    let mut offsets: Vec<(usize, String)> =
        header.tensors().into_iter().map(|(name, info)| (info.data_offsets.0, name)).collect();
    offsets.sort();
    let mut tensors = Vec::with_capacity(offsets.len());
    for (_, name) in offsets {
        let view = file.tensor(&name).map_err(corrupt)?;
        let kind = Kind::try_from(view.dtype()).map_err(|_| {
            SladeError::Dtype(format!(
                "{}: {name} has unsupported dtype {:?}",
                path.display(),
                view.dtype()
            ))
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let tensor = Tensor::f_from_data_size(view.data(), &shape, kind)?;
        tensors.push((name, tensor));
    }
    Ok(SafetensorsFile { tensors, metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_metadata() {
        let dir = std::env::temp_dir().join(format!("slade-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.safetensors");
        let a = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        let b = Tensor::from_slice(&[7i64]).reshape([]);
        let tensors = vec![("z.a".to_string(), a.shallow_clone()), ("b".to_string(), b)];
        let meta = HashMap::from([("k".to_string(), "v".to_string())]);
        write_safetensors(&path, &tensors, meta).unwrap();
        let read = read_safetensors(&path).unwrap();
        assert_eq!(read.metadata["k"], "v");
        let get = |name: &str| &read.tensors.iter().find(|(n, _)| n == name).unwrap().1;
        assert!(get("z.a").equal(&a));
        assert_eq!(get("b").int64_value(&[]), 7);
        std::fs::write(&path, b"garbage").unwrap();
        assert!(matches!(read_safetensors(&path), Err(SladeError::Io(_))));
        assert!(matches!(
            read_safetensors(&dir.join("absent.safetensors")),
            Err(SladeError::FileNotFound(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
