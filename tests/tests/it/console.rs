//! The operator console in a real browser (headless Chromium over WebDriver): sign in with a key,
//! find a number written differently from how it was stored, open a message, replay a quarantined
//! message and see it routed, replay all that a filter matches after seeing the count, the ledger
//! and health pages; and a tenant-scoped key cannot open another tenant's number or message.
//! Screenshots of every page go to `target/test-output/console/`.

use std::time::Duration;

use harness::{
    app::{Settings, TestApp, wait_until},
    browser::{Browser, screenshot_dir},
    pg, sims,
};
use serde_json::json;
use shared::jobs;

const SECRET: &str = "console-agent-secret";
const A_PHONE: &str = "+14155550101";
const A_PHONE_2: &str = "+14155550103";
const B_PHONE: &str = "+14155550202";

async fn message_id(app: &TestApp, sid: &str) -> uuid::Uuid {
    sqlx::query_scalar("SELECT id FROM sms_messages WHERE twilio_sid = $1")
        .bind(sid)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn route_status(app: &TestApp, sid: &str) -> Option<String> {
    sqlx::query_scalar("SELECT route_status FROM sms_messages WHERE twilio_sid = $1")
        .bind(sid)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn operators_find_numbers_read_timelines_and_replay_the_quarantine_in_a_browser() {
    let db = pg::fresh_db().await;
    sqlx::query(
        "INSERT INTO tenant_profiles (tenant_id, name, phone_numbers) VALUES
           ('t-a', 'Ana', $1), ('t-b', 'Bo', $2)",
    )
    .bind(json!([A_PHONE, A_PHONE_2]))
    .bind(json!([B_PHONE]))
    .execute(&db.pool)
    .await
    .unwrap();
    let tw = sims::twilio().await;
    let agent = sims::agent(SECRET).await;
    let mut app = TestApp::spawn(
        Settings::new(&db)
            .set("TWILIO_API_BASE", tw.base_url())
            .set("SEND_RATE_PER_SENDER", "0"),
    )
    .await;
    app.start_worker(&[
        jobs::INBOUND,
        jobs::ROUTE,
        jobs::OUTBOUND_SEND,
        jobs::OUTBOUND_STATUS,
    ])
    .await;
    let admin = app.api_key(&["admin"], None).await;
    let scoped = app.api_key(&["read"], Some("t-a")).await;

    // No route yet: both tenants' questions go to the quarantine. A delivered notice to A, and an
    // opt-out from A's second number.
    let a_sid = app.inbound(A_PHONE, "Hola, ¿cuándo vence la renta?").await;
    let b_sid = app.inbound(B_PHONE, "The heater in 4B is broken").await;
    let stop_sid = app.inbound(A_PHONE_2, "STOP").await;
    let sent = app
        .http
        .post(app.url("/sms/send"))
        .bearer_auth(&admin)
        .json(&json!({"to": A_PHONE, "body": "Your receipt is ready <b>not bold</b>"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    let ok = wait_until(Duration::from_secs(20), || async {
        route_status(&app, &a_sid).await.as_deref() == Some("unroutable")
            && route_status(&app, &b_sid).await.as_deref() == Some("unroutable")
            && route_status(&app, &stop_sid).await.is_some()
            && app.count("SELECT count(*) FROM sms_messages WHERE direction = 'outbound' AND delivery_status = 'delivered'").await == 1
    })
    .await;
    assert!(ok.is_ok(), "quarantined and delivered");
    let b_id = message_id(&app, &b_sid).await;
    let a_id = message_id(&app, &a_sid).await;

    let shots = screenshot_dir();
    let browser = Browser::start().await;
    let console = |path: &str| app.url(path);

    // Signing in: the console sends a stranger to the sign-in page.
    browser.goto(&console("/console/numbers")).await;
    assert!(
        browser.url().await.ends_with("/console/login"),
        "{}",
        browser.url().await
    );
    browser.screenshot(&shots.join("01-sign-in.png")).await;
    browser.type_into("#key", "sk_not_a_key").await;
    browser.click("button[type=submit]").await;
    browser.wait_for_text("not valid").await;
    browser.type_into("#key", &admin).await;
    browser.click("button[type=submit]").await;
    browser.wait_for_url("/console/numbers").await;

    // A number written as people write it finds the one stored as +14155550101.
    browser.type_into("#number", "(415) 555-0101").await;
    browser.click("form.search button").await;
    let timeline = browser.wait_for_text("Timeline of").await;
    assert!(timeline.contains("Timeline of +14155550101"), "{timeline}");
    assert!(timeline.contains("Hola, ¿cuándo vence la renta?"));
    assert!(
        timeline.contains("Your receipt is ready <b>not bold</b>"),
        "text shown as text"
    );
    assert_eq!(
        browser.count("article.msg b").await,
        0,
        "no markup from a message"
    );
    assert_eq!(browser.count("article.msg").await, 2);
    browser.screenshot(&shots.join("02-timeline.png")).await;

    // The outbound message in full: its callbacks in order, its attempt with Twilio's answer.
    browser.click("article.outbound a.open").await;
    let detail = browser.wait_for_text("Delivery callbacks").await;
    assert!(
        detail.contains("Delivery callbacks, in the order received"),
        "{detail}"
    );
    assert!(
        detail.contains("delivered")
            && detail.contains("Send attempts")
            && detail.contains("accepted")
    );
    browser.screenshot(&shots.join("03-message.png")).await;

    // The quarantine, with its reasons; replay A's question once a route exists: it is routed.
    let route = app
        .http
        .post(app.url("/routes"))
        .bearer_auth(&admin)
        .json(&json!({"default": true, "agent_url": agent.url("echo"), "signing_secret": SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(route.status(), 201);
    browser.goto(&console("/console/quarantine")).await;
    let quarantine = browser.text().await;
    assert!(quarantine.contains("no_route") && quarantine.contains("The heater in 4B is broken"));
    browser.screenshot(&shots.join("04-quarantine.png")).await;
    browser
        .click(&format!("tr[data-message-id='{a_id}'] button"))
        .await;
    browser.wait_for_text("Replayed 1 message").await;
    let routed = wait_until(Duration::from_secs(20), || async {
        route_status(&app, &a_sid).await.as_deref() == Some("routed")
    })
    .await;
    assert!(routed.is_ok(), "the replayed message was routed");
    let replied = wait_until(Duration::from_secs(20), || async {
        app.count("SELECT count(*) FROM sms_messages WHERE direction = 'outbound' AND message_content LIKE 'Echo: Hola%'").await == 1
    })
    .await;
    assert!(replied.is_ok(), "the agent answered");
    browser
        .goto(&console("/console/numbers?number=415.555.0101"))
        .await;
    let timeline = browser.text().await;
    assert!(
        timeline.contains("routed") && timeline.contains("Echo: Hola, ¿cuándo vence la renta?"),
        "{timeline}"
    );

    // Replay all that a filter matches, after seeing how many that is.
    browser
        .goto(&console("/console/quarantine?reason=no_route"))
        .await;
    browser.click("a.button").await;
    let confirm = browser.wait_for_text("match").await;
    assert!(
        confirm.contains("1 quarantined message(s) match"),
        "{confirm}"
    );
    browser.screenshot(&shots.join("05-replay-all.png")).await;
    browser.click("form.card button").await;
    browser.wait_for_text("Replayed 1 message").await;
    let routed = wait_until(Duration::from_secs(20), || async {
        route_status(&app, &b_sid).await.as_deref() == Some("routed")
    })
    .await;
    assert!(routed.is_ok(), "replay-all routed B's message");

    // The opt-out ledger and health.
    browser.goto(&console("/console/opt-outs")).await;
    let ledger = browser.text().await;
    assert!(
        ledger.contains("opt_out") && ledger.contains(A_PHONE_2),
        "{ledger}"
    );
    browser.screenshot(&shots.join("06-opt-outs.png")).await;
    browser.goto(&console("/console/health")).await;
    let health = browser.text().await;
    assert!(
        health.contains("outbound-send") && health.contains("Messages per minute"),
        "{health}"
    );
    assert_eq!(
        browser.count("svg.chart rect.in").await,
        60,
        "one bar per minute"
    );
    browser.screenshot(&shots.join("07-health.png")).await;
    browser.click("nav button").await;
    browser.wait_for_url("/console/login").await;
    browser.goto(&console("/console/health")).await;
    assert!(
        browser.url().await.ends_with("/console/login"),
        "the session is gone"
    );

    // A tenant-scoped key: its own number yes, another tenant's number and message no.
    browser.goto(&console("/console/login")).await;
    browser.type_into("#key", &scoped).await;
    browser.click("button[type=submit]").await;
    browser.wait_for_url("/console/numbers").await;
    browser
        .goto(&console("/console/numbers?number=%2B14155550101"))
        .await;
    assert!(
        browser
            .text()
            .await
            .contains("Hola, ¿cuándo vence la renta?")
    );
    browser
        .goto(&console("/console/numbers?number=(415)%20555-0202"))
        .await;
    let other = browser.text().await;
    assert!(
        other.contains("No messages with +14155550202") && !other.contains("heater"),
        "{other}"
    );
    browser
        .screenshot(&shots.join("08-scoped-other-number.png"))
        .await;
    browser
        .goto(&console(&format!("/console/messages/{b_id}")))
        .await;
    let other = browser.text().await;
    assert!(
        other.contains("no such message") && !other.contains("heater"),
        "{other}"
    );
    browser
        .goto(&console("/console/quarantine?include_replayed=1"))
        .await;
    let q = browser.text().await;
    assert!(!q.contains("heater") && !q.contains("t-b"), "{q}");
    assert_eq!(
        browser.count("a.button").await,
        0,
        "no replay for a read-only key"
    );
    println!("console screenshots in {}", shots.display());
}

/// The session cookie and the forms, over plain HTTP: cookie flags, CSRF, and a session that ends
/// with its key.
#[tokio::test]
async fn console_sessions_are_strict_cookies_and_forms_need_their_token() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db).set("PUBLIC_URL", "https://sms.example.com")).await;
    let admin = app.api_key(&["admin"], None).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = http.get(app.url("/console/login")).send().await.unwrap();
    let login_cookie = form.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        login_cookie.contains("HttpOnly")
            && login_cookie.contains("SameSite=Strict")
            && login_cookie.contains("Secure")
    );
    let token = login_cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned();

    // Without the double-submit token: refused.
    let forged = http
        .post(app.url("/console/login"))
        .form(&[("key", admin.as_str()), ("csrf", "guess")])
        .header("cookie", format!("sms_console_login={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let signed = http
        .post(app.url("/console/login"))
        .form(&[("key", admin.as_str()), ("csrf", token.as_str())])
        .header("cookie", format!("sms_console_login={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), 303);
    let session = signed
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        // Behind https the session cookie is a __Host- cookie: Secure, host-only, Path=/.
        .find(|c| c.starts_with("__Host-sms_console="))
        .unwrap();
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Secure",
        "Path=/;",
        "Max-Age=28800",
    ] {
        assert!(session.contains(flag), "{flag} in {session}");
    }
    let cookie = session.split(';').next().unwrap().to_owned();
    let page = http
        .get(app.url("/console/quarantine"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let html = page.text().await.unwrap();
    let csrf = html
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();

    // A form without the session's token is refused and changes nothing.
    let id = uuid::Uuid::new_v4();
    for token in ["", "0000"] {
        let r = http
            .post(app.url(&format!("/console/quarantine/{id}/replay")))
            .header("cookie", &cookie)
            .form(&[("csrf", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "csrf {token:?}");
    }
    let r = http
        .post(app.url(&format!("/console/quarantine/{id}/replay")))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "with the token it gets to the replay (nothing to replay)"
    );

    // Revoking the key ends its sessions at once.
    let key_id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_keys")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    ingress::api_keys::revoke(&db.pool, key_id, None)
        .await
        .unwrap();
    let after = http
        .get(app.url("/console/quarantine"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 303);
    assert_eq!(after.headers()["location"], "/console/login");
}
