//! `streambus produce TOPIC`: one record per line of stdin.

use std::io::{self, BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use bytes::Bytes;
use streambus_client::{Compression, DeliveryFuture, Header, ProducerConfig, Record, v1};
use tokio::sync::mpsc;

use super::{GatewayArgs, parse_key_value};

/// Lines per message from the stdin reader thread.
const CHUNK_LINES: usize = 1024;
/// Failed records reported one by one before the summary.
const MAX_REPORTED_FAILURES: u64 = 10;

/// Arguments of `streambus produce`.
#[derive(Debug, clap::Args)]
pub struct ProduceArgs {
    /// Topic to write to
    topic: String,
    /// Key of every record (default: none; records spread over partitions)
    #[arg(short, long, conflicts_with = "key_separator")]
    key: Option<String>,
    /// Split each line at the first SEP into key and value (a line without
    /// SEP gets no key)
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// A header on every record (repeatable)
    #[arg(short = 'H', long = "header", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    headers: Vec<(String, String)>,
    /// Write every record to this partition
    #[arg(short, long)]
    partition: Option<u32>,
    /// What the gateway waits for before a record counts as written
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    acks: AcksArg,
    /// Compression of record batches
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    compression: CompressionArg,
    /// Turn the idempotent producer off (on by default: a batch retried
    /// through a failure is written exactly once)
    #[arg(long)]
    no_idempotence: bool,
    /// Print "partition P offset O" for each record, and a summary on stderr
    #[arg(short, long)]
    verbose: bool,
    #[command(flatten)]
    pub(super) gateway: GatewayArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AcksArg {
    /// Every in-sync replica has the record
    All,
    /// The partition leader has the record
    Leader,
    /// Do not wait (offsets are printed as -1)
    None,
}

/// Kafka's codecs (the topic's `compression.type` may still recompress).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CompressionArg {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

pub(super) async fn run(args: ProduceArgs) -> anyhow::Result<ExitCode> {
    let client = args.gateway.connect().await?;
    let producer = client.producer(ProducerConfig {
        acks: match args.acks {
            AcksArg::All => v1::Acks::All,
            AcksArg::Leader => v1::Acks::Leader,
            AcksArg::None => v1::Acks::None,
        },
        compression: match args.compression {
            CompressionArg::None => Compression::None,
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Snappy => Compression::Snappy,
            CompressionArg::Lz4 => Compression::Lz4,
            CompressionArg::Zstd => Compression::Zstd,
        },
        idempotence: !args.no_idempotence,
        ..ProducerConfig::default()
    });
    let headers: Vec<Header> = args
        .headers
        .iter()
        .map(|(k, v)| Header {
            key: k.clone(),
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
        })
        .collect();
    let key = args
        .key
        .as_ref()
        .map(|k| Bytes::copy_from_slice(k.as_bytes()));

    let (lines_tx, mut lines) = mpsc::channel(8);
    std::thread::spawn(move || read_lines(io::stdin().lock(), lines_tx));
    let (deliveries_tx, deliveries) = mpsc::channel(64 * 1024);
    let failed = Arc::new(AtomicBool::new(false));
    let reporter = tokio::spawn(report(deliveries, args.verbose, failed.clone()));

    let mut line_no = 0u64;
    let mut error: Option<anyhow::Error> = None;
    'read: while let Some(chunk) = lines.recv().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                error = Some(anyhow::Error::new(e).context("cannot read stdin"));
                break;
            }
        };
        for line in chunk {
            // Stop at the first failed record rather than sending the rest.
            if failed.load(Ordering::Relaxed) {
                break 'read;
            }
            line_no += 1;
            let (key, value) = split_line(line, key.as_ref(), args.key_separator.as_deref());
            let record = Record {
                key,
                value: Some(value),
                headers: headers.clone(),
                timestamp_ms: 0,
            };
            match producer.send(&args.topic, record, args.partition).await {
                Ok(delivery) => {
                    if deliveries_tx.send((line_no, delivery)).await.is_err() {
                        break 'read;
                    }
                }
                Err(e) => {
                    error = Some(e.into());
                    break 'read;
                }
            }
        }
    }
    drop(lines);
    drop(deliveries_tx);
    producer.close().await;
    let stats = reporter.await.context("the delivery reporter failed")??;
    if let Some(e) = error {
        return Err(e);
    }
    if stats.failed > 0 {
        eprintln!(
            "error: {} of {} records failed",
            stats.failed,
            stats.failed + stats.written
        );
        return Ok(ExitCode::FAILURE);
    }
    if args.verbose {
        eprintln!("produced {} records to {}", stats.written, args.topic);
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads lines (without `\n` or `\r\n`) in chunks until EOF or until the
/// receiver is gone.
fn read_lines(mut input: impl BufRead, tx: mpsc::Sender<io::Result<Vec<Bytes>>>) {
    let mut chunk = Vec::with_capacity(CHUNK_LINES);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match input.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                }
                chunk.push(Bytes::copy_from_slice(&buf));
                if chunk.len() == CHUNK_LINES
                    && tx
                        .blocking_send(Ok(std::mem::replace(
                            &mut chunk,
                            Vec::with_capacity(CHUNK_LINES),
                        )))
                        .is_err()
                {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
    if !chunk.is_empty() {
        let _ = tx.blocking_send(Ok(chunk));
    }
}

/// The record key and value of one line.
fn split_line(line: Bytes, key: Option<&Bytes>, separator: Option<&str>) -> (Option<Bytes>, Bytes) {
    if let Some(sep) = separator.filter(|s| !s.is_empty()) {
        let sep = sep.as_bytes();
        if let Some(at) = line.windows(sep.len()).position(|w| w == sep) {
            return (Some(line.slice(..at)), line.slice(at + sep.len()..));
        }
        return (None, line);
    }
    (key.cloned(), line)
}

#[derive(Debug, Default)]
struct Stats {
    written: u64,
    failed: u64,
}

/// What makes two failures "the same": the reason and what it names up to
/// the first figure (a `DISK_FULL` message carries the free bytes, which
/// change from record to record).
fn fold_key(error: &str) -> &str {
    let end = error
        .find(|c: char| c.is_ascii_digit())
        .map_or(error.len(), |i| {
            // Keep a node or partition number right after a word.
            let rest = &error[i..];
            i + rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len())
        });
    let second = error[end..].find(|c: char| c.is_ascii_digit());
    match second {
        Some(j) => &error[..end + j],
        None => error,
    }
}

/// Failure lines with repeats folded: a failure is printed when its error
/// differs from the one before; identical ones that follow are counted and
/// summarized in one line (a full disk fails every record the same way).
#[derive(Default)]
struct Failures {
    /// The last error printed, and the lines since that repeated it.
    last: Option<String>,
    repeats: u64,
    repeat_lines: (u64, u64),
    /// Distinct errors printed.
    printed: u64,
}

impl Failures {
    /// The lines to print for a failure of input line `line`.
    fn record(&mut self, line: u64, error: String) -> Vec<String> {
        if self.last.as_deref().map(fold_key) == Some(fold_key(&error)) {
            if self.repeats == 0 {
                self.repeat_lines.0 = line;
            }
            self.repeats += 1;
            self.repeat_lines.1 = line;
            return Vec::new();
        }
        let mut out: Vec<String> = self.flush().into_iter().collect();
        if self.printed < MAX_REPORTED_FAILURES {
            out.push(format!("error: record on line {line}: {error}"));
            self.printed += 1;
            self.last = Some(error);
        } else {
            // Not printed: later repeats of it are not summarized as "the
            // same error" either.
            self.last = None;
        }
        out
    }

    /// The summary of repeats not printed yet.
    fn flush(&mut self) -> Option<String> {
        let n = std::mem::take(&mut self.repeats);
        (n > 0).then(|| {
            let (from, to) = self.repeat_lines;
            let lines = if from == to {
                format!("line {from}")
            } else {
                format!("lines {from} to {to}")
            };
            format!(
                "error: the same error for {n} more record{} ({lines})",
                if n == 1 { "" } else { "s" }
            )
        })
    }
}

/// Awaits deliveries in input order, printing offsets (with `-v`) and
/// failures.
async fn report(
    mut deliveries: mpsc::Receiver<(u64, DeliveryFuture)>,
    verbose: bool,
    failed: Arc<AtomicBool>,
) -> io::Result<Stats> {
    let mut stats = Stats::default();
    let mut out = io::BufWriter::new(io::stdout());
    let mut failures = Failures::default();
    while let Some((line, delivery)) = deliveries.recv().await {
        match delivery.await {
            Ok(written) => {
                stats.written += 1;
                if verbose {
                    writeln!(
                        out,
                        "partition {} offset {}",
                        written.partition, written.offset
                    )?;
                }
            }
            Err(e) => {
                stats.failed += 1;
                failed.store(true, Ordering::Relaxed);
                for l in failures.record(line, e.to_string()) {
                    eprintln!("{l}");
                }
            }
        }
        if deliveries.is_empty() {
            out.flush()?;
        }
    }
    out.flush()?;
    if let Some(l) = failures.flush() {
        eprintln!("{l}");
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_identical_failures_are_summarized() {
        let mut f = Failures::default();
        let disk = "DISK_FULL: storage node 1: no space".to_string();
        assert_eq!(
            f.record(3, disk.clone()),
            ["error: record on line 3: DISK_FULL: storage node 1: no space"]
        );
        for line in 4..=9 {
            assert!(f.record(line, disk.clone()).is_empty());
        }
        assert_eq!(
            f.record(10, "TIMEOUT: slow".into()),
            [
                "error: the same error for 6 more records (lines 4 to 9)",
                "error: record on line 10: TIMEOUT: slow",
            ]
        );
        assert!(f.record(11, "TIMEOUT: slow".into()).is_empty());
        assert_eq!(
            f.flush().as_deref(),
            Some("error: the same error for 1 more record (line 11)")
        );
        // The free bytes in a DISK_FULL message differ record by record.
        let full = |free: u64| format!("DISK_FULL: storage node 1: {free} bytes free of 9");
        assert_eq!(f.record(12, full(500)).len(), 1);
        assert!(f.record(13, full(400)).is_empty());
        assert!(f.record(14, full(300)).is_empty());
        assert_eq!(
            f.record(15, "DISK_FULL: storage node 2: 5 bytes free of 9".into())
                .len(),
            2,
            "another node is another error"
        );
        assert!(f.record(16, "TIMEOUT: slow".into()).len() == 1);
        assert_eq!(f.flush(), None);
    }

    #[test]
    fn lines_lose_their_line_endings() {
        let (tx, mut rx) = mpsc::channel(8);
        read_lines(&b"a\nb\r\n\nlast"[..], tx);
        let chunk = rx.try_recv().unwrap().unwrap();
        assert_eq!(chunk, vec!["a", "b", "", "last"]);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn many_lines_come_in_chunks() {
        let input = "x\n".repeat(CHUNK_LINES + 5);
        let (tx, mut rx) = mpsc::channel(8);
        read_lines(input.as_bytes(), tx);
        assert_eq!(rx.try_recv().unwrap().unwrap().len(), CHUNK_LINES);
        assert_eq!(rx.try_recv().unwrap().unwrap().len(), 5);
    }

    #[test]
    fn key_separator_splits_at_the_first_occurrence() {
        let (k, v) = split_line(Bytes::from("user-1::a::b"), None, Some("::"));
        assert_eq!(k.as_deref(), Some(&b"user-1"[..]));
        assert_eq!(v, "a::b");
        let (k, v) = split_line(Bytes::from("no key"), None, Some("::"));
        assert_eq!(k, None);
        assert_eq!(v, "no key");
        let fixed = Bytes::from("k");
        let (k, _) = split_line(Bytes::from("v"), Some(&fixed), None);
        assert_eq!(k, Some(fixed));
    }
}
