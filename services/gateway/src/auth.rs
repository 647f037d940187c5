//! Client authentication at the gateway: who a call comes from.
//!
//! Every public call goes through [`AuthLayer`], which finds the caller's
//! [`Principal`] from its verified client certificate (mutual TLS) or its
//! bearer token (`authorization: Bearer TOKEN`, from a token file), puts
//! it in the request's extensions, or answers `UNAUTHENTICATED`. Health
//! checks pass without credentials (probes have none).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use streambus_proto::{Error, Reason};
use streambus_service::grpc::ConnInfo;

use crate::config::AuthConfig;
use crate::quota::Quotas;

/// How often the token file is read again.
pub const TOKEN_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Who a call comes from: `User:<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal(String);

impl Principal {
    /// The user `name`.
    pub fn user(name: &str) -> Principal {
        Principal(format!("User:{name}"))
    }

    /// A caller without credentials, where that is allowed.
    pub fn anonymous() -> Principal {
        Principal::user("ANONYMOUS")
    }

    /// `User:<name>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The principal of a request: the one the auth layer found, or anonymous
/// (a gateway without the layer, or a test calling a service directly).
pub fn principal_of<T>(request: &tonic::Request<T>) -> Principal {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .unwrap_or_else(Principal::anonymous)
}

fn unauthenticated(message: impl Into<String>) -> Error {
    Error::new(Reason::Unauthenticated, message)
}

/// Parses a token file: `NAME TOKEN` per line, blank lines and `#`
/// comments skipped. Returns the principal per token's SHA-256.
pub fn parse_tokens(text: &str) -> Result<Tokens, String> {
    let mut tokens = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, token] = fields[..] else {
            return Err(format!(
                "line {}: expected NAME TOKEN, got {} fields",
                i + 1,
                fields.len()
            ));
        };
        if token.len() < 16 {
            return Err(format!(
                "line {}: the token of {name:?} is shorter than 16 characters",
                i + 1
            ));
        }
        if tokens
            .insert(digest(token), Principal::user(name))
            .is_some()
        {
            return Err(format!("line {}: a token listed twice", i + 1));
        }
    }
    Ok(tokens)
}

pub(crate) fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The principal per token's SHA-256.
type Tokens = HashMap<[u8; 32], Principal>;

/// Bearer tokens from a file, read again as it changes.
#[derive(Debug)]
struct TokenFile {
    path: PathBuf,
    /// (what was read, the tokens it holds); looked up by the token's hash,
    /// so a lookup's timing says nothing about how much of a token was
    /// right.
    current: RwLock<(Vec<u8>, Arc<Tokens>)>,
}

impl TokenFile {
    fn load(path: PathBuf) -> Result<TokenFile, String> {
        let read = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let tokens = parse(&path, &read)?;
        Ok(TokenFile {
            path,
            current: RwLock::new((read, Arc::new(tokens))),
        })
    }

    fn lookup(&self, token: &str) -> Option<Principal> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current.1.get(&digest(token)).cloned()
    }

    /// Reads the file again; `Ok(true)` when it changed and loaded.
    fn reload(&self) -> Result<bool, String> {
        let read =
            std::fs::read(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
        if self.current.read().unwrap_or_else(|p| p.into_inner()).0 == read {
            return Ok(false);
        }
        let tokens = parse(&self.path, &read)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (read, Arc::new(tokens));
        Ok(true)
    }
}

fn parse(path: &std::path::Path, read: &[u8]) -> Result<Tokens, String> {
    let text = std::str::from_utf8(read).map_err(|_| format!("{}: not UTF-8", path.display()))?;
    parse_tokens(text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Decides who a call comes from.
#[derive(Debug)]
pub struct Authenticator {
    mtls: bool,
    tokens: Option<TokenFile>,
    allow_anonymous: bool,
    kubernetes: Option<Arc<crate::k8s_auth::TokenReviewer>>,
}

impl Authenticator {
    /// From the gateway's settings; fails on a token file that does not
    /// load. `None` when no method is on (everyone is anonymous).
    pub fn new(
        config: &AuthConfig,
        kubernetes: Option<crate::k8s_auth::TokenReviewer>,
    ) -> Result<Option<Arc<Authenticator>>, String> {
        if !config.enabled() {
            return Ok(None);
        }
        let tokens = if config.token_file.is_empty() {
            None
        } else {
            Some(
                TokenFile::load(config.token_file.clone().into())
                    .map_err(|e| format!("gateway.auth.token_file: {e}"))?,
            )
        };
        Ok(Some(Arc::new(Authenticator {
            mtls: config.mtls,
            tokens,
            allow_anonymous: config.allow_anonymous,
            kubernetes: kubernetes.map(Arc::new),
        })))
    }

    /// The bearer token of `authorization` when the Kubernetes API server
    /// is to verify it: Kubernetes tokens are on and the token file does
    /// not hold it.
    fn for_review(&self, authorization: Option<&[u8]>) -> Option<String> {
        self.kubernetes.as_ref()?;
        let value = std::str::from_utf8(authorization?).ok()?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?
            .trim();
        let known = self
            .tokens
            .as_ref()
            .is_some_and(|t| t.lookup(token).is_some());
        (!known && !token.is_empty()).then(|| token.to_string())
    }

    /// Reads the token file again every [`TOKEN_RELOAD_INTERVAL`] until
    /// the last other reference to `self` is gone; a file that does not
    /// load is logged and the tokens before it stay in use.
    pub fn watch(self: &Arc<Self>) {
        if self.tokens.is_none() {
            return;
        }
        let auth = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(TOKEN_RELOAD_INTERVAL).await;
                let Some(auth) = auth.upgrade() else { return };
                let reloaded = tokio::task::spawn_blocking(move || {
                    auth.tokens.as_ref().map_or(Ok(false), TokenFile::reload)
                })
                .await;
                match reloaded {
                    Ok(Ok(true)) => {
                        failing = false;
                        tracing::info!("gateway.auth.token_file reloaded");
                    }
                    Ok(Ok(false)) => failing = false,
                    Ok(Err(e)) => {
                        if !failing {
                            tracing::warn!(error = %e, "the token file changed but does not load; the tokens before it stay in use");
                        }
                        failing = true;
                    }
                    Err(_) => return,
                }
            }
        });
    }

    /// The principal of a call with `authorization` (the header's value,
    /// if any) over a connection described by `conn`.
    pub fn authenticate(
        &self,
        conn: Option<&ConnInfo>,
        authorization: Option<&[u8]>,
    ) -> Result<Principal, Error> {
        if let Some(value) = authorization {
            let value = std::str::from_utf8(value)
                .map_err(|_| unauthenticated("the authorization header is not text"))?;
            let Some(token) = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
            else {
                return Err(unauthenticated(
                    "the authorization header is not `Bearer TOKEN`",
                ));
            };
            let Some(tokens) = &self.tokens else {
                return Err(unauthenticated(
                    "token authentication is not enabled on this gateway (gateway.auth.token_file)",
                ));
            };
            return tokens
                .lookup(token.trim())
                .ok_or_else(|| unauthenticated("the bearer token is not valid"));
        }
        if self.mtls
            && let Some(chain) = conn.and_then(|c| c.peer_certificates.as_ref())
            && let Some(leaf) = chain.first()
        {
            return principal_of_certificate(leaf.as_ref()).ok_or_else(|| {
                unauthenticated(
                    "the client certificate names no one: no common name and no URI or DNS subject alternative name",
                )
            });
        }
        if self.allow_anonymous {
            return Ok(Principal::anonymous());
        }
        let mut ways = Vec::new();
        if self.mtls {
            ways.push("a client certificate");
        }
        if self.tokens.is_some() {
            ways.push("a bearer token (authorization: Bearer TOKEN)");
        }
        Err(unauthenticated(format!(
            "this gateway requires authentication: present {}",
            ways.join(" or ")
        )))
    }
}

/// The principal a (verified) certificate names: its subject's common
/// name, else its first URI subject alternative name (a SPIFFE id, say),
/// else its first DNS one.
pub fn principal_of_certificate(der: &[u8]) -> Option<Principal> {
    streambus_service::identity::certificate_name(der).map(|name| Principal::user(&name))
}

/// Writes the audit line of an admin change: who (`principal`), what
/// (`action` on `resource`, with `detail`), and how it ended (`ok`, or the
/// error's reason and message). One structured event per change, target
/// `streambus::audit`, so a log pipeline can route it on its own; the time
/// is the event's.
pub fn audit<T>(
    principal: &Principal,
    action: &str,
    resource: &str,
    detail: &str,
    result: &Result<T, Error>,
) {
    match result {
        Ok(_) => tracing::info!(
            target: "streambus::audit",
            principal = %principal,
            action,
            resource,
            detail,
            result = "ok",
            "admin change"
        ),
        Err(e) => tracing::info!(
            target: "streambus::audit",
            principal = %principal,
            action,
            resource,
            detail,
            result = e.reason.as_str(),
            error = %e.message,
            "admin change"
        ),
    }
}

/// Authenticates every call of the gateway's server (see the module docs)
/// and holds it to its principal's request-rate quota.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Option<Arc<Authenticator>>,
    quotas: Quotas,
}

impl AuthLayer {
    /// With `auth` (`None`: every caller is anonymous) and `quotas`.
    pub fn new(auth: Option<Arc<Authenticator>>, quotas: Quotas) -> AuthLayer {
        AuthLayer { auth, quotas }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: self.auth.clone(),
            quotas: self.quotas.clone(),
        }
    }
}

/// The response header that says how long a call waited for its
/// principal's request-rate quota, in milliseconds (only on calls that
/// waited).
pub const THROTTLE_HEADER: &str = "streambus-throttle-time-ms";

/// Says in `response` how long the call waited for its request quota.
fn throttled(response: &mut http::Response<tonic::body::Body>, wait: Duration) {
    if wait.is_zero() {
        return;
    }
    if let Ok(v) = http::HeaderValue::from_str(&crate::quota::millis(wait).to_string()) {
        response.headers_mut().insert(THROTTLE_HEADER, v);
    }
}

/// The service [`AuthLayer`] wraps around the gateway's routes.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Option<Arc<Authenticator>>,
    quotas: Quotas,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for AuthService<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        >,
    S: Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        futures::future::Either<
            S::Future,
            futures::future::Ready<Result<http::Response<tonic::body::Body>, S::Error>>,
        >,
        futures::future::BoxFuture<'static, Result<http::Response<tonic::body::Body>, S::Error>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        use futures::future::Either;
        // A token for the Kubernetes API server to verify: asked before
        // the call goes on.
        if let Some(auth) = &self.auth
            && let Some(reviewer) = &auth.kubernetes
            && let Some(token) = auth.for_review(
                request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes()),
            )
        {
            let reviewer = reviewer.clone();
            let quotas = self.quotas.clone();
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            return Either::Right(Box::pin(async move {
                let p = match reviewer.review(&token).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(path = %request.uri().path(), error = %e, "call refused");
                        return Ok(e.to_status().into_http());
                    }
                };
                let wait = quotas.charge(&p, crate::quota::Kind::Requests, 1);
                request.extensions_mut().insert(p);
                tokio::time::sleep(wait).await;
                let mut response = inner.call(request).await?;
                throttled(&mut response, wait);
                Ok(response)
            }));
        }
        let principal = match &self.auth {
            None => Ok(Principal::anonymous()),
            // Probes carry no credentials.
            Some(_) if request.uri().path().starts_with("/grpc.health.v1.Health/") => {
                Ok(Principal::anonymous())
            }
            Some(auth) => auth.authenticate(
                request.extensions().get::<ConnInfo>(),
                request
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes()),
            ),
        };
        match principal {
            Ok(p) => {
                let wait = if request.uri().path().starts_with("/grpc.health.v1.Health/") {
                    Duration::ZERO
                } else {
                    self.quotas.charge(&p, crate::quota::Kind::Requests, 1)
                };
                request.extensions_mut().insert(p);
                if wait.is_zero() {
                    return Either::Left(Either::Left(self.inner.call(request)));
                }
                // Over the request quota: the call waits, then goes on.
                // The service that was polled ready serves it later; a
                // clone stays for the next call.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Either::Right(Box::pin(async move {
                    tokio::time::sleep(wait).await;
                    let mut response = inner.call(request).await?;
                    throttled(&mut response, wait);
                    Ok(response)
                }))
            }
            Err(e) => {
                tracing::debug!(path = %request.uri().path(), error = %e, "call refused");
                Either::Left(Either::Right(futures::future::ready(Ok(e
                    .to_status()
                    .into_http()))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_name_a_principal_per_token() {
        let tokens = parse_tokens(
            "# who  token\n\nalice  aaaaaaaaaaaaaaaaaaaa\n  bob bbbbbbbbbbbbbbbbbbbbbbbb  \n",
        )
        .unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(
            tokens[&digest("aaaaaaaaaaaaaaaaaaaa")],
            Principal::user("alice")
        );
        assert_eq!(
            tokens[&digest("bbbbbbbbbbbbbbbbbbbbbbbb")].as_str(),
            "User:bob"
        );
        assert!(parse_tokens("alice").unwrap_err().contains("line 1"));
        assert!(parse_tokens("alice short").unwrap_err().contains("16"));
        assert!(
            parse_tokens("a xxxxxxxxxxxxxxxxxxxx\nb xxxxxxxxxxxxxxxxxxxx")
                .unwrap_err()
                .contains("twice")
        );
        assert!(parse_tokens("a b c").is_err());
    }

    fn authenticator(mtls: bool, tokens: &str, allow_anonymous: bool) -> Authenticator {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, tokens).unwrap();
        Authenticator {
            mtls,
            tokens: (!tokens.is_empty()).then(|| TokenFile::load(path).unwrap()),
            allow_anonymous,
            kubernetes: None,
        }
    }

    fn certificate(cn: Option<&str>, sans: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, "StreamBus");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_certificate_names_its_common_name_else_its_first_uri_or_dns_name() {
        assert_eq!(
            principal_of_certificate(&certificate(Some("alice"), &["alice.example"])),
            Some(Principal::user("alice"))
        );
        assert_eq!(
            principal_of_certificate(&certificate(Some("zoë ünïcode"), &[])),
            Some(Principal::user("zoë ünïcode"))
        );
        assert_eq!(
            principal_of_certificate(&certificate(None, &["svc.example"])),
            Some(Principal::user("svc.example"))
        );
        assert_eq!(principal_of_certificate(&certificate(None, &[])), None);
        assert_eq!(principal_of_certificate(b"not a certificate"), None);
    }

    #[test]
    fn credentials_decide_the_principal_and_bad_ones_are_refused() {
        let token = "tttttttttttttttttttttttt";
        let auth = authenticator(true, &format!("carol {token}\n"), false);
        let bearer = format!("Bearer {token}");
        assert_eq!(
            auth.authenticate(None, Some(bearer.as_bytes())).unwrap(),
            Principal::user("carol")
        );
        let refused = |r: Result<Principal, Error>| r.unwrap_err();
        let e = refused(auth.authenticate(None, Some(b"Bearer wrong-token-wrong-token")));
        assert_eq!(e.reason, Reason::Unauthenticated);
        assert!(e.message.contains("not valid"), "{e}");
        let e = refused(auth.authenticate(None, Some(b"Basic abc")));
        assert!(e.message.contains("Bearer"), "{e}");
        let e = refused(auth.authenticate(None, None));
        assert!(
            e.message.contains("client certificate or a bearer token"),
            "{e}"
        );
        let conn = ConnInfo {
            remote_addr: None,
            peer_certificates: Some(vec![certificate(Some("dave"), &[]).into()].into()),
        };
        assert_eq!(
            auth.authenticate(Some(&conn), None).unwrap(),
            Principal::user("dave")
        );
        // A token wins over the certificate it came with.
        assert_eq!(
            auth.authenticate(Some(&conn), Some(bearer.as_bytes()))
                .unwrap(),
            Principal::user("carol")
        );

        let anonymous = authenticator(false, &format!("carol {token}\n"), true);
        assert_eq!(
            anonymous.authenticate(Some(&conn), None).unwrap(),
            Principal::anonymous(),
            "mtls off: a certificate names no one"
        );
        assert!(
            anonymous
                .authenticate(None, Some(b"Bearer wrong-token-wrong-token"))
                .is_err(),
            "a bad token is refused even where anonymous calls are let in"
        );
        let tokens_off = authenticator(true, "", false);
        let e = refused(tokens_off.authenticate(None, Some(bearer.as_bytes())));
        assert!(e.message.contains("not enabled"), "{e}");
    }

    #[test]
    fn a_changed_token_file_replaces_the_tokens_and_a_bad_one_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "erin eeeeeeeeeeeeeeeeeeee\n").unwrap();
        let file = TokenFile::load(path.clone()).unwrap();
        assert!(!file.reload().unwrap());
        std::fs::write(&path, "erin ffffffffffffffffffff\n").unwrap();
        assert!(file.reload().unwrap());
        assert_eq!(file.lookup("eeeeeeeeeeeeeeeeeeee"), None);
        assert_eq!(
            file.lookup("ffffffffffffffffffff"),
            Some(Principal::user("erin"))
        );
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(file.reload().is_err());
        assert_eq!(
            file.lookup("ffffffffffffffffffff"),
            Some(Principal::user("erin"))
        );
    }
}
