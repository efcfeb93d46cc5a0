//! The helpers every escale crate needs and none owns: each is defined here once.
//!
//! - [`rng`]: the frozen SplitMix64 generator and seed derivation (streams that never change
//!   between escale versions, so corpora, shuffles and growth noise replay exactly);
//! - [`hash`]: 64-bit FNV-1a, the stable hash behind fingerprints stored on disk;
//! - [`pages`]: page-cache hints for memory-mapped sources (read-ahead, release after last use);
//! - [`publish`]: temporary names and atomic, durable publishing of files and folders;
//! - [`output`]: what `--force` may replace, and outputs kept clear of their sources;
//! - [`lock`]: advisory locks on output folders naming their holder's PID;
//! - [`size`]: byte sizes as people type them (`5GB`, `512KiB`);
//! - [`stop`]: the process-wide request to stop long work early (SIGINT/SIGTERM);
//! - `progress` (feature `progress`): the stderr draw target of every progress bar.
//!
//! This crate sits below every other escale crate and depends on nothing of theirs.

pub mod hash;
pub mod lock;
pub mod output;
pub mod pages;
#[cfg(feature = "progress")]
pub mod progress;
pub mod publish;
pub mod rng;
pub mod size;
pub mod stop;
