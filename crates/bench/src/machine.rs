//! What the run ran on, for the report.

use serde::Serialize;

/// The machine: cores, memory, CPU model, kernel.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical cores this process may use.
    pub cores: usize,
    /// Total memory in bytes (`/proc/meminfo`), 0 if unknown.
    pub memory_bytes: u64,
    /// CPU model (`/proc/cpuinfo`).
    pub cpu_model: String,
    /// Kernel release.
    pub kernel: String,
    /// Operating system (`/etc/os-release`).
    pub os: String,
}

impl Machine {
    /// Reads the machine's description; unknown fields stay empty.
    pub fn detect() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let field = |text: &str, key: &str| -> String {
            text.lines()
                .find_map(|l| {
                    let (k, v) = l.split_once([':', '='])?;
                    (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
                })
                .unwrap_or_default()
        };
        let meminfo = read("/proc/meminfo");
        let memory_kib: u64 = field(&meminfo, "MemTotal")
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap_or(0);
        Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_bytes: memory_kib * 1024,
            cpu_model: field(&read("/proc/cpuinfo"), "model name"),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            os: field(&read("/etc/os-release"), "PRETTY_NAME"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_cores_and_memory_here() {
        let m = Machine::detect();
        assert!(m.cores >= 1);
        if cfg!(target_os = "linux") {
            assert!(m.memory_bytes > 0, "{m:?}");
        }
    }
}
