//! A progress bar on a terminal for long runs, with the interval lines
//! printed above it. Off the terminal (CI, pipes, files) only the lines.

use std::io::{IsTerminal, Write};
use std::time::Duration;

/// Runs at least this long get a bar.
const LONG_RUN: Duration = Duration::from_secs(60);

/// The run's progress.
#[derive(Debug)]
pub struct Progress {
    total: Duration,
    bar: bool,
    quiet: bool,
    drawn: bool,
}

impl Progress {
    /// A progress display for a run of `total`.
    pub fn new(total: Duration, quiet: bool) -> Progress {
        Progress {
            total,
            bar: !quiet && total >= LONG_RUN && std::io::stderr().is_terminal(),
            quiet,
            drawn: false,
        }
    }

    /// Prints a line above the bar.
    pub fn println(&mut self, line: &str) {
        if self.quiet {
            return;
        }
        self.clear();
        println!("{line}");
    }

    /// Redraws the bar at `elapsed`.
    pub fn tick(&mut self, elapsed: Duration) {
        if !self.bar {
            return;
        }
        let text = render(elapsed, self.total, 40);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{text}");
        let _ = err.flush();
        self.drawn = true;
    }

    /// Removes the bar.
    pub fn finish(&mut self) {
        self.clear();
    }

    fn clear(&mut self) {
        if self.drawn {
            let _ = std::io::stdout().flush();
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

/// `[#####-----]  50%  30s / 60s`.
pub fn render(elapsed: Duration, total: Duration, width: usize) -> String {
    let fraction = (elapsed.as_secs_f64() / total.as_secs_f64().max(1e-9)).clamp(0.0, 1.0);
    let filled = (fraction * width as f64).round() as usize;
    format!(
        "[{}{}] {:>3.0}%  {}s / {}s",
        "#".repeat(filled),
        "-".repeat(width - filled),
        fraction * 100.0,
        elapsed.as_secs(),
        total.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_with_elapsed_time() {
        let s = render(Duration::from_secs(30), Duration::from_secs(60), 10);
        assert_eq!(s, "[#####-----]  50%  30s / 60s");
        let s = render(Duration::from_secs(90), Duration::from_secs(60), 4);
        assert_eq!(s, "[####] 100%  90s / 60s");
    }
}
