//! Graceful shutdown on SIGTERM, with the real binaries: a worker finishes the jobs it is running
//! and hands back the rest with nothing left locked; the ingress stops accepting and finishes the
//! requests it has.

use std::{
    io::{Read, Write},
    process::{Command, Stdio},
    time::Duration,
};

use harness::{
    app::{ACCOUNT_SID, AUTH_TOKEN, OUR_NUMBER, Settings, TestApp, wait_until, workspace_binary},
    fleet::{sigterm, wait_exit},
    pg,
};
use serde_json::json;

const SECRET: &str = "agent-secret-0123456789";

async fn locked_jobs(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM apalis.jobs WHERE status IN ('Queued', 'Running') OR lock_by IS NOT NULL AND status = 'Pending'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_worker_finishes_running_jobs_and_hands_back_the_rest_on_sigterm() {
    let db = pg::fresh_db().await;
    sqlx::query(
        "INSERT INTO tenant_profiles (tenant_id, phone_numbers) VALUES ('t-s', '[\"+15559100001\"]')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let agent = harness::sims::agent(SECRET).await;
    let mut app = TestApp::spawn(Settings::new(&db).set("ROUTE_TIMEOUT_MS", "10000")).await;
    let admin = app.api_key(&["admin"], None).await;
    let resp = app
        .http
        .post(app.url("/routes"))
        .bearer_auth(&admin)
        .json(&json!({"default": true, "agent_url": agent.url("slow?ms=1500"), "signing_secret": SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{:?}", resp.text().await);

    // Few handlers at a time (a budget of 3 connections: 4 route jobs at once), so some route
    // jobs are running and others wait their turn.
    let worker = app.spawn_worker_process("inbound,route", &[("DATABASE_MAX_CONNECTIONS", "3")]);
    const N: usize = 8;
    for i in 0..N {
        app.inbound("+15559100001", &format!("message {i}")).await;
    }
    let busy = wait_until(Duration::from_secs(20), || async {
        agent.stats().requests >= 2
    })
    .await;
    assert!(busy.is_ok(), "the agent never saw a request");

    sigterm(&worker);
    let (code, took) = wait_exit(worker, Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "clean exit after SIGTERM");
    println!("worker stopped {took:?} after SIGTERM");
    // Whatever it had started reached the agent and was recorded; nothing stays locked to it.
    let left = locked_jobs(&app).await;
    let which: Vec<(String, String, Option<String>, i32)> = sqlx::query_as(
        "SELECT job_type, status, lock_by, attempts FROM apalis.jobs
         WHERE status IN ('Queued', 'Running') OR lock_by IS NOT NULL AND status = 'Pending'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(left, 0, "jobs left locked by the stopped worker: {which:?}");
    let started = agent.stats().requests as i64;
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sms_routing_decisions WHERE agent_status IS NOT NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        recorded, started,
        "every started agent call finished and was recorded"
    );

    // A new worker takes the handed-back jobs: every message reaches the agent exactly once.
    app.start_worker(&[shared::jobs::INBOUND, shared::jobs::ROUTE])
        .await;
    let all = wait_until(Duration::from_secs(40), || async {
        agent.stats().by_message_id.len() == N
    })
    .await;
    let stats = agent.stats();
    assert!(
        all.is_ok(),
        "only {} of {N} routed",
        stats.by_message_id.len()
    );
    assert!(
        stats.by_message_id.values().all(|n| *n == 1),
        "a message reached the agent twice: {:?}",
        stats.by_message_id
    );
    app.stop_workers().await;
}

#[tokio::test]
async fn the_ingress_drains_then_finishes_a_request_in_flight_and_stops() {
    let db = pg::fresh_db().await;
    let port = pg::free_port().expect("a free port");
    let base = format!("http://127.0.0.1:{port}");
    let settings = Settings::new(&db)
        .set("BIND_ADDR", format!("127.0.0.1:{port}"))
        .set("PUBLIC_URL", base.clone())
        .set("SHUTDOWN_DRAIN_SECS", "1");
    let mut cmd = Command::new(workspace_binary("sms-ingress"));
    cmd.arg("serve").env_clear();
    for (k, v) in &settings.0 {
        cmd.env(k, v);
    }
    let ingress = cmd
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sms-ingress");
    let http = reqwest::Client::new();
    let up = wait_until(Duration::from_secs(10), || async {
        http.get(format!("{base}/health")).send().await.is_ok()
    })
    .await;
    assert!(up.is_ok(), "ingress never answered");

    // A signed webhook whose body arrives in two parts, SIGTERM between them.
    let sms = sim::webhook::InboundSms::new("+15559100002", OUR_NUMBER, "in flight");
    let url = format!("{base}/webhook/twilio/sms");
    let (body, signature) =
        sim::webhook::signed_request(AUTH_TOKEN, &url, &sms.params(ACCOUNT_SID));
    let body = body.into_bytes();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    write!(
        stream,
        "POST /webhook/twilio/sms HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: {signature}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    let half = body.len() / 2;
    stream.write_all(&body[..half]).unwrap();
    stream.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&ingress);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Draining: not ready, so load balancers stop sending; still serving whoever has not noticed
    // yet, and closing each connection after its answer.
    let ready = http
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready while draining");
    assert_eq!(
        ready.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "answers close their connection while draining"
    );
    let readiness: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(readiness["checks"]["shutdown"], "draining", "{readiness}");
    let health = http.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "still serving while draining");

    // After SHUTDOWN_DRAIN_SECS, new connections are refused while the old request is still open.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let refused = http.get(format!("{base}/health")).send().await;
    assert!(refused.is_err(), "a new request was accepted after SIGTERM");

    stream.write_all(&body[half..]).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the request in flight was answered: {answer}"
    );
    let (code, _) = wait_exit(ingress, Duration::from_secs(15)).await;
    assert_eq!(code, Some(0));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM sms_messages WHERE twilio_sid = $1")
        .bind(&sms.message_sid)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1, "the answered webhook was committed");
}

/// The hand-back rule alone: of a stopped worker's jobs, only those fetched and never started
/// (`Queued` to it) go back to the queue, unchanged in attempts; its running jobs and other
/// workers' jobs stay as they are.
#[tokio::test]
async fn only_the_stopped_workers_unstarted_jobs_are_handed_back() {
    let db = pg::fresh_db().await;
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name)
         VALUES ('w-stopped', 'inbound', 'test'), ('w-alive', 'inbound', 'test')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // (id, status, lock_by, attempts)
    let rows = [
        ("fetched", "Queued", Some("w-stopped"), 2),
        ("running", "Running", Some("w-stopped"), 1),
        ("done", "Done", Some("w-stopped"), 1),
        ("other", "Queued", Some("w-alive"), 0),
        ("waiting", "Pending", None, 0),
    ];
    for (id, status, lock_by, attempts) in rows {
        sqlx::query(
            "INSERT INTO apalis.jobs (id, job_type, job, status, lock_by, lock_at, attempts)
             VALUES ($1, 'inbound', '\\x7b7d', $2, $3, CASE WHEN $3 IS NULL THEN NULL ELSE now() END, $4)",
        )
        .bind(id)
        .bind(status)
        .bind(lock_by)
        .bind(attempts)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let released = shared::jobs::release_unstarted(&db.pool, "w-stopped")
        .await
        .unwrap();
    assert_eq!(released, 1);
    let after: Vec<(String, String, Option<String>, i32)> =
        sqlx::query_as("SELECT id, status, lock_by, attempts FROM apalis.jobs ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let expect = |id: &str, status: &str, lock_by: Option<&str>, attempts: i32| {
        (
            id.to_owned(),
            status.to_owned(),
            lock_by.map(str::to_owned),
            attempts,
        )
    };
    assert_eq!(
        after,
        vec![
            expect("done", "Done", Some("w-stopped"), 1),
            expect("fetched", "Pending", None, 2),
            expect("other", "Queued", Some("w-alive"), 0),
            expect("running", "Running", Some("w-stopped"), 1),
            expect("waiting", "Pending", None, 0),
        ]
    );
}
