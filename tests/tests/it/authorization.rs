//! The authorization matrix: every operation of the OpenAPI document, called with every key kind
//! (unscoped and tenant-scoped admin, read and send; revoked, expired and missing keys) against
//! a resource of the key's own tenant, of another tenant, and one no tenant owns (global
//! configuration or an unattributed record). Each answer is checked against the policy's table
//! (`ingress::policy::decide`), and no answer to a tenant-scoped key carries another tenant's
//! data. An operation this table does not know fails the test.

use std::collections::BTreeSet;

use harness::{
    app::{Settings, TestApp},
    pg,
};
use ingress::policy::{self, Action, Caller, Owner, Verdict};
use serde_json::{Value, json};
use shared::jobs;

const A_NUM: &str = "+14159400001";
const B_NUM: &str = "+14159400002";
/// A number no tenant lists (its conversation is unattributed).
const U_NUM: &str = "+14159400003";
const DEFAULT_AGENT: &str = "http://93.184.216.34/default-agent";

/// The inbound messages' texts: own, other tenant's, unowned.
const BODIES: [&str; 3] = ["a-own-text", "b-secret-text", "u-unowned-text"];

/// What a tenant-scoped key must never see: the other tenant, unowned records and the
/// operator's configuration.
fn foreign_markers() -> [&'static str; 6] {
    [
        "t-b",
        "4159400002",
        "default-agent",
        "4159400003",
        BODIES[1],
        BODIES[2],
    ]
}

/// The columns of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Own,
    Other,
    Unowned,
}

/// One cell of the matrix as the table of operations gives it.
enum Cell {
    /// The operation is not in this table: the test fails.
    Unknown,
    /// Not behind an API key (Twilio's signature, or public).
    NoKey,
    /// The operation has no resource of this kind (a tenant's phone book has no global one).
    NotApplicable,
    Call(Action, Shape, Call),
}

/// How an operation reads the policy.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Listing a number for a tenant: in the unowned column, a number the other tenant lists.
    Claim,
    /// One resource, owned as `owner` says for each target (record or configuration).
    Item { config: bool },
    /// A listing: the tenant asked for (own, other) or none, which a tenant-scoped key reads as
    /// its own tenant.
    Listing,
    /// A listing without a tenant parameter: always confined.
    Confined,
    /// Service-wide figures: global whatever the column.
    Global,
}

/// The request for one cell: method, path, body, and the status it answers when allowed.
struct Call {
    method: &'static str,
    path: String,
    body: Option<Value>,
    ok: u16,
}

struct Fixture<'a> {
    app: &'a TestApp,
    root: String,
    inbound: [String; 3],
    n: std::sync::atomic::AtomicUsize,
}

impl Fixture<'_> {
    fn next(&self) -> usize {
        self.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn number(t: Target) -> &'static str {
        match t {
            Target::Own => A_NUM,
            Target::Other => B_NUM,
            Target::Unowned => U_NUM,
        }
    }

    fn tenant(t: Target) -> Option<&'static str> {
        match t {
            Target::Own => Some("t-a"),
            Target::Other => Some("t-b"),
            Target::Unowned => None,
        }
    }

    async fn root_json(&self, method: &str, path: &str, body: Value) -> Value {
        let resp = self
            .app
            .http
            .request(method.parse().unwrap(), self.app.url(path))
            .bearer_auth(&self.root)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "fixture {method} {path}");
        resp.json().await.unwrap()
    }

    /// The operation's policy action and shape, and the request for `target`.
    async fn call(&self, operation: &str, target: Target) -> Cell {
        let num = Self::number(target);
        let tenant = Self::tenant(target);
        let n = self.next();
        let get = |path: String| Call {
            method: "GET",
            path,
            body: None,
            ok: 200,
        };
        let delete = |path: String, ok: u16| Call {
            method: "DELETE",
            path,
            body: None,
            ok,
        };
        let post = |path: &str, body: Value, ok: u16| Call {
            method: "POST",
            path: path.to_owned(),
            body: Some(body),
            ok,
        };
        let tenant_query = |path: &str| match tenant {
            Some(t) => format!("{path}?tenant_id={t}"),
            None => path.to_owned(),
        };
        let record = Shape::Item { config: false };
        let config = Shape::Item { config: true };
        let (action, shape, call) = match operation {
            "health" | "ready" | "openapi" | "docs" | "inboundSms" | "statusCallback" => {
                return Cell::NoKey;
            }
            "metrics" => (Action::Read, Shape::Global, get("/metrics".into())),
            "getConversation" => (Action::Read, record, get(format!("/conversations/{num}"))),
            "sendSms" => {
                self.opted_in(num).await;
                (
                    Action::Send,
                    record,
                    post(
                        "/sms/send",
                        json!({"to": num, "body": format!("matrix {n}")}),
                        202,
                    ),
                )
            }
            "cancelSms" => {
                self.opted_in(num).await;
                let later = (chrono::Utc::now() + chrono::Duration::hours(6)).to_rfc3339();
                let sent = self
                    .root_json(
                        "POST",
                        "/sms/send",
                        json!({"to": num, "body": format!("later {n}"), "send_at": later}),
                    )
                    .await;
                let id = sent["message_id"].as_str().unwrap().to_owned();
                (Action::Send, record, delete(format!("/sms/{id}"), 200))
            }
            "listRoutes" => (Action::Read, Shape::Confined, get("/routes".into())),
            "createRoute" => {
                let target = match tenant {
                    Some(t) => json!({"tenant_id": t}),
                    None => json!({"default": true}),
                };
                let body = route_body(target, "http://93.184.216.34/agent");
                (Action::Administer, config, post("/routes", body, 201))
            }
            "deleteRoute" => {
                let target = match tenant {
                    Some(t) => json!({"tenant_id": t}),
                    None => json!({"workflow_type": format!("wf-{n}")}),
                };
                let body = route_body(target, "http://93.184.216.34/route");
                let made = self.root_json("POST", "/routes", body).await;
                (
                    Action::Administer,
                    config,
                    delete(format!("/routes/{}", made["id"].as_str().unwrap()), 204),
                )
            }
            "listUnroutable" => (
                Action::Administer,
                Shape::Confined,
                get("/unroutable".into()),
            ),
            "replayUnroutable" => {
                let id = &self.inbound[target as usize];
                sqlx::query(
                    "INSERT INTO sms_unroutable (message_id, tenant_id, reason)
                     SELECT id, tenant_id, 'no_route' FROM sms_messages WHERE id = $1::uuid
                     ON CONFLICT (message_id) DO UPDATE SET replayed_at = NULL",
                )
                .bind(id)
                .execute(&self.app.pool)
                .await
                .unwrap();
                (
                    Action::Administer,
                    record,
                    Call {
                        method: "POST",
                        path: format!("/unroutable/{id}/replay"),
                        body: None,
                        ok: 202,
                    },
                )
            }
            "usage" => (Action::Read, Shape::Listing, get(tenant_query("/usage"))),
            "listOptOuts" => (Action::Read, Shape::Listing, get(tenant_query("/opt-outs"))),
            "recordOptOut" => (
                Action::Send,
                record,
                post(
                    "/opt-outs",
                    json!({"phone_number": num, "method": "phone_call"}),
                    201,
                ),
            ),
            "listTenantPhones" => {
                let Some(t) = tenant else {
                    return Cell::NotApplicable;
                };
                (Action::Read, config, get(format!("/tenants/{t}/phones")))
            }
            "addTenantPhone" => {
                // Own: a fresh number for t-a; other: a fresh number for t-b; unowned: t-a
                // claiming a number t-b lists (the claim the policy refuses tenant keys).
                let fresh = format!("+1415950{n:04}");
                let (path, action) = match target {
                    Target::Own => ("/tenants/t-a/phones", Action::Administer),
                    Target::Other => ("/tenants/t-b/phones", Action::Administer),
                    Target::Unowned => {
                        list(self.app, "t-b", &fresh).await;
                        ("/tenants/t-a/phones", Action::ClaimNumber)
                    }
                };
                (
                    action,
                    Shape::Claim,
                    post(path, json!({"phone_number": fresh}), 201),
                )
            }
            "removeTenantPhone" => {
                let Some(t) = tenant else {
                    return Cell::NotApplicable;
                };
                let fresh = format!("+1415960{n:04}");
                list(self.app, t, &fresh).await;
                (
                    Action::Administer,
                    config,
                    delete(format!("/tenants/{t}/phones/{fresh}"), 200),
                )
            }
            "listApiKeys" => (Action::Administer, Shape::Confined, get("/api-keys".into())),
            "createApiKey" => {
                let mut body = json!({"name": format!("made-{n}")});
                if let Some(t) = tenant {
                    body["tenant_id"] = json!(t);
                }
                (
                    Action::Administer,
                    Shape::Listing,
                    post("/api-keys", body, 201),
                )
            }
            "revokeApiKey" => {
                let issued =
                    ingress::auth::issue(&self.app.pool, "victim", &["read".into()], tenant, None)
                        .await
                        .unwrap();
                (
                    Action::Administer,
                    config,
                    delete(format!("/api-keys/{}", issued.id), 200),
                )
            }
            _ => return Cell::Unknown,
        };
        Cell::Call(action, shape, call)
    }

    /// A number may have been opted out by an earlier cell: sends to it start afresh.
    async fn opted_in(&self, number: &str) {
        sqlx::query("DELETE FROM sms_opt_outs WHERE their_number = $1")
            .bind(number)
            .execute(&self.app.pool)
            .await
            .unwrap();
    }
}

/// A route's body: its target (`{"tenant_id": ..}`, `{"default": true}`...) and an agent.
fn route_body(target: Value, agent_url: &str) -> Value {
    let mut body = json!({"agent_url": agent_url, "signing_secret": "s3cret-s3cret-s3cret"});
    body.as_object_mut()
        .unwrap()
        .extend(target.as_object().unwrap().clone());
    body
}

/// Lists `number` for `tenant` directly (the fixture, not under test).
async fn list(app: &TestApp, tenant: &str, number: &str) {
    sqlx::query(
        "UPDATE tenant_profiles SET phone_numbers = phone_numbers || jsonb_build_array($2::text)
         WHERE tenant_id = $1",
    )
    .bind(tenant)
    .bind(number)
    .execute(&app.pool)
    .await
    .unwrap();
}

/// Two tenants, each with an inbound message, and one from a number no tenant lists: the ids
/// of those three messages (own, other, unowned).
async fn world() -> (TestApp, [uuid::Uuid; 3]) {
    let db = pg::fresh_db().await;
    sqlx::query(
        "INSERT INTO tenant_profiles (tenant_id, name, phone_numbers) VALUES
           ('t-a', 'Ana', '[\"+14159400001\"]'), ('t-b', 'Bo', '[\"+14159400002\"]')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut app = TestApp::spawn(
        Settings::new(&db)
            .set("SEND_RATE_PER_SENDER", "0")
            .set("AGENT_ALLOWED_NETWORKS", ""),
    )
    .await;
    app.start_worker(&[jobs::INBOUND]).await;
    let mut sids = Vec::new();
    for (num, body) in [A_NUM, B_NUM, U_NUM].iter().zip(BODIES) {
        sids.push(app.inbound(num, body).await);
    }
    app.drain(jobs::INBOUND).await;
    let mut ids = [uuid::Uuid::nil(); 3];
    for (id, sid) in ids.iter_mut().zip(&sids) {
        *id = sqlx::query_scalar("SELECT id FROM sms_messages WHERE twilio_sid = $1")
            .bind(sid)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    }
    (app, ids)
}

/// The six key kinds: (name, scopes, tenant).
fn key_kinds() -> Vec<(&'static str, Vec<String>, Option<&'static str>)> {
    let s = |scope: &str| vec![scope.to_owned()];
    vec![
        ("unscoped admin", s("admin"), None),
        ("unscoped read", s("read"), None),
        ("unscoped send", s("send"), None),
        ("tenant admin", s("admin"), Some("t-a")),
        ("tenant read", s("read"), Some("t-a")),
        ("tenant send", s("send"), Some("t-a")),
    ]
}

/// The status the policy's verdict answers.
fn status_of(verdict: Verdict, ok: u16) -> u16 {
    match verdict {
        Verdict::Allowed => ok,
        Verdict::MissingScope | Verdict::UnscopedOnly => 403,
        Verdict::Hidden => 404,
        Verdict::NumberClaimed => 409,
    }
}

/// What the table says for this cell.
fn expected(caller: Caller<'_>, action: Action, shape: Shape, target: Target) -> Verdict {
    let owner = match (shape, target) {
        (_, Target::Own) => Owner::Tenant("t-a"),
        (_, Target::Other) => Owner::Tenant("t-b"),
        // A listing without a tenant reads the key's own tenant when it has one.
        (Shape::Listing | Shape::Confined, Target::Unowned) => {
            caller.tenant.map_or(Owner::Global, Owner::Tenant)
        }
        (Shape::Claim, Target::Unowned) => Owner::Tenant("t-b"),
        (Shape::Global, Target::Unowned) => Owner::Global,
        (Shape::Item { config: true }, Target::Unowned) => Owner::Global,
        (Shape::Item { config: false }, Target::Unowned) => Owner::Unattributed,
    };
    let owner = match (shape, target) {
        // A listing with no tenant parameter is the same request whatever the column.
        (Shape::Confined, _) => caller.tenant.map_or(Owner::Global, Owner::Tenant),
        (Shape::Global, _) => Owner::Global,
        _ => owner,
    };
    policy::decide(caller, action, policy::whose(caller, owner))
}

#[tokio::test]
async fn every_operation_every_key_kind_and_owner() {
    let (mut app, ids) = world().await;
    let root = app.api_key(&["admin"], None).await;
    let fx = Fixture {
        app: &app,
        root: root.clone(),
        inbound: ids.map(|id| id.to_string()),
        n: Default::default(),
    };
    // Configuration everywhere: both tenants' routes and the default route.
    fx.root_json(
        "POST",
        "/routes",
        json!({"default": true, "agent_url": DEFAULT_AGENT, "signing_secret": "s3cret-s3cret-s3cret"}),
    )
    .await;

    // The key kinds, and keys that are no keys.
    let kinds = key_kinds();
    let mut keys = Vec::new();
    for (name, scopes, tenant) in &kinds {
        let key = ingress::auth::create_key(&app.pool, name, scopes, *tenant)
            .await
            .unwrap();
        keys.push(key);
    }
    let revoked = app.api_key(&["admin"], None).await;
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1")
        .bind(ingress::auth::hash_key(&revoked))
        .execute(&app.pool)
        .await
        .unwrap();
    let expired = app.api_key(&["admin"], None).await;
    sqlx::query("UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE key_hash = $1")
        .bind(ingress::auth::hash_key(&expired))
        .execute(&app.pool)
        .await
        .unwrap();
    let not_keys: [(&str, Option<String>); 3] = [
        ("revoked", Some(revoked)),
        ("expired", Some(expired)),
        ("missing", None),
    ];

    let spec: Value = serde_json::from_str(&app.get_text("/openapi.json").await).unwrap();
    let mut operations = BTreeSet::new();
    for ops in spec["paths"].as_object().unwrap().values() {
        for (method, op) in ops.as_object().unwrap() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                operations.insert(op["operationId"].as_str().unwrap().to_owned());
            }
        }
    }
    let (mut cells, mut unknown, mut wrong) = (0usize, Vec::new(), Vec::new());
    for operation in &operations {
        for target in [Target::Own, Target::Other, Target::Unowned] {
            let mut callers: Vec<(String, Option<String>, Option<Caller<'_>>)> = kinds
                .iter()
                .zip(&keys)
                .map(|((name, scopes, tenant), key)| {
                    (
                        name.to_string(),
                        Some(key.clone()),
                        Some(Caller {
                            scopes,
                            tenant: *tenant,
                        }),
                    )
                })
                .collect();
            callers.extend(
                not_keys
                    .iter()
                    .map(|(name, key)| (name.to_string(), key.clone(), None)),
            );
            for (name, key, caller) in callers {
                // A fresh resource for every call: mutations never see another's leftovers.
                let (action, shape, call) = match fx.call(operation, target).await {
                    Cell::Call(action, shape, call) => (action, shape, call),
                    Cell::Unknown => {
                        unknown.push(operation.clone());
                        break;
                    }
                    Cell::NoKey | Cell::NotApplicable => break,
                };
                let want = match caller {
                    Some(c) => status_of(expected(c, action, shape, target), call.ok),
                    None => 401,
                };
                let mut req = app
                    .http
                    .request(call.method.parse().unwrap(), app.url(&call.path));
                if let Some(key) = &key {
                    req = req.bearer_auth(key);
                }
                if let Some(body) = &call.body {
                    req = req.json(body);
                }
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap();
                cells += 1;
                if status != want {
                    wrong.push(format!(
                        "{operation} {target:?} as {name}: {status}, the table says {want} ({} {}): {text}",
                        call.method, call.path
                    ));
                }
                if caller.is_some_and(|c| c.tenant.is_some()) {
                    for marker in foreign_markers() {
                        if text.contains(marker) {
                            wrong.push(format!(
                                "{operation} {target:?} as {name} leaked {marker:?}: {text}"
                            ));
                        }
                    }
                }
            }
        }
    }
    println!(
        "authorization matrix: {} operations, {cells} calls checked against the policy table",
        operations.len()
    );
    assert!(
        unknown.is_empty(),
        "operations missing from the matrix: {unknown:?}"
    );
    assert!(
        wrong.is_empty(),
        "{} cells wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    app.stop_workers().await;
}

/// Signs in to the console with `key`: the session cookie, and the session's CSRF token (read
/// from a page's form); None when the console refuses the key.
async fn console_session(app: &TestApp, key: &str) -> Option<(String, String)> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = http.get(app.url("/console/login")).send().await.unwrap();
    let login = form.headers()["set-cookie"].to_str().unwrap().to_owned();
    let token = login.split(';').next()?.split_once('=')?.1.to_owned();
    let signed = http
        .post(app.url("/console/login"))
        .form(&[("key", key), ("csrf", token.as_str())])
        .header("cookie", format!("sms_console_login={token}"))
        .send()
        .await
        .unwrap();
    if signed.status() != 303 {
        return None;
    }
    let cookie = signed
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("sms_console="))?
        .split(';')
        .next()?
        .to_owned();
    let page = http
        .get(app.url("/console/health"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)?
        .split('"')
        .next()?
        .to_owned();
    Some((cookie, csrf))
}

/// The console's pages and forms, by the same table: every key kind signs in (or is refused,
/// without the `read` scope), then reads each page and posts each form against its own tenant's,
/// the other tenant's and an unowned record. Tenant keys see nothing of the other tenant and no
/// service-wide figures.
#[tokio::test]
async fn the_console_answers_every_key_kind_by_the_same_table() {
    let (mut app, ids) = world().await;
    let kinds = key_kinds();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (mut cells, mut wrong) = (0usize, Vec::new());
    for (name, scopes, tenant) in &kinds {
        let caller = Caller {
            scopes,
            tenant: *tenant,
        };
        let key = ingress::auth::create_key(&app.pool, name, scopes, *tenant)
            .await
            .unwrap();
        let session = console_session(&app, &key).await;
        // Signing in is reading: a key without `read` is refused.
        let may_read = policy::has_scope(scopes, Action::Read);
        if session.is_some() != may_read {
            wrong.push(format!("{name}: signed in {}", session.is_some()));
            continue;
        }
        cells += 1;
        let Some((cookie, csrf)) = session else {
            continue;
        };
        for (t, target) in [Target::Own, Target::Other, Target::Unowned]
            .into_iter()
            .enumerate()
        {
            // (method, path, action, record?, status when allowed)
            let owner = match target {
                Target::Own => Owner::Tenant("t-a"),
                Target::Other => Owner::Tenant("t-b"),
                Target::Unowned => Owner::Unattributed,
            };
            sqlx::query(
                "INSERT INTO sms_unroutable (message_id, tenant_id, reason)
                 SELECT id, tenant_id, 'no_route' FROM sms_messages WHERE id = $1
                 ON CONFLICT (message_id) DO UPDATE SET replayed_at = NULL",
            )
            .bind(ids[t])
            .execute(&app.pool)
            .await
            .unwrap();
            let number = [A_NUM, B_NUM, U_NUM][t];
            let calls: Vec<(&str, String, Action, bool, u16)> = vec![
                (
                    "GET",
                    format!("/console/numbers?number={}", number.replace('+', "%2B")),
                    Action::Read,
                    false,
                    200,
                ),
                (
                    "GET",
                    format!("/console/messages/{}", ids[t]),
                    Action::Read,
                    true,
                    200,
                ),
                (
                    "GET",
                    "/console/quarantine".into(),
                    Action::Read,
                    false,
                    200,
                ),
                ("GET", "/console/opt-outs".into(), Action::Read, false, 200),
                ("GET", "/console/health".into(), Action::Read, false, 200),
                (
                    "GET",
                    "/console/quarantine/replay-all".into(),
                    Action::Administer,
                    false,
                    200,
                ),
                (
                    "POST",
                    format!("/console/quarantine/{}/replay", ids[t]),
                    Action::Administer,
                    true,
                    303,
                ),
            ];
            for (method, path, action, record, ok) in calls {
                // Pages without a record read the key's own tenant (a confined listing).
                let owner = if record {
                    owner
                } else {
                    caller.tenant.map_or(Owner::Global, Owner::Tenant)
                };
                let want = match policy::decide(caller, action, policy::whose(caller, owner)) {
                    Verdict::Allowed => ok,
                    v => status_of(v, ok),
                };
                let mut req = http
                    .request(method.parse().unwrap(), app.url(&path))
                    .header("cookie", &cookie);
                if method == "POST" {
                    req = req.form(&[("csrf", csrf.as_str())]);
                }
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap();
                cells += 1;
                if status != want {
                    wrong.push(format!(
                        "{method} {path} {target:?} as {name}: {status}, the table says {want}"
                    ));
                }
                if tenant.is_some() {
                    for marker in ["b-secret-text", "u-unowned-text", "t-b", "class=\"queues\""] {
                        if text.contains(marker) {
                            wrong.push(format!(
                                "{method} {path} {target:?} as {name} shows {marker:?}"
                            ));
                        }
                    }
                }
            }
        }
    }
    println!("console matrix: {cells} sign-ins, pages and forms checked against the policy table");
    assert!(
        wrong.is_empty(),
        "{} cells wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    app.stop_workers().await;
}
