//! `diagtool`, the operator's CLI, as a library: the commands ([`cli`]) and the soak harness
//! ([`soak`]). The documents it reads and writes, the growth analysis and the pprof codec come
//! from `diagtool-model` and are re-exported here under their usual names; the probe a service
//! embeds is the separate `diagtool-probe` crate, which this one never links.
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod cli;
pub mod soak;

pub use diagtool_model as model;
pub use diagtool_model::{analysis, pprof};
pub use testkit::loki;
