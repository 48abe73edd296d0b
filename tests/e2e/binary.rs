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
