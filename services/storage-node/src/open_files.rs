//! File descriptors: the process's open-file limit (`RLIMIT_NOFILE`) and
//! how many of them the partition logs may keep open
//! (`storage_node.max_open_files`, enforced by a
//! [`streambus_log::HandleCache`] all logs of the node share).

/// The smallest `storage_node.max_open_files` accepted: a few partitions'
/// active segments and the files a roll, truncation or compaction holds
/// at once.
pub const MIN_MAX_OPEN_FILES: u64 = 16;

/// The derived bound when the soft limit is unlimited.
const UNLIMITED_DERIVED: u64 = 1 << 20;

/// The soft and hard open-file limits of this process (`None`: unlimited).
pub fn limits() -> (Option<u64>, Option<u64>) {
    let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    (l.current, l.maximum)
}

/// Raises the soft open-file limit to the hard limit, as servers
/// conventionally do (the soft default, often 1024, is far too low for a
/// node hosting many partitions), and logs both. Returns the soft limit in
/// force afterwards. Never lowers it; a failure is logged and leaves it.
pub fn raise_limit() -> Option<u64> {
    let (soft, hard) = limits();
    if soft != hard && soft.is_some() {
        let raised = rustix::process::Rlimit {
            current: hard,
            maximum: hard,
        };
        if let Err(e) = rustix::process::setrlimit(rustix::process::Resource::Nofile, raised) {
            tracing::warn!(soft = ?soft, hard = ?hard, error = %e,
                "cannot raise the open-file limit to its hard limit");
        }
    }
    let (now, hard) = limits();
    tracing::info!(
        soft_before = ?soft,
        soft = ?now,
        hard = ?hard,
        "open-file limit (RLIMIT_NOFILE)"
    );
    now
}

/// How many partition-log files the node keeps open: `configured`, or
/// derived from the soft open-file limit `soft` when it is 0 (half of it,
/// at least [`MIN_MAX_OPEN_FILES`]). A configured value at or above the
/// soft limit is refused: the logs alone could exhaust it.
pub fn max_open_files(configured: u64, soft: Option<u64>) -> Result<usize, String> {
    let n = match (configured, soft) {
        (0, None) => UNLIMITED_DERIVED,
        (0, Some(soft)) => (soft / 2).max(MIN_MAX_OPEN_FILES),
        (n, Some(soft)) if n >= soft => {
            return Err(format!(
                "storage_node.max_open_files ({n}) must be below the process's open-file limit ({soft}, soft RLIMIT_NOFILE): sockets and the rest of the process need descriptors too; lower it, set 0 to derive it, or raise the limit (ulimit -n, LimitNOFILE=)"
            ));
        }
        (n, _) => n,
    };
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_from_the_soft_limit_or_checked_against_it() {
        assert_eq!(max_open_files(0, Some(20_000)), Ok(10_000));
        assert_eq!(max_open_files(0, Some(1024)), Ok(512));
        assert_eq!(max_open_files(0, Some(10)), Ok(16));
        assert_eq!(max_open_files(0, None), Ok(1 << 20));
        assert_eq!(max_open_files(100, Some(1024)), Ok(100));
        assert_eq!(max_open_files(100, None), Ok(100));
        let e = max_open_files(1024, Some(1024)).unwrap_err();
        assert!(
            e.contains("storage_node.max_open_files (1024)") && e.contains("1024"),
            "{e}"
        );
    }

    #[test]
    fn a_configured_bound_below_the_minimum_is_refused() {
        let config = |n| crate::StorageNodeConfig {
            max_open_files: n,
            ..Default::default()
        };
        let e = config(8).validate().unwrap_err();
        assert!(
            e.contains("storage_node.max_open_files") && e.contains("at least 16"),
            "{e}"
        );
        config(0).validate().unwrap();
        config(16).validate().unwrap();
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let (before, _) = limits();
        let after = raise_limit();
        match (before, after) {
            (Some(b), Some(a)) => assert!(a >= b),
            (_, None) => {}
            (None, Some(_)) => panic!("an unlimited limit was lowered"),
        }
    }
}
