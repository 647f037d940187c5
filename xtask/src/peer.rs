//! `cargo xtask peer kafka|nats [install|start|stop|status]`: the systems
//! StreamBus is compared with, installed from package registries and run
//! on this machine, bound to 127.0.0.1 only, with data under
//! `target/peers/<name>/data`.
//!
//! - Kafka 4.x in KRaft mode (one combined broker + controller): the jars
//!   come from Maven Central through a generated `pom.xml` and
//!   `mvn dependency:copy-dependencies`, and run on the machine's Java 17+.
//! - NATS server with JetStream: Debian's `nats-server` when its version
//!   has `sync_interval` (2.10+), else `go install` of a pinned release
//!   through the Go module proxy (Debian bookworm ships 2.9.10, which
//!   cannot fsync every write).
//!
//! Every step is idempotent: install skips what is there, start returns
//! when the server already runs (restarting NATS if its fsync mode
//! differs), stop is a no-op when nothing runs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::run as sh;

/// The Kafka release run as the peer.
pub const KAFKA_VERSION: &str = "4.4.0";
/// log4j matching that release's log4j-core, for broker logs.
const LOG4J_VERSION: &str = "2.25.5";
/// The NATS release installed with `go install` when Debian's is too old.
pub const NATS_VERSION: &str = "v2.15.2";

/// Kafka's client listener.
pub const KAFKA_ADDR: &str = "127.0.0.1:9092";
const KAFKA_CONTROLLER_ADDR: &str = "127.0.0.1:9093";
/// NATS client listener.
pub const NATS_ADDR: &str = "127.0.0.1:4222";
/// NATS HTTP monitoring.
pub const NATS_MONITOR_ADDR: &str = "127.0.0.1:8222";

const USAGE: &str = "usage: cargo xtask peer <kafka|nats> [install|start|stop|status] [--durability fsync|page-cache] [--brokers 1|3]
       cargo xtask peer iggy install --src DIR
       cargo xtask peer iggy [start|stop|status]
       cargo xtask peer iggy bench [--durability fsync|page-cache] [--total 3GB]
       cargo xtask peer jaeger [install|start|stop|status]

  install   fetch the server (Maven Central / apt / Go module proxy) if missing
  start     install, then start it in the background if not running (default)
  stop      stop the server this command started
  status    say whether it runs

Kafka's durability is a topic setting (the benchmark sets flush.messages=1
per topic), so its broker is the same in both modes. `--brokers 3` starts
three combined broker+controller nodes (a KRaft quorum of three) on
127.0.0.1:9092, :9094 and :9096 (controllers on :9093, :9095, :9097),
for replication factor 3; `stop` stops whichever ran. NATS's fsync is a
server setting: `--durability fsync` (default) runs it with
`sync_interval: always`, `page-cache` with NATS's default.

Apache Iggy is built from a checkout of its repository (`--src`; no
registry serves its server); `bench` runs its own `iggy-bench` with one
producer over 16 partitions (1 KiB messages, batches of 250) and prints
the CPU seconds per million messages of the client and of the server.
Its durability is a topic setting (`--enforce-fsync`).";

/// Whether acknowledged writes are fsynced (NATS server setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// fsync every write.
    Fsync,
    /// page cache, background sync.
    PageCache,
}

impl Durability {
    /// Parses `fsync` / `page-cache`.
    pub fn parse(s: &str) -> Result<Durability, String> {
        match s {
            "fsync" => Ok(Durability::Fsync),
            "page-cache" => Ok(Durability::PageCache),
            _ => Err(format!("durability {s:?}: use fsync or page-cache")),
        }
    }

    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Fsync => "fsync",
            Durability::PageCache => "page-cache",
        }
    }
}

/// `cargo xtask peer ...`.
pub fn main(args: &[String]) -> Result<(), String> {
    let mut durability = Durability::Fsync;
    let mut brokers = 1u32;
    let mut src: Option<PathBuf> = None;
    let mut total = "3GB".to_string();
    let mut words = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--durability" => {
                durability = Durability::parse(it.next().ok_or("--durability needs a value")?)?
            }
            "--brokers" => {
                brokers = match it.next().map(String::as_str) {
                    Some("1") => 1,
                    Some("3") => 3,
                    _ => return Err("--brokers takes 1 or 3".into()),
                }
            }
            "--src" => src = Some(PathBuf::from(it.next().ok_or("--src needs a directory")?)),
            "--total" => total = it.next().ok_or("--total needs a size")?.clone(),
            other => words.push(other),
        }
    }
    match (
        words.first().copied(),
        words.get(1).copied().unwrap_or("start"),
    ) {
        (Some("kafka"), "install") => kafka::install().map(|_| ()),
        (Some("kafka"), "start") => kafka::start_brokers(brokers),
        (Some("kafka"), "stop") => kafka::stop(),
        (Some("kafka"), "status") => {
            status("kafka", KAFKA_ADDR);
            Ok(())
        }
        (Some("nats"), "install") => nats::install().map(|_| ()),
        (Some("nats"), "start") => nats::start(durability),
        (Some("nats"), "stop") => nats::stop(),
        (Some("nats"), "status") => {
            status("nats", NATS_ADDR);
            if listening(NATS_ADDR) {
                eprintln!("nats: {}", nats::running_mode_text());
            }
            Ok(())
        }
        (Some("iggy"), "install") => match &src {
            Some(src) => crate::iggy::install(src).map(|_| ()),
            None => {
                Err("iggy install needs --src DIR (a checkout of github.com/apache/iggy)".into())
            }
        },
        (Some("iggy"), "start") => crate::iggy::start(),
        (Some("iggy"), "stop") => crate::iggy::stop(),
        (Some("iggy"), "status") => {
            crate::iggy::status();
            Ok(())
        }
        (Some("iggy"), "bench") => crate::iggy::bench(durability, &total),
        (Some("jaeger"), "install") => crate::observability::install_jaeger().map(|_| ()),
        (Some("jaeger"), "start") => crate::observability::start_jaeger(),
        (Some("jaeger"), "stop") => crate::observability::stop_jaeger(),
        (Some("jaeger"), "status") => {
            crate::observability::status_jaeger();
            Ok(())
        }
        _ => Err(USAGE.to_string()),
    }
}

/// The pid of the peer server `name` (`kafka`, `nats`; a single Kafka
/// broker) started by xtask, while it runs.
pub(crate) fn server_pid(name: &str) -> Option<u32> {
    read_pid(&peer_dir(name).join(format!("{name}.pid")))
}

pub(crate) fn status(name: &str, addr: &str) {
    let pid = server_pid(name);
    match (listening(addr), pid) {
        (true, Some(pid)) => eprintln!("{name}: running at {addr} (pid {pid})"),
        (true, None) => eprintln!("{name}: something listens at {addr}, not started by xtask"),
        (false, _) => eprintln!("{name}: not running ({addr} closed)"),
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `target/peers/<name>`, under the workspace (not CARGO_TARGET_DIR: the
/// peers' installs and data are shared by every build directory).
pub fn peer_dir(name: &str) -> PathBuf {
    root().join("target/peers").join(name)
}

/// Whether something accepts TCP connections at `addr`.
pub fn listening(addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().expect("static addresses parse");
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `apt-get install -y <packages>` (root on these machines), with one
/// `apt-get update` first.
pub(crate) fn apt_install(packages: &[&str]) -> Result<(), String> {
    sh("apt-get", &["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend_from_slice(packages);
    sh("apt-get", &args)
}

pub(crate) fn read_pid(path: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(path).ok()?.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

/// Starts `cmd` in its own process group, output to `log`, pid to
/// `pid_file`, and waits until `addr` accepts connections.
pub(crate) fn spawn_server(
    name: &str,
    cmd: Command,
    log: &Path,
    pid_file: &Path,
    addr: &str,
    timeout: Duration,
) -> Result<(), String> {
    let mut child = spawn_detached(name, cmd, log, pid_file)?;
    let deadline = Instant::now() + timeout;
    loop {
        if listening(addr) {
            eprintln!(
                "{name}: running at {addr} (pid {}, log {})",
                child.id(),
                log.display()
            );
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let _ = std::fs::remove_file(pid_file);
            return Err(format!(
                "{name} exited ({status}) before listening; the end of {}:\n{}",
                log.display(),
                tail(log, 20)
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(pid_file);
            return Err(format!(
                "{name} did not listen at {addr} within {timeout:?}; the end of {}:\n{}",
                log.display(),
                tail(log, 20)
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Starts `cmd` in its own process group, output to `log`, pid to
/// `pid_file`, without waiting for it.
pub(crate) fn spawn_detached(
    name: &str,
    mut cmd: Command,
    log: &Path,
    pid_file: &Path,
) -> Result<std::process::Child, String> {
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    std::fs::write(pid_file, child.id().to_string()).map_err(|e| e.to_string())?;
    Ok(child)
}

/// Stops the server whose pid is in `pid_file`: SIGTERM, then SIGKILL
/// after `grace`.
pub(crate) fn stop_server(name: &str, pid_file: &Path, grace: Duration) -> Result<(), String> {
    let Some(pid) = read_pid(pid_file) else {
        eprintln!(
            "{name}: not running (no live pid in {})",
            pid_file.display()
        );
        let _ = std::fs::remove_file(pid_file);
        return Ok(());
    };
    let pid_s = pid.to_string();
    let _ = Command::new("kill").args(["-TERM", &pid_s]).status();
    let deadline = Instant::now() + grace;
    while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
        if Instant::now() > deadline {
            eprintln!("{name}: still running after {grace:?}, sending SIGKILL");
            let _ = Command::new("kill").args(["-KILL", &pid_s]).status();
            std::thread::sleep(Duration::from_millis(500));
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = std::fs::remove_file(pid_file);
    eprintln!("{name}: stopped (pid {pid})");
    Ok(())
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')))
        .unwrap_or(true)
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A plain HTTP/1.0 GET on loopback; the body.
fn http_get(addr: &str, path: &str) -> Option<String> {
    let addr: SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

pub mod kafka {
    //! Apache Kafka in KRaft mode from Maven Central jars.

    use super::*;

    fn dir() -> PathBuf {
        peer_dir("kafka")
    }

    /// The generated Maven project that pulls the broker and its
    /// dependencies.
    fn pom() -> String {
        format!(
            r#"<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <!-- generated by `cargo xtask peer kafka install`: the Kafka broker's jars -->
  <groupId>streambus.peer</groupId>
  <artifactId>kafka-server</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{KAFKA_VERSION}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-storage</artifactId><version>{KAFKA_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{LOG4J_VERSION}</version></dependency>
  </dependencies>
</project>
"#
        )
    }

    /// Broker `id`'s client and controller addresses (1: the defaults).
    pub fn addrs(id: u32) -> (String, String) {
        let base = 9092 + 2 * (id - 1);
        (
            format!("127.0.0.1:{base}"),
            format!("127.0.0.1:{}", base + 1),
        )
    }

    /// The settings of broker `id` of `n`: a combined broker + controller
    /// on loopback; with one node a standalone (dynamic) quorum, with
    /// three a static quorum of the three; internal topics replicated
    /// `n` times; no automatic topics. Durability is per topic (the
    /// benchmark sets `flush.messages=1` in fsync mode), so this file is
    /// the same for both modes.
    fn server_properties(data: &Path, id: u32, n: u32) -> String {
        let (client, controller) = addrs(id);
        let quorum = if n == 1 {
            format!("controller.quorum.bootstrap.servers={KAFKA_CONTROLLER_ADDR}")
        } else {
            let voters: Vec<String> = (1..=n).map(|i| format!("{i}@{}", addrs(i).1)).collect();
            format!("controller.quorum.voters={}", voters.join(","))
        };
        let min_isr = n.min(2);
        format!(
            "# generated by `cargo xtask peer kafka`
process.roles=broker,controller
node.id={id}
{quorum}
listeners=PLAINTEXT://{client},CONTROLLER://{controller}
advertised.listeners=PLAINTEXT://{client},CONTROLLER://{controller}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={}
num.partitions=1
default.replication.factor={n}
offsets.topic.replication.factor={n}
share.coordinator.state.topic.replication.factor={n}
share.coordinator.state.topic.min.isr={min_isr}
transaction.state.log.replication.factor={n}
transaction.state.log.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.segment.bytes=1073741824
",
            data.display()
        )
    }

    const LOG4J2: &str = "# generated by `cargo xtask peer kafka`
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.target = SYSTEM_ERR
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = info
logger.server.name = org.apache.kafka.server
logger.server.level = info
";

    /// Installs Java and Maven if missing, then the broker's jars; returns
    /// the jar directory.
    pub fn install() -> Result<PathBuf, String> {
        let dir = dir();
        let lib = dir.join("lib");
        let stamp = dir.join(".installed");
        if std::fs::read_to_string(&stamp).ok().as_deref() == Some(KAFKA_VERSION) {
            return Ok(lib);
        }
        if !have("java") || !have("mvn") {
            apt_install(&["openjdk-17-jre-headless", "maven"])?;
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let pom_file = dir.join("pom.xml");
        std::fs::write(&pom_file, pom()).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(&lib);
        sh(
            "mvn",
            &[
                "-q",
                "-B",
                "-f",
                &pom_file.to_string_lossy(),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                &format!("-DoutputDirectory={}", lib.display()),
            ],
        )?;
        std::fs::write(&stamp, KAFKA_VERSION).map_err(|e| e.to_string())?;
        eprintln!("kafka: {KAFKA_VERSION} installed in {}", lib.display());
        Ok(lib)
    }

    fn java(lib: &Path) -> Command {
        let mut cmd = Command::new("java");
        // kafka-server-start.sh's defaults.
        cmd.args([
            "-Xms1G",
            "-Xmx1G",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true",
        ])
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            dir().join("log4j2.properties").display()
        ))
        .arg("-cp")
        .arg(format!("{}/*", lib.display()));
        cmd
    }

    fn output(mut cmd: Command) -> Result<String, String> {
        let out = cmd.output().map_err(|e| format!("cannot run java: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{:?} failed: {}",
                cmd,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Installs, formats the KRaft storage once, and starts one broker.
    pub fn start() -> Result<(), String> {
        start_brokers(1)
    }

    /// Where broker `id` of `n` keeps its files: the single broker's are
    /// at the top of the peer directory, three brokers' in `broker-<id>/`.
    fn broker_dir(id: u32, n: u32) -> PathBuf {
        if n == 1 {
            dir()
        } else {
            dir().join(format!("broker-{id}"))
        }
    }

    /// Installs, formats the KRaft storage once, and starts `n` (1 or 3)
    /// brokers.
    pub fn start_brokers(n: u32) -> Result<(), String> {
        if listening(KAFKA_ADDR) {
            eprintln!("kafka: already running at {KAFKA_ADDR}");
            return Ok(());
        }
        let lib = install()?;
        std::fs::write(dir().join("log4j2.properties"), LOG4J2).map_err(|e| e.to_string())?;
        let cluster_id_file = dir().join(format!("cluster-id-{n}"));
        let cluster_id = match std::fs::read_to_string(&cluster_id_file) {
            Ok(id) => id.trim().to_string(),
            Err(_) => {
                let mut id = java(&lib);
                id.args(["kafka.tools.StorageTool", "random-uuid"]);
                let out = output(id)?;
                let id = out
                    .lines()
                    .map(str::trim)
                    .rfind(|l| !l.is_empty())
                    .unwrap_or_default()
                    .to_string();
                std::fs::write(&cluster_id_file, &id).map_err(|e| e.to_string())?;
                id
            }
        };
        let mut started = Vec::new();
        for id in 1..=n {
            let bdir = broker_dir(id, n);
            let data = bdir.join("data");
            let props = bdir.join("server.properties");
            std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
            std::fs::write(&props, server_properties(&data, id, n)).map_err(|e| e.to_string())?;
            if !data.join("meta.properties").exists() {
                let mut format = java(&lib);
                format
                    .args(["kafka.tools.StorageTool", "format", "-t", &cluster_id, "-c"])
                    .arg(&props);
                if n == 1 {
                    format.arg("--standalone");
                }
                output(format)?;
                eprintln!("kafka: formatted {} (cluster {cluster_id})", data.display());
            }
            let mut cmd = java(&lib);
            cmd.arg("kafka.Kafka").arg(&props);
            if n == 1 {
                return spawn_server(
                    "kafka",
                    cmd,
                    &bdir.join("kafka.log"),
                    &bdir.join("kafka.pid"),
                    KAFKA_ADDR,
                    Duration::from_secs(120),
                );
            }
            // A quorum of three elects its controller only once a majority
            // runs: start them all, then wait for every client listener.
            let name = format!("kafka-{id}");
            let pid = bdir.join("kafka.pid");
            if let Err(e) = spawn_detached(&name, cmd, &bdir.join("kafka.log"), &pid) {
                stop_brokers(&started);
                return Err(e);
            }
            started.push((name, pid));
        }
        for id in 1..=n {
            let (client, _) = addrs(id);
            let deadline = Instant::now() + Duration::from_secs(120);
            while !listening(&client) {
                if Instant::now() > deadline {
                    stop_brokers(&started);
                    let log = broker_dir(id, n).join("kafka.log");
                    return Err(format!(
                        "kafka broker {id} did not listen at {client} within 120 s; the end of {}:\n{}",
                        log.display(),
                        tail(&log, 20)
                    ));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            eprintln!("kafka-{id}: running at {client}");
        }
        Ok(())
    }

    fn stop_brokers(started: &[(String, PathBuf)]) {
        for (name, pid) in started {
            let _ = stop_server(name, pid, Duration::from_secs(30));
        }
    }

    /// Stops the brokers started by [`start_brokers`].
    pub fn stop() -> Result<(), String> {
        stop_server("kafka", &dir().join("kafka.pid"), Duration::from_secs(60))?;
        for id in 1..=3 {
            let pid = broker_dir(id, 3).join("kafka.pid");
            if pid.exists() {
                stop_server(&format!("kafka-{id}"), &pid, Duration::from_secs(60))?;
            }
        }
        Ok(())
    }
}

pub mod nats {
    //! NATS server with JetStream.

    use super::*;

    fn dir() -> PathBuf {
        peer_dir("nats")
    }

    /// `(major, minor)` of `nats-server --version` ("nats-server: v2.9.10").
    fn version(binary: &Path) -> Option<(u32, u32)> {
        let out = Command::new(binary).arg("--version").output().ok()?;
        parse_version(&String::from_utf8_lossy(&out.stdout))
    }

    /// Parses "nats-server: v2.9.10" or "2.9.10-1+b3".
    pub fn parse_version(text: &str) -> Option<(u32, u32)> {
        text.split_whitespace().find_map(|token| {
            let mut parts = token.trim_start_matches('v').split(['.', '-', '+']);
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        })
    }

    /// The version `apt-get install nats-server` would install.
    fn apt_candidate() -> Option<(u32, u32)> {
        let out = Command::new("apt-cache")
            .args(["policy", "nats-server"])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate:"))
            .and_then(parse_version)
    }

    /// `sync_interval: always` arrived in 2.10.
    fn has_sync_always(v: (u32, u32)) -> bool {
        v >= (2, 10)
    }

    /// Finds or installs a `nats-server` with `sync_interval`; returns it.
    pub fn install() -> Result<PathBuf, String> {
        let local = dir().join("bin/nats-server");
        if local.exists() && version(&local).is_some_and(has_sync_always) {
            return Ok(local);
        }
        let system = PathBuf::from("/usr/bin/nats-server");
        if !system.exists() {
            // Debian's package first; it is used if recent enough.
            sh("apt-get", &["update", "-q"])?;
            if apt_candidate().is_some_and(has_sync_always) {
                apt_install(&["nats-server"])?;
            }
        }
        if system.exists() && version(&system).is_some_and(has_sync_always) {
            return Ok(system);
        }
        eprintln!(
            "nats: Debian's nats-server is missing or older than 2.10 (no `sync_interval: always`); \
             building {NATS_VERSION} with `go install`"
        );
        if !have("go") {
            return Err(
                "nats: `go` is needed to build nats-server (Debian's is too old); install Go 1.24+"
                    .into(),
            );
        }
        let bin = dir().join("bin");
        std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
        let status = Command::new("go")
            .args([
                "install",
                &format!("github.com/nats-io/nats-server/v2@{NATS_VERSION}"),
            ])
            .env("GOBIN", &bin)
            .env("CGO_ENABLED", "0")
            .status()
            .map_err(|e| format!("cannot run go: {e}"))?;
        if !status.success() {
            return Err(format!(
                "go install of nats-server {NATS_VERSION} failed: {status}"
            ));
        }
        Ok(local)
    }

    /// The server config for `durability`.
    fn config(data: &Path, durability: Durability) -> String {
        let sync = match durability {
            // fsync after every write before the PubAck.
            Durability::Fsync => "  sync_interval: always\n",
            // NATS's default: the OS writes back, JetStream syncs every 2 min.
            Durability::PageCache => "",
        };
        let (host, port) = NATS_ADDR.split_once(':').expect("host:port");
        format!(
            "# generated by `cargo xtask peer nats --durability {}`
host: {host}
port: {port}
http: {NATS_MONITOR_ADDR}
max_payload: 8MB
jetstream {{
  store_dir: \"{}\"
  max_file_store: 64GB
  max_memory_store: 1GB
{sync}}}
",
            durability.as_str(),
            data.display()
        )
    }

    /// Whether the running server fsyncs every write, from `/varz`.
    fn running_mode() -> Option<Durability> {
        let varz = http_get(NATS_MONITOR_ADDR, "/varz")?;
        let compact: String = varz.chars().filter(|c| !c.is_whitespace()).collect();
        if !compact.contains("\"jetstream\":{") {
            return None;
        }
        Some(if compact.contains("\"sync_always\":true") {
            Durability::Fsync
        } else {
            Durability::PageCache
        })
    }

    /// For `status`.
    pub fn running_mode_text() -> String {
        match running_mode() {
            Some(d) => format!("JetStream durability {}", d.as_str()),
            None => "JetStream state unknown (monitoring endpoint unreadable)".into(),
        }
    }

    /// Installs and starts the server in `durability` mode (restarting it
    /// if it runs in the other mode and was started here).
    pub fn start(durability: Durability) -> Result<(), String> {
        if listening(NATS_ADDR) {
            match running_mode() {
                Some(d) if d == durability => {
                    eprintln!(
                        "nats: already running at {NATS_ADDR} ({})",
                        durability.as_str()
                    );
                    return Ok(());
                }
                _ if read_pid(&dir().join("nats.pid")).is_some() => stop()?,
                _ => {
                    return Err(format!(
                        "nats: a server not started by xtask listens at {NATS_ADDR} in another mode; stop it first"
                    ));
                }
            }
        }
        let binary = install()?;
        let dir = dir();
        let data = dir.join("data");
        std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
        let conf = dir.join("nats.conf");
        std::fs::write(&conf, config(&data, durability)).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&binary);
        cmd.arg("-c").arg(&conf);
        spawn_server(
            "nats",
            cmd,
            &dir.join("nats.log"),
            &dir.join("nats.pid"),
            NATS_ADDR,
            Duration::from_secs(30),
        )?;
        match running_mode() {
            Some(d) if d == durability => Ok(()),
            other => Err(format!(
                "nats: started, but /varz reports durability {:?}, not {}",
                other.map(Durability::as_str),
                durability.as_str()
            )),
        }
    }

    /// Stops the server started by [`start`].
    pub fn stop() -> Result<(), String> {
        stop_server("nats", &dir().join("nats.pid"), Duration::from_secs(30))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn versions_parse_from_the_binary_and_from_apt() {
            assert_eq!(parse_version("nats-server: v2.9.10\n"), Some((2, 9)));
            assert_eq!(parse_version("2.9.10-1+b3"), Some((2, 9)));
            assert_eq!(parse_version("nats-server: v2.15.2"), Some((2, 15)));
            assert!(!has_sync_always((2, 9)));
            assert!(has_sync_always((2, 10)));
        }

        #[test]
        fn fsync_mode_sets_sync_always_and_page_cache_leaves_the_default() {
            let data = Path::new("/tmp/x");
            assert!(config(data, Durability::Fsync).contains("sync_interval: always"));
            assert!(!config(data, Durability::PageCache).contains("sync_interval"));
            assert!(config(data, Durability::Fsync).contains("host: 127.0.0.1"));
        }
    }
}
