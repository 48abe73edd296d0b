//! The Redis store over TLS (`rediss://`), on `redis-server`s this test starts with certificates
//! it makes with `openssl` (a CA, and server and client certificates the CA signed): the store
//! verifies the server against the configured CA and refuses a server it cannot verify; a server
//! that verifies its clients accepts the store with its client certificate and refuses it
//! without one; behind a TLS-only sentinel, the same files serve the sentinel and the master.
//! Skips loudly without `redis-server` or `openssl`; fails under `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use switchyard_core::conformance::services::{RedisProcess, TestCertificates, free_port};
use switchyard_core::store::Store;
use switchyard_core::store::StoreError;
use switchyard_core::store::redis::{RedisStore, RedisTarget};
use switchyard_core::tls::{ClientIdentity, ClientTls};

/// A TLS-only `redis-server` with the test server certificate; with `verify_clients`, it
/// requires a client certificate signed by the test CA.
fn tls_server(certs: &TestCertificates, verify_clients: bool) -> Option<RedisProcess> {
    let port = free_port();
    let path = |name: &str| certs.path(name).to_str().unwrap().to_owned();
    let (port_arg, cert, key, ca) = (
        port.to_string(),
        path("server.pem"),
        path("server.key"),
        path("ca.pem"),
    );
    let auth = if verify_clients { "yes" } else { "no" };
    RedisProcess::start(
        &[
            "--port",
            "0",
            "--tls-port",
            &port_arg,
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            auth,
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        port,
    )
}

fn target(server: &RedisProcess, tls: ClientTls) -> RedisTarget {
    RedisTarget::Url {
        url: format!("rediss://127.0.0.1:{}/0", server.port),
        tls,
    }
}

/// Connects, retrying while the server starts (it refuses connections until it listens).
async fn connect(target: &RedisTarget) -> Result<RedisStore, StoreError> {
    let mut last = None;
    for _ in 0..50 {
        match RedisStore::connect_to(target, "sy-tls").await {
            Ok(store) => return Ok(store),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last.unwrap())
}

async fn round_trip(store: &RedisStore, what: &str) {
    store
        .set_key("k", what, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(store.get_key("k").await.unwrap().as_deref(), Some(what));
}

#[tokio::test]
async fn the_store_talks_tls_to_a_server_it_can_verify_and_refuses_one_it_cannot() {
    let Some(certs) = TestCertificates::make("redis-tls") else {
        return;
    };
    let Some(server) = tls_server(&certs, false) else {
        return;
    };
    let trusted = ClientTls {
        ca_pem: Some(certs.read("ca.pem")),
        identity: None,
    };
    let store = connect(&target(&server, trusted))
        .await
        .expect("connect over TLS, trusting the test CA");
    round_trip(&store, "over tls").await;

    // The system's roots do not include the test CA: the server cannot be verified.
    let refused = RedisStore::connect_to(&target(&server, ClientTls::default()), "sy-tls").await;
    assert!(
        refused.is_err(),
        "connected to a server whose certificate no trusted CA signed"
    );
}

#[tokio::test]
async fn a_server_that_verifies_clients_takes_the_store_with_its_certificate_only() {
    let Some(certs) = TestCertificates::make("redis-mtls") else {
        return;
    };
    let Some(server) = tls_server(&certs, true) else {
        return;
    };
    let with_certificate = ClientTls {
        ca_pem: Some(certs.read("ca.pem")),
        identity: Some(ClientIdentity {
            cert_pem: certs.read("client.pem"),
            key_pem: certs.read("client.key"),
        }),
    };
    let store = connect(&target(&server, with_certificate))
        .await
        .expect("connect with the client certificate");
    round_trip(&store, "mutual tls").await;

    let without = ClientTls {
        ca_pem: Some(certs.read("ca.pem")),
        identity: None,
    };
    let refused = RedisStore::connect_to(&target(&server, without), "sy-tls").await;
    assert!(
        refused.is_err(),
        "a server that verifies clients took the store without a client certificate"
    );
}

/// A TLS-only sentinel that verifies its clients and monitors `master` (TLS-only as well) as
/// `sytls`, reaching it with the test client certificate.
fn tls_sentinel(certs: &TestCertificates, master: &RedisProcess) -> Option<RedisProcess> {
    let port = free_port();
    let path = |name: &str| certs.path(name).to_str().unwrap().to_owned();
    let dir = std::env::temp_dir().join(format!("sy-tls-sentinel-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port 0\ntls-port {port}\nbind 127.0.0.1\ndir {}\n\
             tls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
             tls-client-cert-file {}\ntls-client-key-file {}\n\
             tls-auth-clients yes\ntls-replication yes\n\
             sentinel monitor sytls 127.0.0.1 {} 1\n",
            dir.display(),
            path("server.pem"),
            path("server.key"),
            path("ca.pem"),
            path("client.pem"),
            path("client.key"),
            master.port,
        ),
    )
    .unwrap();
    RedisProcess::start(&[conf.to_str().unwrap(), "--sentinel"], port)
}

#[tokio::test]
async fn behind_a_tls_sentinel_the_files_serve_the_sentinel_and_the_master() {
    let Some(certs) = TestCertificates::make("redis-sentinel-tls") else {
        return;
    };
    let Some(master) = tls_server(&certs, true) else {
        return;
    };
    let Some(sentinel) = tls_sentinel(&certs, &master) else {
        return;
    };
    let behind_sentinel = |tls: ClientTls| RedisTarget::Sentinel {
        master: "sytls".into(),
        nodes: vec![format!("rediss://127.0.0.1:{}", sentinel.port)],
        // Only its scheme (TLS to the master) and database count.
        url: Some("rediss://ignored.invalid/0".into()),
        tls,
    };
    let with_certificate = ClientTls {
        ca_pem: Some(certs.read("ca.pem")),
        identity: Some(ClientIdentity {
            cert_pem: certs.read("client.pem"),
            key_pem: certs.read("client.key"),
        }),
    };
    let store = connect(&behind_sentinel(with_certificate))
        .await
        .expect("connect through the TLS sentinel to the TLS master");
    round_trip(&store, "through a tls sentinel").await;

    // Without the client certificate the sentinel (and the master) refuse the store; with the
    // system's roots it cannot verify them.
    for (tls, why) in [
        (
            ClientTls {
                ca_pem: Some(certs.read("ca.pem")),
                identity: None,
            },
            "without a client certificate",
        ),
        (ClientTls::default(), "trusting only the system's roots"),
    ] {
        let refused = RedisStore::connect_to(&behind_sentinel(tls), "sy-tls").await;
        assert!(refused.is_err(), "connected {why}");
    }
}
