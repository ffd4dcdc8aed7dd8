//! The background runtimes: the work nobody is waiting on — consumers, outbox
//! relays, journal drainers — runs on threads of its own, apart from the
//! runtime that answers requests, and at a lower scheduling priority.
//!
//! Two lanes, each a runtime of its own:
//! - [`Lane::Prompt`] (`kernel.background`, `SIGNPOST_BACKGROUND_NICE`, default
//!   nice 10): work whose delay a user notices — consumers that keep read
//!   models current (routing's links), outbox relays, jobs such as a CSV import.
//! - [`Lane::Bulk`] (`kernel.bulk`, `SIGNPOST_BULK_NICE`, default `idle`):
//!   high-rate work that may lag — journal drainers and the consumers of
//!   clicks and scans. By default under Linux's `SCHED_IDLE` policy, which
//!   runs a thread only on a core that no other thread wants.
//!
//! Two things follow. A consumer's CPU-heavy batch (parsing and aggregating
//! hundreds of clicks) no longer holds a request worker for milliseconds: the
//! operating system preempts it. And when the machine is saturated, requests
//! get the CPU, the prompt lane a small share (a link update still reaches
//! routing), and the bulk lane catches up afterwards: a burst of redirects is
//! answered at full speed while analytics lags behind for a while (the clicks
//! wait in the journal and the bus, nothing is lost).
//!
//! Database work started on these threads uses connections of its own, one set
//! per lane (see [`PerThread`]): a request never waits on a connection whose
//! socket or SQLite thread belongs to a low-priority thread, and the prompt lane
//! never waits on one of the bulk lane's.

use std::cell::Cell;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::runtime::{EnterGuard, Handle, Runtime};
use tokio::task::JoinHandle;

thread_local! {
    static LANE: Cell<Option<Lane>> = const { Cell::new(None) };
}

/// The lane of the calling thread, `None` on a request thread: the database
/// layer picks the connections of that lane.
pub fn current() -> Option<Lane> {
    LANE.with(Cell::get)
}

/// Which background runtime a piece of work runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Work whose delay a user notices: consumers that keep a read model
    /// current, outbox relays, jobs. One thread, nice 10 by default.
    Prompt,
    /// High-rate work that may lag under load: journal drainers and the
    /// consumers of clicks and scans. Two threads, `SCHED_IDLE` by default.
    Bulk,
}

impl Lane {
    /// Threads of the lane's runtime.
    pub const fn threads(self) -> usize {
        match self {
            Self::Prompt => 1,
            Self::Bulk => 2,
        }
    }

    const fn thread_name(self) -> &'static str {
        match self {
            Self::Prompt => "signpost-bg",
            Self::Bulk => "signpost-bulk",
        }
    }
}

/// One of a thing for each kind of thread: request handling and each lane.
#[derive(Debug, Clone)]
pub struct PerThread<T> {
    /// For request threads.
    pub requests: T,
    /// For [`Lane::Prompt`]'s threads.
    pub prompt: T,
    /// For [`Lane::Bulk`]'s threads.
    pub bulk: T,
}

impl<T> PerThread<T> {
    /// The one of the calling thread's kind.
    pub fn current(&self) -> &T {
        match current() {
            None => &self.requests,
            Some(Lane::Prompt) => &self.prompt,
            Some(Lane::Bulk) => &self.bulk,
        }
    }

    /// All three.
    pub fn all(&self) -> [&T; 3] {
        [&self.requests, &self.prompt, &self.bulk]
    }
}

/// How far below request handling the background threads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Linux's `SCHED_IDLE`: a background thread runs only on a core no other
    /// thread wants, and a request thread that wakes up takes the core back at
    /// once. Under `nice`, a background thread keeps a core for the rest of its
    /// time slice (milliseconds), which a waiting redirect pays in its tail
    /// latency. Where the policy cannot be set, nice 19 instead.
    Idle,
    /// This many nice steps below the process (0 keeps its priority; the lowest is 19).
    Nice(i32),
}

/// A runtime for one lane of background work; cheap to clone. The runtime stops (without
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
    /// Starts the runtime of `lane`; its threads run at `priority`.
    pub fn start(lane: Lane, priority: Priority) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(lane.threads())
            .thread_name(lane.thread_name())
            .enable_all()
            .on_thread_start(move || {
                LANE.with(|l| l.set(Some(lane)));
                // On Linux the scheduling policy and the nice value are per thread:
                // this lowers only the calling thread, and threads it starts
                // (SQLite's connection threads) inherit both.
                lower(priority);
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

/// Lowers the calling thread to `priority`.
fn lower(priority: Priority) {
    let nice = match priority {
        Priority::Idle if set_idle() => return,
        Priority::Idle => 19,
        Priority::Nice(n) => n,
    };
    if nice != 0 {
        let lowered = rustix::process::getpriority_process(None)
            .and_then(|now| rustix::process::setpriority_process(None, (now + nice).min(19)));
        if let Err(e) = lowered {
            tracing::warn!(error = %e, nice, "cannot lower the background threads' priority");
        }
    }
}

/// Puts the calling thread under `SCHED_IDLE`; false where that failed.
#[cfg(target_os = "linux")]
fn set_idle() -> bool {
    use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    // The call also sets the thread's nice value to 0 afterwards, which an
    // unprivileged process already running above 0 may not do: what counts is
    // whether the policy took.
    let set = thread_priority::set_thread_priority_and_policy(
        thread_priority::thread_native_id(),
        ThreadPriority::Min,
        idle,
    );
    let took = thread_priority::thread_schedule_policy().is_ok_and(|p| p == idle);
    if !took {
        tracing::warn!(error = ?set.err(), "cannot put the background threads under SCHED_IDLE; nice 19 instead");
    }
    took
}

#[cfg(not(target_os = "linux"))]
fn set_idle() -> bool {
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_tasks_run_on_background_threads_at_the_lower_priority() {
        let bg = Background::start(Lane::Prompt, Priority::Nice(5)).unwrap();
        assert_eq!(current(), None, "a request thread is not a background thread");
        let (on_bg, nice) = bg
            .spawn(async { (current(), rustix::process::getpriority_process(None).unwrap()) })
            .await
            .unwrap();
        assert_eq!(on_bg, Some(Lane::Prompt));
        let here = rustix::process::getpriority_process(None).unwrap();
        assert_eq!(nice, (here + 5).min(19), "background threads yield to request threads");
        // A task spawned under `enter` lands there too.
        let spawned = {
            let _g = bg.enter();
            tokio::spawn(async { current() })
        };
        assert_eq!(spawned.await.unwrap(), Some(Lane::Prompt));
        // Dropped inside a runtime: no panic.
        drop(bg);
    }

    #[tokio::test]
    async fn request_threads_and_each_lane_pick_their_own_connections() {
        let per = Arc::new(PerThread { requests: "requests", prompt: "prompt", bulk: "bulk" });
        let on = |lane| {
            let (per, bg) = (per.clone(), Background::start(lane, Priority::Nice(0)).unwrap());
            async move { bg.spawn(async move { *per.current() }).await.unwrap() }
        };
        assert_eq!(*per.current(), "requests");
        assert_eq!(on(Lane::Prompt).await, "prompt", "a link update never queues behind a click batch");
        assert_eq!(on(Lane::Bulk).await, "bulk");
        assert_eq!(per.all(), [&"requests", &"prompt", &"bulk"]);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn idle_background_threads_and_the_threads_they_start_run_under_sched_idle() {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadSchedulePolicy};
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        let bg = Background::start(Lane::Bulk, Priority::Idle).unwrap();
        let (on_bg, child) = bg
            .spawn(async {
                // As SQLite's connection threads are started: from a background thread.
                let child = std::thread::spawn(thread_priority::thread_schedule_policy).join().unwrap();
                (thread_priority::thread_schedule_policy().unwrap(), child.unwrap())
            })
            .await
            .unwrap();
        assert_eq!(on_bg, idle, "a background thread runs only where no request thread wants the core");
        assert_eq!(child, idle, "threads a background thread starts inherit the policy");
        assert_ne!(thread_priority::thread_schedule_policy().unwrap(), idle, "request threads keep theirs");
    }
}
