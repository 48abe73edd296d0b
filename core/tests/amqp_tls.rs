//! The RabbitMQ bus over TLS (`amqps://`). The broker's TLS side is a `socat` proxy this test
//! starts in front of the local RabbitMQ, with certificates it makes with `openssl` (a CA, and
//! server and client certificates the CA signed), so the test needs no TLS listener of the
//! broker's own. The bus verifies the broker against the configured CA and refuses one it cannot
//! verify; a broker that verifies its clients takes the bus with its client certificate and
//! refuses it without one. Skips loudly without RabbitMQ, `socat` or `openssl`; fails under
//! `CI=true`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use switchyard_core::bus::Bus;
use switchyard_core::bus::amqp::AmqpBus;
use switchyard_core::conformance::bus;
use switchyard_core::conformance::services::{
    ServiceProcess, TestCertificates, TestVhost, free_port,
};
use switchyard_core::tls::{ClientIdentity, ClientTls};

/// A TLS listener on a port of its own that forwards to the local RabbitMQ; with
/// `verify_clients`, it requires a client certificate signed by the test CA.
fn tls_proxy(certs: &TestCertificates, verify_clients: bool) -> Option<ServiceProcess> {
    let port = free_port();
    let path = |name: &str| certs.path(name).to_str().unwrap().to_owned();
    let listen = format!(
        "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},cafile={},verify={}",
        path("server.pem"),
        path("server.key"),
        path("ca.pem"),
        u8::from(verify_clients),
    );
    ServiceProcess::run("socat", &[&listen, "TCP:127.0.0.1:5672"], port)
}

/// The `amqps://` URL of `vhost` through `proxy`.
fn url(vhost: &TestVhost, proxy: &ServiceProcess) -> String {
    format!(
        "amqps://guest:guest@127.0.0.1:{}/{}",
        proxy.port, vhost.name
    )
}

/// Connects, retrying while the proxy starts (it refuses connections until it listens).
async fn connect(url: &str, tls: &ClientTls) -> Result<AmqpBus, String> {
    let mut last = String::new();
    for _ in 0..30 {
        match AmqpBus::connect_with_tls(url, "tls-test", "", bus::DEFAULT_PUBLISH_TIMEOUT, tls)
            .await
        {
            Ok(bus) => return Ok(bus),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

/// Publishes and consumes over `url` with `tls` (the conformance suite's round trip).
async fn round_trip(url: &str, tls: &ClientTls, prefix: &str) {
    let make = || {
        let (url, tls) = (url.to_owned(), tls.clone());
        async move {
            let bus = connect(&url, &tls)
                .await
                .unwrap_or_else(|e| panic!("connecting over TLS: {e}"));
            Arc::new(bus) as Arc<dyn Bus>
        }
    };
    bus::publish_consume_roundtrip(&make, prefix).await;
}

fn trusting_the_ca(certs: &TestCertificates, with_certificate: bool) -> ClientTls {
    ClientTls {
        ca_pem: Some(certs.read("ca.pem")),
        identity: with_certificate.then(|| ClientIdentity {
            cert_pem: certs.read("client.pem"),
            key_pem: certs.read("client.key"),
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_talks_tls_to_a_broker_it_can_verify_and_refuses_one_it_cannot() {
    let Some(vhost) = TestVhost::create("tls") else {
        return;
    };
    let Some(certs) = TestCertificates::make("amqp-tls") else {
        return;
    };
    let Some(proxy) = tls_proxy(&certs, false) else {
        return;
    };
    let url = url(&vhost, &proxy);
    round_trip(&url, &trusting_the_ca(&certs, false), "tls.").await;

    // The system's roots do not include the test CA: the broker cannot be verified.
    let refused = AmqpBus::connect_with_tls(
        &url,
        "tls-test",
        "",
        bus::DEFAULT_PUBLISH_TIMEOUT,
        &ClientTls::default(),
    )
    .await;
    match refused {
        Ok(_) => panic!("connected to a broker whose certificate no trusted CA signed"),
        Err(e) => assert!(
            e.to_string().contains("bus.tls_ca_file"),
            "the error does not point at the CA: {e}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_verifies_clients_takes_the_bus_with_its_certificate_only() {
    let Some(vhost) = TestVhost::create("mtls") else {
        return;
    };
    let Some(certs) = TestCertificates::make("amqp-mtls") else {
        return;
    };
    let Some(proxy) = tls_proxy(&certs, true) else {
        return;
    };
    let url = url(&vhost, &proxy);
    round_trip(&url, &trusting_the_ca(&certs, true), "mtls.").await;

    let refused = AmqpBus::connect_with_tls(
        &url,
        "tls-test",
        "",
        bus::DEFAULT_PUBLISH_TIMEOUT,
        &trusting_the_ca(&certs, false),
    )
    .await;
    assert!(
        refused.is_err(),
        "a broker that verifies clients took the bus without a client certificate"
    );
}
