//! A bounded file-handle cache: an [`Io`] layer that keeps at most
//! `capacity` file descriptors of its inner [`Io`] open, however many files
//! are open through it.
//!
//! [`HandleCache::open`] opens the file for real (so creation, truncation,
//! `CreateNew`'s exclusivity and every open error happen then, as without
//! the cache) and returns a handle whose descriptor lives in a shared
//! least-recently-used list. To open another descriptor past the capacity,
//! the least recently used descriptor that no operation is using is closed
//! (evicted); an operation on a handle whose descriptor was evicted opens
//! the file again by its path, read-only or read-write as it was first
//! opened, never creating or truncating it. So an idle partition log holds
//! no descriptor: its segment files are handles without one.
//!
//! # Durability
//!
//! A handle written (or resized, or created) since its last successful
//! [`IoFile::sync_data`] is *dirty*. Evicting it first calls `sync_data` on
//! its descriptor, then closes it: a file system reports a write-back
//! error only to descriptors open when it happened (Linux `errseq`), so
//! closing a descriptor with unsynced data could otherwise lose the error a
//! later `fsync` through a new descriptor would never see. If that
//! eviction sync fails, the handle remembers the error and every later
//! `sync_data` on it fails with it: the owner (the log, which fails itself
//! on a failed fsync, see `Log::failure`) learns of it exactly where it
//! would have without the cache. A failed fsync is never swallowed.
//! Clean handles are evicted before dirty ones, so under a policy that
//! syncs regularly eviction rarely costs an fsync; the sync runs on the
//! thread that needed the descriptor, outside every lock of the cache (an
//! operation on the handle being evicted waits for it).
//!
//! Dirty handles are synced rather than never evicted so that the bound
//! holds under `fsync.policy=never`, where the log syncs an active segment
//! only when it rolls or closes.
//!
//! # Paths that change
//!
//! Reopening by path is right only while the path names the file the
//! handle was opened on. Every change of a path must therefore go through
//! the cache (nothing else may rename or remove files it has handles on):
//!
//! * [`Io::remove_file`] first *pins* the handles of that path: opens
//!   their descriptors if they were evicted and never evicts them again,
//!   so each keeps referring to the removed file (as [`Io::remove_file`]
//!   promises: open handles stay usable) until it is dropped.
//! * [`Io::rename`] pins the handles of `to` (the file it replaces) the
//!   same way, and moves the handles of `from` to `to`: they reopen under
//!   the new name (a rolled segment's `.log.rolling` handle becomes its
//!   `.log` handle and stays evictable).
//!
//! Both hold the cache's path lock exclusively, so no open or reopen runs
//! in between. A descriptor that cannot be opened to pin a handle fails the
//! remove or rename before anything changed. Renaming or removing a
//! directory with handles under it is not supported.
//!
//! Directory syncs and listings open a descriptor of their own for a
//! moment; they take a place within the capacity too.
//!
//! # Over capacity
//!
//! Descriptors in use by an operation (each operation is one call of the
//! inner file, which never waits for the cache) and pinned ones cannot be
//! evicted. When nothing can be evicted, opening waits for a descriptor to
//! be free (an operation to finish, another opening or eviction to
//! complete), up to [`MAX_WAIT`]; when every descriptor is pinned, or the
//! wait ran out (a disk that hangs), the cache opens past its capacity
//! rather than failing or blocking for good, and counts it
//! ([`HandleStats::over_capacity`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::io::{Io, IoFile, OpenMode};

/// How long opening waits for a descriptor in use to become free when the
/// capacity is reached and nothing can be evicted, before it goes over the
/// capacity.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// What a [`HandleCache`] holds and has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandleStats {
    /// The configured bound on open descriptors.
    pub capacity: usize,
    /// Descriptors open now (including ones being opened or closed).
    pub open: usize,
    /// The most descriptors open at once.
    pub peak_open: usize,
    /// Open descriptors of pinned handles (removed or replaced files).
    pub pinned: usize,
    /// Handles alive (with or without a descriptor).
    pub handles: usize,
    /// Descriptors closed to make room.
    pub evictions: u64,
    /// Evictions of a dirty handle, which synced it first.
    pub eviction_syncs: u64,
    /// Eviction syncs that failed (each reported to the handle's next
    /// `sync_data`).
    pub eviction_sync_failures: u64,
    /// Descriptors opened again for a handle (after an eviction, or to pin
    /// it).
    pub reopens: u64,
    /// Descriptors opened while the capacity was reached and nothing could
    /// be evicted (not even after waiting up to [`MAX_WAIT`]).
    pub over_capacity: u64,
    /// Times opening waited for a descriptor in use to become free.
    pub waits: u64,
}

/// The bounded file-handle cache. See the module docs.
#[derive(Clone)]
pub struct HandleCache {
    shared: Arc<Shared>,
}

impl fmt::Debug for HandleCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandleCache")
            .field("inner", &self.shared.inner)
            .field("stats", &self.stats())
            .finish()
    }
}

struct Shared {
    inner: Arc<dyn Io>,
    capacity: usize,
    /// Held shared by every open and reopen (from reading the path to
    /// registering the descriptor), exclusively by rename and remove.
    paths: RwLock<()>,
    state: Mutex<State>,
    /// Signalled whenever a descriptor stops being busy.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    entries: HashMap<u64, Entry>,
    /// Unpinned handles by their current path.
    by_path: HashMap<Arc<Path>, Vec<u64>>,
    /// Evictable descriptors (open, unused, unpinned) by last use: clean
    /// and dirty ones apart, clean ones go first.
    clean: BTreeMap<u64, u64>,
    dirty: BTreeMap<u64, u64>,
    next_id: u64,
    tick: u64,
    /// Descriptors open, being opened or being closed.
    open: usize,
    /// Of those, descriptors evicted and being closed.
    closing: usize,
    /// Threads waiting for a descriptor to become evictable or closed.
    waiters: usize,
    stats: HandleStats,
}

struct Entry {
    path: Arc<Path>,
    writable: bool,
    fd: Fd,
    pinned: bool,
    /// Written since the last successful sync.
    dirty: bool,
    /// Operations using the descriptor now.
    users: u32,
    /// Writes in progress, and a count of writes started, so a sync clears
    /// `dirty` only if it covered every write.
    writes_in_flight: u32,
    write_gen: u64,
    /// Key in `clean` or `dirty` while evictable.
    lru: Option<u64>,
    /// A failed eviction sync, reported by every later `sync_data`.
    error: Option<(io::ErrorKind, String)>,
}

enum Fd {
    Open(Arc<dyn IoFile>),
    Closed,
    /// Being opened or closed by some thread; wait on `changed`.
    Busy,
}

/// A descriptor taken out to be closed.
struct Victim {
    id: u64,
    fd: Arc<dyn IoFile>,
    dirty: bool,
    path: Arc<Path>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    Read,
    Write,
    Sync,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn lru_remove(&mut self, id: u64) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        if let Some(tick) = e.lru.take() {
            self.clean.remove(&tick);
            self.dirty.remove(&tick);
        }
    }

    /// Makes `id` evictable if it is open, unused and unpinned.
    fn lru_insert(&mut self, id: u64) {
        self.lru_remove(id);
        self.tick += 1;
        let tick = self.tick;
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        if matches!(e.fd, Fd::Open(_)) && e.users == 0 && !e.pinned {
            e.lru = Some(tick);
            if e.dirty {
                self.dirty.insert(tick, id);
            } else {
                self.clean.insert(tick, id);
            }
        }
    }

    fn unindex(&mut self, id: u64, path: &Arc<Path>) {
        if let Some(ids) = self.by_path.get_mut(path) {
            ids.retain(|&i| i != id);
            if ids.is_empty() {
                self.by_path.remove(path);
            }
        }
    }

    fn note_open(&mut self) {
        self.stats.peak_open = self.stats.peak_open.max(self.open - self.closing);
    }

    /// Takes descriptors out (to be closed by the caller) until `need` more
    /// fit or nothing is left to evict. Other threads' victims still count
    /// until they are closed (their reservations are opened after that).
    fn take_victims(&mut self, capacity: usize, need: usize) -> Vec<Victim> {
        let mut victims = Vec::new();
        while self.open - victims.len() + need > capacity {
            let next = self
                .clean
                .first_key_value()
                .or_else(|| self.dirty.first_key_value())
                .map(|(_, &id)| id);
            let Some(id) = next else {
                break;
            };
            self.lru_remove(id);
            let e = self.entries.get_mut(&id).expect("evictable handles exist");
            let Fd::Open(fd) = std::mem::replace(&mut e.fd, Fd::Busy) else {
                unreachable!("only open descriptors are evictable");
            };
            // Still counted in `open` until closed.
            self.closing += 1;
            victims.push(Victim {
                id,
                fd,
                dirty: e.dirty,
                path: e.path.clone(),
            });
        }
        victims
    }
}

impl HandleCache {
    /// A cache over `inner` keeping at most `capacity` descriptors open
    /// (at least 1).
    pub fn new(inner: Arc<dyn Io>, capacity: usize) -> HandleCache {
        let capacity = capacity.max(1);
        HandleCache {
            shared: Arc::new(Shared {
                inner,
                capacity,
                paths: RwLock::new(()),
                state: Mutex::new(State {
                    stats: HandleStats {
                        capacity,
                        ..HandleStats::default()
                    },
                    ..State::default()
                }),
                changed: Condvar::new(),
            }),
        }
    }

    /// The bound on open descriptors.
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// The [`Io`] this cache opens files with.
    pub fn inner(&self) -> &Arc<dyn Io> {
        &self.shared.inner
    }

    /// Counters and gauges of the cache.
    pub fn stats(&self) -> HandleStats {
        let st = lock(&self.shared.state);
        HandleStats {
            open: st.open - st.closing,
            handles: st.entries.len(),
            ..st.stats
        }
    }
}

impl Shared {
    /// Reserves `need` descriptors within the capacity: evicts (and closes)
    /// descriptors, or waits for ones in use, up to [`MAX_WAIT`]; then goes
    /// over the capacity. The caller opens them and gives back
    /// ([`Shared::release`]) what it does not keep.
    fn reserve(&self, need: usize) {
        let started = Instant::now();
        let mut counted = false;
        let mut st = lock(&self.state);
        loop {
            let victims = st.take_victims(self.capacity, need);
            let fits = st.open - victims.len() + need <= self.capacity;
            if !fits && !victims.is_empty() {
                // Not enough yet: close these and look again.
                drop(st);
                self.close(victims);
                st = lock(&self.state);
                continue;
            }
            let waited = started.elapsed();
            // Nothing is evictable now. Every descriptor that is not pinned
            // is in use, being opened or being closed, and will be evictable
            // or gone soon: wait for that.
            if !fits && st.open > st.stats.pinned && waited < MAX_WAIT {
                if !counted {
                    counted = true;
                    st.stats.waits += 1;
                }
                st.waiters += 1;
                st = self
                    .changed
                    .wait_timeout(st, MAX_WAIT - waited)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                st.waiters -= 1;
                continue;
            }
            if !fits {
                st.stats.over_capacity += 1;
            }
            st.open += need;
            st.note_open();
            drop(st);
            self.close(victims);
            return;
        }
    }

    /// Gives back `n` reserved descriptors.
    fn release(&self, n: usize) {
        let mut st = lock(&self.state);
        st.open -= n;
        let waiters = st.waiters > 0;
        drop(st);
        if waiters {
            self.changed.notify_all();
        }
    }

    /// Runs a directory operation (which opens a descriptor of its own for
    /// a moment) within the capacity.
    fn dir_op<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        self.reserve(1);
        let r = f();
        self.release(1);
        r
    }

    /// Closes evicted descriptors, syncing dirty ones first.
    fn close(&self, victims: Vec<Victim>) {
        for v in victims {
            let synced = if v.dirty {
                let r = v.fd.sync_data();
                if let Err(e) = &r {
                    tracing::error!(file = %v.path.display(), error = %e,
                        "fsync of an evicted file handle failed; its next fsync reports it");
                }
                Some(r)
            } else {
                None
            };
            drop(v.fd);
            let mut st = lock(&self.state);
            st.open -= 1;
            st.closing -= 1;
            st.stats.evictions += 1;
            if v.dirty {
                st.stats.eviction_syncs += 1;
            }
            if matches!(synced, Some(Err(_))) {
                st.stats.eviction_sync_failures += 1;
            }
            if let Some(e) = st.entries.get_mut(&v.id) {
                e.fd = Fd::Closed;
                match synced {
                    Some(Err(err)) => {
                        e.error.get_or_insert((err.kind(), err.to_string()));
                        e.dirty = false;
                    }
                    Some(Ok(())) => e.dirty = false,
                    None => {}
                }
            }
            drop(st);
            self.changed.notify_all();
        }
    }

    /// Opens the evicted descriptor of `id` again by its path.
    fn reopen(&self, id: u64) -> io::Result<()> {
        self.reserve(1);
        let _paths = self.paths.read().unwrap_or_else(|e| e.into_inner());
        let mut st = lock(&self.state);
        let closed = st
            .entries
            .get(&id)
            .is_some_and(|e| matches!(e.fd, Fd::Closed));
        if !closed {
            // Another operation reopened it meanwhile.
            drop(st);
            self.release(1);
            return Ok(());
        }
        let e = st.entries.get_mut(&id).expect("checked");
        e.fd = Fd::Busy;
        let path = e.path.clone();
        let mode = if e.writable {
            OpenMode::ReadWrite
        } else {
            OpenMode::Read
        };
        drop(st);
        let opened = self.inner.open(&path, mode);
        let mut st = lock(&self.state);
        let result = match opened {
            Ok(fd) => match st.entries.get_mut(&id) {
                Some(e) => {
                    // Not evictable until the caller's operation used it
                    // (it makes it evictable when done).
                    e.fd = Fd::Open(fd);
                    st.stats.reopens += 1;
                    Ok(())
                }
                None => {
                    st.open -= 1;
                    Ok(())
                }
            },
            Err(err) => {
                st.open -= 1;
                if let Some(e) = st.entries.get_mut(&id) {
                    e.fd = Fd::Closed;
                }
                Err(io::Error::new(
                    err.kind(),
                    format!("reopen {}: {err}", path.display()),
                ))
            }
        };
        drop(st);
        self.changed.notify_all();
        result
    }

    /// Pins every handle of `paths`: opens its descriptor if it was
    /// evicted, and never evicts it again. Called with the path lock held
    /// exclusively (so no reopen is in progress; a busy descriptor is being
    /// evicted and is waited for).
    fn pin(&self, paths: &[&Path]) -> io::Result<()> {
        let mut st = lock(&self.state);
        let to_open = loop {
            let ids: Vec<u64> = paths
                .iter()
                .flat_map(|p| st.by_path.get(*p).cloned().unwrap_or_default())
                .collect();
            if ids.is_empty() {
                return Ok(());
            }
            if ids.iter().any(|id| matches!(st.entries[id].fd, Fd::Busy)) {
                st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let mut to_open = Vec::new();
            for id in ids {
                if matches!(st.entries[&id].fd, Fd::Open(_)) {
                    st.lru_remove(id);
                    let e = st.entries.get_mut(&id).expect("listed");
                    e.pinned = true;
                    let path = e.path.clone();
                    st.unindex(id, &path);
                    st.stats.pinned += 1;
                } else {
                    let e = st.entries.get_mut(&id).expect("listed");
                    e.fd = Fd::Busy;
                    let mode = if e.writable {
                        OpenMode::ReadWrite
                    } else {
                        OpenMode::Read
                    };
                    to_open.push((id, e.path.clone(), mode));
                    // Pinned descriptors are never evicted: no room is
                    // made, the cache may go over capacity.
                    if st.open >= self.capacity {
                        st.stats.over_capacity += 1;
                    }
                    st.open += 1;
                    st.note_open();
                }
            }
            break to_open;
        };
        drop(st);
        let mut first_error = None;
        let opened: Vec<_> = to_open
            .into_iter()
            .map(|(id, path, mode)| {
                let r = self.inner.open(&path, mode);
                (id, path, r)
            })
            .collect();
        let mut st = lock(&self.state);
        for (id, path, r) in opened {
            match (r, st.entries.contains_key(&id)) {
                (Ok(fd), true) => {
                    let e = st.entries.get_mut(&id).expect("checked");
                    e.fd = Fd::Open(fd);
                    e.pinned = true;
                    st.unindex(id, &path);
                    st.stats.pinned += 1;
                    st.stats.reopens += 1;
                }
                (Ok(_), false) => st.open -= 1,
                (Err(err), exists) => {
                    st.open -= 1;
                    if exists {
                        st.entries.get_mut(&id).expect("checked").fd = Fd::Closed;
                    }
                    first_error.get_or_insert(io::Error::new(
                        err.kind(),
                        format!("reopen {} to keep its handle: {err}", path.display()),
                    ));
                }
            }
        }
        drop(st);
        self.changed.notify_all();
        first_error.map_or(Ok(()), Err)
    }
}

impl Io for HandleCache {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn IoFile>> {
        let shared = &self.shared;
        shared.reserve(1);
        let _paths = shared.paths.read().unwrap_or_else(|e| e.into_inner());
        let fd = match shared.inner.open(path, mode) {
            Ok(fd) => fd,
            Err(e) => {
                shared.release(1);
                return Err(e);
            }
        };
        let mut st = lock(&shared.state);
        let id = st.next_id;
        st.next_id += 1;
        let path: Arc<Path> = Arc::from(path);
        st.by_path.entry(path.clone()).or_default().push(id);
        st.entries.insert(
            id,
            Entry {
                path,
                writable: mode != OpenMode::Read,
                fd: Fd::Open(fd),
                pinned: false,
                dirty: matches!(mode, OpenMode::CreateNew | OpenMode::CreateTruncate),
                users: 0,
                writes_in_flight: 0,
                write_gen: 0,
                lru: None,
                error: None,
            },
        );
        st.lru_insert(id);
        let waiters = st.waiters > 0;
        drop(st);
        if waiters {
            shared.changed.notify_all();
        }
        Ok(Arc::new(CachedFile {
            shared: shared.clone(),
            id,
        }))
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.shared.inner.create_dir(path)
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.shared.inner.exists(path)
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.shared.dir_op(|| self.shared.inner.read_dir(dir))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let shared = &self.shared;
        let _paths = shared.paths.write().unwrap_or_else(|e| e.into_inner());
        if from == to {
            return shared.inner.rename(from, to);
        }
        // Handles of `to` keep the file the rename replaces.
        shared.pin(&[to])?;
        shared.inner.rename(from, to)?;
        let mut st = lock(&shared.state);
        if let Some(ids) = st.by_path.remove(from) {
            let to: Arc<Path> = Arc::from(to);
            for &id in &ids {
                if let Some(e) = st.entries.get_mut(&id) {
                    e.path = to.clone();
                }
            }
            st.by_path.entry(to).or_default().extend(ids);
        }
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let shared = &self.shared;
        let _paths = shared.paths.write().unwrap_or_else(|e| e.into_inner());
        shared.pin(&[path])?;
        shared.inner.remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.shared.dir_op(|| self.shared.inner.sync_dir(dir))
    }
}

/// A file opened through a [`HandleCache`].
struct CachedFile {
    shared: Arc<Shared>,
    id: u64,
}

impl fmt::Debug for CachedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = lock(&self.shared.state);
        let mut d = f.debug_struct("CachedFile");
        d.field("id", &self.id);
        if let Some(e) = st.entries.get(&self.id) {
            d.field("path", &e.path)
                .field("open", &matches!(e.fd, Fd::Open(_)))
                .field("pinned", &e.pinned)
                .field("dirty", &e.dirty);
        }
        d.finish()
    }
}

impl CachedFile {
    /// Runs `f` on the descriptor, reopening it first if it was evicted.
    /// The descriptor cannot be evicted while `f` runs.
    fn with<T>(&self, usage: Use, f: impl FnOnce(&dyn IoFile) -> io::Result<T>) -> io::Result<T> {
        let shared = &*self.shared;
        let (fd, covers) = loop {
            let mut st = lock(&shared.state);
            let e = st
                .entries
                .get_mut(&self.id)
                .expect("a live handle has an entry");
            if usage == Use::Sync
                && let Some((kind, msg)) = &e.error
            {
                return Err(io::Error::new(
                    *kind,
                    format!(
                        "an earlier fsync of this file (when its handle was evicted) failed: {msg}"
                    ),
                ));
            }
            match &e.fd {
                Fd::Open(fd) => {
                    let fd = fd.clone();
                    e.users += 1;
                    // A sync makes the file clean only if it covers every
                    // write started before it and none is still running.
                    let covers = (e.writes_in_flight == 0).then_some(e.write_gen);
                    if usage == Use::Write {
                        e.dirty = true;
                        e.writes_in_flight += 1;
                        e.write_gen += 1;
                    }
                    st.lru_remove(self.id);
                    break (fd, covers);
                }
                Fd::Busy => {
                    drop(shared.changed.wait(st).unwrap_or_else(|e| e.into_inner()));
                }
                Fd::Closed => {
                    drop(st);
                    shared.reopen(self.id)?;
                }
            }
        };
        let result = f(&*fd);
        drop(fd);
        let mut st = lock(&shared.state);
        let e = st
            .entries
            .get_mut(&self.id)
            .expect("a live handle has an entry");
        e.users -= 1;
        let freed = e.users == 0;
        match usage {
            Use::Write => e.writes_in_flight -= 1,
            Use::Sync => {
                if result.is_ok() && covers == Some(e.write_gen) && e.writes_in_flight == 0 {
                    e.dirty = false;
                }
            }
            Use::Read => {}
        }
        if freed {
            st.lru_insert(self.id);
        }
        let waiters = freed && st.waiters > 0;
        drop(st);
        if waiters {
            shared.changed.notify_all();
        }
        result
    }
}

impl IoFile for CachedFile {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.with(Use::Read, |f| f.read_exact_at(buf, pos))
    }
    fn read_vec_at(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        self.with(Use::Read, |f| f.read_vec_at(len, pos))
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.with(Use::Write, |f| f.write_all_at(buf, pos))
    }
    fn write_all_parts_at(&self, head: &[u8], tail: &[u8], pos: u64) -> io::Result<()> {
        self.with(Use::Write, |f| f.write_all_parts_at(head, tail, pos))
    }
    fn len(&self) -> io::Result<u64> {
        self.with(Use::Read, |f| f.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(Use::Write, |f| f.set_len(len))
    }
    fn sync_data(&self) -> io::Result<()> {
        self.with(Use::Sync, |f| f.sync_data())
    }
}

impl Drop for CachedFile {
    fn drop(&mut self) {
        let shared = &*self.shared;
        let mut st = lock(&shared.state);
        st.lru_remove(self.id);
        let Some(e) = st.entries.remove(&self.id) else {
            return;
        };
        if e.pinned {
            st.stats.pinned -= 1;
        } else {
            st.unindex(self.id, &e.path);
        }
        let fd = match e.fd {
            Fd::Open(fd) => {
                st.open -= 1;
                Some(fd)
            }
            // Whoever made it busy closes or releases the descriptor.
            Fd::Busy | Fd::Closed => None,
        };
        let waiters = st.waiters > 0;
        drop(st);
        drop(fd);
        if waiters {
            shared.changed.notify_all();
        }
    }
}
