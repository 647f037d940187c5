//! `streambus-bench`: an OpenMessaging-Benchmark-style load generator that
//! runs the same workload, with the same measurement code, against
//! StreamBus, Apache Kafka and NATS JetStream.
//!
//! - [`workload`]: what to run (TOML presets in `bench/workloads/`).
//! - [`driver`]: one small adapter per system (create topic, send, receive).
//! - [`runner`]: pacing, timing and counting, the same for every driver.
//! - [`rate`]: fixed-rate schedules and the publish delay they expose
//!   (coordinated omission).
//! - [`stats`]: HdrHistograms per task, merged sample by sample.
//! - [`report`]: interval lines, the final summary and the JSON report.
//! - [`table`]: side-by-side tables with ratios against Kafka.
//! - [`subscribers`]: a StreamBus server's resident memory against the
//!   number of concurrent (and stalled) subscribers, with [`procfs`] and
//!   [`scrape`] reading the server's memory and budgets.
//!
//! See `docs/bench-tool.md`.

pub mod driver;
pub mod groups;
pub mod machine;
pub mod procfs;
pub mod progress;
pub mod rate;
pub mod report;
pub mod runner;
pub mod scrape;
pub mod stats;
pub mod subscribers;
pub mod table;
pub mod workload;
