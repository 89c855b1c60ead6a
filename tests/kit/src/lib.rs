//! Fixtures the workspace's tests, soaks and benchmarks share: a strict Loki-compatible receiver
//! ([`loki`]) and the harness that runs the real shipper binary ([`shipper`]). Nothing here runs in a service:
//! the probe (`diagtool-probe`) and the shipper never depend on this crate outside their tests.
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod loki;
pub mod shipper;
