//! `shipper`: see `shipper --help`.

fn main() {}
