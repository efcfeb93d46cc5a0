//! Byte sizes as people type them (`5GB`, `500MB`, `512KiB`, `1000`): HF's `max_shard_size`,
//! memory budgets, corpus sizes.

use std::fmt;
use std::str::FromStr;

const DECIMAL: [(&str, u64); 4] = [("TB", 1_000_000_000_000), ("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1_000)];
const BINARY: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];

/// Parses a size: a number (fractions allowed) with an optional unit, case-insensitive.
/// KB/MB/GB/TB (also K/M/G) are powers of 1000, KiB/MiB/GiB powers of 1024. `None` for
/// anything else, negative or not finite.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let multiplier = match unit.as_str() {
        "" | "b" => 1,
        "k" => 1_000,
        "m" => 1_000_000,
        "g" => 1_000_000_000,
        _ => DECIMAL.iter().chain(BINARY.iter()).find(|(name, _)| name.eq_ignore_ascii_case(&unit))?.1,
    };
    let bytes = value * multiplier as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes.round() as u64)
}

/// A byte count that parses with [`parse_size`] and prints in the largest unit that divides it
/// (`5GB`, `256MiB`, `1000`), so a flag's default shows in `--help` as a person would type it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<ByteSize, String> {
        parse_size(s).map(ByteSize).ok_or_else(|| format!("invalid size `{s}` (e.g. 5GB, 500MB, 512KiB, or bytes)"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = DECIMAL.iter().chain(BINARY.iter()).find(|(_, m)| self.0 >= *m && self.0.is_multiple_of(*m));
        match unit {
            Some((name, m)) => write!(f, "{}{name}", self.0 / m),
            None => write!(f, "{}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_rejections() {
        assert_eq!(parse_size("5GB"), Some(5_000_000_000));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("0.5 kb"), Some(500));
        assert_eq!(parse_size("2TB"), Some(2_000_000_000_000));
        assert_eq!(parse_size("7"), Some(7));
        assert_eq!(parse_size("-1MB"), None);
        assert_eq!(parse_size("1e999"), None);
        assert_eq!(parse_size("99999999999999999999GB"), None);
        assert_eq!(parse_size("5 parsecs"), None);
    }

    #[test]
    fn displays_as_typed_and_round_trips() {
        for (bytes, text) in [(5_000_000_000, "5GB"), (256 << 20, "256MiB"), (1000, "1KB"), (1001, "1001"), (0, "0")] {
            assert_eq!(ByteSize(bytes).to_string(), text);
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)));
        }
    }
}
