//! What Switchyard needs of the Redis server it stores in, read from `INFO`: a version whose
//! scripts run (`LPOS` needs 6.0.6), no cluster mode (the scripts touch keys they compute), no
//! eviction (an evicted key corrupts the state), and persistence (a Redis that restarts empty
//! forgets everything). docs/operations.md ("Redis") explains each.

use std::fmt;

/// The oldest Redis whose commands every script uses (`LPOS`: 6.0.6).
pub const MIN_VERSION: (u32, u32, u32) = (6, 0, 6);

/// The fields of `INFO` that matter here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerInfo {
    /// `redis_version`.
    pub version: String,
    /// `maxmemory_policy` (`INFO memory`).
    pub maxmemory_policy: Option<String>,
    /// `cluster_enabled:1` (`INFO cluster`).
    pub cluster_enabled: bool,
    /// `aof_enabled` (`INFO persistence`); `None` when not reported.
    pub aof_enabled: Option<bool>,
    /// `role` (`INFO replication`): `master` or `slave`.
    pub role: Option<String>,
}

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Switchyard cannot work correctly on this server.
    Error,
    /// It works, but can lose or corrupt state in circumstances the operator should know.
    Warning,
}

/// Something about the server an operator should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// How much it matters.
    pub severity: Severity,
    /// What, and what to do.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}", self.message)
    }
}

impl ServerInfo {
    /// Reads the fields from the text of `INFO` (`name:value` lines, `#` section headers).
    pub fn parse(info: &str) -> Self {
        let mut parsed = ServerInfo::default();
        for line in info.lines() {
            let Some((name, value)) = line.trim().split_once(':') else {
                continue;
            };
            match name {
                "redis_version" => parsed.version = value.to_owned(),
                "maxmemory_policy" => parsed.maxmemory_policy = Some(value.to_owned()),
                "cluster_enabled" => parsed.cluster_enabled = value == "1",
                "aof_enabled" => parsed.aof_enabled = Some(value == "1"),
                "role" => parsed.role = Some(value.to_owned()),
                _ => {}
            }
        }
        parsed
    }

    /// The version as numbers, when it reads as `major.minor.patch`.
    fn version_numbers(&self) -> Option<(u32, u32, u32)> {
        let mut parts = self.version.split('.').map(|p| p.parse::<u32>().ok());
        Some((
            parts.next()??,
            parts.next()??,
            parts.next().flatten().unwrap_or(0),
        ))
    }

    /// What is wrong or risky about this server, errors first.
    pub fn findings(&self) -> Vec<Finding> {
        let mut found = Vec::new();
        let error = |message: String| Finding {
            severity: Severity::Error,
            message,
        };
        let warning = |message: String| Finding {
            severity: Severity::Warning,
            message,
        };
        match self.version_numbers() {
            Some(v) if v < MIN_VERSION => found.push(error(format!(
                "Redis {} is too old: the store's scripts need {}.{}.{} or later",
                self.version, MIN_VERSION.0, MIN_VERSION.1, MIN_VERSION.2
            ))),
            Some(_) => {}
            None => found.push(warning(format!(
                "the Redis version `{}` could not be read; the store's scripts need {}.{}.{} or later",
                self.version, MIN_VERSION.0, MIN_VERSION.1, MIN_VERSION.2
            ))),
        }
        if self.cluster_enabled {
            found.push(error(
                "Redis runs in cluster mode, which the store does not support: its scripts touch \
                 keys they compute; use one primary (with replicas and Sentinel for failover)"
                    .to_owned(),
            ));
        }
        if self.role.as_deref() == Some("slave") {
            found.push(error(
                "this Redis is a replica: point store.url at the primary, or use store.sentinel"
                    .to_owned(),
            ));
        }
        match self.maxmemory_policy.as_deref() {
            Some("noeviction") | None => {}
            Some(policy) => found.push(warning(format!(
                "maxmemory-policy is `{policy}`: under memory pressure Redis evicts keys, which \
                 corrupts customers, conversations and queues; set it to `noeviction`"
            ))),
        }
        if self.aof_enabled == Some(false) {
            found.push(warning(
                "the append-only file is off (appendonly no): a Redis that restarts may have \
                 forgotten its latest writes, or everything without snapshots"
                    .to_owned(),
            ));
        }
        found.sort_by_key(|f| f.severity == Severity::Warning);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEALTHY: &str = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n\r\n\
        # Memory\r\nmaxmemory_policy:noeviction\r\n# Persistence\r\naof_enabled:1\r\n\
        # Replication\r\nrole:master\r\n# Cluster\r\ncluster_enabled:0\r\n";

    #[test]
    fn a_healthy_server_has_nothing_to_report() {
        let info = ServerInfo::parse(HEALTHY);
        assert_eq!(info.version, "7.0.15");
        assert_eq!(info.maxmemory_policy.as_deref(), Some("noeviction"));
        assert_eq!(info.aof_enabled, Some(true));
        assert!(!info.cluster_enabled);
        assert_eq!(info.findings(), Vec::new());
    }

    #[test]
    fn each_problem_is_found_errors_first() {
        let info = ServerInfo::parse(
            &HEALTHY
                .replace("7.0.15", "6.0.5")
                .replace("noeviction", "allkeys-lru")
                .replace("aof_enabled:1", "aof_enabled:0")
                .replace("cluster_enabled:0", "cluster_enabled:1")
                .replace("role:master", "role:slave"),
        );
        let found: Vec<(Severity, bool)> = info
            .findings()
            .iter()
            .map(|f| (f.severity, f.message.is_empty()))
            .collect();
        assert_eq!(
            found,
            [
                (Severity::Error, false),
                (Severity::Error, false),
                (Severity::Error, false),
                (Severity::Warning, false),
                (Severity::Warning, false)
            ]
        );
        let text: Vec<String> = info.findings().iter().map(ToString::to_string).collect();
        assert!(text[0].contains("6.0.5 is too old"), "{text:?}");
        assert!(text[1].contains("cluster mode"), "{text:?}");
        assert!(text[2].contains("replica"), "{text:?}");
        assert!(text[3].contains("allkeys-lru"), "{text:?}");
        assert!(text[4].contains("append-only"), "{text:?}");
    }

    #[test]
    fn versions_compare_as_numbers() {
        for (version, too_old) in [
            ("6.0.6", false),
            ("6.0.10", false),
            ("6.2", false),
            ("5.0.14", true),
            ("10.0.0", false),
        ] {
            let info = ServerInfo {
                version: version.to_owned(),
                ..ServerInfo::default()
            };
            assert_eq!(
                info.findings()
                    .iter()
                    .any(|f| f.severity == Severity::Error),
                too_old,
                "{version}"
            );
        }
        let unreadable = ServerInfo {
            version: "unstable".to_owned(),
            ..ServerInfo::default()
        };
        assert_eq!(unreadable.findings()[0].severity, Severity::Warning);
    }
}
