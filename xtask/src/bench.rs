//! `cargo xtask bench compare`: one workload against StreamBus, Kafka and
//! NATS JetStream back to back on this machine, each system running alone,
//! then a side-by-side table with ratios against Kafka (Markdown + JSON).
//!
//! With no `--workload`, runs the two OMB-style presets: the max-rate run,
//! then the fixed-rate latency run at half of StreamBus's measured peak.

use std::path::{Path, PathBuf};
use std::process::Child;

use crate::peer::{self, Durability, root};
use crate::run as sh;

const USAGE: &str = "usage: cargo xtask bench compare [options]

Runs each workload against StreamBus (release `streambus dev`), Kafka and
NATS JetStream (started with `cargo xtask peer ...`), one system at a time,
and writes <out>/compare.md and <out>/compare.json.

options:
  --workload FILE      a workload file; repeatable. Default: bench/workloads/max-rate.toml,
                       then bench/workloads/fixed-rate-latency.toml at half of
                       StreamBus's max-rate peak
  --duration D         measured phase per system (e.g. 30s); default: the workload's
  --warmup D           warm-up per system; default: the workload's
  --rate N             fixed rate for every given workload (msg/s)
  --durability MODE    fsync (default) or page-cache, for all three systems
  --systems LIST       comma-separated subset of streambus,kafka,nats (default all)
  --out DIR            default target/bench/compare";

struct Options {
    workloads: Vec<PathBuf>,
    duration: Option<String>,
    warmup: Option<String>,
    rate: Option<u64>,
    durability: Durability,
    systems: Vec<String>,
    out: PathBuf,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        workloads: Vec::new(),
        duration: None,
        warmup: None,
        rate: None,
        durability: Durability::Fsync,
        systems: vec!["streambus".into(), "kafka".into(), "nats".into()],
        out: root().join("target/bench/compare"),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--workload" => o.workloads.push(PathBuf::from(value()?)),
            "--duration" => o.duration = Some(value()?),
            "--warmup" => o.warmup = Some(value()?),
            "--rate" => o.rate = Some(value()?.parse().map_err(|e| format!("--rate: {e}"))?),
            "--durability" => o.durability = Durability::parse(&value()?)?,
            "--systems" => {
                o.systems = value()?.split(',').map(str::to_string).collect();
                if let Some(bad) = o
                    .systems
                    .iter()
                    .find(|s| !["streambus", "kafka", "nats"].contains(&s.as_str()))
                {
                    return Err(format!("unknown system {bad:?}"));
                }
            }
            "--out" => o.out = PathBuf::from(value()?),
            _ => return Err(USAGE.to_string()),
        }
    }
    Ok(o)
}

/// `cargo xtask bench ...`.
pub fn main(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("compare") => compare(&args[1..]),
        _ => Err(USAGE.to_string()),
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn compare(args: &[String]) -> Result<(), String> {
    let o = parse(args)?;
    let command = format!("cargo xtask bench compare {}", args.join(" "))
        .trim_end()
        .to_string();
    sh(
        "cargo",
        &[
            "build",
            "--release",
            "--locked",
            "-p",
            "streambus",
            "-p",
            "streambus-bench",
            "--bins",
        ],
    )?;
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    let bench_bin = target_dir().join("release/streambus-bench");

    // (workload file, rate override, derive rate from the first table)
    let mut plan: Vec<(PathBuf, Option<u64>, bool)> = Vec::new();
    if o.workloads.is_empty() {
        let presets = root().join("bench/workloads");
        plan.push((presets.join("max-rate.toml"), o.rate, false));
        plan.push((
            presets.join("fixed-rate-latency.toml"),
            o.rate,
            o.rate.is_none(),
        ));
    } else {
        plan.extend(o.workloads.iter().map(|w| (w.clone(), o.rate, false)));
    }

    let mut sections = Vec::new();
    let mut tables = Vec::new();
    let mut peak: Option<f64> = None;
    for (workload, rate, half_peak) in plan {
        let stem = workload
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "workload".into());
        let rate = if half_peak {
            let p = peak.ok_or("no max-rate result to take half of")?;
            Some(((p / 2.0) / 1000.0).floor().max(1.0) as u64 * 1000)
        } else {
            rate
        };
        let mut reports = Vec::new();
        let mut skipped = Vec::new();
        for system in &o.systems {
            let json = o.out.join(format!("{stem}-{system}.json"));
            let _ = std::fs::remove_file(&json);
            eprintln!("\n=== {stem}: {system} ===");
            match run_system(system, &o, &bench_bin, &workload, rate, &json) {
                Ok(()) => reports.push(json),
                Err(e) => {
                    eprintln!("{system}: skipped: {e}");
                    skipped.push(format!("{system}: {e}"));
                }
            }
        }
        if stem == "max-rate" || peak.is_none() {
            peak = reports
                .iter()
                .find(|p| p.to_string_lossy().ends_with("-streambus.json"))
                .or(reports.first())
                .and_then(|p| read_json(p).ok())
                .and_then(|v| v["results"]["publish_msg_per_s"].as_f64())
                .or(peak);
        }
        if reports.is_empty() {
            sections.push(format!(
                "#### {stem}\n\nNo system ran:\n\n- {}\n",
                skipped.join("\n- ")
            ));
            continue;
        }
        let title = match rate {
            Some(r) => format!("{stem} ({r} msg/s)"),
            None => stem.clone(),
        };
        let md = o.out.join(format!("{stem}.md"));
        let table_json = o.out.join(format!("{stem}.table.json"));
        let mut args: Vec<String> = vec![
            "table".into(),
            "--title".into(),
            title,
            "--markdown".into(),
            md.to_string_lossy().into(),
            "--json".into(),
            table_json.to_string_lossy().into(),
        ];
        args.extend(reports.iter().map(|p| p.to_string_lossy().to_string()));
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        sh(&bench_bin.to_string_lossy(), &arg_refs)?;
        let mut section = std::fs::read_to_string(&md).map_err(|e| e.to_string())?;
        for s in &skipped {
            section.push_str(&format!("\nSkipped {s}\n"));
        }
        sections.push(section);
        let mut t = read_json(&table_json)?;
        t["skipped"] = serde_json::json!(skipped);
        t["rate_msg_per_s"] = serde_json::json!(rate);
        tables.push(t);
    }

    let header = format!(
        "Command: `{command}`\n\nDurability: {} for all three systems. Each system ran alone, \
         started right before its run and stopped after it.\n",
        match o.durability {
            Durability::Fsync => {
                "fsync before acknowledging (StreamBus `fsync.policy=always`, Kafka topic \
                 `flush.messages=1`, NATS `jetstream { sync_interval: always }`)"
            }
            Durability::PageCache => {
                "page cache (StreamBus `fsync.policy=never`, Kafka defaults, NATS default \
                 `sync_interval`)"
            }
        }
    );
    let md = format!("{header}\n{}", sections.join("\n"));
    let md_path = o.out.join("compare.md");
    std::fs::write(&md_path, &md).map_err(|e| e.to_string())?;
    let json = serde_json::json!({
        "command": command,
        "durability": o.durability.as_str(),
        "tables": tables,
    });
    let json_path = o.out.join("compare.json");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&json).expect("serialisable"),
    )
    .map_err(|e| e.to_string())?;
    println!("{md}");
    eprintln!("wrote {} and {}", md_path.display(), json_path.display());
    Ok(())
}

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Starts `system`, runs the workload against it, stops it.
fn run_system(
    system: &str,
    o: &Options,
    bench_bin: &Path,
    workload: &Path,
    rate: Option<u64>,
    json: &Path,
) -> Result<(), String> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--driver".into(),
        system.into(),
        "--workload".into(),
        workload.to_string_lossy().into(),
        "--durability".into(),
        o.durability.as_str().into(),
        "--json".into(),
        json.to_string_lossy().into(),
    ];
    if let Some(d) = &o.duration {
        args.extend(["--duration".into(), d.clone()]);
    }
    if let Some(w) = &o.warmup {
        args.extend(["--warmup".into(), w.clone()]);
    }
    if let Some(r) = rate {
        args.extend(["--rate".into(), r.to_string()]);
    }
    match system {
        "streambus" => {
            let data = o.out.join("streambus-data");
            let _ = std::fs::remove_dir_all(&data);
            let (mut child, gateway) = start_streambus(&data)?;
            args.extend(["--streambus".into(), gateway]);
            args.extend(["--server-pid".into(), child.id().to_string()]);
            let result = run_bench(bench_bin, &args);
            crate::devproc::stop(&mut child);
            let _ = std::fs::remove_dir_all(&data);
            result
        }
        "kafka" => {
            peer::kafka::start()?;
            args.extend(["--kafka".into(), peer::KAFKA_ADDR.into()]);
            if let Some(pid) = peer::server_pid("kafka") {
                args.extend(["--server-pid".into(), pid.to_string()]);
            }
            let result = run_bench(bench_bin, &args);
            peer::kafka::stop()?;
            result
        }
        "nats" => {
            peer::nats::start(o.durability)?;
            args.extend([
                "--nats".into(),
                peer::NATS_ADDR.into(),
                "--nats-monitor".into(),
                peer::NATS_MONITOR_ADDR.into(),
            ]);
            if let Some(pid) = peer::server_pid("nats") {
                args.extend(["--server-pid".into(), pid.to_string()]);
            }
            let result = run_bench(bench_bin, &args);
            peer::nats::stop()?;
            result
        }
        other => Err(format!("unknown system {other}")),
    }
}

fn run_bench(bin: &Path, args: &[String]) -> Result<(), String> {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    sh(&bin.to_string_lossy(), &refs)
}

/// Starts the release `streambus dev` on ephemeral loopback ports with
/// data under `data`; returns it and its gateway address.
fn start_streambus(data: &Path) -> Result<(Child, String), String> {
    let (child, gateway) = crate::devproc::start(&target_dir().join("release/streambus"), data)?;
    eprintln!("streambus: dev running, gateway {gateway}");
    Ok((child, gateway))
}
