//! Rotary position embedding tables (rotate-half layout) and the rope scaling types of the
//! supported configs.
//!
//! Supported `rope_scaling` / `rope_parameters` types:
//! * `default` (or absent): `inv_freq_i = theta^(-2i/d)`;
//! * `linear`: positions divided by `factor` (equivalently `inv_freq / factor`);
//! * `llama3`: Llama 3.1's piecewise frequency rescaling (`factor`, `low_freq_factor`,
//!   `high_freq_factor`, `original_max_position_embeddings`);
//! * `dynamic` (dynamic NTK): transformers recomputes the base only when a sequence exceeds
//!   `max_position_embeddings`, which only happens at inference. This engine refuses sequences
//!   longer than `max_position_embeddings`, so within the accepted range `dynamic` is exactly the
//!   default table (as in transformers) and the rescaling branch is never needed.
//!
//! Other types (yarn, longrope, ...) are rejected with an error naming the field.
//!
//! Tables are computed in the model's dtype the way transformers does it for that dtype: in f32
//! for an f32 model (so angles round like PyTorch's), in f64 for an f64 model (gradient checks).

use candle_core::{DType, Device, Tensor};
use escale_formats::ModelConfig;
use serde_json::Value;

use crate::error::{ModelError, Result};

#[derive(Clone, Debug)]
pub struct Rope {
    /// `head_dim / 2` inverse frequencies, after scaling.
    inv_freq: Vec<f64>,
}

fn num(v: &serde_json::Map<String, Value>, key: &str, cfg: &ModelConfig) -> Result<f64> {
    v.get(key).and_then(Value::as_f64).ok_or_else(|| ModelError::Unsupported {
        path: cfg.source().to_path_buf(),
        field: format!("rope_scaling.{key}"),
        message: "missing or not a number".into(),
    })
}

impl Rope {
    pub fn new(cfg: &ModelConfig) -> Result<Rope> {
        let d = cfg.head_dim;
        // transformers: 1 / base^(arange(0, d, 2) / d), computed in f32. Rounding to f32 here and
        // back reproduces its values to within an ulp while keeping f64 precision available.
        let base: Vec<f64> = (0..d / 2).map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / d as f64)).collect();
        let Some(scaling) = &cfg.rope_scaling else { return Ok(Rope { inv_freq: base }) };
        let Some(obj) = scaling.as_object() else {
            return Err(ModelError::Unsupported {
                path: cfg.source().to_path_buf(),
                field: "rope_scaling".into(),
                message: format!("expected an object, found {scaling}"),
            });
        };
        let kind = obj.get("rope_type").or_else(|| obj.get("type")).and_then(Value::as_str).unwrap_or("default");
        let inv_freq = match kind {
            "default" | "dynamic" => base,
            "linear" => {
                let f = num(obj, "factor", cfg)?;
                base.iter().map(|x| x / f).collect()
            }
            "llama3" => {
                let factor = num(obj, "factor", cfg)?;
                let low = num(obj, "low_freq_factor", cfg)?;
                let high = num(obj, "high_freq_factor", cfg)?;
                let old_ctx = num(obj, "original_max_position_embeddings", cfg)?;
                let low_wavelen = old_ctx / low;
                let high_wavelen = old_ctx / high;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old_ctx / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            other => {
                return Err(ModelError::Unsupported {
                    path: cfg.source().to_path_buf(),
                    field: "rope_scaling.rope_type".into(),
                    message: format!("`{other}` is not supported (supported: default, linear, dynamic, llama3)"),
                })
            }
        };
        Ok(Rope { inv_freq })
    }

    pub fn inv_freq(&self) -> &[f64] {
        &self.inv_freq
    }

    /// `(cos, sin)` of shape `[len, head_dim]` for positions `offset..offset+len`, with the
    /// frequencies duplicated over both halves (rotate-half layout).
    pub fn cos_sin(&self, offset: usize, len: usize, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let d = 2 * half;
        match dtype {
            DType::F32 => {
                let inv: Vec<f32> = self.inv_freq.iter().map(|&x| x as f32).collect();
                let mut cos = vec![0f32; len * d];
                let mut sin = vec![0f32; len * d];
                for p in 0..len {
                    let pos = (offset + p) as f32;
                    for (i, f) in inv.iter().enumerate() {
                        let a = pos * f;
                        let (s, c) = a.sin_cos();
                        cos[p * d + i] = c;
                        cos[p * d + i + half] = c;
                        sin[p * d + i] = s;
                        sin[p * d + i + half] = s;
                    }
                }
                Ok((Tensor::from_vec(cos, (len, d), device)?, Tensor::from_vec(sin, (len, d), device)?))
            }
            _ => {
                let mut cos = vec![0f64; len * d];
                let mut sin = vec![0f64; len * d];
                for p in 0..len {
                    let pos = (offset + p) as f64;
                    for (i, f) in self.inv_freq.iter().enumerate() {
                        let (s, c) = (pos * f).sin_cos();
                        cos[p * d + i] = c;
                        cos[p * d + i + half] = c;
                        sin[p * d + i] = s;
                        sin[p * d + i + half] = s;
                    }
                }
                let c = Tensor::from_vec(cos, (len, d), device)?.to_dtype(dtype)?;
                let s = Tensor::from_vec(sin, (len, d), device)?.to_dtype(dtype)?;
                Ok((c, s))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::Path;

    fn cfg(scaling: Option<Value>) -> ModelConfig {
        let mut v = json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 64, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "rope_theta": 500000.0});
        if let Some(s) = scaling {
            v["rope_scaling"] = s;
        }
        ModelConfig::from_json(v, Path::new("config.json")).unwrap()
    }

    #[test]
    fn default_frequencies_follow_theta() {
        let r = Rope::new(&cfg(None)).unwrap();
        let f = r.inv_freq();
        assert_eq!(f.len(), 16);
        assert_eq!(f[0], 1.0);
        assert!((f[1] - 500000f64.powf(-2.0 / 32.0)).abs() < 1e-15);
    }

    #[test]
    fn linear_divides_and_dynamic_equals_default() {
        let d = Rope::new(&cfg(None)).unwrap();
        let l = Rope::new(&cfg(Some(json!({"type": "linear", "factor": 4.0})))).unwrap();
        let dy = Rope::new(&cfg(Some(json!({"rope_type": "dynamic", "factor": 4.0})))).unwrap();
        for i in 0..16 {
            assert!((l.inv_freq()[i] * 4.0 - d.inv_freq()[i]).abs() < 1e-15);
            assert_eq!(dy.inv_freq()[i], d.inv_freq()[i]);
        }
    }

    #[test]
    fn llama3_keeps_high_frequencies_and_divides_low_ones() {
        // Llama 3.1 settings; wavelengths: high-frequency band kept, low band divided by factor,
        // and the middle band smoothly between (monotone in the index).
        let s = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192});
        let d = Rope::new(&cfg(None)).unwrap();
        let r = Rope::new(&cfg(Some(s))).unwrap();
        let pi2 = 2.0 * std::f64::consts::PI;
        let mut saw = [false; 3];
        for i in 0..16 {
            let (f0, f) = (d.inv_freq()[i], r.inv_freq()[i]);
            let wl = pi2 / f0;
            if wl < 8192.0 / 4.0 {
                assert_eq!(f, f0);
                saw[0] = true;
            } else if wl > 8192.0 {
                assert!((f - f0 / 8.0).abs() < 1e-18);
                saw[2] = true;
            } else {
                assert!(f < f0 && f > f0 / 8.0, "band {i}: {f} vs {f0}");
                saw[1] = true;
            }
        }
        assert_eq!(saw, [true, true, true], "theta 5e5 with d=32 covers all three bands");
    }

    #[test]
    fn unknown_type_is_named() {
        let e = Rope::new(&cfg(Some(json!({"rope_type": "yarn", "factor": 4.0})))).unwrap_err().to_string();
        assert!(e.contains("rope_scaling.rope_type") && e.contains("yarn"), "{e}");
        let e = Rope::new(&cfg(Some(json!({"rope_type": "linear"})))).unwrap_err().to_string();
        assert!(e.contains("rope_scaling.factor"), "{e}");
    }

    #[test]
    fn tables_duplicate_halves_and_match_angles() {
        let r = Rope::new(&cfg(None)).unwrap();
        let (c, s) = r.cos_sin(3, 2, DType::F64, &Device::Cpu).unwrap();
        let c = c.to_vec2::<f64>().unwrap();
        let s = s.to_vec2::<f64>().unwrap();
        for p in 0..2 {
            for i in 0..16 {
                let a = (3 + p) as f64 * r.inv_freq()[i];
                assert!((c[p][i] - a.cos()).abs() < 1e-15 && c[p][i + 16] == c[p][i]);
                assert!((s[p][i] - a.sin()).abs() < 1e-15 && s[p][i + 16] == s[p][i]);
            }
        }
    }
}
