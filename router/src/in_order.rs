//! Work that runs concurrently across keys and one at a time, in arrival order, within a key:
//! a shard's messages by their user, a webhook's events by their subject.

use std::collections::{HashMap, VecDeque};

/// The items waiting behind the one in progress, per key.
#[derive(Debug)]
pub struct InOrderByKey<T> {
    /// Keys with an item in progress, and the items of that key waiting behind it.
    waiting: HashMap<String, VecDeque<T>>,
}

impl<T> Default for InOrderByKey<T> {
    fn default() -> Self {
        InOrderByKey {
            waiting: HashMap::new(),
        }
    }
}

impl<T> InOrderByKey<T> {
    /// An item of `key` arrives: returned to start now when nothing of its key is in progress,
    /// otherwise kept behind the key's earlier items.
    pub fn admit(&mut self, key: &str, item: T) -> Option<T> {
        match self.waiting.get_mut(key) {
            Some(queue) => {
                queue.push_back(item);
                None
            }
            None => {
                self.waiting.insert(key.to_owned(), VecDeque::new());
                Some(item)
            }
        }
    }

    /// The item of `key` in progress is done: the key's next item, to start now, if any.
    pub fn done(&mut self, key: &str) -> Option<T> {
        let next = self.waiting.get_mut(key).and_then(VecDeque::pop_front);
        if next.is_none() {
            self.waiting.remove(key);
        }
        next
    }

    /// The item of `key` in progress ended so that the ones behind it must not run (it was
    /// handed back): the key's waiting items, in order.
    pub fn abandon(&mut self, key: &str) -> VecDeque<T> {
        self.waiting.remove(key).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::InOrderByKey;

    #[test]
    fn one_at_a_time_per_key_in_order_and_keys_apart() {
        let mut order = InOrderByKey::default();
        assert_eq!(order.admit("a", 1), Some(1));
        assert_eq!(order.admit("b", 10), Some(10), "another key starts at once");
        assert_eq!(order.admit("a", 2), None);
        assert_eq!(order.admit("a", 3), None);
        assert_eq!(order.done("a"), Some(2));
        assert_eq!(order.done("b"), None);
        assert_eq!(order.admit("b", 11), Some(11), "b is idle again");
        assert_eq!(order.done("a"), Some(3));
        assert_eq!(order.done("a"), None);
        assert_eq!(order.admit("a", 4), Some(4), "a is idle again");
    }

    #[test]
    fn abandoning_a_key_returns_what_waited_in_order() {
        let mut order = InOrderByKey::default();
        assert_eq!(order.admit("a", 1), Some(1));
        assert_eq!(order.admit("a", 2), None);
        assert_eq!(order.admit("a", 3), None);
        assert_eq!(order.abandon("a"), [2, 3]);
        assert_eq!(order.admit("a", 4), Some(4));
    }
}
