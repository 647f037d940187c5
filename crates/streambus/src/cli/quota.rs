//! `streambus quota set|list|delete`.

use std::process::ExitCode;

use streambus_client::v1;

use super::GatewayArgs;
use super::output::table;

/// Arguments of `streambus quota`.
#[derive(Debug, clap::Args)]
pub struct QuotaArgs {
    #[command(subcommand)]
    command: QuotaCommand,
    #[command(flatten)]
    pub(super) gateway: GatewayArgs,
}

#[derive(Debug, clap::Subcommand)]
enum QuotaCommand {
    /// Set a principal's quotas (replacing its previous ones; a rate left
    /// out is unlimited). User:* sets the default for every principal
    /// without quotas of its own.
    #[command(group(
        clap::ArgGroup::new("rates").required(true).multiple(true)
            .args(["produce_bytes_per_second", "consume_bytes_per_second", "requests_per_second"]),
    ))]
    Set {
        /// Principal, e.g. User:alice, or User:* for the default
        principal: String,
        /// Record bytes it may produce per second at each gateway
        #[arg(long, value_name = "BYTES")]
        produce_bytes_per_second: Option<u64>,
        /// Record bytes it may consume per second at each gateway
        #[arg(long, value_name = "BYTES")]
        consume_bytes_per_second: Option<u64>,
        /// Calls it may make per second at each gateway
        #[arg(long, value_name = "N")]
        requests_per_second: Option<u64>,
    },
    /// List quotas (every principal's, or one's)
    #[command(visible_alias = "ls")]
    List {
        /// Only this principal's
        principal: Option<String>,
    },
    /// Remove a principal's quotas (it falls back to User:*'s, if set)
    Delete {
        /// Principal
        principal: String,
    },
}

fn rate(r: u64) -> String {
    if r == 0 { "-".into() } else { r.to_string() }
}

fn check(principal: &str) -> anyhow::Result<()> {
    match principal.strip_prefix("User:") {
        Some(n) if !n.is_empty() => Ok(()),
        _ => anyhow::bail!("principal {principal:?}: expected User:<name> or User:*"),
    }
}

pub(super) async fn run(args: QuotaArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        QuotaCommand::Set { principal, .. } | QuotaCommand::Delete { principal } => {
            check(principal)?;
        }
        QuotaCommand::List { principal } => {
            if let Some(p) = principal {
                check(p)?;
            }
        }
    }
    let client = args.gateway.connect().await?;
    match args.command {
        QuotaCommand::Set {
            principal,
            produce_bytes_per_second,
            consume_bytes_per_second,
            requests_per_second,
        } => {
            let quota = v1::ClientQuota {
                principal: principal.clone(),
                produce_bytes_per_second: produce_bytes_per_second.unwrap_or(0),
                consume_bytes_per_second: consume_bytes_per_second.unwrap_or(0),
                requests_per_second: requests_per_second.unwrap_or(0),
            };
            client.alter_client_quotas(vec![quota], Vec::new()).await?;
            println!("set the quotas of {principal}");
        }
        QuotaCommand::List { principal } => {
            let quotas = client
                .describe_client_quotas(principal.as_deref().unwrap_or(""))
                .await?;
            let rows: Vec<Vec<String>> = quotas
                .iter()
                .map(|q| {
                    vec![
                        q.principal.clone(),
                        rate(q.produce_bytes_per_second),
                        rate(q.consume_bytes_per_second),
                        rate(q.requests_per_second),
                    ]
                })
                .collect();
            table(
                &mut std::io::stdout(),
                &[
                    "PRINCIPAL",
                    "PRODUCE-BYTES/S",
                    "CONSUME-BYTES/S",
                    "REQUESTS/S",
                ],
                &rows,
            )?;
        }
        QuotaCommand::Delete { principal } => {
            client
                .alter_client_quotas(Vec::new(), vec![principal.clone()])
                .await?;
            println!("removed the quotas of {principal}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
