//! The pace of every watch loop (tasks or heap, one target or a fleet): one round at once, then one
//! per interval, up to and including the duration, or until Ctrl-C.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};

/// The rounds of a watch and its way out.
pub(crate) struct Pacing {
    ticker: Interval,
    /// Rounds to run: samples at 0, interval, 2*interval, ... up to and including the duration.
    planned: Option<u64>,
    rounds: u64,
    /// How long one sample may wait between its attempts: a quarter of the interval, 50 ms to 2 s.
    pub(crate) pause: Duration,
    ctrl_c: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// Ctrl-C came: the future above is done and must not be polled again.
    interrupted: bool,
}

impl Pacing {
    /// Rounds every `interval`, for `duration` when given, else until Ctrl-C.
    pub(crate) fn new(interval: Duration, duration: Option<Duration>) -> Self {
        let planned =
            duration.map(|d| (d.as_secs_f64() / interval.as_secs_f64() + 1e-6).floor() as u64 + 1);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Pacing {
            ticker,
            planned,
            rounds: 0,
            pause: (interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(2)),
            ctrl_c: Box::pin(async {
                if tokio::signal::ctrl_c().await.is_err() {
                    // No signal handling here: run until the duration ends.
                    std::future::pending::<()>().await;
                }
            }),
            interrupted: false,
        }
    }

    /// Waits for the next round and gives its number (from 1); `None` once the planned rounds
    /// are done or on Ctrl-C.
    pub(crate) async fn next(&mut self) -> Option<u64> {
        if self.planned.is_some_and(|n| self.rounds >= n) {
            return None;
        }
        or_ctrl_c(&mut self.ctrl_c, &mut self.interrupted, self.ticker.tick()).await?;
        self.rounds += 1;
        Some(self.rounds)
    }

    /// Runs `work` to its end, or gives `None` when Ctrl-C comes first.
    pub(crate) async fn unless_interrupted<T>(
        &mut self,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        or_ctrl_c(&mut self.ctrl_c, &mut self.interrupted, work).await
    }
}

/// `work`'s output, or `None` when Ctrl-C comes first (then, and ever after, `interrupted`).
async fn or_ctrl_c<T>(
    ctrl_c: &mut Pin<Box<dyn Future<Output = ()> + Send>>,
    interrupted: &mut bool,
    work: impl Future<Output = T>,
) -> Option<T> {
    if *interrupted {
        return None;
    }
    tokio::select! {
        () = ctrl_c => {
            *interrupted = true;
            None
        }
        out = work => Some(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_duration_gives_one_round_more_than_its_intervals_the_first_at_once() {
        let started = tokio::time::Instant::now();
        let mut pacing = Pacing::new(Duration::from_secs(2), Some(Duration::from_secs(10)));
        let mut rounds = Vec::new();
        while let Some(round) = pacing.next().await {
            rounds.push((round, started.elapsed().as_secs()));
        }
        assert_eq!(rounds, [(1, 0), (2, 2), (3, 4), (4, 6), (5, 8), (6, 10)]);
        assert_eq!(pacing.pause, Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn work_runs_to_its_end_between_rounds() {
        let mut pacing = Pacing::new(Duration::from_secs(1), Some(Duration::ZERO));
        assert_eq!(pacing.next().await, Some(1));
        let out = pacing
            .unless_interrupted(async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                7
            })
            .await;
        assert_eq!(out, Some(7));
        assert_eq!(pacing.next().await, None);
        assert_eq!(
            Pacing::new(Duration::from_secs(60), None).pause,
            Duration::from_secs(2)
        );
    }
}
