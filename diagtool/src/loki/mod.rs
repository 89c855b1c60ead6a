//! Loki's push protocol: the wire types ([`wire`]) shared by the shipper's sink and by tools, and a
//! strict Loki-compatible receiver ([`receiver`]) with injectable faults, for tests, soaks and
//! benchmarks.
//!
//! The receiver validates every body with the same [`wire::decode_push`] rules Loki applies, so a
//! test that counts zero rejected bodies proves the client never sent one Loki would refuse.

mod faults;
mod labels;
#[cfg(feature = "test-pki")]
pub mod pki;
pub mod receiver;
mod secure;
pub mod wire;

pub use receiver::{ReceivedEntry, Receiver, ReceiverBuilder, RequestRecord};
pub use secure::HANDSHAKE_TIMEOUT;
