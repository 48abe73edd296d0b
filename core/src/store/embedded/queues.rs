//! Each pool's queued conversations: one first-in-first-out queue per priority and skill
//! requirement ([`QueueKey`]), so that a conversation no agent with room can take holds back only
//! those of its priority asking for the same skills. The entries are conversation ids; an entry
//! whose conversation is no longer queued there (closed, moved) is stale, and its readers skip or
//! drop it.

use std::collections::{BTreeMap, VecDeque};

use super::FastMap;
use crate::model::{Conversation, Skills};

/// Which of a pool's queues a conversation waits in.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct QueueKey {
    /// [`Conversation::priority`].
    pub(super) priority: u8,
    /// [`Conversation::skills`].
    pub(super) skills: Skills,
}

impl QueueKey {
    /// The queue `conversation` waits in when it is queued.
    pub(super) fn of(conversation: &Conversation) -> Self {
        QueueKey {
            priority: conversation.priority,
            skills: conversation.skills.clone(),
        }
    }
}

/// The queues of every pool. Empty queues are dropped.
#[derive(Default)]
pub(super) struct Queues {
    by_pool: FastMap<String, BTreeMap<QueueKey, VecDeque<String>>>,
}

impl Queues {
    /// Appends conversation `id` to `pool`'s queue `key`.
    pub(super) fn push(&mut self, pool: &str, key: &QueueKey, id: String) {
        let queues = match self.by_pool.get_mut(pool) {
            Some(queues) => queues,
            None => self.by_pool.entry(pool.to_owned()).or_default(),
        };
        match queues.get_mut(key) {
            Some(queue) => queue.push_back(id),
            None => {
                queues.insert(key.clone(), VecDeque::from([id]));
            }
        }
    }

    /// Puts conversation `id` at the front of `pool`'s queue `key`.
    pub(super) fn push_front(&mut self, pool: &str, key: &QueueKey, id: String) {
        let queues = self.by_pool.entry(pool.to_owned()).or_default();
        queues.entry(key.clone()).or_default().push_front(id);
    }

    /// Takes conversation `id` out of `pool`'s queue `key`.
    pub(super) fn remove(&mut self, pool: &str, key: &QueueKey, id: &str) {
        self.edit(pool, key, |queue| queue.retain(|c| c != id));
    }

    /// Drops the head of `pool`'s queue `key`.
    pub(super) fn pop_front(&mut self, pool: &str, key: &QueueKey) {
        self.edit(pool, key, |queue| {
            queue.pop_front();
        });
    }

    /// The head of `pool`'s queue `key`.
    pub(super) fn front(&self, pool: &str, key: &QueueKey) -> Option<&String> {
        self.by_pool.get(pool)?.get(key)?.front()
    }

    /// `pool`'s queues: each key with its entries, oldest first.
    pub(super) fn of_pool(
        &self,
        pool: &str,
    ) -> impl Iterator<Item = (&QueueKey, &VecDeque<String>)> {
        self.by_pool.get(pool).into_iter().flatten()
    }

    /// The keys of `pool`'s queues.
    pub(super) fn keys(&self, pool: &str) -> Vec<QueueKey> {
        self.of_pool(pool).map(|(key, _)| key.clone()).collect()
    }

    fn edit(&mut self, pool: &str, key: &QueueKey, f: impl FnOnce(&mut VecDeque<String>)) {
        let Some(queues) = self.by_pool.get_mut(pool) else {
            return;
        };
        if let Some(queue) = queues.get_mut(key) {
            f(queue);
            if queue.is_empty() {
                queues.remove(key);
            }
        }
        if queues.is_empty() {
            self.by_pool.remove(pool);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_queues_apart_and_empty_queues_go() {
        let mut q = Queues::default();
        let plain = QueueKey::default();
        let zh = QueueKey {
            priority: 0,
            skills: Skills::new(["zh"]),
        };
        let urgent = QueueKey {
            priority: 5,
            skills: Skills::default(),
        };
        q.push("p", &plain, "a".into());
        q.push("p", &zh, "b".into());
        q.push("p", &zh, "c".into());
        q.push("p", &urgent, "d".into());
        assert_eq!(q.keys("p"), vec![plain.clone(), zh.clone(), urgent.clone()]);
        assert_eq!(q.front("p", &zh).map(String::as_str), Some("b"));
        q.remove("p", &zh, "b");
        assert_eq!(q.front("p", &zh).map(String::as_str), Some("c"));
        q.pop_front("p", &zh);
        q.pop_front("p", &urgent);
        assert_eq!(q.keys("p"), vec![plain.clone()]);
        q.pop_front("p", &plain);
        assert!(q.by_pool.is_empty());
        assert_eq!(q.front("p", &plain), None);
    }
}
