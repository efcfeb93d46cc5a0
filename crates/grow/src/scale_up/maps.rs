//! Index maps of Scale-Up (spec §1, §2.4 and §3.1): which source unit every target unit copies.
//!
//! Everything here is a pure function of sizes (and a seed for the random variants), so the maps
//! can be computed, tested and written to the manifest without touching any weights.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// A map from target units to source units, with the replication count of every source unit.
///
/// Used for hidden channels (`g`, counts `c`), FFN neurons (`π`, counts `cI`) and query heads
/// (`σ`, counts `C`). Invariant: every source unit has at least one copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnitMap {
    /// `map[j]` = the source unit that target unit `j` copies.
    pub map: Vec<usize>,
    /// `counts[i]` = how many target units copy source unit `i`.
    pub counts: Vec<usize>,
}

/// How new units choose the source unit they copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum MapKind {
    /// Left to right, wrapping around (AquilaMoE Fig. 1): `j mod d`.
    #[default]
    Circular,
    /// Net2Net / bert2BERT: the first `d` units keep their place, each new one copies a source
    /// unit drawn uniformly with a seeded PRNG (the drawn map is stored in the manifest).
    Random,
}

impl MapKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MapKind::Circular => "circular",
            MapKind::Random => "random",
        }
    }
}

impl UnitMap {
    /// Builds a map and counts the copies; `map` must cover every source unit.
    pub fn from_map(src: usize, map: Vec<usize>) -> UnitMap {
        let mut counts = vec![0; src];
        for &i in &map {
            counts[i] += 1;
        }
        debug_assert!(counts.iter().all(|&c| c > 0), "every source unit must be copied at least once");
        UnitMap { map, counts }
    }

    /// `g(j) = j mod src`.
    pub fn circular(src: usize, dst: usize) -> UnitMap {
        UnitMap::from_map(src, (0..dst).map(|j| j % src).collect())
    }

    /// `g(j) = j` for `j < src`, uniform for the rest.
    pub fn random(src: usize, dst: usize, seed: u64) -> UnitMap {
        let mut rng = StdRng::seed_from_u64(seed);
        let map = (0..dst).map(|j| if j < src { j } else { rng.random_range(0..src) }).collect();
        UnitMap::from_map(src, map)
    }

    pub fn new(kind: MapKind, src: usize, dst: usize, seed: u64) -> UnitMap {
        match kind {
            MapKind::Circular => UnitMap::circular(src, dst),
            MapKind::Random => UnitMap::random(src, dst, seed),
        }
    }

    pub fn src_len(&self) -> usize {
        self.counts.len()
    }

    pub fn dst_len(&self) -> usize {
        self.map.len()
    }

    /// True when every source unit has the same number of copies (FPI is then exact).
    pub fn is_uniform(&self) -> bool {
        self.counts.windows(2).all(|w| w[0] == w[1])
    }

    /// `rank[j]` = how many earlier target units copy the same source unit (0 for the first copy).
    pub fn copy_rank(&self) -> Vec<usize> {
        let mut seen = vec![0; self.src_len()];
        self.map
            .iter()
            .map(|&i| {
                seen[i] += 1;
                seen[i] - 1
            })
            .collect()
    }
}

/// GQA-aware query-head map (spec §2.4): `n_kv` groups of `rep` heads grow to groups of
/// `rep_new`; target head `t` sits in group `t / rep_new` at slot `r = t % rep_new` and copies a
/// head of the *same* group, `gr·rep + τ(r)`, with `τ(r) = r` for the old slots. New slots are
/// interleaved in their group's block because HF assigns query heads to KV heads by position.
pub fn head_map(n_kv: usize, rep: usize, rep_new: usize, kind: MapKind, seed: u64) -> UnitMap {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut map = Vec::with_capacity(n_kv * rep_new);
    for gr in 0..n_kv {
        for r in 0..rep_new {
            let tau = match (r < rep, kind) {
                (true, _) => r,
                (false, MapKind::Circular) => r % rep,
                (false, MapKind::Random) => rng.random_range(0..rep),
            };
            map.push(gr * rep + tau);
        }
    }
    UnitMap::from_map(n_kv * rep, map)
}

/// Depth-growth methods (spec §3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum DepthMethod {
    /// Target layer `l'` copies source layer `⌊l'·Ls/Lt⌋` (Apollo; AquilaMoE AKI-Pro). Not exact.
    #[default]
    Interpolate,
    /// bert2BERT: `⌊Lt/Ls⌋` whole copies of the stack, then the *top* `Lt mod Ls` layers. Not exact.
    Stack,
    /// AquilaMoE's formula `l' mod Ls` (whole copies, then the *bottom* remainder). Not exact.
    StackMod,
    /// LLaMA-Pro block expansion: after every `Ls/(Lt-Ls)` layers a copy of the preceding layer
    /// whose o_proj and down_proj (and their biases) are zero, so it adds nothing: exact.
    Identity,
    /// Interpolation, with every repeated copy zero-initialised like `identity`: exact.
    InterpolateIdentity,
}

impl DepthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            DepthMethod::Interpolate => "interpolate",
            DepthMethod::Stack => "stack",
            DepthMethod::StackMod => "stack-mod",
            DepthMethod::Identity => "identity",
            DepthMethod::InterpolateIdentity => "interpolate-identity",
        }
    }

    /// Whether the new layers are zero-initialised residual blocks (function preserving).
    pub fn zero_inits_copies(self) -> bool {
        matches!(self, DepthMethod::Identity | DepthMethod::InterpolateIdentity)
    }
}

/// Which source layer each target layer copies, and which copies are zero-initialised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DepthMap {
    /// `map[l']` = source layer copied into target layer `l'`.
    pub map: Vec<usize>,
    /// `zeroed[l']`: o_proj / down_proj (and biases) of this target layer are zero.
    pub zeroed: Vec<bool>,
}

/// Computes the depth map; the error says why a method cannot produce `lt` layers from `ls`.
pub fn depth_map(method: DepthMethod, ls: usize, lt: usize) -> Result<DepthMap, String> {
    if ls == 0 || lt < ls {
        return Err(format!("cannot grow {ls} layers into {lt}: the target needs at least as many layers"));
    }
    let plain = |map: Vec<usize>| DepthMap { zeroed: vec![false; map.len()], map };
    Ok(match method {
        DepthMethod::Interpolate => plain(interpolation(ls, lt)),
        DepthMethod::StackMod => plain((0..lt).map(|l| l % ls).collect()),
        DepthMethod::Stack => {
            let whole = (lt / ls) * ls;
            let rest = lt - whole;
            plain((0..lt).map(|l| if l < whole { l % ls } else { ls - rest + (l - whole) }).collect())
        }
        DepthMethod::InterpolateIdentity => {
            let map = interpolation(ls, lt);
            let zeroed = (0..lt).map(|l| l > 0 && map[l] == map[l - 1]).collect();
            DepthMap { map, zeroed }
        }
        DepthMethod::Identity => llama_pro(ls, lt)?,
    })
}

/// `⌊l'·Ls/Lt⌋`: each source layer appears in a contiguous run, the repeated ones twice (or more).
fn interpolation(ls: usize, lt: usize) -> Vec<usize> {
    (0..lt).map(|l| l * ls / lt).collect()
}

/// LLaMA-Pro: `Ls` layers in `Lt-Ls` blocks of `s` layers, each block followed by a zeroed copy
/// of its last layer.
fn llama_pro(ls: usize, lt: usize) -> Result<DepthMap, String> {
    let new = lt - ls;
    if new == 0 {
        return Ok(DepthMap { map: (0..ls).collect(), zeroed: vec![false; ls] });
    }
    if !ls.is_multiple_of(new) {
        return Err(format!(
            "depth `identity` (LLaMA-Pro) inserts one zeroed copy after every Ls/(Lt-Ls) layers, so the \
             number of new layers ({new}) must divide the source layers ({ls}); use `interpolate-identity` \
             for any layer count"
        ));
    }
    let s = ls / new;
    let (mut map, mut zeroed) = (Vec::with_capacity(lt), Vec::with_capacity(lt));
    for block in 0..new {
        for l in block * s..(block + 1) * s {
            map.push(l);
            zeroed.push(false);
        }
        map.push((block + 1) * s - 1);
        zeroed.push(true);
    }
    Ok(DepthMap { map, zeroed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circular_hidden_map_and_counts_match_spec_example() {
        let g = UnitMap::circular(4, 6);
        assert_eq!(g.map, vec![0, 1, 2, 3, 0, 1]);
        assert_eq!(g.counts, vec![2, 2, 1, 1]);
        assert!(!g.is_uniform());
        assert!(UnitMap::circular(4, 8).is_uniform());
        assert_eq!(g.copy_rank(), vec![0, 0, 0, 0, 1, 1]);
    }

    #[test]
    fn seven_b_to_sixteen_b_counts() {
        let g = UnitMap::circular(4096, 5120);
        assert!(g.counts[..1024].iter().all(|&c| c == 2) && g.counts[1024..].iter().all(|&c| c == 1));
        let pi = UnitMap::circular(14336, 20480);
        assert!(pi.counts[..6144].iter().all(|&c| c == 2) && pi.counts[6144..].iter().all(|&c| c == 1));
    }

    #[test]
    fn random_map_keeps_originals_in_place_and_is_seeded() {
        let a = UnitMap::random(5, 12, 7);
        assert_eq!(&a.map[..5], &[0, 1, 2, 3, 4]);
        assert!(a.map.iter().all(|&i| i < 5));
        assert_eq!(a.counts.iter().sum::<usize>(), 12);
        assert_eq!(a, UnitMap::random(5, 12, 7));
        assert_ne!(a.map, UnitMap::random(5, 12, 8).map, "a different seed should draw a different map");
    }

    #[test]
    fn head_map_32_to_40_with_8_groups() {
        let s = head_map(8, 4, 5, MapKind::Circular, 0);
        let mut want = Vec::new();
        for gr in 0..8 {
            want.extend([4 * gr, 4 * gr + 1, 4 * gr + 2, 4 * gr + 3, 4 * gr]);
        }
        assert_eq!(s.map, want);
        assert_eq!(&s.map[..10], &[0, 1, 2, 3, 0, 4, 5, 6, 7, 4]);
        for (i, &c) in s.counts.iter().enumerate() {
            assert_eq!(c, if i % 4 == 0 { 2 } else { 1 }, "head {i}");
        }
    }

    #[test]
    fn head_map_toy_example_and_group_invariant() {
        let s = head_map(2, 2, 3, MapKind::Circular, 0);
        assert_eq!(s.map, vec![0, 1, 0, 2, 3, 2]);
        assert_eq!(s.counts, vec![2, 1, 2, 1]);
        // Every target head must copy a head of its own KV group, for any seed.
        for seed in 0..20 {
            let s = head_map(3, 2, 7, MapKind::Random, seed);
            for (t, &src) in s.map.iter().enumerate() {
                assert_eq!(t / 7, src / 2, "seed {seed}: head {t} copies {src}");
            }
        }
    }

    #[test]
    fn interpolation_32_to_40_duplicates_every_fourth_layer() {
        let d = depth_map(DepthMethod::Interpolate, 32, 40).unwrap();
        assert_eq!(&d.map[..8], &[0, 0, 1, 2, 3, 4, 4, 5]);
        let dups: Vec<usize> = (1..40).filter(|&l| d.map[l] == d.map[l - 1]).map(|l| d.map[l]).collect();
        assert_eq!(dups, vec![0, 4, 8, 12, 16, 20, 24, 28]);
        assert!(d.zeroed.iter().all(|z| !z));
        // The paper's Fig. 2 example: 3 -> 6 gives 0,0,1,1,2,2.
        assert_eq!(depth_map(DepthMethod::Interpolate, 3, 6).unwrap().map, vec![0, 0, 1, 1, 2, 2]);
    }

    #[test]
    fn interpolate_identity_zeroes_the_second_member_of_each_pair() {
        let d = depth_map(DepthMethod::InterpolateIdentity, 32, 40).unwrap();
        let zeroed: Vec<usize> = (0..40).filter(|&l| d.zeroed[l]).collect();
        assert_eq!(zeroed, vec![1, 6, 11, 16, 21, 26, 31, 36]);
    }

    #[test]
    fn stacking_maps() {
        let b2b = depth_map(DepthMethod::Stack, 32, 40).unwrap();
        let want: Vec<usize> = (0..32).chain(24..32).collect();
        assert_eq!(b2b.map, want);
        let modm = depth_map(DepthMethod::StackMod, 32, 40).unwrap();
        let want: Vec<usize> = (0..32).chain(0..8).collect();
        assert_eq!(modm.map, want);
        // Two whole copies then the top remainder.
        assert_eq!(depth_map(DepthMethod::Stack, 3, 8).unwrap().map, vec![0, 1, 2, 0, 1, 2, 1, 2]);
        assert_eq!(depth_map(DepthMethod::StackMod, 3, 8).unwrap().map, vec![0, 1, 2, 0, 1, 2, 0, 1]);
    }

    #[test]
    fn llama_pro_map_and_divisibility() {
        let d = depth_map(DepthMethod::Identity, 32, 40).unwrap();
        assert_eq!(&d.map[..10], &[0, 1, 2, 3, 3, 4, 5, 6, 7, 7]);
        assert_eq!(d.map[39], 31);
        let zeroed: Vec<usize> = (0..40).filter(|&l| d.zeroed[l]).collect();
        assert_eq!(zeroed, vec![4, 9, 14, 19, 24, 29, 34, 39]);
        let err = depth_map(DepthMethod::Identity, 5, 8).unwrap_err();
        assert!(err.contains("must divide") && err.contains("interpolate-identity"), "{err}");
        assert!(depth_map(DepthMethod::Interpolate, 5, 4).unwrap_err().contains("at least as many"));
    }
}
