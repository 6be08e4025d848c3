//! The service's field inventory: one event in `inventory.sample_every` is
//! copied to a thread of its own (never waited for: when it is behind, the
//! sample is skipped) that keeps the [`Inventory`] in bounded memory for
//! `GET /inventory`, and counts and audits each path seen for the first
//! time that no rule classifies.

use crate::inventory::Inventory;
use crate::metrics::Telemetry;
use crate::reload::RuleSource;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};

/// Samples waiting for the inventory thread at most.
const QUEUE: usize = 64;

/// Where lanes offer events.
pub struct Feed {
    tx: SyncSender<Vec<u8>>,
    offered: AtomicU64,
    every: u64,
    /// What the inventory holds, for `/inventory`.
    pub inventory: Arc<Mutex<Inventory>>,
}

impl Feed {
    /// Starts the inventory thread; `None` when `sample_every` is 0.
    pub fn start(
        every: u64,
        max_paths: usize,
        rules: Arc<RuleSource>,
        telemetry: Arc<Telemetry>,
    ) -> Option<Feed> {
        if every == 0 {
            return None;
        }
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
        let inventory = Arc::new(Mutex::new(Inventory::new(max_paths)));
        let inv = inventory.clone();
        let spawned = std::thread::Builder::new()
            .name("inventory".into())
            .spawn(move || {
                // Ends when every sender is gone (the service stopped).
                while let Ok(payload) = rx.recv() {
                    let rules = rules.current();
                    let new = inv
                        .lock()
                        .map(|mut i| i.observe_reporting(&rules, &payload))
                        .unwrap_or_default();
                    for (path, detectors) in new {
                        telemetry.audit.unclassified_field(&path, &detectors);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the inventory thread; /inventory stays empty");
        }
        Some(Feed {
            tx,
            offered: AtomicU64::new(0),
            every,
            inventory,
        })
    }

    /// Offers one event: every `every`-th is copied for the inventory.
    pub fn offer(&self, payload: &[u8]) {
        if self.offered.fetch_add(1, Ordering::Relaxed) % self.every == 0 {
            let _ = self.tx.try_send(payload.to_vec());
        }
    }
}
