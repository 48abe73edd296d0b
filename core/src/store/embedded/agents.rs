//! The agents and, per pool, the index of those ready to take a conversation from it. The
//! fields are private so that every change to an agent goes through [`Agents::update`] (or
//! [`Agents::add`]), which keeps the index exact.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::FastMap;

use crate::model::Agent;

/// An agent's place in a pool's ready index: longest idle first, then by id.
pub(super) type ReadyKey = (DateTime<Utc>, String);

/// Agents by id, and the ready index.
#[derive(Default)]
pub(super) struct Agents {
    by_id: FastMap<String, Agent>,
    /// Pool -> exactly the agents for which [`Agent::can_take`] of that pool holds (presence
    /// aside), by [`ReadyKey`]. Pools without any are absent.
    ready: FastMap<String, BTreeSet<ReadyKey>>,
}

impl Agents {
    /// The agent `id`.
    pub(super) fn get(&self, id: &str) -> Option<&Agent> {
        self.by_id.get(id)
    }

    /// Whether agent `id` exists.
    pub(super) fn contains_key(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Every agent, in no order.
    pub(super) fn values(&self) -> impl Iterator<Item = &Agent> {
        self.by_id.values()
    }

    /// Adds `agent` unless an agent with its id exists.
    pub(super) fn add(&mut self, agent: Agent) {
        if self.by_id.contains_key(&agent.id) {
            return;
        }
        index(&mut self.ready, &agent);
        self.by_id.insert(agent.id.clone(), agent);
    }

    /// Applies `f` to agent `id` (`None` if there is none) and re-indexes it. `f` must not
    /// change the agent's id.
    pub(super) fn update<R>(&mut self, id: &str, f: impl FnOnce(&mut Agent) -> R) -> Option<R> {
        let agent = self.by_id.get_mut(id)?;
        unindex(&mut self.ready, agent);
        let out = f(agent);
        debug_assert_eq!(agent.id, id, "an update changed the agent's id");
        index(&mut self.ready, agent);
        Some(out)
    }

    /// The agents ready for a conversation of `pool`, the next to assign first.
    pub(super) fn ready(&self, pool: &str) -> impl Iterator<Item = &ReadyKey> {
        self.ready.get(pool).into_iter().flatten()
    }

    /// Whether agent `id` is in `pool`'s ready index.
    pub(super) fn is_ready(&self, pool: &str, id: &str) -> bool {
        match (self.by_id.get(id), self.ready.get(pool)) {
            (Some(agent), Some(ready)) => ready.contains(&(agent.idle_since, agent.id.clone())),
            _ => false,
        }
    }

    /// The whole ready index, for tests to check.
    #[cfg(test)]
    pub(super) fn ready_index(&self) -> &FastMap<String, BTreeSet<ReadyKey>> {
        &self.ready
    }
}

/// Enters `agent` in the index of every pool it can take a conversation from.
fn index(ready: &mut FastMap<String, BTreeSet<ReadyKey>>, agent: &Agent) {
    for pool in &agent.pools {
        if !agent.can_take(pool) {
            continue;
        }
        let key = (agent.idle_since, agent.id.clone());
        match ready.get_mut(pool) {
            Some(set) => {
                set.insert(key);
            }
            None => {
                ready.insert(pool.clone(), BTreeSet::from([key]));
            }
        }
    }
}

/// Removes what [`index`] entered for `agent` as it is now.
fn unindex(ready: &mut FastMap<String, BTreeSet<ReadyKey>>, agent: &Agent) {
    let mut key: Option<ReadyKey> = None;
    for pool in &agent.pools {
        if !agent.can_take(pool) {
            continue;
        }
        let Some(set) = ready.get_mut(pool) else {
            continue;
        };
        set.remove(key.get_or_insert_with(|| (agent.idle_since, agent.id.clone())));
        if set.is_empty() {
            ready.remove(pool);
        }
    }
}
