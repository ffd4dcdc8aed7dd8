//! The background runtime: the work nobody is waiting on — consumers, outbox
//! relays, journal drainers — runs on threads of its own, apart from the
//! runtime that answers requests, and (by default) at a lower scheduling
//! priority (`SIGNPOST_BACKGROUND_NICE`).
//!
//! Two things follow. A consumer's CPU-heavy batch (parsing and aggregating
//! hundreds of clicks) no longer holds a request worker for milliseconds: the
//! operating system preempts it. And when the machine is saturated, requests
//! get the CPU and the background catches up afterwards: a burst of redirects
//! is answered at full speed while analytics lags behind for a while (the
//! clicks wait in the journal and the bus, nothing is lost).
//!
//! Database work started on these threads uses connections of its own (see
//! [`current`]): a request never waits on a connection whose socket or SQLite
//! thread belongs to a low-priority thread.

use std::cell::Cell;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::runtime::{EnterGuard, Handle, Runtime};
use tokio::task::JoinHandle;

thread_local! {
    static BACKGROUND: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is one of a background runtime's threads: the
/// database layer then picks the background connections.
pub fn current() -> bool {
    BACKGROUND.with(Cell::get)
}

/// Threads of the background runtime.
pub const THREADS: usize = 2;

/// A runtime for background work; cheap to clone. The runtime stops (without
/// waiting for its tasks) when the last clone is dropped.
#[derive(Clone)]
pub struct Background {
    handle: Handle,
    _owner: Arc<Owner>,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Background").finish_non_exhaustive()
    }
}

struct Owner(Mutex<Option<Runtime>>);

impl Drop for Owner {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside another runtime.
        if let Some(rt) = self.0.get_mut().ok().and_then(Option::take) {
            rt.shutdown_background();
        }
    }
}

impl Background {
    /// Starts the runtime; its threads run `nice` steps below the process's
    /// priority (0 keeps it; the lowest is 19).
    pub fn start(nice: i32) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(THREADS)
            .thread_name("signpost-bg")
            .enable_all()
            .on_thread_start(move || {
                BACKGROUND.with(|b| b.set(true));
                // On Linux the nice value is per thread: this lowers only the calling
                // thread, and threads it starts (SQLite's connection threads) inherit it.
                if nice != 0 {
                    let lowered = rustix::process::getpriority_process(None)
                        .and_then(|now| rustix::process::setpriority_process(None, (now + nice).min(19)));
                    if let Err(e) = lowered {
                        tracing::warn!(error = %e, nice, "cannot lower the background threads' priority");
                    }
                }
            })
            .build()?;
        Ok(Self { handle: runtime.handle().clone(), _owner: Arc::new(Owner(Mutex::new(Some(runtime)))) })
    }

    /// Runs `future` on the background runtime.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(future)
    }

    /// While the guard lives, `tokio::spawn` on this thread starts tasks on the
    /// background runtime (for code that spawns its own tasks).
    pub fn enter(&self) -> EnterGuard<'_> {
        self.handle.enter()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_tasks_run_on_background_threads_at_the_lower_priority() {
        let bg = Background::start(5).unwrap();
        assert!(!current(), "a request thread is not a background thread");
        let (on_bg, nice) = bg
            .spawn(async { (current(), rustix::process::getpriority_process(None).unwrap()) })
            .await
            .unwrap();
        assert!(on_bg);
        let here = rustix::process::getpriority_process(None).unwrap();
        assert_eq!(nice, (here + 5).min(19), "background threads yield to request threads");
        // A task spawned under `enter` lands there too.
        let spawned = {
            let _g = bg.enter();
            tokio::spawn(async { current() })
        };
        assert!(spawned.await.unwrap());
        // Dropped inside a runtime: no panic.
        drop(bg);
    }
}
