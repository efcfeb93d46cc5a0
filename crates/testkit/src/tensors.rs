//! Minimal f32 tensor I/O for tests, on the `safetensors` crate.
//!
//! Written here rather than taken from escale-formats so that the oracle's plumbing does not depend
//! on the code it is used to check: a bug in the formats reader must not hide itself by also
//! corrupting the reference data.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{tensor::TensorView, Dtype as StDtype, SafeTensors};

/// A dense row-major f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "Tensor::new: shape {shape:?} does not match {} elements",
            data.len()
        );
        Tensor { shape, data }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// Reads every tensor of one safetensors file, upcast to f32 (F32, BF16, F16, F64 and integer
/// dtypes are accepted; integers become f32, which is exact for token ids below 2^24).
pub fn read_safetensors_f32(path: &Path) -> BTreeMap<String, Tensor> {
    let bytes =
        std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{}: invalid safetensors file: {e}", path.display()));
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = to_f32(view.dtype(), view.data())
            .unwrap_or_else(|| panic!("{}: tensor {name}: dtype {:?} not handled", path.display(), view.dtype()));
        out.insert(name, Tensor::new(view.shape().to_vec(), data));
    }
    out
}

/// Reads all `*.safetensors` files of a model folder (single file or sharded) into one map.
pub fn read_checkpoint_f32(dir: &Path) -> BTreeMap<String, Tensor> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading folder {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no .safetensors files", dir.display());
    let mut out = BTreeMap::new();
    for f in files {
        for (name, t) in read_safetensors_f32(&f) {
            assert!(out.insert(name.clone(), t).is_none(), "{}: tensor {name} appears in two shards", dir.display());
        }
    }
    out
}

/// Writes f32 tensors to a safetensors file, atomically (escale's own temporary-then-rename).
pub fn write_safetensors_f32(path: &Path, tensors: &BTreeMap<String, Tensor>) {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.data.iter().flat_map(|x| x.to_le_bytes()).collect(), t.shape.clone()))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(n, b, s)| (n.clone(), TensorView::new(StDtype::F32, s.clone(), b).expect("consistent view")))
        .collect();
    let file = safetensors::serialize(views, None).unwrap_or_else(|e| panic!("serialising {}: {e}", path.display()));
    escale_util::publish::write_atomic(path, &file).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn to_f32(dtype: StDtype, b: &[u8]) -> Option<Vec<f32>> {
    fn chunks<const N: usize>(b: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        b.chunks_exact(N).map(|c| c.try_into().expect("exact chunk"))
    }
    Some(match dtype {
        StDtype::F32 => chunks::<4>(b).map(f32::from_le_bytes).collect(),
        StDtype::F64 => chunks::<8>(b).map(|c| f64::from_le_bytes(c) as f32).collect(),
        StDtype::BF16 => chunks::<2>(b).map(|c| half::bf16::from_le_bytes(c).to_f32()).collect(),
        StDtype::F16 => chunks::<2>(b).map(|c| half::f16::from_le_bytes(c).to_f32()).collect(),
        StDtype::I64 => chunks::<8>(b).map(|c| i64::from_le_bytes(c) as f32).collect(),
        StDtype::I32 => chunks::<4>(b).map(|c| i32::from_le_bytes(c) as f32).collect(),
        _ => return None,
    })
}
