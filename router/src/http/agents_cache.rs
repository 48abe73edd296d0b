//! A copy of every agent shared by the requests of a short while. Every agent console polls
//! `GET /v1/pools/{id}/stats` every 5 s, and each answer counts the pool's agents; reading every
//! agent from the store for each poll would cost the store O(agents²) per 5 s. With the copy, a
//! gateway reads them at most once per [`AGENTS_CACHE_TTL`], and an agent update made through
//! this gateway's REST API is seen at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard_core::model::Agent;
use switchyard_core::store::{Store, StoreError};
use tokio::time::Instant;

/// How long a copy of the agents serves.
pub const AGENTS_CACHE_TTL: Duration = Duration::from_secs(1);

/// Every agent, as read at most [`AgentsCache::ttl`] ago.
#[derive(Debug)]
pub struct AgentsCache {
    ttl: Duration,
    copy: Mutex<Option<(Instant, Arc<Vec<Agent>>)>>,
}

impl Default for AgentsCache {
    fn default() -> Self {
        AgentsCache::new(AGENTS_CACHE_TTL)
    }
}

impl AgentsCache {
    /// A cache whose copy serves for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        AgentsCache {
            ttl,
            copy: Mutex::new(None),
        }
    }

    /// Every agent: the copy while it is fresh, else read from `store` (and kept).
    pub async fn agents(&self, store: &dyn Store) -> Result<Arc<Vec<Agent>>, StoreError> {
        if let Some((read_at, agents)) = &*self.lock()
            && read_at.elapsed() < self.ttl
        {
            return Ok(Arc::clone(agents));
        }
        let agents = Arc::new(store.agents().await?);
        *self.lock() = Some((Instant::now(), Arc::clone(&agents)));
        Ok(agents)
    }

    /// Drops the copy: the next read goes to the store (after an agent update).
    pub fn invalidate(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Arc<Vec<Agent>>)>> {
        // The copy is plain data: a panic elsewhere leaves it usable.
        self.copy.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::store::AgentUpdate;
    use switchyard_core::store::embedded::EmbeddedStore;

    async fn add(store: &EmbeddedStore, id: &str) {
        let update = AgentUpdate {
            id: id.to_owned(),
            pools: Some(vec!["default".to_owned()]),
            ..AgentUpdate::default()
        };
        store
            .upsert_agent(update, switchyard_core::time::now())
            .await
            .expect("upsert");
    }

    fn ids(agents: &[Agent]) -> Vec<&str> {
        let mut ids: Vec<&str> = agents.iter().map(|a| a.id.as_str()).collect();
        ids.sort_unstable();
        ids
    }

    #[tokio::test(start_paused = true)]
    async fn the_copy_serves_until_it_is_stale_or_invalidated() {
        let store = EmbeddedStore::new();
        let cache = AgentsCache::new(Duration::from_secs(1));
        add(&store, "a").await;
        assert_eq!(ids(&cache.agents(&store).await.unwrap()), ["a"]);
        add(&store, "b").await;
        assert_eq!(
            ids(&cache.agents(&store).await.unwrap()),
            ["a"],
            "within the ttl: the copy"
        );
        cache.invalidate();
        assert_eq!(ids(&cache.agents(&store).await.unwrap()), ["a", "b"]);
        add(&store, "c").await;
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(ids(&cache.agents(&store).await.unwrap()), ["a", "b"]);
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(
            ids(&cache.agents(&store).await.unwrap()),
            ["a", "b", "c"],
            "stale: read again"
        );
    }
}
