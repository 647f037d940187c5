//! The bounded file-handle cache (`streambus_log::HandleCache`): file
//! contents stay right through evictions and reopens, the number of
//! descriptors of the inner file system stays within the capacity, handles
//! of removed and replaced files keep their file, a dirty handle is synced
//! before it is closed and a failure of that sync reaches its next fsync,
//! and concurrent users wait for a descriptor rather than exceed the bound.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use streambus_log::io::{Io, IoFile, OpenMode, StdIo};
use streambus_log::sim::{SimIo, SimOp};
use streambus_log::{HandleCache, HandleStats};

/// An [`Io`] over another that counts live descriptors (and the most at
/// once) and data syncs.
#[derive(Debug, Default)]
struct Counts {
    live: AtomicUsize,
    max_live: AtomicUsize,
    syncs: AtomicUsize,
    opens: AtomicUsize,
}

#[derive(Debug, Clone)]
struct Probe {
    inner: Arc<dyn Io>,
    counts: Arc<Counts>,
}

#[derive(Debug)]
struct ProbeFile {
    inner: Arc<dyn IoFile>,
    counts: Arc<Counts>,
}

impl Drop for ProbeFile {
    fn drop(&mut self) {
        self.counts.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl IoFile for ProbeFile {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, pos)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, pos)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.counts.syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync_data()
    }
}

impl Io for Probe {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn IoFile>> {
        let f = self.inner.open(path, mode)?;
        self.counts.opens.fetch_add(1, Ordering::SeqCst);
        let live = self.counts.live.fetch_add(1, Ordering::SeqCst) + 1;
        self.counts.max_live.fetch_max(live, Ordering::SeqCst);
        Ok(Arc::new(ProbeFile {
            inner: f,
            counts: self.counts.clone(),
        }))
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.inner.exists(path)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.read_dir(dir)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
}

fn probe(inner: Arc<dyn Io>) -> (Probe, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    (
        Probe {
            inner,
            counts: counts.clone(),
        },
        counts,
    )
}

fn read_all(f: &dyn IoFile) -> Vec<u8> {
    let mut buf = vec![0u8; f.len().unwrap() as usize];
    f.read_exact_at(&mut buf, 0).unwrap();
    buf
}

fn sim_dir(sim: &SimIo) -> PathBuf {
    let dir = PathBuf::from("/d");
    sim.create_dir(&dir).unwrap();
    sim.sync_dir(Path::new("/")).unwrap();
    dir
}

/// Many files through a cache of `capacity`, used round-robin: every
/// operation is right after evictions and the inner file system never has
/// more than `capacity` descriptors open.
fn many_files(inner: Arc<dyn Io>, dir: &Path, capacity: usize) {
    let (probe, counts) = probe(inner);
    let cache = HandleCache::new(Arc::new(probe), capacity);
    let n = 24;
    let files: Vec<Arc<dyn IoFile>> = (0..n)
        .map(|i| {
            cache
                .open(&dir.join(format!("f{i}")), OpenMode::CreateNew)
                .unwrap()
        })
        .collect();
    let mut expect: Vec<Vec<u8>> = vec![Vec::new(); n];
    for round in 0..5u8 {
        for (i, f) in files.iter().enumerate() {
            let chunk = vec![round.wrapping_mul(31).wrapping_add(i as u8); 10 + i];
            f.write_all_at(&chunk, expect[i].len() as u64).unwrap();
            expect[i].extend_from_slice(&chunk);
            if round == 2 && i % 3 == 0 {
                // Cut the last chunk off again.
                let keep = expect[i].len() - chunk.len();
                f.set_len(keep as u64).unwrap();
                expect[i].truncate(keep);
            }
            if i % 4 == 0 {
                f.sync_data().unwrap();
            }
        }
        for (i, f) in files.iter().enumerate().rev() {
            assert_eq!(f.len().unwrap(), expect[i].len() as u64, "file {i}");
            assert_eq!(read_all(&**f), expect[i], "file {i}");
        }
    }
    // The same files opened again (read-only and read-write) agree.
    for (i, e) in expect.iter().enumerate() {
        let f = cache
            .open(&dir.join(format!("f{i}")), OpenMode::Read)
            .unwrap();
        assert_eq!(&read_all(&*f), e);
    }
    let stats = cache.stats();
    assert!(
        counts.max_live.load(Ordering::SeqCst) <= capacity,
        "{} descriptors open at once, capacity {capacity}",
        counts.max_live.load(Ordering::SeqCst)
    );
    assert!(stats.peak_open <= capacity, "{stats:?}");
    assert_eq!(stats.over_capacity, 0, "{stats:?}");
    assert!(stats.evictions > 100, "{stats:?}");
    assert!(stats.reopens > 100, "{stats:?}");
    assert_eq!(stats.open, counts.live.load(Ordering::SeqCst));
    assert_eq!(stats.handles, n);
    drop(files);
    let stats = cache.stats();
    assert_eq!((stats.handles, stats.open), (0, 0));
    assert_eq!(counts.live.load(Ordering::SeqCst), 0);
}

#[test]
fn many_files_through_one_descriptor_on_the_real_disk() {
    let tmp = tempfile::tempdir().unwrap();
    many_files(Arc::new(StdIo), tmp.path(), 1);
}

#[test]
fn many_files_through_two_descriptors_on_the_simulated_disk() {
    let sim = SimIo::new(1);
    let dir = sim_dir(&sim);
    many_files(Arc::new(sim), &dir, 2);
}

#[test]
fn open_errors_and_modes_happen_at_open_time() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = HandleCache::new(Arc::new(StdIo), 1);
    let a = tmp.path().join("a");
    assert_eq!(
        cache.open(&a, OpenMode::Read).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );
    let f = cache.open(&a, OpenMode::CreateNew).unwrap();
    f.write_all_at(b"hello", 0).unwrap();
    assert_eq!(
        cache.open(&a, OpenMode::CreateNew).unwrap_err().kind(),
        io::ErrorKind::AlreadyExists
    );
    assert!(cache.stats().open <= 1, "a failed open holds nothing");
    // A read-only handle reopened after eviction is still read-only.
    let r = cache.open(&a, OpenMode::Read).unwrap();
    let _other = cache
        .open(&tmp.path().join("b"), OpenMode::CreateNew)
        .unwrap();
    assert!(r.write_all_at(b"x", 0).is_err());
    assert_eq!(read_all(&*r), b"hello");
    // Truncating happens once, at open; reopening never truncates.
    let t = cache.open(&a, OpenMode::CreateTruncate).unwrap();
    assert_eq!(t.len().unwrap(), 0);
    t.write_all_at(b"new", 0).unwrap();
    let _other2 = cache
        .open(&tmp.path().join("c"), OpenMode::CreateNew)
        .unwrap();
    assert_eq!(read_all(&*t), b"new");
    assert_eq!(read_all(&*f), b"new", "same file");
    assert!(cache.stats().reopens >= 2);
}

#[test]
fn removed_files_stay_readable_through_their_handles() {
    let tmp = tempfile::tempdir().unwrap();
    let (probe, counts) = probe(Arc::new(StdIo));
    let cache = HandleCache::new(Arc::new(probe), 1);
    let a = tmp.path().join("a");
    let fa = cache.open(&a, OpenMode::CreateNew).unwrap();
    fa.write_all_at(b"old contents", 0).unwrap();
    fa.sync_data().unwrap();
    // Evicted.
    let fb = cache
        .open(&tmp.path().join("b"), OpenMode::CreateNew)
        .unwrap();
    fb.write_all_at(b"b", 0).unwrap();
    assert_eq!(cache.stats().open, 1);
    cache.remove_file(&a).unwrap();
    assert_eq!(cache.stats().pinned, 1);
    // A new file under the same name is another file.
    let fa2 = cache.open(&a, OpenMode::CreateNew).unwrap();
    fa2.write_all_at(b"new", 0).unwrap();
    for _ in 0..3 {
        // However much else is opened, the pinned handle keeps its file.
        let _c = cache
            .open(&tmp.path().join("c"), OpenMode::CreateTruncate)
            .unwrap();
        assert_eq!(read_all(&*fa), b"old contents");
        assert_eq!(read_all(&*fa2), b"new");
        assert_eq!(read_all(&*fb), b"b");
    }
    let stats = cache.stats();
    assert!(
        stats.over_capacity > 0,
        "pinned past the capacity: {stats:?}"
    );
    drop(fa);
    assert_eq!(cache.stats().pinned, 0);
    drop((fa2, fb));
    assert_eq!(counts.live.load(Ordering::SeqCst), 0);
    // Removing a missing file is `NotFound`, as without the cache.
    assert_eq!(
        cache
            .remove_file(&tmp.path().join("missing"))
            .unwrap_err()
            .kind(),
        io::ErrorKind::NotFound
    );
}

/// A roll: the new segment is created as `.rolling`, renamed to `.log` over
/// nothing; a compaction: a `.cleaned` file renamed over the old segment
/// while a reader still holds the old one. Both with evictions at every
/// step.
#[test]
fn renamed_files_follow_their_handles_and_replaced_ones_stay_readable() {
    for on_sim in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let sim = SimIo::new(7);
        let (inner, dir): (Arc<dyn Io>, PathBuf) = if on_sim {
            let dir = sim_dir(&sim);
            (Arc::new(sim.clone()), dir)
        } else {
            (Arc::new(StdIo), tmp.path().to_path_buf())
        };
        let cache = HandleCache::new(inner, 1);
        let evict = || {
            cache
                .open(&dir.join("other"), OpenMode::CreateTruncate)
                .unwrap()
        };
        let rolling = dir.join("1.log.rolling");
        let log = dir.join("1.log");
        let seg = cache.open(&rolling, OpenMode::CreateNew).unwrap();
        seg.write_all_at(b"first ", 0).unwrap();
        drop(evict());
        cache.rename(&rolling, &log).unwrap();
        assert_eq!(cache.stats().pinned, 0, "nothing replaced, nothing pinned");
        drop(evict());
        // Reopened under its new name.
        seg.write_all_at(b"second", 6).unwrap();
        drop(evict());
        assert_eq!(read_all(&*seg), b"first second");
        let by_name = cache.open(&log, OpenMode::Read).unwrap();
        assert_eq!(read_all(&*by_name), b"first second");
        drop(by_name);

        // Compaction: a reader holds the old segment while the cleaned one
        // replaces it.
        let cleaned = dir.join("1.log.cleaned");
        let out = cache.open(&cleaned, OpenMode::CreateTruncate).unwrap();
        out.write_all_at(b"compacted", 0).unwrap();
        out.sync_data().unwrap();
        drop(evict());
        cache.rename(&cleaned, &log).unwrap();
        assert_eq!(cache.stats().pinned, 1, "the replaced segment is pinned");
        for _ in 0..2 {
            drop(evict());
            assert_eq!(read_all(&*seg), b"first second", "old segment");
            assert_eq!(read_all(&*out), b"compacted", "new segment");
        }
        let by_name = cache.open(&log, OpenMode::Read).unwrap();
        assert_eq!(read_all(&*by_name), b"compacted");
        drop(seg);
        assert_eq!(cache.stats().pinned, 0);
        // The renamed handle is an ordinary evictable one.
        drop(by_name);
        drop(evict());
        assert!(cache.stats().open <= 1);
        out.write_all_at(b"!", 9).unwrap();
        drop(evict());
        assert_eq!(read_all(&*out), b"compacted!");
    }
}

#[test]
fn a_dirty_handle_is_synced_before_it_is_closed() {
    for seed in 0..16 {
        let sim = SimIo::new(seed).with_sector_size(4);
        let dir = sim_dir(&sim);
        let (probe, counts) = probe(Arc::new(sim.clone()));
        let cache = HandleCache::new(Arc::new(probe), 1);
        let a = cache.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
        sim.sync_dir(&dir).unwrap();
        a.write_all_at(b"written, never synced by its owner", 0)
            .unwrap();
        assert_eq!(counts.syncs.load(Ordering::SeqCst), 0);
        // Evicting `a` syncs it.
        let b = cache.open(&dir.join("b"), OpenMode::CreateNew).unwrap();
        assert_eq!(counts.syncs.load(Ordering::SeqCst), 1);
        let stats = cache.stats();
        assert_eq!((stats.evictions, stats.eviction_syncs), (1, 1));
        // A clean handle is closed without a sync.
        b.sync_data().unwrap();
        let _a_again = read_all(&*a);
        assert_eq!(counts.syncs.load(Ordering::SeqCst), 2);
        assert_eq!(cache.stats().eviction_syncs, 1);
        drop((a, b));
        sim.power_loss();
        sim.restart();
        assert_eq!(
            sim.contents(&dir.join("a")).unwrap(),
            b"written, never synced by its owner",
            "seed {seed}"
        );
    }
}

#[test]
fn a_failed_eviction_sync_fails_the_next_fsync_of_that_handle() {
    let sim = SimIo::new(3);
    let dir = sim_dir(&sim);
    let cache = HandleCache::new(Arc::new(sim.clone()), 1);
    let a = cache.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
    a.write_all_at(b"data", 0).unwrap();
    sim.fail_next(SimOp::SyncData, "/d/a");
    let b = cache.open(&dir.join("b"), OpenMode::CreateNew).unwrap();
    b.write_all_at(b"b", 0).unwrap();
    assert_eq!(cache.stats().eviction_sync_failures, 1);
    // Reads and writes go on; every fsync of `a` fails from now on.
    assert_eq!(read_all(&*a), b"data");
    a.write_all_at(b"more", 4).unwrap();
    for _ in 0..2 {
        let e = a.sync_data().unwrap_err();
        assert!(e.to_string().contains("evicted"), "{e}");
    }
    // Other handles are unaffected.
    b.sync_data().unwrap();
    let a2 = cache.open(&dir.join("a"), OpenMode::ReadWrite).unwrap();
    a2.sync_data().unwrap();
}

#[test]
fn a_failed_reopen_is_an_error_of_the_operation() {
    let sim = SimIo::new(5);
    let dir = sim_dir(&sim);
    let cache = HandleCache::new(Arc::new(sim.clone()), 1);
    let a = cache.open(&dir.join("a"), OpenMode::CreateNew).unwrap();
    a.write_all_at(b"a", 0).unwrap();
    let _b = cache.open(&dir.join("b"), OpenMode::CreateNew).unwrap();
    sim.fail_next(SimOp::Open, "/d/a");
    let e = a.write_all_at(b"x", 1).unwrap_err();
    assert!(e.to_string().contains("reopen /d/a"), "{e}");
    assert!(cache.stats().open <= 1);
    a.write_all_at(b"x", 1).unwrap();
    assert_eq!(read_all(&*a), b"ax");
}

#[test]
fn concurrent_users_stay_correct_and_bounded() {
    let sim = SimIo::new(11);
    let dir = sim_dir(&sim);
    let (probe, counts) = probe(Arc::new(sim));
    let cache = HandleCache::new(Arc::new(probe), 2);
    let threads = 4;
    std::thread::scope(|s| {
        for t in 0..threads {
            let cache = cache.clone();
            let dir = dir.clone();
            s.spawn(move || {
                let files: Vec<_> = (0..6)
                    .map(|i| {
                        cache
                            .open(&dir.join(format!("t{t}-{i}")), OpenMode::CreateNew)
                            .unwrap()
                    })
                    .collect();
                let mut lens = [0u64; 6];
                for round in 0..200u64 {
                    let i = (round as usize * 7 + t) % 6;
                    let f = &files[i];
                    f.write_all_at(&round.to_le_bytes(), lens[i]).unwrap();
                    lens[i] += 8;
                    let mut buf = [0u8; 8];
                    f.read_exact_at(&mut buf, lens[i] - 8).unwrap();
                    assert_eq!(u64::from_le_bytes(buf), round);
                    if round % 5 == 0 {
                        f.sync_data().unwrap();
                    }
                    assert_eq!(f.len().unwrap(), lens[i]);
                }
            });
        }
    });
    let stats: HandleStats = cache.stats();
    // Descriptors in use cannot be evicted: opening waits for one to be
    // free instead of going over the capacity.
    let max = counts.max_live.load(Ordering::SeqCst);
    assert!(max <= 2, "{max} open at once: {stats:?}");
    assert_eq!(stats.over_capacity, 0, "{stats:?}");
    assert_eq!((stats.open, stats.handles), (0, 0));
    assert_eq!(counts.live.load(Ordering::SeqCst), 0);
}
