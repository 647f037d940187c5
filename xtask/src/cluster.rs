//! `cargo xtask cluster up|down|ps|kill|restart`: a real multi-process
//! StreamBus cluster on 127.0.0.1 for manual fault drills.
//!
//! `up` starts controllers (one Raft group), storage nodes and gateways as
//! detached background processes, each in its own process group with its
//! own data directory and log file under the cluster directory, on fixed
//! ports (17400 and up, clear of `streambus dev`'s 7400-7402 and 7480).
//! What was started, with the exact command lines, is kept in
//! `<dir>/cluster.json`, which the other subcommands read and update.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::peer::root;

const USAGE: &str = "usage: cargo xtask cluster <command> [--dir DIR]

commands:
  up [--controllers N] [--storage-nodes N] [--gateways N] [--debug]
                      build `streambus` (release, or debug with --debug) and start
                      N controllers, storage nodes and gateways (default 3/3/2) on
                      127.0.0.1, then wait until every process is ready
  ps                  the processes of the cluster and whether each is alive
  kill ROLE ID        SIGKILL one process, like a crash
  restart ROLE ID     stop one process (SIGTERM, waiting) if it runs, start it again
                      with the same command line, data and ports, wait until ready
  down [--clean]      SIGTERM every process (SIGKILL after 30 s); keeps data and
                      logs, --clean removes them too

ROLE is controller, storage-node or gateway. DIR defaults to target/cluster
in the workspace; it holds cluster.json, one data directory per process
(controller-1/, storage-node-1/, ...) and logs/<role>-<id>.log.";

/// First port of the cluster; every process's ports are offsets from it.
const BASE_PORT: u16 = 17400;
/// Ids 1..=MAX_PER_ROLE fit each role's block of ports.
const MAX_PER_ROLE: u32 = 50;
/// How long `up` and `restart` wait for `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a SIGTERMed process may take to exit before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Controller,
    StorageNode,
    Gateway,
}

impl Role {
    /// Stopping order: clients of the others first, as `streambus dev` does.
    const STOP_ORDER: [Role; 3] = [Role::Gateway, Role::StorageNode, Role::Controller];

    fn parse(s: &str) -> Result<Role, String> {
        match s {
            "controller" => Ok(Role::Controller),
            "storage-node" => Ok(Role::StorageNode),
            "gateway" => Ok(Role::Gateway),
            _ => Err(format!(
                "unknown role {s:?}: expected controller, storage-node or gateway"
            )),
        }
    }

    /// The role's name, also its `streambus` subcommand.
    fn name(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::StorageNode => "storage-node",
            Role::Gateway => "gateway",
        }
    }

    /// The gRPC and HTTP ports of process `id` (1-based): each role has a
    /// block of 100 ports from BASE_PORT, gRPC in its first half and HTTP
    /// in its second (controller 1: 17400 and 17450, gateway 1: 17500 and
    /// 17550, storage node 1: 17600 and 17650).
    fn ports(self, id: u32) -> (u16, u16) {
        let block = match self {
            Role::Controller => 0,
            Role::Gateway => 100,
            Role::StorageNode => 200,
        };
        let grpc = BASE_PORT + block + (id - 1) as u16;
        (grpc, grpc + MAX_PER_ROLE as u16)
    }
}

/// One process of the cluster, as kept in cluster.json.
#[derive(Debug, Clone)]
struct Proc {
    role: Role,
    id: u32,
    pid: Option<u32>,
    grpc: String,
    http: String,
    data_dir: Option<PathBuf>,
    log: PathBuf,
    /// The exact command line, program first.
    command: Vec<String>,
}

impl Proc {
    fn label(&self) -> String {
        format!("{} {}", self.role.name(), self.id)
    }

    /// Whether the recorded pid still runs this process's command line: a
    /// dead process, a zombie (its cmdline is empty) and a reused pid all
    /// count as not alive.
    fn alive(&self) -> bool {
        let Some(pid) = self.pid else { return false };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let args: Vec<&[u8]> = raw
            .strip_suffix(b"\0")
            .unwrap_or(&raw)
            .split(|&b| b == 0)
            .collect();
        args.len() == self.command.len()
            && args
                .iter()
                .zip(&self.command)
                .all(|(a, c)| *a == c.as_bytes())
    }

    fn to_json(&self) -> Value {
        json!({
            "role": self.role.name(),
            "id": self.id,
            "pid": self.pid,
            "grpc": self.grpc,
            "http": self.http,
            "data_dir": self.data_dir.as_ref().map(|d| d.to_string_lossy()),
            "log": self.log.to_string_lossy(),
            "command": self.command,
        })
    }

    fn from_json(v: &Value) -> Result<Proc, String> {
        let text = |key: &str| {
            v[key]
                .as_str()
                .map(str::to_string)
                .ok_or(format!("missing {key:?} in {v}"))
        };
        let command = v["command"]
            .as_array()
            .and_then(|a| a.iter().map(|s| s.as_str().map(str::to_string)).collect())
            .ok_or(format!("missing \"command\" in {v}"))?;
        Ok(Proc {
            role: Role::parse(&text("role")?)?,
            id: v["id"].as_u64().ok_or(format!("missing \"id\" in {v}"))? as u32,
            pid: v["pid"].as_u64().map(|p| p as u32),
            grpc: text("grpc")?,
            http: text("http")?,
            data_dir: v["data_dir"].as_str().map(PathBuf::from),
            log: PathBuf::from(text("log")?),
            command,
        })
    }
}

/// The cluster directory and what cluster.json says is running there.
struct Cluster {
    dir: PathBuf,
    procs: Vec<Proc>,
}

impl Cluster {
    fn state_file(dir: &Path) -> PathBuf {
        dir.join("cluster.json")
    }

    /// Reads `<dir>/cluster.json`; `None` when there is none.
    fn load(dir: &Path) -> Result<Option<Cluster>, String> {
        let path = Cluster::state_file(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let bad = |e: String| format!("{}: {e}", path.display());
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let procs = v["processes"]
            .as_array()
            .ok_or_else(|| bad("no \"processes\" list".into()))?
            .iter()
            .map(Proc::from_json)
            .collect::<Result<_, _>>()
            .map_err(bad)?;
        Ok(Some(Cluster {
            dir: dir.to_path_buf(),
            procs,
        }))
    }

    /// Like `load`, but a missing cluster.json is an error.
    fn existing(dir: &Path) -> Result<Cluster, String> {
        Cluster::load(dir)?.ok_or_else(|| {
            format!(
                "no cluster in {}: {} does not exist (start one with `cargo xtask cluster up`)",
                dir.display(),
                Cluster::state_file(dir).display()
            )
        })
    }

    /// Writes cluster.json (to a temporary file, then renamed over it).
    fn save(&self) -> Result<(), String> {
        let v = json!({
            "dir": self.dir.to_string_lossy(),
            "processes": self.procs.iter().map(Proc::to_json).collect::<Vec<_>>(),
        });
        let path = Cluster::state_file(&self.dir);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&v).expect("JSON values serialize") + "\n";
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    fn find(&mut self, role: Role, id: u32) -> Result<&mut Proc, String> {
        let dir = self.dir.display().to_string();
        self.procs
            .iter_mut()
            .find(|p| p.role == role && p.id == id)
            .ok_or_else(|| format!("no {} {id} in the cluster in {dir}", role.name()))
    }
}

/// The flags of every subcommand, parsed once; each subcommand says which
/// it accepts.
struct Options {
    dir: PathBuf,
    controllers: u32,
    storage_nodes: u32,
    gateways: u32,
    debug: bool,
    clean: bool,
    positional: Vec<String>,
}

impl Options {
    fn new(dir: PathBuf) -> Options {
        Options {
            dir,
            controllers: 3,
            storage_nodes: 3,
            gateways: 2,
            debug: false,
            clean: false,
            positional: Vec::new(),
        }
    }
}

fn parse(args: &[String], allowed: &[&str]) -> Result<Options, String> {
    let mut o = Options::new(root().join("target/cluster"));
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a.starts_with("--") && !allowed.contains(&a.as_str()) {
            return Err(format!("unknown option {a}\n\n{USAGE}"));
        }
        let mut count = || -> Result<u32, String> {
            let v = it.next().ok_or(format!("{a} needs a value"))?;
            match v.parse() {
                Ok(n) if (1..=MAX_PER_ROLE).contains(&n) => Ok(n),
                _ => Err(format!(
                    "{a} {v}: expected a number from 1 to {MAX_PER_ROLE}"
                )),
            }
        };
        match a.as_str() {
            "--controllers" => o.controllers = count()?,
            "--storage-nodes" => o.storage_nodes = count()?,
            "--gateways" => o.gateways = count()?,
            "--debug" => o.debug = true,
            "--clean" => o.clean = true,
            "--dir" => {
                let v = it.next().ok_or("--dir needs a value")?;
                o.dir = std::path::absolute(v).map_err(|e| format!("--dir {v}: {e}"))?;
            }
            _ => o.positional.push(a.clone()),
        }
    }
    Ok(o)
}

/// `cargo xtask cluster ...`.
pub fn main(args: &[String]) -> Result<(), String> {
    let rest = args.get(1..).unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("up") => up(&parse(
            rest,
            &[
                "--dir",
                "--controllers",
                "--storage-nodes",
                "--gateways",
                "--debug",
            ],
        )?),
        Some("down") => down(&parse(rest, &["--dir", "--clean"])?),
        Some("ps") => ps(&parse(rest, &["--dir"])?),
        Some(cmd @ ("kill" | "restart")) => {
            let o = parse(rest, &["--dir"])?;
            let [role, id] = o.positional.as_slice() else {
                return Err(format!(
                    "usage: cargo xtask cluster {cmd} ROLE ID [--dir DIR]"
                ));
            };
            let role = Role::parse(role)?;
            let id = id.parse().map_err(|_| format!("invalid id {id:?}"))?;
            let mut cluster = Cluster::existing(&o.dir)?;
            if cmd == "kill" {
                kill(&mut cluster, role, id)
            } else {
                restart(&mut cluster, role, id)
            }
        }
        _ => Err(USAGE.to_string()),
    }
}

fn no_positional(o: &Options) -> Result<(), String> {
    match o.positional.first() {
        Some(a) => Err(format!("unexpected argument {a:?}\n\n{USAGE}")),
        None => Ok(()),
    }
}

fn up(o: &Options) -> Result<(), String> {
    no_positional(o)?;
    if let Some(old) = Cluster::load(&o.dir)? {
        let running: Vec<String> = old
            .procs
            .iter()
            .filter(|p| p.alive())
            .map(|p| format!("{} (pid {})", p.label(), p.pid.unwrap_or_default()))
            .collect();
        if !running.is_empty() {
            return Err(format!(
                "a cluster is already running in {}: {}; stop it with `cargo xtask cluster down`",
                o.dir.display(),
                running.join(", ")
            ));
        }
    }
    let profile = if o.debug { "debug" } else { "release" };
    let binary = target_dir().join(profile).join("streambus");
    let mut build = vec!["build", "--bin", "streambus"];
    if !o.debug {
        build.insert(1, "--release");
    }
    let cluster = launch(o, &binary, || crate::run("cargo", &build))?;
    print_table(&cluster, false);
    let gateways: Vec<&str> = cluster
        .procs
        .iter()
        .filter(|p| p.role == Role::Gateway)
        .map(|p| p.grpc.as_str())
        .collect();
    let bin = binary.display();
    println!(
        "\nready: {} controllers, {} storage nodes, {} gateways (state in {})",
        o.controllers,
        o.storage_nodes,
        o.gateways,
        Cluster::state_file(&o.dir).display()
    );
    println!("use it (gateways: {}):", gateways.join(", "));
    println!("  {bin} topic create t -r 3 --gateway {}", gateways[0]);
    println!(
        "  export STREAMBUS_GATEWAY={}    # instead of --gateway on every command",
        gateways[0]
    );
    println!("  seq 1 300 | {bin} produce t");
    println!("  {bin} topic describe t");
    println!("  cargo xtask cluster kill storage-node 1    # then: restart, ps, down");
    Ok(())
}

/// Starts every process of `o` from `binary` (after `build`, once the
/// ports are known to be free) and waits until all are ready.
fn launch(
    o: &Options,
    binary: &Path,
    build: impl FnOnce() -> Result<(), String>,
) -> Result<Cluster, String> {
    let mut cluster = Cluster {
        dir: o.dir.clone(),
        procs: plan(o, binary),
    };
    for p in &cluster.procs {
        ports_free(p)?;
    }
    build()?;
    std::fs::create_dir_all(o.dir.join("logs")).map_err(|e| format!("{}: {e}", o.dir.display()))?;
    for i in 0..cluster.procs.len() {
        let pid = spawn(&cluster.dir, &cluster.procs[i], "up")?;
        cluster.procs[i].pid = Some(pid);
        // After every start, so that `down` finds whatever did start.
        cluster.save()?;
    }
    let all: Vec<&Proc> = cluster.procs.iter().collect();
    wait_ready(&all).map_err(|e| {
        format!("{e}\nthe processes stay up for a look; `cargo xtask cluster down` stops them")
    })?;
    Ok(cluster)
}

/// Starts a cluster of `counts` (controllers, storage nodes, gateways)
/// in `dir` from a `binary` already built, for tests; returns the first
/// gateway's address. [`stop_in`] stops it.
pub fn start_in(dir: &Path, counts: (u32, u32, u32), binary: &Path) -> Result<String, String> {
    let mut o = Options::new(dir.to_path_buf());
    (o.controllers, o.storage_nodes, o.gateways) = counts;
    let cluster = launch(&o, binary, || Ok(()))?;
    cluster
        .procs
        .iter()
        .find(|p| p.role == Role::Gateway)
        .map(|p| p.grpc.clone())
        .ok_or_else(|| "no gateway".to_string())
}

/// Stops the cluster in `dir` and removes its data and logs.
pub fn stop_in(dir: &Path) -> Result<(), String> {
    let mut o = Options::new(dir.to_path_buf());
    o.clean = true;
    down(&o)
}

/// Where cargo puts build output.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Every process of the cluster `o` describes, with its command line, not
/// yet started.
fn plan(o: &Options, binary: &Path) -> Vec<Proc> {
    let controllers: Vec<String> = (1..=o.controllers)
        .map(|id| addr(Role::Controller.ports(id).0))
        .collect();
    let mut procs = Vec::new();
    for (role, count) in [
        (Role::Controller, o.controllers),
        (Role::StorageNode, o.storage_nodes),
        (Role::Gateway, o.gateways),
    ] {
        for id in 1..=count {
            let (grpc, http) = role.ports(id);
            let (grpc, http) = (addr(grpc), addr(http));
            let name = format!("{}-{id}", role.name());
            let data_dir = (role != Role::Gateway).then(|| o.dir.join(&name));
            let data = data_dir
                .as_ref()
                .map(|d| d.to_string_lossy().to_string())
                .unwrap_or_default();
            let mut settings = vec![format!("http.listen_addr={http}")];
            match role {
                Role::Controller => {
                    settings.push(format!("controller.node_id={id}"));
                    settings.push(format!("controller.listen_addr={grpc}"));
                    settings.push(format!("controller.data_dir={data}"));
                    // One indexed key per peer: `controller.peers` does not
                    // take a comma-separated list from --set.
                    for (i, peer) in controllers.iter().enumerate() {
                        settings.push(format!("controller.peers[{i}]={}={peer}", i + 1));
                    }
                }
                Role::StorageNode => {
                    settings.push(format!("storage_node.node_id={id}"));
                    settings.push(format!("storage_node.listen_addr={grpc}"));
                    settings.push(format!("storage_node.data_dir={data}"));
                    settings.push(format!(
                        "storage_node.controllers={}",
                        controllers.join(",")
                    ));
                }
                Role::Gateway => {
                    settings.push(format!("gateway.listen_addr={grpc}"));
                    settings.push(format!("gateway.controllers={}", controllers.join(",")));
                }
            }
            let mut command = vec![
                binary.to_string_lossy().to_string(),
                role.name().to_string(),
            ];
            for s in settings {
                command.push("--set".to_string());
                command.push(s);
            }
            procs.push(Proc {
                role,
                id,
                pid: None,
                grpc,
                http,
                data_dir,
                log: o.dir.join("logs").join(format!("{name}.log")),
                command,
            });
        }
    }
    procs
}

/// Fails when something listens on one of `p`'s ports already (readiness
/// would then be answered by another process).
fn ports_free(p: &Proc) -> Result<(), String> {
    for (port, what) in [(&p.grpc, "gRPC"), (&p.http, "HTTP")] {
        if TcpListener::bind(port.as_str()).is_err() {
            return Err(format!(
                "{port} ({} {what}) is already in use; is another cluster or process on it?",
                p.label()
            ));
        }
    }
    Ok(())
}

/// Starts `p`'s command line detached: in its own process group (a later
/// Ctrl-C does not reach it), stdin closed, stdout and stderr appended to
/// its log file, `STREAMBUS_*` settings of this shell removed (the command
/// line alone configures it) and `NO_COLOR=1`. Returns its pid.
fn spawn(dir: &Path, p: &Proc, why: &str) -> Result<u32, String> {
    let open_err = |e: std::io::Error| format!("{}: {e}", p.log.display());
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p.log)
        .map_err(open_err)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    writeln!(
        log,
        "--- cargo xtask cluster {why}: starting {} at unix time {now} ---",
        p.label()
    )
    .map_err(open_err)?;
    let stderr = log.try_clone().map_err(open_err)?;
    let mut cmd = Command::new(&p.command[0]);
    cmd.args(&p.command[1..])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr)
        .process_group(0);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("STREAMBUS_") {
            cmd.env_remove(key);
        }
    }
    // Plain text in the log files, without terminal colour codes.
    cmd.env("NO_COLOR", "1");
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {} ({}): {e}", p.label(), p.command[0]))?;
    Ok(child.id())
}

/// `GET /readyz` over plain HTTP/1.1: `Ok` on 200, else what it answered.
fn readyz(http: &str) -> Result<(), String> {
    let mut s = TcpStream::connect(http).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET /readyz HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let status = answer.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        return Ok(());
    }
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b.trim());
    Err(if body.is_empty() {
        status.to_string()
    } else {
        format!("{status} ({body})")
    })
}

/// Waits until every process answers `/readyz` with 200; fails as soon as
/// one exits, or after READY_TIMEOUT, naming the processes and their logs.
fn wait_ready(procs: &[&Proc]) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut waiting: Vec<(&Proc, String)> = procs.iter().map(|p| (*p, String::new())).collect();
    loop {
        for (p, last) in &mut waiting {
            if let Err(e) = readyz(&p.http) {
                *last = e;
            } else {
                last.clear();
                eprintln!("{} is ready (http://{}/readyz)", p.label(), p.http);
            }
        }
        waiting.retain(|(_, last)| !last.is_empty());
        if let Some((p, _)) = waiting.iter().find(|(p, _)| !p.alive()) {
            return Err(format!(
                "{} exited before it was ready; the end of its log {}:\n{}",
                p.label(),
                p.log.display(),
                tail(&p.log, 20)
            ));
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let lines: Vec<String> = waiting
                .iter()
                .map(|(p, last)| {
                    format!(
                        "  {} at http://{}/readyz: {last}; log {}",
                        p.label(),
                        p.http,
                        p.log.display()
                    )
                })
                .collect();
            return Err(format!(
                "not ready within {} s:\n{}",
                READY_TIMEOUT.as_secs(),
                lines.join("\n")
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The last `n` lines of a log file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn signal(p: &Proc, sig: &str) {
    if let Some(pid) = p.pid {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status();
    }
}

/// Waits up to `within` for every process of `procs` to be gone; returns
/// those still alive.
fn wait_gone<'a>(procs: &[&'a Proc], within: Duration) -> Vec<&'a Proc> {
    let deadline = Instant::now() + within;
    loop {
        let alive: Vec<&Proc> = procs.iter().copied().filter(|p| p.alive()).collect();
        if alive.is_empty() || Instant::now() > deadline {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM (they drain), then SIGKILL whatever still runs after STOP_GRACE.
fn stop(procs: &[&Proc]) -> Result<(), String> {
    let running: Vec<&Proc> = procs.iter().copied().filter(|p| p.alive()).collect();
    for p in &running {
        signal(p, "TERM");
    }
    for p in wait_gone(&running, STOP_GRACE) {
        eprintln!(
            "{} still runs {} s after SIGTERM: SIGKILL",
            p.label(),
            STOP_GRACE.as_secs()
        );
        signal(p, "KILL");
    }
    let left = wait_gone(&running, Duration::from_secs(5));
    if let Some(p) = left.first() {
        return Err(format!(
            "{} (pid {}) survived SIGKILL",
            p.label(),
            p.pid.unwrap_or_default()
        ));
    }
    for p in &running {
        eprintln!("stopped {} (pid {})", p.label(), p.pid.unwrap_or_default());
    }
    Ok(())
}

fn down(o: &Options) -> Result<(), String> {
    no_positional(o)?;
    if let Some(cluster) = Cluster::load(&o.dir)? {
        for role in Role::STOP_ORDER {
            let group: Vec<&Proc> = cluster.procs.iter().filter(|p| p.role == role).collect();
            stop(&group)?;
        }
        let state = Cluster::state_file(&o.dir);
        std::fs::remove_file(&state).map_err(|e| format!("{}: {e}", state.display()))?;
    } else if !o.clean {
        return Err(format!(
            "no cluster in {} (no cluster.json)",
            o.dir.display()
        ));
    }
    if o.clean {
        clean(&o.dir)?;
        eprintln!("removed {}", o.dir.display());
    } else {
        eprintln!("data and logs kept in {}", o.dir.display());
    }
    Ok(())
}

/// Removes what `up` creates in `dir` (data directories, logs), then `dir`
/// itself if nothing else is left in it.
fn clean(dir: &Path) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let ours = name == "logs"
            || ["controller-", "storage-node-", "gateway-"]
                .iter()
                .any(|prefix| {
                    name.strip_prefix(prefix)
                        .is_some_and(|id| id.parse::<u32>().is_ok())
                });
        if ours {
            let path = entry.path();
            std::fs::remove_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

fn ps(o: &Options) -> Result<(), String> {
    no_positional(o)?;
    print_table(&Cluster::existing(&o.dir)?, true);
    Ok(())
}

fn kill(cluster: &mut Cluster, role: Role, id: u32) -> Result<(), String> {
    let p = cluster.find(role, id)?;
    if !p.alive() {
        return Err(format!("{} is not running", p.label()));
    }
    signal(p, "KILL");
    if !wait_gone(&[&*p], Duration::from_secs(5)).is_empty() {
        return Err(format!("{} survived SIGKILL", p.label()));
    }
    eprintln!(
        "killed {} (pid {}); `cargo xtask cluster restart {} {id}` starts it again",
        p.label(),
        p.pid.unwrap_or_default(),
        role.name()
    );
    Ok(())
}

fn restart(cluster: &mut Cluster, role: Role, id: u32) -> Result<(), String> {
    let dir = cluster.dir.clone();
    let p = cluster.find(role, id)?;
    stop(&[&*p])?;
    ports_free(p)?;
    let pid = spawn(&dir, p, "restart")?;
    p.pid = Some(pid);
    let p = p.clone();
    cluster.save()?;
    eprintln!("started {} (pid {pid}), log {}", p.label(), p.log.display());
    wait_ready(&[&p])
}

/// Prints the processes as a table, with an ALIVE column for `ps`.
fn print_table(cluster: &Cluster, with_alive: bool) {
    let mut rows = vec![["ROLE", "ID", "PID", "ALIVE", "GRPC", "HTTP", "LOG"].map(str::to_string)];
    for p in &cluster.procs {
        rows.push([
            p.role.name().to_string(),
            p.id.to_string(),
            p.pid.map_or("-".to_string(), |pid| pid.to_string()),
            if p.alive() { "yes" } else { "no" }.to_string(),
            p.grpc.clone(),
            p.http.clone(),
            p.log.display().to_string(),
        ]);
    }
    let columns: Vec<usize> = (0..7).filter(|&c| with_alive || c != 3).collect();
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let cells: Vec<String> = columns
            .iter()
            .map(|&c| format!("{:<w$}", row[c], w = widths[c]))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}
