//! The three floating-point storage types escale reads and writes, and conversions to f32.

use std::fmt;

/// Storage dtype of a checkpoint tensor. Other safetensors dtypes are rejected on open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The name used in safetensors headers.
    pub fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
        }
    }

    /// The value of the HF config's dtype key (`torch_dtype` / `dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }

    pub fn from_safetensors(d: safetensors::Dtype) -> Option<DType> {
        match d {
            safetensors::Dtype::F32 => Some(DType::F32),
            safetensors::Dtype::F16 => Some(DType::F16),
            safetensors::Dtype::BF16 => Some(DType::BF16),
            _ => None,
        }
    }

    pub fn to_safetensors(self) -> safetensors::Dtype {
        match self {
            DType::F32 => safetensors::Dtype::F32,
            DType::F16 => safetensors::Dtype::F16,
            DType::BF16 => safetensors::Dtype::BF16,
        }
    }

    /// Parses user input such as `bf16`, `bfloat16`, `F32`.
    pub fn parse(s: &str) -> Option<DType> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Some(DType::F32),
            "f16" | "float16" | "fp16" | "half" => Some(DType::F16),
            "bf16" | "bfloat16" => Some(DType::BF16),
            _ => None,
        }
    }
}

/// `s.parse::<DType>()` ([`DType::parse`] with an error listing the choices), so flags can take a
/// `DType` directly.
impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<DType, String> {
        DType::parse(s).ok_or_else(|| format!("unknown dtype `{s}` (expected f32, bf16 or f16)"))
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.safetensors_name())
    }
}

/// Decodes little-endian stored values into f32 (exact for all three dtypes).
pub fn decode_to_f32(dtype: DType, bytes: &[u8], out: &mut Vec<f32>) {
    out.clear();
    match dtype {
        DType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        DType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        DType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
    }
}

/// Counts the NaN and the infinite values among little-endian stored values, without decoding
/// into a buffer (a scan of every weight must not double the memory it touches).
pub fn count_non_finite(dtype: DType, bytes: &[u8]) -> (u64, u64) {
    let classify = |v: f32| (v.is_nan() as u64, v.is_infinite() as u64);
    let sum = |it: &mut dyn Iterator<Item = (u64, u64)>| it.fold((0, 0), |(n, i), (a, b)| (n + a, i + b));
    match dtype {
        DType::F32 => sum(&mut bytes.chunks_exact(4).map(|c| classify(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))),
        DType::F16 => sum(&mut bytes.chunks_exact(2).map(|c| classify(half::f16::from_le_bytes([c[0], c[1]]).to_f32()))),
        DType::BF16 => sum(&mut bytes.chunks_exact(2).map(|c| classify(half::bf16::from_le_bytes([c[0], c[1]]).to_f32()))),
    }
}

/// Encodes f32 values into the storage dtype, rounding once (round-to-nearest-even).
pub fn encode_from_f32(dtype: DType, values: &[f32], out: &mut Vec<u8>) {
    out.clear();
    out.reserve(values.len() * dtype.size_in_bytes());
    match dtype {
        DType::F32 => values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes())),
        DType::BF16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_bf16_f16_round_trip_is_exact_for_representable_values() {
        let values = [0.0f32, 1.0, -2.5, 0.15625, 1024.0];
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let mut bytes = Vec::new();
            encode_from_f32(dtype, &values, &mut bytes);
            assert_eq!(bytes.len(), values.len() * dtype.size_in_bytes());
            let mut back = Vec::new();
            decode_to_f32(dtype, &bytes, &mut back);
            assert_eq!(back, values, "{dtype}");
        }
    }

    #[test]
    fn bf16_rounds_to_nearest() {
        // 1 + 2^-9 is below half an ulp of bf16 at 1.0 (2^-8), so it rounds to 1.0.
        let mut bytes = Vec::new();
        encode_from_f32(DType::BF16, &[1.0 + 2f32.powi(-9), 1.0 + 3.0 * 2f32.powi(-9)], &mut bytes);
        let mut back = Vec::new();
        decode_to_f32(DType::BF16, &bytes, &mut back);
        assert_eq!(back, vec![1.0, 1.0 + 2f32.powi(-7)]);
    }
}
