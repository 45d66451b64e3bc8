//! The retention task: deletes expired rows on a timer, on the store's writer thread in small
//! transactions, so writes keep flowing.

use std::time::Duration;

use tokentrace_model::Timestamp;
use tokentrace_store::StoreWriter;

/// Deletes expired rows every `interval` until the writer is closed.
pub fn spawn_retention(writer: StoreWriter, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let w = writer.clone();
            match tokio::task::spawn_blocking(move || w.expire(Timestamp::now())).await {
                // The writer logs what a run deleted.
                Ok(Ok(_)) => {}
                Ok(Err(tokentrace_store::StoreError::Closed)) => return,
                Ok(Err(e)) => tracing::error!("retention: {e}"),
                Err(e) => tracing::error!("retention task: {e}"),
            }
        }
    })
}
