//! escale-pipeline: the EfficientScale method end to end.
//!
//! A pipeline file ([`schema`]) names stages (prepare, scale_up, sweep, scale_out, baseline) that
//! run in order, each in its own folder of the run directory with a manifest ([`manifest`]) that
//! lets a re-run skip finished stages and resume an interrupted training. At every transition the
//! source's final validation loss and the grown model's initial one are measured with the same
//! evaluation, and the run ends with a report ([`report`], [`plot`]): report.md, summary.json and
//! the loss-vs-FLOPs figure.

pub mod schema;
pub mod manifest;
pub mod metrics;
pub mod plot;
pub mod report;
pub mod engine;
pub mod runner;
