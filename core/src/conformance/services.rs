//! Access to the real services integration tests need (RabbitMQ, Redis), with isolation per
//! test and the skip rule: when a service is absent the test says so loudly and skips, except
//! under `CI=true`, where it fails.

use std::future::Future;
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::store::Store;
use crate::store::redis::RedisStore;

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

    /// Closes every client connection to this vhost, as a broker restart or a network cut
    /// would; clients that recover connect again.
    pub fn close_connections(&self, reason: &str) -> Result<(), String> {
        rabbitmqctl(&["close_all_connections", "--vhost", &self.name, reason])
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        if let Err(e) = rabbitmqctl(&["delete_vhost", &self.name]) {
            eprintln!("could not delete test vhost {}: {e}", self.name);
        }
    }
}

/// One test's key prefix; every key under it is deleted when this is dropped (also on panic).
pub struct TestRedisPrefix {
    /// The Redis URL.
    pub url: String,
    /// The key prefix (`store.key_prefix`) of this test.
    pub prefix: String,
}

impl TestRedisPrefix {
    /// A fresh prefix, or `None` (after reporting Redis absent) when Redis is not reachable.
    pub async fn new() -> Option<TestRedisPrefix> {
        let url = redis_url();
        let prefix = format!("sy-test-{}", ulid::Ulid::new().to_string().to_lowercase());
        match RedisStore::connect(&url, &prefix).await {
            Ok(probe) => match probe.ping().await {
                Ok(()) => Some(TestRedisPrefix { url, prefix }),
                Err(e) => absent("Redis", &e.to_string()),
            },
            Err(e) => absent("Redis", &e.to_string()),
        }
    }

    /// A new connection to the store under this prefix.
    pub async fn store(&self) -> Arc<dyn Store> {
        Arc::new(self.redis().await)
    }

    /// A new connection to the store under this prefix, as its concrete type.
    pub async fn redis(&self) -> RedisStore {
        RedisStore::connect(&self.url, &self.prefix)
            .await
            .unwrap_or_else(|e| panic!("connect to Redis at {}: {e}", self.url))
    }

    /// A factory for the conformance cases: a new connection per store, all under this prefix.
    pub fn factory(&self) -> impl Fn() -> Pin<Box<dyn Future<Output = Arc<dyn Store>>>> + use<> {
        let (url, prefix) = (self.url.clone(), self.prefix.clone());
        move || {
            let (url, prefix) = (url.clone(), prefix.clone());
            Box::pin(async move {
                let store = RedisStore::connect(&url, &prefix)
                    .await
                    .unwrap_or_else(|e| panic!("connect to Redis at {url}: {e}"));
                Arc::new(store) as Arc<dyn Store>
            })
        }
    }

    /// A plain (blocking) connection to the test's Redis, for checking the key layout.
    pub fn raw_connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url.as_str())?.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// Every key under this prefix.
    pub fn keys(&self) -> redis::RedisResult<Vec<Vec<u8>>> {
        let mut con = self.raw_connection()?;
        let pattern = format!("{}:*", glob_escape(&self.prefix));
        let mut cursor = 0_u64;
        let mut keys = Vec::new();
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query(&mut con)?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// Deletes every key under this prefix; returns how many there were.
    pub fn delete_all(&self) -> redis::RedisResult<usize> {
        let keys = self.keys()?;
        let mut con = self.raw_connection()?;
        for chunk in keys.chunks(500) {
            redis::cmd("DEL").arg(chunk).query::<()>(&mut con)?;
        }
        Ok(keys.len())
    }
}

impl Drop for TestRedisPrefix {
    fn drop(&mut self) {
        if let Err(e) = self.delete_all() {
            eprintln!("could not delete test keys under `{}:`: {e}", self.prefix);
        }
    }
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A free TCP port on 127.0.0.1, for a server a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
}

/// A server a test starts itself (a Redis replica, a sentinel, a TLS-only server, a TLS proxy),
/// killed when dropped.
pub struct ServiceProcess {
    child: Option<std::process::Child>,
    /// The port it was told to listen on.
    pub port: u16,
    /// Its working directory, removed when dropped.
    dir: Option<std::path::PathBuf>,
}

/// A `redis-server` a test starts itself.
pub type RedisProcess = ServiceProcess;

impl ServiceProcess {
    /// Runs `redis-server` with `args` (which must make it listen on `port`), writing its files
    /// (a replica's copy of the data) to a directory of its own; `None` when it cannot be
    /// started (see [`absent`]).
    pub fn start(args: &[&str], port: u16) -> Option<ServiceProcess> {
        let dir = std::env::temp_dir().join(format!("sy-redis-{port}"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let dir_arg = dir
            .to_str()
            .unwrap_or_else(|| panic!("a non-UTF-8 temp dir: {dir:?}"));
        let mut process = Self::run("redis-server", &[args, &["--dir", dir_arg]].concat(), port)?;
        process.dir = Some(dir);
        Some(process)
    }

    /// Runs `program` with `args` (which must make it listen on `port`); `None` when it cannot
    /// be started (see [`absent`]).
    pub fn run(program: &str, args: &[&str], port: u16) -> Option<ServiceProcess> {
        match Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(child) => Some(ServiceProcess {
                child: Some(child),
                port,
                dir: None,
            }),
            Err(e) => absent(program, &e.to_string()),
        }
    }

    /// Kills the server now (as a crash would) and waits for it to end.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Certificates made with `openssl` for one test, in a directory removed when dropped: a CA
/// (`ca.pem`), a server certificate for 127.0.0.1 and `localhost` (`server.pem`, `server.key`)
/// and a client certificate (`client.pem`, `client.key`), both signed by the CA.
pub struct TestCertificates {
    /// The directory holding the files.
    pub dir: std::path::PathBuf,
}

impl TestCertificates {
    /// Makes the certificates; `None` when `openssl` cannot run (see [`absent`]).
    pub fn make(label: &str) -> Option<TestCertificates> {
        let dir = std::env::temp_dir().join(format!("sy-{label}-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let certificates = TestCertificates { dir };
        let ca = "/CN=switchyard test CA";
        certificates.openssl(&[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", ca, "-keyout",
            "ca.key", "-out", "ca.pem",
        ])?;
        certificates.signed(
            "server",
            "/CN=127.0.0.1",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )?;
        certificates.signed(
            "client",
            "/CN=switchyard test client",
            "extendedKeyUsage=clientAuth\n",
        )?;
        Some(certificates)
    }

    /// The path of one of the files.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(name)
    }

    /// The content of one of the files.
    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name))
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.path(name).display()))
    }

    /// `{name}.pem` and `{name}.key`, signed by the CA, with `extensions`.
    fn signed(&self, name: &str, subject: &str, extensions: &str) -> Option<()> {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        self.openssl(&[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &key, "-out", &csr,
        ])?;
        std::fs::write(self.path(&ext), extensions)
            .unwrap_or_else(|e| panic!("writing {ext}: {e}"));
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ])
    }

    /// Runs `openssl` with `args` in the directory; `None` (skipped) when it cannot run.
    fn openssl(&self, args: &[&str]) -> Option<()> {
        match Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
        {
            Ok(s) if s.success() => Some(()),
            Ok(s) => panic!("openssl {args:?} failed: {s}"),
            Err(e) => absent("openssl", &e.to_string()),
        }
    }
}

impl Drop for TestCertificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
