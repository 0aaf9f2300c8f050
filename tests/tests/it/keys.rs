//! API key lifecycle: created with an optional expiry, listed without the key, revoked; a revoked
//! or expired key is refused on the next request on every replica. Through the admin API and the
//! CLI.

use std::time::Duration;

use chrono::Utc;
use harness::{
    app::{Settings, TestApp, wait_until},
    pg,
};
use serde_json::{Value, json};

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = app.http.request(method, app.url(path)).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn revoked_and_expired_keys_are_refused_at_once_on_every_replica() {
    let db = pg::fresh_db().await;
    let a = TestApp::spawn(Settings::new(&db)).await;
    let b = TestApp::spawn(Settings::new(&db)).await;
    let admin = a.api_key(&["admin"], None).await;

    let expires = Utc::now() + chrono::Duration::seconds(3);
    let (status, created) = call(
        &a,
        reqwest::Method::POST,
        "/api-keys",
        &admin,
        Some(json!({"name": "collections", "scopes": ["read", "send"], "expires_at": expires})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with(created["prefix"].as_str().unwrap()));
    assert_eq!(created["state"], "active");

    // Usable on both replicas, and its use is recorded.
    assert_eq!(b.get_json("/routes", Some(&key)).await.0, 200);
    assert_eq!(a.get_json("/routes", Some(&key)).await.0, 200);
    let used = wait_until(Duration::from_secs(5), || async {
        let (_, list) = a.get_json("/api-keys", Some(&admin)).await;
        list.as_array()
            .unwrap()
            .iter()
            .any(|k| k["name"] == "collections" && k["last_used_at"].is_string())
    })
    .await;
    assert!(used.is_ok(), "last_used_at recorded");
    let (_, list) = a.get_json("/api-keys", Some(&admin)).await;
    assert!(
        !list.to_string().contains(&key),
        "the key itself is never listed"
    );

    // Expired: refused on both replicas within a second of its expiry.
    let wait = (expires - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait).await;
    let refused_at = std::time::Instant::now();
    let refused = wait_until(Duration::from_secs(1), || async {
        a.get_json("/routes", Some(&key)).await.0 == 401
            && b.get_json("/routes", Some(&key)).await.0 == 401
    })
    .await;
    assert!(refused.is_ok(), "expired key refused within a second");
    println!(
        "expired key refused on both replicas {:?} after its expiry",
        refused_at.elapsed()
    );
    let (_, list) = b.get_json("/api-keys", Some(&admin)).await;
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "collections")
        .unwrap();
    assert_eq!(listed["state"], "expired");

    // Revoked on one replica: refused by the other on its next request.
    let (_, other) = call(
        &a,
        reqwest::Method::POST,
        "/api-keys",
        &admin,
        Some(json!({"name": "maintenance"})),
    )
    .await;
    let other_key = other["key"].as_str().unwrap();
    assert_eq!(other["scopes"], json!(["read"]));
    assert_eq!(b.get_json("/routes", Some(other_key)).await.0, 200);
    let id = other["id"].as_str().unwrap();
    let (status, revoked) = call(
        &a,
        reqwest::Method::DELETE,
        &format!("/api-keys/{id}"),
        &admin,
        None,
    )
    .await;
    assert_eq!((status, revoked["state"].as_str()), (200, Some("revoked")));
    assert_eq!(b.get_json("/routes", Some(other_key)).await.0, 401);
    // Again: the same answer, the first revocation time kept.
    let (status, again) = call(
        &b,
        reqwest::Method::DELETE,
        &format!("/api-keys/{id}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(
        (status, &again["revoked_at"]),
        (200, &revoked["revoked_at"])
    );

    // Bad requests.
    let (status, body) = call(
        &a,
        reqwest::Method::POST,
        "/api-keys",
        &admin,
        Some(json!({"name": "x", "scopes": ["root"]})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_request"))
    );
    assert!(body["errors"]["scopes"].is_string(), "{body}");
    let (status, body) = call(
        &a,
        reqwest::Method::POST,
        "/api-keys",
        &admin,
        Some(json!({"name": "x", "expires_at": "2020-01-01T00:00:00Z"})),
    )
    .await;
    assert!(
        status == 400 && body["errors"]["expires_at"].is_string(),
        "{body}"
    );
    let read = a.api_key(&["read"], None).await;
    assert_eq!(
        a.get_json("/api-keys", Some(&read)).await.0,
        403,
        "admin scope needed"
    );
}

#[tokio::test]
async fn a_tenant_admin_manages_only_its_tenants_keys() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db)).await;
    let admin_a = app.api_key(&["admin"], Some("t-a")).await;
    let _key_b = app.api_key(&["read"], Some("t-b")).await;
    let (status, created) = call(
        &app,
        reqwest::Method::POST,
        "/api-keys",
        &admin_a,
        Some(json!({"name": "a-reader"})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(created["tenant_id"], "t-a", "its own tenant by default");
    let (status, _) = call(
        &app,
        reqwest::Method::POST,
        "/api-keys",
        &admin_a,
        Some(json!({"name": "b-reader", "tenant_id": "t-b"})),
    )
    .await;
    assert_eq!(status, 404, "another tenant does not exist for it");
    let (_, list) = app.get_json("/api-keys", Some(&admin_a)).await;
    let tenants: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["tenant_id"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["t-a", "t-a"]);
    let id_b: uuid::Uuid = sqlx::query_scalar("SELECT id FROM api_keys WHERE tenant_id = 't-b'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let (status, _) = call(
        &app,
        reqwest::Method::DELETE,
        &format!("/api-keys/{id_b}"),
        &admin_a,
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_cli_creates_lists_and_revokes_keys() {
    let db = pg::fresh_db().await;
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(harness::app::workspace_binary("sms-ingress"))
            .args(args)
            .env_clear()
            .env("DATABASE_URL", &db.url)
            .env("LOG_FORMAT", "json")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let key = cli(&[
        "api-key",
        "create",
        "--name",
        "ops",
        "--scope",
        "admin",
        "--expires-in-days",
        "30",
    ]);
    let key = key.trim();
    assert!(key.starts_with("sk_"));
    let list = cli(&["api-key", "list"]);
    let row = list
        .lines()
        .find(|l| l.contains("\tops\t"))
        .expect("listed");
    assert!(
        row.contains(&key[..10]) && row.contains("\tactive\t") && !row.contains(key),
        "{row}"
    );
    let id = row.split('\t').next().unwrap();
    assert!(cli(&["api-key", "revoke", id]).starts_with("revoked"));
    assert!(
        cli(&["api-key", "list"])
            .lines()
            .any(|l| l.starts_with(id) && l.contains("\trevoked\t"))
    );
}
