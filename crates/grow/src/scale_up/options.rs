//! User-facing choices of a Scale-Up (spec §2, §3 and the defaults of §7).

use serde::{Deserialize, Serialize};

use super::maps::{DepthMethod, MapKind};
use escale_formats::DType;
use escale_util::rng::splitmix64;

/// Width-growth method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Function-preserving copies (bert2BERT FPI).
    Fpi,
    /// Advanced knowledge initialisation: new heads / FFN neurons of layer `l` take layer `l+1`'s
    /// weights (bert2BERT AKI). Not function preserving, but the papers report faster training.
    Aki,
    /// AKI width growth (GQA-aware) then interpolation depth growth: AquilaMoE's chosen scheme.
    #[default]
    AkiPro,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::Fpi, Method::Aki, Method::AkiPro];
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Fpi => "fpi",
            Method::Aki => "aki",
            Method::AkiPro => "aki-pro",
        }
    }
    pub fn is_aki(self) -> bool {
        matches!(self, Method::Aki | Method::AkiPro)
    }
}

/// How the residual stream is expanded (spec §2.1 table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// Plain copies (paper-faithful); exact only when every hidden channel has the same number of copies.
    #[default]
    Fpi,
    /// Copies scaled by `sqrt(D/(d·c))` so the RMS is unchanged; exact for any width.
    FpiScaled,
    /// Whole copies then zero pad channels, with `rms_norm_eps` scaled by `κ² = kd/D`; exact for any width.
    ZeroPad,
}

impl Preset {
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Fpi => "fpi",
            Preset::FpiScaled => "fpi-scaled",
            Preset::ZeroPad => "zero-pad",
        }
    }
}

/// How the consumer (fan-out) weights of copied units are split between the copies (spec §2.5).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Fanout {
    /// Every copy gets `1/c` of the original: copies stay identical (and get identical gradients).
    Equal,
    /// LEMON: the copies get the equal split plus zero-mean Gaussian noise of std `scale` across
    /// the copies of each unit, so the sum (and the function) is unchanged but the symmetry is broken.
    Lemon { scale: f32 },
}

/// Where AKI takes the down_proj / o_proj columns of the new units from (spec §2.6, OPEN point).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum AkiConsumerSource {
    /// From layer `l+1`, like its rows (neuron-copy semantics; bert2BERT-GPT re-implementation).
    Upper,
    /// From layer `l` itself (literal reading of bert2BERT's in-dimension rule).
    #[serde(rename = "self")]
    #[cfg_attr(feature = "clap", value(name = "self"))]
    SelfLayer,
}

impl AkiConsumerSource {
    pub fn as_str(self) -> &'static str {
        match self {
            AkiConsumerSource::Upper => "upper",
            AkiConsumerSource::SelfLayer => "self",
        }
    }
}

/// Which output units AKI fills from the upper layer (spec §2.6, OPEN point).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum AkiScope {
    /// New query heads and new FFN neurons only; the hidden dimension stays FPI.
    Units,
    /// Also the new hidden-size output rows (o_proj, down_proj and their biases): mixes layers in
    /// the residual stream.
    All,
}

impl AkiScope {
    pub fn as_str(self) -> &'static str {
        match self {
            AkiScope::Units => "units",
            AkiScope::All => "all",
        }
    }
}

/// Every choice of a Scale-Up. `Default` gives the spec's §7 defaults (AKI-Pro, paper-faithful FPI
/// preset, circular maps, equal fan-out, interpolation depth).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScaleUpOptions {
    pub method: Method,
    pub preset: Preset,
    /// `None`: interpolation (the only choice for AKI-Pro).
    pub depth: Option<DepthMethod>,
    /// Hidden-channel map (the FFN neuron map uses the same kind, with its own seed stream).
    pub hidden_map: MapKind,
    /// Slot map for new query heads inside their KV group.
    pub head_map: MapKind,
    pub fanout: Fanout,
    /// Seed of every random choice (random maps, LEMON noise); recorded in the manifest.
    pub seed: u64,
    pub aki_consumer_source: AkiConsumerSource,
    pub aki_scope: AkiScope,
    /// Output storage dtype; `None` keeps each source tensor's dtype.
    pub dtype: Option<DType>,
}

impl Default for ScaleUpOptions {
    fn default() -> Self {
        ScaleUpOptions {
            method: Method::AkiPro,
            preset: Preset::Fpi,
            depth: None,
            hidden_map: MapKind::Circular,
            head_map: MapKind::Circular,
            fanout: Fanout::Equal,
            seed: 0,
            aki_consumer_source: AkiConsumerSource::Upper,
            aki_scope: AkiScope::Units,
            dtype: None,
        }
    }
}

impl ScaleUpOptions {
    /// The depth method actually used.
    pub fn depth_method(&self) -> DepthMethod {
        self.depth.unwrap_or(DepthMethod::Interpolate)
    }
}

/// Independent seed streams derived from the one user seed, so e.g. switching the hidden map to
/// random does not change the LEMON noise.
pub(crate) fn sub_seed(seed: u64, stream: u64) -> u64 {
    splitmix64(seed ^ splitmix64(stream.wrapping_add(0x5ca1_e0f0)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sub_seeds_are_frozen() {
        // The value of the pre-escale-util splitmix: seeds recorded in manifests must replay.
        assert_eq!(super::sub_seed(42, 4), 0x6a6f_b535_3fb2_6b11);
    }

    #[test]
    fn options_round_trip_through_serde_with_their_names() {
        use super::*;
        let o = ScaleUpOptions {
            method: Method::Aki,
            preset: Preset::ZeroPad,
            depth: Some(DepthMethod::InterpolateIdentity),
            fanout: Fanout::Lemon { scale: 0.5 },
            aki_consumer_source: AkiConsumerSource::SelfLayer,
            ..Default::default()
        };
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!((v["method"].as_str(), v["preset"].as_str()), (Some("aki"), Some("zero-pad")));
        assert_eq!((v["depth"].as_str(), v["aki_consumer_source"].as_str()), (Some("interpolate-identity"), Some("self")));
        assert_eq!(serde_json::from_value::<ScaleUpOptions>(v).unwrap(), o);
        let partial: ScaleUpOptions = serde_json::from_str(r#"{"preset": "fpi-scaled"}"#).unwrap();
        assert_eq!(partial, ScaleUpOptions { preset: Preset::FpiScaled, ..Default::default() });
    }
}
