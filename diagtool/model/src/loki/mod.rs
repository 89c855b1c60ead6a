//! Loki's push protocol: the wire types ([`wire`]) that the shipper's sink encodes and every
//! decoder (the test receiver, tools) reads, and label-set text ([`labels`]).

pub mod labels;
pub mod wire;
