//! Named connection contexts for the client commands, the way kubectl and
//! rpk keep them: `~/.config/streambus/config.toml` (or
//! `$STREAMBUS_CLIENT_CONFIG`) holds a gateway address, TLS files and a
//! token per context, and which context is current. Flags and
//! environment variables win over the context's values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

/// The client configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The context used when none is named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    /// The contexts, by name.
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

/// How to reach one cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Gateway address(es), as `--gateway` takes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// TLS with the system's roots (implied by the TLS files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// CA certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// Its key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The name the gateway's certificate must be valid for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_server_name: Option<String>,
    /// A file holding the bearer token (read at each command, so a
    /// rotated token needs no edit here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// Where the client configuration is: `$STREAMBUS_CLIENT_CONFIG`, else
/// `$XDG_CONFIG_HOME/streambus/config.toml`, else
/// `~/.config/streambus/config.toml`.
pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STREAMBUS_CLIENT_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("streambus/config.toml"))
}

/// Reads the file at `path`; a missing file is an empty configuration.
pub fn load(path: &Path) -> anyhow::Result<ClientConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ClientConfig::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    toml::from_str(&text)
        .with_context(|| format!("{} is not a valid client configuration", path.display()))
}

/// Writes `config` to `path` (replacing it whole, readable by its owner
/// only: contexts may name token files).
pub fn save(path: &Path, config: &ClientConfig) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = toml::to_string(config).context("cannot encode the client configuration")?;
    let partial = path.with_extension("toml.partial");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&partial)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("cannot replace {}", path.display()))
}

impl ClientConfig {
    /// The context named `name`, or else the current one; `None` when
    /// neither is set. Naming one the file does not have is an error.
    pub fn select(&self, name: Option<&str>, path: &Path) -> anyhow::Result<Option<&Context>> {
        let Some(name) = name.or(self.current_context.as_deref()) else {
            return Ok(None);
        };
        match self.contexts.get(name) {
            Some(c) => Ok(Some(c)),
            None => bail!(
                "no context {name:?} in {} (streambus context list)",
                path.display()
            ),
        }
    }
}

/// `streambus context`.
#[derive(Debug, clap::Args)]
pub struct ContextArgs {
    #[command(subcommand)]
    command: ContextCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ContextCommand {
    /// List the contexts (* marks the current one)
    #[command(visible_alias = "ls")]
    List,
    /// Make a context the current one
    Use {
        /// Context name
        name: String,
    },
    /// Create a context, or change the values given
    Set {
        /// Context name
        name: String,
        /// Gateway address(es)
        #[arg(long)]
        gateway: Option<String>,
        /// TLS with the system's roots
        #[arg(long)]
        tls: bool,
        /// CA certificate (PEM)
        #[arg(long, value_name = "FILE")]
        tls_ca: Option<PathBuf>,
        /// Client certificate (PEM)
        #[arg(long, value_name = "FILE")]
        tls_cert: Option<PathBuf>,
        /// The client certificate's key (PEM)
        #[arg(long, value_name = "FILE")]
        tls_key: Option<PathBuf>,
        /// The name the gateway's certificate must be valid for
        #[arg(long, value_name = "NAME")]
        tls_server_name: Option<String>,
        /// File holding the bearer token
        #[arg(long, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Also make it the current context
        #[arg(long = "use")]
        make_current: bool,
    },
    /// Delete a context
    Delete {
        /// Context name
        name: String,
    },
}

fn absolute(p: PathBuf) -> anyhow::Result<PathBuf> {
    std::path::absolute(&p)
        .with_context(|| format!("{}: cannot make the path absolute", p.display()))
}

pub fn run(args: ContextArgs) -> anyhow::Result<ExitCode> {
    let Some(path) = path() else {
        bail!("no client configuration path: set STREAMBUS_CLIENT_CONFIG or HOME");
    };
    let mut config = load(&path)?;
    match args.command {
        ContextCommand::List => {
            println!("CURRENT  NAME  GATEWAY");
            for (name, c) in &config.contexts {
                let current = if config.current_context.as_deref() == Some(name) {
                    "*"
                } else {
                    ""
                };
                println!(
                    "{current:<7}  {name}  {}",
                    c.gateway.as_deref().unwrap_or("127.0.0.1:7400")
                );
            }
        }
        ContextCommand::Use { name } => {
            if !config.contexts.contains_key(&name) {
                bail!(
                    "no context {name:?} in {} (streambus context list)",
                    path.display()
                );
            }
            config.current_context = Some(name.clone());
            save(&path, &config)?;
            println!("using context {name}");
        }
        ContextCommand::Set {
            name,
            gateway,
            tls,
            tls_ca,
            tls_cert,
            tls_key,
            tls_server_name,
            token_file,
            make_current,
        } => {
            if name.is_empty() {
                bail!("a context needs a name");
            }
            let context = config.contexts.entry(name.clone()).or_default();
            if gateway.is_some() {
                context.gateway = gateway;
            }
            if tls {
                context.tls = Some(true);
            }
            if let Some(p) = tls_ca {
                context.tls_ca = Some(absolute(p)?);
            }
            if let Some(p) = tls_cert {
                context.tls_cert = Some(absolute(p)?);
            }
            if let Some(p) = tls_key {
                context.tls_key = Some(absolute(p)?);
            }
            if tls_server_name.is_some() {
                context.tls_server_name = tls_server_name;
            }
            if let Some(p) = token_file {
                context.token_file = Some(absolute(p)?);
            }
            if make_current || config.current_context.is_none() {
                config.current_context = Some(name.clone());
            }
            save(&path, &config)?;
            println!("context {name} saved in {}", path.display());
        }
        ContextCommand::Delete { name } => {
            if config.contexts.remove(&name).is_none() {
                bail!("no context {name:?} in {}", path.display());
            }
            if config.current_context.as_deref() == Some(name.as_str()) {
                config.current_context = None;
            }
            save(&path, &config)?;
            println!("context {name} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_round_trips_and_selects_contexts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        assert_eq!(load(&path).unwrap(), ClientConfig::default());
        let mut config = ClientConfig::default();
        config.contexts.insert(
            "prod".into(),
            Context {
                gateway: Some("gw.example:7400".into()),
                tls_ca: Some("/etc/ca.pem".into()),
                token_file: Some("/run/token".into()),
                ..Context::default()
            },
        );
        config.contexts.insert("dev".into(), Context::default());
        config.current_context = Some("prod".into());
        save(&path, &config).unwrap();
        let read = load(&path).unwrap();
        assert_eq!(read, config);
        assert_eq!(
            read.select(None, &path)
                .unwrap()
                .unwrap()
                .gateway
                .as_deref(),
            Some("gw.example:7400")
        );
        assert_eq!(
            read.select(Some("dev"), &path).unwrap(),
            Some(&Context::default())
        );
        let e = read.select(Some("nope"), &path).unwrap_err().to_string();
        assert!(e.contains("no context \"nope\""), "{e}");
        assert_eq!(ClientConfig::default().select(None, &path).unwrap(), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "contexts = 3").unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("not a valid"));
        std::fs::write(&path, "[contexts.x]\nwhat = 1\n").unwrap();
        assert!(load(&path).is_err(), "unknown keys are refused");
    }
}
