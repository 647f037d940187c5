//! What Linux's `/proc` says about a process (resident memory, CPU time,
//! open files and their limit), and raising this process's open-files
//! limit.

use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// `VmRSS`: resident set size.
    pub rss_bytes: u64,
    /// `VmHWM`: the peak resident set size (since start, or since the
    /// last [`Process::reset_peak`]).
    pub peak_rss_bytes: u64,
    /// `RssAnon`: the anonymous part of `VmRSS` (heap and stacks, not
    /// mapped files).
    pub anon_bytes: u64,
}

impl Memory {
    /// Parses the text of `/proc/<pid>/status`; `None` without a `VmRSS`
    /// line (a kernel thread, or not that file).
    pub fn parse(status: &str) -> Option<Memory> {
        Some(Memory {
            rss_bytes: kib_field(status, "VmRSS")?,
            peak_rss_bytes: kib_field(status, "VmHWM").unwrap_or(0),
            anon_bytes: kib_field(status, "RssAnon").unwrap_or(0),
        })
    }
}

/// A `Key:   1234 kB` line of `/proc/<pid>/status`, in bytes.
fn kib_field(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        if k != key {
            return None;
        }
        let kib: u64 = v.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// User plus system CPU time in clock ticks from the text of
/// `/proc/<pid>/stat` (fields 14 and 15; the command name, field 2, may
/// hold spaces and parentheses, so fields are counted after its last `)`).
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The soft limit on open files from the text of `/proc/<pid>/limits`;
/// `None` when unlimited or absent.
pub fn parse_open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A running process, by pid.
#[derive(Debug, Clone)]
pub struct Process {
    pid: u32,
    name: String,
}

impl Process {
    /// The process `pid`; fails when there is none (or `/proc` does not
    /// describe it).
    pub fn open(pid: u32) -> anyhow::Result<Process> {
        let path = PathBuf::from(format!("/proc/{pid}/status"));
        let status = std::fs::read_to_string(&path).with_context(|| {
            format!("no process with pid {pid} ({} unreadable)", path.display())
        })?;
        anyhow::ensure!(
            Memory::parse(&status).is_some(),
            "pid {pid} has no resident memory to measure (no VmRSS in {})",
            path.display()
        );
        let name = status
            .lines()
            .find_map(|l| l.strip_prefix("Name:"))
            .map(|n| n.trim().to_string())
            .unwrap_or_default();
        Ok(Process { pid, name })
    }

    /// This process.
    pub fn current() -> anyhow::Result<Process> {
        Process::open(std::process::id())
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The command name (`Name:` of its status).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn read(&self, file: &str) -> anyhow::Result<String> {
        let path = format!("/proc/{}/{file}", self.pid);
        std::fs::read_to_string(&path)
            .with_context(|| format!("reading {path} (did process {} exit?)", self.pid))
    }

    /// Resident memory now.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        let status = self.read("status")?;
        Memory::parse(&status).with_context(|| format!("no VmRSS for pid {}", self.pid))
    }

    /// User plus system CPU time so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = self.read("stat")?;
        let ticks = parse_cpu_ticks(&stat)
            .with_context(|| format!("unexpected /proc/{}/stat: {stat}", self.pid))?;
        Ok(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
    }

    /// Open file descriptors (sockets included).
    pub fn open_files(&self) -> anyhow::Result<usize> {
        let path = format!("/proc/{}/fd", self.pid);
        Ok(std::fs::read_dir(&path)
            .with_context(|| format!("listing {path}"))?
            .count())
    }

    /// The soft limit on open files; `None` when unlimited.
    pub fn open_files_limit(&self) -> anyhow::Result<Option<u64>> {
        Ok(parse_open_files_limit(&self.read("limits")?))
    }

    /// Resets `VmHWM` to the current `VmRSS` (writes 5 to
    /// `/proc/<pid>/clear_refs`, which only the process's owner may).
    /// Returns whether it worked.
    pub fn reset_peak(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5").is_ok()
    }
}

/// Raises this process's soft limit on open files to its hard limit.
/// Returns the soft limit now in force (`None`: unlimited).
pub fn raise_open_files_limit() -> std::io::Result<Option<u64>> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tstreambus\nUmask:\t0022\nState:\tS (sleeping)\n\
        VmPeak:\t 2101484 kB\nVmSize:\t 2035948 kB\nVmHWM:\t  412880 kB\n\
        VmRSS:\t  398112 kB\nRssAnon:\t  380000 kB\nRssFile:\t   18112 kB\n\
        RssShmem:\t       0 kB\nThreads:\t7\n";

    #[test]
    fn memory_is_read_from_status_in_bytes() {
        assert_eq!(
            Memory::parse(STATUS),
            Some(Memory {
                rss_bytes: 398_112 * 1024,
                peak_rss_bytes: 412_880 * 1024,
                anon_bytes: 380_000 * 1024,
            })
        );
    }

    #[test]
    fn status_without_vmrss_has_no_memory() {
        assert_eq!(Memory::parse("Name:\tkthreadd\nState:\tS\n"), None);
        assert_eq!(Memory::parse("VmRSS:\tlots\n"), None);
        // A field whose name only starts with VmRSS is not it.
        assert_eq!(Memory::parse("VmRSSX:\t1 kB\n"), None);
    }

    #[test]
    fn cpu_ticks_are_counted_after_the_command_name() {
        let stat = "4242 (tokio (worker) 1) S 1 4242 4242 0 -1 4194560 9000 0 0 0 \
                    1500 250 0 0 20 0 7 0 100 2000000 99000 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(1750));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1"), None);
    }

    #[test]
    fn the_open_files_limit_is_the_soft_column() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files_limit(unlimited), None);
    }

    #[test]
    fn this_process_can_be_measured() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let me = Process::current().unwrap();
        let m = me.memory().unwrap();
        assert!(m.rss_bytes > 0 && m.peak_rss_bytes >= m.rss_bytes, "{m:?}");
        assert!(me.cpu_seconds().unwrap() >= 0.0);
        assert!(me.open_files().unwrap() >= 3);
    }

    #[test]
    fn a_missing_pid_is_an_error_naming_it() {
        // pid_max is at most 2^22 on Linux.
        let err = Process::open(u32::MAX).unwrap_err();
        assert!(err.to_string().contains(&u32::MAX.to_string()), "{err}");
    }
}
