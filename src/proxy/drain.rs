//! Draining on shutdown: the signal every listener and connection watches, the
//! connection permits whose return says a listener is idle, and the sequence that
//! ties them together.
//!
//! Draining: the accept loops stop, every HTTP connection is told to finish its
//! in-flight requests and close (`graceful_shutdown`, see [`super::listener`]), and
//! [`drain`] waits until every connection permit is back or the grace period ends.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// Signals the start of draining to every listener and connection.
#[derive(Clone)]
pub struct Drain {
    rx: watch::Receiver<bool>,
}

/// The sending side of [`Drain`].
pub struct DrainTrigger {
    tx: watch::Sender<bool>,
}

impl DrainTrigger {
    pub fn new() -> (DrainTrigger, Drain) {
        let (tx, rx) = watch::channel(false);
        (DrainTrigger { tx }, Drain { rx })
    }

    /// Starts draining everywhere.
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    pub fn drain(&self) -> Drain {
        Drain {
            rx: self.tx.subscribe(),
        }
    }
}

impl Drain {
    /// Resolves once draining has started (immediately if it already has).
    pub async fn signaled(&mut self) {
        let _ = self.rx.wait_for(|d| *d).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Bounds the number of open connections of one listener.
#[derive(Clone)]
pub struct ConnLimit {
    sem: Arc<Semaphore>,
    max: usize,
}

impl ConnLimit {
    pub fn new(max: usize) -> Self {
        ConnLimit {
            sem: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A permit for one more connection, or `None` when the listener is full.
    pub fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        self.sem.clone().try_acquire_owned().ok()
    }

    /// Waits until every connection has closed, at most `grace`. True if all closed.
    pub async fn wait_idle(&self, grace: Duration) -> bool {
        let max = u32::try_from(self.max).unwrap_or(u32::MAX);
        tokio::time::timeout(grace, self.sem.acquire_many(max))
            .await
            .is_ok()
    }
}

/// Drains the listeners behind `limits`: triggers draining, then waits (at most
/// `grace`, all listeners at once) for their connections to close. True if every
/// connection closed in time.
pub async fn drain(trigger: &DrainTrigger, limits: &[ConnLimit], grace: Duration) -> bool {
    tracing::info!(grace_ms = grace.as_millis() as u64, "draining");
    trigger.trigger();
    let idle = futures_util::future::join_all(limits.iter().map(|l| l.wait_idle(grace))).await;
    let all = idle.into_iter().all(|closed| closed);
    if !all {
        tracing::warn!("grace period over with connections still open");
    }
    all
}
