//! The Redis store behind Redis Sentinel, on Redis servers this test starts on ports of its own
//! (a master, a replica and one sentinel): it follows the master through a failover the
//! sentinel is asked for (the old master turns into a replica and refuses writes) and through
//! one where the master is killed. Skips loudly without `redis-server`; fails under `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use switchyard_core::conformance::services::{RedisProcess, free_port};
use switchyard_core::model::AgentStatus;
use switchyard_core::store::redis::{RedisStore, RedisTarget};
use switchyard_core::store::{AgentUpdate, Store};
use switchyard_core::tls::ClientTls;
use tokio::time::{Instant, sleep};

const MASTER: &str = "sytest";
const PREFIX: &str = "sy-sentinel";

/// A Redis server (or sentinel) of this test.
struct Server(RedisProcess);

impl Server {
    fn data(port: u16, replica_of: Option<u16>) -> Option<Server> {
        let port_arg = port.to_string();
        let mut args = vec![
            "--port",
            &port_arg,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        let upstream = replica_of.map(|p| p.to_string());
        if let Some(upstream) = &upstream {
            args.extend(["--replicaof", "127.0.0.1", upstream]);
        }
        RedisProcess::start(&args, port).map(Server)
    }

    fn sentinel(port: u16, master_port: u16, dir: &Path) -> Option<Server> {
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 5000\n",
                dir.display()
            ),
        )
        .expect("write the sentinel's configuration");
        RedisProcess::start(&[conf.to_str().expect("utf-8 path"), "--sentinel"], port).map(Server)
    }

    fn connection(&self) -> redis::Connection {
        self.try_connection().expect("connect to a test server")
    }

    /// A connection, if the server answers (it may still be starting, or be dead).
    fn try_connection(&self) -> Option<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.0.port))
            .ok()?
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()
    }

    fn kill(&mut self) {
        self.0.kill();
    }
}

/// Polls `check` every 100 ms until it holds, failing after `limit`.
async fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        sleep(Duration::from_millis(100)).await;
    }
}

/// The port the sentinel names as the master's, if it answers.
fn named_master(sentinel: &Server) -> Option<u16> {
    let mut con = sentinel.try_connection()?;
    let addr: Vec<String> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(MASTER)
        .query(&mut con)
        .ok()?;
    addr.get(1)?.parse().ok()
}

/// The first word of `ROLE` of the server on `port` (`master`, `slave`), if it answers.
fn role(server: &Server) -> Option<String> {
    let mut con = server.try_connection()?;
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut con).ok()?;
    match role.first()? {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Whether the sentinel knows a replica of the master that is in sync.
fn sentinel_sees_replica(sentinel: &Server) -> bool {
    let Some(mut con) = sentinel.try_connection() else {
        return false;
    };
    let replicas: Vec<Vec<String>> = redis::cmd("SENTINEL")
        .arg("replicas")
        .arg(MASTER)
        .query(&mut con)
        .unwrap_or_default();
    replicas.iter().any(|fields| {
        fields
            .chunks(2)
            .any(|kv| kv[0] == "master-link-status" && kv.get(1).is_some_and(|v| v == "ok"))
    })
}

fn kv(server: &Server, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(format!("{PREFIX}:kv:{key}"))
        .query(&mut server.connection())
        .unwrap()
}

/// Writes `key` through the store until it succeeds (a store call may fail while no master is
/// reachable), failing after `limit`.
async fn write_until_ok(store: &RedisStore, key: &str, value: &str, limit: Duration) {
    let started = Instant::now();
    loop {
        match store.set_key(key, value, Duration::from_secs(600)).await {
            Ok(()) => return,
            Err(e) => assert!(
                started.elapsed() < limit,
                "writing `{key}`: still failing after {limit:?}: {e}"
            ),
        }
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_follows_the_master_through_failovers() {
    let dir = std::env::temp_dir().join(format!("sy-sentinel-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let (first, second, sentinel_port) = (free_port(), free_port(), free_port());
    let Some(mut a) = Server::data(first, None) else {
        return;
    };
    let Some(mut b) = Server::data(second, Some(first)) else {
        return;
    };
    until("the master starts", Duration::from_secs(10), || {
        role(&a).as_deref() == Some("master")
    })
    .await;
    let Some(sentinel) = Server::sentinel(sentinel_port, first, &dir) else {
        return;
    };
    until(
        "the sentinel sees the replica in sync",
        Duration::from_secs(20),
        || sentinel_sees_replica(&sentinel),
    )
    .await;

    let store = RedisStore::connect_to(
        &RedisTarget::Sentinel {
            master: MASTER.to_owned(),
            nodes: vec![format!("redis://127.0.0.1:{sentinel_port}")],
            url: None,
            tls: ClientTls::default(),
        },
        PREFIX,
    )
    .await
    .expect("connect through the sentinel");
    write_until_ok(&store, "before", "1", Duration::from_secs(1)).await;
    assert_eq!(
        kv(&a, "before").as_deref(),
        Some("1"),
        "written on the master"
    );
    // (`WAIT` on a connection of its own would not wait: it waits for that connection's writes.)
    until("the replica has the write", Duration::from_secs(5), || {
        kv(&b, "before").as_deref() == Some("1")
    })
    .await;

    // 1. A failover the sentinel is asked for: the old master becomes a replica (READONLY).
    let _: () = redis::cmd("SENTINEL")
        .arg("failover")
        .arg(MASTER)
        .query(&mut sentinel.connection())
        .unwrap();
    until(
        "the sentinel names the replica",
        Duration::from_secs(20),
        || named_master(&sentinel) == Some(second),
    )
    .await;
    until(
        "the old master turns into a replica",
        Duration::from_secs(20),
        || role(&a).as_deref() == Some("slave"),
    )
    .await;
    // The first write meets READONLY and is made again on the new master, in the same call.
    store
        .set_key("after-switch", "2", Duration::from_secs(600))
        .await
        .expect("a write right after the switch goes to the new master");
    assert_eq!(kv(&b, "after-switch").as_deref(), Some("2"));
    assert_eq!(
        store.get_key("before").await.unwrap().as_deref(),
        Some("1"),
        "what was replicated before the failover is still there"
    );
    // A script (every state change is one) after the switch.
    let agent = store
        .upsert_agent(
            AgentUpdate {
                id: "a1".to_owned(),
                status: Some(AgentStatus::Online),
                ..AgentUpdate::default()
            },
            switchyard_core::time::now(),
        )
        .await
        .expect("a script on the new master");
    assert_eq!(agent.status, AgentStatus::Online);

    // 2. The master (now `b`) dies: the sentinel promotes `a` after its down-after time, and the
    //    store, failing meanwhile, reconnects to it.
    until("`a` is in sync again", Duration::from_secs(20), || {
        sentinel_sees_replica(&sentinel)
    })
    .await;
    until(
        "`a` has the agent written on `b`",
        Duration::from_secs(5),
        || {
            redis::cmd("EXISTS")
                .arg(format!("{PREFIX}:agent:a1"))
                .query::<i64>(&mut a.connection())
                .is_ok_and(|n| n == 1)
        },
    )
    .await;
    b.kill();
    write_until_ok(&store, "after-crash", "3", Duration::from_secs(30)).await;
    assert_eq!(named_master(&sentinel), Some(first));
    assert_eq!(kv(&a, "after-crash").as_deref(), Some("3"));
    assert_eq!(
        store.agent("a1").await.unwrap().map(|a| a.status),
        Some(AgentStatus::Online),
        "the agent written before the crash was replicated"
    );
    drop(sentinel);
    a.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
