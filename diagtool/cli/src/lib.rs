//! Leak diagnostics and profiling for tokio services.
//!
//! `diagtool` is both a library a service embeds to become diagnosable (the `probe` feature) and the
//! operator's CLI that reads what the probe serves. The documents exchanged between the two are defined
//! once, in [`model`]; nothing else defines them.
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod analysis;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "loki")]
pub mod loki;
pub mod model;
#[cfg(any(feature = "probe", feature = "cli"))]
pub mod pprof;
#[cfg(feature = "probe")]
pub mod probe;
#[cfg(feature = "cli")]
pub mod soak;
#[cfg(feature = "probe")]
pub mod testing;
