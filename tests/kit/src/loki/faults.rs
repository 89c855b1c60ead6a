//! The receiver's injectable faults: fail, hang, delay. Kept apart from the serving code so each
//! file stays readable; [`Faults::take`] decides what the next valid request meets.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Default)]
pub(super) struct Faults {
    pub(super) fail_next: Option<(u32, u16)>,
    pub(super) fail_until: Option<(Instant, u16)>,
    pub(super) hang_next: u32,
    pub(super) hang_until: Option<Instant>,
    pub(super) reject_containing: Vec<String>,
    pub(super) retry_after: Option<u64>,
    pub(super) latency: Option<Duration>,
}

pub(super) enum Fault {
    Fail(u16, Option<u64>),
    /// Hold until the instant, or (None) until the client gives up.
    Hang(Option<Instant>),
}

impl Faults {
    pub(super) fn take(&mut self, now: Instant) -> Option<Fault> {
        if let Some((n, status)) = self.fail_next {
            self.fail_next = (n > 1).then(|| (n - 1, status));
            if n > 0 {
                return Some(Fault::Fail(status, self.retry_after));
            }
        }
        if let Some((until, status)) = self.fail_until {
            if now < until {
                return Some(Fault::Fail(status, self.retry_after));
            }
            self.fail_until = None;
        }
        if self.hang_next > 0 {
            self.hang_next -= 1;
            return Some(Fault::Hang(None));
        }
        if let Some(until) = self.hang_until {
            if now < until {
                return Some(Fault::Hang(Some(until)));
            }
            self.hang_until = None;
        }
        None
    }
}
