//! The client commands of the `streambus` binary: `topic`, `produce`,
//! `consume`, `group`, `cluster`, `acl` and `quota`, built on the SDK (`streambus-client`). See `docs/cli.md`.

mod acl;
mod cluster;
mod consume;
mod context;
mod group;
mod output;
mod produce;
mod quota;
mod tls;
mod topic;

use std::process::ExitCode;

use anyhow::Context as _;
use streambus_client::{Client, ClientError, ConnectOptions, TlsOptions};

pub use acl::AclArgs;
pub use cluster::ClusterArgs;
pub use consume::ConsumeArgs;
pub use context::ContextArgs;
pub use group::GroupArgs;
pub use produce::ProduceArgs;
pub use quota::QuotaArgs;
pub use tls::TlsArgs;
pub use topic::TopicArgs;

/// The client subcommands, to be flattened into the binary's command enum.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Create, list, describe, alter and delete topics
    Topic(TopicArgs),
    /// Write records read from stdin, one per line
    Produce(ProduceArgs),
    /// Print records of a topic, one per line (alone, or as a member of a
    /// consumer group)
    Consume(ConsumeArgs),
    /// List, describe and delete consumer groups; reset their offsets
    Group(GroupArgs),
    /// Show the cluster's controllers, storage nodes and partition health;
    /// add and remove controllers; decommission storage nodes
    Cluster(ClusterArgs),
    /// Create, list and delete ACLs (who may do what to which topics,
    /// groups and the cluster)
    Acl(AclArgs),
    /// Set, list and delete principals' produce, consume and request-rate
    /// quotas
    Quota(QuotaArgs),
    /// Generate a CA and certificates for TLS (development and tests)
    Tls(TlsArgs),
    /// Named connection contexts (gateway, TLS, token) in the client
    /// configuration file
    Context(ContextArgs),
}

/// Where the gateway is; shared by every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Gateway address: host:port or http://host:port; several separated
    /// by commas [default: the context's, else 127.0.0.1:7400]
    #[arg(long, env = "STREAMBUS_GATEWAY", global = true)]
    pub gateway: Option<String>,
    /// The context of the client configuration file to use [default: its
    /// current context]
    #[arg(long, env = "STREAMBUS_CONTEXT", global = true)]
    pub context: Option<String>,
    /// Connect over TLS (implied by the other --tls options and by an
    /// https:// address); without --tls-ca the system's roots are trusted
    #[arg(long, env = "STREAMBUS_TLS", global = true)]
    pub tls: bool,
    /// CA certificate (PEM) the gateway's certificate must chain to
    #[arg(long, env = "STREAMBUS_TLS_CA", global = true, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for a gateway that asks for one
    #[arg(long, env = "STREAMBUS_TLS_CERT", global = true, value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM)
    #[arg(long, env = "STREAMBUS_TLS_KEY", global = true, value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,
    /// The name the gateway's certificate must be valid for (default: the
    /// address's host)
    #[arg(
        long,
        env = "STREAMBUS_TLS_SERVER_NAME",
        global = true,
        value_name = "NAME"
    )]
    pub tls_server_name: Option<String>,
    /// Bearer token for a gateway that authenticates with tokens (send it
    /// over TLS only)
    #[arg(long, env = "STREAMBUS_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
}

impl GatewayArgs {
    async fn connect(&self) -> anyhow::Result<Client> {
        let resolved = self.resolve()?;
        let gateway = resolved
            .gateway
            .clone()
            .unwrap_or_else(|| "127.0.0.1:7400".to_string());
        Ok(Client::connect_with(gateway, resolved.options()?).await?)
    }

    /// These flags over the selected context of the client configuration
    /// file (flags and environment variables win).
    fn resolve(&self) -> anyhow::Result<GatewayArgs> {
        let mut out = self.clone();
        let Some(path) = context::path() else {
            return Ok(out);
        };
        let config = context::load(&path)?;
        let Some(c) = config.select(self.context.as_deref(), &path)? else {
            return Ok(out);
        };
        out.gateway = out.gateway.or_else(|| c.gateway.clone());
        out.tls = out.tls || c.tls.unwrap_or(false);
        out.tls_ca = out.tls_ca.or_else(|| c.tls_ca.clone());
        out.tls_cert = out.tls_cert.or_else(|| c.tls_cert.clone());
        out.tls_key = out.tls_key.or_else(|| c.tls_key.clone());
        out.tls_server_name = out.tls_server_name.or_else(|| c.tls_server_name.clone());
        if out.token.is_none()
            && let Some(file) = &c.token_file
        {
            let token = std::fs::read_to_string(file)
                .with_context(|| format!("the context's token file {}", file.display()))?;
            out.token = Some(token.trim().to_string());
        }
        Ok(out)
    }

    /// The connection options the flags ask for.
    fn options(&self) -> Result<ConnectOptions, ClientError> {
        let token = self.token.clone().filter(|t| !t.is_empty());
        let wanted = self.tls
            || self.tls_ca.is_some()
            || self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_server_name.is_some();
        if !wanted {
            return Ok(ConnectOptions { tls: None, token });
        }
        let mut tls = TlsOptions::from_files(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
        )?;
        tls.server_name = self.tls_server_name.clone();
        Ok(ConnectOptions {
            tls: Some(tls),
            token,
        })
    }
}

/// Runs a client command. Errors are printed here, as one `error: …` line
/// on stderr, and give exit code 1; a closed stdout (`| head`) ends the
/// command quietly with exit code 0. The `Err` case is kept for the
/// caller's convenience and is not produced today.
pub async fn run(cmd: ClientCommand) -> anyhow::Result<ExitCode> {
    let gateway = cmd.gateway().cloned();
    let result = match cmd {
        ClientCommand::Topic(args) => topic::run(args).await,
        ClientCommand::Produce(args) => produce::run(args).await,
        ClientCommand::Consume(args) => consume::run(args).await,
        ClientCommand::Group(args) => group::run(args).await,
        ClientCommand::Cluster(args) => cluster::run(args).await,
        ClientCommand::Acl(args) => acl::run(args).await,
        ClientCommand::Quota(args) => quota::run(args).await,
        ClientCommand::Tls(args) => tls::run(args),
        ClientCommand::Context(args) => context::run(args),
    };
    match result {
        Ok(code) => Ok(code),
        Err(e) if output::is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("error: {message}");
            let without_certificate = gateway.and_then(|g| g.resolve().ok()).is_some_and(|g| {
                g.options().is_ok_and(|o| o.tls.is_some()) && g.tls_cert.is_none()
            });
            if without_certificate && closed_after_handshake(&message) {
                eprintln!(
                    "hint: the gateway may require a client certificate (its tls.client_auth): \
                     pass --tls-cert and --tls-key, or set them in the context"
                );
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

impl ClientCommand {
    /// The gateway flags of a command that talks to a gateway.
    fn gateway(&self) -> Option<&GatewayArgs> {
        match self {
            ClientCommand::Topic(a) => Some(&a.gateway),
            ClientCommand::Produce(a) => Some(&a.gateway),
            ClientCommand::Consume(a) => Some(&a.gateway),
            ClientCommand::Group(a) => Some(&a.gateway),
            ClientCommand::Cluster(a) => Some(&a.gateway),
            ClientCommand::Acl(a) => Some(&a.gateway),
            ClientCommand::Quota(a) => Some(&a.gateway),
            ClientCommand::Tls(_) | ClientCommand::Context(_) => None,
        }
    }
}

/// Whether `message` is how a TLS connection closed by the server reads
/// on the client: under TLS 1.3 a server that wants a client certificate
/// refuses after the client's side of the handshake is done, so the client
/// sees the alert, or only that the connection closed or never became
/// ready.
fn closed_after_handshake(message: &str) -> bool {
    message.starts_with("UNAVAILABLE")
        && [
            "CertificateRequired",
            "connection closed",
            "connection was not ready",
        ]
        .iter()
        .any(|m| message.contains(m))
}

/// Parses `key=value` (the value may contain `=`, and may be empty).
fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_closed_after_the_handshake_is_told_apart() {
        for m in [
            "UNAVAILABLE: transport error: received fatal alert: CertificateRequired",
            "UNAVAILABLE: transport error: connection closed",
            "UNAVAILABLE: transport error: connection was not ready",
        ] {
            assert!(closed_after_handshake(m), "{m}");
        }
        for m in [
            "UNAVAILABLE: transport error: tcp connect error: Connection refused",
            "UNAVAILABLE: transport error: received fatal alert: UnknownCA",
            "PERMISSION_DENIED: User:alice may not describe cluster \"cluster\"",
        ] {
            assert!(!closed_after_handshake(m), "{m}");
        }
    }

    #[test]
    fn key_value_splits_at_the_first_equals_sign() {
        assert_eq!(
            parse_key_value("a=b=c").unwrap(),
            ("a".to_string(), "b=c".to_string())
        );
        assert_eq!(
            parse_key_value("a=").unwrap(),
            ("a".to_string(), String::new())
        );
        assert!(parse_key_value("=b").is_err());
        assert!(parse_key_value("ab").is_err());
    }
}
