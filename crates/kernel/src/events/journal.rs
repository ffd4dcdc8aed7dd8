//! The journal: the outbox of high-rate events that change no stored state
//! (clicks, scans, views). An append is one `write(2)` of a checksummed record
//! to a local segment file, with no database transaction and no waiting on
//! other requests; once it returns, the record is in the operating system's
//! page cache and survives `kill -9` of the process. A drainer task reads the
//! records in order, publishes them to the bus in batches (group commit) and
//! then advances a checkpoint: delivery is at least once, and consumers'
//! inboxes make the effect happen once.
//!
//! [`Journal::append_of`] commits in groups: the records appended on one
//! thread during one turn of its runtime go out in one `write(2)`, and each
//! of those appends returns once that write has. A connection thread serving
//! a burst of ready requests thus pays one system call, not one each, and the
//! threads rarely meet on the file's lock.
//!
//! Layout: `<dir>/<slot>/` holds `lock`, `checkpoint` and segments
//! `<16-digit number>.journal`. Each process takes the first slot nobody holds
//! (an exclusive file lock), so several instances can share a data directory;
//! a slot left behind by a dead process is drained by the next one to start.
//! A record is `[u32 length][u32 CRC-32 of the payload]` then the payload (the
//! envelope as JSON), little-endian. A process always starts a new segment, so
//! a record torn by a crash can only sit at the end of a segment nobody writes.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Bus, Envelope, EnvelopeOf};

/// A segment is closed once it is this long.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Most events published at once.
const BATCH: usize = 512;
/// Bytes read per step of the drainer: a batch of clicks (about 450 bytes
/// each) with room to spare, and more than the largest record.
const READ_CHUNK: usize = 512 * 1024;
/// Largest record (a click is well under 2 KiB).
const MAX_RECORD: usize = 256 * 1024;
/// Slots tried per journal before giving up.
const MAX_SLOTS: usize = 64;
const HEADER: usize = 8;
/// How long the drainer waits after publishing a short batch, so that under
/// a steady load batches grow: each batch has a cost of its own in every
/// consumer (a transaction, the rollups' upserts) and on the bus. 100 ms
/// instead of 2 cut the CPU per redirect at 35k redirects/s, click pipeline
/// included, by about 10–15% (docs/benchmarks.md, ninth run). A click that
/// comes after a quiet spell still goes out at once.
const GATHER: Duration = Duration::from_millis(100);
/// How long a stopping drainer keeps publishing a backlog; the rest waits on
/// disk for the next start.
const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// Why an append failed; nothing of the record counts as written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file could not be written (disk full, read-only, …).
    #[error("journal write failed: {0}")]
    Io(#[from] std::io::Error),
    /// The event could not be encoded or is too large.
    #[error("journal record rejected: {0}")]
    Record(String),
}

struct Active {
    file: File,
    segment: u64,
    len: u64,
}

struct Inner {
    dir: PathBuf,
    active: Mutex<Active>,
    /// The segment being written, for the drainer (segments below it are final).
    writing: AtomicU64,
    /// Set by the drainer before it sleeps; an append wakes it.
    idle: AtomicBool,
    wake: Notify,
    segment_bytes: u64,
    /// `write(2)` calls made, successful or not.
    writes: AtomicU64,
    /// Held for the life of the process: this slot is ours.
    _lock: File,
}

/// Appends events to this process's journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:016}.journal"))
}

/// The segment numbers in a slot, ascending.
fn segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut found: Vec<u64> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".journal")?.parse().ok())
        .collect();
    found.sort_unstable();
    Ok(found)
}

fn create_segment(dir: &Path, segment: u64) -> std::io::Result<File> {
    OpenOptions::new().create_new(true).append(true).open(segment_path(dir, segment))
}

/// Takes a slot's lock without waiting; `None` if another process holds it.
fn try_lock(slot: &Path) -> std::io::Result<Option<File>> {
    std::fs::create_dir_all(slot)?;
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(slot.join("lock"))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

fn encode(event: &impl serde::Serialize) -> Result<Vec<u8>, JournalError> {
    let mut buf = Vec::with_capacity(768);
    encode_onto(&mut buf, event)?;
    Ok(buf)
}

/// Appends one record to `buf`; on error `buf` is left as it was.
fn encode_onto(buf: &mut Vec<u8>, event: &impl serde::Serialize) -> Result<(), JournalError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    if let Err(e) = super::json::write(&mut *buf, event) {
        buf.truncate(start);
        return Err(JournalError::Record(e.to_string()));
    }
    let len = buf.len() - start - HEADER;
    if len > MAX_RECORD {
        buf.truncate(start);
        return Err(JournalError::Record(format!("{len} bytes is over the {MAX_RECORD}-byte limit")));
    }
    let crc = crc32fast::hash(&buf[start + HEADER..]);
    buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

impl Journal {
    /// Opens a journal under `dir` (one slot per process) and starts its
    /// drainer, plus one for each slot a dead process left behind. Drainers
    /// publish nothing before `ready` fires (on the in-process bus, events
    /// published before the consumers subscribe reach nobody). They stop after
    /// `shutdown` once everything written is published (or the bus keeps
    /// failing; the records then wait for the next start).
    pub fn open(
        dir: &Path,
        bus: Arc<dyn Bus>,
        ready: CancellationToken,
        shutdown: CancellationToken,
    ) -> Result<(Self, Vec<JoinHandle<()>>), JournalError> {
        Self::open_sized(dir, Gate { bus, ready, shutdown }, SEGMENT_BYTES)
    }

    fn open_sized(
        dir: &Path,
        gate: Gate,
        segment_bytes: u64,
    ) -> Result<(Self, Vec<JoinHandle<()>>), JournalError> {
        let mut own = None;
        let mut orphans = Vec::new();
        for n in 0..MAX_SLOTS {
            let slot = dir.join(n.to_string());
            let exists = slot.exists();
            if own.is_some() && !exists {
                break;
            }
            let Some(lock) = try_lock(&slot)? else { continue };
            if own.is_none() {
                own = Some((slot, lock));
            } else if segments(&slot)?.is_empty() {
                drop(lock);
            } else {
                orphans.push((slot, lock));
            }
        }
        let Some((slot, lock)) = own else {
            return Err(JournalError::Io(std::io::Error::other(format!(
                "all {MAX_SLOTS} journal slots under {} are in use",
                dir.display()
            ))));
        };
        // Numbers only grow within a slot, also past segments already drained
        // and removed: the checkpoint may name one of those.
        let (_, saved) = Checkpoint::open(&slot)?;
        let segment = segments(&slot)?.last().map_or(0, |s| s + 1).max(saved.map_or(0, |p| p.segment + 1));
        let file = create_segment(&slot, segment)?;
        let inner = Arc::new(Inner {
            dir: slot.clone(),
            active: Mutex::new(Active { file, segment, len: 0 }),
            writing: AtomicU64::new(segment),
            idle: AtomicBool::new(false),
            wake: Notify::new(),
            segment_bytes,
            writes: AtomicU64::new(0),
            _lock: lock,
        });
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("journal").to_string();
        let mut tasks =
            vec![tokio::spawn(drain(Source::Own(inner.clone()), slot, name.clone(), gate.clone()))];
        for (slot, lock) in orphans {
            tracing::info!(slot = %slot.display(), "draining a journal left by an earlier process");
            tasks.push(tokio::spawn(drain(Source::Orphan { _lock: lock }, slot, name.clone(), gate.clone())));
        }
        Ok((Self { inner }, tasks))
    }

    /// Writes one event now, in a `write(2)` of its own. When this returns
    /// `Ok`, the event survives a crash of the process and will be published.
    pub fn append(&self, event: &Envelope) -> Result<(), JournalError> {
        self.inner.write(&encode(event)?)
    }

    /// Writes one event with a typed payload (no `Value` built), together with
    /// the others appended on this thread in the same turn of its runtime (see
    /// the module's documentation). When this returns `Ok`, the event survives
    /// a crash of the process and will be published; when the write fails,
    /// every append of the group gets the error and none of them counts.
    pub async fn append_of<T: serde::Serialize>(
        &self,
        event: &EnvelopeOf<'_, T>,
    ) -> Result<(), JournalError> {
        let group = self.join_group(event)?;
        // Made before the outcome is read: a write that ends in between still
        // wakes it (`notify_waiters` reaches every `Notified` already made).
        let written = group.written.notified();
        if group.outcome.get().is_none() {
            written.await;
        }
        match group.outcome.get() {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(JournalError::Io(std::io::Error::new(e.0, e.1.clone()))),
            None => Err(JournalError::Io(std::io::Error::other("journal group never written"))),
        }
    }

    /// Adds the encoded event to this thread's open group for this journal,
    /// opening one (and scheduling its write) if there is none.
    fn join_group<T: serde::Serialize>(&self, event: &EnvelopeOf<'_, T>) -> Result<Arc<Group>, JournalError> {
        let key = Arc::as_ptr(&self.inner) as usize;
        GROUPS.with_borrow_mut(|groups| {
            if let Some((_, group)) = groups.iter().find(|(k, _)| *k == key)
                && group.add(event)?
            {
                return Ok(group.clone());
            }
            let group = Arc::new(Group::with_first(event)?);
            groups.retain(|(k, g)| *k != key && !g.is_sealed());
            groups.push((key, group.clone()));
            // Queued behind the tasks this turn has already woken: they join
            // the group before it is written.
            tokio::spawn(commit(self.inner.clone(), group.clone()));
            Ok(group)
        })
    }
}

thread_local! {
    /// The open group of each journal appended to on this thread, by address.
    static GROUPS: std::cell::RefCell<Vec<(usize, Arc<Group>)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Records appended on one thread in one turn of its runtime, written together.
#[derive(Default)]
struct Group {
    pending: Mutex<Pending>,
    /// How the write went: set once, then `written` wakes the appends.
    outcome: std::sync::OnceLock<Result<(), (ErrorKind, String)>>,
    written: Notify,
}

#[derive(Default)]
struct Pending {
    records: Vec<u8>,
    /// Taken for writing: later appends start a new group.
    sealed: bool,
}

impl Group {
    /// A new, open group holding the event.
    fn with_first<T: serde::Serialize>(event: &EnvelopeOf<'_, T>) -> Result<Self, JournalError> {
        let mut records = Vec::with_capacity(4096);
        encode_onto(&mut records, event)?;
        Ok(Self { pending: Mutex::new(Pending { records, sealed: false }), ..Self::default() })
    }

    /// Encodes the event onto the group; `false` if it is already sealed.
    fn add<T: serde::Serialize>(&self, event: &EnvelopeOf<'_, T>) -> Result<bool, JournalError> {
        let mut pending = self.pending.lock().map_err(|_| std::io::Error::other("journal group poisoned"))?;
        if pending.sealed {
            return Ok(false);
        }
        encode_onto(&mut pending.records, event)?;
        Ok(true)
    }

    fn is_sealed(&self) -> bool {
        self.pending.lock().map_or(true, |p| p.sealed)
    }
}

/// Writes a group once the appends queued with it have joined.
async fn commit(inner: Arc<Inner>, group: Arc<Group>) {
    let records = match group.pending.lock() {
        Ok(mut pending) => {
            pending.sealed = true;
            std::mem::take(&mut pending.records)
        }
        Err(_) => Vec::new(),
    };
    let outcome = if records.is_empty() {
        Err((ErrorKind::Other, "journal group poisoned".to_string()))
    } else {
        inner.write(&records).map_err(|e| match e {
            JournalError::Io(e) => (e.kind(), e.to_string()),
            JournalError::Record(r) => (ErrorKind::InvalidData, r),
        })
    };
    let _ = group.outcome.set(outcome);
    group.written.notify_waiters();
}

impl Inner {
    /// Writes whole records in one `write(2)` (rotating the segment first when
    /// it is full); on failure none of them counts.
    fn write(&self, records: &[u8]) -> Result<(), JournalError> {
        {
            let mut active =
                self.active.lock().map_err(|_| std::io::Error::other("journal lock poisoned"))?;
            if active.len >= self.segment_bytes {
                let next = active.segment + 1;
                let file = create_segment(&self.dir, next)?;
                *active = Active { file, segment: next, len: 0 };
                self.writing.store(next, Ordering::Release);
            }
            self.writes.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = active.file.write_all(records) {
                // A partial record would hide every later one: cut it off.
                let keep = active.len;
                let _ = active.file.set_len(keep);
                return Err(e.into());
            }
            active.len += records.len() as u64;
        }
        if self.idle.load(Ordering::Relaxed) && self.idle.swap(false, Ordering::AcqRel) {
            self.wake.notify_one();
        }
        Ok(())
    }
}

/// Whose slot a drainer works on.
enum Source {
    /// This process's: it is still being written.
    Own(Arc<Inner>),
    /// A dead process's: every segment is final.
    Orphan {
        /// Held until the slot is drained.
        _lock: File,
    },
}

impl Source {
    /// The segment being written, if any.
    fn writing(&self) -> Option<u64> {
        match self {
            Self::Own(inner) => Some(inner.writing.load(Ordering::Acquire)),
            Self::Orphan { .. } => None,
        }
    }
}

/// Where the drainer is: records before it are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    segment: u64,
    offset: u64,
}

struct Checkpoint {
    file: File,
}

impl Checkpoint {
    fn open(slot: &Path) -> std::io::Result<(Self, Option<Position>)> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(slot.join("checkpoint"))?;
        let mut buf = [0u8; 16];
        let saved = match file.read_exact_at(&mut buf, 0) {
            Ok(()) => {
                let segment = u64::from_le_bytes(buf[..8].try_into().unwrap_or_default());
                let offset = u64::from_le_bytes(buf[8..].try_into().unwrap_or_default());
                Some(Position { segment, offset })
            }
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => None,
            Err(e) => return Err(e),
        };
        Ok((Self { file }, saved))
    }

    /// One 16-byte write: a crash leaves the old or the new position.
    fn save(&self, p: Position) -> std::io::Result<()> {
        let mut buf = [0u8; 16];
        buf[..8].copy_from_slice(&p.segment.to_le_bytes());
        buf[8..].copy_from_slice(&p.offset.to_le_bytes());
        self.file.write_all_at(&buf, 0)
    }
}

/// What one read of a segment found.
struct Read {
    events: Vec<Envelope>,
    /// Where the next read starts.
    next: u64,
    /// The read stopped at the end of the data, not at a record that is cut
    /// short or fails its checksum (being written now, or torn by a crash).
    clean_end: bool,
}

fn read_records(file: &File, offset: u64, buf: &mut Vec<u8>) -> std::io::Result<Read> {
    buf.resize(READ_CHUNK, 0);
    let mut filled = 0;
    loop {
        let n = file.read_at(&mut buf[filled..], offset + filled as u64)?;
        filled += n;
        if n == 0 || filled == buf.len() {
            break;
        }
    }
    let mut read = Read { events: Vec::new(), next: offset, clean_end: false };
    let mut at = 0usize;
    // Records never exceed MAX_RECORD < READ_CHUNK, so a chunk read at a record
    // boundary always holds at least one whole record, if it is complete.
    while read.events.len() < BATCH && filled - at >= HEADER {
        let len = u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        let crc = u32::from_le_bytes([buf[at + 4], buf[at + 5], buf[at + 6], buf[at + 7]]);
        if len > MAX_RECORD || filled - at - HEADER < len {
            break;
        }
        let payload = &buf[at + HEADER..at + HEADER + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        match serde_json::from_slice::<Envelope>(payload) {
            Ok(e) => read.events.push(e),
            Err(e) => {
                // Written by us, so this is a bug, not a transient state: skip it loudly.
                metrics::counter!("events_journal_unreadable_total").increment(1);
                tracing::error!(error = %e, offset = offset + at as u64, "unreadable journal record skipped");
            }
        }
        at += HEADER + len;
    }
    read.next = offset + at as u64;
    read.clean_end = at == filled;
    Ok(read)
}

/// A read of the records after a batch, made on the blocking pool while that
/// batch is published: decoding the next batch overlaps the consumers applying
/// this one.
struct Ahead {
    /// Where it reads.
    at: Position,
    /// The segment being written before the read began, as `drain_slot` takes
    /// it before each of its own reads.
    writing: Option<u64>,
    read: JoinHandle<std::io::Result<(Read, Vec<u8>)>>,
}

fn read_ahead(file: &Arc<File>, at: Position, writing: Option<u64>, mut buf: Vec<u8>) -> Ahead {
    let file = file.clone();
    let read =
        tokio::task::spawn_blocking(move || read_records(&file, at.offset, &mut buf).map(|r| (r, buf)));
    Ahead { at, writing, read }
}

/// Where drained events go, and when.
#[derive(Clone)]
struct Gate {
    bus: Arc<dyn Bus>,
    ready: CancellationToken,
    shutdown: CancellationToken,
}

async fn drain(source: Source, slot: PathBuf, name: String, gate: Gate) {
    tokio::select! {
        _ = gate.ready.cancelled() => {}
        // Stopped before the platform was up: the records wait for the next start.
        _ = gate.shutdown.cancelled() => return,
    }
    if let Err(e) = drain_slot(&source, &slot, &name, gate.bus.as_ref(), &gate.shutdown).await {
        tracing::error!(journal = %name, slot = %slot.display(), error = %e, "journal drainer stopped; its records wait for the next start");
    }
}

async fn drain_slot(
    source: &Source,
    slot: &Path,
    name: &str,
    bus: &dyn Bus,
    shutdown: &CancellationToken,
) -> std::io::Result<()> {
    let (checkpoint, saved) = Checkpoint::open(slot)?;
    let first = segments(slot)?.first().copied().unwrap_or(0);
    let mut at = match saved {
        Some(p) if p.segment >= first => p,
        _ => Position { segment: first, offset: 0 },
    };
    let mut file: Option<Arc<File>> = None;
    let mut buf = Vec::new();
    let mut ahead: Option<Ahead> = None;
    let mut backoff = Duration::from_millis(50);
    let mut stopping = false;
    let mut deadline = None;
    loop {
        if shutdown.is_cancelled() {
            stopping = true;
            let until = *deadline.get_or_insert_with(|| std::time::Instant::now() + STOP_DEADLINE);
            if std::time::Instant::now() > until {
                tracing::info!(journal = %name, "stopping with a backlog; it is published at the next start");
                return Ok(());
            }
        }
        // The read made while the last batch was published, when it is of
        // this spot and got past something; at the tail, read again (records
        // may have come during the publish).
        let ready = match ahead.take() {
            Some(a) if a.at == at && file.is_some() => {
                let (read, spare) = a.read.await.map_err(std::io::Error::other)??;
                buf = spare;
                (read.next != a.at.offset).then_some((a.writing, read))
            }
            _ => None,
        };
        let (writing, read) = match ready {
            Some(ready) => ready,
            None => {
                let writing = source.writing();
                if file.is_none() {
                    match File::open(segment_path(slot, at.segment)) {
                        Ok(f) => file = Some(Arc::new(f)),
                        Err(e) if e.kind() == ErrorKind::NotFound => {
                            // Deleted after a checkpoint, or never written: go to the next one.
                            match segments(slot)?.into_iter().find(|s| *s > at.segment) {
                                Some(next) => {
                                    at = Position { segment: next, offset: 0 };
                                    continue;
                                }
                                None if writing.is_none() => return Ok(()),
                                None => {}
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                let read = match &file {
                    Some(f) => read_records(f, at.offset, &mut buf)?,
                    None => Read { events: Vec::new(), next: at.offset, clean_end: true },
                };
                (writing, read)
            }
        };
        let finished = writing.is_none_or(|w| at.segment < w);
        // A small batch: the drainer keeps up easily. It then waits a moment
        // after publishing and reads afresh, so that under load batches grow
        // instead of going out every millisecond with a few dozen events
        // (each a JetStream message and a consumer's batch). A larger one
        // means the drainer is busy: no wait, and the next read overlaps the
        // publish.
        let gather = !read.events.is_empty() && read.events.len() < BATCH / 4;
        if !read.events.is_empty() {
            let count = read.events.len();
            // Shared, not lent: the in-process consumers take the batch as it is.
            let events: Arc<[Envelope]> = read.events.into();
            // Decode what follows on another thread while the consumers apply this.
            if !gather && let Some(f) = &file {
                let next = Position { segment: at.segment, offset: read.next };
                ahead = Some(read_ahead(f, next, source.writing(), std::mem::take(&mut buf)));
            }
            match bus.publish_shared(events).await {
                Ok(()) => {
                    backoff = Duration::from_millis(50);
                    metrics::histogram!("event_journal_batch_size", "journal" => name.to_string())
                        .record(count as f64);
                    metrics::counter!("events_published_total", "service" => name.to_string())
                        .increment(count as u64);
                }
                Err(e) => {
                    ahead = None;
                    tracing::warn!(journal = %name, error = %e, "publishing journal events failed; will retry");
                    if stopping {
                        return Ok(());
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        if read.next != at.offset {
            at.offset = read.next;
            checkpoint.save(at)?;
            if gather && !stopping {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(GATHER) => {}
                }
            }
            continue;
        }
        // Nothing more to read here for now.
        if finished && file.is_some() {
            // The segment was final before the read, so a record that could not
            // be read is one torn by a crash: its append never returned.
            if !read.clean_end {
                tracing::warn!(journal = %name, segment = at.segment, offset = at.offset,
                    "torn record at the end of a journal segment dropped (its request was never answered)");
            }
            let done = at.segment;
            file = None;
            let next = segments(slot)?.into_iter().find(|s| *s > done);
            match next {
                Some(n) => at = Position { segment: n, offset: 0 },
                None if writing.is_none() => {
                    std::fs::remove_file(segment_path(slot, done))?;
                    return Ok(());
                }
                None => at = Position { segment: done + 1, offset: 0 },
            }
            checkpoint.save(at)?;
            std::fs::remove_file(segment_path(slot, done))?;
            continue;
        }
        if stopping {
            return Ok(());
        }
        let Source::Own(inner) = source else { continue };
        inner.idle.store(true, Ordering::Release);
        tokio::select! {
            // One more pass picks up what was written before the stop.
            _ = shutdown.cancelled() => {}
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        inner.idle.store(false, Ordering::Release);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use futures_util::StreamExt;
    use futures_util::stream::BoxStream;

    use super::*;
    use crate::events::MemoryBus;
    use crate::tenant::TenantId;

    const TYPES: &[&str] = &["test.happened"];

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("signpost-journal-{}", uuid::Uuid::now_v7().simple()))
    }

    fn event(n: u64) -> Envelope {
        Envelope::new("test.happened", TenantId::new(), "system", serde_json::json!({ "n": n }))
    }

    async fn open(
        dir: &Path,
        segment_bytes: u64,
    ) -> (Journal, BoxStream<'static, Envelope>, CancellationToken) {
        let bus = Arc::new(MemoryBus::new());
        let published = bus.watch(TYPES).await.unwrap();
        let (ready, shutdown) = (CancellationToken::new(), CancellationToken::new());
        ready.cancel();
        let (journal, _tasks) =
            Journal::open_sized(dir, Gate { bus, ready, shutdown: shutdown.clone() }, segment_bytes).unwrap();
        (journal, published, shutdown)
    }

    async fn next_n(stream: &mut BoxStream<'static, Envelope>, n: usize) -> Vec<u64> {
        let mut seen = Vec::new();
        while seen.len() < n {
            let e = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap();
            seen.push(e.data.value()["n"].as_u64().unwrap());
        }
        seen
    }

    fn write_segment(slot: &Path, segment: u64, events: &[Envelope], torn_tail: bool) {
        std::fs::create_dir_all(slot).unwrap();
        let mut bytes = Vec::new();
        for e in events {
            bytes.extend(encode(e).unwrap());
        }
        if torn_tail {
            let whole = encode(&event(999)).unwrap();
            bytes.extend(&whole[..whole.len() / 2]);
        }
        std::fs::write(segment_path(slot, segment), bytes).unwrap();
    }

    #[tokio::test]
    async fn appends_are_published_in_order_across_segments_and_spent_segments_are_removed() {
        let dir = temp_dir();
        let (journal, mut published, shutdown) = open(&dir, 4096).await;
        for n in 0..200 {
            journal.append(&event(n)).unwrap();
        }
        assert_eq!(next_n(&mut published, 200).await, (0..200).collect::<Vec<_>>());
        // Give the drainer a moment to pass the last rotation.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let left = segments(&dir.join("0")).unwrap();
        assert_eq!(left.len(), 1, "only the segment being written is kept: {left:?}");
        assert!(left[0] > 5, "200 records of ~200 bytes filled several 4 KiB segments");
        shutdown.cancel();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Spawns one grouped append per number, as requests ready at once on
    /// one thread (after one epoll wake-up) do.
    fn grouped_appends(
        journal: &Journal,
        tenant: TenantId,
        numbers: std::ops::Range<u64>,
    ) -> Vec<JoinHandle<Result<(), JournalError>>> {
        numbers
            .map(|n| {
                let journal = journal.clone();
                tokio::spawn(async move {
                    let event =
                        EnvelopeOf::new("test.happened", tenant, "system", serde_json::json!({ "n": n }));
                    journal.append_of(&event).await
                })
            })
            .collect()
    }

    #[tokio::test]
    async fn appends_made_in_one_turn_go_out_in_one_write_and_each_returns_after_it() {
        let dir = temp_dir();
        let (journal, mut published, shutdown) = open(&dir, SEGMENT_BYTES).await;
        let tenant = TenantId::new();
        for a in grouped_appends(&journal, tenant, 0..50) {
            a.await.unwrap().unwrap();
        }
        let writes = journal.inner.writes.load(Ordering::Relaxed);
        assert!(writes <= 2, "fifty appends of one turn took {writes} writes");
        let mut seen = next_n(&mut published, 50).await;
        seen.sort_unstable();
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        // A later turn opens a group of its own.
        journal
            .append_of(&EnvelopeOf::new("test.happened", tenant, "system", serde_json::json!({ "n": 50 })))
            .await
            .unwrap();
        assert_eq!(next_n(&mut published, 1).await, vec![50]);
        assert_eq!(journal.inner.writes.load(Ordering::Relaxed), writes + 1);
        shutdown.cancel();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_group_whose_write_fails_fails_every_append_in_it_and_publishes_none() {
        let dir = temp_dir();
        let (journal, mut published, shutdown) = open(&dir, SEGMENT_BYTES).await;
        let tenant = TenantId::new();
        let path = segment_path(&dir.join("0"), journal.inner.writing.load(Ordering::Acquire));
        // The disk refuses: the segment's handle can no longer be written.
        let writable = {
            let mut active = journal.inner.active.lock().unwrap();
            std::mem::replace(&mut active.file, File::open(&path).unwrap())
        };
        for a in grouped_appends(&journal, tenant, 0..3) {
            assert!(matches!(a.await.unwrap(), Err(JournalError::Io(_))), "no append of the group counts");
        }
        journal.inner.active.lock().unwrap().file = writable;
        journal
            .append_of(&EnvelopeOf::new("test.happened", tenant, "system", serde_json::json!({ "n": 7 })))
            .await
            .unwrap();
        assert_eq!(next_n(&mut published, 1).await, vec![7], "only the append that returned Ok is published");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            tokio::time::timeout(Duration::from_millis(100), published.next()).await.is_err(),
            "nothing else follows"
        );
        shutdown.cancel();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_backlog_of_many_batches_is_published_once_each_and_in_order() {
        let dir = temp_dir();
        // Left by a dead process: two segments of several full batches each,
        // so reads made ahead cross batch and segment boundaries.
        write_segment(&dir.join("0"), 0, &(0..1300).map(event).collect::<Vec<_>>(), false);
        write_segment(&dir.join("0"), 1, &(1300..2200).map(event).collect::<Vec<_>>(), false);
        let (journal, mut published, shutdown) = open(&dir, SEGMENT_BYTES).await;
        assert_eq!(next_n(&mut published, 2200).await, (0..2200).collect::<Vec<_>>());
        journal.append(&event(5000)).unwrap();
        assert_eq!(
            next_n(&mut published, 1).await,
            vec![5000],
            "nothing published twice, then the new append"
        );
        shutdown.cancel();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_restart_publishes_what_a_dead_process_left_and_drops_only_a_torn_record() {
        let dir = temp_dir();
        // Slot 0 belongs to a live process; slots 1 and 2 were left by dead ones,
        // slot 1 with its checkpoint after its first record.
        let live = try_lock(&dir.join("0")).unwrap().unwrap();
        let left: Vec<Envelope> = (0..3).map(event).collect();
        write_segment(&dir.join("1"), 7, &left, true);
        let (checkpoint, _) = Checkpoint::open(&dir.join("1")).unwrap();
        checkpoint.save(Position { segment: 7, offset: encode(&left[0]).unwrap().len() as u64 }).unwrap();
        write_segment(&dir.join("2"), 0, &[event(10), event(11)], false);
        let (journal, mut published, shutdown) = open(&dir, SEGMENT_BYTES).await;
        let mut seen = next_n(&mut published, 4).await;
        seen.sort_unstable();
        assert_eq!(
            seen,
            vec![1, 2, 10, 11],
            "published once each, from the checkpoints on, without the torn record"
        );
        journal.append(&event(20)).unwrap();
        assert_eq!(next_n(&mut published, 1).await, vec![20], "and the new process's own appends follow");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(segments(&dir.join("2")).unwrap().is_empty(), "the orphan slot is emptied");
        assert_eq!(
            segments(&dir.join("1")).unwrap(),
            vec![8],
            "the old segment is gone; the new one is written"
        );
        // The emptied slot is taken by the next process, whose first records are
        // not mistaken for the ones its checkpoint already passed.
        let (second, mut published_too, stop_too) = open(&dir, SEGMENT_BYTES).await;
        second.append(&event(30)).unwrap();
        assert_eq!(next_n(&mut published_too, 1).await, vec![30]);
        assert_eq!(segments(&dir.join("2")).unwrap(), vec![1], "segment numbers only grow");
        stop_too.cancel();
        shutdown.cancel();
        drop(live);
        let _ = std::fs::remove_dir_all(dir);
    }
}
