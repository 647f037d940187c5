//! The client commands of the `streambus` binary: `topic`, `produce`,
//! `consume`, `group` and `cluster`, built on the SDK (`streambus-client`). See `docs/cli.md`.

mod cluster;
mod consume;
mod group;
mod output;
mod produce;
mod topic;

use std::process::ExitCode;

use streambus_client::{Client, ClientError};

pub use cluster::ClusterArgs;
pub use consume::ConsumeArgs;
pub use group::GroupArgs;
pub use produce::ProduceArgs;
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
}

/// Where the gateway is; shared by every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Gateway address: host:port or http://host:port; several separated by commas
    #[arg(
        long,
        env = "STREAMBUS_GATEWAY",
        default_value = "127.0.0.1:7400",
        global = true
    )]
    pub gateway: String,
}

impl GatewayArgs {
    async fn connect(&self) -> Result<Client, ClientError> {
        Client::connect(self.gateway.clone()).await
    }
}

/// Runs a client command. Errors are printed here, as one `error: …` line
/// on stderr, and give exit code 1; a closed stdout (`| head`) ends the
/// command quietly with exit code 0. The `Err` case is kept for the
/// caller's convenience and is not produced today.
pub async fn run(cmd: ClientCommand) -> anyhow::Result<ExitCode> {
    let result = match cmd {
        ClientCommand::Topic(args) => topic::run(args).await,
        ClientCommand::Produce(args) => produce::run(args).await,
        ClientCommand::Consume(args) => consume::run(args).await,
        ClientCommand::Group(args) => group::run(args).await,
        ClientCommand::Cluster(args) => cluster::run(args).await,
    };
    match result {
        Ok(code) => Ok(code),
        Err(e) if output::is_broken_pipe(&e) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::FAILURE)
        }
    }
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
