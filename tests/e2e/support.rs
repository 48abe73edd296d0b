//! Shared helpers: start Switchyard in-process, sign API-channel requests, fake a callback
//! server, and speak the two WebSocket protocols.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchyard_connectors::signature::switchyard_signature;
use switchyard_core::bus::amqp::AmqpBus;
use switchyard_core::config::Settings;
use switchyard_core::conformance::services::{TestRedisPrefix, TestVhost, absent};
use switchyard_core::metrics::Metrics;
use switchyard_router::{App, Role};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "shop-app-secret-0123456789";
pub const WEB_SECRET: &str = "web-channel-secret-0123456789";

/// A running in-process Switchyard.
pub struct Server {
    pub app: App,
    pub base: String,
    pub addr: SocketAddr,
    pub http: reqwest::Client,
}

/// Test settings: a config that listens on a free port with 4 shards, plus `extra`, loaded
/// from a file as the binary does.
pub fn settings(extra: &str) -> Settings {
    let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n[bus]\nshards = 4\n{extra}");
    let path = std::env::temp_dir().join(format!("switchyard-e2e-{}.toml", rand_id()));
    std::fs::write(&path, text).unwrap();
    let settings = Settings::load_with_env(Some(&path), []).unwrap();
    let _ = std::fs::remove_file(&path);
    settings
}

impl Server {
    /// Starts Switchyard with `extra` appended to a config that listens on a free port.
    pub async fn start(extra: &str) -> Server {
        Server::of(App::start(settings(extra), Role::All).await.unwrap())
    }

    /// A started app, with a client for it.
    pub fn of(app: App) -> Server {
        let addr = app.addr.unwrap();
        Server {
            app,
            base: format!("http://{addr}"),
            addr,
            http: reqwest::Client::new(),
        }
    }

    /// Default test config: an api channel posting replies to `callback`, a web channel.
    pub async fn with_channels(callback: &str) -> Server {
        Server::start(&format!(
            "[[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"{SECRET}\"\ncallback_url = \"{callback}\"\n\
             [[channels]]\nid = \"web\"\nkind = \"web\"\nsecret = \"{WEB_SECRET}\"\n"
        ))
        .await
    }

    /// Two api channels, `shop` and `bank`, posting replies to their callbacks: one person
    /// writing on both.
    pub async fn with_shop_and_bank(shop: &str, bank: &str) -> Server {
        Server::start(&format!(
            "[[channels]]\nid = \"shop\"\nkind = \"api\"\nsecret = \"{SECRET}\"\ncallback_url = \"{shop}\"\n\
             [[channels]]\nid = \"bank\"\nkind = \"api\"\nsecret = \"{SECRET}\"\ncallback_url = \"{bank}\"\n"
        ))
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Posts a signed API-channel message body.
    pub async fn post_signed(&self, channel: &str, body: &[u8]) -> reqwest::Response {
        self.post_signed_at(channel, body, chrono::Utc::now().timestamp(), SECRET)
            .await
    }

    pub async fn post_signed_at(
        &self,
        channel: &str,
        body: &[u8],
        ts: i64,
        secret: &str,
    ) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/v1/channels/{channel}/messages")))
            .header("content-type", "application/json")
            .header("x-switchyard-timestamp", ts.to_string())
            .header(
                "x-switchyard-signature",
                switchyard_signature(secret.as_bytes(), ts, body),
            )
            .body(body.to_vec())
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The id of the customer holding `identity` (`GET /v1/customers?identity=`), once it
    /// exists.
    pub async fn customer_of(&self, identity: &str) -> String {
        eventually(|| async {
            let (s, c) = self
                .get_json(&format!("/v1/customers?identity={identity}"))
                .await;
            (s == 200).then(|| c["id"].as_str().unwrap().to_owned())
        })
        .await
    }

    /// Merges customer `from` into `into` (`POST /v1/customers/{into}/merge`), checking the
    /// answer is 200; the surviving profile.
    pub async fn merge_customers(&self, into: &str, from: &str) -> Value {
        let (status, merged) = self
            .send_json(
                "POST",
                &format!("/v1/customers/{into}/merge"),
                json!({"customer_id": from}),
            )
            .await;
        assert_eq!(status, 200, "merge {from} into {into}: {merged}");
        merged
    }

    /// The conversations `agent` holds (`GET /v1/agents/{agent}/conversations`), once there are
    /// `n`.
    pub async fn held_by(&self, agent: &str, n: usize) -> Vec<Value> {
        eventually(|| async {
            let (_, body) = self
                .get_json(&format!("/v1/agents/{agent}/conversations"))
                .await;
            let held = body["conversations"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            (held.len() == n).then_some(held)
        })
        .await
    }

    /// The conversations waiting in `pool`'s queue, head first, once there are `n`.
    pub async fn queued_in(&self, pool: &str, n: usize) -> Vec<Value> {
        eventually(|| async {
            let (_, body) = self.get_json(&format!("/v1/pools/{pool}/queue")).await;
            let waiting = body["conversations"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            (waiting.len() == n).then_some(waiting)
        })
        .await
    }

    /// `method path` with the API key `key` (and a JSON body): the status and the JSON body.
    pub async fn call_as(
        &self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method, self.url(path)).bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn send_json(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = self
            .http
            .request(m, self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Puts an agent online with `capacity` in the default pool.
    pub async fn agent_online(&self, id: &str, capacity: u32) -> Value {
        let (status, body) = self
            .send_json(
                "PUT",
                &format!("/v1/agents/{id}"),
                json!({"name": id, "pools": ["default"], "capacity": capacity, "status": "online"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The value of a metric line (exact name and labels), or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_at(&self.http, &self.base, series).await
    }

    /// The value of a metric line once it is at least `at_least` (a timer counts its change
    /// after announcing it, a moment after the store shows it), or panics after 10 s.
    pub async fn metric_once(&self, series: &str, at_least: f64) -> f64 {
        eventually(|| async {
            let value = self.metric(series).await;
            (value >= at_least).then_some(value)
        })
        .await
    }

    pub async fn stop(self) {
        self.app.stop().await.unwrap();
    }
}

/// A Switchyard on RabbitMQ (a vhost of its own) and Redis (a key prefix of its own), which
/// both go away with it.
pub struct OnRealServices {
    pub server: Server,
    vhost: TestVhost,
    redis: TestRedisPrefix,
}

impl OnRealServices {
    /// Starts Switchyard (all roles) with `extra` appended to the test config, on a vhost
    /// named after `label` and a fresh Redis prefix; `None`, after saying so, when RabbitMQ or
    /// Redis is absent (under `CI=true` that fails the test instead).
    pub async fn start(label: &str, extra: &str) -> Option<OnRealServices> {
        let vhost = TestVhost::create(label)?;
        let bus = match AmqpBus::connect(&vhost.url, label, "", Duration::from_secs(5)).await {
            Ok(bus) => bus,
            Err(e) => return absent("RabbitMQ", &e.to_string()),
        };
        let redis = TestRedisPrefix::new().await?;
        let app = App::start_with(
            settings(extra),
            Role::All,
            Arc::new(bus),
            redis.store().await,
            Metrics::new().unwrap(),
        )
        .await
        .unwrap();
        Some(OnRealServices {
            server: Server::of(app),
            vhost,
            redis,
        })
    }

    /// Stops the server, then removes the vhost and the keys.
    pub async fn stop(self) {
        self.server.stop().await;
        drop(self.redis);
        drop(self.vhost);
    }
}

pub fn rand_id() -> String {
    format!("{:x}", rand::random::<u64>())
}

/// The value of a metric line (exact name and labels) of the process at `base_url`, or 0.
pub async fn metric_at(http: &reqwest::Client, base_url: &str, series: &str) -> f64 {
    let text = http
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// An API-channel message body.
pub fn api_message(message_id: &str, user: &str, text: &str, identities: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "message_id": message_id,
        "user": {"id": user, "name": format!("User {user}"), "identities": identities},
        "content": {"type": "text", "text": text},
    }))
    .unwrap()
}

/// A request the fake callback server received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A CloudEvent a webhook or bot endpoint got: checks its content type and that it is signed
/// with `secret` (the API channel's scheme), and returns it.
pub fn signed_cloud_event(request: &Received, secret: &str) -> Value {
    let header = |name: &str| {
        request
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(
        header("content-type").as_deref(),
        Some("application/cloudevents+json; charset=utf-8")
    );
    switchyard_connectors::signature::verify_switchyard_signature(
        secret.as_bytes(),
        header("x-switchyard-timestamp").as_deref(),
        header("x-switchyard-signature").as_deref(),
        &request.body,
        chrono::Utc::now(),
    )
    .expect("the request is signed with the endpoint's secret");
    let event: Value = serde_json::from_slice(&request.body).expect("a JSON body");
    assert_eq!(event["specversion"], "1.0", "a CloudEvent: {event}");
    event
}

/// A fake app backend receiving API-channel replies.
pub struct Callback {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Which requests (by their index in `received`) were open when each one arrived.
    pub open_at_arrival: Arc<Mutex<Vec<Vec<usize>>>>,
    status: Arc<Mutex<u16>>,
    delay: Arc<Mutex<Duration>>,
}

impl Callback {
    pub async fn start() -> Callback {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let open_at_arrival: Arc<Mutex<Vec<Vec<usize>>>> = Arc::default();
        let open: Arc<Mutex<Vec<usize>>> = Arc::default();
        let status = Arc::new(Mutex::new(200u16));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let (r, s, d, o, a) = (
            Arc::clone(&received),
            Arc::clone(&status),
            Arc::clone(&delay),
            Arc::clone(&open),
            Arc::clone(&open_at_arrival),
        );
        let app = axum::Router::new().route(
            "/callback",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (r, s, d, o, a) = (
                    Arc::clone(&r),
                    Arc::clone(&s),
                    Arc::clone(&d),
                    Arc::clone(&o),
                    Arc::clone(&a),
                );
                async move {
                    // The answer is the one set when the request arrived: a test that sees the
                    // request and then changes the answer changes it for the next one.
                    let status = *s.lock().unwrap();
                    let index = {
                        let mut received = r.lock().unwrap();
                        let mut open = o.lock().unwrap();
                        a.lock().unwrap().push(open.clone());
                        received.push(Received { headers, body });
                        open.push(received.len() - 1);
                        received.len() - 1
                    };
                    let delay = *d.lock().unwrap();
                    tokio::time::sleep(delay).await;
                    o.lock().unwrap().retain(|&i| i != index);
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Callback {
            url: format!("http://{addr}/callback"),
            received,
            open_at_arrival,
            status,
            delay,
        }
    }

    /// Makes the fake take `delay` (after recording the request) before it answers.
    pub fn answer_after(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    /// Makes the fake answer `status` to the requests that arrive from now on.
    pub fn answer(&self, status: u16) {
        *self.status.lock().unwrap() = status;
    }

    /// Waits until the requests received so far satisfy `done`.
    pub async fn wait_until(&self, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        wait_until(Duration::from_secs(10), || {
            let got = self.received.lock().unwrap().clone();
            done(&got).then_some(got)
        })
        .await
    }

    /// Waits until `n` requests arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        wait_until(Duration::from_secs(10), || {
            let got = self.received.lock().unwrap().clone();
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

/// Polls `f` until it returns `Some`, or panics after `timeout`.
pub async fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A JSON WebSocket client.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Ws { stream }
    }

    pub async fn send(&mut self, v: Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.stream
            .send(Message::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    /// The next JSON frame (panics after 10 s).
    pub async fn recv(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.stream.next())
                .await
                .expect("no frame within 10 s")
                .expect("socket closed")
                .unwrap();
            if let Message::Text(t) = frame {
                return serde_json::from_str(t.as_str()).unwrap();
            }
        }
    }

    /// The next frame of `kind`, skipping others.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

/// Polls the async `f` until it returns `Some`, or panics after 10 s.
pub async fn eventually<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
