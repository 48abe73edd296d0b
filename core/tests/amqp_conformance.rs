//! The Bus conformance suite against a real RabbitMQ, in a vhost of its own that is deleted
//! afterwards. Skips loudly without RabbitMQ; fails under `CI=true`.

use std::sync::Arc;

use switchyard_core::bus::Bus;
use switchyard_core::bus::amqp::AmqpBus;
use switchyard_core::conformance::bus;
use switchyard_core::conformance::services::{TestVhost, absent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_bus_conforms() {
    let Some(vhost) = TestVhost::create("bus") else {
        return;
    };
    let timeout = bus::DEFAULT_PUBLISH_TIMEOUT;
    let url = vhost.url.clone();
    // Probe once so an unreachable broker is reported as absent, not as a failed case.
    if let Err(e) = AmqpBus::connect(&url, "conformance-probe", "", timeout).await {
        let _: Option<()> = absent("RabbitMQ", &e.to_string());
        return;
    }
    let make = || {
        let url = url.clone();
        async move {
            let bus = AmqpBus::connect(&url, "switchyard-conformance", "", timeout)
                .await
                .expect("connect to the test vhost");
            Arc::new(bus) as Arc<dyn Bus>
        }
    };
    // Quorum queues enforce `x-max-length` with `reject-publish` asynchronously (a publish or two
    // past the limit may still be accepted), so the exact-capacity back-pressure case does not
    // apply; a full queue still nacks, which the bus turns into waiting and then a timeout.
    bus::run_all(&make, "amqp.", None).await;
    drop(vhost);
}
