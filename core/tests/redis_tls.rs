//! The Redis store over TLS (`rediss://`), on a `redis-server` this test starts with a
//! certificate it makes with `openssl` (a CA, and a server certificate for 127.0.0.1 that the CA
//! signed): the store verifies the server against the configured CA, and refuses a server it
//! cannot verify. Skips loudly without `redis-server` or `openssl`; fails under `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use switchyard_core::conformance::services::{RedisProcess, absent, free_port};
use switchyard_core::store::Store;
use switchyard_core::store::redis::{RedisStore, RedisTarget};

/// Runs `openssl` with `args` in `dir`; `None` (skipped) when it cannot run.
fn openssl(dir: &Path, args: &[&str]) -> Option<()> {
    match Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Some(()),
        Ok(s) => panic!("openssl {args:?} failed: {s}"),
        Err(e) => absent("openssl", &e.to_string()),
    }
}

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1 signed by it (`server.pem`,
/// `server.key`), in `dir`.
fn make_certificates(dir: &Path) -> Option<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=switchyard test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    )?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    )?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    )
}

#[tokio::test]
async fn the_store_talks_tls_to_a_server_it_can_verify_and_refuses_one_it_cannot() {
    let dir = std::env::temp_dir().join(format!("sy-redis-tls-{}", free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    if make_certificates(&dir).is_none() {
        return;
    }
    let port = free_port();
    let port_arg = port.to_string();
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let Some(server) = RedisProcess::start(
        &[
            "--port",
            "0",
            "--tls-port",
            &port_arg,
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        port,
    ) else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{port}/0");
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let trusted = RedisTarget::Url {
        url: url.clone(),
        ca_pem: Some(ca),
    };
    let mut store = None;
    for _ in 0..50 {
        match RedisStore::connect_to(&trusted, "sy-tls").await {
            Ok(s) => {
                store = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let store = store.expect("connect over TLS, trusting the test CA");
    store
        .set_key("k", "over tls", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        store.get_key("k").await.unwrap().as_deref(),
        Some("over tls")
    );

    // The system's roots do not include the test CA: the server cannot be verified.
    let untrusted = RedisTarget::Url { url, ca_pem: None };
    let refused = RedisStore::connect_to(&untrusted, "sy-tls").await;
    assert!(
        refused.is_err(),
        "connected to a server whose certificate no trusted CA signed"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
