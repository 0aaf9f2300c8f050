//! Opt-outs in English, Spanish and Portuguese recorded with the rule that matched, the ledger
//! API (list, filter, CSV, recording one received by phone), and sends refused after any of them.

use harness::{
    app::{Settings, TestApp},
    pg,
};
use serde_json::{Value, json};
use shared::jobs;

async fn send(app: &TestApp, key: &str, to: &str) -> u16 {
    app.http
        .post(app.url("/sms/send"))
        .bearer_auth(key)
        .json(&json!({"to": to, "body": "Your rent reminder"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn opt_outs_in_three_languages_reach_the_ledger_and_stop_sends() {
    let db = pg::fresh_db().await;
    sqlx::query(
        "INSERT INTO tenant_profiles (tenant_id, phone_numbers) VALUES
           ('t-es', '[\"+14155550201\"]'), ('t-pt', '[\"+14155550202\"]'), ('t-en', '[\"+14155550203\"]'),
           ('t-call', '[\"+14155550204\"]')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut app = TestApp::spawn(Settings::new(&db)).await;
    app.start_worker(&[jobs::INBOUND]).await;
    let key = app.api_key(&["read", "send"], None).await;
    app.inbound("+14155550201", "No me manden más mensajes, por favor")
        .await;
    app.inbound("+14155550202", "PARE").await;
    app.inbound("+14155550203", "pare de cobrar a multa, I already paid")
        .await;
    app.drain(jobs::INBOUND).await;

    assert_eq!(
        send(&app, &key, "+14155550201").await,
        409,
        "Spanish phrase"
    );
    assert_eq!(
        send(&app, &key, "+14155550202").await,
        409,
        "Portuguese keyword"
    );
    assert_eq!(
        send(&app, &key, "+14155550203").await,
        202,
        "not an opt-out"
    );

    // One received by phone, recorded by hand.
    let r = app
        .http
        .post(app.url("/opt-outs"))
        .bearer_auth(&key)
        .json(&json!({"phone_number": "(415) 555-0204", "method": "phone_call", "note": "called the office"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let recorded: Value = r.json().await.unwrap();
    assert_eq!(recorded["source"], "api");
    assert_eq!(recorded["tenant_id"], "t-call");
    assert_eq!(
        send(&app, &key, "+14155550204").await,
        409,
        "in force at once"
    );

    let (status, ledger) = app.get_json("/opt-outs", Some(&key)).await;
    assert_eq!(status, 200);
    let rules: Vec<(String, String)> = ledger["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["their_number"].as_str().unwrap().to_owned(),
                e["rule"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        rules.contains(&("+14155550201".into(), "phrase:es".into())),
        "{ledger}"
    );
    assert!(
        rules.contains(&("+14155550202".into(), "keyword:pt".into())),
        "{ledger}"
    );
    assert!(
        rules.contains(&("+14155550204".into(), "api".into())),
        "{ledger}"
    );
    assert_eq!(rules.len(), 3, "the non-opt-out is not in the ledger");
    let (_, one) = app
        .get_json("/opt-outs?phone_number=%28415%29%20555-0201", Some(&key))
        .await;
    assert_eq!(one["events"].as_array().unwrap().len(), 1);
    let (_, page) = app.get_json("/opt-outs?limit=2", Some(&key)).await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    let cursor = page["next_cursor"].as_str().expect("a second page");
    let (_, rest) = app
        .get_json(&format!("/opt-outs?limit=2&cursor={cursor}"), Some(&key))
        .await;
    assert_eq!(rest["events"].as_array().unwrap().len(), 1);

    // CSV for an audit; a tenant-scoped key sees its own tenant only.
    let csv = app
        .http
        .get(app.url("/opt-outs?format=csv"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let text = csv.text().await.unwrap();
    assert!(text.starts_with("id,occurred_at,recorded_at,our_number,their_number,change"));
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.contains("\"called the office\"") || text.contains("called the office"));
    let es_key = app.api_key(&["read"], Some("t-es")).await;
    let (_, own) = app.get_json("/opt-outs", Some(&es_key)).await;
    let numbers: Vec<&str> = own["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["their_number"].as_str().unwrap())
        .collect();
    assert_eq!(numbers, vec!["+14155550201"]);
}

/// With OPT_OUT_CONFIRMATION, a new opt-out is answered once, in the tenant's language; a
/// repeated opt-out is not answered again, and nothing else reaches the number.
#[tokio::test]
async fn an_opt_out_is_confirmed_once_in_the_tenants_language() {
    let db = pg::fresh_db().await;
    sqlx::query(
        "INSERT INTO tenant_profiles (tenant_id, phone_numbers, language_preference) VALUES ('t-es', '[\"+14155550211\"]', 'es')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut app = TestApp::spawn(Settings::new(&db).set("OPT_OUT_CONFIRMATION", "true")).await;
    app.start_worker(&[jobs::INBOUND]).await;
    let key = app.api_key(&["read", "send"], None).await;
    app.inbound("+14155550211", "BAJA").await;
    app.drain(jobs::INBOUND).await;
    app.inbound("+14155550211", "baja!!").await;
    app.drain(jobs::INBOUND).await;
    let confirmations: Vec<String> = sqlx::query_scalar(
        "SELECT message_content FROM sms_messages WHERE direction = 'outbound' AND to_number = '+14155550211'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(confirmations.len(), 1, "{confirmations:?}");
    assert!(
        confirmations[0].starts_with("Se ha dado de baja"),
        "{confirmations:?}"
    );
    assert_eq!(send(&app, &key, "+14155550211").await, 409);
}
