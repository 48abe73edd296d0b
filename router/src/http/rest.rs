//! REST: agents, conversations, customers, pools (DESIGN.md "REST essentials").

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use switchyard_core::config::bot_agent_id;
use switchyard_core::envelope::Content;
use switchyard_core::handover::HandoverContext;
use switchyard_core::identity::IdentityKey;
use switchyard_core::model::{
    AgentStatus, ConversationStatus, MAX_TAG_CHARS, Skills, is_valid_skill,
};
use switchyard_core::store::{AgentUpdate, QueueTarget, TransferTarget, Withdrawal};

use super::customer_patch::CustomerPatch;
use super::{ApiError, HttpState};

/// Parses a JSON request body: 415 without a JSON content type, 413 when too large, 400 with
/// serde's explanation (and the path of the bad field) when invalid.
pub(super) fn json_body<T: DeserializeOwned>(
    state: &HttpState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.starts_with("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type must be application/json, not `{content_type}`"),
        ));
    }
    let bytes = match body {
        Ok(b) if b.len() <= state.max_body_bytes => b,
        Ok(_) => {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("body exceeds {} bytes", state.max_body_bytes),
            ));
        }
        Err(r) => return Err(ApiError::new(r.status(), "malformed", r.body_text())),
    };
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at `{path}`")
        };
        ApiError::bad_request("malformed", format!("invalid JSON body{at}: {inner}"))
    })
}

/// Body of `PUT /v1/agents/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutAgent {
    name: Option<String>,
    pools: Option<Vec<String>>,
    skills: Option<Vec<String>>,
    capacity: Option<u32>,
    status: Option<AgentStatus>,
}

/// `PUT /v1/agents/{id}`.
pub async fn put_agent(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: PutAgent = json_body(&state, &headers, body)?;
    if id.is_empty() || id.len() > 128 {
        return Err(ApiError::bad_request(
            "invalid",
            "agent id must be 1 to 128 bytes",
        ));
    }
    if let Some(skills) = &body.skills {
        check_skill_names(skills)?;
    }
    if body.capacity.is_some_and(|c| c > 1000) {
        return Err(ApiError::bad_request(
            "invalid",
            "capacity must be at most 1000",
        ));
    }
    let agent = state
        .put_agent(AgentUpdate {
            id,
            name: body.name,
            pools: body.pools,
            skills: body.skills,
            capacity: body.capacity,
            status: body.status,
        })
        .await?;
    Ok(Json(agent).into_response())
}

/// `GET /v1/agents/{id}`.
pub async fn get_agent(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let agent = state
        .ops
        .store()
        .agent(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("agent `{id}` not found")))?;
    Ok(Json(agent).into_response())
}

/// `GET /v1/agents`.
pub async fn list_agents(State(state): State<HttpState>) -> Result<Response, ApiError> {
    let agents = state.ops.store().agents().await?;
    Ok(Json(json!({ "agents": agents })).into_response())
}

/// `GET /v1/pools/{id}/stats`: how the pool stands now: how many conversations wait in its
/// queue and since when the one at the front waits longest ([`Store::queue_stats`]), and how
/// many of its agents are online, away, offline, and online with room. 404 for a pool that is
/// not configured and has nothing waiting.
///
/// [`Store::queue_stats`]: switchyard_core::store::Store::queue_stats
pub async fn pool_stats(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = state.ops.store();
    let queue = store.queue_stats(&id).await?;
    let configured = state.ops.pools();
    if queue.depth == 0 && !configured.is_empty() && !configured.contains(&id) {
        return Err(ApiError::not_found(format!("pool `{id}` not found")));
    }
    let (mut online, mut away, mut offline, mut with_room) = (0, 0, 0, 0);
    for agent in state.agents.agents(store.as_ref()).await?.iter() {
        if !agent.pools.contains(&id) {
            continue;
        }
        match agent.status {
            AgentStatus::Online => online += 1,
            AgentStatus::Away => away += 1,
            AgentStatus::Offline => offline += 1,
        }
        if agent.can_take(&id) {
            with_room += 1;
        }
    }
    let oldest_wait_secs = queue.oldest_wait_secs(switchyard_core::time::now());
    Ok(Json(json!({
        "pool": id,
        "queued": queue.depth,
        "oldest_queued_at": queue.oldest_queued_at,
        "oldest_wait_secs": oldest_wait_secs,
        "agents": {
            "online": online,
            "away": away,
            "offline": offline,
            "with_room": with_room,
        },
    }))
    .into_response())
}

/// `GET /v1/agents/{id}/conversations`.
pub async fn agent_conversations(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let mut conversations = Vec::new();
    for c in state.ops.store().agent_conversations(&id).await? {
        conversations.push(state.ops.view_of(c).await?);
    }
    Ok(Json(json!({ "conversations": conversations })).into_response())
}

/// `GET /v1/conversations/{id}`.
pub async fn get_conversation(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    Ok(Json(state.ops.conversation_view(&id).await?).into_response())
}

/// `GET /v1/conversations/{id}/routing`: why the conversation is where it is
/// ([`crate::explain::explain`]): each agent of its pool and what keeps it from taking the
/// conversation, who takes it next, its place in the queue. Reads every agent (and, while it
/// is queued, its pool's queue) fresh from the store; changes nothing.
pub async fn routing(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = state.ops.store();
    let conversation = store
        .conversation(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("conversation `{id}` not found")))?;
    let agents = store.agents().await?;
    let queue = match conversation.status {
        ConversationStatus::Queued => store.queue(&conversation.pool).await?,
        _ => Vec::new(),
    };
    let policy = state
        .pool_policies
        .get(&conversation.pool)
        .cloned()
        .unwrap_or_default();
    let explanation = crate::explain::explain(&conversation, &agents, &queue, &policy);
    Ok(Json(explanation).into_response())
}

/// Body of `POST /v1/conversations/{id}/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reply {
    agent_id: Option<String>,
    content: Content,
}

/// `POST /v1/conversations/{id}/messages` -> 202 `{"id"}`.
pub async fn reply(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: Reply = json_body(&state, &headers, body)?;
    let envelope = state
        .ops
        .reply(&id, body.agent_id.as_deref(), body.content)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "id": envelope.id }))).into_response())
}

/// Body of `POST /v1/conversations/{id}/close`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Close {
    agent_id: Option<String>,
}

/// `POST /v1/conversations/{id}/close` (body optional).
pub async fn close(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let empty = body.as_ref().is_ok_and(|b| b.is_empty());
    let body: Close = if empty {
        Close::default()
    } else {
        json_body(&state, &headers, body)?
    };
    let conversation = state.ops.close(&id, body.agent_id.as_deref()).await?;
    Ok(Json(conversation).into_response())
}

/// Body of `POST /v1/conversations/{id}/accept` and `/decline`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferAnswer {
    /// The agent the conversation is offered to.
    agent_id: String,
}

/// `POST /v1/conversations/{id}/accept` `{"agent_id"}`: the agent accepts the conversation
/// offered to it.
pub async fn accept_offer(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: OfferAnswer = json_body(&state, &headers, body)?;
    let conversation = state.ops.accept_offer(&id, &body.agent_id).await?;
    Ok(Json(conversation).into_response())
}

/// `POST /v1/conversations/{id}/decline` `{"agent_id"}`: the agent declines the conversation
/// offered to it, which goes back to the queue.
pub async fn decline_offer(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: OfferAnswer = json_body(&state, &headers, body)?;
    let conversation = state
        .ops
        .take_back(&id, &body.agent_id, Withdrawal::Declined)
        .await?;
    Ok(Json(conversation).into_response())
}

/// Body of `POST /v1/conversations/{id}/transfer`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    pool: Option<String>,
    agent_id: Option<String>,
    /// With `pool`: the skills asked from now on.
    skills: Option<Vec<String>>,
    /// With `pool`: the priority in its queue from now on.
    priority: Option<u8>,
    /// A bot (`[[bots]]` id) to hand it to, in the pool `pool` names (one of the bot's), or in
    /// the first pool whose bot it is.
    bot: Option<String>,
    /// The agent asking, who must hold the conversation.
    by_agent_id: Option<String>,
    /// What the next one should know ([`HandoverContext`]).
    handover: Option<HandoverContext>,
}

/// Where a transfer request (REST or agent WebSocket) sends a conversation: exactly one of
/// `pool`, `agent_id` and `bot` (a `bot` may name one of its pools with `pool`), and `skills`
/// (each a valid skill name) and `priority` only with a `pool` alone.
pub(super) fn transfer_target(
    pool: Option<String>,
    agent_id: Option<String>,
    bot: Option<String>,
    skills: Option<Vec<String>>,
    priority: Option<u8>,
) -> Result<TransferTarget, ApiError> {
    if let Some(bot) = bot {
        if agent_id.is_some() {
            return Err(ApiError::bad_request(
                "invalid",
                "give exactly one of `pool`, `agent_id`, `bot` (or `bot` with one of its pools)",
            ));
        }
        if skills.is_some() || priority.is_some() {
            return Err(ApiError::bad_request(
                "invalid",
                "`skills` and `priority` go with `pool`: a transfer to a bot queues nothing",
            ));
        }
        return Ok(TransferTarget::Bot {
            // Checked against the bot's pools, or set to its first, by `Operations::transfer`.
            pool: pool.unwrap_or_default(),
            bot: bot_agent_id(&bot),
        });
    }
    match (pool, agent_id) {
        (Some(pool), None) => Ok(TransferTarget::Pool(QueueTarget {
            pool,
            skills: skills.map(checked_skills).transpose()?,
            priority,
            // Set from the pool's configuration by `Operations::transfer`.
            offer_secs: 0,
        })),
        (None, Some(_)) if skills.is_some() || priority.is_some() => Err(ApiError::bad_request(
            "invalid",
            "`skills` and `priority` go with `pool`: a transfer to an agent queues nothing",
        )),
        (None, Some(agent)) => Ok(TransferTarget::Agent(agent)),
        _ => Err(ApiError::bad_request(
            "invalid",
            "give exactly one of `pool`, `agent_id`, `bot`",
        )),
    }
}

/// A transfer's hand-over context, if it gives something within the limits
/// ([`HandoverContext::check`]).
pub(super) fn checked_handover(
    handover: Option<HandoverContext>,
) -> Result<Option<HandoverContext>, ApiError> {
    if let Some(context) = &handover {
        context
            .check()
            .map_err(|e| ApiError::bad_request("invalid", e.to_string()))?;
    }
    Ok(handover)
}

/// `skills` as a requirement, if each is a valid skill name ([`is_valid_skill`]).
fn checked_skills(skills: Vec<String>) -> Result<Skills, ApiError> {
    check_skill_names(&skills)?;
    Ok(Skills::new(skills))
}

/// Refuses a list naming an invalid skill.
pub(super) fn check_skill_names(skills: &[String]) -> Result<(), ApiError> {
    match skills.iter().position(|skill| !is_valid_skill(skill)) {
        Some(index) => Err(ApiError::bad_request(
            "invalid",
            format!(
                "`skills[{index}]` is not a skill name: 1 to {MAX_TAG_CHARS} characters without \
                 control characters"
            ),
        )),
        None => Ok(()),
    }
}

/// `POST /v1/conversations/{id}/transfer` `{"pool", "skills"?, "priority"?} | {"agent_id"} |
/// {"bot"}`,
/// with `by_agent_id` and `handover` optional.
pub async fn transfer(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: Transfer = json_body(&state, &headers, body)?;
    let target = transfer_target(
        body.pool,
        body.agent_id,
        body.bot,
        body.skills,
        body.priority,
    )?;
    let handover = checked_handover(body.handover)?;
    let conversation = state
        .ops
        .transfer(&id, body.by_agent_id.as_deref(), target, handover)
        .await?;
    Ok(Json(conversation).into_response())
}

/// Body of `POST /v1/customers/{id}/messages`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteFirst {
    agent_id: String,
    channel_id: String,
    content: Content,
}

/// `POST /v1/customers/{id}/messages` `{"agent_id", "channel_id", "content"}` -> 202 `{"id",
/// "conversation_id"}`: the agent writes first to the customer, which opens a conversation
/// assigned to the agent (see [`crate::operations::Operations::write_first`]).
pub async fn write_first(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: WriteFirst = json_body(&state, &headers, body)?;
    let started = state
        .ops
        .write_first(&id, &body.agent_id, &body.channel_id, body.content)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "id": started.envelope.id,
            "conversation_id": started.conversation.id,
        })),
    )
        .into_response())
}

/// `GET /v1/customers/{id}`.
pub async fn get_customer(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let customer = state
        .ops
        .store()
        .customer(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("customer `{id}` not found")))?;
    Ok(Json(customer).into_response())
}

/// `DELETE /v1/customers/{id}`: erases the customer (a merged-away id: the profile it was merged
/// into) with every conversation and message, closing an open conversation first; answers what
/// was erased, as `customer.erased` announces it. Needs the `admin` scope.
pub async fn erase_customer(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let erasure = state.ops.erase_customer(&id).await?;
    Ok(Json(json!({
        "customer_id": erasure.customer_id,
        "reason": erasure.reason,
        "merged_from": erasure.merged_from,
        "conversations": erasure.conversations,
    }))
    .into_response())
}

/// `PATCH /v1/customers/{id}` `{"add_tags", "remove_tags", "attributes"}`: changes the
/// customer's tags and attributes (a merged-away id: the profile it was merged into) and answers
/// the profile after the change, as `customer.updated` announces it. A body that breaks the rules
/// of [`CustomerPatch`] answers 422; a profile that would go past its limits, 409.
pub async fn update_customer(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: CustomerPatch = json_body(&state, &headers, body)?;
    let update = body.into_update()?;
    let customer = state.ops.update_customer(&id, &update).await?;
    Ok(Json(customer).into_response())
}

/// `GET /v1/customers?identity=<key>`.
pub async fn lookup_customer(
    State(state): State<HttpState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let raw = query.get("identity").ok_or_else(|| {
        ApiError::bad_request("invalid", "query parameter `identity` is required")
    })?;
    let key: IdentityKey =
        raw.parse()
            .map_err(|e: switchyard_core::identity::InvalidIdentityKey| {
                ApiError::bad_request("invalid_identity", e.to_string())
            })?;
    let customer = state
        .ops
        .store()
        .customer_by_identity(&key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no customer has identity `{key}`")))?;
    Ok(Json(customer).into_response())
}

/// Body of `POST /v1/customers/{id}/identities`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    identities: Vec<IdentityKey>,
}

/// `POST /v1/customers/{id}/identities` `{"identities": [key, ...]}`: explicit link (merges).
pub async fn link_identity(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: Link = json_body(&state, &headers, body)?;
    if body.identities.is_empty() || body.identities.len() > 32 {
        return Err(ApiError::bad_request("invalid", "give 1 to 32 identities"));
    }
    let customer = state.ops.link_identities(&id, body.identities).await?;
    Ok(Json(customer).into_response())
}

/// Body of `POST /v1/customers/{id}/merge`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MergeBody {
    customer_id: String,
}

/// `POST /v1/customers/{id}/merge` `{"customer_id"}`: merges two profiles (the older survives).
pub async fn merge_customer(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: MergeBody = json_body(&state, &headers, body)?;
    let customer = state.ops.merge_customers(&id, &body.customer_id).await?;
    Ok(Json(customer).into_response())
}

/// `GET /v1/pools/{id}/queue`.
pub async fn pool_queue(
    State(state): State<HttpState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let queue = state.ops.store().queue(&id).await?;
    let mut conversations = Vec::with_capacity(queue.len());
    for conversation_id in &queue {
        if let Some(c) = state.ops.store().conversation(conversation_id).await? {
            conversations.push(c);
        }
    }
    Ok(Json(json!({ "pool": id, "conversations": conversations })).into_response())
}
