//! The attacks of the administration audit, each as an attacker would try it, with the answer
//! it gets now (the authorization matrix covers the statuses of every operation; these check
//! what the answers and the stored data say).

use harness::{
    app::{Settings, TestApp},
    pg,
};
use serde_json::{Value, json};

const A_NUM: &str = "+14159500101";
const B_NUM: &str = "+14159500202";

async fn app() -> TestApp {
    let db = pg::fresh_db().await;
    sqlx::query(
        "INSERT INTO tenant_profiles (tenant_id, name, phone_numbers, created_at) VALUES
           ('t-a', 'Ana', '[\"+14159500101\"]', now() - interval '1 day'),
           ('t-b', 'Bo', '[\"+14159500202\"]', now())",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // The fence as in production: no internal network allowed.
    TestApp::spawn(Settings::new(&db).set("AGENT_ALLOWED_NETWORKS", "")).await
}

async fn call(app: &TestApp, key: &str, method: &str, path: &str, body: Value) -> (u16, String) {
    let resp = app
        .http
        .request(method.parse().unwrap(), app.url(path))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn a_tenant_admin_cannot_take_over_global_routes_or_another_tenants_number() {
    let app = app().await;
    let a_admin = app.api_key(&["admin"], Some("t-a")).await;
    for target in [
        json!({"default": true}),
        json!({"workflow_type": "collections"}),
    ] {
        let mut body = json!({"agent_url": "http://93.184.216.34/attacker", "signing_secret": "s3cret-s3cret-s3cret"});
        body.as_object_mut()
            .unwrap()
            .extend(target.as_object().unwrap().clone());
        let (status, text) = call(&app, &a_admin, "POST", "/routes", body).await;
        assert_eq!(status, 403, "{text}");
        assert!(text.contains("unscoped_admin_only"), "{text}");
    }
    assert_eq!(app.count("SELECT count(*) FROM agent_routes").await, 0);

    // t-b's resident's number: refused, naming no tenant, and t-b keeps it.
    let (status, text) = call(
        &app,
        &a_admin,
        "POST",
        "/tenants/t-a/phones",
        json!({"phone_number": "+1 415 950 0202"}),
    )
    .await;
    assert_eq!(status, 409, "{text}");
    assert!(
        text.contains("number_claimed") && !text.contains("t-b"),
        "{text}"
    );
    let b_phones: Value =
        sqlx::query_scalar("SELECT phone_numbers FROM tenant_profiles WHERE tenant_id = 't-b'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(b_phones, json!([B_NUM]));

    // An operator moves it: one owner after, and the move is in the directory's log.
    let root = app.api_key(&["admin"], None).await;
    let (status, _) = call(
        &app,
        &root,
        "POST",
        "/tenants/t-a/phones",
        json!({"phone_number": B_NUM}),
    )
    .await;
    assert_eq!(status, 201);
    let owners: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tenant_profiles WHERE phone_numbers ? '+14159500202'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(owners, 1);
    assert!(
        app.count("SELECT count(*) FROM directory_changes WHERE phone_number = '+14159500202'")
            .await
            >= 3,
        "t-b's listing, then the removal and the addition noted"
    );
}

#[tokio::test]
async fn a_no_op_opt_in_answers_nothing_recorded_and_never_another_tenants_entry() {
    let app = app().await;
    let a_send = app.api_key(&["send"], Some("t-a")).await;
    let b_send = app.api_key(&["send"], Some("t-b")).await;
    let (status, text) = call(
        &app,
        &a_send,
        "POST",
        "/opt-outs",
        json!({"phone_number": A_NUM, "method": "letter", "note": "a-private-note"}),
    )
    .await;
    assert_eq!(status, 201, "{text}");
    // t-b posting a past opt-in for its own number, which has no events: nothing to record.
    let (status, text) = call(
        &app,
        &b_send,
        "POST",
        "/opt-outs",
        json!({"phone_number": B_NUM, "change": "opt_in", "method": "letter",
               "occurred_at": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["recorded"], false);
    assert!(
        !text.contains("a-private-note") && !text.contains("t-a"),
        "{text}"
    );
    // And t-b cannot touch t-a's number at all.
    let (status, _) = call(
        &app,
        &b_send,
        "POST",
        "/opt-outs",
        json!({"phone_number": A_NUM, "change": "opt_in", "method": "letter",
               "occurred_at": "2020-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn agent_urls_reaching_internal_addresses_are_refused() {
    let app = app().await;
    let a_admin = app.api_key(&["admin"], Some("t-a")).await;
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:9100/metrics",
        "http://localhost/",
        "http://10.0.0.7/",
        "http://100.64.0.1/",
        "http://[::1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/",
    ] {
        let (status, text) = call(
            &app,
            &a_admin,
            "POST",
            "/routes",
            json!({"tenant_id": "t-a", "agent_url": url, "signing_secret": "s3cret-s3cret-s3cret"}),
        )
        .await;
        assert_eq!(status, 400, "{url}: {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert!(
            body["errors"]["agent_url"]
                .as_str()
                .is_some_and(|e| e.contains("internal addresses are refused")),
            "{url}: {text}"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM agent_routes").await, 0);
}

#[tokio::test]
async fn csv_cells_that_spreadsheets_would_run_are_neutralised() {
    let app = app().await;
    let root = app.api_key(&["admin"], None).await;
    let (status, _) = call(
        &app,
        &root,
        "POST",
        "/opt-outs",
        json!({"phone_number": A_NUM, "method": "other", "note": "=HYPERLINK(\"http://x\",\"y\")"}),
    )
    .await;
    assert_eq!(status, 201);
    let csv = app
        .http
        .get(app.url("/opt-outs?format=csv"))
        .bearer_auth(&root)
        .send()
        .await
        .unwrap();
    assert_eq!(
        csv.headers()["x-content-type-options"],
        "nosniff",
        "every answer says nosniff"
    );
    let text = csv.text().await.unwrap();
    assert!(text.contains("\"'=HYPERLINK"), "{text}");
    assert!(
        text.contains(",+14159500101,"),
        "numbers stay numbers: {text}"
    );
}
