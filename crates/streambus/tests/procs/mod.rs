//! Real `streambus` processes on 127.0.0.1 for fault tests: a controller
//! group, three storage nodes and gateways, each with its own data
//! directory and log file, restartable with the same command line.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One role process, restartable with the same command line.
pub struct Proc {
    pub name: String,
    args: Vec<String>,
    pub http: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    pub fn new(dir: &Path, name: &str, role: &str, settings: &[String]) -> Proc {
        let http = format!("127.0.0.1:{}", free_port());
        let mut args = vec![role.to_string()];
        for s in settings.iter().cloned().chain([
            format!("http.listen_addr={http}"),
            "log.level=info,openraft=warn".into(),
        ]) {
            args.push("--set".into());
            args.push(s);
        }
        Proc {
            name: name.to_string(),
            args,
            http,
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    /// The value the process was given for `key` with `--set`.
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .filter_map(|a| a.strip_prefix(key)?.strip_prefix('='))
            .next_back()
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_streambus"))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("streambus binary starts");
        self.child = Some(child);
    }

    /// SIGTERM, then waits for the process to drain and exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for `/readyz` to answer 200.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if http_status(&self.http, "/readyz") == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        panic!("{} not ready within 60 s; log:\n{log}", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `cond` holds, checking every 200 ms; fails naming `what`
/// after 20 s.
/// An SDK client of the gateway at `gateway` calling with bearer `token`.
pub async fn connect_with_token(gateway: &str, token: &str) -> streambus_client::Client {
    streambus_client::Client::connect_with(
        gateway,
        streambus_client::ConnectOptions {
            tls: None,
            token: Some(token.into()),
        },
    )
    .await
    .unwrap()
}

pub fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "not {what} after 20 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of `metric` (the exact series, labels included) in a scrape
/// of `http`'s `/metrics`; 0 when absent.
pub fn scrape(http: &str, metric: &str) -> f64 {
    let mut s = TcpStream::connect(http).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {http}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix(metric)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

pub fn http_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub controllers: BTreeMap<u64, Proc>,
    pub nodes: BTreeMap<u64, Proc>,
    pub gateways: Vec<Proc>,
    pub gateway_addrs: Vec<String>,
}

impl Cluster {
    /// `controllers` controllers (one Raft group), three storage nodes and
    /// `gateways` gateways, all ready.
    pub fn start(controllers: u64, gateways: usize) -> Cluster {
        Cluster::start_with(controllers, gateways, &[])
    }

    /// [`Cluster::start`], the storage nodes also given `node_settings`.
    pub fn start_with(controllers: u64, gateways: usize, node_settings: &[String]) -> Cluster {
        Cluster::start_configured(controllers, gateways, node_settings, &[])
    }

    /// [`Cluster::start_with`], every process also given `common`.
    pub fn start_configured(
        controllers: u64,
        gateways: usize,
        node_settings: &[String],
        common: &[String],
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        let addrs: Vec<(u64, String)> = (1..=controllers)
            .map(|id| (id, format!("127.0.0.1:{}", free_port())))
            .collect();
        let peers: Vec<String> = addrs.iter().map(|(id, a)| format!("{id}={a}")).collect();
        let all: Vec<&str> = addrs.iter().map(|(_, a)| a.as_str()).collect();
        let all = all.join(",");
        let mut cs = BTreeMap::new();
        for (id, addr) in &addrs {
            let mut settings = vec![
                format!("controller.node_id={id}"),
                format!("controller.listen_addr={addr}"),
                format!(
                    "controller.data_dir={}",
                    path.join(format!("controller-{id}")).display()
                ),
                "controller.node_lease_ms=2000".into(),
            ];
            if controllers > 1 {
                settings.push(format!("controller.peers={}", peers.join(",")));
            }
            settings.extend(common.iter().cloned());
            let mut c = Proc::new(path, &format!("controller-{id}"), "controller", &settings);
            c.start();
            cs.insert(*id, c);
        }
        for c in cs.values() {
            c.wait_ready();
        }
        let mut nodes = BTreeMap::new();
        for id in 1..=3u64 {
            let mut n = Proc::new(
                path,
                &format!("storage-node-{id}"),
                "storage-node",
                &[
                    format!("storage_node.node_id={id}"),
                    format!("storage_node.listen_addr=127.0.0.1:{}", free_port()),
                    format!(
                        "storage_node.data_dir={}",
                        path.join(format!("storage-{id}")).display()
                    ),
                    format!("storage_node.controllers={all}"),
                    "storage_node.heartbeat_interval_ms=200".into(),
                    "storage_node.replica_lag_time_max_ms=3000".into(),
                    "storage_node.replica_fetch_wait_ms=200".into(),
                ]
                .into_iter()
                .chain(node_settings.iter().cloned())
                .chain(common.iter().cloned())
                .collect::<Vec<String>>(),
            );
            n.start();
            nodes.insert(id, n);
        }
        for n in nodes.values() {
            n.wait_ready();
        }
        let mut gws = Vec::new();
        let mut gateway_addrs = Vec::new();
        for i in 1..=gateways {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut g = Proc::new(
                path,
                &format!("gateway-{i}"),
                "gateway",
                &[
                    format!("gateway.listen_addr={addr}"),
                    format!("gateway.controllers={all}"),
                ]
                .into_iter()
                .chain(common.iter().cloned())
                .collect::<Vec<String>>(),
            );
            g.start();
            gws.push(g);
            gateway_addrs.push(addr);
        }
        for g in &gws {
            g.wait_ready();
        }
        Cluster {
            dir,
            controllers: cs,
            nodes,
            gateways: gws,
            gateway_addrs,
        }
    }
}

impl Drop for Cluster {
    /// When a test fails, the end of every process's log goes to stderr
    /// before the data directory is removed: the logs are the only record
    /// of what the cluster did.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let procs = self
            .controllers
            .values()
            .chain(self.nodes.values())
            .chain(self.gateways.iter());
        for p in procs {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!("---- last {} lines of {} ----", tail.len(), p.name);
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}
