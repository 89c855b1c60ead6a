//! Adaptive request concurrency (AIMD), after Vector's ARC: how many push requests may be in flight.
//!
//! The limit starts at 1. Time is cut into windows about one average round trip long. At the end of
//! a window the limit grows by one if the window was full (requests in flight reached the limit)
//! and latency stayed steady; it halves if latency rose clearly above its moving average. A sign of
//! backpressure (429, 503, a timeout, any retryable failure) halves it at once, at most once per
//! window, so a burst of failures from one overload does not collapse it to 1 by itself. The limit
//! always stays within `1..=max`.

use std::time::Duration;

use tokio::time::Instant;

/// Weight of the newest window in the moving average of round-trip times.
const EWMA_WEIGHT: f64 = 0.3;
/// Latency is "clearly above" its average past this many standard deviations...
const DEVIATION_SCALE: f64 = 2.5;
/// ...and past this fraction of the average (so a perfectly flat history does not make noise look
/// like a rise)...
const MIN_RISE_FRACTION: f64 = 0.2;
/// ...and past this absolute amount (loopback round trips jitter by fractions of a millisecond).
const MIN_RISE: Duration = Duration::from_millis(1);
/// Shortest window, so very fast round trips still average a few responses.
const MIN_WINDOW: Duration = Duration::from_millis(5);

/// What a finished request says about the server's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feedback {
    /// Answered (accepted or refused for good): its round trip counts toward the average.
    Ok,
    /// Overloaded or failing: 429, 5xx, timeout, connection error.
    Backpressure,
}

/// A moving average with a moving variance, of seconds.
#[derive(Debug, Clone, Copy, Default)]
struct Ewma {
    mean: Option<f64>,
    var: f64,
}

impl Ewma {
    fn update(&mut self, x: f64) {
        match self.mean {
            None => self.mean = Some(x),
            Some(m) => {
                let diff = x - m;
                self.mean = Some(m + EWMA_WEIGHT * diff);
                self.var = (1.0 - EWMA_WEIGHT) * (self.var + EWMA_WEIGHT * diff * diff);
            }
        }
    }
}

/// The AIMD controller. Single-owner (the sink's loop); no locking.
#[derive(Debug)]
pub(crate) struct AdaptiveConcurrency {
    limit: usize,
    max: usize,
    past_rtt: Ewma,
    window_start: Instant,
    window_sum: f64,
    window_count: u32,
    reached_limit: bool,
    decreased_this_window: bool,
}

impl AdaptiveConcurrency {
    /// A controller at limit 1, bounded by `max` (at least 1).
    pub(crate) fn new(max: usize, now: Instant) -> Self {
        Self {
            limit: 1,
            max: max.max(1),
            past_rtt: Ewma::default(),
            window_start: now,
            window_sum: 0.0,
            window_count: 0,
            reached_limit: false,
            decreased_this_window: false,
        }
    }

    /// How many requests may be in flight now.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Records that a request started, with `in_flight` requests now outstanding (this one included).
    pub(crate) fn on_send(&mut self, in_flight: usize) {
        if in_flight >= self.limit {
            self.reached_limit = true;
        }
    }

    /// Records a finished request and adjusts the limit when a window ends.
    pub(crate) fn on_response(&mut self, now: Instant, rtt: Duration, feedback: Feedback) {
        if feedback == Feedback::Ok {
            self.window_sum += rtt.as_secs_f64();
            self.window_count += 1;
        }
        let window = self
            .past_rtt
            .mean
            .unwrap_or(0.0)
            .max(MIN_WINDOW.as_secs_f64());
        // A microsecond of slack: the average is a float, the clock is not.
        if now
            .saturating_duration_since(self.window_start)
            .as_secs_f64()
            + 1e-6
            >= window
        {
            self.end_window(now);
        }
        if feedback == Feedback::Backpressure && !self.decreased_this_window {
            self.decrease();
            self.decreased_this_window = true;
        }
    }

    fn end_window(&mut self, now: Instant) {
        if self.window_count > 0 {
            let current = self.window_sum / f64::from(self.window_count);
            match self.past_rtt.mean {
                Some(past) => {
                    let threshold = (DEVIATION_SCALE * self.past_rtt.var.sqrt())
                        .max(MIN_RISE_FRACTION * past)
                        .max(MIN_RISE.as_secs_f64());
                    if current > past + threshold {
                        if !self.decreased_this_window {
                            self.decrease();
                        }
                    } else if self.reached_limit && !self.decreased_this_window {
                        self.increase();
                    }
                }
                // The first window sets the baseline; a full one may already grow.
                None if self.reached_limit && !self.decreased_this_window => self.increase(),
                None => {}
            }
            self.past_rtt.update(current);
        }
        self.window_start = now;
        self.window_sum = 0.0;
        self.window_count = 0;
        self.reached_limit = false;
        self.decreased_this_window = false;
    }

    fn increase(&mut self) {
        self.limit = (self.limit + 1).min(self.max);
    }

    fn decrease(&mut self) {
        self.limit = (self.limit / 2).max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(100);

    /// Runs `windows` windows with the limit kept full, each answered after `rtt`.
    fn drive(arc: &mut AdaptiveConcurrency, now: &mut Instant, windows: usize, rtt: Duration) {
        for _ in 0..windows {
            let limit = arc.limit();
            for i in 1..=limit {
                arc.on_send(i);
            }
            *now += rtt;
            for _ in 0..limit {
                arc.on_response(*now, rtt, Feedback::Ok);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn grows_by_one_per_full_window_while_latency_is_steady() {
        let mut now = Instant::now();
        let mut arc = AdaptiveConcurrency::new(10, now);
        assert_eq!(arc.limit(), 1);
        drive(&mut arc, &mut now, 1, RTT);
        assert_eq!(arc.limit(), 2);
        drive(&mut arc, &mut now, 3, RTT);
        assert_eq!(arc.limit(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_grow_when_the_window_is_not_full() {
        let mut now = Instant::now();
        let mut arc = AdaptiveConcurrency::new(10, now);
        drive(&mut arc, &mut now, 3, RTT);
        assert_eq!(arc.limit(), 4);
        for _ in 0..5 {
            // One request at a time while 4 are allowed: nothing shows more would help.
            arc.on_send(1);
            now += RTT;
            arc.on_response(now, RTT, Feedback::Ok);
        }
        assert_eq!(arc.limit(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn never_exceeds_max_nor_drops_below_one() {
        let mut now = Instant::now();
        let mut arc = AdaptiveConcurrency::new(3, now);
        drive(&mut arc, &mut now, 20, RTT);
        assert_eq!(arc.limit(), 3);
        for _ in 0..10 {
            now += RTT;
            arc.on_response(now, RTT, Feedback::Backpressure);
        }
        assert_eq!(arc.limit(), 1);
        let zero = AdaptiveConcurrency::new(0, now);
        assert_eq!(zero.limit(), 1, "a max of 0 still allows one request");
    }

    #[tokio::test(start_paused = true)]
    async fn halves_on_backpressure_once_per_window() {
        let mut now = Instant::now();
        let mut arc = AdaptiveConcurrency::new(16, now);
        drive(&mut arc, &mut now, 7, RTT);
        assert_eq!(arc.limit(), 8);
        // Eight failures of one overload, within one window: one halving.
        for _ in 0..8 {
            arc.on_response(now, RTT, Feedback::Backpressure);
        }
        assert_eq!(arc.limit(), 4);
        // The next window's failure halves again.
        now += RTT;
        arc.on_response(now, RTT, Feedback::Backpressure);
        assert_eq!(arc.limit(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn halves_when_latency_rises_clearly_above_its_average() {
        let mut now = Instant::now();
        let mut arc = AdaptiveConcurrency::new(16, now);
        drive(&mut arc, &mut now, 7, RTT);
        assert_eq!(arc.limit(), 8);
        drive(&mut arc, &mut now, 1, RTT * 10);
        assert_eq!(arc.limit(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn small_latency_noise_is_steady() {
        let mut now = Instant::now();
        let mut arc = AdaptiveConcurrency::new(16, now);
        drive(&mut arc, &mut now, 3, RTT);
        drive(&mut arc, &mut now, 1, RTT + RTT / 10);
        assert_eq!(arc.limit(), 5);
        // A faster window is shorter than the average: it ends with the next one.
        drive(&mut arc, &mut now, 1, RTT - RTT / 10);
        drive(&mut arc, &mut now, 1, RTT);
        assert_eq!(arc.limit(), 6, "noise must never halve the limit");
    }
}
