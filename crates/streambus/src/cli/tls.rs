//! `streambus tls generate`: a CA and the certificates a development or
//! test cluster needs (docs/security.md). Production clusters take theirs
//! from their own PKI; StreamBus only reads PEM files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use streambus_service::certs::{Ca, Pem, Usage, Validity};

/// `streambus tls`.
#[derive(Debug, clap::Args)]
pub struct TlsArgs {
    #[command(subcommand)]
    command: TlsCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TlsCommand {
    /// Write a new cluster CA (ca.pem, ca-key.pem), a certificate it signs
    /// for the StreamBus processes (node.pem, node-key.pem) and, with
    /// --clients, a client CA (client-ca.pem, client-ca-key.pem) and a
    /// certificate it signs per client (client-NAME.pem,
    /// client-NAME-key.pem) into a directory
    Generate(GenerateArgs),
}

#[derive(Debug, clap::Args)]
struct GenerateArgs {
    /// Directory to write into (created if missing)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Names and addresses the processes are reached at, comma-separated
    /// (every controller, storage node and gateway address's host)
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
    hosts: Vec<String>,
    /// Client certificates to issue, by name (the certificate's common
    /// name), comma-separated
    #[arg(long, value_delimiter = ',')]
    clients: Vec<String>,
    /// Days the certificates are valid
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Overwrite files that exist
    #[arg(long)]
    force: bool,
}

pub fn run(args: TlsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        TlsCommand::Generate(g) => generate(&g),
    }
}

fn generate(args: &GenerateArgs) -> anyhow::Result<ExitCode> {
    if args.days == 0 {
        bail!("--days must be at least 1");
    }
    let hosts: Vec<String> = args
        .hosts
        .iter()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        bail!("--hosts names no host");
    }
    let mut files: Vec<(String, String)> = Vec::new();
    let mut add = |name: &str, pem: &Pem| {
        files.push((format!("{name}.pem"), pem.cert.clone()));
        files.push((format!("{name}-key.pem"), pem.key.clone()));
    };
    let validity = Validity::days(i64::from(args.days));
    let ca = Ca::new("StreamBus CA", validity).map_err(anyhow::Error::msg)?;
    add("ca", ca.pem());
    let node = ca
        .issue("streambus", &hosts, Usage::Peer, validity)
        .map_err(anyhow::Error::msg)?;
    add("node", &node);
    // Clients get a CA of their own: a client certificate then opens the
    // gateway (tls.client_ca_file) and nothing else.
    let client_ca = if args.clients.is_empty() {
        None
    } else {
        let ca = Ca::new("StreamBus client CA", validity).map_err(anyhow::Error::msg)?;
        add("client-ca", ca.pem());
        Some(ca)
    };
    for client in &args.clients {
        let ca = client_ca.as_ref().expect("made when there are clients");
        let client = client.trim();
        if client.is_empty()
            || !client
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            bail!("client name {client:?}: use letters, digits, '-', '_' and '.'");
        }
        let pem = ca
            .issue(client, &[], Usage::Client, validity)
            .map_err(anyhow::Error::msg)?;
        add(&format!("client-{client}"), &pem);
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    if !args.force {
        let existing: Vec<String> = files
            .iter()
            .map(|(name, _)| args.out.join(name))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            bail!(
                "{} already exist; pass --force to overwrite",
                existing.join(", ")
            );
        }
    }
    for (name, contents) in &files {
        write(&args.out.join(name), contents, name.ends_with("-key.pem"))?;
        println!("{}", args.out.join(name).display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `contents` to `path`; keys readable by their owner only.
fn write(path: &Path, contents: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
