//! Why a conversation is where it is: for a conversation, each agent of its pool and what
//! keeps it from taking the conversation (offline, away, full, missing skills), which agent
//! the pool's strategy would give it to now, its place in the queue, and one sentence saying
//! it. Answers `GET /v1/conversations/{id}/routing`; reads only, changes nothing.

use std::cmp::Ordering;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use switchyard_core::config::{Settings, Strategy};
use switchyard_core::model::{Agent, AgentStatus, AssignedBy, Conversation, ConversationStatus};

/// How a pool assigns, as far as an explanation needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolPolicy {
    /// Its strategy.
    pub strategy: Strategy,
    /// Whether a returning customer goes to their last agent first (`prefer_last_agent`).
    pub prefer_last_agent: bool,
}

/// Every configured pool's policy, by pool id (a pool missing here assigns as the default).
pub fn pool_policies(settings: &Settings) -> HashMap<String, PoolPolicy> {
    settings
        .pools
        .iter()
        .map(|p| {
            let policy = PoolPolicy {
                strategy: p.strategy,
                prefer_last_agent: p.prefer_last_agent,
            };
            (p.id.clone(), policy)
        })
        .collect()
}

/// What keeps an agent of the pool from taking the conversation now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unfit {
    /// The agent is offline.
    Offline,
    /// The agent is away.
    Away,
    /// The agent holds as many conversations as its capacity.
    Full,
    /// The agent lacks skills the conversation asks for (`missing_skills`).
    MissingSkills,
    /// The agent holds this conversation.
    HoldsIt,
}

/// One agent of the conversation's pool, and whether it could take the conversation now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentFit {
    /// The agent.
    pub agent_id: String,
    /// Its presence.
    pub status: AgentStatus,
    /// Conversations it holds.
    pub holds: usize,
    /// Most it may hold.
    pub capacity: u32,
    /// Since when it has had no new conversation.
    #[serde(serialize_with = "switchyard_core::time::rfc3339::serialize")]
    pub idle_since: DateTime<Utc>,
    /// Whether it could take the conversation now: online, with room and every skill asked.
    pub can_take: bool,
    /// Why not (empty when it can).
    pub reasons: Vec<Unfit>,
    /// The skills asked that it lacks.
    pub missing_skills: Vec<String>,
}

/// The conversation's place in its pool's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueuePlace {
    /// 1 = next.
    pub position: usize,
    /// How many wait in the pool's queue.
    pub of: usize,
}

/// Why a conversation is where it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoutingExplanation {
    /// The conversation.
    pub conversation_id: String,
    /// Its status.
    pub status: ConversationStatus,
    /// Its pool.
    pub pool: String,
    /// The skills it asks of its agent.
    pub skills: Vec<String>,
    /// Its priority in the queue.
    pub priority: u8,
    /// The pool's strategy: `longest_idle` or `least_busy`.
    pub strategy: &'static str,
    /// Whether the pool gives a returning customer their last agent first.
    pub prefer_last_agent: bool,
    /// The agent holding it (or the bot, `bot:{id}`).
    pub agent_id: Option<String>,
    /// How that agent was chosen.
    pub assigned_by: Option<AssignedBy>,
    /// While queued: its place.
    pub queue: Option<QueuePlace>,
    /// While queued: the agent the pool's strategy gives it to when it reaches the front now
    /// (the customer's last agent may come first where the pool prefers it; an agent who
    /// declined it is passed over once).
    pub next_agent: Option<String>,
    /// The agents of its pool: those who could take it, in the strategy's order, then the
    /// others by id.
    pub agents: Vec<AgentFit>,
    /// The same in one sentence.
    pub summary: String,
}

fn strategy_name(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::LongestIdle => "longest_idle",
        Strategy::LeastBusy => "least_busy",
    }
}

/// How `agent` stands toward `conversation`.
fn fit(agent: &Agent, conversation: &Conversation) -> AgentFit {
    let mut reasons = Vec::new();
    match agent.status {
        AgentStatus::Online => {}
        AgentStatus::Away => reasons.push(Unfit::Away),
        AgentStatus::Offline => reasons.push(Unfit::Offline),
    }
    let holds_it = agent.conversations.contains(&conversation.id);
    if holds_it {
        reasons.push(Unfit::HoldsIt);
    } else if agent.conversations.len() as u64 >= u64::from(agent.capacity) {
        reasons.push(Unfit::Full);
    }
    let missing_skills: Vec<String> = conversation
        .skills
        .as_slice()
        .iter()
        .filter(|skill| !agent.skills.iter().any(|s| s == *skill))
        .cloned()
        .collect();
    if !missing_skills.is_empty() {
        reasons.push(Unfit::MissingSkills);
    }
    AgentFit {
        agent_id: agent.id.clone(),
        status: agent.status,
        holds: agent.conversations.len(),
        capacity: agent.capacity,
        idle_since: agent.idle_since,
        can_take: reasons.is_empty(),
        reasons,
        missing_skills,
    }
}

/// The order in which `strategy` picks among agents who can take a conversation.
fn strategy_order(strategy: Strategy, a: &AgentFit, b: &AgentFit) -> Ordering {
    let by_idle = a
        .idle_since
        .cmp(&b.idle_since)
        .then_with(|| a.agent_id.cmp(&b.agent_id));
    match strategy {
        Strategy::LongestIdle => by_idle,
        Strategy::LeastBusy => a.holds.cmp(&b.holds).then(by_idle),
    }
}

/// Explains `conversation` from its pool's `agents` (every agent; those of other pools are left
/// out), its pool's `queue` (ids, head first; read only while it is queued) and its pool's
/// `policy`.
pub fn explain(
    conversation: &Conversation,
    agents: &[Agent],
    queue: &[String],
    policy: &PoolPolicy,
) -> RoutingExplanation {
    let pool = &conversation.pool;
    let mut fits: Vec<AgentFit> = agents
        .iter()
        .filter(|a| a.pools.iter().any(|p| p == pool))
        .map(|a| fit(a, conversation))
        .collect();
    fits.sort_by(|a, b| match (a.can_take, b.can_take) {
        (true, true) => strategy_order(policy.strategy, a, b),
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.agent_id.cmp(&b.agent_id),
    });
    let queued = conversation.status == ConversationStatus::Queued;
    let place = queued
        .then(|| queue.iter().position(|id| *id == conversation.id))
        .flatten()
        .map(|i| QueuePlace {
            position: i + 1,
            of: queue.len(),
        });
    let next_agent = queued
        .then(|| fits.first().filter(|f| f.can_take))
        .flatten()
        .map(|f| f.agent_id.clone());
    let summary = summary(conversation, &fits, place, next_agent.as_deref(), policy);
    RoutingExplanation {
        conversation_id: conversation.id.clone(),
        status: conversation.status,
        pool: pool.clone(),
        skills: conversation.skills.as_slice().to_vec(),
        priority: conversation.priority,
        strategy: strategy_name(policy.strategy),
        prefer_last_agent: policy.prefer_last_agent,
        agent_id: conversation.agent_id.clone(),
        assigned_by: conversation.assigned_by,
        queue: place,
        next_agent,
        agents: fits,
        summary,
    }
}

/// `n` and the noun, singular or plural.
fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn summary(
    conversation: &Conversation,
    fits: &[AgentFit],
    place: Option<QueuePlace>,
    next_agent: Option<&str>,
    policy: &PoolPolicy,
) -> String {
    let pool = &conversation.pool;
    let agent = conversation.agent_id.as_deref().unwrap_or("?");
    match conversation.status {
        ConversationStatus::Closed => format!(
            "Closed ({}).",
            conversation.close_reason.as_deref().unwrap_or("closed")
        ),
        ConversationStatus::Bot => format!("Held by the bot `{agent}` of pool `{pool}`."),
        ConversationStatus::Assigned => {
            let how = conversation
                .assigned_by
                .map(|by| format!(" ({})", by.as_str()))
                .unwrap_or_default();
            match conversation.offer_expires_at {
                Some(until) => format!(
                    "Offered to `{agent}`{how}, who has until {} to accept it.",
                    until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                None => format!("Assigned to `{agent}`{how}."),
            }
        }
        ConversationStatus::Queued => {
            let waits = match place {
                Some(p) => format!(
                    "Waits in pool `{pool}`'s queue, number {} of {}.",
                    p.position, p.of
                ),
                None => format!("Waits in pool `{pool}`'s queue."),
            };
            let can = fits.iter().filter(|f| f.can_take).count();
            let now = if fits.is_empty() {
                format!("No agent is in pool `{pool}`.")
            } else if let Some(next) = next_agent {
                let by = strategy_name(policy.strategy);
                let last = if policy.prefer_last_agent {
                    ", unless the customer's last agent can take it"
                } else {
                    ""
                };
                format!(
                    "{} can take it now; at the front it goes to `{next}` ({by}{last}).",
                    count(can, "agent", "agents")
                )
            } else {
                format!("No agent of the pool can take it now: {}.", why_none(fits))
            };
            format!("{waits} {now}")
        }
    }
}

/// "2 away, 1 full, 1 lacks skills `zh`": how many agents each reason keeps out.
fn why_none(fits: &[AgentFit]) -> String {
    let mut parts = Vec::new();
    let n = |reason: Unfit| fits.iter().filter(|f| f.reasons.contains(&reason)).count();
    for (reason, text) in [
        (Unfit::Offline, "offline"),
        (Unfit::Away, "away"),
        (Unfit::Full, "full"),
    ] {
        let k = n(reason);
        if k > 0 {
            parts.push(format!("{k} {text}"));
        }
    }
    let mut lacking: Vec<&str> = fits
        .iter()
        .flat_map(|f| f.missing_skills.iter().map(String::as_str))
        .collect();
    lacking.sort_unstable();
    lacking.dedup();
    let k = n(Unfit::MissingSkills);
    if k > 0 {
        let skills = lacking
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ");
        parts.push(format!(
            "{k} {} {skills}",
            if k == 1 { "lacks" } else { "lack" }
        ));
    }
    parts.join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use switchyard_core::envelope::{ChannelRef, Sender};
    use switchyard_core::model::Skills;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn conversation(status: ConversationStatus, skills: &[&str]) -> Conversation {
        let channel = ChannelRef {
            kind: "web".to_owned(),
            id: "web".to_owned(),
        };
        let recipient = Sender {
            external_id: "v".to_owned(),
            scope: String::new(),
            display_name: None,
            identities: Vec::new(),
        };
        Conversation {
            status,
            skills: Skills::new(skills.iter().copied()),
            message_count: 1,
            ..Conversation::opened(
                "c1".to_owned(),
                ("default", "k1"),
                "default",
                channel,
                recipient,
                at(0),
            )
        }
    }

    fn agent(id: &str, status: AgentStatus, holds: usize, skills: &[&str], idle: i64) -> Agent {
        Agent {
            id: id.to_owned(),
            name: id.to_owned(),
            pools: vec!["default".to_owned()],
            skills: skills.iter().map(|s| (*s).to_owned()).collect(),
            capacity: 2,
            status,
            conversations: (0..holds).map(|i| format!("{id}-held-{i}")).collect(),
            idle_since: at(idle),
            updated_at: at(idle),
        }
    }

    fn ids(e: &RoutingExplanation) -> Vec<(&str, bool)> {
        e.agents
            .iter()
            .map(|f| (f.agent_id.as_str(), f.can_take))
            .collect()
    }

    #[test]
    fn a_queued_conversation_names_who_takes_it_next_by_the_strategy() {
        let c = conversation(ConversationStatus::Queued, &[]);
        let agents = [
            agent("ann", AgentStatus::Online, 1, &[], 5),
            agent("bob", AgentStatus::Online, 0, &[], 9),
            agent("cid", AgentStatus::Away, 0, &[], 1),
            agent("dan", AgentStatus::Online, 2, &[], 0),
        ];
        let queue = ["c0".to_owned(), "c1".to_owned(), "c2".to_owned()];
        let longest = explain(&c, &agents, &queue, &PoolPolicy::default());
        assert_eq!(
            ids(&longest),
            [("ann", true), ("bob", true), ("cid", false), ("dan", false)]
        );
        assert_eq!(longest.next_agent.as_deref(), Some("ann"));
        assert_eq!(longest.queue, Some(QueuePlace { position: 2, of: 3 }));
        assert_eq!(longest.agents[2].reasons, [Unfit::Away]);
        assert_eq!(longest.agents[3].reasons, [Unfit::Full]);
        assert_eq!(
            longest.summary,
            "Waits in pool `default`'s queue, number 2 of 3. 2 agents can take it now; at the \
             front it goes to `ann` (longest_idle)."
        );
        let least = explain(
            &c,
            &agents,
            &queue,
            &PoolPolicy {
                strategy: Strategy::LeastBusy,
                prefer_last_agent: true,
            },
        );
        assert_eq!(least.next_agent.as_deref(), Some("bob"), "holds the fewest");
        assert!(least.summary.ends_with(
            "goes to `bob` (least_busy, unless the customer's last agent can take it)."
        ));
    }

    #[test]
    fn nobody_able_is_explained_by_reason_and_skill() {
        let c = conversation(ConversationStatus::Queued, &["billing", "zh"]);
        let mut other_pool = agent("zed", AgentStatus::Online, 0, &["billing", "zh"], 0);
        other_pool.pools = vec!["sales".to_owned()];
        let agents = [
            agent("ann", AgentStatus::Online, 0, &["zh"], 5),
            agent("bob", AgentStatus::Offline, 0, &["billing", "zh"], 9),
            agent("cid", AgentStatus::Online, 2, &["billing", "zh"], 1),
            agent("dan", AgentStatus::Away, 2, &[], 0),
            other_pool,
        ];
        let e = explain(&c, &agents, &["c1".to_owned()], &PoolPolicy::default());
        assert_eq!(
            ids(&e),
            [
                ("ann", false),
                ("bob", false),
                ("cid", false),
                ("dan", false)
            ],
            "agents of other pools are left out"
        );
        assert_eq!(e.next_agent, None);
        assert_eq!(e.agents[0].missing_skills, ["billing"]);
        assert_eq!(
            e.agents[3].reasons,
            [Unfit::Away, Unfit::Full, Unfit::MissingSkills]
        );
        assert_eq!(
            e.summary,
            "Waits in pool `default`'s queue, number 1 of 1. No agent of the pool can take it \
             now: 1 offline, 1 away, 2 full, 2 lack `billing`, `zh`."
        );
        let empty = explain(&c, &[], &[], &PoolPolicy::default());
        assert_eq!(
            empty.summary,
            "Waits in pool `default`'s queue. No agent is in pool `default`."
        );
    }

    #[test]
    fn assigned_offered_bot_and_closed_conversations_say_so() {
        let mut c = conversation(ConversationStatus::Assigned, &[]);
        c.agent_id = Some("ann".to_owned());
        c.assigned_by = Some(AssignedBy::LastAgent);
        let mut ann = agent("ann", AgentStatus::Online, 0, &[], 0);
        ann.conversations.push("c1".to_owned());
        let e = explain(&c, &[ann], &[], &PoolPolicy::default());
        assert_eq!(e.summary, "Assigned to `ann` (last_agent).");
        assert_eq!(e.agents[0].reasons, [Unfit::HoldsIt]);
        assert_eq!((e.queue, e.next_agent.as_deref()), (None, None));
        c.offer_expires_at = Some(at(30));
        let offered = explain(&c, &[], &[], &PoolPolicy::default());
        assert_eq!(
            offered.summary,
            "Offered to `ann` (last_agent), who has until 2023-11-14T22:13:50Z to accept it."
        );
        c.status = ConversationStatus::Bot;
        c.agent_id = Some("bot:faq".to_owned());
        assert_eq!(
            explain(&c, &[], &[], &PoolPolicy::default()).summary,
            "Held by the bot `bot:faq` of pool `default`."
        );
        c.status = ConversationStatus::Closed;
        c.close_reason = Some("idle".to_owned());
        assert_eq!(
            explain(&c, &[], &[], &PoolPolicy::default()).summary,
            "Closed (idle)."
        );
    }
}
