//! Distributed tracing: OpenTelemetry spans exported over OTLP/gRPC, and
//! W3C trace context (`traceparent`, `tracestate`) carried in gRPC metadata
//! from hop to hop.
//!
//! Off unless an OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `tracing.otlp_endpoint` in the
//! config file). While off, [`enabled`] is false and nothing here creates a
//! span, reads a header or allocates: every helper checks it first.
//!
//! Spans follow the OpenTelemetry semantic conventions: a server span per
//! gRPC call (`rpc.system`, `rpc.service`, `rpc.method`, named
//! `service/method`), and messaging attributes (`messaging.system`,
//! `messaging.destination.name`, `messaging.destination.partition.id`,
//! `messaging.batch.message_count`) on the spans of a produced or consumed
//! batch. Sampling is decided once per trace (per request, or per batch on
//! a stream), never per record.

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// A trace context to parent a span on (a remote one, from a call or a
/// message).
pub type Parent = opentelemetry::Context;

/// Whether spans are exported. Every helper of this module does nothing
/// while it is false.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Tracing settings from the config file (`[tracing]`); the standard
/// `OTEL_*` environment variables win over them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceSettings {
    /// OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`; empty = off.
    pub otlp_endpoint: String,
    /// `service.name` of the spans; empty = the role's name.
    pub service_name: String,
    /// `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`,
    /// `parentbased_always_off` or `parentbased_traceidratio`; empty =
    /// `parentbased_always_on`, OpenTelemetry's default.
    pub sampler: String,
    /// The ratio of the `traceidratio` samplers, 0 to 1.
    pub sampler_arg: Option<f64>,
}

/// What [`resolve`] decided: tracing on, and how.
#[derive(Debug, Clone)]
pub struct TraceConfig {
    /// The endpoint from the settings; `None` when the environment names
    /// one (the exporter reads it there).
    endpoint: Option<String>,
    /// `None` when `OTEL_SERVICE_NAME` is set (the SDK reads it).
    service_name: Option<String>,
    /// `None` when `OTEL_TRACES_SAMPLER` is set (the SDK reads it) or
    /// nothing is configured.
    sampler: Option<Sampler>,
}

/// Decides whether tracing is on. `env` looks a variable up (`std::env::var`
/// in the binary); `role` names the default service, e.g.
/// `streambus-gateway`. Off when no endpoint is configured, or with
/// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. A sampler the
/// settings name but that does not exist is an error.
pub fn resolve(
    settings: &TraceSettings,
    role: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<TraceConfig>, String> {
    let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"))
    {
        return Ok(None);
    }
    let env_endpoint =
        set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let endpoint = match (env_endpoint, settings.otlp_endpoint.trim()) {
        (Some(_), _) => None,
        (None, "") => return Ok(None),
        (None, e) => Some(e.to_string()),
    };
    let sampler = if set("OTEL_TRACES_SAMPLER").is_some() || settings.sampler.trim().is_empty() {
        None
    } else {
        Some(sampler(settings.sampler.trim(), settings.sampler_arg)?)
    };
    let service_name = if set("OTEL_SERVICE_NAME").is_some() {
        None
    } else if settings.service_name.trim().is_empty() {
        Some(role.to_string())
    } else {
        Some(settings.service_name.trim().to_string())
    };
    Ok(Some(TraceConfig {
        endpoint,
        service_name,
        sampler,
    }))
}

/// A sampler by its `OTEL_TRACES_SAMPLER` name.
fn sampler(name: &str, arg: Option<f64>) -> Result<Sampler, String> {
    let ratio = || match arg {
        Some(r) if (0.0..=1.0).contains(&r) => Ok(r),
        Some(r) => Err(format!(
            "tracing.sampler_arg must be between 0 and 1, not {r}"
        )),
        None => Err(format!(
            "tracing.sampler {name:?} needs tracing.sampler_arg"
        )),
    };
    Ok(match name {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
        }
        other => {
            return Err(format!(
                "unknown tracing.sampler {other:?}: expected always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
            ));
        }
    })
}

/// The span exporter, running: [`Tracer::shutdown`] exports what is
/// buffered. Dropping it shuts it down too.
#[derive(Debug)]
pub struct Tracer {
    provider: SdkTracerProvider,
}

impl Tracer {
    /// Starts the OTLP exporter and its batch processor. Must run within a
    /// tokio runtime (the gRPC channel lives on it).
    pub fn start(config: &TraceConfig) -> Result<Tracer, String> {
        use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if let Some(endpoint) = &config.endpoint {
            exporter = exporter.with_endpoint(endpoint.clone());
        }
        let exporter = exporter
            .with_compression(opentelemetry_otlp::Compression::Gzip)
            .build()
            .map_err(|e| format!("cannot start the OTLP span exporter: {e}"))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if let Some(name) = &config.service_name {
            resource = resource.with_service_name(name.clone());
        }
        let mut provider = SdkTracerProvider::builder()
            .with_resource(resource.build())
            .with_batch_exporter(exporter);
        if let Some(sampler) = &config.sampler {
            provider = provider.with_sampler(sampler.clone());
        }
        let provider = provider.build();
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Tracer { provider })
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use opentelemetry::trace::TracerProvider;
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("streambus"))
            .with_threads(false)
            .with_location(false)
    }

    /// Exports the spans still buffered and stops.
    pub fn shutdown(self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "span exporter shutdown");
        }
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The trace context of headers (`traceparent`, `tracestate`), if any.
pub fn extract(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Writes the current span's trace context into `request`'s metadata, so
/// the service it goes to continues the trace. Nothing while tracing is
/// off or outside a sampled span.
pub fn inject<T>(request: &mut tonic::Request<T>) {
    if !enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    let mut headers = std::mem::take(request.metadata_mut()).into_headers();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut headers));
    *request.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
}

/// Whether the current span belongs to a sampled trace: work done inside
/// one gets spans of its own, work outside starts no trace.
pub fn in_trace() -> bool {
    enabled()
        && tracing::Span::current()
            .context()
            .span()
            .span_context()
            .is_sampled()
}

/// The current span's context as a W3C `traceparent` value, for a field
/// or a record header; `None` while tracing is off or outside a sampled
/// span.
pub fn current_traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    traceparent(cx.span().span_context())
}

/// A span context as a W3C `traceparent` value.
pub fn traceparent(sc: &SpanContext) -> Option<String> {
    if !sc.is_valid() {
        return None;
    }
    Some(format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    ))
}

/// The remote span context a `traceparent` value names.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let mut headers = http::HeaderMap::new();
    headers.insert("traceparent", http::HeaderValue::from_str(value).ok()?);
    let cx = extract(&headers);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// The remote context a `traceparent` value names, to parent a span on;
/// `None` when it names none (or tracing is off).
pub fn context_of(traceparent: &str) -> Option<opentelemetry::Context> {
    if !enabled() || traceparent.is_empty() {
        return None;
    }
    let sc = parse_traceparent(traceparent)?;
    Some(opentelemetry::Context::new().with_remote_span_context(sc))
}

/// Makes `parent` (a remote context, or one from a message) the parent of
/// `span`, and records the span's own trace and span ids in its
/// `trace_id` and `span_id` fields (declared empty), so log lines inside
/// it carry them. Returns the span.
pub fn with_parent(span: tracing::Span, parent: Option<opentelemetry::Context>) -> tracing::Span {
    if !enabled() || span.is_disabled() {
        return span;
    }
    if let Some(parent) = parent
        && parent.span().span_context().is_valid()
    {
        let _ = span.set_parent(parent);
    }
    record_ids(&span);
    span
}

/// Links `span` to the context a `traceparent` value names (a consumer's
/// span to the producer of its records). Before the span is entered.
pub fn link(span: &tracing::Span, traceparent: &str) {
    if let Some(sc) = parse_traceparent(traceparent) {
        span.add_link(sc);
    }
}

/// Records the span's trace and span ids in its `trace_id` and `span_id`
/// fields (which must be declared, empty).
pub fn record_ids(span: &tracing::Span) {
    if !enabled() || span.is_disabled() {
        return;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
        span.record("span_id", tracing::field::display(sc.span_id()));
    }
}

/// A server span per gRPC call: the call's `traceparent` is its parent.
/// Added to every StreamBus server (`grpc::server`); passes calls through
/// untouched while tracing is off.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerLayer;

impl<S> tower::Layer<S> for ServerLayer {
    type Service = ServerTrace<S>;
    fn layer(&self, inner: S) -> ServerTrace<S> {
        ServerTrace { inner }
    }
}

/// The service [`ServerLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct ServerTrace<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for ServerTrace<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<S::Future, tracing::instrument::Instrumented<S::Future>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !enabled() {
            return futures::future::Either::Left(self.inner.call(request));
        }
        let path = request.uri().path();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("", path));
        let parent = extract(request.headers());
        // Health checks and reflection are not traced, nor internal calls
        // outside a trace (heartbeats, metadata polls, replica fetches):
        // those start none of their own.
        if service.starts_with("grpc.")
            || (service.starts_with("streambus.internal.")
                && !parent.span().span_context().is_valid())
        {
            return futures::future::Either::Left(self.inner.call(request));
        }
        let span = tracing::info_span!(
            "rpc",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        let span = with_parent(span, Some(parent));
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        futures::future::Either::Right(future.instrument(span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn off_without_an_endpoint_or_when_disabled() {
        let none = TraceSettings::default();
        assert!(resolve(&none, "streambus", env(&[])).unwrap().is_none());
        let configured = TraceSettings {
            otlp_endpoint: "http://127.0.0.1:4317".into(),
            ..TraceSettings::default()
        };
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert!(
                resolve(&configured, "streambus", env(&[off]))
                    .unwrap()
                    .is_none()
            );
        }
    }

    #[test]
    fn the_environment_wins_over_the_settings() {
        let settings = TraceSettings {
            otlp_endpoint: "http://127.0.0.1:4317".into(),
            service_name: "from-file".into(),
            sampler: "traceidratio".into(),
            sampler_arg: Some(0.5),
        };
        let config = resolve(&settings, "streambus-gateway", env(&[]))
            .unwrap()
            .unwrap();
        assert_eq!(config.endpoint.as_deref(), Some("http://127.0.0.1:4317"));
        assert_eq!(config.service_name.as_deref(), Some("from-file"));
        assert_eq!(
            format!("{:?}", config.sampler),
            format!("{:?}", Some(Sampler::TraceIdRatioBased(0.5)))
        );
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_SERVICE_NAME", "from-env"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
        ];
        let config = resolve(&settings, "streambus-gateway", env(&vars))
            .unwrap()
            .unwrap();
        assert_eq!(config.endpoint, None, "the exporter reads the environment");
        assert_eq!(config.service_name, None);
        assert!(config.sampler.is_none());
        // The environment alone turns it on; the role names the service.
        let config = resolve(
            &TraceSettings::default(),
            "streambus-gateway",
            env(&vars[..1]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(config.service_name.as_deref(), Some("streambus-gateway"));
    }

    #[test]
    fn bad_samplers_are_refused_with_the_names_that_exist() {
        let mut settings = TraceSettings {
            otlp_endpoint: "http://127.0.0.1:4317".into(),
            sampler: "sometimes".into(),
            ..TraceSettings::default()
        };
        let err = resolve(&settings, "s", env(&[])).unwrap_err();
        assert!(err.contains("parentbased_traceidratio"), "{err}");
        settings.sampler = "parentbased_traceidratio".into();
        let err = resolve(&settings, "s", env(&[])).unwrap_err();
        assert!(err.contains("needs tracing.sampler_arg"), "{err}");
        settings.sampler_arg = Some(1.5);
        let err = resolve(&settings, "s", env(&[])).unwrap_err();
        assert!(err.contains("between 0 and 1"), "{err}");
        settings.sampler_arg = Some(0.01);
        let config = resolve(&settings, "s", env(&[])).unwrap().unwrap();
        assert_eq!(
            format!("{:?}", config.sampler),
            format!(
                "{:?}",
                Some(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    0.01
                ))))
            )
        );
    }

    #[test]
    fn traceparent_round_trips() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse_traceparent(value).unwrap();
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(traceparent(&sc).as_deref(), Some(value));
        assert!(parse_traceparent("00-bad").is_none());
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
    }
}
