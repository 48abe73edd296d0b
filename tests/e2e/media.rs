//! The media proxy through the real HTTP surface: a customer sends a photo on Telegram, the
//! agent's conversation shows its media id, and `GET /v1/media/{channel}/{media id}` streams
//! the bytes from the fake Bot API (wiremock), behind the API key like the rest of /v1.

use serde_json::json;
use wiremock::matchers::{body_json, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{Server, Ws};

const BOT_TOKEN: &str = "7000000002:AAE2e-telegram_media_token_00000000";
const SECRET: &str = "e2e-telegram-media-secret";
const USER_ID: i64 = 5_550_000_777;
const FILE_ID: &str = "AgACAgIAAxkBAAPhotoE2e";
const AGENT_KEY: &str = "k-agent-media-0123456789";
const JPEG: &[u8] = b"\xFF\xD8\xFF\xE0e2e-photo-bytes";

fn telegram_channel(api_base: &str) -> String {
    format!(
        "[[channels]]\nid = \"tg\"\nkind = \"telegram\"\nbot_token = \"{BOT_TOKEN}\"\n\
         secret_token = \"{SECRET}\"\napi_base = \"{api_base}\"\n"
    )
}

async fn post_update(server: &Server, body: serde_json::Value) {
    let status = server
        .http
        .post(server.url("/v1/channels/tg/webhook"))
        .header("content-type", "application/json")
        .header("x-telegram-bot-api-secret-token", SECRET)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sees_the_photo_a_customer_sent() {
    let bot_api = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/bot{BOT_TOKEN}/getFile")))
        .and(body_json(json!({ "file_id": FILE_ID })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "ok": true,
            "result": {"file_id": FILE_ID, "file_unique_id": "uq", "file_size": JPEG.len(),
                       "file_path": "photos/file_42.jpg"}
        })))
        .mount(&bot_api)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/file/bot{BOT_TOKEN}/photos/file_42.jpg")))
        .respond_with(ResponseTemplate::new(200).set_body_raw(JPEG.to_vec(), "image/jpeg"))
        .mount(&bot_api)
        .await;
    let server = Server::start(&format!(
        "[[auth.api_keys]]\nname = \"desk\"\nkey = \"{AGENT_KEY}\"\nscopes = [\"agent\"]\n{}",
        telegram_channel(&bot_api.uri())
    ))
    .await;
    let mut agent = Ws::connect(&format!(
        "ws://{}/v1/agents/ws?api_key={AGENT_KEY}",
        server.addr
    ))
    .await;
    agent
        .send(json!({"type": "hello", "agent_id": "media-agent", "capacity": 1}))
        .await;
    agent.recv_type("welcome").await;

    post_update(
        &server,
        json!({
            "update_id": 882_000_001,
            "message": {
                "message_id": 90,
                "from": {"id": USER_ID, "is_bot": false, "first_name": "Ada"},
                "chat": {"id": USER_ID, "first_name": "Ada", "type": "private"},
                "date": chrono::Utc::now().timestamp() - 1,
                "photo": [
                    {"file_id": "AgACsmall", "file_unique_id": "s", "width": 90, "height": 67,
                     "file_size": 8},
                    {"file_id": FILE_ID, "file_unique_id": "uq", "width": 1280, "height": 960,
                     "file_size": JPEG.len()}
                ]
            }
        }),
    )
    .await;
    let assigned = agent.recv_type("assigned").await;
    let content = &assigned["conversation"]["messages"][0]["content"];
    assert_eq!(content["type"], "image");
    assert_eq!(content["media"]["media_id"], FILE_ID);
    assert!(content["media"]["url"].is_null());

    let media_path = format!("/v1/media/tg/{FILE_ID}");
    let anonymous = server
        .http
        .get(server.url(&media_path))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401, "the media proxy needs the API key");

    let response = server
        .http
        .get(server.url(&media_path))
        .bearer_auth(AGENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header("content-type").as_deref(), Some("image/jpeg"));
    assert_eq!(header("content-length"), Some(JPEG.len().to_string()));
    assert_eq!(
        header("cache-control").as_deref(),
        Some("private, max-age=3600")
    );
    assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
    assert_eq!(header("accept-ranges").as_deref(), Some("bytes"));
    assert_eq!(response.bytes().await.unwrap().as_ref(), JPEG);

    // The console's way: the key in the query string, as an <img> cannot send headers.
    let by_query = server
        .http
        .get(server.url(&format!("{media_path}?api_key={AGENT_KEY}")))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), 200);
    assert_eq!(
        server
            .metric("switchyard_media_fetches_total{kind=\"telegram\",outcome=\"ok\"}")
            .await,
        2.0
    );

    // One byte range, as a browser seeking in a video asks; and one outside the media.
    let ranged = |range: String| {
        server
            .http
            .get(server.url(&media_path))
            .bearer_auth(AGENT_KEY)
            .header("range", range)
            .send()
    };
    let part = ranged("bytes=2-5".into()).await.unwrap();
    assert_eq!(part.status(), 206);
    let part_header = |name: &str| {
        part.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        part_header("content-range"),
        Some(format!("bytes 2-5/{}", JPEG.len()))
    );
    assert_eq!(part_header("content-length").as_deref(), Some("4"));
    assert_eq!(part_header("content-type").as_deref(), Some("image/jpeg"));
    assert_eq!(part.bytes().await.unwrap().as_ref(), &JPEG[2..=5]);
    let outside = ranged(format!("bytes={}-", JPEG.len())).await.unwrap();
    assert_eq!(outside.status(), 416);
    assert_eq!(
        outside
            .headers()
            .get("content-range")
            .map(|v| v.to_str().unwrap().to_owned()),
        Some(format!("bytes */{}", JPEG.len()))
    );
    let body: serde_json::Value = outside.json().await.unwrap();
    assert_eq!(body["error"]["code"], "range_not_satisfiable");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_that_cannot_be_fetched_is_a_clear_404() {
    let bot_api = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(format!("/bot{BOT_TOKEN}/getFile")))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "ok": false, "error_code": 400, "description": "Bad Request: invalid file_id"
        })))
        .mount(&bot_api)
        .await;
    let server = Server::start(&format!(
        "{}[[channels]]\nid = \"web\"\nkind = \"web\"\nsecret = \"{}\"\n",
        telegram_channel(&bot_api.uri()),
        crate::support::WEB_SECRET
    ))
    .await;
    for (path, code) in [
        ("/v1/media/tg/expired-file-id", "media_not_found"),
        ("/v1/media/web/anything", "media_unsupported"),
        ("/v1/media/nowhere/anything", "not_found"),
    ] {
        let (status, body) = server.get_json(path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], code, "{path}: {body}");
    }
    assert_eq!(
        server
            .metric("switchyard_media_fetches_total{kind=\"telegram\",outcome=\"not_found\"}")
            .await,
        1.0
    );
    server.stop().await;
}
