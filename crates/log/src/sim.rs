//! A simulated disk for tests (feature `sim`): an in-memory [`Io`] that
//! forgets, the way TigerBeetle's and FoundationDB's storage simulators do.
//!
//! * Each file keeps its **durable** contents (as of its last
//!   [`IoFile::sync_data`]) apart from its **current** contents (what reads
//!   see, page cache included).
//! * Creating, renaming and removing entries (files and directories) take
//!   effect at once for the running process but become durable only when
//!   the directory holding the entry is synced ([`Io::sync_dir`]).
//! * A simulated power loss ([`SimIo::power_loss`], or scheduled with
//!   [`SimIo::crash_after`]) keeps a random prefix of the unsynced directory
//!   operations (journalled file systems persist metadata in order) and, for
//!   every surviving file with unsynced data, keeps the durable data, all of
//!   the current data, a torn prefix of it, or a random mix of durable and
//!   current sectors, with zeros where neither had bytes. Entries whose
//!   parent directory did not survive are lost. Handles opened before the
//!   crash fail from then on.
//! * Any operation can be made to fail once with `EIO`
//!   ([`SimIo::fail_next`]), and a hook can run before every sync (to make
//!   syncs slow or block them, [`SimIo::set_sync_hook`]).
//! * Syncs can be ignored ([`SimIo::ignore_syncs`]): they succeed without
//!   making anything durable, as if the log's fsync calls were removed. A
//!   durability test must fail on such a disk, or it proves nothing.
//!
//! Everything is deterministic for a given seed as long as operations are
//! issued in the same order. Paths must be absolute; `/` always exists.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::io::{Io, IoFile, OpenMode};

/// Kinds of operation, for [`SimIo::fail_next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimOp {
    /// [`Io::open`] in any mode.
    Open,
    /// [`IoFile::read_exact_at`].
    Read,
    /// [`IoFile::write_all_at`].
    Write,
    /// [`IoFile::set_len`].
    SetLen,
    /// [`IoFile::sync_data`].
    SyncData,
    /// [`Io::sync_dir`].
    SyncDir,
    /// [`Io::rename`].
    Rename,
    /// [`Io::remove_file`].
    Remove,
    /// [`Io::create_dir`].
    CreateDir,
    /// [`Io::read_dir`].
    ReadDir,
}

/// Called with the file or directory path before every sync, outside the
/// simulator's lock.
pub type SyncHook = Arc<dyn Fn(&Path) + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(u64),
    Dir,
}

#[derive(Debug, Clone)]
enum DirOp {
    Insert(PathBuf, Entry),
    Remove(PathBuf),
    Rename(PathBuf, PathBuf),
}

impl DirOp {
    fn parent(&self) -> Option<&Path> {
        match self {
            DirOp::Insert(p, _) | DirOp::Remove(p) | DirOp::Rename(p, _) => p.parent(),
        }
    }
    fn apply(&self, tree: &mut BTreeMap<PathBuf, Entry>) {
        match self {
            DirOp::Insert(p, e) => {
                tree.insert(p.clone(), *e);
            }
            DirOp::Remove(p) => {
                tree.remove(p);
            }
            DirOp::Rename(from, to) => {
                if let Some(e) = tree.remove(from) {
                    tree.insert(to.clone(), e);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Inode {
    current: Vec<u8>,
    durable: Vec<u8>,
}

#[derive(Debug)]
struct Fault {
    op: SimOp,
    path_contains: String,
}

#[derive(Debug)]
struct State {
    rng: u64,
    sector: usize,
    boot: u64,
    down: bool,
    mutations: u64,
    crash_at: Option<u64>,
    faults: Vec<Fault>,
    next_inode: u64,
    inodes: BTreeMap<u64, Inode>,
    current: BTreeMap<PathBuf, Entry>,
    durable: BTreeMap<PathBuf, Entry>,
    pending: Vec<DirOp>,
    crashes: u64,
    ignore_syncs: bool,
}

fn eio(what: &str) -> io::Error {
    io::Error::other(format!("simulated EIO: {what}"))
}

impl State {
    fn next_rand(&mut self) -> u64 {
        // SplitMix64.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_rand() % n }
    }

    /// Common checks at the start of every operation: the machine is up,
    /// a scheduled crash, an injected fault.
    fn begin(&mut self, op: SimOp, path: &Path, mutating: bool) -> io::Result<()> {
        if self.down {
            return Err(eio("the machine lost power"));
        }
        if mutating {
            if self.crash_at == Some(self.mutations) {
                self.crash_at = None;
                self.power_loss();
                return Err(eio("power lost during this operation"));
            }
            self.mutations += 1;
        }
        let text = path.to_string_lossy();
        if let Some(i) = self
            .faults
            .iter()
            .position(|f| f.op == op && text.contains(&f.path_contains))
        {
            self.faults.remove(i);
            return Err(eio(&format!(
                "injected {op:?} failure on {}",
                path.display()
            )));
        }
        Ok(())
    }

    fn is_dir(&self, p: &Path) -> bool {
        p == Path::new("/") || self.current.get(p) == Some(&Entry::Dir)
    }

    fn parent_dir(&self, p: &Path) -> io::Result<()> {
        if !p.is_absolute() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "simulated paths must be absolute",
            ));
        }
        match p.parent() {
            Some(parent) if self.is_dir(parent) => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("parent directory of {} does not exist", p.display()),
            )),
        }
    }

    fn file(&self, p: &Path) -> io::Result<u64> {
        match self.current.get(p) {
            Some(Entry::File(ino)) => Ok(*ino),
            Some(Entry::Dir) => Err(io::Error::other(format!("{} is a directory", p.display()))),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} does not exist", p.display()),
            )),
        }
    }

    fn dir_op(&mut self, op: DirOp) {
        op.apply(&mut self.current);
        self.pending.push(op);
    }

    fn tear(&mut self, durable: &[u8], current: &[u8]) -> Vec<u8> {
        if durable == current {
            return durable.to_vec();
        }
        let (lo, hi) = (
            durable.len().min(current.len()) as u64,
            durable.len().max(current.len()) as u64,
        );
        let sector = self.sector;
        let byte = |from_current: bool, i: usize| {
            let src = if from_current { current } else { durable };
            src.get(i).copied().unwrap_or(0)
        };
        match self.below(4) {
            0 => durable.to_vec(),
            1 => current.to_vec(),
            2 => {
                // A torn prefix of what was being written.
                let len = (lo + self.below(hi - lo + 1)) as usize;
                let sectors = len.div_ceil(sector) as u64;
                let keep = self.below(sectors + 1) as usize * sector;
                (0..len).map(|i| byte(i < keep, i)).collect()
            }
            _ => {
                // Sectors written back in any order.
                let len = match self.below(3) {
                    0 => durable.len(),
                    1 => current.len(),
                    _ => (lo + self.below(hi - lo + 1)) as usize,
                };
                let mut out = Vec::with_capacity(len);
                let mut at = 0;
                while at < len {
                    let from_current = self.below(2) == 0;
                    let end = (at + sector).min(len);
                    out.extend((at..end).map(|i| byte(from_current, i)));
                    at = end;
                }
                out
            }
        }
    }

    fn power_loss(&mut self) {
        let survive = self.below(self.pending.len() as u64 + 1) as usize;
        let ops = std::mem::take(&mut self.pending);
        for op in &ops[..survive] {
            op.apply(&mut self.durable);
        }
        // Entries whose parent directory did not survive are gone (parents
        // sort before their children).
        let mut tree: BTreeMap<PathBuf, Entry> = BTreeMap::new();
        for (p, e) in std::mem::take(&mut self.durable) {
            let parent_ok = p
                .parent()
                .is_some_and(|d| d == Path::new("/") || tree.get(d) == Some(&Entry::Dir));
            if parent_ok {
                tree.insert(p, e);
            }
        }
        let mut inodes = BTreeMap::new();
        let live: Vec<u64> = tree
            .values()
            .filter_map(|e| match e {
                Entry::File(i) => Some(*i),
                Entry::Dir => None,
            })
            .collect();
        for ino in live {
            if inodes.contains_key(&ino) {
                continue;
            }
            let old = self.inodes.remove(&ino).unwrap_or_default();
            let data = self.tear(&old.durable, &old.current);
            inodes.insert(
                ino,
                Inode {
                    current: data.clone(),
                    durable: data,
                },
            );
        }
        self.inodes = inodes;
        self.current = tree.clone();
        self.durable = tree;
        self.down = true;
        self.crashes += 1;
    }
}

/// The simulated disk. Cheap to clone (clones share the disk).
#[derive(Debug, Clone)]
pub struct SimIo {
    state: Arc<Mutex<State>>,
    hook: Arc<HookSlot>,
}

/// The installed [`SyncHook`], if any.
#[derive(Default)]
struct HookSlot(RwLock<Option<SyncHook>>);

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookSlot")
    }
}

impl HookSlot {
    fn run(&self, path: &Path) {
        let hook = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(h) = hook {
            h(path);
        }
    }
}

impl SimIo {
    /// An empty disk whose random choices derive from `seed`; sectors of
    /// 512 bytes.
    pub fn new(seed: u64) -> SimIo {
        SimIo {
            state: Arc::new(Mutex::new(State {
                rng: seed ^ 0x5151_5151_5151_5151,
                sector: 512,
                boot: 0,
                down: false,
                mutations: 0,
                crash_at: None,
                faults: Vec::new(),
                next_inode: 1,
                inodes: BTreeMap::new(),
                current: BTreeMap::new(),
                durable: BTreeMap::new(),
                pending: Vec::new(),
                crashes: 0,
                ignore_syncs: false,
            })),
            hook: Arc::new(HookSlot::default()),
        }
    }

    /// Sets the granularity at which a crash tears unsynced data.
    pub fn with_sector_size(self, bytes: usize) -> SimIo {
        self.lock().sector = bytes.max(1);
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loses power now: unsynced data and directory operations are dropped
    /// or torn (see the module docs) and every operation fails until
    /// [`SimIo::restart`].
    pub fn power_loss(&self) {
        let mut st = self.lock();
        if !st.down {
            st.power_loss();
        }
    }

    /// Brings the machine back after a power loss. Handles opened before it
    /// stay unusable.
    pub fn restart(&self) {
        let mut st = self.lock();
        if st.down {
            st.down = false;
            st.boot += 1;
        }
    }

    /// [`SimIo::power_loss`] then [`SimIo::restart`].
    pub fn crash(&self) {
        self.power_loss();
        self.restart();
    }

    /// Schedules a power loss instead of the mutating operation after the
    /// next `n` ones (writes, length changes, syncs, opens that create,
    /// renames, removals, directory creations). That operation fails.
    pub fn crash_after(&self, n: u64) {
        let mut st = self.lock();
        st.crash_at = Some(st.mutations + n);
    }

    /// Cancels a scheduled crash.
    pub fn cancel_crash(&self) {
        self.lock().crash_at = None;
    }

    /// Mutating operations issued so far (the unit of [`SimIo::crash_after`]).
    pub fn mutations(&self) -> u64 {
        self.lock().mutations
    }

    /// Power losses so far (scheduled ones included).
    pub fn crashes(&self) -> u64 {
        self.lock().crashes
    }

    /// Whether the machine is down (a power loss happened and there was no
    /// restart yet).
    pub fn is_down(&self) -> bool {
        self.lock().down
    }

    /// Makes the next `op` on a path containing `path_contains` (`""`
    /// matches any) fail with `EIO`, without effect.
    pub fn fail_next(&self, op: SimOp, path_contains: &str) {
        self.lock().faults.push(Fault {
            op,
            path_contains: path_contains.to_string(),
        });
    }

    /// Drops the faults [`SimIo::fail_next`] armed that have not fired.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// With `true`, every [`IoFile::sync_data`] and [`Io::sync_dir`]
    /// succeeds without making anything durable (a power loss still drops
    /// or tears everything written since), as if the callers' fsyncs were
    /// removed; `false` restores real syncs.
    pub fn ignore_syncs(&self, ignore: bool) {
        self.lock().ignore_syncs = ignore;
    }

    /// Runs `hook` before every file or directory sync (`None` removes it).
    pub fn set_sync_hook(&self, hook: Option<SyncHook>) {
        *self.hook.0.write().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    /// The current contents of a file (what a read sees), if it exists.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.lock();
        let ino = st.file(path).ok()?;
        Some(
            st.inodes
                .get(&ino)
                .map(|i| i.current.clone())
                .unwrap_or_default(),
        )
    }

    /// Replaces the current contents of a file, creating it (the change is
    /// unsynced); for tests that damage files.
    pub fn set_contents(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let f = self.open(path, OpenMode::CreateTruncate)?;
        f.write_all_at(bytes, 0)
    }

    /// Names in a directory (current view), sorted.
    pub fn list(&self, dir: &Path) -> Vec<String> {
        let st = self.lock();
        let mut v: Vec<String> = st
            .current
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        v.sort();
        v
    }
}

#[derive(Debug)]
struct SimFile {
    state: Arc<Mutex<State>>,
    hook: Arc<HookSlot>,
    ino: u64,
    boot: u64,
    path: PathBuf,
    writable: bool,
}

impl SimFile {
    fn with<T>(
        &self,
        op: SimOp,
        mutating: bool,
        f: impl FnOnce(&mut Inode) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.boot != self.boot && !st.down {
            return Err(eio("file handle from before a simulated crash"));
        }
        st.begin(op, &self.path, mutating)?;
        if st.boot != self.boot {
            return Err(eio("file handle from before a simulated crash"));
        }
        if mutating && op != SimOp::SyncData && !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "file opened read-only",
            ));
        }
        let inode = st.inodes.entry(self.ino).or_default();
        f(inode)
    }
}

impl IoFile for SimFile {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.with(SimOp::Read, false, |i| {
            let end = pos as usize + buf.len();
            if end > i.current.len() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the file",
                ));
            }
            buf.copy_from_slice(&i.current[pos as usize..end]);
            Ok(())
        })
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.write_all_parts_at(buf, &[], pos)
    }
    fn write_all_parts_at(&self, head: &[u8], tail: &[u8], pos: u64) -> io::Result<()> {
        // One write, as `pwritev` is one system call.
        self.with(SimOp::Write, true, |i| {
            let mid = pos as usize + head.len();
            let end = mid + tail.len();
            if i.current.len() < end {
                i.current.resize(end, 0);
            }
            i.current[pos as usize..mid].copy_from_slice(head);
            i.current[mid..end].copy_from_slice(tail);
            Ok(())
        })
    }
    fn len(&self) -> io::Result<u64> {
        self.with(SimOp::Read, false, |i| Ok(i.current.len() as u64))
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(SimOp::SetLen, true, |i| {
            i.current.resize(len as usize, 0);
            Ok(())
        })
    }
    fn sync_data(&self) -> io::Result<()> {
        self.hook.run(&self.path);
        let ignore = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ignore_syncs;
        self.with(SimOp::SyncData, true, |i| {
            if !ignore {
                i.durable = i.current.clone();
            }
            Ok(())
        })
    }
}

impl Io for SimIo {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn IoFile>> {
        let creates = matches!(mode, OpenMode::CreateNew | OpenMode::CreateTruncate);
        let mut st = self.lock();
        st.begin(SimOp::Open, path, creates)?;
        st.parent_dir(path)?;
        let ino = match (mode, st.current.get(path).copied()) {
            (OpenMode::CreateNew, Some(_)) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists", path.display()),
                ));
            }
            (OpenMode::CreateNew | OpenMode::CreateTruncate, None) => {
                let ino = st.next_inode;
                st.next_inode += 1;
                st.inodes.insert(ino, Inode::default());
                st.dir_op(DirOp::Insert(path.to_path_buf(), Entry::File(ino)));
                ino
            }
            (OpenMode::CreateTruncate, Some(_)) => {
                let ino = st.file(path)?;
                st.inodes.entry(ino).or_default().current.clear();
                ino
            }
            (OpenMode::Read | OpenMode::ReadWrite, _) => st.file(path)?,
        };
        Ok(Arc::new(SimFile {
            state: self.state.clone(),
            hook: self.hook.clone(),
            ino,
            boot: st.boot,
            path: path.to_path_buf(),
            writable: mode != OpenMode::Read,
        }))
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.begin(SimOp::CreateDir, path, true)?;
        st.parent_dir(path)?;
        if st.is_dir(path) || st.current.contains_key(path) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        st.dir_op(DirOp::Insert(path.to_path_buf(), Entry::Dir));
        Ok(())
    }

    fn exists(&self, path: &Path) -> io::Result<bool> {
        let mut st = self.lock();
        st.begin(SimOp::ReadDir, path, false)?;
        Ok(path == Path::new("/") || st.current.contains_key(path))
    }

    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut st = self.lock();
        st.begin(SimOp::ReadDir, dir, false)?;
        if !st.is_dir(dir) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a directory", dir.display()),
            ));
        }
        drop(st);
        Ok(self.list(dir))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.begin(SimOp::Rename, from, true)?;
        st.file(from)?;
        if from.parent() != to.parent() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the simulator renames within one directory only",
            ));
        }
        st.dir_op(DirOp::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.begin(SimOp::Remove, path, true)?;
        st.file(path)?;
        st.dir_op(DirOp::Remove(path.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.hook.run(dir);
        let mut st = self.lock();
        st.begin(SimOp::SyncDir, dir, true)?;
        if !st.is_dir(dir) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not a directory", dir.display()),
            ));
        }
        if st.ignore_syncs {
            return Ok(());
        }
        let (now, later): (Vec<DirOp>, Vec<DirOp>) = std::mem::take(&mut st.pending)
            .into_iter()
            .partition(|op| op.parent() == Some(dir));
        for op in &now {
            op.apply(&mut st.durable);
        }
        st.pending = later;
        Ok(())
    }
}
