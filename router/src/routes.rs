//! Routing rules (`[[routes]]`): which pool a new conversation goes to. Rules are tried in
//! order against the message that opens the conversation (and, for `customer_tags`, the
//! sender's profile as it is before the message is routed); the first that matches names the
//! pool, and when none does the channel's `pool` applies. A message to a conversation that is
//! already open stays in that conversation's pool.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use regex::Regex;

use switchyard_core::config::{ConfigError, RouteSettings, Settings, bot_agent_id};
use switchyard_core::envelope::{Content, Envelope};
use switchyard_core::model::{Customer, Skills};
use switchyard_core::store::Placement;

/// Where a new conversation goes, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteChoice<'a> {
    /// The pool.
    pub pool: &'a str,
    /// The id of the rule that chose it; `None` when the channel's pool applies.
    pub rule: Option<&'a str>,
    /// The agent id of the pool's bot (`bot:{id}`), which then holds the conversation first.
    pub bot: Option<&'a str>,
    /// The skills the conversation asks of its agent (the rule's; none without a rule).
    pub skills: &'a Skills,
    /// Its priority in the pool's queue (the rule's; 0 without a rule).
    pub priority: u8,
    /// Whether it prefers the customer's last agent (the pool's `prefer_last_agent`).
    pub prefer_last_agent: bool,
    /// Seconds an agent has to accept it (the pool's `offer_timeout_secs`).
    pub offer_secs: u64,
}

/// What a conversation no rule routed asks of its agent.
static NO_SKILLS: Skills = Skills::NONE;

impl RouteChoice<'_> {
    /// Where the store puts a conversation opened on this choice.
    pub fn placement(&self) -> Placement {
        Placement {
            pool: self.pool.to_owned(),
            bot: self.bot.map(str::to_owned),
            skills: self.skills.clone(),
            priority: self.priority,
            prefer_last_agent: self.prefer_last_agent,
            offer_secs: self.offer_secs,
        }
    }
}

/// The configured routing rules, compiled, with each channel's own pool behind them.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    rules: Vec<Rule>,
    pools_by_channel: HashMap<String, String>,
    /// Pool id -> what a conversation the pool opens gets from the pool's settings.
    pools: HashMap<String, PoolPlacement>,
    /// Whether a rule has `customer_tags`: only then is the sender's profile worth reading
    /// before choosing.
    reads_customer_tags: bool,
}

/// What a conversation a pool opens gets from the pool's `[[pools]]` settings.
#[derive(Debug, Clone, Default)]
struct PoolPlacement {
    /// The agent id of its bot (`bot:{id}`).
    bot: Option<String>,
    /// `prefer_last_agent`.
    prefer_last_agent: bool,
    /// `offer_timeout_secs`.
    offer_secs: u64,
}

/// One compiled rule.
#[derive(Debug, Clone)]
struct Rule {
    id: String,
    pool: String,
    channels: Vec<String>,
    channel_kinds: Vec<String>,
    tenants: Vec<String>,
    identity_kinds: Vec<String>,
    /// Lower-cased, compared with the lower-cased text.
    text_contains: Vec<String>,
    text_matches: Option<Regex>,
    /// Tags of which the customer must have one; empty: any customer.
    customer_tags: Vec<String>,
    /// What a conversation it routes asks of its agent.
    skills: Skills,
    /// A conversation it routes waits with this priority.
    priority: u8,
}

impl RoutingTable {
    /// The rules of `settings.routes` and the pools of `settings.channels`.
    pub fn from_settings(settings: &Settings) -> Result<Self, ConfigError> {
        let rules: Vec<Rule> = settings
            .routes
            .iter()
            .enumerate()
            .map(|(i, route)| Rule::compile(i, route))
            .collect::<Result<_, _>>()?;
        let pools_by_channel = settings
            .channels
            .iter()
            .map(|c| (c.id.clone(), c.pool.clone()))
            .collect();
        let pools = settings
            .pools
            .iter()
            .map(|p| {
                let placement = PoolPlacement {
                    bot: p.bot.as_deref().map(bot_agent_id),
                    prefer_last_agent: p.prefer_last_agent,
                    offer_secs: p.offer_timeout_secs,
                };
                (p.id.clone(), placement)
            })
            .collect();
        Ok(RoutingTable {
            reads_customer_tags: rules.iter().any(|r| !r.customer_tags.is_empty()),
            rules,
            pools_by_channel,
            pools,
        })
    }

    /// Whether a rule looks at the customer's tags, so that [`RoutingTable::choose`] needs the
    /// sender's profile. Without such a rule, routing reads nothing more than the message.
    pub fn reads_customer_tags(&self) -> bool {
        self.reads_customer_tags
    }

    /// The pool a conversation opened by `envelope` goes to. `customer` is the sender's profile
    /// as it is before the message is routed, when [`RoutingTable::reads_customer_tags`] (`None`
    /// otherwise, or for a new customer): a rule with `customer_tags` matches only a customer
    /// who has one of them.
    pub fn choose(&self, envelope: &Envelope, customer: Option<&Customer>) -> RouteChoice<'_> {
        let tags = customer.map_or(&[][..], |c| c.tags.as_slice());
        let text = routable_text(&envelope.content);
        let text = text.as_deref();
        // Lower-cased once per message, and only when a rule looks for words.
        let lowered = match text {
            Some(text) if self.rules.iter().any(|r| !r.text_contains.is_empty()) => {
                Some(text.to_lowercase())
            }
            _ => None,
        };
        let rule = self
            .rules
            .iter()
            .find(|rule| rule.matches(envelope, tags, text, lowered.as_deref()));
        let pool = match rule {
            Some(rule) => rule.pool.as_str(),
            None => self
                .pools_by_channel
                .get(&envelope.channel.id)
                .map_or("default", String::as_str),
        };
        let settings = self.pools.get(pool);
        RouteChoice {
            pool,
            rule: rule.map(|r| r.id.as_str()),
            bot: settings.and_then(|p| p.bot.as_deref()),
            skills: rule.map_or(&NO_SKILLS, |r| &r.skills),
            priority: rule.map_or(0, |r| r.priority),
            prefer_last_agent: settings.is_some_and(|p| p.prefer_last_agent),
            offer_secs: settings.map_or(0, |p| p.offer_secs),
        }
    }
}

impl Rule {
    fn compile(index: usize, route: &RouteSettings) -> Result<Self, ConfigError> {
        let text_matches = route.text_pattern().map_err(|e| ConfigError::Invalid {
            key: format!("routes[{index}].text_matches"),
            message: format!("not a valid regular expression: {e}"),
        })?;
        Ok(Rule {
            id: route.id.clone(),
            pool: route.pool.clone(),
            channels: route.channels.clone(),
            channel_kinds: route.channel_kinds.clone(),
            tenants: route.tenants.clone(),
            identity_kinds: route.identity_kinds.clone(),
            text_contains: route
                .text_contains
                .iter()
                .map(|word| word.to_lowercase())
                .collect(),
            text_matches,
            customer_tags: route.customer_tags.clone().unwrap_or_default(),
            skills: Skills::new(route.skills.iter().cloned()),
            priority: route.priority,
        })
    }

    /// Whether every condition holds for `envelope` from a customer with `tags`; `lowered` is
    /// `text` lower-cased, when a rule needs it.
    fn matches(
        &self,
        envelope: &Envelope,
        tags: &[String],
        text: Option<&str>,
        lowered: Option<&str>,
    ) -> bool {
        let any_of =
            |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
        any_of(&self.channels, &envelope.channel.id)
            && any_of(&self.channel_kinds, &envelope.channel.kind)
            && any_of(&self.tenants, &envelope.tenant)
            && (self.identity_kinds.is_empty()
                || envelope
                    .sender
                    .identities
                    .iter()
                    .any(|key| self.identity_kinds.iter().any(|kind| kind == key.kind())))
            && (self.text_contains.is_empty()
                || lowered.is_some_and(|text| {
                    self.text_contains
                        .iter()
                        .any(|word| text.contains(word.as_str()))
                }))
            && self
                .text_matches
                .as_ref()
                .is_none_or(|pattern| text.is_some_and(|text| pattern.is_match(text)))
            && (self.customer_tags.is_empty()
                || self.customer_tags.iter().any(|tag| tags.contains(tag)))
    }
}

/// Pool id -> its `offer_timeout_secs`, for the pools that make offers.
pub fn offer_secs_by_pool(settings: &Settings) -> HashMap<String, u64> {
    settings
        .pools
        .iter()
        .filter(|p| p.offer_timeout_secs > 0)
        .map(|p| (p.id.clone(), p.offer_timeout_secs))
        .collect()
}

/// Each bot's pools: the bot's agent id (`bot:{id}`) -> the pools whose `bot` it is, in
/// configured order; a conversation handed to the bot belongs to one of them (the first, unless
/// the transfer names another).
pub fn bot_pools(settings: &Settings) -> HashMap<String, Vec<String>> {
    let mut pools: HashMap<String, Vec<String>> = HashMap::new();
    for pool in &settings.pools {
        if let Some(bot) = &pool.bot {
            pools
                .entry(bot_agent_id(bot))
                .or_default()
                .push(pool.id.clone());
        }
    }
    pools
}

/// The pools with `prefer_last_agent`.
pub fn last_agent_pools(settings: &Settings) -> HashSet<String> {
    settings
        .pools
        .iter()
        .filter(|p| p.prefer_last_agent)
        .map(|p| p.id.clone())
        .collect()
}

/// The words of a message that text conditions look at: a text's, or a media's caption and the
/// speech recognised in a voice message (one line each, when there are both). Other content has
/// none, so a rule with a text condition never matches it.
fn routable_text(content: &Content) -> Option<Cow<'_, str>> {
    let recognition = match content {
        Content::Text { text } => return Some(Cow::Borrowed(text)),
        Content::Audio {
            recognition: Some(text),
            ..
        } => Some(text.as_str()),
        _ => None,
    };
    match (recognition, content.caption()) {
        (Some(speech), Some(caption)) => Some(Cow::Owned(format!("{speech}\n{caption}"))),
        (words, caption) => words.or(caption).map(Cow::Borrowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::envelope::{ChannelRef, Direction, Media, Sender};

    fn settings(toml: &str) -> Settings {
        settings_with_pools("", toml)
    }

    /// The test channels and pools, `pools` more, then `toml`.
    fn settings_with_pools(pools: &str, toml: &str) -> Settings {
        let base = "[[pools]]\nid = \"billing\"\n[[pools]]\nid = \"vip\"\n[[pools]]\nid = \"app\"\n\
                    [[channels]]\nid = \"web\"\nkind = \"web\"\n\
                    [[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"0123456789abcdef\"\npool = \"app\"\n";
        let path = std::env::temp_dir().join(format!(
            "switchyard-routes-{}.toml",
            switchyard_core::envelope::new_id()
        ));
        std::fs::write(&path, format!("{pools}{base}{toml}")).unwrap();
        let settings = Settings::load_with_env(Some(&path), []);
        let _ = std::fs::remove_file(&path);
        settings.unwrap()
    }

    fn message(channel: (&str, &str), identities: &[&str], content: Content) -> Envelope {
        let now = switchyard_core::time::now();
        Envelope {
            id: switchyard_core::envelope::new_id(),
            tenant: "default".into(),
            direction: Direction::Inbound,
            channel: ChannelRef {
                kind: channel.1.into(),
                id: channel.0.into(),
            },
            sender: Sender {
                external_id: "u1".into(),
                scope: String::new(),
                display_name: None,
                identities: identities.iter().map(|k| k.parse().unwrap()).collect(),
            },
            customer_id: None,
            conversation_id: None,
            sent_at: now,
            received_at: now,
            dedupe_key: "d-1".into(),
            content,
            reply_to: None,
            agent_id: None,
            raw: None,
        }
    }

    fn text(channel: (&str, &str), text: &str) -> Envelope {
        message(
            channel,
            &["web_visitor:web:v1"],
            Content::Text { text: text.into() },
        )
    }

    const WEB: (&str, &str) = ("web", "web");
    const SHOP: (&str, &str) = ("shop", "api");

    #[test]
    fn without_rules_the_channel_pool_applies() {
        let table = RoutingTable::from_settings(&settings("")).unwrap();
        let choice = |channel| table.choose(&text(channel, "hi"), None);
        assert_eq!(
            choice(WEB),
            RouteChoice {
                pool: "default",
                rule: None,
                bot: None,
                skills: &Skills::NONE,
                priority: 0,
                prefer_last_agent: false,
                offer_secs: 0,
            }
        );
        assert_eq!(
            choice(SHOP),
            RouteChoice {
                pool: "app",
                rule: None,
                bot: None,
                skills: &Skills::NONE,
                priority: 0,
                prefer_last_agent: false,
                offer_secs: 0,
            }
        );
        assert_eq!(
            choice(("gone", "web")).pool,
            "default",
            "an unknown channel"
        );
    }

    #[test]
    fn a_rule_gives_its_skills_and_priority_and_the_channel_pool_none() {
        let table = RoutingTable::from_settings(&settings(
            "[[routes]]\nid = \"chinese\"\npool = \"vip\"\ntext_matches = \"\\\\p{Han}\"\n\
             skills = [\"zh\", \"billing\", \"zh\"]\npriority = 3\n",
        ))
        .unwrap();
        let chinese = table.choose(&text(WEB, "我要退款"), None);
        assert_eq!(chinese.rule, Some("chinese"));
        assert_eq!(chinese.skills, &Skills::new(["billing", "zh"]));
        assert_eq!(
            chinese.placement(),
            Placement::queued("vip")
                .with_skills(Skills::new(["zh", "billing"]))
                .with_priority(3)
        );
        let other = table.choose(&text(WEB, "refund"), None);
        assert_eq!((other.rule, other.skills), (None, &Skills::NONE));
        assert_eq!(other.placement(), Placement::queued("default"));
    }

    #[test]
    fn a_pool_preferring_the_last_agent_or_making_offers_says_so_in_its_placements() {
        let table = RoutingTable::from_settings(&settings_with_pools(
            "[[pools]]\nid = \"support\"\nprefer_last_agent = true\noffer_timeout_secs = 20\n",
            "[[routes]]\nid = \"help\"\npool = \"support\"\ntext_contains = [\"help\"]\n",
        ))
        .unwrap();
        let help = table.choose(&text(WEB, "help me"), None);
        assert_eq!(
            help.placement(),
            Placement::queued("support")
                .preferring_last_agent(true)
                .offered_for(20)
        );
        let other = table.choose(&text(WEB, "hello"), None);
        assert_eq!(other.placement(), Placement::queued("default"));
    }

    #[test]
    fn the_first_matching_rule_wins() {
        let table = RoutingTable::from_settings(&settings(
            "[[routes]]\nid = \"refunds\"\npool = \"billing\"\ntext_contains = [\"Refund\", \"退款\"]\n\
             [[routes]]\nid = \"all-web\"\npool = \"vip\"\nchannels = [\"web\"]\n",
        ))
        .unwrap();
        let choose = |channel, words: &str| table.choose(&text(channel, words), None);
        assert_eq!(
            choose(WEB, "I want a REFUND now"),
            RouteChoice {
                pool: "billing",
                rule: Some("refunds"),
                bot: None,
                skills: &Skills::NONE,
                priority: 0,
                prefer_last_agent: false,
                offer_secs: 0,
            }
        );
        assert_eq!(choose(SHOP, "我要退款").rule, Some("refunds"));

        assert_eq!(choose(WEB, "hello").rule, Some("all-web"));
        assert_eq!(
            choose(SHOP, "hello"),
            RouteChoice {
                pool: "app",
                rule: None,
                bot: None,
                skills: &Skills::NONE,
                priority: 0,
                prefer_last_agent: false,
                offer_secs: 0,
            }
        );
    }

    #[test]
    fn every_condition_of_a_rule_must_hold() {
        let table = RoutingTable::from_settings(&settings(
            "[[routes]]\nid = \"vip-app\"\npool = \"vip\"\nchannel_kinds = [\"api\"]\n\
             identity_kinds = [\"phone\"]\ntext_matches = \"(?i)^order #\\\\d+\"\n",
        ))
        .unwrap();
        let with = |identities: &[&str], words: &str| {
            table
                .choose(
                    &message(SHOP, identities, Content::Text { text: words.into() }),
                    None,
                )
                .rule
        };
        let phone = ["app_user:shop:1", "phone::+8613800000000"];
        assert_eq!(with(&phone, "Order #42 is late"), Some("vip-app"));
        assert_eq!(
            with(&["app_user:shop:1"], "Order #42 is late"),
            None,
            "no phone"
        );
        assert_eq!(with(&phone, "where is order #42"), None, "anchored pattern");
        let web = message(
            WEB,
            &phone,
            Content::Text {
                text: "order #1".into(),
            },
        );
        assert_eq!(table.choose(&web, None).rule, None, "wrong channel kind");
    }

    #[test]
    fn text_conditions_read_text_and_recognised_speech_only() {
        let table = RoutingTable::from_settings(&settings(
            "[[routes]]\nid = \"refunds\"\npool = \"billing\"\ntext_contains = [\"refund\"]\n",
        ))
        .unwrap();
        let media = Media {
            url: Some("https://example.com/a.amr".into()),
            ..Media::default()
        };
        let voice = |recognition: Option<&str>| {
            message(
                WEB,
                &["web_visitor:web:v1"],
                Content::Audio {
                    media: media.clone(),
                    recognition: recognition.map(str::to_owned),
                    caption: None,
                },
            )
        };
        assert_eq!(
            table.choose(&voice(Some("a refund please")), None).rule,
            Some("refunds")
        );
        assert_eq!(table.choose(&voice(None), None).rule, None);
        let image = message(
            WEB,
            &["web_visitor:web:v1"],
            Content::Image {
                media,
                caption: None,
            },
        );
        assert_eq!(table.choose(&image, None).pool, "default");
    }

    #[test]
    fn a_caption_counts_as_text() {
        let table = RoutingTable::from_settings(&settings(
            "[[routes]]\nid = \"refunds\"\npool = \"billing\"\ntext_contains = [\"refund\"]\n\
             [[routes]]\nid = \"late\"\npool = \"vip\"\ntext_matches = \"(?m)^late$\"\n",
        ))
        .unwrap();
        let media = Media {
            url: Some("https://example.com/a".into()),
            ..Media::default()
        };
        let web = |content: Content| message(WEB, &["web_visitor:web:v1"], content);
        let image = |caption: Option<&str>| {
            web(Content::Image {
                media: media.clone(),
                caption: caption.map(str::to_owned),
            })
        };
        assert_eq!(
            table.choose(&image(Some("REFUND for this?")), None).rule,
            Some("refunds")
        );
        assert_eq!(table.choose(&image(Some("late")), None).rule, Some("late"));
        assert_eq!(table.choose(&image(None), None).rule, None);
        let file = web(Content::File {
            media: media.clone(),
            name: Some("refund.pdf".into()),
            caption: Some("the invoice".into()),
        });
        assert_eq!(
            table.choose(&file, None).rule,
            None,
            "a file name is not text"
        );
        let voice = |recognition: &str, caption: &str| {
            web(Content::Audio {
                media: media.clone(),
                recognition: Some(recognition.into()),
                caption: Some(caption.into()),
            })
        };
        assert_eq!(
            table.choose(&voice("hello", "refund"), None).rule,
            Some("refunds")
        );
        assert_eq!(
            table.choose(&voice("refund", "hello"), None).rule,
            Some("refunds")
        );
        assert_eq!(
            table.choose(&voice("so", "late"), None).rule,
            Some("late"),
            "speech and caption are a line each"
        );
    }

    #[test]
    fn a_pool_with_a_bot_names_it() {
        let with_bot = "[[bots]]\nid = \"faq\"\nurl = \"https://bot.example\"\n\
                        secret = \"0123456789abcdef\"\n\
                        [[routes]]\nid = \"triage\"\npool = \"triage\"\nchannels = [\"web\"]\n";
        let table = RoutingTable::from_settings(&settings_with_pools(
            "[[pools]]\nid = \"triage\"\nbot = \"faq\"\n",
            with_bot,
        ))
        .unwrap();
        assert_eq!(
            table.choose(&text(WEB, "hi"), None),
            RouteChoice {
                pool: "triage",
                rule: Some("triage"),
                bot: Some("bot:faq"),
                skills: &Skills::NONE,
                priority: 0,
                prefer_last_agent: false,
                offer_secs: 0,
            }
        );
        assert_eq!(
            table.choose(&text(SHOP, "hi"), None).bot,
            None,
            "the app pool has none"
        );
    }

    /// A profile with `tags`.
    fn customer(tags: &[&str]) -> Customer {
        let now = switchyard_core::time::now();
        Customer {
            id: switchyard_core::envelope::new_id(),
            tenant: "default".into(),
            display_name: None,
            identities: Vec::new(),
            merged_from: Vec::new(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            attributes: serde_json::Map::new(),
            first_seen: now,
            last_seen: now,
        }
    }

    #[test]
    fn customer_tags_match_a_customer_with_any_of_them_and_the_other_conditions() {
        let table = RoutingTable::from_settings(&settings(
            "[[routes]]\nid = \"refunds\"\npool = \"billing\"\ntext_contains = [\"refund\"]\n\
             [[routes]]\nid = \"vip-shop\"\npool = \"vip\"\nchannels = [\"shop\"]\n\
             customer_tags = [\"vip\", \"gold\"]\n",
        ))
        .unwrap();
        assert!(table.reads_customer_tags());
        let gold = customer(&["returning", "gold"]);
        let plain = customer(&["returning"]);
        let choose = |channel, words: &str, customer: Option<&Customer>| {
            table.choose(&text(channel, words), customer)
        };
        assert_eq!(
            choose(SHOP, "hello", Some(&gold)),
            RouteChoice {
                pool: "vip",
                rule: Some("vip-shop"),
                bot: None,
                skills: &Skills::NONE,
                priority: 0,
                prefer_last_agent: false,
                offer_secs: 0,
            }
        );
        assert_eq!(
            choose(SHOP, "hello", Some(&customer(&["vip"]))).rule,
            Some("vip-shop")
        );
        assert_eq!(
            choose(SHOP, "hello", Some(&plain)).pool,
            "app",
            "none of the tags"
        );
        assert_eq!(
            choose(SHOP, "hello", None).pool,
            "app",
            "a new customer has no tags"
        );
        assert_eq!(
            choose(WEB, "hello", Some(&gold)).rule,
            None,
            "the rule's channel condition holds too"
        );
        assert_eq!(
            choose(SHOP, "a refund", Some(&gold)).rule,
            Some("refunds"),
            "the first matching rule wins"
        );
    }

    #[test]
    fn only_a_rule_with_customer_tags_needs_the_customer() {
        for (routes, reads) in [
            ("", false),
            (
                "[[routes]]\nid = \"refunds\"\npool = \"billing\"\ntext_contains = [\"refund\"]\n",
                false,
            ),
            (
                "[[routes]]\nid = \"vip\"\npool = \"vip\"\ncustomer_tags = [\"vip\"]\n",
                true,
            ),
        ] {
            let table = RoutingTable::from_settings(&settings(routes)).unwrap();
            assert_eq!(table.reads_customer_tags(), reads, "{routes}");
        }
    }

    #[test]
    fn tenants_narrow_a_rule() {
        let table = RoutingTable::from_settings(&settings(
            "[[routes]]\nid = \"acme\"\npool = \"vip\"\ntenants = [\"acme\"]\n",
        ))
        .unwrap();
        let mut envelope = text(WEB, "hi");
        assert_eq!(table.choose(&envelope, None).rule, None);
        envelope.tenant = "acme".into();
        assert_eq!(table.choose(&envelope, None).rule, Some("acme"));
    }
}
