//! The shipper's end-to-end harness is `testkit::shipper`, shared with the cross-crate tests in
//! the workspace's `tests/`; this module re-exports it for the tests here.
#![allow(dead_code, unused_imports)]

pub use testkit::shipper::*;

/// The shipper binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_shipper");
