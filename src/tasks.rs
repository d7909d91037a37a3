//! The owner of the sidecar's long-lived background tasks (listeners, the admin
//! server, pollers, watchers, refreshers): each is spawned with a name, its
//! `JoinHandle` is kept, and on shutdown every task is told to stop, awaited for a
//! bounded time, and aborted if it has not finished by then.
//!
//! How to use it from a module that starts a background loop: take a `&Tasks` (or
//! a clone: it is a cheap handle) and call [`Tasks::spawn`] instead of
//! `tokio::spawn`. A loop that sleeps between rounds should also wait on
//! [`Tasks::stopping`] so it ends promptly instead of being aborted:
//!
//! ```ignore
//! let stop = tasks.stopping();
//! tasks.spawn("policy-watch", async move {
//!     loop {
//!         tokio::select! {
//!             _ = stop.wait() => return,
//!             _ = tokio::time::sleep(interval) => reload(),
//!         }
//!     }
//! });
//! ```
//!
//! Per-connection tasks are not owned here: connections belong to their listener
//! and end with draining (see [`crate::proxy::drain`]).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A cheap, cloneable handle to the set of owned background tasks.
#[derive(Clone)]
pub struct Tasks {
    inner: Arc<Inner>,
}

struct Inner {
    running: Mutex<Vec<(&'static str, JoinHandle<()>)>>,
    stop: watch::Sender<bool>,
}

/// Resolves once shutdown of the owned tasks has begun.
#[derive(Clone)]
pub struct Stopping {
    rx: watch::Receiver<bool>,
}

impl Stopping {
    /// Waits until the owner stops its tasks (immediately if it already has).
    pub async fn wait(mut self) {
        let _ = self.rx.wait_for(|s| *s).await;
    }

    pub fn is_stopping(&self) -> bool {
        *self.rx.borrow()
    }
}

/// What [`Tasks::shutdown`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stopped {
    /// Tasks that finished within the bound.
    pub finished: usize,
    /// Names of tasks that were aborted because they did not finish in time.
    pub aborted: Vec<&'static str>,
}

impl Default for Tasks {
    fn default() -> Self {
        Tasks::new()
    }
}

impl Tasks {
    pub fn new() -> Tasks {
        let (stop, _) = watch::channel(false);
        Tasks {
            inner: Arc::new(Inner {
                running: Mutex::new(Vec::new()),
                stop,
            }),
        }
    }

    /// Spawns `fut` as a named, owned task. Finished tasks are forgotten here, so
    /// the list holds only what is still running. After shutdown began, `fut` is
    /// dropped without running.
    pub fn spawn<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // Checked under the lock `shutdown` takes the list with: no task slips
        // in after the list was taken.
        let mut running = lock(&self.inner.running);
        if *self.inner.stop.borrow() {
            tracing::debug!(task = name, "not started: shutting down");
            return;
        }
        running.retain(|(_, h)| !h.is_finished());
        running.push((name, tokio::spawn(fut)));
    }

    /// Spawns a polling or refresh loop that may be cancelled at any await point:
    /// when shutdown begins it is dropped there at once, instead of being waited
    /// for. For loops whose every await is a sleep, a read or a fetch.
    pub fn spawn_loop<F>(&self, name: &'static str, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stopping();
        self.spawn(name, async move {
            tokio::select! {
                _ = stop.wait() => {}
                _ = fut => {}
            }
        });
    }

    /// What loops wait on to end when shutdown begins.
    pub fn stopping(&self) -> Stopping {
        Stopping {
            rx: self.inner.stop.subscribe(),
        }
    }

    /// Names of the tasks still running (for diagnostics and tests).
    pub fn running(&self) -> Vec<&'static str> {
        let running = lock(&self.inner.running);
        running
            .iter()
            .filter(|(_, h)| !h.is_finished())
            .map(|(n, _)| *n)
            .collect()
    }

    /// Signals every task to stop, waits for them (all at once, at most `bound`),
    /// then aborts and reaps those still running.
    pub async fn shutdown(&self, bound: Duration) -> Stopped {
        let tasks = {
            let mut running = lock(&self.inner.running);
            self.inner.stop.send_replace(true);
            std::mem::take(&mut *running)
        };
        let deadline = tokio::time::Instant::now() + bound;
        let mut stopped = Stopped::default();
        for (name, mut handle) in tasks {
            if tokio::time::timeout_at(deadline, &mut handle).await.is_ok() {
                stopped.finished += 1;
                continue;
            }
            handle.abort();
            // Reaps the task: an aborted task ends at its next await point.
            let _ = handle.await;
            tracing::warn!(task = name, "background task did not stop in time; aborted");
            stopped.aborted.push(name);
        }
        stopped
    }
}

/// The list stays usable even if a task panicked while another thread held the
/// lock: it only holds handles.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cooperative_tasks_finish_and_stubborn_ones_are_aborted() {
        let tasks = Tasks::new();
        let stop = tasks.stopping();
        tasks.spawn("cooperative", async move { stop.wait().await });
        tasks.spawn("stubborn", std::future::pending());
        tasks.spawn("done", async {});
        let names = tasks.running();
        assert!(names.contains(&"cooperative") && names.contains(&"stubborn"));

        let stopped = tasks.shutdown(Duration::from_millis(50)).await;
        assert_eq!(stopped.aborted, ["stubborn"]);
        assert_eq!(stopped.finished, 2);
        assert!(tasks.running().is_empty());
        assert!(tasks.stopping().is_stopping());
    }

    #[tokio::test]
    async fn a_task_spawned_after_shutdown_does_not_run() {
        let tasks = Tasks::new();
        tasks.shutdown(Duration::from_millis(10)).await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn("late", async move {
            std::future::pending::<()>().await;
            let _ = tx.send(());
        });
        // The task never ran: its sender is dropped without sending.
        assert!(rx.await.is_err());
        assert!(tasks.running().is_empty());
    }

    #[tokio::test]
    async fn clones_share_the_task_list() {
        let tasks = Tasks::new();
        let handle = tasks.clone();
        handle.spawn("from-clone", std::future::pending());
        assert_eq!(tasks.running(), ["from-clone"]);
        let stopped = tasks.shutdown(Duration::from_millis(10)).await;
        assert_eq!(stopped.aborted, ["from-clone"]);
    }
}
