//! The compute precision of a model's weights and activations, as users name it (eval, verify,
//! generate and training all take the same choice).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Precision {
    #[default]
    F32,
    /// Separates real differences from f32 rounding (comparisons, gradient checks).
    F64,
}

#[cfg(feature = "engine")]
impl Precision {
    pub fn candle(self) -> candle_core::DType {
        match self {
            Precision::F32 => candle_core::DType::F32,
            Precision::F64 => candle_core::DType::F64,
        }
    }
}
