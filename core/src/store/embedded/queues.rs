//! Each pool's queued conversations: one first-in-first-out queue per skill requirement
//! ([`Skills`]), so that a conversation no agent with room can take holds back only those asking
//! for the same skills. The entries are conversation ids; an entry whose conversation is no
//! longer queued there (closed, moved) is stale, and its readers skip or drop it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::model::Skills;

/// The queues of every pool. Empty queues are dropped.
#[derive(Default)]
pub(super) struct Queues {
    by_pool: HashMap<String, BTreeMap<Skills, VecDeque<String>>>,
}

impl Queues {
    /// Appends conversation `id` to `pool`'s queue of `skills`.
    pub(super) fn push(&mut self, pool: &str, skills: &Skills, id: String) {
        let queues = match self.by_pool.get_mut(pool) {
            Some(queues) => queues,
            None => self.by_pool.entry(pool.to_owned()).or_default(),
        };
        match queues.get_mut(skills) {
            Some(queue) => queue.push_back(id),
            None => {
                queues.insert(skills.clone(), VecDeque::from([id]));
            }
        }
    }

    /// Takes conversation `id` out of `pool`'s queue of `skills`.
    pub(super) fn remove(&mut self, pool: &str, skills: &Skills, id: &str) {
        self.edit(pool, skills, |queue| queue.retain(|c| c != id));
    }

    /// Drops the head of `pool`'s queue of `skills`.
    pub(super) fn pop_front(&mut self, pool: &str, skills: &Skills) {
        self.edit(pool, skills, |queue| {
            queue.pop_front();
        });
    }

    /// The head of `pool`'s queue of `skills`.
    pub(super) fn front(&self, pool: &str, skills: &Skills) -> Option<&String> {
        self.by_pool.get(pool)?.get(skills)?.front()
    }

    /// `pool`'s queues: each requirement with its entries, oldest first.
    pub(super) fn of_pool(&self, pool: &str) -> impl Iterator<Item = (&Skills, &VecDeque<String>)> {
        self.by_pool.get(pool).into_iter().flatten()
    }

    /// The requirements `pool` has a queue for.
    pub(super) fn requirements(&self, pool: &str) -> Vec<Skills> {
        self.of_pool(pool)
            .map(|(skills, _)| skills.clone())
            .collect()
    }

    fn edit(&mut self, pool: &str, skills: &Skills, f: impl FnOnce(&mut VecDeque<String>)) {
        let Some(queues) = self.by_pool.get_mut(pool) else {
            return;
        };
        if let Some(queue) = queues.get_mut(skills) {
            f(queue);
            if queue.is_empty() {
                queues.remove(skills);
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
    fn each_requirement_queues_apart_and_empty_queues_go() {
        let mut q = Queues::default();
        let zh = Skills::new(["zh"]);
        q.push("p", &Skills::default(), "a".into());
        q.push("p", &zh, "b".into());
        q.push("p", &zh, "c".into());
        assert_eq!(q.requirements("p"), vec![Skills::default(), zh.clone()]);
        assert_eq!(q.front("p", &zh).map(String::as_str), Some("b"));
        q.remove("p", &zh, "b");
        assert_eq!(q.front("p", &zh).map(String::as_str), Some("c"));
        q.pop_front("p", &zh);
        assert_eq!(q.requirements("p"), vec![Skills::default()]);
        q.pop_front("p", &Skills::default());
        assert!(q.by_pool.is_empty());
        assert_eq!(q.front("p", &Skills::default()), None);
    }
}
