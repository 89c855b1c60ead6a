//! A strict Loki-compatible push receiver ([`receiver`]) with injectable faults, for tests, soaks
//! and benchmarks. The wire format itself is `diagtool_model::loki` (re-exported as [`wire`]).
//!
//! The receiver validates every body with the same [`wire::decode_push`] rules Loki applies, so a
//! test that counts zero rejected bodies proves the client never sent one Loki would refuse.

mod faults;
#[cfg(feature = "test-pki")]
pub mod pki;
mod push;
pub mod receiver;
mod secure;

pub use diagtool_model::loki::{labels, wire};
pub use receiver::{ReceivedEntry, Receiver, ReceiverBuilder, RequestRecord};
pub use secure::HANDSHAKE_TIMEOUT;
