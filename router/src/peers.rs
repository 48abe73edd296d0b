//! Router peers: which router owns which inbound shard, which routers are up, and how a router
//! hands a shard it took over back to its owner without reordering anyone's messages.
//!
//! Each inbound shard queue has a single active consumer. Routers register first on their own
//! shards (`shard % instances == instance`) and stand by on the others, so a router that stops
//! leaves its shards to a standby. When the owner comes back, the standby is still the active
//! consumer: without a hand-back, every shard would end up with whichever router restarted first
//! (after a rolling update, one router would route everything).
//!
//! **Up.** A router tells its peers it is up (`router-up:{instance}` in the store, refreshed every
//! [`HEARTBEAT_EVERY`], gone after [`HEARTBEAT_TTL`]) only once it has registered on all its own
//! shards, so that a router that is up is waiting on each of them.
//!
//! **Hand-back.** A router that receives a message on a shard whose owner is up hands the shard
//! back: it writes the shard's hand-back mark (`shard-hand-back:{shard}`) and holds its
//! acknowledgements back until the broker stops sending (a delivery on its way when the consumer
//! is cancelled would go back to the queue behind what the owner already has). Then it cancels
//! its consumer (the broker makes the next waiting consumer active at once), routes and
//! acknowledges what the broker had sent it, removes the mark, and registers again at the end of
//! the queue's waiting consumers (`workers::run_shard`).
//!
//! **Waiting.** A consumer's first delivery may come from a queue that another router is still
//! handing back: the broker activates the next consumer before the old one has settled what it
//! holds, and the new one gets the messages behind those. So before routing its first delivery, a
//! consumer waits while another router's mark is on the shard. So does a consumer whose
//! connection dropped and was recovered, before its first delivery after that: while it was away,
//! the standby may have become active and begun handing the shard back to it. The handing router refreshes its
//! mark while it drains ([`MARK_TTL`]), so a router that dies mid-hand-back holds the shard up
//! for at most that long.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use switchyard_core::store::{Store, StoreError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often a router refreshes its "up" key and reads its peers'.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// How long a router counts as up after its last heartbeat.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(10);
/// How long a hand-back mark lasts unless its router refreshes it (every third of this).
pub const MARK_TTL: Duration = Duration::from_secs(10);
/// After handing a shard back, the router does not hand the same shard back again for this
/// long (if the owner was not in fact waiting on it, the shard came straight back).
pub const HAND_BACK_COOLDOWN: Duration = Duration::from_secs(10);
/// How often a waiting consumer looks at the mark again.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// This router's place among the routers sharing the inbound shards.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    instance: u16,
    instances: u16,
    /// Whether taken-over shards are handed back to their owners.
    hand_back: bool,
    /// Per instance: whether its heartbeat was fresh when last read.
    up: Vec<AtomicBool>,
}

impl Peers {
    /// Router `instance` of `instances` (at least 1); `hand_back` enables handing taken-over
    /// shards back to their owners.
    pub fn new(store: Arc<dyn Store>, instance: u16, instances: u16, hand_back: bool) -> Self {
        Peers {
            inner: Arc::new(Inner {
                store,
                instance,
                instances: instances.max(1),
                hand_back,
                up: (0..instances.max(1))
                    .map(|_| AtomicBool::new(false))
                    .collect(),
            }),
        }
    }

    /// Whether other routers share the shards (with one router there is nothing to hand back
    /// and nobody to wait for).
    pub fn shared(&self) -> bool {
        self.inner.instances > 1
    }

    /// The router instance that owns `shard`.
    pub fn owner(&self, shard: u16) -> u16 {
        shard % self.inner.instances
    }

    /// Whether `shard` is this router's own.
    pub fn owns(&self, shard: u16) -> bool {
        self.owner(shard) == self.inner.instance
    }

    /// Whether this router, active on `shard`, should hand it back: it is another router's, and
    /// that router is up.
    pub fn should_hand_back(&self, shard: u16) -> bool {
        let owner = self.owner(shard);
        self.inner.hand_back
            && owner != self.inner.instance
            && self
                .inner
                .up
                .get(usize::from(owner))
                .is_some_and(|up| up.load(Ordering::Acquire))
    }

    /// Heart-beats until `stop`, once `own_shards` has counted down to zero (every own shard's
    /// consumer registered), and reads which peers are up. On stop, withdraws the heartbeat so
    /// that no peer hands a shard to a router that is leaving. Returns only on `stop` (a
    /// router alone, or one whose shard consumers never registered, just waits for it).
    pub async fn run(self, mut own_shards: watch::Receiver<usize>, stop: CancellationToken) {
        let registered = async {
            if !self.shared() {
                return false;
            }
            own_shards.wait_for(|left| *left == 0).await.is_ok()
        };
        let announce = tokio::select! {
            _ = stop.cancelled() => return,
            registered = registered => registered,
        };
        if !announce {
            stop.cancelled().await;
            return;
        }
        let me = self.inner.instance.to_string();
        let own_key = up_key(self.inner.instance);
        loop {
            if let Err(e) = self.beat(&own_key, &me).await {
                tracing::warn!(error = %e, "could not refresh this router's heartbeat");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            }
        }
        if let Err(e) = self.inner.store.delete_key(&own_key).await {
            tracing::warn!(error = %e, "could not withdraw this router's heartbeat; it lapses by itself");
        }
    }

    async fn beat(&self, own_key: &str, me: &str) -> Result<(), StoreError> {
        self.inner.store.set_key(own_key, me, HEARTBEAT_TTL).await?;
        for (instance, up) in (0..self.inner.instances).zip(&self.inner.up) {
            if instance == self.inner.instance {
                continue;
            }
            let alive = self.inner.store.get_key(&up_key(instance)).await?.is_some();
            if up.swap(alive, Ordering::AcqRel) != alive {
                tracing::info!(router = instance, up = alive, "router peer changed");
            }
        }
        Ok(())
    }

    /// Marks `shard` as being handed back by this router (written before the consumer is
    /// cancelled, refreshed while it drains).
    pub async fn mark_hand_back(&self, shard: u16) -> Result<(), StoreError> {
        self.inner
            .store
            .set_key(&mark_key(shard), &self.inner.instance.to_string(), MARK_TTL)
            .await
    }

    /// Removes this router's hand-back mark from `shard`: everything it held there is settled.
    pub async fn unmark_hand_back(&self, shard: u16) -> Result<(), StoreError> {
        self.inner
            .store
            .release_key(&mark_key(shard), &self.inner.instance.to_string())
            .await
            .map(|_| ())
    }

    /// Waits while another router's hand-back mark is on `shard` (until it is removed or
    /// expires, or `stop`); returns whether it waited. While the store does not answer, it keeps
    /// waiting: routing could not go on either.
    pub async fn wait_for_hand_back(&self, shard: u16, stop: &CancellationToken) -> bool {
        let key = mark_key(shard);
        let me = self.inner.instance.to_string();
        let mut waited = false;
        loop {
            match self.inner.store.get_key(&key).await {
                Ok(None) => return waited,
                // A mark of this router's own is stale (left by its previous run).
                Ok(Some(holder)) if holder == me => return waited,
                Ok(Some(holder)) => {
                    if !waited {
                        tracing::info!(shard, from = %holder, "waiting for a router to finish handing this shard back");
                    }
                }
                Err(e) => tracing::debug!(shard, error = %e, "cannot read the hand-back mark yet"),
            }
            waited = true;
            tokio::select! {
                _ = stop.cancelled() => return waited,
                _ = tokio::time::sleep(WAIT_POLL) => {}
            }
        }
    }
}

fn up_key(instance: u16) -> String {
    format!("router-up:{instance}")
}

fn mark_key(shard: u16) -> String {
    format!("shard-hand-back:{shard}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::store::embedded::EmbeddedStore;

    fn peers(store: &Arc<dyn Store>, instance: u16, instances: u16) -> Peers {
        Peers::new(Arc::clone(store), instance, instances, true)
    }

    #[test]
    fn shards_belong_to_instance_by_remainder() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
        let p = peers(&store, 1, 3);
        assert_eq!(
            (0..6).map(|s| p.owner(s)).collect::<Vec<_>>(),
            [0, 1, 2, 0, 1, 2]
        );
        assert!(p.owns(4) && !p.owns(3));
        assert!(p.shared());
        assert!(!peers(&store, 0, 1).shared());
    }

    /// A component that ends stops the process, so `run` ends only on stop, whether it
    /// heart-beats (a group) or has nothing to do (a router alone).
    #[tokio::test]
    async fn run_ends_only_on_stop() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
        for (instances, announced) in [(1, false), (2, true)] {
            let stop = CancellationToken::new();
            let (_registered, own_shards) = watch::channel(0);
            let task = tokio::spawn(peers(&store, 0, instances).run(own_shards, stop.clone()));
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(
                !task.is_finished(),
                "{instances} router(s): run ended by itself"
            );
            assert_eq!(
                store.get_key(&up_key(0)).await.expect("get").is_some(),
                announced,
                "{instances} router(s)"
            );
            stop.cancel();
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("run ends on stop")
                .expect("join");
            assert!(
                store.get_key(&up_key(0)).await.expect("get").is_none(),
                "the heartbeat is withdrawn on stop"
            );
        }
    }

    #[tokio::test]
    async fn hands_back_only_to_an_owner_that_is_up() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
        let (zero, one) = (peers(&store, 0, 2), peers(&store, 1, 2));
        let disabled = Peers::new(Arc::clone(&store), 1, 2, false);
        assert!(!one.should_hand_back(0), "owner 0 has not said it is up");
        zero.beat(&up_key(0), "0").await.expect("beat");
        one.beat(&up_key(1), "1").await.expect("beat");
        disabled.beat(&up_key(1), "1").await.expect("beat");
        assert!(one.should_hand_back(0), "owner 0 is up");
        assert!(!one.should_hand_back(1), "shard 1 is router 1's own");
        assert!(!disabled.should_hand_back(0), "hand-back turned off");
        store.delete_key(&up_key(0)).await.expect("delete");
        one.beat(&up_key(1), "1").await.expect("beat");
        assert!(!one.should_hand_back(0), "owner 0 is gone");
    }

    #[tokio::test]
    async fn a_new_consumer_waits_while_another_router_hands_the_shard_back() {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
        let (zero, one) = (peers(&store, 0, 2), peers(&store, 1, 2));
        let stop = CancellationToken::new();
        assert!(!zero.wait_for_hand_back(0, &stop).await, "no mark: no wait");
        one.mark_hand_back(0).await.expect("mark");
        assert!(
            !one.wait_for_hand_back(0, &stop).await,
            "a router's own mark does not hold it up"
        );
        let waiter = tokio::spawn({
            let (zero, stop) = (zero.clone(), stop.clone());
            async move { zero.wait_for_hand_back(0, &stop).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !waiter.is_finished(),
            "router 0 went on while router 1's mark was on"
        );
        zero.unmark_hand_back(0).await.expect("unmark");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiter.is_finished(), "router 0 removed router 1's mark");
        one.unmark_hand_back(0).await.expect("unmark");
        let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("router 0 went on once the mark was gone")
            .expect("join");
        assert!(waited);
    }
}
