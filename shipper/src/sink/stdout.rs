//! The stdout sink: the file sink's JSON lines on standard output, for pipes and debugging.
//!
//! A batch is acknowledged after its lines are written and stdout is flushed. A closed stdout (the
//! reader of the pipe went away) ends the sink without acknowledging, so nothing is marked sent
//! that was not.

use std::io::Write;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::event::Batch;
use crate::sink::file::{encode, record_sent};

/// Runs the stdout sink until the batch channel closes or `stop` fires.
pub async fn run(
    mut batches: mpsc::Receiver<Batch>,
    stop: CancellationToken,
    beat: impl Fn() + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(2 << 20);
    loop {
        let Some(mut batch) = super::next_batch(&mut batches, &stop, &beat).await else {
            return Ok(());
        };
        buf.clear();
        let n = encode(&batch, &mut buf);
        let mut out = std::io::stdout().lock();
        out.write_all(&buf)
            .and_then(|()| out.flush())
            .context("cannot write to stdout")?;
        record_sent(&batch, n);
        // Written: the text buffers go back for the next batches.
        batch.release_lines();
        batch.acknowledge();
    }
}
