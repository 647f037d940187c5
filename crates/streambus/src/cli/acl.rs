//! `streambus acl create|list|delete`.

use std::process::ExitCode;

use streambus_acl::{
    Acl, AclFilter, CLUSTER_NAME, Operation, PatternType, Permission, ResourcePattern, ResourceType,
};
use streambus_cluster::acl_wire;

use super::GatewayArgs;
use super::output::table;

/// Arguments of `streambus acl`.
#[derive(Debug, clap::Args)]
pub struct AclArgs {
    #[command(subcommand)]
    command: AclCommand,
    #[command(flatten)]
    pub(super) gateway: GatewayArgs,
}

/// Which resources: a topic, a group or the cluster, by literal name
/// (`*`: all) or by prefix.
#[derive(Debug, Clone, clap::Args)]
struct ResourceArgs {
    /// Topic name (`*`: every topic; with --prefixed, a prefix)
    #[arg(long, group = "resource")]
    topic: Option<String>,
    /// Consumer group name (`*`: every group; with --prefixed, a prefix)
    #[arg(long, group = "resource")]
    group: Option<String>,
    /// The cluster: controllers, storage nodes, ACLs, creating any topic
    #[arg(long, group = "resource")]
    cluster: bool,
    /// The name is a prefix: it matches every name that starts with it
    #[arg(long)]
    prefixed: bool,
}

impl ResourceArgs {
    /// The resource type and name given, if any.
    fn resource(&self) -> Option<(ResourceType, String)> {
        if let Some(t) = &self.topic {
            Some((ResourceType::Topic, t.clone()))
        } else if let Some(g) = &self.group {
            Some((ResourceType::Group, g.clone()))
        } else if self.cluster {
            Some((ResourceType::Cluster, CLUSTER_NAME.to_string()))
        } else {
            None
        }
    }

    fn pattern_type(&self) -> PatternType {
        if self.prefixed {
            PatternType::Prefixed
        } else {
            PatternType::Literal
        }
    }
}

/// Selects ACLs by any of their fields.
#[derive(Debug, Clone, clap::Args)]
struct FilterArgs {
    /// Principal, e.g. User:alice (as stored: User:* is its own principal)
    #[arg(long)]
    principal: Option<String>,
    #[command(flatten)]
    resource: ResourceArgs,
    /// Only literal patterns (the default with a name, unless --prefixed)
    #[arg(long, conflicts_with = "prefixed")]
    literal: bool,
    /// Operation: all, read, write, create, delete, alter, describe
    #[arg(long)]
    operation: Option<Operation>,
    /// allow or deny
    #[arg(long)]
    permission: Option<Permission>,
}

impl FilterArgs {
    fn filter(&self) -> AclFilter {
        let resource = self.resource.resource();
        let pattern_type = if self.resource.prefixed {
            Some(PatternType::Prefixed)
        } else if self.literal || resource.is_some() {
            Some(PatternType::Literal)
        } else {
            None
        };
        AclFilter {
            principal: self.principal.clone(),
            resource_type: resource.as_ref().map(|(t, _)| *t),
            pattern_type,
            name: resource.map(|(_, n)| n),
            operation: self.operation,
            permission: self.permission,
        }
    }

    fn is_empty(&self) -> bool {
        self.filter() == AclFilter::default()
    }
}

#[derive(Debug, clap::Subcommand)]
enum AclCommand {
    /// Add ACLs: every principal given gets every operation given on the
    /// resource
    #[command(group(
        clap::ArgGroup::new("who").required(true).multiple(true).args(["allow", "deny"]),
    ))]
    Create {
        /// Principal to allow, e.g. User:alice or User:* (repeatable)
        #[arg(long, value_name = "PRINCIPAL")]
        allow: Vec<String>,
        /// Principal to deny (repeatable); a deny wins over any allow
        #[arg(long, value_name = "PRINCIPAL")]
        deny: Vec<String>,
        /// Operation: all, read, write, create, delete, alter, describe
        /// (repeatable, or comma-separated)
        #[arg(long = "operation", required = true, value_delimiter = ',')]
        operations: Vec<Operation>,
        #[command(flatten)]
        resource: ResourceArgs,
    },
    /// List ACLs (all, or those the filter selects)
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Remove the ACLs the filter selects, and print them
    Delete {
        #[command(flatten)]
        filter: FilterArgs,
        /// Needed to remove every ACL (an empty filter)
        #[arg(long)]
        all: bool,
    },
}

fn rows(acls: &[streambus_client::v1::AclBinding]) -> anyhow::Result<Vec<Vec<String>>> {
    acls.iter()
        .map(|b| {
            let a = acl_wire::from_wire(b)?;
            Ok(vec![
                a.principal,
                a.permission.to_string(),
                a.operation.to_string(),
                a.pattern.resource_type.to_string(),
                a.pattern.pattern_type.to_string(),
                a.pattern.name,
            ])
        })
        .collect()
}

const HEADER: &[&str] = &[
    "PRINCIPAL",
    "PERMISSION",
    "OPERATION",
    "RESOURCE",
    "PATTERN",
    "NAME",
];

pub(super) async fn run(args: AclArgs) -> anyhow::Result<ExitCode> {
    // Refuse bad input before connecting.
    let (acls, filters) = match &args.command {
        AclCommand::Create {
            allow,
            deny,
            operations,
            resource,
        } => {
            let Some((resource_type, name)) = resource.resource() else {
                anyhow::bail!("a resource is required: --topic NAME, --group NAME or --cluster");
            };
            let mut acls = Vec::new();
            let who = allow
                .iter()
                .map(|p| (p, Permission::Allow))
                .chain(deny.iter().map(|p| (p, Permission::Deny)));
            for (principal, permission) in who {
                for &operation in operations {
                    let acl = Acl {
                        principal: principal.clone(),
                        pattern: ResourcePattern {
                            resource_type,
                            pattern_type: resource.pattern_type(),
                            name: name.clone(),
                        },
                        operation,
                        permission,
                    };
                    acl.validate()
                        .map_err(|e| anyhow::anyhow!("ACL \"{acl}\": {e}"))?;
                    acls.push(acl_wire::to_wire(&acl));
                }
            }
            (acls, Vec::new())
        }
        AclCommand::List { filter } => (Vec::new(), vec![filter.filter()]),
        AclCommand::Delete { filter, all } => {
            if filter.is_empty() && !all {
                anyhow::bail!(
                    "an empty filter removes every ACL: give --principal, a resource, --operation or --permission, or --all"
                );
            }
            (Vec::new(), vec![filter.filter()])
        }
    };
    let client = args.gateway.connect().await?;
    let mut out = std::io::stdout();
    match args.command {
        AclCommand::Create { .. } => {
            let total = acls.len();
            let created = client.create_acls(acls).await?;
            println!(
                "created {created} ACL{} ({} already there)",
                if created == 1 { "" } else { "s" },
                total as u32 - created
            );
        }
        AclCommand::List { .. } => {
            let filter = acl_wire::filter_to_wire(&filters[0].clone());
            let listed = client.describe_acls(filter).await?;
            table(&mut out, HEADER, &rows(&listed)?)?;
        }
        AclCommand::Delete { .. } => {
            let wire = filters.iter().map(acl_wire::filter_to_wire).collect();
            let removed = client.delete_acls(wire).await?;
            table(&mut out, HEADER, &rows(&removed)?)?;
            eprintln!(
                "deleted {} ACL{}",
                removed.len(),
                if removed.len() == 1 { "" } else { "s" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
