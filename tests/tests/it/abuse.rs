//! Abuse: sources sending invalid signatures are limited per source, cheaply; slow headers and
//! slow bodies are cut off; arbitrary bodies never get a 5xx; text of every kind is stored byte
//! for byte. Everything over real TCP to the real server (`ingress::serve`).

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use harness::{
    app::{ACCOUNT_SID, AUTH_TOKEN, OUR_NUMBER, Settings, TestApp, wait_until},
    pg,
};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::Value;
use sim::webhook::{InboundSms, new_message_sid_with, signed_request};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

const ATTACKER: [u8; 4] = [127, 0, 0, 2];

fn addr(app: &TestApp) -> SocketAddr {
    app.base_url
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap()
}

/// An HTTP client whose connections come from `local` (any 127/8 address works on loopback).
fn client_from(local: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(local))
        .build()
        .unwrap()
}

async fn connect_from(local: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((local, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// Everything the server sends until it closes the connection; fails if it is still open after
/// `limit`.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&received).into_owned();
    assert!(
        closed.is_ok(),
        "connection still open after {limit:?}; received {text:?}"
    );
    text
}

fn head(path: &str, content_length: usize, signature: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\
         X-Twilio-Signature: {signature}\r\nContent-Length: {content_length}\r\n\r\n"
    )
}

async fn messages(app: &TestApp) -> i64 {
    app.count("SELECT count(*) FROM sms_messages").await
}

async fn metric(app: &TestApp, series: &str) -> String {
    app.metrics_text()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("{series} in /metrics"))
}

/// A signed inbound webhook from `client`.
async fn post_signed(
    app: &TestApp,
    client: &reqwest::Client,
    sms: &InboundSms,
) -> reqwest::Response {
    sim::webhook::send_to(
        client,
        &app.url("/webhook/twilio/sms"),
        &app.webhook_url(),
        AUTH_TOKEN,
        &sms.params(ACCOUNT_SID),
    )
    .await
    .unwrap()
}

async fn post_badly_signed(client: &reqwest::Client, url: &str) -> reqwest::Response {
    let params = InboundSms::new("+15551230001", OUR_NUMBER, "hi").params(ACCOUNT_SID);
    let (body, _) = signed_request("not-the-token", url, &params);
    client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", "bm90IGEgc2lnbmF0dXJl")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_source_sending_invalid_signatures_is_limited_cheaply_and_others_are_not() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(
        Settings::new(&db)
            .set("INVALID_SIGNATURE_LIMIT", "3")
            .set("INVALID_SIGNATURE_WINDOW_SECS", "2")
            // Long, so that a server waiting for a body would not answer in the bound below.
            .set("REQUEST_TIMEOUT_MS", "60000"),
    )
    .await;
    let attacker = client_from(ATTACKER);
    let sms_url = app.url("/webhook/twilio/sms");

    for i in 0..3 {
        let resp = post_badly_signed(&attacker, &sms_url).await;
        assert_eq!(resp.status(), 403, "invalid signature {i} within the limit");
    }
    let resp = post_badly_signed(&attacker, &sms_url).await;
    assert_eq!(resp.status(), 429);
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    let json: Value = resp.json().await.unwrap();
    assert_eq!(json["code"], "rate_limited");

    // In the penalty box, a valid signature is refused too, and so is the status webhook.
    let resp = post_signed(
        &app,
        &attacker,
        &InboundSms::new("+15551230001", OUR_NUMBER, "hi"),
    )
    .await;
    assert_eq!(resp.status(), 429);
    let resp = attacker
        .post(app.url("/webhook/twilio/status"))
        .body("MessageSid=SM1&MessageStatus=delivered")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);

    // Refused from the head alone: the declared body is never sent, and the answer comes anyway.
    let mut raw = connect_from(ATTACKER, addr(&app)).await;
    raw.write_all(head("/webhook/twilio/sms", 60_000, "x").as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(&mut raw, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("rate_limited"), "{answer}");

    // Another source is unaffected.
    let resp = post_signed(
        &app,
        &app.http,
        &InboundSms::new("+15551230002", OUR_NUMBER, "ok"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(messages(&app).await, 1);
    assert_eq!(
        metric(&app, "sms_webhooks_total{outcome=\"rejected\"}").await,
        "3"
    );
    assert_eq!(
        metric(&app, "sms_webhooks_total{outcome=\"rate_limited\"}").await,
        "4"
    );

    // Once the window has passed, the source is served again.
    let back = wait_until(Duration::from_secs(10), || async {
        let sms = InboundSms::new("+15551230001", OUR_NUMBER, "back");
        post_signed(&app, &attacker, &sms).await.status() == 200
    })
    .await;
    assert!(back.is_ok(), "source still limited after its window");
    assert_eq!(messages(&app).await, 2);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_source_is_the_hop_the_proxy_added() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(
        Settings::new(&db)
            .set("TRUST_FORWARDED_HEADERS", "true")
            .set("INVALID_SIGNATURE_LIMIT", "2"),
    )
    .await;
    let url = app.url("/webhook/twilio/sms");
    // The client wrote the first entry (posing as someone else); the proxy appended the second.
    let post = |forwarded_for: &'static str, signature: String, body: String| {
        app.http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-forwarded-proto", "http")
            .header("x-forwarded-for", forwarded_for)
            .header("x-twilio-signature", signature)
            .body(body)
            .send()
    };
    let signed = |body: &str| {
        let sms = InboundSms::new("+15551230001", OUR_NUMBER, body);
        signed_request(AUTH_TOKEN, &app.webhook_url(), &sms.params(ACCOUNT_SID))
    };
    for expected in [403, 403, 429] {
        let (body, _) = signed("x");
        let resp = post("198.51.100.7, 203.0.113.9", "bad".into(), body)
            .await
            .unwrap();
        assert_eq!(resp.status(), expected);
    }
    let (body, sig) = signed("from the limited source");
    let resp = post("203.0.113.9", sig, body).await.unwrap();
    assert_eq!(resp.status(), 429);
    // The address the client posed as is not limited.
    let (body, sig) = signed("from the real one");
    let resp = post("198.51.100.7", sig, body).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(messages(&app).await, 1);
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db).set("REQUEST_HEADER_TIMEOUT_MS", "300")).await;
    let stream = connect_from([127, 0, 0, 1], addr(&app)).await;
    let (mut read, mut write) = stream.into_split();
    // Half the headers, then one byte every 100 ms: never idle, never done (slowloris).
    let trickle = tokio::spawn(async move {
        write
            .write_all(b"POST /webhook/twilio/sms HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await?;
        for _ in 0..600 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            write.write_all(b"a").await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut received = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut received)).await;
    assert!(closed.is_ok(), "slow headers still connected after 10 s");
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    trickle.abort();

    // The server is fine for everyone else.
    app.inbound("+15551230001", "still here").await;
}

#[tokio::test]
async fn a_slow_body_gets_408_and_stores_nothing() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db).set("REQUEST_TIMEOUT_MS", "500")).await;
    let sms = InboundSms::new("+15551230001", OUR_NUMBER, "slowly");
    let (body, sig) = signed_request(AUTH_TOKEN, &app.webhook_url(), &sms.params(ACCOUNT_SID));
    let mut stream = connect_from([127, 0, 0, 1], addr(&app)).await;
    stream
        .write_all(head("/webhook/twilio/sms", body.len(), &sig).as_bytes())
        .await
        .unwrap();
    stream
        .write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    // Finishing the body now changes nothing: the connection is gone.
    let _ = stream.write_all(&body.as_bytes()[body.len() / 2..]).await;
    assert_eq!(messages(&app).await, 0);
}

#[tokio::test]
async fn an_oversized_chunked_body_is_413_and_stores_nothing() {
    // A body without Content-Length is cut off at MAX_BODY_BYTES as it streams in (the declared
    // length case is in webhook.rs).
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db).set("MAX_BODY_BYTES", "1024")).await;
    let sms = InboundSms::new("+15551230001", OUR_NUMBER, "x".repeat(2000));
    let (body, sig) = signed_request(AUTH_TOKEN, &app.webhook_url(), &sms.params(ACCOUNT_SID));
    let mut stream = connect_from([127, 0, 0, 1], addr(&app)).await;
    let mut request = format!(
        "POST /webhook/twilio/sms HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: {sig}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    for chunk in body.as_bytes().chunks(500) {
        request.push_str(&format!(
            "{:x}\r\n{}\r\n",
            chunk.len(),
            std::str::from_utf8(chunk).unwrap()
        ));
    }
    request.push_str("0\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    assert_eq!(messages(&app).await, 0);
}

/// Bodies Twilio may well deliver: SQL-looking text, every kind of unicode, the longest message.
fn hostile_texts() -> Vec<String> {
    let long: String = "Ünïcødé 👍🏽 ".chars().cycle().take(1600).collect();
    [
        "'; DROP TABLE sms_messages; --",
        "Robert'); DROP TABLE students;--",
        r#"1' OR '1'='1' /* \ " ` $$dollar$$ E'\x00' %s %n {{x}} ${jndi:ldap://x} <script>"#,
        "👨‍👩‍👧‍👦 👍🏽 🏳️‍🌈 🧑🏿‍💻 ❤️‍🔥",
        "مرحبا بالعالم שלום \u{202E}desrever\u{202C} \u{200F}",
        "e\u{301}\u{302}\u{303} Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǧ̗͚̚o̙̔ͮ̇͐̇ 각 각",
        "\u{1}\u{2}\u{7}\u{8}\t\n\r\u{b}\u{c}\u{1b}[31m\u{7f}\u{80}\u{85}\u{9f}",
        "\u{FFFD} \u{FEFF} \u{200B}\u{200D} \u{2028}\u{2029} \u{FFFE}",
        "𝕳𝖊𝖑𝖑𝖔 𐍈 𠜎 🀄 \u{10FFFF}",
        "  + & = %25 %00 %FF ; \\ ",
        "",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain([long])
    .collect()
}

/// Each message's content and raw payload are exactly what was sent.
async fn stored_as_sent(app: &TestApp, sent: &[InboundSms], stage: &str) {
    for sms in sent {
        let (content, raw): (Vec<u8>, Value) = sqlx::query_as(
            "SELECT convert_to(message_content, 'UTF8'), raw_webhook_data \
             FROM sms_messages WHERE twilio_sid = $1",
        )
        .bind(&sms.message_sid)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(
            content,
            sms.body.as_bytes(),
            "{stage}: content of {:?}",
            sms.body
        );
        let expected = ingress::webhook::raw_payload(&sms.params(ACCOUNT_SID));
        assert_eq!(raw, expected, "{stage}: raw payload of {:?}", sms.body);
    }
}

#[tokio::test]
async fn text_of_every_kind_is_stored_byte_for_byte() {
    let db = pg::fresh_db().await;
    let mut app = TestApp::spawn(Settings::new(&db)).await;
    let mut sent = Vec::new();
    for text in hostile_texts() {
        let sms = InboundSms::new("+15551230001", OUR_NUMBER, text.clone())
            .with_extra(format!("Field {text}"), text.clone());
        let resp = app.post_webhook(&sms.params(ACCOUNT_SID)).await;
        assert_eq!(resp.status(), 200, "{text:?}");
        sent.push(sms);
    }
    stored_as_sent(&app, &sent, "stored").await;
    app.start_worker(&["inbound"]).await;
    app.drain("inbound").await;
    stored_as_sent(&app, &sent, "after the worker").await;
    let failed = app
        .count("SELECT count(*) FROM apalis.jobs WHERE job_type = 'inbound' AND status <> 'Done'")
        .await;
    assert_eq!(failed, 0, "the worker processed every message");
    app.stop_workers().await;
}

#[tokio::test]
async fn a_nul_character_is_stored_as_replacement_and_fails_no_neighbour() {
    // PostgreSQL text cannot hold U+0000; one such field must not fail its whole group commit.
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db)).await;
    let poisoned = InboundSms::new("+15551230001", OUR_NUMBER, "a\0b").with_extra("X\0", "\0");
    let neighbours: Vec<_> = (0..20)
        .map(|i| InboundSms::new("+15551230002", OUR_NUMBER, format!("neighbour {i}")))
        .collect();
    let answers = futures::future::join_all(
        std::iter::once(&poisoned)
            .chain(&neighbours)
            .map(|sms| post_signed(&app, &app.http, sms)),
    )
    .await;
    for resp in answers {
        assert_eq!(resp.status(), 200);
    }
    let (content, raw): (String, Value) = sqlx::query_as(
        "SELECT message_content, raw_webhook_data FROM sms_messages WHERE twilio_sid = $1",
    )
    .bind(&poisoned.message_sid)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(content, "a\u{FFFD}b");
    assert_eq!(raw["X\u{FFFD}"], "\u{FFFD}");
    assert_eq!(messages(&app).await, 21);
}

/// Random form bodies (escapes, broken UTF-8, NUL, separators, emoji), signed over what they
/// parse to or not signed at all: never a 5xx; signed ones that parse are stored.
#[tokio::test]
async fn arbitrary_bodies_never_get_a_5xx() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db).set("INVALID_SIGNATURE_LIMIT", "0")).await;
    let seed = rand::rng().random();
    let mut rng = StdRng::seed_from_u64(seed);
    let pieces = [
        "&",
        "=",
        "+",
        "%",
        "%2",
        "%00",
        "%FF",
        "%C3%28",
        "%E2%9C%93",
        "%F0%9F%91%8D",
        "Body",
        "From",
        "😀",
        "\u{202E}",
        "'; DROP TABLE x;--",
        "%26",
        "%3D",
        "\u{1}",
        "\r\n",
        " ",
    ];
    let mut stored = 0;
    for round in 0..150 {
        let mut body = format!("MessageSid={}&", new_message_sid_with(&mut rng)).into_bytes();
        for _ in 0..rng.random_range(0..40) {
            if rng.random_bool(0.15) {
                body.push(rng.random());
            } else {
                body.extend_from_slice(pieces[rng.random_range(0..pieces.len())].as_bytes());
            }
        }
        let json = rng.random_bool(0.1);
        let signed = match ingress::webhook::parse_form(&body) {
            Ok(params) if !json && rng.random_bool(0.8) => Some(
                shared::twilio::signature::compute(AUTH_TOKEN, &app.webhook_url(), &params),
            ),
            _ => None,
        };
        let content_type = if json {
            "application/json"
        } else {
            "application/x-www-form-urlencoded"
        };
        let resp = app
            .http
            .post(app.url("/webhook/twilio/sms"))
            .header("content-type", content_type)
            .header(
                "x-twilio-signature",
                signed.as_deref().unwrap_or("bm90IGEgc2lnbmF0dXJl"),
            )
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let expected: &[u16] = if signed.is_some() {
            &[200]
        } else {
            &[400, 403]
        };
        assert!(
            expected.contains(&status),
            "seed {seed} round {round}: {status} for {:?}",
            String::from_utf8_lossy(&body)
        );
        if status == 200 {
            stored += 1;
        }
    }
    assert_eq!(messages(&app).await, stored);
}
