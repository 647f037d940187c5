//! `streambus`: every server role, the single-process dev mode, and the
//! command-line client.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use streambus::cli;
use streambus::dev::{self, DevListeners};
use streambus::roles::{self, Role};
use streambus::settings::{self, Settings};

/// StreamBus: a gRPC-native streaming platform.
#[derive(Parser)]
#[command(name = "streambus", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a controller, a storage node and a gateway in one process.
    Dev {
        #[command(flatten)]
        server: ServerArgs,
        /// Data directory (controller and storage under it).
        #[arg(long, default_value = "data", env = "STREAMBUS_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Run a controller (the Raft metadata authority).
    Controller(ServerArgs),
    /// Run a storage node (partition replicas on local disk).
    StorageNode(ServerArgs),
    /// Run a gateway (the public gRPC API).
    Gateway(ServerArgs),
    #[command(flatten)]
    Client(cli::ClientCommand),
}

/// Options of every server role.
#[derive(Args)]
struct ServerArgs {
    /// A TOML config file (see deploy/streambus.example.toml).
    #[arg(short, long, env = "STREAMBUS_CONFIG")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. --set gateway.listen_addr=127.0.0.1:0
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

impl ServerArgs {
    fn load(&self) -> Result<Settings, String> {
        settings::load(self.config.as_deref(), std::env::vars(), &self.set)
    }
}

/// Installs logging, and tracing when it is configured (within the
/// runtime: the span exporter's channel lives on it).
fn init_logging(
    settings: &Settings,
    service: &str,
) -> Result<Option<streambus_service::trace::Tracer>, String> {
    use streambus_service::trace;
    let format = settings.log.format.parse()?;
    let config = trace::resolve(&settings.tracing.to_trace_settings(), service, |name| {
        std::env::var(name).ok()
    })?;
    let tracer = config.map(|c| trace::Tracer::start(&c)).transpose()?;
    streambus_service::telemetry::init(format, &settings.log.level, tracer.as_ref());
    Ok(tracer)
}

/// Loads the TLS files when `[tls]` is configured and makes them the
/// process's TLS, reloaded as they change (within the runtime: the reload
/// task lives on it).
fn init_tls(settings: &Settings) -> Result<(), String> {
    use streambus_service::tls;
    let Some(files) = settings.tls.to_files()? else {
        if settings.http.tls {
            return Err(
                "http.tls serves the HTTP endpoints with the process's certificate: set tls.cert_file and tls.key_file".into(),
            );
        }
        return Ok(());
    };
    let loaded = tls::Tls::load(files).map_err(|e| e.to_string())?;
    loaded.watch();
    tls::install(loaded).map_err(|e| e.to_string())?;
    tracing::info!(
        cert = %settings.tls.cert_file,
        client_auth = %settings.tls.client_auth,
        "TLS on every gRPC listener and internal connection"
    );
    Ok(())
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Client(cmd) => match rt.block_on(cli::run(cmd)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Dev { server, data_dir } => serve(
            &server,
            "streambus",
            |settings| async move {
                let listeners = DevListeners::bind(&settings).await?;
                dev::run(
                    settings,
                    listeners,
                    Some(&data_dir),
                    streambus_service::shutdown::signal(),
                    |e| {
                        println!("streambus dev is ready");
                        println!("  gateway (public gRPC)  {}", e.gateway);
                        println!("  controller (gRPC)      {}", e.controller);
                        println!("  storage node (gRPC)    {}", e.storage);
                        println!("  http (health/metrics)  http://{}", e.http);
                    },
                )
                .await
            },
            rt,
        ),
        Command::Controller(server) => serve(
            &server,
            "streambus-controller",
            |s| roles::run(Role::Controller, s),
            rt,
        ),
        Command::StorageNode(server) => serve(
            &server,
            "streambus-storage-node",
            |s| roles::run(Role::StorageNode, s),
            rt,
        ),
        Command::Gateway(server) => serve(
            &server,
            "streambus-gateway",
            |s| roles::run(Role::Gateway, s),
            rt,
        ),
    }
}

/// Tunes glibc's allocator for the servers.
///
/// Allocations below 4 MiB (produce batches, fetch responses, read
/// buffers, tonic's encode and decode buffers) come from the heap, where
/// freed blocks are reused: given their own mappings, every such buffer
/// cost a fresh `mmap`, a page fault per 4 KiB touched and an `munmap`, a
/// quarter of the server's CPU at the maximum produce rate
/// (docs/benchmarks.md). The threshold is pinned because glibc's dynamic
/// one rises to 32 MiB. What freed blocks leave resident in the heaps is
/// given back every second by `malloc_trim`, which releases free pages
/// anywhere in them: without it a burst of a thousand subscribers left the
/// process holding a gigabyte it had freed.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; called before
        // the servers start, with a valid parameter and value.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024) };
        if ok != 1 {
            tracing::warn!("cannot set the allocator's mmap threshold");
        }
        let trim = std::thread::Builder::new()
            .name("malloc-trim".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    let started = std::time::Instant::now();
                    // SAFETY: malloc_trim only returns free memory to the
                    // system; it takes the allocator's own locks.
                    unsafe { libc::malloc_trim(0) };
                    tracing::trace!(took = ?started.elapsed(), "malloc_trim");
                }
            });
        if let Err(e) = trim {
            tracing::warn!("cannot start the allocator's trim thread: {e}");
        }
    }
}

/// Once SIGINT or SIGTERM came, gives the drain `grace`, then exits the
/// process with status 1: a supervisor (Kubernetes included) kills it soon
/// after anyway, and an exit of our own says what did not finish. Data
/// acknowledged under the fsync policy is on disk already; logs not closed
/// cleanly are recovered at the next start.
async fn exit_after_grace(grace: Duration) {
    let signal = streambus_service::shutdown::received().await;
    let _ = DRAIN_DEADLINE.set(std::time::Instant::now() + grace);
    tokio::time::sleep(grace).await;
    let message = format!(
        "the drain after {signal} did not finish within shutdown.grace_ms ({} ms); exiting now, logs not closed are recovered at the next start",
        grace.as_millis()
    );
    tracing::error!("{message}");
    eprintln!("error: {message}");
    std::process::exit(1);
}

/// When the grace after SIGINT or SIGTERM runs out.
static DRAIN_DEADLINE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn serve<F, Fut>(args: &ServerArgs, service: &str, f: F, rt: tokio::runtime::Runtime) -> ExitCode
where
    F: FnOnce(Settings) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let settings = match args.load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let tracer = {
        let _runtime = rt.enter();
        match init_logging(&settings, service) {
            Ok(tracer) => tracer,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    };
    if let Err(e) = {
        let _runtime = rt.enter();
        init_tls(&settings)
    } {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // Servers raise the soft open-file limit to the hard one at start; the
    // storage node derives its open-file bound from it.
    streambus_storage_node::open_files::raise_limit();
    tune_allocator();
    {
        // Handlers first: a signal that comes while the servers start is
        // seen by the drain too, not only by the grace timer.
        let _runtime = rt.enter();
        streambus_service::shutdown::listen();
    }
    if settings.shutdown.grace_ms > 0 {
        rt.spawn(exit_after_grace(Duration::from_millis(
            settings.shutdown.grace_ms,
        )));
    }
    let grace = Duration::from_millis(settings.shutdown.grace_ms);
    let served = rt.block_on(f(settings));
    if let Some(tracer) = tracer {
        // While the runtime still runs the exporter's connection.
        tracer.shutdown();
    }
    // Blocking work still running once the servers are done (a close
    // stuck on a hung disk) holds the exit up to the grace, not beyond.
    if grace.is_zero() {
        drop(rt);
    } else {
        let left = DRAIN_DEADLINE.get().map_or(grace, |d| {
            d.saturating_duration_since(std::time::Instant::now())
        });
        rt.shutdown_timeout(left);
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "exiting");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
