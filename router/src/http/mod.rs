//! The HTTP surface (DESIGN.md "HTTP surface"): channel endpoints, WebSockets, REST, operations
//! endpoints and the two pages. Every error is `{"error": {"code", "message"}}` and counted.

mod agent_ws;
mod agents_cache;
mod auth;
mod byte_range;
mod channels;
mod customer_patch;
mod dead_letters;
mod error;
mod hours;
mod listings;
mod media;
mod ops;
mod queue_flow;
mod queue_position;
mod rest;
mod visitor_history;
mod visitor_ws;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post, put};
use switchyard_connectors::Registry;
use switchyard_core::hours::Hours;
use switchyard_core::metrics::Metrics;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

pub use agents_cache::AgentsCache;
pub use error::ApiError;
pub use queue_position::QueuePositions;

use crate::dead_letters::DeadLetters;
use crate::hub::AgentHub;
use crate::ingress::Ingress;
use crate::operations::Operations;

/// Everything the handlers need, behind one `Arc`: axum clones the state for every request and
/// every middleware layer, so a clone must be one reference count, not a copy of every field.
#[derive(Clone)]
pub struct HttpState(Arc<HttpContext>);

impl HttpState {
    /// Shares `context` with every handler.
    pub fn new(context: HttpContext) -> Self {
        HttpState(Arc::new(context))
    }
}

impl std::ops::Deref for HttpState {
    type Target = HttpContext;

    fn deref(&self) -> &HttpContext {
        &self.0
    }
}

/// What [`HttpState`] shares.
pub struct HttpContext {
    /// Channel connectors.
    pub registry: Registry,
    /// Ingress pipeline.
    pub ingress: Ingress,
    /// Agent and conversation commands.
    pub ops: Operations,
    /// The dead-letter queue, for administrators.
    pub dead_letters: DeadLetters,
    /// Connected agents.
    pub hub: Arc<AgentHub>,
    /// Metrics.
    pub metrics: Metrics,
    /// API keys: `(name, key, scopes)`.
    pub api_keys: Arc<Vec<(String, String, Vec<String>)>>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Cancelled on shutdown; WebSocket sessions end on it.
    pub shutdown: CancellationToken,
    /// Tracks WebSocket tasks so shutdown can wait for them.
    pub sockets: TaskTracker,
    /// Agent presence TTL (`router.presence_ttl_secs`): the agent WebSocket heart-beats every
    /// third of it while an agent is connected; zero turns heartbeats off.
    pub presence_ttl: Duration,
    /// The business hours of the pools that have them (`[pools.hours]`), by pool id.
    pub pool_hours: Arc<HashMap<String, Hours>>,
    /// How each configured pool assigns, by pool id, for routing explanations.
    pub pool_policies: Arc<HashMap<String, crate::explain::PoolPolicy>>,
    /// Every agent, read at most once a second for the pools' figures.
    pub agents: AgentsCache,
}

impl HttpContext {
    /// [`Operations::put_agent`], after which this gateway's pool figures count the change.
    pub async fn put_agent(
        &self,
        update: switchyard_core::store::AgentUpdate,
    ) -> Result<switchyard_core::model::Agent, crate::error::RouteError> {
        let agent = self.ops.put_agent(update).await;
        self.agents.invalidate();
        agent
    }
}

/// The operations endpoints alone (`/healthz`, `/readyz`, `/metrics`), for router processes.
pub fn ops_app(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .with_state(state)
}

/// Builds the axum application.
pub fn app(state: HttpState) -> Router {
    // Bodies are read with a limit one byte above the maximum so an oversized body is detected
    // by the handler and answered with a JSON 413 (not axum's plain-text one).
    let limit = state.max_body_bytes.saturating_add(1);
    Router::new()
        .route("/", get(ops::visitor_page))
        .route("/agent", get(ops::agent_page))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route(
            "/v1/channels/{channel_id}/webhook",
            get(channels::webhook).post(channels::webhook),
        )
        .route(
            "/v1/channels/{channel_id}/messages",
            post(channels::messages),
        )
        .route("/v1/channels/{channel_id}/ws", any(visitor_ws::upgrade))
        .route("/v1/channels/{channel_id}/rules", get(channels::rules))
        .route("/v1/agents/ws", any(agent_ws::upgrade))
        .route("/v1/agents", get(rest::list_agents))
        .route("/v1/agents/{id}", put(rest::put_agent).get(rest::get_agent))
        .route(
            "/v1/agents/{id}/conversations",
            get(rest::agent_conversations),
        )
        .route("/v1/conversations/{id}", get(rest::get_conversation))
        .route("/v1/conversations/{id}/messages", post(rest::reply))
        .route("/v1/conversations/{id}/close", post(rest::close))
        .route("/v1/conversations/{id}/transfer", post(rest::transfer))
        .route("/v1/conversations/{id}/routing", get(rest::routing))
        .route("/v1/conversations/{id}/accept", post(rest::accept_offer))
        .route("/v1/conversations/{id}/decline", post(rest::decline_offer))
        .route("/v1/customers", get(rest::lookup_customer))
        .route(
            "/v1/customers/{id}",
            get(rest::get_customer)
                .patch(rest::update_customer)
                .delete(rest::erase_customer),
        )
        .route("/v1/customers/{id}/identities", post(rest::link_identity))
        .route("/v1/customers/{id}/merge", post(rest::merge_customer))
        .route(
            "/v1/customers/{id}/conversations",
            get(listings::customer_conversations),
        )
        .route("/v1/customers/{id}/messages", post(rest::write_first))
        .route("/v1/pools/{id}/queue", get(rest::pool_queue))
        .route("/v1/pools/{id}/hours", get(hours::pool_hours))
        .route("/v1/pools/{id}/stats", get(rest::pool_stats))
        .route(
            "/v1/pools/{id}/conversations",
            get(listings::pool_conversations),
        )
        .route("/v1/media/{channel_id}/{media_id}", get(media::get_media))
        .route("/v1/dead-letters", get(dead_letters::list))
        .route("/v1/dead-letters/replay", post(dead_letters::replay))
        .route("/v1/dead-letters/discard", post(dead_letters::discard))
        .fallback(ops::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            error::count_errors,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(30),
        ))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .with_state(state)
}
