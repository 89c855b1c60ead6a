//! Sinks: where batches go. Each sink is one actor that takes [`Batch`]es from a bounded channel,
//! delivers them, and acknowledges each one when it is done with it.
//!
//! [`Batch`]: crate::event::Batch

pub mod file;
pub mod loki;
pub mod stdout;

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::Batch;

/// How often an idle sink beats, so a quiet pipeline is not mistaken for a stuck one.
const IDLE_BEAT: Duration = Duration::from_millis(500);

/// The next batch for a sink, beating while it waits. `None` when the channel is closed (everything
/// was drained) or `stop` fired (hard stop: what is still queued stays unacknowledged).
pub(crate) async fn next_batch(
    batches: &mut mpsc::Receiver<Batch>,
    stop: &CancellationToken,
    beat: &(impl Fn() + Send + Sync),
) -> Option<Batch> {
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return None,
            batch = batches.recv() => {
                beat();
                return batch;
            }
            _ = tokio::time::sleep(IDLE_BEAT) => beat(),
        }
    }
}
