//! Media a customer sent, fetched from each platform (`Connector::fetch_media`, the media
//! proxy) against fake platform APIs (wiremock): the exact requests, the bytes and content
//! type passed through, and every error class (platform error, unknown or expired media,
//! 5xx, too large). Plus the shared streaming helper's cap on a body of unknown length.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use serde_json::json;
use switchyard_connectors::api::ApiConnector;
use switchyard_connectors::line::LineConnector;
use switchyard_connectors::media::{self, MediaAnswer, MediaDownload};
use switchyard_connectors::telegram::TelegramConnector;
use switchyard_connectors::wechat::{WeChatMiniProgramConnector, WeChatOaConnector};
use switchyard_connectors::wecom_kf::WecomKfConnector;
use switchyard_connectors::whatsapp::WhatsAppConnector;
use switchyard_connectors::{Channel, Connector, ConnectorError};
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const JPEG: &[u8] = b"\xFF\xD8\xFF\xE0fake-jpeg-bytes";
const MP4: &[u8] = b"\0\0\0\x18ftypmp42fake-video";

/// The content type and the whole body of a download.
async fn read(download: MediaDownload) -> (Option<String>, Vec<u8>) {
    let content_type = download.content_type.clone();
    (content_type, download.bytes().await.unwrap().to_vec())
}

fn file(bytes: &[u8], content_type: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(bytes.to_vec(), content_type)
}

fn rejected_code(result: Result<MediaDownload, ConnectorError>) -> String {
    match result {
        Err(ConnectorError::Rejected { code, .. }) => code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn is_transient(result: &Result<MediaDownload, ConnectorError>) -> bool {
    matches!(result, Err(ConnectorError::Transient(_)))
}

// ---------- WeChat OA and mini-program ----------

const WX_APP_ID: &str = "wxapp0000000001";
const WX_SECRET: &str = "app-secret-1";

fn wx_settings(kind: &str, base: &str) -> switchyard_core::config::ChannelSettings {
    support::settings(
        &format!("{kind}-media"),
        kind,
        Some(base.to_owned()),
        &[
            ("app_id", WX_APP_ID),
            ("app_secret", WX_SECRET),
            ("token", "tok"),
        ],
    )
}

async fn mount_wx_token(server: &MockServer, force: bool, token: &str) {
    Mock::given(method("POST"))
        .and(path("/cgi-bin/stable_token"))
        .and(body_json(json!({
            "grant_type": "client_credential", "appid": WX_APP_ID, "secret": WX_SECRET,
            "force_refresh": force
        })))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": token, "expires_in": 7200})),
        )
        .mount(server)
        .await;
}

fn wx_media(token: &str, media_id: &str) -> wiremock::MockBuilder {
    Mock::given(method("GET"))
        .and(path("/cgi-bin/media/get"))
        .and(query_param("access_token", token))
        .and(query_param("media_id", media_id))
}

fn errcode(code: i64, msg: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"errcode": code, "errmsg": msg}))
}

#[tokio::test]
async fn wechat_oa_passes_the_file_through() {
    let server = MockServer::start().await;
    mount_wx_token(&server, false, "TOKEN-1").await;
    wx_media("TOKEN-1", "MEDIA-1")
        .respond_with(file(JPEG, "image/jpeg"))
        .expect(1)
        .mount(&server)
        .await;
    let (ctx, _) = support::context();
    let oa = WeChatOaConnector::new(&wx_settings("wechat_oa", &server.uri()), &ctx).unwrap();
    let download = Connector::fetch_media(&oa, "MEDIA-1").await.unwrap();
    assert_eq!(download.content_length, Some(JPEG.len() as u64));
    assert_eq!(
        read(download).await,
        (Some("image/jpeg".into()), JPEG.to_vec())
    );
}

#[tokio::test]
async fn wechat_refreshes_a_refused_token_once() {
    let server = MockServer::start().await;
    mount_wx_token(&server, false, "TOKEN-1").await;
    mount_wx_token(&server, true, "TOKEN-2").await;
    wx_media("TOKEN-1", "MEDIA-1")
        .respond_with(errcode(40001, "invalid credential"))
        .mount(&server)
        .await;
    wx_media("TOKEN-2", "MEDIA-1")
        .respond_with(file(JPEG, "image/jpeg"))
        .expect(1)
        .mount(&server)
        .await;
    let (ctx, _) = support::context();
    let oa = WeChatOaConnector::new(&wx_settings("wechat_oa", &server.uri()), &ctx).unwrap();
    let (_, bytes) = read(Connector::fetch_media(&oa, "MEDIA-1").await.unwrap()).await;
    assert_eq!(bytes, JPEG);
}

#[tokio::test]
async fn wechat_miniprogram_follows_a_video_url() {
    let server = MockServer::start().await;
    mount_wx_token(&server, false, "TOKEN-1").await;
    wx_media("TOKEN-1", "VIDEO-1")
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"video_url": format!("{}/cdn/v.mp4?sig=1", server.uri())})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/cdn/v.mp4"))
        .and(query_param("sig", "1"))
        .respond_with(file(MP4, "video/mp4"))
        .expect(1)
        .mount(&server)
        .await;
    let (ctx, _) = support::context();
    let mp =
        WeChatMiniProgramConnector::new(&wx_settings("wechat_miniprogram", &server.uri()), &ctx)
            .unwrap();
    assert_eq!(
        read(Connector::fetch_media(&mp, "VIDEO-1").await.unwrap()).await,
        (Some("video/mp4".into()), MP4.to_vec())
    );
}

#[tokio::test]
async fn wechat_errors_are_classified() {
    let server = MockServer::start().await;
    mount_wx_token(&server, false, "TOKEN-1").await;
    for (id, answer) in [
        ("GONE", errcode(40007, "invalid media_id")),
        ("BUSY", errcode(-1, "system error")),
        ("OTHER", errcode(48001, "api unauthorized")),
        ("BAD-GATEWAY", ResponseTemplate::new(502)),
    ] {
        wx_media("TOKEN-1", id)
            .respond_with(answer)
            .mount(&server)
            .await;
    }
    let (ctx, _) = support::context();
    let oa = WeChatOaConnector::new(&wx_settings("wechat_oa", &server.uri()), &ctx).unwrap();
    assert_eq!(
        rejected_code(Connector::fetch_media(&oa, "GONE").await),
        "media_not_found"
    );
    assert!(is_transient(&Connector::fetch_media(&oa, "BUSY").await));
    assert_eq!(
        rejected_code(Connector::fetch_media(&oa, "OTHER").await),
        "48001"
    );
    assert!(is_transient(
        &Connector::fetch_media(&oa, "BAD-GATEWAY").await
    ));
}

// ---------- WeCom kf ----------

const CORP_ID: &str = "wwcorp0000000001";
const CORP_SECRET: &str = "corp-secret-1";

fn kf(server: &MockServer) -> WecomKfConnector {
    let settings = support::settings(
        "kf-media",
        "wecom_kf",
        Some(server.uri()),
        &[
            ("corp_id", CORP_ID),
            ("corp_secret", CORP_SECRET),
            ("token", "tok"),
            (
                "encoding_aes_key",
                "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR",
            ),
        ],
    );
    let (ctx, _) = support::context();
    WecomKfConnector::new(&settings, &ctx).unwrap()
}

async fn mount_kf_token(server: &MockServer, token: &str, times: u64) {
    Mock::given(method("GET"))
        .and(path("/cgi-bin/gettoken"))
        .and(query_param("corpid", CORP_ID))
        .and(query_param("corpsecret", CORP_SECRET))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": 7200
        })))
        .up_to_n_times(times)
        .expect(times)
        .mount(server)
        .await;
}

#[tokio::test]
async fn wecom_kf_passes_the_file_through_and_refreshes_a_refused_token() {
    let server = MockServer::start().await;
    mount_kf_token(&server, "kf-1", 1).await;
    mount_kf_token(&server, "kf-2", 1).await;
    wx_media("kf-1", "KF-MEDIA")
        .respond_with(errcode(42001, "access_token expired"))
        .expect(1)
        .mount(&server)
        .await;
    wx_media("kf-2", "KF-MEDIA")
        .respond_with(file(b"%PDF-1.4 file", "application/pdf"))
        .expect(1)
        .mount(&server)
        .await;
    let c = kf(&server);
    assert_eq!(
        read(Connector::fetch_media(&c, "KF-MEDIA").await.unwrap()).await,
        (Some("application/pdf".into()), b"%PDF-1.4 file".to_vec())
    );
}

#[tokio::test]
async fn wecom_kf_errors_are_classified_and_a_plain_text_file_is_a_file() {
    let server = MockServer::start().await;
    mount_kf_token(&server, "kf-1", 1).await;
    wx_media("kf-1", "GONE")
        .respond_with(errcode(40007, "invalid media_id"))
        .mount(&server)
        .await;
    wx_media("kf-1", "LIMIT")
        .respond_with(errcode(45009, "api freq out of limit"))
        .mount(&server)
        .await;
    wx_media("kf-1", "DOWN")
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    wx_media("kf-1", "TEXT")
        .respond_with(file(b"notes: {not json", "text/plain"))
        .mount(&server)
        .await;
    let c = kf(&server);
    assert_eq!(
        rejected_code(Connector::fetch_media(&c, "GONE").await),
        "media_not_found"
    );
    assert!(matches!(
        Connector::fetch_media(&c, "LIMIT").await,
        Err(ConnectorError::RateLimited { .. })
    ));
    assert!(is_transient(&Connector::fetch_media(&c, "DOWN").await));
    assert_eq!(
        read(Connector::fetch_media(&c, "TEXT").await.unwrap()).await,
        (Some("text/plain".into()), b"notes: {not json".to_vec())
    );
}

// ---------- WhatsApp ----------

const WA_TOKEN: &str = "wa-access-token";

fn whatsapp(server: &MockServer) -> WhatsAppConnector {
    let settings = support::settings(
        "wa-media",
        "whatsapp",
        Some(format!("{}/v21.0", server.uri())),
        &[
            ("app_secret", "secret"),
            ("verify_token", "verify"),
            ("phone_number_id", "106540352242922"),
            ("access_token", WA_TOKEN),
        ],
    );
    let (ctx, _) = support::context();
    WhatsAppConnector::new(&settings, &ctx).unwrap()
}

fn wa_lookup(media_id: &str) -> wiremock::MockBuilder {
    Mock::given(method("GET"))
        .and(path(format!("/v21.0/{media_id}")))
        .and(header(
            "authorization",
            format!("Bearer {WA_TOKEN}").as_str(),
        ))
}

#[tokio::test]
async fn whatsapp_looks_the_media_up_then_downloads_it_with_the_token() {
    let server = MockServer::start().await;
    wa_lookup("1037543291543636")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp",
            "url": format!("{}/lookaside/?mid=1037543291543636&ext=1", server.uri()),
            "mime_type": "image/jpeg",
            "sha256": "abc",
            "file_size": JPEG.len(),
            "id": "1037543291543636"
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/lookaside/"))
        .and(query_param("mid", "1037543291543636"))
        .and(header(
            "authorization",
            format!("Bearer {WA_TOKEN}").as_str(),
        ))
        .respond_with(file(JPEG, "application/octet-stream"))
        .expect(1)
        .mount(&server)
        .await;
    let c = whatsapp(&server);
    let download = Connector::fetch_media(&c, "1037543291543636")
        .await
        .unwrap();
    assert_eq!(download.content_length, Some(JPEG.len() as u64));
    // The download host's generic type gives way to the lookup's `mime_type`.
    assert_eq!(
        read(download).await,
        (Some("image/jpeg".into()), JPEG.to_vec())
    );
}

#[tokio::test]
async fn whatsapp_errors_are_classified() {
    let server = MockServer::start().await;
    wa_lookup("404404")
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": {"message": "Unsupported get request. Object with ID '404404' does not exist",
                      "type": "GraphMethodException", "code": 100, "error_subcode": 33}
        })))
        .mount(&server)
        .await;
    wa_lookup("190190")
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "error": {"message": "Error validating access token", "code": 190}
        })))
        .mount(&server)
        .await;
    wa_lookup("500500")
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    wa_lookup("777777")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "url": format!("{}/lookaside/big", server.uri()),
            "mime_type": "application/pdf",
            "file_size": media::MAX_FETCH_BYTES + 1
        })))
        .mount(&server)
        .await;
    wa_lookup("888888")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "url": format!("{}/lookaside/expired", server.uri()), "mime_type": "image/jpeg"
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/lookaside/expired"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let c = whatsapp(&server);
    assert_eq!(
        rejected_code(Connector::fetch_media(&c, "404404").await),
        "media_not_found"
    );
    assert_eq!(
        rejected_code(Connector::fetch_media(&c, "190190").await),
        "access_token_invalid"
    );
    assert!(is_transient(&Connector::fetch_media(&c, "500500").await));
    assert_eq!(
        rejected_code(Connector::fetch_media(&c, "777777").await),
        "media_too_large"
    );
    assert_eq!(
        rejected_code(Connector::fetch_media(&c, "888888").await),
        "media_not_found"
    );
    let big = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/lookaside/big")
        .count();
    assert_eq!(big, 0, "a file known to be too large is not downloaded");
}

// ---------- Telegram ----------

const BOT_TOKEN: &str = "7012345678:AAHt3st-T0ken_for_Switchyard0000000";

fn telegram(server: &MockServer) -> TelegramConnector {
    let settings = support::settings(
        "tg-media",
        "telegram",
        Some(server.uri()),
        &[("bot_token", BOT_TOKEN), ("secret_token", "secret-1")],
    );
    let (ctx, _) = support::context();
    TelegramConnector::new(&settings, &ctx).unwrap()
}

fn get_file(file_id: &str) -> wiremock::MockBuilder {
    Mock::given(method("POST"))
        .and(path(format!("/bot{BOT_TOKEN}/getFile")))
        .and(body_json(json!({ "file_id": file_id })))
}

#[tokio::test]
async fn telegram_gets_the_file_path_then_the_file() {
    let server = MockServer::start().await;
    get_file("AgACAgIAAxkBAAIB")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "ok": true,
            "result": {"file_id": "AgACAgIAAxkBAAIB", "file_unique_id": "u1",
                       "file_size": JPEG.len(), "file_path": "photos/file_7.jpg"}
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/file/bot{BOT_TOKEN}/photos/file_7.jpg")))
        .respond_with(file(JPEG, "image/jpeg"))
        .expect(1)
        .mount(&server)
        .await;
    let c = telegram(&server);
    assert_eq!(
        read(
            Connector::fetch_media(&c, "AgACAgIAAxkBAAIB")
                .await
                .unwrap()
        )
        .await,
        (Some("image/jpeg".into()), JPEG.to_vec())
    );
}

#[tokio::test]
async fn telegram_errors_are_classified_and_never_show_the_token() {
    let server = MockServer::start().await;
    let refusal = |description: &str| {
        ResponseTemplate::new(400)
            .set_body_json(json!({"ok": false, "error_code": 400, "description": description}))
    };
    get_file("unknown")
        .respond_with(refusal("Bad Request: invalid file_id"))
        .mount(&server)
        .await;
    get_file("huge")
        .respond_with(refusal("Bad Request: file is too big"))
        .mount(&server)
        .await;
    get_file("down")
        .respond_with(ResponseTemplate::new(502))
        .mount(&server)
        .await;
    get_file("gone")
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"ok": true, "result": {"file_id": "gone", "file_path": "documents/x.pdf"}}),
        ))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/file/bot{BOT_TOKEN}/documents/x.pdf")))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let c = telegram(&server);
    let secret = BOT_TOKEN.split_once(':').unwrap().1;
    for (id, expected) in [
        ("unknown", Some("media_not_found")),
        ("huge", Some("media_too_large")),
        ("down", None),
        ("gone", Some("media_not_found")),
    ] {
        let result = Connector::fetch_media(&c, id).await;
        let shown = format!("{result:?}");
        assert!(!shown.contains(secret), "{id}: {shown}");
        match expected {
            Some(code) => assert_eq!(rejected_code(result), code, "{id}"),
            None => assert!(is_transient(&result), "{id}: {shown}"),
        }
    }
}

// ---------- LINE ----------

const LINE_TOKEN: &str = "line-test-channel-access-token-0001";

fn line_with(options: &[(&str, &str)]) -> Result<LineConnector, ConnectorError> {
    let mut all = vec![
        ("channel_secret", "8c5a1e0f3b7d4c2a9e6f1b0d7c3a5e91"),
        ("channel_access_token", LINE_TOKEN),
    ];
    all.extend_from_slice(options);
    let settings = support::settings("line-media", "line", None, &all);
    let (ctx, _) = support::context();
    LineConnector::new(&settings, &ctx)
}

fn line_content(message_id: &str) -> wiremock::MockBuilder {
    Mock::given(method("GET"))
        .and(path(format!("/v2/bot/message/{message_id}/content")))
        .and(header(
            "authorization",
            format!("Bearer {LINE_TOKEN}").as_str(),
        ))
}

#[tokio::test]
async fn line_fetches_content_from_its_data_host() {
    let server = MockServer::start().await;
    line_content("325708")
        .respond_with(file(JPEG, "image/jpeg"))
        .expect(1)
        .mount(&server)
        .await;
    let c = line_with(&[("data_api_base", &server.uri())]).unwrap();
    assert_eq!(
        read(Connector::fetch_media(&c, "325708").await.unwrap()).await,
        (Some("image/jpeg".into()), JPEG.to_vec())
    );
}

#[tokio::test]
async fn line_errors_are_classified() {
    let server = MockServer::start().await;
    line_content("404")
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"message": "Not found"})))
        .mount(&server)
        .await;
    line_content("401")
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"message": "Authentication failed"})),
        )
        .mount(&server)
        .await;
    line_content("202")
        .respond_with(ResponseTemplate::new(202))
        .mount(&server)
        .await;
    line_content("500")
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let c = line_with(&[("data_api_base", &server.uri())]).unwrap();
    assert_eq!(
        rejected_code(Connector::fetch_media(&c, "404").await),
        "media_not_found"
    );
    assert_eq!(
        rejected_code(Connector::fetch_media(&c, "401").await),
        "access_token_invalid"
    );
    assert!(is_transient(&Connector::fetch_media(&c, "202").await));
    assert!(is_transient(&Connector::fetch_media(&c, "500").await));
    // A sticker's `package:sticker` id is no message id: refused without a request.
    assert_eq!(
        rejected_code(Connector::fetch_media(&c, "1:52002734").await),
        "media_not_found"
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 4);
}

#[test]
fn line_data_api_base_must_be_a_url() {
    assert!(matches!(
        line_with(&[("data_api_base", "api-data.line.me")]),
        Err(ConnectorError::Config(_))
    ));
    assert!(line_with(&[]).is_ok());
}

// ---------- no media, and the shared helper ----------

#[tokio::test]
async fn channels_without_platform_media_answer_unsupported() {
    let settings = support::settings(
        "app",
        "api",
        None,
        &[("secret", "0123456789abcdef0123456789abcdef")],
    );
    let (ctx, _) = support::context();
    let channel: Arc<dyn Channel> = Arc::new(ApiConnector::new(&settings, &ctx).unwrap());
    assert!(matches!(
        channel.fetch_media("anything").await,
        Err(ConnectorError::Unsupported(_))
    ));
}

#[tokio::test]
async fn a_declared_length_over_the_cap_is_refused_before_reading() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(file(JPEG, "image/jpeg"))
        .mount(&server)
        .await;
    let response = media::fetch(reqwest::Client::new().get(server.uri()), "test", |_, _| {
        panic!("2xx")
    })
    .await
    .unwrap();
    assert_eq!(
        rejected_code(MediaDownload::from_response(response, 4)),
        "media_too_large"
    );
}

/// A one-shot HTTP/1.1 server answering a chunked body (no `Content-Length`).
fn chunked_server(content_type: &'static str, chunks: Vec<&'static [u8]>) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).unwrap();
            if n == 0 {
                return;
            }
            request.extend_from_slice(&buf[..n]);
        }
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        for chunk in chunks {
            answer.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            answer.extend_from_slice(chunk);
            answer.extend_from_slice(b"\r\n");
        }
        answer.extend_from_slice(b"0\r\n\r\n");
        let _ = socket.write_all(&answer);
    });
    format!("http://{addr}/")
}

#[tokio::test]
async fn a_stream_of_unknown_length_is_cut_at_the_cap() {
    let url = chunked_server("video/mp4", vec![b"0123456789", b"0123456789"]);
    let response = media::fetch(reqwest::Client::new().get(url), "test", |_, _| {
        panic!("2xx")
    })
    .await
    .unwrap();
    let download = MediaDownload::from_response(response, 15).unwrap();
    assert_eq!(download.content_length, None);
    assert!(matches!(
        download.bytes().await,
        Err(ConnectorError::Rejected { code, .. }) if code == "media_too_large"
    ));
}

#[tokio::test]
async fn json_or_file_puts_back_what_it_read_of_a_file() {
    let url = chunked_server("text/plain", vec![b"{\"not\": ", b"json, a text file"]);
    let response = media::fetch(reqwest::Client::new().get(url), "test", |_, _| {
        panic!("2xx")
    })
    .await
    .unwrap();
    let download = MediaDownload::from_response(response, 1000).unwrap();
    match media::json_or_file(download).await.unwrap() {
        MediaAnswer::File(file) => assert_eq!(
            file.bytes().await.unwrap().as_ref(),
            b"{\"not\": json, a text file"
        ),
        MediaAnswer::Json(v) => panic!("not JSON: {v}"),
    }
}
