//! The `switchyard` binary: the embedded default serves the pages and drains on SIGTERM;
//! `check-config` explains errors with the key path.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// The `switchyard` command line, built by `cargo test` for this package.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_switchyard-under-test"))
}

/// Sends SIGTERM to `child` (a clean stop: it drains and exits); the status of `kill`.
pub fn sigterm(child: &Child) -> std::io::Result<ExitStatus> {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
}

pub use switchyard_core::conformance::services::free_port;

#[tokio::test]
async fn serve_runs_the_embedded_default_and_stops_cleanly_on_sigterm() {
    let port = free_port();
    let mut child = Command::new(binary())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env_remove("SWITCHYARD_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            up = r.status() == 200;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "server did not become ready");
    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/v1/channels/"));
    let console = http.get(format!("{base}/agent")).send().await.unwrap();
    assert!(console.text().await.unwrap().contains("/v1/agents/ws"));
    let openapi: serde_json::Value = http
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3."));

    // SIGTERM: drain and exit 0.
    let status = sigterm(&child).unwrap();
    assert!(status.success());
    let mut exited = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            exited = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exited = exited.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("switchyard did not exit within 10 s of SIGTERM")
    });
    assert!(exited.success(), "exit status {exited:?}");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(
        out.contains(&format!("{base}/agent")),
        "prints the URLs: {out}"
    );
}

#[test]
fn check_config_explains_errors_with_the_key_path() {
    let dir = std::env::temp_dir();
    let good = dir.join(format!("sy-good-{}.toml", std::process::id()));
    std::fs::write(
        &good,
        "[[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"0123456789abcdef\"\n\
         keep_raw = true\nraw_mask = [\"note\"]\n",
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["check-config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));

    let cases = [
        ("[bus]\nshards = \"many\"\n", "bus.shards"),
        (
            "[[channels]]\nid = \"x\"\nkind = \"fax\"\n",
            "unknown channel kind `fax`",
        ),
        (
            "[[channels]]\nid = \"x\"\nkind = \"api\"\n",
            "channels.x.secret",
        ),
        (
            "[[channels]]\nid = \"x\"\nkind = \"api\"\nsecret = \"0123456789abcdef\"\ncolour = 1\n",
            "unknown key(s) colour",
        ),
        (
            "[[channels]]\nid = \"shop\"\nkind = \"telegram\"\nraw_mask = \"note\"\n",
            "`channels.shop.raw_mask`: expected a list of strings",
        ),
        (
            "[bus]\nkind = \"amqp\"\nurl = \"amqps://h/%2f\"\ntls_ca_file = \"/nonexistent/ca.pem\"\n",
            "reading bus.tls_ca_file `/nonexistent/ca.pem`",
        ),
        (
            "[[webhooks]]\nid = \"h\"\nurl = \"https://h\"\nsecret_file = \"/nonexistent/secret\"\n",
            "webhooks.h.secret",
        ),
        (
            "[[routes]]\nid = \"r\"\npool = \"billing\"\n",
            "`routes[0].pool`: pool `billing` is not defined",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let bad = dir.join(format!("sy-bad-{}-{i}.toml", std::process::id()));
        std::fs::write(&bad, text).unwrap();
        let out = Command::new(binary())
            .args(["check-config"])
            .arg(&bad)
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&bad);
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in: {stderr}"
        );
    }
    let _ = std::fs::remove_file(&good);
}

/// `switchyard redact` shows what a channel's rules make of a text given with `--text` or line
/// by line on standard input, and refuses a channel the configuration does not define.
#[test]
fn redact_shows_what_a_channels_rules_make_of_a_text() {
    use std::io::Write;
    use std::process::Stdio;

    let config = std::env::temp_dir().join(format!("sy-redact-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        "[redaction]\ndetectors = [\"payment_card\", \"email\"]\n\
         [[redaction.patterns]]\nname = \"ticket\"\nregex = \"T-[0-9]{4}\"\n\
         [[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"0123456789abcdef\"\n\
         [[channels]]\nid = \"staff\"\nkind = \"api\"\nsecret = \"0123456789abcdef\"\n\
         redact = []\n",
    )
    .unwrap();
    let redact = |channel: &str| {
        let mut command = Command::new(binary());
        command
            .args(["redact", "--config"])
            .arg(&config)
            .args(["--channel", channel]);
        command
    };
    let out = redact("shop")
        .args(["--text", "card 4111 1111 1111 1111 and T-1234, mail a@b.cn"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        shown,
        serde_json::json!({
            "text": "card [redacted:payment_card] and [redacted:ticket], mail [redacted:email]",
            "redactions": {"payment_card": 1, "ticket": 1, "email": 1}
        })
    );

    let mut child = redact("shop")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all("你好\n邮箱 li@example.com\n".as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["text"], "你好");
    assert_eq!(lines[0]["redactions"], serde_json::json!({}));
    assert_eq!(lines[1]["text"], "邮箱 [redacted:email]");
    assert_eq!(lines.len(), 2);

    let out = redact("staff").args(["--text", "a@b.cn"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("redacts nothing"));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["text"],
        "a@b.cn"
    );

    let out = redact("nowhere").args(["--text", "x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("channel `nowhere` is not in the configuration")
    );
    let _ = std::fs::remove_file(&config);
}

/// `switchyard dead-letters` against a real RabbitMQ: lists what a consumer dead-lettered,
/// replays one into the queue it came from, discards the other; and refuses the embedded bus,
/// whose dead letters live inside `serve`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_lists_replays_and_discards_on_rabbitmq() {
    use serde_json::Value;
    use switchyard_core::bus::amqp::AmqpBus;
    use switchyard_core::bus::topology::{OUTBOUND_EXCHANGE, Topology, outbound_queue};
    use switchyard_core::bus::{Bus, Message};
    use switchyard_core::conformance::services::{TestVhost, absent};

    let embedded = std::env::temp_dir().join(format!("sy-dl-embedded-{}.toml", std::process::id()));
    std::fs::write(&embedded, "").unwrap();
    let out = Command::new(binary())
        .args(["dead-letters", "--config"])
        .arg(&embedded)
        .arg("list")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&embedded);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GET /v1/dead-letters"));

    let Some(vhost) = TestVhost::create("deadletters") else {
        return;
    };
    let bus =
        match AmqpBus::connect(&vhost.url, "dead-letters-test", "", Duration::from_secs(5)).await {
            Ok(b) => b,
            Err(e) => {
                let _: Option<()> = absent("RabbitMQ", &e.to_string());
                return;
            }
        };
    let options = switchyard_core::conformance::bus::options(100);
    bus.declare(&Topology::standard(&options)).await.unwrap();
    let queue = outbound_queue("api");
    let mut outbound = bus.consume(&queue, 10).await.unwrap();
    for (id, reason) in [
        ("reply-1", "callback answered 400"),
        ("reply-2", "no callback_url"),
    ] {
        bus.publish(
            OUTBOUND_EXCHANGE,
            "api",
            Message::new(id, format!("{{\"id\":\"{id}\"}}")),
        )
        .await
        .unwrap();
        let delivery = tokio::time::timeout(Duration::from_secs(10), outbound.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(delivery.message.message_id, id);
        delivery.reject(reason).await.unwrap();
    }

    let config = std::env::temp_dir().join(format!("sy-dl-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!("[bus]\nkind = \"amqp\"\nurl = \"{}\"\n", vhost.url),
    )
    .unwrap();
    let run = |args: &[&str]| -> Value {
        let out = Command::new(binary())
            .args(["dead-letters", "--config"])
            .arg(&config)
            .args(args)
            .env_remove("SWITCHYARD_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let listing = run(&["list"]);
    let ids: Vec<&str> = listing["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["reply-1", "reply-2"], "{listing}");
    assert_eq!(listing["dead_letters"][0]["queue"], queue.as_str());
    assert_eq!(listing["dead_letters"][1]["reason"], "no callback_url");
    let only = run(&["list", "--reason-contains", "400"]);
    assert_eq!(only["dead_letters"].as_array().unwrap().len(), 1, "{only}");

    let replayed = run(&["replay", "--id", "reply-1"]);
    assert_eq!(
        replayed["message_ids"],
        serde_json::json!(["reply-1"]),
        "{replayed}"
    );
    let back = tokio::time::timeout(Duration::from_secs(10), outbound.next())
        .await
        .expect("the replayed reply comes back to its queue")
        .unwrap();
    assert_eq!(back.message.message_id, "reply-1");
    assert!(
        !back
            .message
            .headers
            .contains_key(switchyard_core::bus::HEADER_DEATH_REASON),
        "a replayed message leaves its death behind: {:?}",
        back.message.headers
    );
    back.ack().await.unwrap();

    let out = Command::new(binary())
        .args(["dead-letters", "--config"])
        .arg(&config)
        .arg("discard")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a discard must choose");
    let discarded = run(&["discard", "--all"]);
    assert_eq!(
        discarded["message_ids"],
        serde_json::json!(["reply-2"]),
        "{discarded}"
    );
    let listing = run(&["list"]);
    assert_eq!(listing["dead_letters"], serde_json::json!([]), "{listing}");
    let _ = std::fs::remove_file(&config);
    drop(outbound);
    drop(vhost);
}

/// `check-config --connect` connects to the RabbitMQ and Redis a configuration names and says
/// what it found; a Redis it cannot reach makes it exit 1. With the embedded default there is
/// nothing to connect to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_connect_reaches_rabbitmq_and_redis() {
    use switchyard_core::conformance::services::{TestVhost, absent, redis_url};

    let dir = std::env::temp_dir();
    let check = |name: &str, text: String| {
        let path = dir.join(format!("sy-connect-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let out = Command::new(binary())
            .args(["check-config", "--connect"])
            .arg(&path)
            .env_remove("SWITCHYARD_CONFIG")
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };

    let (code, said) = check("embedded", String::new());
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("bus: embedded (in-process): nothing to connect to"),
        "{said}"
    );
    assert!(
        said.contains("store: embedded (in-process): nothing to connect to"),
        "{said}"
    );

    let Some(vhost) = TestVhost::create("checkconnect") else {
        return;
    };
    if let Err(e) = redis::Client::open(redis_url()).and_then(|c| c.get_connection()) {
        let _: Option<()> = absent("Redis", &e.to_string());
        return;
    }
    let services = |redis: &str| {
        format!(
            "[bus]\nkind = \"amqp\"\nurl = \"{}\"\n[store]\nkind = \"redis\"\nurl = \"{redis}\"\n",
            vhost.url
        )
    };
    let (code, said) = check("up", services(&redis_url()));
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("bus: RabbitMQ: connected; the topology is not declared yet"),
        "{said}"
    );
    assert!(
        said.contains("store: Redis 7.") || said.contains("store: Redis 6."),
        "{said}"
    );
    assert!(!said.contains("error"), "{said}");

    let closed = format!("redis://127.0.0.1:{}/0", free_port());
    let (code, said) = check("down", services(&closed));
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains("store: error: cannot connect to Redis"),
        "{said}"
    );
    assert!(said.contains("bus: RabbitMQ: connected"), "{said}");
    drop(vhost);
}
