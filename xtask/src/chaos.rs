//! `cargo xtask chaos [--seed N] [--duration 10m]`: the randomized fault
//! test (`crates/streambus/tests/chaos.rs`) with a chosen seed and length.

use std::process::Command;

/// Parses `90`, `90s`, `10m` or `1h` into seconds.
fn seconds(s: &str) -> Result<u64, String> {
    let (number, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("--duration {s:?}: expected e.g. 90s, 10m or 1h"))?;
    match unit {
        "s" => Ok(n),
        "m" => Ok(n * 60),
        "h" => Ok(n * 3600),
        _ => Err(format!("--duration {s:?}: the unit must be s, m or h")),
    }
}

pub fn main(args: &[String]) -> Result<(), String> {
    let mut seed = None;
    let mut duration = "5m".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--seed" => seed = Some(value()?),
            "--duration" => duration = value()?,
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: chaos [--seed N] [--duration 10m]"
                ));
            }
        }
    }
    let secs = seconds(&duration)?;
    if let Some(s) = &seed {
        s.parse::<u64>()
            .map_err(|_| format!("--seed {s:?}: expected a number"))?;
    }
    let mut cmd = Command::new("cargo");
    cmd.args([
        "test",
        "--release",
        "-p",
        "streambus",
        "--test",
        "chaos",
        "--",
        "--nocapture",
    ])
    .env("STREAMBUS_CHAOS_SECONDS", secs.to_string());
    if let Some(s) = seed {
        cmd.env("STREAMBUS_CHAOS_SEED", s);
    }
    eprintln!(
        "$ STREAMBUS_CHAOS_SECONDS={secs} cargo test --release -p streambus --test chaos -- --nocapture"
    );
    let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "the chaos run failed ({status}); its output names the seed"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_seconds_minutes_and_hours() {
        assert_eq!(seconds("90").unwrap(), 90);
        assert_eq!(seconds("90s").unwrap(), 90);
        assert_eq!(seconds("10m").unwrap(), 600);
        assert_eq!(seconds("1h").unwrap(), 3600);
        assert!(seconds("10d").is_err());
        assert!(seconds("m").is_err());
    }
}
