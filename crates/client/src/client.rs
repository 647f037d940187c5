//! The connection to a gateway and the admin calls.

use std::collections::HashMap;
use std::time::Duration;

use streambus_proto::v1;
use streambus_proto::v1::admin_service_client::AdminServiceClient;
use streambus_proto::v1::consume_service_client::ConsumeServiceClient;
use streambus_proto::v1::group_service_client::GroupServiceClient;
use streambus_proto::v1::produce_service_client::ProduceServiceClient;
use tonic::transport::channel::Change;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::ClientError;

/// Largest message the SDK accepts from or sends to the gateway. Responses
/// hold at least one whole batch, whatever `max_bytes` asks for.
pub(crate) const MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

/// A connection to a StreamBus gateway.
///
/// Cheap to clone: clones share one HTTP/2 connection, which reconnects by
/// itself after failures.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) admin: AdminServiceClient<Transport>,
    pub(crate) produce: ProduceServiceClient<Transport>,
    pub(crate) consume: ConsumeServiceClient<Transport>,
    pub(crate) group: GroupServiceClient<Transport>,
}

/// The channel every call goes through: the gateway connection, with the
/// client's credentials added to each call.
pub(crate) type Transport = tonic::service::interceptor::InterceptedService<Channel, Credentials>;

/// Adds `authorization: Bearer TOKEN` to every call when a token is set.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl tonic::service::Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl Credentials {
    /// The credentials `options` name; an invalid token is an error.
    fn of(options: &ConnectOptions) -> Result<Credentials, ClientError> {
        let Some(token) = &options.token else {
            return Ok(Credentials::default());
        };
        let value =
            format!("Bearer {}", token.trim())
                .parse()
                .map_err(|_| ClientError::InvalidTls {
                    message: "the token has characters a header cannot carry".into(),
                })?;
        Ok(Credentials {
            authorization: Some(value),
        })
    }
}

impl Client {
    /// Connects to a gateway at `addr`: `host:port` or an `http://` URI, or
    /// several separated by commas. A name that resolves to several
    /// addresses (a Kubernetes headless Service) counts as several: calls
    /// are then spread over every gateway that is up (gRPC client-side
    /// load balancing), and names are resolved again every 30 seconds.
    ///
    /// Fails if no gateway can be reached within 5 seconds.
    ///
    /// An `https://` address connects over TLS, trusting the system's root
    /// certificates; [`Client::connect_with`] takes a CA and a client
    /// certificate.
    pub async fn connect(addr: impl Into<String>) -> Result<Client, ClientError> {
        Client::connect_with(addr, ConnectOptions::default()).await
    }

    /// [`Client::connect`] with `options` (TLS).
    pub async fn connect_with(
        addr: impl Into<String>,
        options: ConnectOptions,
    ) -> Result<Client, ClientError> {
        let addr = addr.into();
        let credentials = Credentials::of(&options)?;
        let targets = targets(&addr, options.tls.as_ref())?;
        let resolved = resolve(&targets, options.tls.as_ref()).await;
        if resolved.len() <= 1 && targets.len() == 1 {
            let (uri, endpoint) = &targets[0];
            let channel =
                endpoint
                    .clone()
                    .connect()
                    .await
                    .map_err(|cause| ClientError::Connect {
                        addr: uri.clone(),
                        cause,
                    })?;
            return Ok(Client::with_credentials(channel, credentials));
        }
        // Reachable at all? One gateway answering is enough.
        let mut last = None;
        let probes = resolved
            .values()
            .cloned()
            .map(|e| async move { e.connect().await });
        for r in futures::future::join_all(probes).await {
            match r {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(cause) => last = Some(cause),
            }
        }
        if let Some(cause) = last {
            return Err(ClientError::Connect { addr, cause });
        }
        let (channel, changes) = Channel::balance_channel(64);
        tokio::spawn(follow_addresses(targets, resolved, changes, options.tls));
        Ok(Client::with_credentials(channel, credentials))
    }

    /// Like [`Client::connect`], but connects on first use.
    pub fn connect_lazy(addr: impl Into<String>) -> Result<Client, ClientError> {
        Client::connect_lazy_with(addr, ConnectOptions::default())
    }

    /// Like [`Client::connect_with`], but connects on first use.
    pub fn connect_lazy_with(
        addr: impl Into<String>,
        options: ConnectOptions,
    ) -> Result<Client, ClientError> {
        let credentials = Credentials::of(&options)?;
        let (_, endpoint) = endpoint(addr.into(), options.tls.as_ref())?;
        Ok(Client::with_credentials(
            endpoint.connect_lazy(),
            credentials,
        ))
    }

    /// Wraps an existing tonic channel.
    pub fn from_channel(channel: Channel) -> Client {
        Client::with_credentials(channel, Credentials::default())
    }

    fn with_credentials(channel: Channel, credentials: Credentials) -> Client {
        let transport = Transport::new(channel, credentials);
        Client {
            admin: AdminServiceClient::new(transport.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE),
            produce: ProduceServiceClient::new(transport.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
            consume: ConsumeServiceClient::new(transport.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE),
            group: GroupServiceClient::new(transport).max_decoding_message_size(MAX_MESSAGE_SIZE),
        }
    }

    /// One admin call, tried again (a few times, quickly) when it never
    /// reached a gateway: right after a gateway restart a balanced channel
    /// may still pick its old connection.
    async fn admin_call<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(AdminServiceClient<Transport>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut attempt = 0u32;
        loop {
            match call(self.admin.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if attempt < 5 && unreached(&s) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(25 << attempt)).await;
                }
                Err(s) => return Err(s.into()),
            }
        }
    }

    /// Creates a topic. `replication_factor` 0 means the cluster default.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        configs: HashMap<String, String>,
    ) -> Result<v1::TopicDescription, ClientError> {
        let response = self
            .admin_call(|mut admin| {
                let request = v1::CreateTopicRequest {
                    name: name.to_string(),
                    partitions,
                    replication_factor,
                    configs: configs.clone(),
                };
                async move { admin.create_topic(request).await }
            })
            .await?;
        Ok(response.topic.unwrap_or_default())
    }

    /// Grows a topic to `partitions` partitions (the count never shrinks;
    /// the current count changes nothing). Returns the topic as changed.
    pub async fn create_partitions(
        &self,
        topic: &str,
        partitions: u32,
    ) -> Result<v1::TopicDescription, ClientError> {
        let response = self
            .admin_call(|mut admin| {
                let request = v1::CreatePartitionsRequest {
                    topic: topic.to_string(),
                    partitions,
                };
                async move { admin.create_partitions(request).await }
            })
            .await?;
        Ok(response.topic.unwrap_or_default())
    }

    /// Changes a topic's configuration: each key of `set` takes its value,
    /// each key of `reset` goes back to its default, and every other key
    /// keeps its value. Returns the topic as changed. Storage nodes apply
    /// the change to the topic's partitions at once (a lowered retention is
    /// enforced right away).
    pub async fn alter_topic_configs(
        &self,
        topic: &str,
        set: HashMap<String, String>,
        reset: Vec<String>,
    ) -> Result<v1::TopicDescription, ClientError> {
        let response = self
            .admin_call(|mut admin| {
                let request = v1::AlterTopicConfigsRequest {
                    topic: topic.to_string(),
                    set: set.clone(),
                    delete: reset.clone(),
                    validate_only: false,
                };
                async move { admin.alter_topic_configs(request).await }
            })
            .await?;
        Ok(response.topic.unwrap_or_default())
    }

    /// Starts decommissioning storage node `node_id`: its replicas move to
    /// other nodes, and no new ones are placed on it. Returns at once with
    /// the node's status; once [`v1::StorageNodeStatus::replicas`] (see
    /// [`Client::describe_cluster`]) is 0 the node can be stopped.
    pub async fn decommission_storage_node(
        &self,
        node_id: u64,
    ) -> Result<v1::StorageNodeStatus, ClientError> {
        let response = self
            .admin_call(|mut admin| {
                let request = v1::DecommissionStorageNodeRequest { node_id };
                async move { admin.decommission_storage_node(request).await }
            })
            .await?;
        Ok(response.node.unwrap_or_default())
    }

    /// Ends storage node `node_id`'s decommissioning: new replicas may be
    /// placed on it again. Replicas already moved off stay where they are.
    pub async fn recommission_storage_node(
        &self,
        node_id: u64,
    ) -> Result<v1::StorageNodeStatus, ClientError> {
        let response = self
            .admin_call(|mut admin| {
                let request = v1::RecommissionStorageNodeRequest { node_id };
                async move { admin.recommission_storage_node(request).await }
            })
            .await?;
        Ok(response.node.unwrap_or_default())
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        self.admin_call(|mut admin| {
            let request = v1::DeleteTopicRequest {
                name: name.to_string(),
            };
            async move { admin.delete_topic(request).await }
        })
        .await?;
        Ok(())
    }

    /// Adds ACLs (needs alter on the cluster); how many were new.
    pub async fn create_acls(&self, acls: Vec<v1::AclBinding>) -> Result<u32, ClientError> {
        Ok(self
            .admin_call(|mut admin| {
                let request = v1::CreateAclsRequest { acls: acls.clone() };
                async move { admin.create_acls(request).await }
            })
            .await?
            .created)
    }

    /// The ACLs `filter` selects (needs describe on the cluster).
    pub async fn describe_acls(
        &self,
        filter: v1::AclBindingFilter,
    ) -> Result<Vec<v1::AclBinding>, ClientError> {
        Ok(self
            .admin_call(|mut admin| {
                let request = v1::DescribeAclsRequest {
                    filter: Some(filter.clone()),
                };
                async move { admin.describe_acls(request).await }
            })
            .await?
            .acls)
    }

    /// Removes the ACLs the filters select (needs alter on the cluster);
    /// those removed.
    pub async fn delete_acls(
        &self,
        filters: Vec<v1::AclBindingFilter>,
    ) -> Result<Vec<v1::AclBinding>, ClientError> {
        Ok(self
            .admin_call(|mut admin| {
                let request = v1::DeleteAclsRequest {
                    filters: filters.clone(),
                };
                async move { admin.delete_acls(request).await }
            })
            .await?
            .acls)
    }

    /// Sets principals' quotas (replacing theirs) and removes others'
    /// (needs alter on the cluster).
    pub async fn alter_client_quotas(
        &self,
        set: Vec<v1::ClientQuota>,
        remove: Vec<String>,
    ) -> Result<(), ClientError> {
        self.admin_call(|mut admin| {
            let request = v1::AlterClientQuotasRequest {
                set: set.clone(),
                remove: remove.clone(),
            };
            async move { admin.alter_client_quotas(request).await }
        })
        .await?;
        Ok(())
    }

    /// The quotas set: `principal`'s, or every one when empty (needs
    /// describe on the cluster).
    pub async fn describe_client_quotas(
        &self,
        principal: &str,
    ) -> Result<Vec<v1::ClientQuota>, ClientError> {
        Ok(self
            .admin_call(|mut admin| {
                let request = v1::DescribeClientQuotasRequest {
                    principal: principal.to_string(),
                };
                async move { admin.describe_client_quotas(request).await }
            })
            .await?
            .quotas)
    }

    /// Every topic, as the gateway lists them.
    pub async fn list_topics(&self) -> Result<Vec<v1::TopicDescription>, ClientError> {
        Ok(self
            .admin_call(|mut admin| {
                let request = v1::ListTopicsRequest {};
                async move { admin.list_topics(request).await }
            })
            .await?
            .topics)
    }

    /// One topic: configuration, partitions, leaders and replicas.
    pub async fn describe_topic(&self, name: &str) -> Result<v1::TopicDescription, ClientError> {
        let response = self
            .admin_call(|mut admin| {
                let request = v1::DescribeTopicRequest {
                    name: name.to_string(),
                };
                async move { admin.describe_topic(request).await }
            })
            .await?;
        Ok(response.topic.unwrap_or_default())
    }

    /// Log start offset, high watermark and log end offset of every
    /// partition of `topic`.
    pub async fn partition_offsets(
        &self,
        topic: &str,
    ) -> Result<Vec<v1::PartitionOffsets>, ClientError> {
        Ok(self
            .admin_call(|mut admin| {
                let request = v1::DescribePartitionOffsetsRequest {
                    topic: topic.to_string(),
                    partitions: Vec::new(),
                };
                async move { admin.describe_partition_offsets(request).await }
            })
            .await?
            .partitions)
    }

    /// Controllers, storage nodes, and the partitions that are
    /// under-replicated, offline or below `min.insync.replicas`.
    pub async fn describe_cluster(&self) -> Result<v1::DescribeClusterResponse, ClientError> {
        self.admin_call(|mut admin| {
            let request = v1::DescribeClusterRequest {};
            async move { admin.describe_cluster(request).await }
        })
        .await
    }

    /// Adds controller `node_id`, reachable at `address` (`host:port`), to
    /// the controllers' Raft group: as a learner, then as a voter once it
    /// has caught up. The new controller must be running with an empty data
    /// directory and `controller.join = true`. Returns the members after
    /// the change.
    pub async fn add_controller(
        &self,
        node_id: u64,
        address: &str,
    ) -> Result<Vec<v1::ControllerMember>, ClientError> {
        Ok(self
            .admin_call(|mut admin| {
                let request = v1::AddControllerRequest {
                    node_id,
                    address: address.to_string(),
                };
                async move { admin.add_controller(request).await }
            })
            .await?
            .members)
    }

    /// Removes controller `node_id` (a voter or a learner) from the Raft
    /// group. Refused for the last voter and when the voters left could not
    /// reach a quorum among the controllers that answer now. Returns the
    /// members after the change.
    pub async fn remove_controller(
        &self,
        node_id: u64,
    ) -> Result<Vec<v1::ControllerMember>, ClientError> {
        Ok(self
            .admin_call(|mut admin| {
                let request = v1::RemoveControllerRequest { node_id };
                async move { admin.remove_controller(request).await }
            })
            .await?
            .members)
    }
}

/// Whether a call failed before any gateway handled it: the connection
/// could not be made (no StreamBus reason: the gateway never answered).
fn unreached(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Unavailable
        && s.metadata()
            .get(streambus_proto::error::REASON_METADATA_KEY)
            .is_none()
}

/// How a [`Client`] connects.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    /// TLS to the gateways; `None`: TLS only for `https://` addresses, with
    /// the system's root certificates.
    pub tls: Option<TlsOptions>,
    /// A bearer token sent with every call (`authorization: Bearer
    /// TOKEN`), for gateways that authenticate with tokens. Use it over
    /// TLS: anyone who sees it can use it.
    pub token: Option<String>,
}

/// TLS to the gateways.
#[derive(Clone, Default)]
pub struct TlsOptions {
    /// The CA certificates (PEM) the gateway's certificate must chain to;
    /// `None`: the system's root certificates.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate and its key (PEM), for gateways that ask for
    /// one (`tls.client_auth`).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the gateway's certificate must be valid for; `None`: the
    /// host of the address dialled.
    pub server_name: Option<String>,
}

// Credentials stay out of logs: the token and the key are never printed.
impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("tls", &self.tls)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOptions")
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl TlsOptions {
    /// Reads the CA and the client certificate and key from PEM files.
    pub fn from_files(
        ca: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<TlsOptions, ClientError> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| ClientError::InvalidTls {
                message: format!("{}: {e}", p.display()),
            })
        };
        let identity = match (cert, key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => {
                return Err(ClientError::InvalidTls {
                    message: "a client certificate needs both its file and its key's".into(),
                });
            }
        };
        Ok(TlsOptions {
            ca_pem: ca.map(read).transpose()?,
            identity,
            server_name: None,
        })
    }

    /// The tonic configuration, checking the certificate against `host`.
    fn config(&self, host: &str) -> ClientTlsConfig {
        let mut config = ClientTlsConfig::new()
            .domain_name(self.server_name.clone().unwrap_or_else(|| host.to_string()));
        config = match &self.ca_pem {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        config
    }
}

/// How often gateway names are resolved again.
const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// Every comma-separated address of `addr`, as (URI, endpoint).
fn targets(addr: &str, tls: Option<&TlsOptions>) -> Result<Vec<(String, Endpoint)>, ClientError> {
    let parts: Vec<&str> = addr
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if parts.is_empty() {
        return Err(ClientError::InvalidAddress {
            addr: addr.to_string(),
            message: "no gateway address".into(),
        });
    }
    parts
        .into_iter()
        .map(|p| endpoint(p.to_string(), tls))
        .collect()
}

/// The socket addresses the targets resolve to now, each as an endpoint.
async fn resolve(
    targets: &[(String, Endpoint)],
    tls: Option<&TlsOptions>,
) -> HashMap<std::net::SocketAddr, Endpoint> {
    let mut out = HashMap::new();
    for (uri, endpoint) in targets {
        let Some(authority) = endpoint.uri().authority() else {
            continue;
        };
        let host_port = match authority.port_u16() {
            Some(_) => authority.as_str().to_string(),
            None => format!("{}:80", authority.host()),
        };
        match tokio::net::lookup_host(host_port).await {
            Ok(addrs) => {
                let secure = endpoint.uri().scheme_str() == Some("https");
                for a in addrs {
                    let e = if secure {
                        // Dialled by address, verified by the name given.
                        let host = authority
                            .host()
                            .trim_start_matches('[')
                            .trim_end_matches(']');
                        let config = tls.cloned().unwrap_or_default().config(host);
                        Endpoint::from_shared(format!("https://{a}"))
                            .and_then(|e| e.tls_config(config))
                    } else {
                        Endpoint::from_shared(format!("http://{a}"))
                    };
                    match e {
                        Ok(e) => {
                            out.insert(a, with_settings(e));
                        }
                        Err(e) => {
                            tracing::debug!(%uri, error = %e, "cannot set up gateway endpoint")
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(%uri, error = %e, "cannot resolve gateway address"),
        }
    }
    out
}

/// Keeps a balanced channel's endpoints in line with what the targets
/// resolve to; ends when the channel is gone.
async fn follow_addresses(
    targets: Vec<(String, Endpoint)>,
    mut current: HashMap<std::net::SocketAddr, Endpoint>,
    changes: tokio::sync::mpsc::Sender<Change<std::net::SocketAddr, Endpoint>>,
    tls: Option<TlsOptions>,
) {
    for (a, e) in &current {
        if changes.send(Change::Insert(*a, e.clone())).await.is_err() {
            return;
        }
    }
    loop {
        tokio::time::sleep(RESOLVE_EVERY).await;
        // A channel dropped while the addresses stay the same sends
        // nothing, so it is noticed here.
        if changes.is_closed() {
            return;
        }
        let now = resolve(&targets, tls.as_ref()).await;
        if now.is_empty() {
            // A resolver outage is no reason to forget every gateway.
            continue;
        }
        for (a, e) in &now {
            if !current.contains_key(a)
                && changes.send(Change::Insert(*a, e.clone())).await.is_err()
            {
                return;
            }
        }
        for a in current.keys() {
            if !now.contains_key(a) && changes.send(Change::Remove(*a)).await.is_err() {
                return;
            }
        }
        current = now;
    }
}

/// Normalises `addr` to a URI (`https` with `tls`) and builds the
/// endpoint.
fn endpoint(addr: String, tls: Option<&TlsOptions>) -> Result<(String, Endpoint), ClientError> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let uri = match addr.split_once("://") {
        Some(("http", rest)) if tls.is_some() => format!("https://{rest}"),
        Some(_) => addr.clone(),
        None => format!("{scheme}://{addr}"),
    };
    let invalid = |message: String| ClientError::InvalidAddress {
        addr: addr.clone(),
        message,
    };
    let mut endpoint = Endpoint::from_shared(uri.clone()).map_err(|e| invalid(e.to_string()))?;
    if endpoint.uri().scheme_str() == Some("https") {
        let host = endpoint
            .uri()
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let config = tls.cloned().unwrap_or_default().config(&host);
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| invalid(format!("TLS: {e}")))?;
    }
    Ok((uri, with_settings(endpoint)))
}

/// The connection settings every gateway endpoint gets.
fn with_settings(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // Larger than h2's 64 KiB default so a 256 KiB batch does not wait
        // for window updates; still a hard bound.
        .initial_stream_window_size(2 * 1024 * 1024)
        .initial_connection_window_size(8 * 1024 * 1024)
        // Fetched batches arrive in frames of up to 256 KiB rather than
        // h2's default 16 KiB.
        .max_frame_size(256 * 1024)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_host_port_gets_an_http_scheme() {
        let (uri, _) = endpoint("127.0.0.1:7400".to_string(), None).unwrap();
        assert_eq!(uri, "http://127.0.0.1:7400");
        let (uri, _) =
            endpoint("127.0.0.1:7400".to_string(), Some(&TlsOptions::default())).unwrap();
        assert_eq!(uri, "https://127.0.0.1:7400");
        let (uri, _) = endpoint("http://gw:7400".to_string(), None).unwrap();
        assert_eq!(uri, "http://gw:7400");
    }

    #[test]
    fn garbage_address_is_rejected() {
        let err = endpoint("not a uri".to_string(), None).unwrap_err();
        assert!(matches!(err, ClientError::InvalidAddress { .. }), "{err}");
    }
}
