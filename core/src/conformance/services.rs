//! Access to the real services integration tests need (RabbitMQ, Redis), with isolation per
//! test and the skip rule: when a service is absent the test says so loudly and skips, except
//! under `CI=true`, where it fails.

use std::process::Command;

/// Whether we run under CI (`CI=true`), where absent services are failures.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Reports an absent service: panics under CI, otherwise prints a loud skip notice. Returns
/// `None` so callers can `let Some(x) = ... else { return };`.
pub fn absent<T>(service: &str, why: &str) -> Option<T> {
    if in_ci() {
        panic!("{service} is required under CI=true but is not usable: {why}");
    }
    eprintln!(
        "\n*** SKIPPED: {service} is not available ({why}).\n*** Start it (see README) or set CI=true to make this a failure.\n"
    );
    None
}

/// The RabbitMQ base URL (`SWITCHYARD_TEST_AMQP_URL`, default the local broker).
pub fn amqp_base_url() -> String {
    std::env::var("SWITCHYARD_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".to_owned())
}

/// The Redis URL (`SWITCHYARD_TEST_REDIS_URL`, default the local server).
pub fn redis_url() -> String {
    std::env::var("SWITCHYARD_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

/// A RabbitMQ virtual host made for one test and deleted (with everything in it) when dropped.
#[derive(Debug)]
pub struct TestVhost {
    /// Its name.
    pub name: String,
    /// AMQP URL of the vhost.
    pub url: String,
}

fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run rabbitmqctl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "rabbitmqctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl TestVhost {
    /// Creates a fresh vhost (guest has all permissions on it), or reports RabbitMQ absent.
    pub fn create(label: &str) -> Option<TestVhost> {
        let name = format!(
            "switchyard-test-{label}-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        let made = rabbitmqctl(&["add_vhost", &name]).and_then(|()| {
            rabbitmqctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"])
        });
        match made {
            Ok(()) => Some(TestVhost {
                url: format!("{}/{name}", amqp_base_url()),
                name,
            }),
            Err(e) => absent("RabbitMQ", &e),
        }
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl(&["delete_vhost", &self.name]) {
            eprintln!("could not delete test vhost {}: {e}", self.name);
        }
    }
}
