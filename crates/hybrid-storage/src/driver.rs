//! The thin tokio driver: calls [`HybridStorageAdapter::tick`] when the next
//! heartbeat is due.

use std::sync::Arc;
use std::time::Duration;

use ecomesh_p2p_storage::kv::Backend;

use crate::HybridStorageAdapter;

/// Shortest pause between two ticks, so a clock that does not move cannot
/// make the driver spin.
const MIN_PAUSE_MS: u64 = 50;

/// The running driver task; dropping it stops the task.
#[derive(Debug)]
pub struct Driver {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Spawns the driver on the current tokio runtime: heartbeats on the
/// heartbeat interval, replays on the sync interval and when the primary
/// returns.
pub fn spawn_driver<B: Backend>(adapter: Arc<HybridStorageAdapter<B>>) -> Driver {
    let task = tokio::spawn(async move {
        loop {
            let wait = adapter.tick().await.max(MIN_PAUSE_MS);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    });
    Driver { task }
}
