//! `streambus consume TOPIC`: prints records, one per line.

use std::io::{self, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use streambus_client::{
    ConsumedRecord, GroupEvent, GroupOptions, OffsetReset, StartFrom, SubscribeOptions,
    TopicPartition,
};

use super::GatewayArgs;

/// Arguments of `streambus consume`.
#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    /// Topic to read
    topic: String,
    /// Start at the oldest stored record (default: only new records)
    #[arg(long, group = "start")]
    from_beginning: bool,
    /// Start at this offset (with --partition, or in every partition)
    #[arg(long, group = "start")]
    offset: Option<i64>,
    /// Start at the first record at or after TIME: RFC 3339
    /// (2024-05-01T12:00:00Z, 2024-05-01T14:00:00+02:00) or a duration ago
    /// (90s, 10m, 1h30m, 2d)
    #[arg(long, group = "start", value_name = "TIME", value_parser = parse_since)]
    since: Option<i64>,
    /// Read only this partition (default: every partition)
    #[arg(short, long, conflicts_with = "group")]
    partition: Option<u32>,
    /// Consume as a member of this consumer group: read the partitions the
    /// group assigns, from its committed offsets (new records only, or
    /// with --from-beginning every stored record, where it has none), and
    /// commit what was printed
    #[arg(short, long, value_name = "GROUP", conflicts_with_all = ["offset", "since"])]
    group: Option<String>,
    /// With --group: commit this often (and when exiting)
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    commit_interval: Duration,
    /// Exit after printing N records
    #[arg(short = 'n', long, value_name = "N")]
    max_messages: Option<u64>,
    /// Output format
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    format: Format,
    #[command(flatten)]
    pub(super) gateway: GatewayArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// The record value, as raw bytes, then a newline (an empty line for a null value)
    Text,
    /// One JSON object per record: topic, partition, offset, timestamp, key, value, headers
    Json,
}

pub(super) async fn run(args: ConsumeArgs) -> anyhow::Result<ExitCode> {
    if let Some(group) = args.group.clone() {
        return run_group(args, group).await;
    }
    let start = match (args.from_beginning, args.offset, args.since) {
        (true, _, _) => StartFrom::Earliest,
        (_, Some(offset), _) => StartFrom::Offset(offset),
        (_, _, Some(ms)) => StartFrom::Timestamp(ms),
        _ => StartFrom::Latest,
    };
    if args.max_messages == Some(0) {
        return Ok(ExitCode::SUCCESS);
    }
    let client = args.gateway.connect().await?;
    let mut records = client
        .subscribe(SubscribeOptions {
            partition: args.partition,
            start,
            ..SubscribeOptions::new(args.topic.clone())
        })
        .await?;
    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
    let mut printed = 0u64;
    let mut reconnects = records.reconnects();
    loop {
        let next = tokio::select! {
            r = records.next() => r,
            Ok(()) = reconnects.changed() => {
                // The gateway went away (a restart, a roll): say so once per
                // reconnection and keep following.
                let why = reconnects.borrow_and_update().last_error.clone().unwrap_or_default();
                eprintln!("streambus consume: reconnecting to the gateway ({why})");
                continue;
            }
        };
        // A subscription only ends with an error, never silently.
        let Some(record) = next else {
            anyhow::bail!("the subscription ended unexpectedly");
        };
        let record = record?;
        match args.format {
            Format::Text => {
                out.write_all(record.value.as_deref().unwrap_or_default())?;
                out.write_all(b"\n")?;
            }
            Format::Json => {
                serde_json::to_writer(&mut out, &JsonRecord::new(&args.topic, &record))?;
                out.write_all(b"\n")?;
            }
        }
        printed += 1;
        if args.max_messages == Some(printed) {
            break;
        }
        if records.buffered_len() == 0 {
            out.flush()?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// `consume TOPIC --group G`: a group member printing its records. It
/// leaves the group (committing what it printed) after `-n` records or on
/// Ctrl-C; killed, the group reassigns its partitions after its session
/// timeout, from the last commit.
async fn run_group(args: ConsumeArgs, group: String) -> anyhow::Result<ExitCode> {
    if args.max_messages == Some(0) {
        return Ok(ExitCode::SUCCESS);
    }
    let client = args.gateway.connect().await?;
    let mut consumer = client
        .group_consumer(GroupOptions {
            reset: if args.from_beginning {
                OffsetReset::Earliest
            } else {
                OffsetReset::Latest
            },
            auto_commit_interval: args.commit_interval.max(Duration::from_millis(1)),
            client_id: "streambus-cli".into(),
            ..GroupOptions::new(group, &[args.topic.as_str()])
        })
        .await?;
    let mut out = io::BufWriter::with_capacity(64 * 1024, io::stdout());
    let mut printed = 0u64;
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let next = tokio::select! {
            n = consumer.next() => n,
            _ = &mut interrupted => break,
        };
        let Some(event) = next else {
            anyhow::bail!("the group consumer ended unexpectedly");
        };
        match event? {
            GroupEvent::Record(tp, record) => {
                match args.format {
                    Format::Text => {
                        out.write_all(record.value.as_deref().unwrap_or_default())?;
                        out.write_all(b"\n")?;
                    }
                    Format::Json => {
                        serde_json::to_writer(&mut out, &JsonRecord::new(&tp.topic, &record))?;
                        out.write_all(b"\n")?;
                    }
                }
                printed += 1;
                // What is printed is flushed before its position can be
                // committed.
                out.flush()?;
                if args.max_messages == Some(printed) {
                    break;
                }
            }
            GroupEvent::Assigned(tps) => eprintln!("streambus consume: assigned {}", list(&tps)),
            GroupEvent::Revoked(tps) => eprintln!("streambus consume: revoked {}", list(&tps)),
            GroupEvent::Lost(tps) => {
                eprintln!(
                    "streambus consume: lost {} (removed from the group; joining again)",
                    list(&tps)
                )
            }
        }
    }
    out.flush()?;
    consumer.close().await?;
    Ok(ExitCode::SUCCESS)
}

fn list(tps: &[TopicPartition]) -> String {
    tps.iter()
        .map(TopicPartition::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A record as `--format json` prints it.
#[derive(Debug, Serialize)]
struct JsonRecord<'a> {
    topic: &'a str,
    partition: u32,
    offset: i64,
    /// Milliseconds since the Unix epoch.
    timestamp: i64,
    key: JsonBytes<'a>,
    value: JsonBytes<'a>,
    headers: Vec<JsonHeader<'a>>,
}

#[derive(Debug, Serialize)]
struct JsonHeader<'a> {
    key: &'a str,
    value: JsonBytes<'a>,
}

/// Bytes in JSON: `null`, a string when they are valid UTF-8, else
/// `{"base64": "..."}` (standard alphabet, padded).
#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
enum JsonBytes<'a> {
    Null,
    Text(&'a str),
    Binary { base64: String },
}

impl<'a> JsonBytes<'a> {
    fn new(bytes: &'a Option<Bytes>) -> JsonBytes<'a> {
        match bytes {
            None => JsonBytes::Null,
            Some(b) => match std::str::from_utf8(b) {
                Ok(s) => JsonBytes::Text(s),
                Err(_) => JsonBytes::Binary {
                    base64: base64::engine::general_purpose::STANDARD.encode(b),
                },
            },
        }
    }
}

impl<'a> JsonRecord<'a> {
    fn new(topic: &'a str, r: &'a ConsumedRecord) -> JsonRecord<'a> {
        JsonRecord {
            topic,
            partition: r.partition,
            offset: r.offset,
            timestamp: r.timestamp_ms,
            key: JsonBytes::new(&r.key),
            value: JsonBytes::new(&r.value),
            headers: r
                .headers
                .iter()
                .map(|h| JsonHeader {
                    key: &h.key,
                    value: JsonBytes::new(&h.value),
                })
                .collect(),
        }
    }
}

/// Parses `--since`: RFC 3339 (with `Z` or a `±HH:MM` offset), a duration
/// ago (`10m`), or milliseconds since the Unix epoch. Returns ms since the
/// epoch.
pub(super) fn parse_since(s: &str) -> Result<i64, String> {
    parse_since_at(s, SystemTime::now())
}

fn parse_since_at(s: &str, now: SystemTime) -> Result<i64, String> {
    let s = s.trim();
    let ms = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    };
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|e| format!("{e}"));
    }
    if let Ok(ago) = humantime::parse_duration(s) {
        return Ok(ms(now.checked_sub(ago).unwrap_or(UNIX_EPOCH)));
    }
    // humantime reads only UTC ("Z"); apply a numeric offset ourselves.
    let (time, offset) = split_utc_offset(s);
    match humantime::parse_rfc3339_weak(time) {
        Ok(t) => Ok(ms(t) - offset.as_millis() as i64 * offset_sign(s)),
        Err(_) => Err(format!(
            "{s:?} is neither an RFC 3339 time (2024-05-01T12:00:00Z) nor a duration (10m, 1h)"
        )),
    }
}

/// Splits `2024-05-01T14:00:00+02:00` into the time and the offset.
fn split_utc_offset(s: &str) -> (&str, Duration) {
    let b = s.as_bytes();
    if b.len() > 6 && matches!(b[b.len() - 6], b'+' | b'-') && b[b.len() - 3] == b':' {
        let (time, offset) = s.split_at(s.len() - 6);
        let hours: u64 = offset[1..3].parse().unwrap_or(0);
        let minutes: u64 = offset[4..6].parse().unwrap_or(0);
        if time.contains(['T', 't', ' ']) {
            return (time, Duration::from_secs(hours * 3600 + minutes * 60));
        }
    }
    (s, Duration::ZERO)
}

fn offset_sign(s: &str) -> i64 {
    match s.as_bytes().get(s.len().wrapping_sub(6)) {
        Some(b'-') => -1,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streambus_client::Header;

    #[test]
    fn since_accepts_rfc3339_durations_and_millis() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            parse_since_at("2024-05-01T12:00:00Z", now),
            Ok(1_714_564_800_000)
        );
        assert_eq!(
            parse_since_at("2024-05-01T14:00:00+02:00", now),
            Ok(1_714_564_800_000)
        );
        assert_eq!(
            parse_since_at("2024-05-01T10:30:00-01:30", now),
            Ok(1_714_564_800_000)
        );
        assert_eq!(parse_since_at("10m", now), Ok(1_000_000_000 - 600_000));
        assert_eq!(parse_since_at("1h30m", now), Ok(1_000_000_000 - 5_400_000));
        assert_eq!(parse_since_at("1714564800000", now), Ok(1_714_564_800_000));
        assert!(parse_since_at("yesterday", now).is_err());
    }

    #[test]
    fn json_shows_utf8_as_text_and_other_bytes_as_base64() {
        let record = ConsumedRecord {
            partition: 2,
            offset: 7,
            timestamp_ms: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from_static(&[0xff, 0x00])),
            headers: vec![Header {
                key: "trace".into(),
                value: Some(Bytes::from_static(b"abc")),
            }],
        };
        let json = serde_json::to_string(&JsonRecord::new("orders", &record)).unwrap();
        assert_eq!(
            json,
            r#"{"topic":"orders","partition":2,"offset":7,"timestamp":1700000000000,"key":null,"value":{"base64":"/wA="},"headers":[{"key":"trace","value":"abc"}]}"#
        );
    }
}
