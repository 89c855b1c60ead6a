//! Loki's push protocol, defined once: the wire types and the strict decoder ([`wire`]) that the
//! test receiver and tools use, the borrowed encoder ([`encode`]) the shipper's sink writes every
//! body with, and label-set text ([`labels`]).

pub mod encode;
pub mod labels;
pub mod wire;
