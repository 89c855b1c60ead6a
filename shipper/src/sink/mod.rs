//! Sinks: where batches go. Each sink is one actor that takes [`Batch`]es from a bounded channel,
//! delivers them, and acknowledges each one when it is done with it.
//!
//! [`Batch`]: crate::event::Batch

pub mod file;
pub mod loki;
pub mod stdout;
