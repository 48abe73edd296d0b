//! Composition: builds the bus, store, connectors and workers from [`Settings`] and runs the
//! roles of one process (`serve` = all, `gateway`, `router`), with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use switchyard_connectors::web;
use switchyard_connectors::{ConnectorContext, Registry};
use switchyard_core::bus::amqp::AmqpBus;
use switchyard_core::bus::embedded::EmbeddedBus;
use switchyard_core::bus::topology::{
    TopologyOptions, WebhookRoute, inbound_queue, outbound_queue,
};
use switchyard_core::bus::{Bus, Topology};
use switchyard_core::config::{BOT_EVENTS, BusKind, Settings, StoreKind};
use switchyard_core::metrics::Metrics;
use switchyard_core::redaction::Redaction;
use switchyard_core::store::Store;
use switchyard_core::store::embedded::EmbeddedStore;
use switchyard_core::store::redis::server::Severity;
use switchyard_core::store::redis::{RedisStore, RedisTarget};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::assignment::{sample_queue_depth, sweep_lapsed_agents};
use crate::auto_reply::AutoReplies;
use crate::dead_letters::{DeadLetters, sample_dead_letters};
use crate::events::EventPublisher;
use crate::http::{AgentsCache, HttpContext, HttpState, QueuePositions, app, ops_app};
use crate::hub::AgentHub;
use crate::inbound::InboundRouter;
use crate::ingress::Ingress;
use crate::operations::Operations;
use crate::outbox::{Outbox, STAGED_GRACE, run_republisher};
use crate::peers::Peers;
use crate::retention::{sweep_closed_conversations, sweep_quiet_customers};
use crate::routes::{RoutingTable, bot_pools, last_agent_pools, offer_secs_by_pool};
use crate::timers::{
    AnswerTimeout, BotTimeout, OFFER_SWEEP, PoolTimeout, QueueOverflow, close_idle_conversations,
    hand_off_silent_bots, overflow_queues, sweep_interval, take_back_expired_offers,
    take_back_unanswered,
};
use crate::webhooks::Webhook;
use crate::workers::{Outbound, ShardWorker, run_channel_sync, run_outbound, run_shard};

/// How often a router sets offline the agents whose presence lapsed (and announces them).
const PRESENCE_SWEEP: Duration = Duration::from_secs(5);
/// How often routers delete the conversations past `store.retention_days`, and erase the
/// customers past `store.customer_retention_days`.
const RETENTION_SWEEP: Duration = Duration::from_secs(60);
/// How often each process looks for batches the bus refused, to republish them (see
/// [`crate::outbox`]).
const OUTBOX_REPUBLISH: Duration = Duration::from_secs(5);

/// Which parts of Switchyard a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Gateway and router in one process.
    All,
    /// HTTP/WebSocket ingress, REST, agent hub, outbound senders.
    Gateway,
    /// Inbound shard consumers.
    Router,
}

impl Role {
    /// The role's name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::All => "serve",
            Role::Gateway => "gateway",
            Role::Router => "router",
        }
    }

    fn gateway(self) -> bool {
        matches!(self, Role::All | Role::Gateway)
    }
    fn router(self) -> bool {
        matches!(self, Role::All | Role::Router)
    }
}

/// A running Switchyard process.
pub struct App {
    /// Where the HTTP server listens (gateway roles).
    pub addr: Option<SocketAddr>,
    /// The metrics registry.
    pub metrics: Metrics,
    /// The bus.
    pub bus: Arc<dyn Bus>,
    /// The store.
    pub store: Arc<dyn Store>,
    /// The HTTP application the server runs (see [`App::http_service`]).
    service: axum::Router,
    shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
    sockets: TaskTracker,
    grace: Duration,
    /// Set by [`App::exit_after_stop`].
    exit_after_stop: Arc<AtomicBool>,
}

/// Connects to the RabbitMQ of `settings` (`bus.kind = "amqp"`) as `switchyard-{what}-{pid}`.
pub async fn connect_amqp(settings: &Settings, what: &str) -> anyhow::Result<AmqpBus> {
    let url = settings
        .bus
        .url
        .as_deref()
        .context("bus.url is required when bus.kind = \"amqp\"")?;
    let name = format!("switchyard-{what}-{}", std::process::id());
    let tls = settings.bus.tls_files().read()?;
    let publish_timeout = Duration::from_millis(settings.bus.publish_timeout_ms);
    Ok(AmqpBus::connect_with_tls(url, &name, "", publish_timeout, &tls).await?)
}

/// Connects to the Redis of `settings` (`store.kind = "redis"`), by URL or through Sentinel.
pub async fn connect_redis(settings: &Settings) -> anyhow::Result<RedisStore> {
    let tls = settings.store.tls_files().read()?;
    let target = match &settings.store.sentinel {
        Some(sentinel) => RedisTarget::Sentinel {
            master: sentinel.master.clone(),
            nodes: sentinel.nodes.clone(),
            url: settings.store.url.clone(),
            tls,
        },
        None => RedisTarget::Url {
            url: settings.store.url.clone().context(
                "store.url is required when store.kind = \"redis\" without store.sentinel",
            )?,
            tls,
        },
    };
    Ok(RedisStore::connect_to(&target, &settings.store.key_prefix).await?)
}

/// Refuses a Redis server the store cannot work on (too old, cluster mode, a replica) and logs
/// the risks of the others (eviction, no append-only file). A server that does not answer
/// `INFO` (an ACL may forbid it) is used unchecked, with a warning.
async fn check_redis_server(store: &RedisStore) -> anyhow::Result<()> {
    let findings = match store.server_info().await {
        Ok(info) => info.findings(),
        Err(e) => {
            tracing::warn!(error = %e, "could not read the Redis server's INFO; its version and settings are not checked");
            return Ok(());
        }
    };
    for finding in findings {
        match finding.severity {
            Severity::Error => anyhow::bail!(
                "the Redis server cannot hold the store: {}",
                finding.message
            ),
            Severity::Warning => tracing::warn!("Redis: {}", finding.message),
        }
    }
    Ok(())
}

impl App {
    /// Builds everything `settings` describe and starts `role`; returns once listening.
    pub async fn start(settings: Settings, role: Role) -> anyhow::Result<App> {
        if role != Role::All
            && (settings.bus.kind == BusKind::Embedded
                || settings.store.kind == StoreKind::Embedded)
        {
            anyhow::bail!(
                "`switchyard {}` runs one role of a split deployment, which shares state through \
                 RabbitMQ and Redis: set bus.kind = \"amqp\" and store.kind = \"redis\", or run \
                 `switchyard serve` for everything in one process",
                role.name()
            );
        }
        let metrics = Metrics::new().context("creating the metrics registry")?;
        let publish_timeout = Duration::from_millis(settings.bus.publish_timeout_ms);
        let bus: Arc<dyn Bus> = match settings.bus.kind {
            BusKind::Embedded => Arc::new(EmbeddedBus::new(publish_timeout)),
            BusKind::Amqp => Arc::new(connect_amqp(&settings, role.name()).await?),
        };
        let store: Arc<dyn Store> = match settings.store.kind {
            StoreKind::Embedded => Arc::new(EmbeddedStore::new()),
            StoreKind::Redis => {
                let store = connect_redis(&settings).await?;
                check_redis_server(&store).await?;
                Arc::new(store)
            }
        };
        Self::start_with(settings, role, bus, store, metrics).await
    }

    /// Starts `role` on a given bus and store (tests and alternative backends).
    pub async fn start_with(
        settings: Settings,
        role: Role,
        bus: Arc<dyn Bus>,
        store: Arc<dyn Store>,
        metrics: Metrics,
    ) -> anyhow::Result<App> {
        store.set_least_busy_pools(&settings.least_busy_pools());
        let registry = Registry::build(
            &settings.channels,
            &ConnectorContext::new(Arc::clone(&store)),
        )
        .context("building channel connectors")?;
        let mut outbound_kinds = registry.kinds();
        outbound_kinds.sort();
        let topology = Topology::standard(&TopologyOptions {
            shards: settings.bus.shards,
            queue_capacity: settings.bus.queue_capacity,
            delivery_limit: settings.bus.delivery_limit,
            outbound_kinds: outbound_kinds.clone(),
            publish_timeout: Duration::from_millis(settings.bus.publish_timeout_ms),
            events_stream_max_age: settings.bus.events_stream_max_age.clone(),
            webhooks: settings
                .webhooks
                .iter()
                .map(|hook| WebhookRoute::webhook(&hook.id, &hook.events))
                .chain(
                    settings
                        .bots
                        .iter()
                        .map(|bot| WebhookRoute::bot(&bot.id, BOT_EVENTS)),
                )
                .collect(),
        });
        bus.declare(&topology)
            .await
            .context("declaring the bus topology")?;
        let events = EventPublisher::new(Arc::clone(&bus));
        // A staged reply's own publish gets well over its timeout before it is sent again.
        let staged_grace =
            STAGED_GRACE.max(3 * Duration::from_millis(settings.bus.publish_timeout_ms));
        let outbox = Outbox::new(Arc::clone(&bus), Arc::clone(&store), metrics.clone())
            .with_staged_grace(staged_grace);
        let ops = Operations::new(
            Arc::clone(&store),
            registry.clone(),
            outbox.clone(),
            metrics.clone(),
            settings.router.history_limit,
        )
        .with_pools(settings.pool_ids())
        .with_offers(offer_secs_by_pool(&settings))
        .with_last_agent_pools(last_agent_pools(&settings))
        .with_bot_pools(bot_pools(&settings))
        .with_channel_pools(
            settings
                .channels
                .iter()
                .map(|c| (c.id.clone(), c.pool.clone()))
                .collect(),
        );
        let shutdown = CancellationToken::new();
        let exit_after_stop = Arc::new(AtomicBool::new(false));
        let sockets = TaskTracker::new();
        let mut tasks: JoinSet<anyhow::Result<()>> = JoinSet::new();
        let pool_hours = settings.pool_hours()?;

        if role.router() {
            let router = InboundRouter::new(
                Arc::clone(&store),
                events.clone(),
                metrics.clone(),
                RoutingTable::from_settings(&settings)?,
                settings.pool_ids(),
                Duration::from_secs(settings.store.dedupe_ttl_secs),
                settings.router.max_in_flight,
            );
            let router = if pool_hours.is_empty() {
                router
            } else {
                router.with_auto_replies(AutoReplies::new(
                    pool_hours.clone(),
                    ops.clone(),
                    metrics.clone(),
                ))
            };
            let peers = Peers::new(
                Arc::clone(&store),
                settings.router.instance,
                settings.router.instances,
                settings.router.hand_back_shards,
            );
            let own_shards = (0..settings.bus.shards)
                .filter(|&shard| peers.owns(shard))
                .count();
            let (registered, own_registered) = watch::channel(own_shards);
            for shard in 0..settings.bus.shards {
                let worker = ShardWorker {
                    bus: Arc::clone(&bus),
                    shard,
                    queue: inbound_queue(shard),
                    prefetch: settings.bus.prefetch,
                    attempts: settings.router.attempts,
                    router: router.clone(),
                    metrics: metrics.clone(),
                    peers: peers.clone(),
                };
                let (stop, exit) = (shutdown.clone(), Arc::clone(&exit_after_stop));
                let own = peers.owns(shard);
                let registered = own.then(|| registered.clone());
                let standby_delay = Duration::from_millis(if own {
                    0
                } else {
                    settings.router.standby_delay_ms
                });
                tasks.spawn(async move {
                    // Register late on other routers' shards: the first consumer is the active one.
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(standby_delay) => {}
                    }
                    run_shard(worker, registered, stop, exit)
                        .await
                        .with_context(|| format!("inbound shard {shard} consumer"))
                });
            }
            drop(registered);
            let stop = shutdown.clone();
            tasks.spawn(async move {
                peers.run(own_registered, stop).await;
                Ok(())
            });
        }

        {
            let (store, metrics, pools, stop) = (
                Arc::clone(&store),
                metrics.clone(),
                settings.pool_ids(),
                shutdown.clone(),
            );
            tasks.spawn(async move {
                sample_queue_depth(store, metrics, pools, Duration::from_secs(5), stop)
                    .await
                    .context("queue depth sampler")
            });
        }
        {
            let (bus, metrics, stop) = (Arc::clone(&bus), metrics.clone(), shutdown.clone());
            tasks.spawn(async move {
                sample_dead_letters(bus, metrics, Duration::from_secs(5), stop).await;
                Ok(())
            });
        }
        if role.router() {
            let timers = Timers {
                tasks: &mut tasks,
                store: &store,
                ops: &ops,
                metrics: &metrics,
                stop: &shutdown,
            };
            timers.spawn_all(&settings);
        }
        if role.router() && settings.store.retention_days > 0 {
            let keep = Duration::from_secs(u64::from(settings.store.retention_days) * 24 * 3600);
            let (store, metrics, stop) = (Arc::clone(&store), metrics.clone(), shutdown.clone());
            tasks.spawn(async move {
                sweep_closed_conversations(store, metrics, keep, RETENTION_SWEEP, stop).await;
                Ok(())
            });
        }
        if role.router() && settings.store.customer_retention_days > 0 {
            let keep =
                Duration::from_secs(u64::from(settings.store.customer_retention_days) * 24 * 3600);
            let (ops, stop) = (ops.clone(), shutdown.clone());
            tasks.spawn(async move {
                sweep_quiet_customers(ops, keep, RETENTION_SWEEP, stop).await;
                Ok(())
            });
        }
        if role.router() {
            let (store, sweep_outbox, stop) =
                (Arc::clone(&store), outbox.clone(), shutdown.clone());
            tasks.spawn(async move {
                sweep_lapsed_agents(store, sweep_outbox, PRESENCE_SWEEP, stop)
                    .await
                    .context("presence sweeper")
            });
        }
        {
            // Every role: gateways defer what their commands publish, routers what their
            // sweeps do; one process at a time republishes.
            let (outbox, stop) = (outbox.clone(), shutdown.clone());
            tasks.spawn(async move {
                run_republisher(outbox, OUTBOX_REPUBLISH, stop)
                    .await
                    .context("outbox republisher")
            });
        }
        let hub = Arc::new(AgentHub::default());
        if role.gateway() {
            let outbound = Outbound {
                attempts: settings.router.attempts,
                delivery_limit: settings.bus.delivery_limit,
                registry: registry.clone(),
                outbox: outbox.clone(),
                store: Arc::clone(&store),
                sent_ttl: Duration::from_secs(settings.store.dedupe_ttl_secs),
                metrics: metrics.clone(),
            };
            for kind in &outbound_kinds {
                let (bus, outbound, stop) = (Arc::clone(&bus), outbound.clone(), shutdown.clone());
                let queue = outbound_queue(kind);
                tasks.spawn(async move {
                    run_outbound(bus, queue.clone(), outbound, stop)
                        .await
                        .with_context(|| format!("outbound consumer of `{queue}`"))
                });
            }
            let hooks = settings
                .webhooks
                .iter()
                .map(|hook| Webhook::new(hook, metrics.clone()))
                .chain(
                    settings
                        .bots
                        .iter()
                        .map(|bot| Webhook::for_bot(bot, metrics.clone())),
                )
                .collect::<Result<Vec<_>, _>>()
                .context("configuring webhooks and bots")?;
            for hook in hooks {
                let (bus, stop, name) = (Arc::clone(&bus), shutdown.clone(), hook.name());
                tasks.spawn(async move {
                    hook.run(bus, stop)
                        .await
                        .with_context(|| format!("webhook `{name}`"))
                });
            }
            // Only channels that keep platform session state (WeCom) follow conversation events;
            // without one, the gateway does not subscribe to them at all.
            if registry.iter().any(|c| c.follows_conversations()) {
                let (bus, registry, stop) = (Arc::clone(&bus), registry.clone(), shutdown.clone());
                tasks.spawn(async move {
                    run_channel_sync(bus, registry, stop)
                        .await
                        .context("channel conversation sync")
                });
            }
            // Web channels: replies are kept in the store and announced to every gateway, which
            // pushes them to its own visitor sockets (subscribing once a visitor connects).
            let mut webs = Vec::new();
            for channel in settings.channels.iter().filter(|c| c.kind == web::KIND) {
                let Some(connector) = registry.web(&channel.id) else {
                    continue;
                };
                webs.push(Arc::clone(connector));
                if role == Role::Gateway && connector.signs_with_process_key() {
                    tracing::warn!(
                        channel = %channel.id,
                        "web channel has no `secret`: visitor tokens are signed with a key made \
                         at start, valid only on this gateway and until it restarts; with several \
                         gateways, set channels.{}.secret (or secret_env)",
                        channel.id
                    );
                }
                connector.attach_bus(Arc::clone(&bus));
                let (connector, stop, id) =
                    (Arc::clone(connector), shutdown.clone(), channel.id.clone());
                tasks.spawn(async move {
                    connector
                        .run_push(stop.cancelled_owned())
                        .await
                        .with_context(|| format!("reply push of web channel `{id}`"))
                });
            }
            // Web visitors waiting in a queue are told their place: one task for every web
            // channel, idle while no visitor is connected.
            if let Some(positions) = QueuePositions::new(
                webs,
                settings.pool_ids(),
                Arc::clone(&store),
                metrics.clone(),
            ) {
                let stop = shutdown.clone();
                tasks.spawn(async move {
                    positions.run(stop).await;
                    Ok(())
                });
            }
            let (hub, bus, ops, stop) = (
                Arc::clone(&hub),
                Arc::clone(&bus),
                ops.clone(),
                shutdown.clone(),
            );
            tasks.spawn(async move { hub.run(bus, ops, stop).await.context("agent hub") });
        }
        let ingress = Ingress::new(
            Arc::clone(&bus),
            Arc::clone(&store),
            metrics.clone(),
            settings.bus.shards,
            Duration::from_secs(settings.store.dedupe_ttl_secs),
        )
        .with_redaction(Redaction::from_settings(&settings).context("redaction rules")?);
        let state = HttpState::new(HttpContext {
            registry,
            ingress,
            ops,
            dead_letters: DeadLetters::new(Arc::clone(&bus), metrics.clone()),
            hub,
            metrics: metrics.clone(),
            api_keys: Arc::new(settings.api_keys().context("resolving API keys")?),
            max_body_bytes: settings.server.max_body_bytes,
            shutdown: shutdown.clone(),
            sockets: sockets.clone(),
            presence_ttl: Duration::from_secs(settings.router.presence_ttl_secs),
            pool_hours: Arc::new(pool_hours.into_iter().collect()),
            pool_policies: Arc::new(crate::explain::pool_policies(&settings)),
            agents: AgentsCache::default(),
        });
        // Routers serve only the operations endpoints (probes and metrics).
        let router = if role.gateway() {
            app(state)
        } else {
            ops_app(state)
        };
        let listener = TcpListener::bind(settings.server.listen)
            .await
            .with_context(|| format!("binding {}", settings.server.listen))?;
        let local = listener
            .local_addr()
            .context("reading the listen address")?;
        let addr = Some(local);
        let stop = shutdown.clone();
        let service = router.clone();
        tasks.spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .context("HTTP server")
        });

        Ok(App {
            addr,
            metrics,
            bus,
            store,
            service,
            shutdown,
            tasks,
            sockets,
            grace: Duration::from_secs(settings.server.shutdown_grace_secs),
            exit_after_stop,
        })
    }

    /// Declares that the process exits once this app has stopped (the binary does; tests that
    /// run several apps in one process do not). The inbound shard consumers then
    /// [leave](switchyard_core::bus::Deliveries::leave) instead of closing, and the bus
    /// connection ends with the process, so that RabbitMQ gives a standby router the messages
    /// this router held but had not started before any later ones, keeping each user's order.
    pub fn exit_after_stop(&self) {
        self.exit_after_stop.store(true, Ordering::Release);
    }

    /// The HTTP application the server runs, to call in-process without a socket (benchmarks
    /// that measure the pipeline without the HTTP transport, tests): every request it answers
    /// goes through the same middleware, handlers, bus and store as one that came over TCP.
    pub fn http_service(&self) -> axum::Router {
        self.service.clone()
    }

    /// A token that stops the process when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs until a task fails (an error) or shutdown is requested and everything drained.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let failure = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => None,
            Some(result) = self.tasks.join_next() => Some(result),
        };
        // A component that ended cleanly because shutdown began is not a failure.
        let failure = match failure {
            Some(Ok(Ok(()))) if self.shutdown.is_cancelled() => None,
            other => other,
        };
        self.shutdown.cancel();
        let result = match failure {
            Some(Ok(Ok(()))) => Err(anyhow::anyhow!("a component stopped unexpectedly")),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(join)) => Err(anyhow::anyhow!("a component panicked: {join}")),
            None => Ok(()),
        };
        self.drain().await;
        result
    }

    /// Stops accepting, lets consumers finish the message in hand, closes sockets, then the bus.
    async fn drain(&mut self) {
        if self.exit_after_stop.load(Ordering::Acquire) {
            self.bus.exiting();
        }
        self.sockets.close();
        let grace = self.grace;
        let drained = tokio::time::timeout(grace, async {
            while let Some(joined) = self.tasks.join_next().await {
                if let Ok(Err(e)) = joined {
                    tracing::warn!(error = %e, "component stopped with an error during shutdown");
                }
            }
            self.sockets.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(?grace, "shutdown grace period ended; aborting what is left");
            self.tasks.abort_all();
        }
        self.bus.close().await;
    }

    /// Requests shutdown and waits for the drain.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.run().await
    }
}

/// The router's periodic sweeps of pools (bot timeouts, offer expiry, idle closes, answer
/// timeouts, queue overflows), each spawned only when some pool needs it.
struct Timers<'a> {
    tasks: &'a mut JoinSet<anyhow::Result<()>>,
    store: &'a Arc<dyn Store>,
    ops: &'a Operations,
    metrics: &'a Metrics,
    stop: &'a CancellationToken,
}

impl Timers<'_> {
    fn spawn_all(mut self, settings: &Settings) {
        self.spawn(BotTimeout::of(settings), |t| t.after, hand_off_silent_bots);
        if self.ops.makes_offers() {
            let (ops, stop) = (self.ops.clone(), self.stop.clone());
            self.tasks.spawn(async move {
                take_back_expired_offers(ops, OFFER_SWEEP, stop).await;
                Ok(())
            });
        }
        self.spawn(
            PoolTimeout::idle_closes(settings),
            |t| t.after,
            close_idle_conversations,
        );
        self.spawn(
            AnswerTimeout::of(settings),
            |t| t.after,
            take_back_unanswered,
        );
        self.spawn(QueueOverflow::of(settings), |t| t.after, overflow_queues);
    }

    /// Spawns `sweep` over `timers`, every quarter of the shortest of their times (see
    /// [`sweep_interval`]); nothing when there are none.
    fn spawn<T, Fut>(
        &mut self,
        timers: Vec<T>,
        after: impl Fn(&T) -> Duration,
        sweep: impl FnOnce(
            Arc<dyn Store>,
            Operations,
            Metrics,
            Vec<T>,
            Duration,
            CancellationToken,
        ) -> Fut,
    ) where
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if timers.is_empty() {
            return;
        }
        let every = sweep_interval(timers.iter().map(after));
        let sweeping = sweep(
            Arc::clone(self.store),
            self.ops.clone(),
            self.metrics.clone(),
            timers,
            every,
            self.stop.clone(),
        );
        self.tasks.spawn(async move {
            sweeping.await;
            Ok(())
        });
    }
}
