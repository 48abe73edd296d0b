//! A channel API access token shared by every replica through the [`Store`], refreshed by one
//! replica at a time (single flight): the others wait for its result instead of fetching their
//! own, which on WeChat-family and Douyin APIs would invalidate the token just fetched.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use switchyard_core::store::Store;

use crate::ConnectorError;

/// How long a refresh may hold the lock before another replica may try.
const LOCK_TTL: Duration = Duration::from_secs(15);
/// How long a caller waits for another replica's refresh.
const WAIT: Duration = Duration::from_secs(5);
/// How often a waiting caller looks again.
const POLL: Duration = Duration::from_millis(50);

/// One cached token, under `key` in the store.
#[derive(Clone)]
pub struct TokenCache {
    store: Arc<dyn Store>,
    key: String,
    lock: String,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("key", &self.key)
            .finish()
    }
}

impl TokenCache {
    /// A token cached under `key` (the lock is `key` + `:lock`).
    pub fn new(store: Arc<dyn Store>, key: impl Into<String>) -> Self {
        let key = key.into();
        TokenCache {
            lock: format!("{key}:lock"),
            store,
            key,
        }
    }

    /// The store key of the token.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The cached token, if any.
    pub async fn cached(&self) -> Result<Option<String>, ConnectorError> {
        self.store
            .get_key(&self.key)
            .await
            .map_err(|e| ConnectorError::Transient(format!("token cache: {e}")))
    }

    /// A valid token: the cached one unless it equals `stale` (a token the API just refused),
    /// else a fresh one from `fetch` (which returns the token and its lifetime). Only one
    /// replica fetches at a time; the others wait for its result.
    pub async fn get<F, Fut>(&self, stale: Option<&str>, fetch: F) -> Result<String, ConnectorError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(String, Duration), ConnectorError>>,
    {
        let usable = |t: &Option<String>| t.as_deref().filter(|t| Some(*t) != stale).is_some();
        let started = tokio::time::Instant::now();
        let holder = ulid::Ulid::new().to_string();
        loop {
            let cached = self.cached().await?;
            if usable(&cached) {
                return cached.ok_or_else(|| ConnectorError::Transient("token vanished".into()));
            }
            let claim = self
                .store
                .claim_key(&self.lock, &holder, LOCK_TTL)
                .await
                .map_err(|e| ConnectorError::Transient(format!("token lock: {e}")))?;
            if claim.is_none() {
                // Ours. Someone may have finished a refresh between our read and our claim.
                let result = match self.cached().await {
                    Ok(again) if usable(&again) => {
                        again.ok_or_else(|| ConnectorError::Transient("token vanished".into()))
                    }
                    Ok(_) => self.fetch_and_store(fetch).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = self.store.release_key(&self.lock, &holder).await {
                    tracing::warn!(key = %self.lock, error = %e, "could not release a token lock");
                }
                return result;
            }
            if started.elapsed() >= WAIT {
                return Err(ConnectorError::Transient(format!(
                    "another replica is refreshing `{}`; try again shortly",
                    self.key
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn fetch_and_store<F, Fut>(&self, fetch: F) -> Result<String, ConnectorError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(String, Duration), ConnectorError>>,
    {
        let (token, lifetime) = fetch().await?;
        // Refresh a little early so a token never expires in flight.
        let margin = (lifetime / 10).min(Duration::from_secs(300));
        let ttl = lifetime.saturating_sub(margin).max(Duration::from_secs(1));
        self.store
            .set_key(&self.key, &token, ttl)
            .await
            .map_err(|e| ConnectorError::Transient(format!("token cache: {e}")))?;
        Ok(token)
    }
}

/// Runs an API call with an access token, and once more with a fresh token when the API refused
/// the first: `token(None)` gives the token to use, `call(token)` makes the call, and
/// `refused(&answer)` tells whether the answer refused the token (expired, or replaced by a
/// refresh elsewhere). Then `token(Some(refused_token))` must give another token (see
/// [`TokenCache::get`]) and the call runs again. The second answer is returned as it is, refused
/// or not: each caller classifies it with the API's other errors.
pub async fn with_fresh_token<T, Token, TokenFut, Call, CallFut>(
    token: Token,
    call: Call,
    refused: impl Fn(&T) -> bool,
) -> Result<T, ConnectorError>
where
    Token: Fn(Option<String>) -> TokenFut,
    TokenFut: Future<Output = Result<String, ConnectorError>>,
    Call: Fn(String) -> CallFut,
    CallFut: Future<Output = Result<T, ConnectorError>>,
{
    let first = token(None).await?;
    let answer = call(first.clone()).await?;
    if !refused(&answer) {
        return Ok(answer);
    }
    tracing::info!("the API refused the access token; calling again with a fresh one");
    let fresh = token(Some(first)).await?;
    call(fresh).await
}

/// Percent-encodes a query or form value (RFC 3986 unreserved characters kept).
pub fn encode_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `application/x-www-form-urlencoded` (or query string) of `pairs`.
pub fn encode_pairs(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The base URL without a trailing slash.
pub fn base_url(api_base: Option<&str>, default: &str) -> String {
    api_base.unwrap_or(default).trim_end_matches('/').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use switchyard_core::store::embedded::EmbeddedStore;

    #[tokio::test]
    async fn one_fetch_for_many_callers_and_refetch_when_stale() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
        let cache = TokenCache::new(store, "t:test");
        let fetches = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let cache = cache.clone();
            let fetches = Arc::clone(&fetches);
            tasks.push(tokio::spawn(async move {
                cache
                    .get(None, || async move {
                        let n = fetches.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok((format!("tok-{n}"), Duration::from_secs(7200)))
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "tok-0");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        let again = cache
            .get(Some("tok-0"), || async {
                Ok(("tok-1".to_owned(), Duration::from_secs(60)))
            })
            .await
            .unwrap();
        assert_eq!(again, "tok-1");
        assert_eq!(cache.cached().await.unwrap().as_deref(), Some("tok-1"));
    }

    /// Calls `with_fresh_token` with tokens `tok-0`, `tok-1`, … and a call that is refused while
    /// its token is in `refused_tokens`; returns the answer and the (stale, token) pairs handed out.
    async fn call_with(refused_tokens: &[&str]) -> (String, Vec<(Option<String>, String)>) {
        let handed = std::sync::Mutex::new(Vec::new());
        let answer = with_fresh_token(
            |stale| {
                let mut handed = handed.lock().unwrap();
                let token = format!("tok-{}", handed.len());
                handed.push((stale, token.clone()));
                async move { Ok(token) }
            },
            |token| async move { Ok(format!("answer with {token}")) },
            |answer: &String| refused_tokens.iter().any(|t| answer.ends_with(t)),
        )
        .await
        .unwrap();
        (answer, handed.into_inner().unwrap())
    }

    #[tokio::test]
    async fn a_refused_token_is_replaced_once_and_the_call_made_again() {
        let (answer, handed) = call_with(&[]).await;
        assert_eq!(answer, "answer with tok-0");
        assert_eq!(handed, [(None, "tok-0".to_owned())], "one token, one call");

        let (answer, handed) = call_with(&["tok-0"]).await;
        assert_eq!(answer, "answer with tok-1");
        assert_eq!(
            handed,
            [
                (None, "tok-0".to_owned()),
                (Some("tok-0".to_owned()), "tok-1".to_owned())
            ],
            "the refused token is named when the fresh one is asked for"
        );

        let (answer, handed) = call_with(&["tok-0", "tok-1"]).await;
        assert_eq!(
            answer, "answer with tok-1",
            "a second refusal is the caller's to classify"
        );
        assert_eq!(handed.len(), 2, "no third call");
    }

    #[test]
    fn encodes_like_a_form() {
        assert_eq!(
            encode_pairs(&[("a b", "x+y/z=1&2"), ("k", "值")]),
            "a%20b=x%2By%2Fz%3D1%262&k=%E5%80%BC"
        );
        assert_eq!(base_url(Some("http://h:1/"), "x"), "http://h:1");
        assert_eq!(base_url(None, "https://d"), "https://d");
    }
}
