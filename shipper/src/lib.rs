//! The log shipper: tails files and Docker json-file logs and pushes them to Grafana Loki.
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]

pub mod event;
pub mod leaklab;
pub mod sink;
