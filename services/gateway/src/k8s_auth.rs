//! Kubernetes ServiceAccount tokens as gateway credentials: a bearer token
//! that is not in the token file is sent to the Kubernetes API server's
//! TokenReview, and a token it authenticates names the principal
//! `User:<its username>` (`User:system:serviceaccount:<namespace>:<name>`
//! for a ServiceAccount). Pods authenticate with the identity Kubernetes
//! already gives them, mounted and rotated by the kubelet.
//!
//! Answers are kept for `cache_ttl_ms` (by the token's SHA-256), so a
//! client's calls cost one review per interval; refusals are kept as long,
//! so a flood of bad tokens cannot become a flood of reviews. At most
//! [`MAX_CONCURRENT_REVIEWS`] reviews run at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use streambus_proto::{Error, Reason};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::auth::Principal;
use crate::config::KubernetesAuthConfig;

/// Reviews in flight at once; more wait, for at most [`REVIEW_TIMEOUT`].
pub const MAX_CONCURRENT_REVIEWS: usize = 16;
/// How long a call waits for its review (a turn and the API server's
/// answer) before it gets `UNAVAILABLE`.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);
/// The usernames accepted: ServiceAccounts'. Other identities the API
/// server knows (OIDC users, nodes) would share the names of token-file
/// and certificate principals, `User:admin` included.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// Answers kept before the oldest are dropped.
const MAX_CACHED: usize = 10_000;

/// What a review decided.
#[derive(Debug, Clone)]
enum Verdict {
    Principal(Principal),
    Refused(String),
}

/// Verifies tokens with the API server's TokenReview.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audiences: Vec<String>,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], (Verdict, Instant)>>,
    limit: Semaphore,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audiences", &self.audiences)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn unauthenticated(message: impl Into<String>) -> Error {
    Error::new(Reason::Unauthenticated, message)
}

impl TokenReviewer {
    /// Connects as the process's Kubernetes identity: in a pod its
    /// ServiceAccount, else `KUBECONFIG` (or `~/.kube/config`). It needs
    /// `create` on `tokenreviews` (the `system:auth-delegator` role).
    pub async fn new(config: &KubernetesAuthConfig) -> Result<TokenReviewer, String> {
        let client = kube::Client::try_default().await.map_err(|e| {
            format!("gateway.auth.kubernetes: no Kubernetes API server configuration: {e}")
        })?;
        Ok(TokenReviewer {
            api: Api::all(client),
            audiences: config.audiences.clone(),
            ttl: Duration::from_millis(config.cache_ttl_ms),
            cache: Mutex::default(),
            limit: Semaphore::new(MAX_CONCURRENT_REVIEWS),
        })
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Verdict> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(v, _)| v.clone())
    }

    fn remember(&self, key: [u8; 32], verdict: Verdict) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            let ttl = self.ttl;
            cache.retain(|_, (_, at)| at.elapsed() < ttl);
            // Full of fresh answers: bad tokens go first, so a flood of
            // them does not push the good ones out.
            if cache.len() >= MAX_CACHED {
                cache.retain(|_, (v, _)| matches!(v, Verdict::Principal(_)));
            }
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, (verdict, Instant::now()));
    }

    /// The principal `token` authenticates as; `UNAUTHENTICATED` when the
    /// API server does not accept it, `UNAVAILABLE` when it cannot be
    /// asked.
    pub async fn review(&self, token: &str) -> Result<Principal, Error> {
        let key = crate::auth::digest(token);
        let verdict = match self.cached(&key) {
            Some(v) => v,
            None => {
                let reviewed = tokio::time::timeout(REVIEW_TIMEOUT, async {
                    let _permit = self.limit.acquire().await.map_err(|_| {
                        Error::new(Reason::Unavailable, "the gateway is shutting down")
                    })?;
                    // Another call may have asked meanwhile.
                    match self.cached(&key) {
                        Some(v) => Ok::<Verdict, Error>(v),
                        None => {
                            let v = self.ask(token).await?;
                            self.remember(key, v.clone());
                            Ok(v)
                        }
                    }
                })
                .await;
                reviewed.map_err(|_| {
                    Error::new(
                        Reason::Unavailable,
                        format!(
                            "the Kubernetes API server did not review the token within {REVIEW_TIMEOUT:?}"
                        ),
                    )
                })??
            }
        };
        match verdict {
            Verdict::Principal(p) => Ok(p),
            Verdict::Refused(why) => Err(unauthenticated(format!(
                "the bearer token is not valid: the Kubernetes API server refused it ({why})"
            ))),
        }
    }

    async fn ask(&self, token: &str) -> Result<Verdict, Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let answer = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "TokenReview failed");
                Error::new(
                    Reason::Unavailable,
                    format!("cannot verify the token with the Kubernetes API server: {e}"),
                )
            })?;
        let status = answer.status.unwrap_or_default();
        if !self.audiences.is_empty()
            && status.authenticated == Some(true)
            && !status
                .audiences
                .as_ref()
                .is_some_and(|a| a.iter().any(|x| self.audiences.contains(x)))
        {
            return Ok(Verdict::Refused(format!(
                "it is not for the audiences {:?}",
                self.audiences
            )));
        }
        if status.authenticated != Some(true) {
            return Ok(Verdict::Refused(
                status
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "not authenticated".into()),
            ));
        }
        match status
            .user
            .and_then(|u| u.username)
            .filter(|u| !u.is_empty())
        {
            Some(name)
                if name.starts_with(SERVICE_ACCOUNT_PREFIX)
                    && !name.chars().any(char::is_whitespace) =>
            {
                Ok(Verdict::Principal(Principal::user(&name)))
            }
            Some(name) => Ok(Verdict::Refused(format!(
                "{name:?} is not a ServiceAccount"
            ))),
            None => Ok(Verdict::Refused("it names no user".into())),
        }
    }
}
