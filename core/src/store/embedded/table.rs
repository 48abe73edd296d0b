//! Large records by id, boxed: a hash table moves every entry each time it grows, and a
//! conversation (about 470 bytes) or a profile costs far more to move, and to fault in fresh
//! memory for, than a pointer.

use std::borrow::Borrow;
use std::hash::Hash;

use super::FastMap;

/// Records of type `V` by id.
pub(super) struct Table<V> {
    rows: FastMap<String, Box<V>>,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            rows: FastMap::default(),
        }
    }
}

impl<V> Table<V> {
    /// The record `id`.
    pub(super) fn get<Q>(&self, id: &Q) -> Option<&V>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.rows.get(id).map(|row| &**row)
    }

    /// The record `id`, to change.
    pub(super) fn get_mut<Q>(&mut self, id: &Q) -> Option<&mut V>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.rows.get_mut(id).map(|row| &mut **row)
    }

    /// Whether record `id` exists.
    pub(super) fn contains_key<Q>(&self, id: &Q) -> bool
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.rows.contains_key(id)
    }

    /// Stores `record` as `id`, replacing any record of that id.
    pub(super) fn insert(&mut self, id: String, record: V) {
        self.rows.insert(id, Box::new(record));
    }

    /// Removes record `id` and returns it.
    pub(super) fn remove<Q>(&mut self, id: &Q) -> Option<V>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.rows.remove(id).map(|row| *row)
    }

    /// Every record, in no order.
    pub(super) fn values(&self) -> impl Iterator<Item = &V> {
        self.rows.values().map(|row| &**row)
    }
}
