//! Layered configuration: built-in defaults, then a TOML file, then
//! `STREAMBUS_`-prefixed environment variables, then `--set` flags.
//! Unknown keys are rejected everywhere.
//!
//! Environment variables name nested keys with `__`:
//! `STREAMBUS_GATEWAY__LISTEN_ADDR=0.0.0.0:7400` sets `gateway.listen_addr`.
//! Variables without `__` (such as `STREAMBUS_GATEWAY`, the CLI's gateway
//! address) are not configuration keys and are ignored here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;
use streambus_controller::ControllerConfig;
use streambus_gateway::GatewayConfig;
use streambus_storage_node::StorageNodeConfig;

/// Keys that hold comma-separated lists when set from the environment.
const LIST_KEYS: &[&str] = &[
    "storage_node.controllers",
    "gateway.controllers",
    "controller.peers",
    "gateway.auth.superusers",
    "gateway.auth.kubernetes.audiences",
];

/// Everything one `streambus` process can be configured with.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// The controller role.
    pub controller: ControllerConfig,
    /// The storage node role.
    pub storage_node: StorageNodeConfig,
    /// The gateway role.
    pub gateway: GatewayConfig,
    /// The process's HTTP endpoint (`/healthz`, `/readyz`, `/metrics`).
    pub http: HttpSettings,
    /// Logging.
    pub log: LogSettings,
    /// Distributed tracing (OpenTelemetry over OTLP/gRPC); off by default.
    pub tracing: TracingSettings,
    /// TLS on every gRPC listener and internal connection; off by default.
    pub tls: TlsSettings,
    /// Draining on SIGINT/SIGTERM.
    pub shutdown: ShutdownSettings,
}

/// Draining on SIGINT/SIGTERM.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSettings {
    /// How long the drain may take after the signal; past it the process
    /// exits with status 1, leaving logs it did not close to recovery at
    /// the next start. 0 = no limit.
    pub grace_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> ShutdownSettings {
        ShutdownSettings { grace_ms: 25_000 }
    }
}

/// The HTTP endpoint.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub listen_addr: SocketAddr,
    /// Serve them over TLS (HTTPS) with the `[tls]` certificate; no client
    /// certificate is asked for.
    pub tls: bool,
}

impl Default for HttpSettings {
    fn default() -> HttpSettings {
        HttpSettings {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 7480)),
            tls: false,
        }
    }
}

impl HttpSettings {
    /// The TLS setup the HTTP endpoints are served with, if any.
    pub fn tls(&self) -> Option<std::sync::Arc<streambus_service::tls::Tls>> {
        self.tls
            .then(streambus_service::tls::installed)
            .flatten()
            .cloned()
    }
}

/// Logging to stdout.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter directive, e.g. `info` or `streambus_gateway=debug,info`.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> LogSettings {
        LogSettings {
            format: "text".to_string(),
            level: "info,openraft=warn".to_string(),
        }
    }
}

/// Distributed tracing. The standard `OTEL_*` environment variables
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`,
/// `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`) win over these.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TracingSettings {
    /// OTLP/gRPC endpoint spans are exported to, e.g.
    /// `http://127.0.0.1:4317`; empty = tracing off.
    pub otlp_endpoint: String,
    /// `service.name` of the spans; empty = `streambus-controller`,
    /// `streambus-storage-node`, `streambus-gateway` (`streambus` in `dev`).
    pub service_name: String,
    /// The sampler, by its `OTEL_TRACES_SAMPLER` name; empty =
    /// `parentbased_always_on`.
    pub sampler: String,
    /// The ratio of the `traceidratio` samplers, 0 to 1.
    pub sampler_arg: Option<f64>,
}

impl TracingSettings {
    /// The settings as the tracing module takes them.
    pub fn to_trace_settings(&self) -> streambus_service::trace::TraceSettings {
        streambus_service::trace::TraceSettings {
            otlp_endpoint: self.otlp_endpoint.clone(),
            service_name: self.service_name.clone(),
            sampler: self.sampler.clone(),
            sampler_arg: self.sampler_arg,
        }
    }
}

/// TLS for the process's gRPC listeners and its connections to other
/// StreamBus services. Off while `cert_file` is empty.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// This process's certificate chain (PEM). It must be valid for the
    /// names peers dial it by and allow both server and client
    /// authentication (internal calls present it).
    pub cert_file: String,
    /// Its private key (PEM).
    pub key_file: String,
    /// The cluster CA (PEM): controllers and storage nodes accept only
    /// clients with a certificate it signed, and every internal connection
    /// trusts only servers it signed.
    pub ca_file: String,
    /// Client certificates at the gateway: `none`, `optional` or
    /// `required`.
    pub client_auth: String,
    /// The CA of client certificates at the gateway (PEM); empty: `ca_file`.
    pub client_ca_file: String,
}

impl Default for TlsSettings {
    fn default() -> TlsSettings {
        TlsSettings {
            cert_file: String::new(),
            key_file: String::new(),
            ca_file: String::new(),
            client_auth: "none".into(),
            client_ca_file: String::new(),
        }
    }
}

impl TlsSettings {
    /// The files to load, or `None` when TLS is off; an error names the
    /// setting that is missing or wrong.
    pub fn to_files(&self) -> Result<Option<streambus_service::tls::TlsFiles>, String> {
        if self.cert_file.is_empty() {
            let set: Vec<&str> = [
                ("tls.key_file", &self.key_file),
                ("tls.ca_file", &self.ca_file),
                ("tls.client_ca_file", &self.client_ca_file),
            ]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, _)| k)
            .collect();
            if !set.is_empty() {
                return Err(format!(
                    "{} set without tls.cert_file: TLS needs a certificate",
                    set.join(", ")
                ));
            }
            return Ok(None);
        }
        for (key, value) in [
            ("tls.key_file", &self.key_file),
            ("tls.ca_file", &self.ca_file),
        ] {
            if value.is_empty() {
                return Err(format!("{key} is required with tls.cert_file"));
            }
        }
        let client_auth = self
            .client_auth
            .parse()
            .map_err(|e| format!("tls.client_auth: {e}"))?;
        Ok(Some(streambus_service::tls::TlsFiles {
            cert: self.cert_file.clone().into(),
            key: self.key_file.clone().into(),
            ca: self.ca_file.clone().into(),
            client_auth,
            client_ca: (!self.client_ca_file.is_empty())
                .then(|| self.client_ca_file.clone().into()),
        }))
    }
}

/// Loads settings from the optional file, the given environment and the
/// `key=value` overrides, in that order of precedence (last wins).
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[String],
) -> Result<Settings, String> {
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        if !path.exists() {
            return Err(format!("config file {} does not exist", path.display()));
        }
        builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
    }
    let vars: HashMap<String, String> = env
        .into_iter()
        .filter(|(k, _)| {
            k.strip_prefix("STREAMBUS_")
                .is_some_and(|rest| rest.contains("__"))
        })
        .collect();
    let mut environment = config::Environment::with_prefix("STREAMBUS")
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true)
        .list_separator(",")
        .source(Some(vars));
    for key in LIST_KEYS {
        environment = environment.with_list_parse_key(key);
    }
    builder = builder.add_source(environment);
    for o in overrides {
        let (k, v) = o
            .split_once('=')
            .ok_or_else(|| format!("--set {o:?}: expected KEY=VALUE"))?;
        let k = k.trim();
        if LIST_KEYS.contains(&k) {
            let items: Vec<String> = v.split(',').map(|s| s.trim().to_string()).collect();
            builder = builder
                .set_override(k, items)
                .map_err(|e| format!("--set {o:?}: {e}"))?;
        } else {
            builder = builder
                .set_override(k, parse_scalar(v))
                .map_err(|e| format!("--set {o:?}: {e}"))?;
        }
    }
    let cfg = builder.build().map_err(|e| format!("configuration: {e}"))?;
    cfg.try_deserialize::<Settings>()
        .map_err(|e| format!("configuration: {e}"))
}

fn parse_scalar(v: &str) -> config::Value {
    if let Ok(i) = v.parse::<i64>() {
        return i.into();
    }
    if let Ok(b) = v.parse::<bool>() {
        return b.into();
    }
    v.to_string().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_with_nothing_set() {
        let s = load(None, env(&[]), &[]).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.gateway.listen_addr.port(), 7400);
    }

    #[test]
    fn example_config_file_loads_and_matches_the_docs() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/streambus.example.toml");
        let s = load(Some(&path), env(&[]), &[]).unwrap();
        assert_eq!(s.gateway.listen_addr.port(), 7400);
        assert_eq!(s.storage_node.node_id, 1);
        // The example lists the defaults.
        let defaults = Settings::default();
        assert_eq!(s, defaults);
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/streambus.example.toml");
        let s = load(
            Some(&path),
            env(&[
                ("STREAMBUS_STORAGE_NODE__NODE_ID", "7"),
                ("STREAMBUS_GATEWAY__CONTROLLERS", "a:1,b:2"),
                ("STREAMBUS_GATEWAY", "127.0.0.1:9"),
                ("STREAMBUS_LOG__FORMAT", "json"),
            ]),
            &["storage_node.node_id=9".to_string()],
        )
        .unwrap();
        assert_eq!(s.storage_node.node_id, 9);
        assert_eq!(
            s.gateway.controllers,
            vec!["a:1".to_string(), "b:2".to_string()]
        );
        assert_eq!(s.log.format, "json");
    }

    #[test]
    fn controller_peers_are_a_comma_separated_list_in_env_and_flags() {
        let peers = |s: &Settings| -> Vec<(u64, String)> {
            s.controller
                .peers
                .iter()
                .map(|p| (p.id, p.address.clone()))
                .collect()
        };
        let want = vec![(1, "127.0.0.1:1".to_string()), (2, "h2:7401".to_string())];
        let s = load(
            None,
            env(&[("STREAMBUS_CONTROLLER__PEERS", "1=127.0.0.1:1,2=h2:7401")]),
            &[],
        )
        .unwrap();
        assert_eq!(peers(&s), want);
        let s = load(
            None,
            env(&[]),
            &["controller.peers=1=127.0.0.1:1, 2=h2:7401".to_string()],
        )
        .unwrap();
        assert_eq!(peers(&s), want);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = load(None, env(&[("STREAMBUS_GATEWAY__LISTEN_ADRESS", "x")]), &[]).unwrap_err();
        assert!(err.contains("listen_adress"), "{err}");
        let err = load(None, env(&[]), &["bogus.key=1".to_string()]).unwrap_err();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected() {
        let err = load(
            None,
            env(&[]),
            &["gateway.listen_addr=not-an-address".to_string()],
        )
        .unwrap_err();
        assert!(err.contains("configuration"), "{err}");
    }
}
