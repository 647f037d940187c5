//! The file-system interface the log uses, and its `std::fs` implementation.
//!
//! Every byte the log reads or writes and every directory change goes
//! through [`Io`] and [`IoFile`]; nothing else in the crate touches the file
//! system. The default is [`StdIo`]. Tests use a simulated disk (the `sim`
//! feature) that forgets unsynced data on a simulated power loss.
//!
//! Durability contract the log relies on (what a POSIX file system gives):
//! data written to a file is durable only after [`IoFile::sync_data`] on
//! it; creating, renaming or removing a directory entry is durable only
//! after [`Io::sync_dir`] on the directory holding the entry.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::LogError;
use crate::error::IoContext;
use crate::fsync_stats::FsyncStats;

/// How [`Io::open`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// An existing file, read-only.
    Read,
    /// An existing file, for reading and writing.
    ReadWrite,
    /// A new file for reading and writing; fails if it exists.
    CreateNew,
    /// Creates the file or empties an existing one, for reading and writing.
    CreateTruncate,
}

/// An open file: positional reads and writes, length, fsync.
pub trait IoFile: Send + Sync + fmt::Debug {
    /// Reads exactly `buf.len()` bytes at `pos` (`UnexpectedEof` if the file
    /// is shorter).
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()>;
    /// Reads exactly `len` bytes at `pos` into a new buffer. The real file
    /// system reads into the buffer without zeroing it first.
    fn read_vec_at(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_exact_at(&mut buf, pos)?;
        Ok(buf)
    }
    /// Writes all of `buf` at `pos`, extending the file if needed.
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Writes `head` then `tail` at `pos`, as one write where the file
    /// system allows (`pwritev`): a batch whose header was stamped apart
    /// from its shared bytes is written without being copied.
    fn write_all_parts_at(&self, head: &[u8], tail: &[u8], pos: u64) -> io::Result<()> {
        self.write_all_at(head, pos)?;
        self.write_all_at(tail, pos + head.len() as u64)
    }
    /// Current length of the file.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncates or extends the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes the file's data (and the metadata needed to read it, such as
    /// its length) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
}

/// A file system: opening files and changing directories.
pub trait Io: Send + Sync + fmt::Debug {
    /// Opens `path` as `mode` says.
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn IoFile>>;
    /// Creates one directory; its parent must exist. `AlreadyExists` if it does.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Whether `path` exists (file or directory).
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Names of the entries of directory `dir`.
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Atomically renames `from` to `to` (replacing `to`), within one directory.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file (`NotFound` if missing). Open handles stay usable.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the creations, renames and removals of entries in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The real file system (`std::fs`, `pread`/`pwrite`, `fdatasync`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StdIo;

/// A file position as the system calls take it.
fn file_offset(pos: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(pos)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))
}

/// The byte count a read or write system call returned; `None` when it was
/// interrupted before any transfer (to be tried again).
fn syscall_result(n: isize) -> io::Result<Option<usize>> {
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::Interrupted {
        return Ok(None);
    }
    Err(e)
}

impl IoFile for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], pos: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, pos)
    }
    fn read_vec_at(&self, len: usize, pos: u64) -> io::Result<Vec<u8>> {
        use std::os::fd::AsRawFd;
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        let mut done = 0;
        while done < len {
            let offset = file_offset(pos + done as u64)?;
            // SAFETY: the pointer is `done` bytes into the buffer's
            // allocation of `len` bytes, and pread writes at most the
            // `len - done` bytes that remain of it.
            let n = unsafe {
                libc::pread(
                    self.as_raw_fd(),
                    buf.as_mut_ptr().add(done).cast::<libc::c_void>(),
                    len - done,
                    offset,
                )
            };
            let Some(n) = syscall_result(n)? else {
                continue;
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "failed to fill whole buffer",
                ));
            }
            done += n;
        }
        // SAFETY: pread initialised all `len` bytes above.
        unsafe { buf.set_len(len) };
        Ok(buf)
    }
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, pos)
    }
    fn write_all_parts_at(&self, head: &[u8], tail: &[u8], pos: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (mut head, mut tail, mut pos) = (head, tail, pos);
        while !head.is_empty() {
            let iov = [
                libc::iovec {
                    iov_base: head.as_ptr() as *mut libc::c_void,
                    iov_len: head.len(),
                },
                libc::iovec {
                    iov_base: tail.as_ptr() as *mut libc::c_void,
                    iov_len: tail.len(),
                },
            ];
            let offset = file_offset(pos)?;
            // SAFETY: both iovecs point into live slices of the lengths
            // given, which pwritev only reads.
            let n = unsafe { libc::pwritev(self.as_raw_fd(), iov.as_ptr(), 2, offset) };
            let Some(n) = syscall_result(n)? else {
                continue;
            };
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            pos += n as u64;
            if n < head.len() {
                head = &head[n..];
            } else {
                tail = &tail[n - head.len()..];
                head = &[];
            }
        }
        self.write_all_at(tail, pos)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)
    }
    fn sync_data(&self) -> io::Result<()> {
        std::fs::File::sync_data(self)
    }
}

impl Io for StdIo {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn IoFile>> {
        let mut o = std::fs::OpenOptions::new();
        o.read(true);
        match mode {
            OpenMode::Read => {}
            OpenMode::ReadWrite => {
                o.write(true);
            }
            OpenMode::CreateNew => {
                o.write(true).create_new(true);
            }
            OpenMode::CreateTruncate => {
                o.write(true).create(true).truncate(true);
            }
        }
        Ok(Arc::new(o.open(path)?))
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect()
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }
}

/// Creates `dir` and any missing parents through `io`, syncing the parent
/// of every directory it created ([`Io::sync_dir`]), so the new entries
/// survive a crash: `create_dir_all` that is durable. For any directory a
/// process relies on finding again after a power loss.
pub fn create_dir_all(io: &dyn Io, dir: &Path) -> io::Result<()> {
    let mut sync_dir = |p: &Path| {
        io.sync_dir(p)
            .ctx(|| format!("fsync directory {}", p.display()))
    };
    create_dir_all_with(io, dir, &mut sync_dir).map_err(|e| match e {
        LogError::Io { source, context } => {
            io::Error::new(source.kind(), format!("{context}: {source}"))
        }
        other => io::Error::other(other.to_string()),
    })
}

fn create_dir_all_with(
    io: &dyn Io,
    dir: &Path,
    sync_dir: &mut dyn FnMut(&Path) -> Result<(), LogError>,
) -> Result<(), LogError> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(p) = at {
        if p.as_os_str().is_empty() || io.exists(p).ctx(|| format!("stat {}", p.display()))? {
            break;
        }
        missing.push(p);
        at = p.parent();
    }
    for p in missing.iter().rev() {
        match io.create_dir(p) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            r => r.ctx(|| format!("create directory {}", p.display()))?,
        }
    }
    for p in &missing {
        match p.parent() {
            Some(parent) if parent.as_os_str().is_empty() => sync_dir(Path::new("."))?,
            Some(parent) => sync_dir(parent)?,
            None => {}
        }
    }
    Ok(())
}

/// The log's handle on its file system: the [`Io`] plus the fsync
/// statistics. All helpers attach the path to errors.
#[derive(Debug, Clone)]
pub(crate) struct Disk {
    pub io: Arc<dyn Io>,
    /// Every data or directory fsync is recorded here once it returns.
    pub fsyncs: Arc<FsyncStats>,
}

impl Disk {
    pub fn open(&self, path: &Path, mode: OpenMode) -> Result<Arc<dyn IoFile>, LogError> {
        self.io
            .open(path, mode)
            .ctx(|| format!("open {}", path.display()))
    }

    /// `fdatasync` of `file` (named `path` in errors), counted.
    pub fn sync_file(&self, file: &dyn IoFile, path: &Path) -> Result<(), LogError> {
        let started = Instant::now();
        let synced = file.sync_data();
        self.fsyncs.record(started.elapsed());
        synced.ctx(|| format!("fsync {}", path.display()))
    }

    /// Fsyncs a directory so created, renamed and deleted entries are
    /// durable, counted.
    pub fn sync_dir(&self, dir: &Path) -> Result<(), LogError> {
        let started = Instant::now();
        let synced = self.io.sync_dir(dir);
        self.fsyncs.record(started.elapsed());
        synced.ctx(|| format!("fsync directory {}", dir.display()))
    }

    /// Creates `dir` and any missing parents, fsyncing (counted) the
    /// parent of every directory created so the new entries survive a
    /// crash.
    pub fn create_dir_all(&self, dir: &Path) -> Result<(), LogError> {
        create_dir_all_with(&*self.io, dir, &mut |p| self.sync_dir(p))
    }

    pub fn exists(&self, path: &Path) -> Result<bool, LogError> {
        self.io
            .exists(path)
            .ctx(|| format!("stat {}", path.display()))
    }

    pub fn read_dir(&self, dir: &Path) -> Result<Vec<String>, LogError> {
        self.io
            .read_dir(dir)
            .ctx(|| format!("list {}", dir.display()))
    }

    pub fn rename(&self, from: &Path, to: &Path) -> Result<(), LogError> {
        self.io
            .rename(from, to)
            .ctx(|| format!("rename {} to {}", from.display(), to.display()))
    }

    /// Removes a file; a missing file is fine. Returns whether it existed.
    pub fn remove_if_exists(&self, path: &Path) -> Result<bool, LogError> {
        match self.io.remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).ctx(|| format!("remove {}", path.display())),
        }
    }

    /// Reads a whole file; `None` if it does not exist.
    pub fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, LogError> {
        let file = match self.io.open(path, OpenMode::Read) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx(|| format!("open {}", path.display())),
        };
        let len = file.len().ctx(|| format!("stat {}", path.display()))?;
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, 0)
            .ctx(|| format!("read {}", path.display()))?;
        Ok(Some(buf))
    }

    /// Writes `bytes` to `path` (replacing it) and fsyncs it. The directory
    /// entry is durable only after the caller syncs the directory.
    pub fn write_synced(&self, path: &Path, bytes: &[u8]) -> Result<(), LogError> {
        let f = self.open(path, OpenMode::CreateTruncate)?;
        f.write_all_at(bytes, 0)
            .ctx(|| format!("write {}", path.display()))?;
        self.sync_file(&*f, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vector_read_returns_the_bytes_at_its_position_or_eof() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let file = StdIo.open(&path, OpenMode::Read).unwrap();
        assert_eq!(
            file.read_vec_at(1000, 12_345).unwrap(),
            &bytes[12_345..13_345]
        );
        assert_eq!(file.read_vec_at(100_000, 0).unwrap(), bytes);
        assert!(file.read_vec_at(0, 100_000).unwrap().is_empty());
        let past = file.read_vec_at(10, 99_995).unwrap_err();
        assert_eq!(past.kind(), io::ErrorKind::UnexpectedEof);
    }
}
