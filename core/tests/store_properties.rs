//! Property test of `EmbeddedStore`: random interleavings of inbound messages (a few people over
//! two channels, sometimes carrying a shared phone key that merges their profiles, sometimes under
//! a stale merged-away customer id, sometimes replayed), agent presence and capacity changes,
//! replies, closes, transfers and assignments. After every step the store's state must satisfy
//! the guarantees of DESIGN.md: no agent over capacity, no conversation held twice, one open
//! conversation per customer, FIFO queues holding every queued conversation once, no message lost.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use proptest::prelude::*;
use switchyard_core::conformance::store::{
    app_channel, at, inbound_envelope, key, outbound_envelope, wechat_channel,
};
use switchyard_core::envelope::Envelope;
use switchyard_core::identity::IdentityStrength;
use switchyard_core::model::{AgentStatus, ConversationStatus, Skills};
use switchyard_core::store::embedded::EmbeddedStore;
use switchyard_core::store::{
    AgentUpdate, Placement, ResolveRequest, Store, StoreError, TransferTarget,
};

const PEOPLE: usize = 3;
const AGENTS: usize = 3;
const POOLS: [&str; 2] = ["default", "vip"];
/// Skills asked by conversations and held by agents.
const SKILLS: [&[&str]; 4] = [&[], &["en"], &["zh"], &["en", "zh"]];

#[derive(Debug, Clone)]
enum Op {
    /// Person `person` writes on channel `channel` (which routes to pool `channel`).
    /// A conversation it opens asks for `SKILLS[skills]`, with queue priority `priority`.
    Inbound {
        person: usize,
        channel: usize,
        with_phone: bool,
        stale_customer_id: bool,
        skills: usize,
        priority: u8,
    },
    /// An earlier inbound envelope is recorded again (a redelivery).
    Replay {
        pick: usize,
    },
    Presence {
        agent: usize,
        status: AgentStatus,
    },
    /// Sets the agent's capacity and, when given, its skills to `SKILLS[skills]`.
    Capacity {
        agent: usize,
        capacity: u32,
        skills: Option<usize>,
    },
    Close {
        pick: usize,
    },
    TransferPool {
        pick: usize,
        pool: usize,
    },
    TransferAgent {
        pick: usize,
        agent: usize,
    },
    Assign {
        pool: usize,
    },
    /// Agent `agent` replies in an assigned conversation (refused unless it holds it).
    Reply {
        pick: usize,
        agent: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let status = prop_oneof![
        3 => Just(AgentStatus::Online),
        1 => Just(AgentStatus::Away),
        1 => Just(AgentStatus::Offline)
    ];
    prop_oneof![
        5 => (
            0..PEOPLE,
            0..2usize,
            proptest::bool::weighted(0.5),
            proptest::bool::weighted(0.2),
            0..SKILLS.len(),
            prop_oneof![3 => Just(0u8), 1 => 1..3u8]
        )
            .prop_map(|(person, channel, with_phone, stale_customer_id, skills, priority)| {
                Op::Inbound {
                    person,
                    channel,
                    with_phone,
                    stale_customer_id,
                    skills,
                    priority,
                }
            }),
        1 => any::<usize>().prop_map(|pick| Op::Replay { pick }),
        2 => (0..AGENTS, status).prop_map(|(agent, status)| Op::Presence { agent, status }),
        1 => (0..AGENTS, 0..4u32, proptest::option::of(0..SKILLS.len()))
            .prop_map(|(agent, capacity, skills)| Op::Capacity { agent, capacity, skills }),
        2 => any::<usize>().prop_map(|pick| Op::Close { pick }),
        1 => (any::<usize>(), 0..2usize).prop_map(|(pick, pool)| Op::TransferPool { pick, pool }),
        1 => (any::<usize>(), 0..AGENTS).prop_map(|(pick, agent)| Op::TransferAgent { pick, agent }),
        3 => (0..2usize).prop_map(|pool| Op::Assign { pool }),
        1 => (any::<usize>(), 0..AGENTS).prop_map(|(pick, agent)| Op::Reply { pick, agent }),
    ]
}

fn agent_id(i: usize) -> String {
    format!("agent-{i}")
}

/// What the test knows independently of the store.
#[derive(Default)]
struct Harness {
    /// Every conversation id the store ever reported.
    conversations: BTreeSet<String>,
    /// Every envelope id the store accepted (inbound and outbound).
    recorded: HashSet<String>,
    /// Inbound envelopes, for replays.
    inbound: Vec<Envelope>,
    /// Envelope id -> the conversation it opened.
    opened: HashMap<String, String>,
    /// The first customer id each (person, channel) resolved to (stale after merges).
    first_customer: HashMap<(usize, usize), String>,
    /// Conversations each agent held after the previous step.
    prev_load: HashMap<String, usize>,
}

fn expected_error(e: &StoreError) -> Result<(), String> {
    match e {
        StoreError::Conflict { .. } | StoreError::NotFound { .. } => Ok(()),
        StoreError::Unavailable(_) => Err(format!("embedded store unavailable: {e}")),
    }
}

impl Harness {
    async fn open_conversations(&self, store: &Arc<dyn Store>) -> Vec<String> {
        let mut open = Vec::new();
        for id in &self.conversations {
            if let Some(c) = store.conversation(id).await.unwrap()
                && c.status != ConversationStatus::Closed
            {
                open.push(id.clone());
            }
        }
        open
    }

    async fn apply(&mut self, store: &Arc<dyn Store>, op: &Op, step: i64) -> Result<(), String> {
        let now = at(step);
        match *op {
            Op::Inbound {
                person,
                channel,
                with_phone,
                stale_customer_id,
                skills,
                priority,
            } => {
                let own = if channel == 0 {
                    key("", "app_user", "shop-app", &format!("p{person}"))
                } else {
                    key("", "wechat_openid", "wx1", &format!("p{person}"))
                };
                let mut identities = vec![(own.clone(), IdentityStrength::Strong)];
                if with_phone {
                    identities.push((
                        key("", "phone", "", &format!("+86{person}")),
                        IdentityStrength::Strong,
                    ));
                }
                let resolution = store
                    .resolve_customer(ResolveRequest {
                        tenant: "default".to_owned(),
                        identities,
                        explicit: false,
                        display_name: None,
                        now,
                        source: None,
                    })
                    .await
                    .map_err(|e| format!("resolve_customer: {e}"))?;
                for c in resolution.closed.iter().map(|c| &c.conversation) {
                    if !self.conversations.contains(&c.id) {
                        return Err(format!("merge closed unknown conversation {}", c.id));
                    }
                    if c.close_reason.as_deref() != Some("merged") {
                        return Err(format!("merge closed {} with {:?}", c.id, c.close_reason));
                    }
                    let left = store.messages(&c.id, usize::MAX).await.unwrap();
                    if !left.is_empty() {
                        return Err(format!(
                            "{} messages stayed in {}, closed by a merge",
                            left.len(),
                            c.id
                        ));
                    }
                }
                let fresh = resolution.customer.id.clone();
                let first = self
                    .first_customer
                    .entry((person, channel))
                    .or_insert_with(|| fresh.clone())
                    .clone();
                let customer_id = if stale_customer_id { first } else { fresh };
                let (ch, external) = if channel == 0 {
                    (app_channel(), format!("p{person}"))
                } else {
                    (wechat_channel(), format!("o{person}"))
                };
                let envelope = inbound_envelope(&customer_id, &ch, &external, vec![own], "hi", now);
                let rec = store
                    .record_inbound(
                        &envelope,
                        &Placement::queued(POOLS[channel])
                            .with_skills(Skills::new(SKILLS[skills].iter().copied()))
                            .with_priority(priority),
                        now,
                    )
                    .await
                    .map_err(|e| format!("record_inbound: {e}"))?;
                if rec.duplicate {
                    return Err("a new envelope was reported duplicate".to_owned());
                }
                let canonical = store.customer(&customer_id).await.unwrap();
                if canonical.as_ref().map(|c| &c.id) != Some(&rec.conversation.customer_id) {
                    return Err(format!(
                        "message of customer {customer_id} (now {:?}) landed in a conversation of {}",
                        canonical.map(|c| c.id),
                        rec.conversation.customer_id
                    ));
                }
                if rec.created != self.conversations.insert(rec.conversation.id.clone()) {
                    return Err(format!(
                        "created = {} but the conversation was {}known",
                        rec.created,
                        if rec.created { "" } else { "not " }
                    ));
                }
                self.recorded.insert(envelope.id.clone());
                if rec.created {
                    self.opened
                        .insert(envelope.id.clone(), rec.conversation.id.clone());
                }
                self.inbound.push(envelope);
            }
            Op::Replay { pick } => {
                if self.inbound.is_empty() {
                    return Ok(());
                }
                let envelope = &self.inbound[pick % self.inbound.len()];
                let rec = store
                    .record_inbound(envelope, &Placement::queued(POOLS[0]), now)
                    .await
                    .map_err(|e| format!("replay: {e}"))?;
                if !rec.duplicate {
                    return Err(format!("replay of {} was not a duplicate", envelope.id));
                }
                // A message moved by a merge is in the survivor's conversation, opened by another.
                let opened_it = self.opened.get(&envelope.id) == Some(&rec.conversation.id);
                if rec.created != opened_it {
                    return Err(format!(
                        "replay of {} reports created = {}, but it {} conversation {}",
                        envelope.id,
                        rec.created,
                        if rec.created {
                            "did not open"
                        } else {
                            "opened"
                        },
                        rec.conversation.id
                    ));
                }
            }
            Op::Presence { agent, status } => {
                store
                    .upsert_agent(
                        AgentUpdate {
                            id: agent_id(agent),
                            status: Some(status),
                            ..AgentUpdate::default()
                        },
                        now,
                    )
                    .await
                    .map_err(|e| format!("upsert_agent: {e}"))?;
            }
            Op::Capacity {
                agent,
                capacity,
                skills,
            } => {
                store
                    .upsert_agent(
                        AgentUpdate {
                            id: agent_id(agent),
                            capacity: Some(capacity),
                            skills: skills
                                .map(|i| SKILLS[i].iter().map(|s| (*s).to_owned()).collect()),
                            ..AgentUpdate::default()
                        },
                        now,
                    )
                    .await
                    .map_err(|e| format!("upsert_agent: {e}"))?;
            }
            Op::Close { pick } => {
                let open = self.open_conversations(store).await;
                if open.is_empty() {
                    return Ok(());
                }
                let id = &open[pick % open.len()];
                store
                    .close_conversation(id, "agent", now)
                    .await
                    .map_err(|e| format!("closing open conversation {id}: {e}"))?;
            }
            Op::TransferPool { pick, pool } => {
                let open = self.open_conversations(store).await;
                if open.is_empty() {
                    return Ok(());
                }
                let id = &open[pick % open.len()];
                store
                    .transfer(id, TransferTarget::pool(POOLS[pool].to_owned()), None, now)
                    .await
                    .map_err(|e| format!("transfer of open {id} to a pool: {e}"))?;
            }
            Op::TransferAgent { pick, agent } => {
                let open = self.open_conversations(store).await;
                if open.is_empty() {
                    return Ok(());
                }
                let id = &open[pick % open.len()];
                if let Err(e) = store
                    .transfer(id, TransferTarget::Agent(agent_id(agent)), None, now)
                    .await
                {
                    expected_error(&e)?;
                }
            }
            Op::Assign { pool } => {
                let pool = POOLS[pool];
                let before = store.queue(pool).await.unwrap();
                let got = store
                    .assign_queued(pool, now)
                    .await
                    .map_err(|e| format!("assign_queued: {e}"))?;
                let agents = store.agents().await.unwrap();
                // Each went to an agent with its skills, and within one queue (priority and
                // skills) the head went first.
                let mut taken: HashMap<(u8, &Skills), usize> = HashMap::new();
                let mut before_by_queue: HashMap<(u8, Skills), Vec<String>> = HashMap::new();
                for id in &before {
                    let c = store.conversation(id).await.unwrap().unwrap();
                    before_by_queue
                        .entry((c.priority, c.skills))
                        .or_default()
                        .push(id.clone());
                }
                for a in &got {
                    let c = &a.conversation;
                    let holder = agents.iter().find(|x| x.id == a.agent_id);
                    if !holder.is_some_and(|h| c.skills.held_by(&h.skills)) {
                        return Err(format!(
                            "{} asking {:?} went to {} without those skills",
                            c.id, c.skills, a.agent_id
                        ));
                    }
                    let n = taken.entry((c.priority, &c.skills)).or_default();
                    let expected = before_by_queue
                        .get(&(c.priority, c.skills.clone()))
                        .and_then(|q| q.get(*n));
                    if expected != Some(&c.id) {
                        return Err(format!(
                            "assign_queued took {} before the head of its skills' queue \
                             {expected:?}: queue {before:?}",
                            c.id
                        ));
                    }
                    *n += 1;
                }
                // Nothing left that an agent with room could take.
                for id in store.queue(pool).await.unwrap() {
                    let c = store.conversation(&id).await.unwrap().unwrap();
                    if let Some(idle) = agents
                        .iter()
                        .find(|a| a.can_take(pool) && c.skills.held_by(&a.skills))
                    {
                        return Err(format!(
                            "assign_queued left {id} asking {:?} queued while {} could take it",
                            c.skills, idle.id
                        ));
                    }
                }
            }
            Op::Reply { pick, agent } => {
                let mut assigned = Vec::new();
                for id in &self.conversations {
                    let c = store.conversation(id).await.unwrap().unwrap();
                    if c.status == ConversationStatus::Assigned {
                        assigned.push(c);
                    }
                }
                if assigned.is_empty() {
                    return Ok(());
                }
                let c = &assigned[pick % assigned.len()];
                let who = agent_id(agent);
                let envelope = outbound_envelope(c, &who, now);
                let result = store
                    .record_outbound(&c.id, Some(&who), &envelope, now, None)
                    .await;
                match (c.agent_id.as_deref() == Some(who.as_str()), result) {
                    (true, Ok(_)) => {
                        self.recorded.insert(envelope.id);
                    }
                    (true, Err(e)) => return Err(format!("holder's reply refused: {e}")),
                    (false, Ok(_)) => {
                        return Err(format!("{who} replied in {} held by another", c.id));
                    }
                    (
                        false,
                        Err(StoreError::Conflict {
                            code: "not_assigned_to_agent",
                            ..
                        }),
                    ) => {}
                    (false, Err(e)) => return Err(format!("wrong agent's reply: {e}")),
                }
            }
        }
        Ok(())
    }

    /// Checks every invariant; remembers agent loads for the next step.
    async fn check(&mut self, store: &Arc<dyn Store>) -> Result<(), String> {
        // Agents: within capacity (an agent whose capacity was lowered below its load keeps what
        // it holds but gains nothing), no duplicates, nothing held twice.
        let mut holder: HashMap<String, String> = HashMap::new();
        let mut load = HashMap::new();
        for a in store.agents().await.unwrap() {
            let n = a.conversations.len();
            let prev = self.prev_load.get(&a.id).copied().unwrap_or(0);
            if n as u64 > u64::from(a.capacity) && n > prev {
                return Err(format!(
                    "agent {} holds {n} > capacity {} (had {prev})",
                    a.id, a.capacity
                ));
            }
            for c in &a.conversations {
                if let Some(other) = holder.insert(c.clone(), a.id.clone()) {
                    return Err(format!("conversation {c} held by {other} and {}", a.id));
                }
            }
            load.insert(a.id.clone(), n);
        }
        self.prev_load = load;

        // Queues: unique ids of known queued conversations of that pool, by priority, then FIFO
        // by queued_at.
        let mut queued_in: HashMap<String, (String, usize)> = HashMap::new();
        for pool in POOLS {
            let q = store.queue(pool).await.unwrap();
            let mut last = None;
            for id in &q {
                let entry = queued_in.entry(id.clone()).or_insert((pool.to_owned(), 0));
                entry.1 += 1;
                if !self.conversations.contains(id) {
                    return Err(format!("pool {pool} queues unknown conversation {id}"));
                }
                let c = store.conversation(id).await.unwrap().unwrap();
                if c.status != ConversationStatus::Queued || c.pool != pool {
                    return Err(format!(
                        "pool {pool} queues {id}, which is {:?} in pool {}",
                        c.status, c.pool
                    ));
                }
                let place = (Reverse(c.priority), c.queued_at);
                if last.is_some_and(|last| place < last) {
                    return Err(format!(
                        "pool {pool} is not by priority, then FIFO by queued_at: {q:?}"
                    ));
                }
                last = Some(place);
            }
        }

        // Conversations.
        let mut open_of: HashMap<String, String> = HashMap::new();
        let mut seen_messages: HashMap<String, usize> = HashMap::new();
        for id in &self.conversations {
            let c = store
                .conversation(id)
                .await
                .unwrap()
                .ok_or_else(|| format!("conversation {id} vanished"))?;
            match c.status {
                ConversationStatus::Assigned => {
                    let a = c
                        .agent_id
                        .as_ref()
                        .ok_or_else(|| format!("assigned {id} has no agent"))?;
                    if holder.get(id) != Some(a) {
                        return Err(format!(
                            "{id} is assigned to {a} but held by {:?}",
                            holder.get(id)
                        ));
                    }
                }
                _ => {
                    if c.agent_id.is_some() || holder.contains_key(id) {
                        return Err(format!(
                            "{id} is {:?} but has agent {:?} / is held by {:?}",
                            c.status,
                            c.agent_id,
                            holder.get(id)
                        ));
                    }
                }
            }
            let in_queue = queued_in.get(id);
            match (c.status, in_queue) {
                (ConversationStatus::Queued, Some((pool, 1))) if *pool == c.pool => {}
                (ConversationStatus::Queued, other) => {
                    return Err(format!(
                        "queued {id} of pool {} is in queues as {other:?}",
                        c.pool
                    ));
                }
                (_, None) => {}
                (status, Some(q)) => return Err(format!("{status:?} {id} is queued in {q:?}")),
            }
            if c.status != ConversationStatus::Closed {
                let canonical = store
                    .customer(&c.customer_id)
                    .await
                    .unwrap()
                    .ok_or_else(|| format!("customer {} of {id} vanished", c.customer_id))?;
                if canonical.id != c.customer_id {
                    return Err(format!(
                        "open {id} belongs to merged-away {} (now {})",
                        c.customer_id, canonical.id
                    ));
                }
                if let Some(other) = open_of.insert(c.customer_id.clone(), id.clone()) {
                    return Err(format!(
                        "customer {} has two open conversations: {other} and {id}",
                        c.customer_id
                    ));
                }
            }
            for m in store.messages(id, usize::MAX).await.unwrap() {
                if m.conversation_id.as_deref() != Some(id.as_str()) {
                    return Err(format!(
                        "message {} in {id} says conversation {:?}",
                        m.id, m.conversation_id
                    ));
                }
                *seen_messages.entry(m.id).or_default() += 1;
            }
        }

        // No message lost or duplicated.
        for id in &self.recorded {
            match seen_messages.get(id) {
                Some(1) => {}
                n => return Err(format!("envelope {id} is in {n:?} conversations")),
            }
        }
        if let Some(extra) = seen_messages.keys().find(|id| !self.recorded.contains(*id)) {
            return Err(format!("unknown message {extra} stored"));
        }
        Ok(())
    }
}

/// Applies `ops` to a new store (whose pools all choose the least busy agent when `least_busy`),
/// checking the invariants after each.
async fn run(ops: &[Op], least_busy: bool) -> Result<(), String> {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::new());
    if least_busy {
        store.set_least_busy_pools(&["default".to_owned(), "vip".to_owned()]);
    }
    let pools: [&[&str]; AGENTS] = [&["default"], &["vip"], &["default", "vip"]];
    let status = [
        AgentStatus::Online,
        AgentStatus::Online,
        AgentStatus::Offline,
    ];
    for (i, pools) in pools.iter().enumerate() {
        store
            .upsert_agent(
                AgentUpdate {
                    id: agent_id(i),
                    pools: Some(pools.iter().map(|p| (*p).to_owned()).collect()),
                    capacity: Some(2),
                    status: Some(status[i]),
                    ..AgentUpdate::default()
                },
                at(0),
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut h = Harness::default();
    for (step, op) in ops.iter().enumerate() {
        let step = step as i64 + 1;
        h.apply(&store, op, step)
            .await
            .map_err(|e| format!("step {step} ({op:?}): {e}"))?;
        h.check(&store)
            .await
            .map_err(|e| format!("after step {step} ({op:?}): {e}"))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_invariants_hold_under_random_interleavings(ops in proptest::collection::vec(op(), 1..=60)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = rt.block_on(run(&ops, false));
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }

    #[test]
    fn store_invariants_hold_in_least_busy_pools(ops in proptest::collection::vec(op(), 1..=60)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let result = rt.block_on(run(&ops, true));
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}
