//! Fault tests with real processes and real outages: a worker process killed with SIGKILL in the
//! middle of a run, Postgres stopped and started under load, the Collections Monitor down and
//! then slow, Twilio answering 429 and 5xx. Nothing here is mocked: the worker is the
//! `sms-worker` binary, Postgres a real server (a cluster of the test's own where it is
//! restarted), the Monitor and Twilio `sms-sim` over HTTP. Each test prints what it measured
//! (`-- --nocapture`); docs/testing.md's "Fault tests" reports the figures.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use harness::{
    app::{ACCOUNT_SID, OUR_NUMBER, Settings, TestApp, wait_until},
    pg, sims,
    sims::twilio,
    traffic::{Answer, Client, assert_sent_once, route_jobs},
};
use serde_json::json;
use sim::{monitor, webhook::InboundSms};
use uuid::Uuid;

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

// ---- 1. a worker killed with SIGKILL mid-run ----

const KILL_INBOUND: usize = 5_000;
const KILL_SENDS: usize = 2_000;
/// Inbound senders: 10 messages each.
const KILL_SENDERS: usize = 500;
const KILL_LOAD_TICKS: usize = 50;

/// Posts `KILL_INBOUND` webhooks and `KILL_SENDS` sends in 50 slices, one slice every 100 ms at
/// most (32 requests in flight), so that the load lasts about 5 s and a kill lands mid-run
/// however fast the machine is.
async fn paced_load(client: Client) -> (Vec<Answer>, Vec<Answer>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let (mut hooks, mut sends) = (Vec::new(), Vec::new());
    let (per_tick_in, per_tick_out) =
        (KILL_INBOUND / KILL_LOAD_TICKS, KILL_SENDS / KILL_LOAD_TICKS);
    for t in 0..KILL_LOAD_TICKS {
        tick.tick().await;
        let inbound = (t * per_tick_in..(t + 1) * per_tick_in).map(|i| {
            let c = client.clone();
            async move {
                let from = format!("+1415770{:04}", i % KILL_SENDERS);
                (true, c.webhook(&from, &format!("payment {i}")).await)
            }
        });
        let outbound = (t * per_tick_out..(t + 1) * per_tick_out).map(|i| {
            let c = client.clone();
            async move {
                let to = format!("+1415780{i:04}");
                (false, c.send(&to, &format!("notice {i}")).await)
            }
        });
        let answers: Vec<(bool, Answer)> = futures::stream::iter(
            inbound
                .map(futures::future::Either::Left)
                .chain(outbound.map(futures::future::Either::Right)),
        )
        .buffer_unordered(32)
        .collect()
        .await;
        for (is_webhook, a) in answers {
            if is_webhook {
                hooks.push(a)
            } else {
                sends.push(a)
            }
        }
    }
    (hooks, sends)
}

#[tokio::test]
async fn a_worker_killed_mid_run_loses_nothing_repeats_nothing_and_its_jobs_are_picked_up() {
    let tw = twilio().await;
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(
        Settings::new(&db)
            .set("TWILIO_API_BASE", tw.base_url())
            .set("SEND_RATE_PER_SENDER", "0")
            // The production defaults: a worker silent for 2 s x 3 is dead.
            .set("WORKER_HEARTBEAT_SECS", "2")
            .set("WORKER_MISSED_HEARTBEATS", "3")
            // A send killed between recording its attempt and Twilio's answer waits this long
            // for proof that Twilio has it before trying again (60 s in production).
            .set("UNKNOWN_OUTCOME_GRACE_SECS", "5"),
    )
    .await;
    let key = app.api_key(&["send"], None).await;
    let client = Client::of(&app, &key);
    let queues = "inbound,outbound-send,outbound-status";
    let worker_env = [("DATABASE_MAX_CONNECTIONS", "20")];

    let mut first = app.spawn_worker_process(queues, &worker_env);
    let load = tokio::spawn(paced_load(client));
    // Killed mid-run: a quarter of the sends made and jobs in its hands at that moment (under a
    // busy machine a paced load can leave the worker idle for an instant). A job seen in flight
    // can still finish in the instant before the signal lands: then the worker is restarted, as
    // a supervisor would, and killed again (each a kill mid-run; the load goes on throughout).
    let mut kills = 0;
    let (killed_at, dead_workers, orphans) = loop {
        wait_until(Duration::from_secs(60), || async {
            tw.stats().creates >= (KILL_SENDS / 4) as u64
                && app
                    .count("SELECT count(*) FROM apalis.jobs WHERE status IN ('Queued', 'Running')")
                    .await
                    > 0
        })
        .await
        .expect("the worker started sending");
        first.kill().unwrap(); // SIGKILL
        let killed_at = Instant::now();
        first.wait().unwrap();
        kills += 1;
        // Everything locked now was locked by a dead worker (no other worker runs).
        let dead_workers: Vec<String> = sqlx::query_scalar("SELECT id FROM apalis.workers")
            .fetch_all(&app.pool)
            .await
            .unwrap();
        let orphans: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM apalis.jobs WHERE status IN ('Queued', 'Running') AND lock_by = ANY($1)",
        )
        .bind(&dead_workers)
        .fetch_all(&app.pool)
        .await
        .unwrap();
        if !orphans.is_empty() || kills == 5 {
            break (killed_at, dead_workers, orphans);
        }
        first = app.spawn_worker_process(queues, &worker_env);
    };
    let sent_at_kill = tw.stats().creates;
    let processed_at_kill =
        app.count("SELECT count(*) FROM sms_messages WHERE direction = 'inbound' AND processed_at IS NOT NULL").await;
    assert!(
        (sent_at_kill as usize) < KILL_SENDS && (processed_at_kill as usize) < KILL_INBOUND,
        "killed mid-run ({sent_at_kill} sent, {processed_at_kill} processed)"
    );
    assert!(
        !orphans.is_empty(),
        "the killed worker held jobs at its death ({kills} kills)"
    );

    // Restarted at once, as a supervisor (systemd, Kubernetes) would.
    let mut second = app.spawn_worker_process(queues, &worker_env);
    let mut requeued_after = None;
    let mut picked_up_after = None;
    let deadline = killed_at + Duration::from_secs(60);
    while Instant::now() < deadline && picked_up_after.is_none() {
        let (still_dead, unfinished): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE lock_by = ANY($2) AND status IN ('Queued', 'Running')),
                    count(*) FILTER (WHERE status <> 'Done')
             FROM apalis.jobs WHERE id = ANY($1)",
        )
        .bind(&orphans)
        .bind(&dead_workers)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if still_dead == 0 && requeued_after.is_none() {
            requeued_after = Some(killed_at.elapsed());
        }
        if unfinished == 0 {
            picked_up_after = Some(killed_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (hooks, sends) = load.await.unwrap();
    assert_eq!(hooks.len(), KILL_INBOUND);
    assert!(
        hooks.iter().all(|a| a.status == 200),
        "every webhook stored"
    );
    assert!(sends.iter().all(|a| a.status == 202), "every send accepted");
    let ids: Vec<String> = sends.iter().map(|a| a.id.clone()).collect();
    let drained = wait_until(Duration::from_secs(120), || async {
        app.count("SELECT count(*) FROM sms_messages WHERE direction = 'inbound' AND processed_at IS NOT NULL").await
            == KILL_INBOUND as i64
            && app.count("SELECT count(*) FROM sms_messages WHERE direction = 'outbound' AND delivery_status = 'delivered'").await
                == KILL_SENDS as i64
    })
    .await;
    let drained_after = killed_at.elapsed();
    second.kill().unwrap();
    second.wait().unwrap();

    println!(
        "kill test: SIGKILL after {sent_at_kill} of {KILL_SENDS} sends and {processed_at_kill} of \
         {KILL_INBOUND} inbound messages; the dead worker held {} jobs; re-queued {} and all of \
         them done {} after the kill (restarted worker; heartbeat 2 s x 3); everything drained \
         {} after the kill",
        orphans.len(),
        requeued_after.map_or("never".into(), secs),
        picked_up_after.map_or("never".into(), secs),
        secs(drained_after),
    );
    let picked_up = picked_up_after.expect("the dead worker's jobs were picked up again");
    assert!(
        picked_up <= Duration::from_secs(30),
        "picked up after {picked_up:?}"
    );
    // What a stuck send looks like, to diagnose it: its state, its attempts, its callbacks and
    // its jobs.
    let stuck: Vec<(String,)> = if drained.is_ok() {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT concat_ws(' | ', m.id, m.delivery_status, m.twilio_sid, m.send_attempts, m.reconcile_note,
                    (SELECT string_agg(concat_ws('/', a.attempt, a.outcome, a.evidence, a.http_status), '; ' ORDER BY a.attempt)
                     FROM sms_send_attempts a WHERE a.message_id = m.id),
                    (SELECT string_agg(concat_ws('/', c.message_status, c.applied_at IS NOT NULL), '; ' ORDER BY c.id)
                     FROM sms_status_callbacks c WHERE c.message_sid = m.twilio_sid),
                    (SELECT string_agg(concat_ws('/', j.job_type, j.status, j.attempts, j.last_result::text), '; ')
                     FROM apalis.jobs j WHERE convert_from(j.job, 'UTF8') LIKE '%' || m.id::text || '%'))
             FROM sms_messages m WHERE m.direction = 'outbound' AND m.delivery_status <> 'delivered' LIMIT 5",
        )
        .fetch_all(&app.pool)
        .await
        .unwrap_or_default()
    };
    assert!(
        drained.is_ok(),
        "not drained: {} inbound processed, {} sends delivered; not delivered: {stuck:?}",
        app.count("SELECT count(*) FROM sms_messages WHERE direction = 'inbound' AND processed_at IS NOT NULL").await,
        app.count("SELECT count(*) FROM sms_messages WHERE direction = 'outbound' AND delivery_status = 'delivered'").await
    );

    // Inbound: each message stored once, linked once, its follow-up (route job) pushed once.
    assert_eq!(
        app.count("SELECT count(*) FROM sms_messages WHERE direction = 'inbound' AND conversation_id IS NOT NULL").await,
        KILL_INBOUND as i64
    );
    assert_eq!(
        app.count("SELECT count(*) FROM sms_conversations WHERE phone_number LIKE '+1415770%'")
            .await,
        KILL_SENDERS as i64,
        "one conversation per sender"
    );
    assert_eq!(
        route_jobs(&app).await,
        (KILL_INBOUND as i64, KILL_INBOUND as i64)
    );
    // Outbound: each message reached Twilio exactly once, and one attempt of each is recorded
    // as having got there: answered (`accepted`), or killed mid-call and proven by its callback
    // (`resolved`).
    assert_sent_once(&app, &tw, &ids).await;
    let (landed, messages): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT message_id) FROM sms_send_attempts
         WHERE outcome IN ('accepted', 'resolved')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((landed, messages), (KILL_SENDS as i64, KILL_SENDS as i64));
}

// ---- 2. Postgres restarted under load ----

/// Posts webhooks (24 clients) and sends (4 clients), each client one request at a time with a
/// 50 ms pause, until `stop`. Many clients, so that many requests start and end within an outage
/// even though each waits for the database for seconds.
fn steady_load(client: Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Answer>> {
    tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        const HOOK_CLIENTS: usize = 24;
        for worker in 0..HOOK_CLIENTS + 4 {
            let (client, stop) = (client.clone(), stop.clone());
            tasks.spawn(async move {
                let mut answers = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let hook = worker < HOOK_CLIENTS;
                    let answer = if hook {
                        let from = format!("+1415771{:02}{:02}", worker, i % 100);
                        client.webhook(&from, &format!("hello {i}")).await
                    } else {
                        let to = format!("+1415781{:02}{:02}", worker, i % 100);
                        client.send(&to, &format!("notice {i}")).await
                    };
                    answers.push((hook, answer));
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                answers
            });
        }
        let mut all = Vec::new();
        while let Some(done) = tasks.join_next().await {
            all.extend(done.unwrap().into_iter().map(|(hook, mut a)| {
                // Webhook ids are MessageSids (SM...), send ids UUIDs: keep them apart.
                if !hook {
                    a.id = format!("send:{}", a.id);
                }
                a
            }));
        }
        all
    })
}

#[tokio::test]
async fn postgres_restarted_under_load_answers_503_meanwhile_and_everything_resumes() {
    // Its own cluster: stopping the shared one would break every other test.
    let cluster = tokio::task::spawn_blocking(pg::OwnCluster::start_new)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let db = cluster.create_db("faults", 5).await;
    let tw = twilio().await;
    let app = TestApp::spawn(
        Settings::new(&db)
            .set("TWILIO_API_BASE", tw.base_url())
            .set("SEND_RATE_PER_SENDER", "0")
            .set("WORKER_HEARTBEAT_SECS", "2")
            .set("WORKER_MISSED_HEARTBEATS", "3")
            .set("RECONCILE_INTERVAL_SECS", "2")
            .set("RECONCILE_STUCK_AFTER_SECS", "5"),
    )
    .await;
    let key = app.api_key(&["send"], None).await;
    let client = Client::of(&app, &key);
    // The reconciler fetches what status callbacks lost to the outage would have told.
    let mut worker =
        app.spawn_worker_process("inbound,outbound-send,outbound-status,reconciler", &[]);

    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(client, stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;

    let cluster = Arc::new(cluster);
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop())
        .await
        .unwrap()
        .expect("pg_ctl stop");
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let starting_at = Instant::now();
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start())
        .await
        .unwrap()
        .expect("pg_ctl start");
    let up_at = Instant::now();
    let up_utc = Utc::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    stop.store(true, Ordering::Relaxed);
    let answers = load.await.unwrap();
    let load_ended = Instant::now();
    let (hooks, sends): (Vec<&Answer>, Vec<&Answer>) =
        answers.iter().partition(|a| !a.id.starts_with("send:"));

    // While the server was down (request and answer both inside the outage): 503, never 200.
    let during: Vec<&&Answer> = hooks
        .iter()
        .filter(|a| a.started >= down_at && a.finished <= starting_at)
        .collect();
    if during.is_empty() {
        let around: Vec<(f64, f64, u16)> = hooks
            .iter()
            .filter(|a| a.finished >= down_at)
            .take(40)
            .map(|a| {
                (
                    a.started.saturating_duration_since(down_at).as_secs_f64(),
                    (a.finished - a.started).as_secs_f64(),
                    a.status,
                )
            })
            .collect();
        panic!(
            "no webhook posted and answered during the outage; (start after stop, took, status): {around:?}"
        );
    }
    let not_503: Vec<u16> = during
        .iter()
        .filter(|a| a.status != 503 || !a.retry_after)
        .map(|a| a.status)
        .collect();
    assert!(
        not_503.is_empty(),
        "answers other than 503 with Retry-After while Postgres was down: {not_503:?}"
    );
    assert!(
        sends
            .iter()
            .filter(|a| a.started >= down_at && a.finished <= starting_at)
            .all(|a| a.status == 503),
        "sends answered 503 while Postgres was down"
    );
    let wait_503: Vec<Duration> = during.iter().map(|a| a.finished - a.started).collect();
    // The ingress recovered by itself.
    let first_ok = hooks
        .iter()
        .filter(|a| a.status == 200 && a.started >= up_at)
        .map(|a| a.finished - up_at)
        .min()
        .expect("webhooks answered 200 again after the restart");

    // Every 200 was committed; every 202 is a stored message.
    let stored: Vec<String> = hooks
        .iter()
        .filter(|a| a.status == 200)
        .map(|a| a.id.clone())
        .collect();
    let ids: Vec<String> = sends
        .iter()
        .filter(|a| a.status == 202)
        .map(|a| a.id.trim_start_matches("send:").to_owned())
        .collect();
    let uuids: Vec<Uuid> = ids.iter().map(|i| i.parse().unwrap()).collect();
    let in_db: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sms_messages WHERE twilio_sid = ANY($1)")
            .bind(&stored)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        in_db as usize,
        stored.len(),
        "every webhook answered 200 is stored"
    );
    let sends_in_db: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sms_messages WHERE id = ANY($1)")
            .bind(&uuids)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        sends_in_db as usize,
        ids.len(),
        "every send answered 202 is stored"
    );

    // The worker process lived through it and resumed by itself.
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker is still running"
    );
    let resumed: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT min(processed_at) FROM sms_messages WHERE direction = 'inbound' AND processed_at >= $1",
    )
    .bind(up_utc)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let resumed = (resumed.expect("inbound processing resumed") - up_utc)
        .to_std()
        .unwrap();
    let sends_resumed: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT min(started_at) FROM sms_send_attempts WHERE started_at >= $1")
            .bind(up_utc)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let sends_resumed = (sends_resumed.expect("sending resumed") - up_utc)
        .to_std()
        .unwrap();
    // Nothing lost: everything accepted gets processed and sent exactly once.
    let drained = wait_until(Duration::from_secs(60), || async {
        let processed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sms_messages WHERE twilio_sid = ANY($1) AND processed_at IS NOT NULL",
        )
        .bind(&stored)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        let delivered: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sms_messages WHERE id = ANY($1) AND delivery_status = 'delivered'",
        )
        .bind(&uuids)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        processed as usize == stored.len() && delivered as usize == ids.len()
    })
    .await;
    let drained_after = load_ended.elapsed();
    worker.kill().unwrap();
    worker.wait().unwrap();
    println!(
        "postgres restart: down {} (pg_ctl stop -m fast .. start); {} webhooks during the outage \
         all 503 with Retry-After, answered after {} to {}; ingress answered 200 again {} after \
         the server was back; the \
         worker process resumed inbound processing {} and sending {} after it; {} webhooks and \
         {} sends accepted in all, everything processed and delivered {} after the load ended (10 s after the restart)",
        secs(starting_at - down_at),
        during.len(),
        secs(wait_503.iter().min().copied().unwrap_or_default()),
        secs(wait_503.iter().max().copied().unwrap_or_default()),
        secs(first_ok),
        secs(resumed),
        secs(sends_resumed),
        stored.len(),
        ids.len(),
        secs(drained_after),
    );
    assert!(
        resumed <= Duration::from_secs(10),
        "inbound resumed after {resumed:?}"
    );
    assert!(
        sends_resumed <= Duration::from_secs(10),
        "sending resumed after {sends_resumed:?}"
    );
    assert!(
        drained.is_ok(),
        "something accepted was never processed or sent: {}",
        leftovers(&app).await
    );
    assert_sent_once(&app, &tw, &ids).await;
}

/// What is left undone, for failure messages: messages by direction and status, jobs by queue
/// and status.
async fn leftovers(app: &TestApp) -> String {
    let messages: Vec<(String, String, bool, i64)> = sqlx::query_as(
        "SELECT direction, delivery_status, processed_at IS NOT NULL, count(*) FROM sms_messages
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap_or_default();
    let jobs: Vec<(String, String, Option<String>, i64)> = sqlx::query_as(
        "SELECT job_type, status, lock_by, count(*) FROM apalis.jobs
         WHERE status <> 'Done' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap_or_default();
    format!(
        "messages (direction, status, processed, count) {messages:?}; \
         unfinished jobs (queue, status, locked by, count) {jobs:?}"
    )
}

// ---- 3. the Collections Monitor down, then slow ----

const KNOWN: usize = 20;
const UNKNOWN: usize = 5;

fn known_number(i: usize) -> String {
    format!("+1415790{i:04}")
}

fn unknown_number(i: usize) -> String {
    format!("+1415791{i:04}")
}

/// Posts one message from every known and unknown number and waits until all are processed.
async fn round(app: &TestApp, n: usize) {
    for i in 0..KNOWN {
        app.inbound(&known_number(i), &format!("round {n}")).await;
    }
    for i in 0..UNKNOWN {
        app.inbound(&unknown_number(i), &format!("round {n}")).await;
    }
    let want = ((KNOWN + UNKNOWN) * n) as i64;
    let ok = wait_until(Duration::from_secs(60), || async {
        app.count("SELECT count(*) FROM sms_messages WHERE direction = 'inbound' AND processed_at IS NOT NULL AND conversation_id IS NOT NULL").await == want
    })
    .await;
    assert!(ok.is_ok(), "round {n} processed while the Monitor is out");
}

async fn conversations(app: &TestApp) -> HashMap<String, (Uuid, Option<String>)> {
    let rows: Vec<(String, Uuid, Option<String>)> =
        sqlx::query_as("SELECT phone_number, id, tenant_id FROM sms_conversations")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    rows.into_iter().map(|(p, id, t)| (p, (id, t))).collect()
}

/// `FAULT_MONITOR_OUTAGE_SECS` (default 20) seconds of outage: half answering 503, half slower
/// than `MONITOR_TIMEOUT_MS`. Run the long version with e.g. `FAULT_MONITOR_OUTAGE_SECS=300`.
#[tokio::test]
async fn a_monitor_outage_stores_messages_as_unknown_then_attaches_their_tenants() {
    let outage = std::env::var("FAULT_MONITOR_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(20);
    let monitor = sims::monitor((0..KNOWN).map(|i| monitor::Tenant {
        tenant_id: format!("t-f{i}"),
        name: None,
        phone_numbers: vec![known_number(i)],
        language_preference: None,
    }))
    .await;
    monitor.set_faults(monitor::Faults {
        down: true,
        ..Default::default()
    });
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(
        Settings::new(&db)
            .set("MONITOR_API_URL", monitor.base_url())
            .set("MONITOR_TIMEOUT_MS", "500")
            .set("RECONCILE_INTERVAL_SECS", "2"),
    )
    .await;
    let mut worker = app.spawn_worker_process("inbound,reconciler", &[]);

    // Down (503): messages are stored and processed as from unknown numbers.
    let started = Instant::now();
    round(&app, 1).await;
    let during_down = conversations(&app).await;
    assert_eq!(during_down.len(), KNOWN + UNKNOWN);
    assert!(during_down.values().all(|(_, t)| t.is_none()));
    tokio::time::sleep(Duration::from_secs(outage / 2).saturating_sub(started.elapsed())).await;

    // Slow: every answer comes after the client's timeout.
    monitor.set_faults(monitor::Faults {
        latency_ms: 1_500,
        ..Default::default()
    });
    let slow_from = Instant::now();
    round(&app, 2).await;
    let during_slow = conversations(&app).await;
    assert_eq!(
        during_slow, during_down,
        "same conversations, still without tenant"
    );
    tokio::time::sleep(
        Duration::from_secs(outage - outage / 2).saturating_sub(slow_from.elapsed()),
    )
    .await;
    let lookups_during_outage = monitor.stats().lookups;

    // Back: the reconciler attaches each known number's tenant to its existing conversation.
    monitor.set_faults(monitor::Faults::default());
    let back_at = Instant::now();
    let attached = wait_until(Duration::from_secs(60), || async {
        app.count("SELECT count(*) FROM sms_conversations WHERE tenant_id IS NOT NULL")
            .await
            == KNOWN as i64
    })
    .await;
    let attached_after = back_at.elapsed();
    assert!(
        worker.try_wait().unwrap().is_none(),
        "the worker is still running"
    );
    worker.kill().unwrap();
    worker.wait().unwrap();
    println!(
        "monitor outage: {} ({} answering 503, then answers after 1.5 s against a 500 ms timeout); \
         {} messages stored and processed as unknown meanwhile ({lookups_during_outage} lookups \
         failed); tenants attached to all {KNOWN} conversations {} after the Monitor returned \
         (RECONCILE_INTERVAL_SECS=2)",
        secs(back_at - started),
        secs(slow_from - started),
        2 * (KNOWN + UNKNOWN),
        secs(attached_after),
    );
    assert!(
        attached.is_ok(),
        "tenants attached once the Monitor is back"
    );
    let after = conversations(&app).await;
    assert_eq!(after.len(), KNOWN + UNKNOWN, "no duplicate conversation");
    for i in 0..KNOWN {
        let (id, tenant) = &after[&known_number(i)];
        assert_eq!(
            *id,
            during_down[&known_number(i)].0,
            "the same conversation"
        );
        assert_eq!(tenant.as_deref(), Some(format!("t-f{i}").as_str()));
    }
    for i in 0..UNKNOWN {
        assert_eq!(
            after[&unknown_number(i)].1,
            None,
            "unknown numbers stay unknown"
        );
    }
    // Both rounds' messages stay linked to those conversations.
    assert_eq!(
        app.count("SELECT count(*) FROM sms_messages m JOIN sms_conversations c ON c.id = m.conversation_id WHERE m.direction = 'inbound'").await,
        (2 * (KNOWN + UNKNOWN)) as i64
    );
    assert!(lookups_during_outage > 0, "the worker did ask the Monitor");
}

// ---- 4. Twilio answering 429 and 5xx ----

/// The default retry policy outlasts a one-minute outage: the shortest possible wait over all
/// retries (each backoff's jitter at its lowest, half the exponential step) is above 60 s.
#[test]
fn default_send_retries_outlast_a_one_minute_outage() {
    let env: HashMap<String, String> = [
        ("DATABASE_URL", "postgres://localhost/x"),
        ("TWILIO_AUTH_TOKEN", "t"),
        ("TWILIO_ACCOUNT_SID", ACCOUNT_SID),
        ("TWILIO_PHONE_NUMBER", OUR_NUMBER),
        ("PUBLIC_URL", "https://sms.example.com"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let cfg = shared::config::Worker::load(&env).unwrap();
    let out = cfg.outbound.expect("sending configured");
    let shortest: Duration = (1..out.max_attempts)
        .map(|failed| {
            out.backoff_base
                .saturating_mul(1u32 << (failed - 1).min(16))
                .min(out.backoff_max)
                / 2
        })
        .sum();
    assert!(
        shortest > Duration::from_secs(60),
        "with SEND_MAX_ATTEMPTS={} a send gives up after {shortest:?} of outage",
        out.max_attempts
    );
}

/// By default a scaled run: backoff base 100 ms and cap 30 s (a tenth of the defaults) against a
/// 6 s outage behave as the defaults do against 60 s. `FAULT_TWILIO_OUTAGE_SECS=60` runs the
/// real thing: that outage, the default backoff.
#[tokio::test]
async fn a_twilio_outage_of_429s_and_5xx_delays_sends_without_dropping_or_doubling_them() {
    const SENDS: usize = 200;
    let real = std::env::var("FAULT_TWILIO_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok());
    let tw = twilio().await;
    tw.set_faults(sim::twilio::Faults {
        outage: true,
        retry_after_secs: Some(1),
        fail_status: 500,
        ..Default::default()
    });
    let db = pg::fresh_db().await;
    let mut settings = Settings::new(&db)
        .set("TWILIO_API_BASE", tw.base_url())
        .set("SEND_RATE_PER_SENDER", "0");
    let outage = match real {
        Some(s) => Duration::from_secs(s),
        None => {
            settings = settings
                .set("SEND_BACKOFF_BASE_MS", "100")
                .set("SEND_BACKOFF_MAX_SECS", "30");
            Duration::from_secs(6)
        }
    };
    let connections: u32 = settings.0["DATABASE_MAX_CONNECTIONS"].parse().unwrap();
    let app = TestApp::spawn(settings).await;
    let key = app.api_key(&["send"], None).await;
    let client = Client::of(&app, &key);
    let mut worker = app.spawn_worker_process("outbound-send,outbound-status", &[]);
    let started = Instant::now();
    let answers: Vec<Answer> = futures::stream::iter(0..SENDS)
        .map(|i| {
            let c = client.clone();
            async move {
                c.send(&format!("+1415782{i:04}"), &format!("notice {i}"))
                    .await
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(answers.iter().all(|a| a.status == 202));
    let ids: Vec<String> = answers.iter().map(|a| a.id.clone()).collect();
    tokio::time::sleep(outage.saturating_sub(started.elapsed())).await;
    let refused = tw.stats().create_attempts;
    assert_eq!(tw.stats().creates, 0, "nothing got through the outage");
    tw.set_faults(sim::twilio::Faults::default());
    let back_at = Instant::now();
    let delivered = wait_until(Duration::from_secs(300), || async {
        app.count("SELECT count(*) FROM sms_messages WHERE direction = 'outbound' AND delivery_status = 'delivered'").await
            == SENDS as i64
    })
    .await;
    let delivered_after = back_at.elapsed();
    worker.kill().unwrap();
    worker.wait().unwrap();
    let (max_attempts, r429, r5xx): (i32, i64, i64) = sqlx::query_as(
        "SELECT max(attempt), count(*) FILTER (WHERE http_status = 429),
                count(*) FILTER (WHERE http_status >= 500)
         FROM sms_send_attempts",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    println!(
        "twilio outage: {} of alternating 429 (Retry-After: 1) and 500{}; {SENDS} sends made \
         {refused} refused attempts ({r429} answered 429, {r5xx} 5xx), at most {max_attempts} \
         attempts for one message; all delivered {} after Twilio came back, each sent once",
        secs(outage),
        if real.is_some() {
            ", default backoff"
        } else {
            " (scaled: backoff base 100 ms, cap 30 s)"
        },
        secs(delivered_after),
    );
    assert!(delivered.is_ok(), "every send delivered after the outage");
    assert!(r429 > 0 && r5xx > 0, "the outage answered both");
    // The gate (worker/src/gate.rs): after the first refusals, one send at a time probes
    // Twilio, so the refused attempts are the sends already under way when it closed plus one
    // probe per hold (0.5 s at least, here Retry-After: 1 s), not every send retrying on its own
    // (about six attempts each over this outage without the gate).
    let in_flight =
        worker::budget::Budget::plan(connections, &["outbound-send", "outbound-status"])
            .of("outbound-send")
            .map_or(0, |b| b.jobs);
    let probes = (outage.as_millis() / 500) as usize;
    assert!(
        (refused as usize) <= in_flight + probes,
        "{refused} refused attempts: at most {in_flight} under way and {probes} probes"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM sms_messages WHERE delivery_status = 'failed'")
            .await,
        0,
        "none dropped"
    );
    assert_sent_once(&app, &tw, &ids).await;
}

/// The real ingress and worker binaries all down while Twilio receives inbound SMS: Twilio tries
/// each webhook within its connection overrides, gives up, and keeps the message in its log.
/// When the service returns, the worker's backfill stores every one of them exactly once and they
/// are processed; none of the webhooks that got through before the outage is stored twice. By
/// default a short outage; `FAULT_INBOUND_OUTAGE_SECS=120` runs the two-minute one.
#[tokio::test]
async fn inbound_sms_sent_during_a_whole_service_outage_are_stored_once_when_it_returns() {
    const BEFORE: usize = 100;
    const DURING: usize = 500;
    let outage = std::env::var("FAULT_INBOUND_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(3);
    let tw = twilio().await;
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(
        Settings::new(&db)
            .set("TWILIO_API_BASE", tw.base_url())
            .set("INBOUND_BACKFILL_INTERVAL_SECS", "1")
            .set("RECONCILE_INTERVAL_SECS", "1"),
    )
    .await;
    // The ingress binary on a port of its own, its public URL the one Twilio calls.
    let port = pg::free_port().expect("a free port");
    let public = format!("http://127.0.0.1:{port}");
    let ingress = || {
        let mut cmd = std::process::Command::new(harness::app::workspace_binary("sms-ingress"));
        cmd.arg("serve").env_clear();
        for (k, v) in &app.settings.0 {
            cmd.env(k, v);
        }
        cmd.env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("PUBLIC_URL", &public)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start sms-ingress")
    };
    let up = || async {
        wait_until(Duration::from_secs(20), || async {
            reqwest::get(format!("{public}/health")).await.is_ok()
        })
        .await
        .expect("the ingress answers");
    };
    let webhook = format!("{public}/webhook/twilio/sms#ct=200&rc=1");
    let sms = |i: usize| {
        InboundSms::new(
            format!("+1415770{i:04}"),
            OUR_NUMBER,
            format!("message {i}"),
        )
    };

    let (mut ingress_process, mut worker) = (
        ingress(),
        app.spawn_worker_process("inbound,reconciler", &[]),
    );
    up().await;
    for i in 0..BEFORE {
        assert!(
            tw.deliver_inbound(&webhook, &sms(i)).await.delivered,
            "before the outage"
        );
    }
    // Everything down: Twilio gives up on every webhook.
    for p in [&mut ingress_process, &mut worker] {
        p.kill().unwrap();
        p.wait().unwrap();
    }
    for i in BEFORE..BEFORE + DURING {
        let d = tw.deliver_inbound(&webhook, &sms(i)).await;
        assert!(
            !d.delivered && d.attempts == 2,
            "Twilio tried, retried once, gave up"
        );
    }
    tokio::time::sleep(Duration::from_secs(outage)).await;
    let returned = Instant::now();
    let (mut ingress_process, mut worker) = (
        ingress(),
        app.spawn_worker_process("inbound,reconciler", &[]),
    );
    up().await;
    let all = (BEFORE + DURING) as i64;
    let done = wait_until(Duration::from_secs(60), || async {
        app.count("SELECT count(*) FROM sms_messages WHERE direction = 'inbound' AND processed_at IS NOT NULL").await == all
    })
    .await;
    let recovered_after = returned.elapsed();
    for p in [&mut ingress_process, &mut worker] {
        p.kill().unwrap();
        p.wait().unwrap();
    }
    println!(
        "inbound outage test: {BEFORE} webhooks delivered, then {DURING} given up on during a {outage} s outage; \
         all stored and processed {:.1} s after the service returned",
        recovered_after.as_secs_f64()
    );
    assert!(
        done.is_ok(),
        "not all processed: {}",
        app.count("SELECT count(*) FROM sms_messages WHERE direction = 'inbound'")
            .await
    );
    assert_eq!(
        app.count("SELECT count(*) FROM sms_messages WHERE direction = 'inbound'")
            .await,
        all,
        "each once"
    );
    // Every one Twilio gave up on came through the backfill (a backfill pass may also have
    // stored one of the earlier messages before its own webhook committed: still once).
    let backfilled = app
        .count("SELECT count(*) FROM sms_messages WHERE raw_webhook_data->>'Backfilled' = 'true'")
        .await;
    assert!(backfilled >= DURING as i64, "{backfilled} backfilled");
}

/// The real worker binary's reconciler, with 200 stuck messages Twilio answers 404 for and 20
/// whose fetch keeps failing with 500, all older than a normal stuck message: the 404s are
/// settled, the failures noted, and the normal message is brought up to date within two passes.
#[tokio::test]
async fn messages_twilio_cannot_answer_for_never_starve_the_reconciler() {
    let tw = twilio().await;
    let failing: std::collections::BTreeSet<String> =
        (0..20).map(|i| format!("SMfa{i:030}")).collect();
    tw.set_faults(sim::twilio::Faults {
        no_callbacks: true,
        fetch_fails: failing.clone(),
        ..Default::default()
    });
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(
        Settings::new(&db)
            .set("TWILIO_API_BASE", tw.base_url())
            .set("SEND_RATE_PER_SENDER", "0")
            .set("RECONCILE_STUCK_AFTER_SECS", "0")
            .set("RECONCILE_INTERVAL_SECS", "1"),
    )
    .await;
    sqlx::query(
        "INSERT INTO sms_messages (direction, message_content, delivery_status, to_number, twilio_sid, status_updated_at)
         SELECT 'outbound', 'gone', 'sent', '+14155550800', 'SMnf' || lpad(g::text, 30, '0'), now() - interval '1 day'
         FROM generate_series(1, 200) g",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    for sid in &failing {
        sqlx::query(
            "INSERT INTO sms_messages (direction, message_content, delivery_status, to_number, twilio_sid, status_updated_at)
             VALUES ('outbound', 'flaky', 'sent', '+14155550801', $1, now() - interval '2 days')",
        )
        .bind(sid)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let key = app.api_key(&["send"], None).await;
    let r = app
        .http
        .post(app.url("/sms/send"))
        .bearer_auth(&key)
        .json(&json!({"to": "+14155550802", "body": "your receipt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let mut worker = app.spawn_worker_process("outbound-send,outbound-status,reconciler", &[]);
    let normal = || {
        let pool = app.pool.clone();
        async move {
            sqlx::query_as::<_, (String, Option<String>)>(
                "SELECT delivery_status, twilio_sid FROM sms_messages WHERE to_number = '+14155550802'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    wait_until(Duration::from_secs(20), || async {
        normal().await.1.is_some()
    })
    .await
    .expect("handed to Twilio");
    let sid = normal().await.1.unwrap();
    wait_until(Duration::from_secs(10), || async {
        tw.message(&sid)
            .is_some_and(|m| m.status.as_str() == "delivered")
    })
    .await
    .unwrap();
    let at_twilio = Instant::now();
    let caught_up = wait_until(Duration::from_secs(20), || async {
        normal().await.0 == "delivered"
    })
    .await;
    let after = at_twilio.elapsed();
    worker.kill().unwrap();
    worker.wait().unwrap();
    println!(
        "reconciler starvation test: the normal message caught up {:.1} s after Twilio delivered it (passes every 1 s)",
        after.as_secs_f64()
    );
    assert!(caught_up.is_ok(), "the normal stuck message was reconciled");
    assert!(
        after < Duration::from_secs(5),
        "within a few passes: {after:?}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM sms_messages WHERE reconcile_stopped = 'not_found'")
            .await,
        200
    );
    assert_eq!(
        app.count("SELECT count(*) FROM sms_messages WHERE reconcile_note LIKE 'fetch failed%' AND reconcile_stopped IS NULL").await,
        20
    );
}

/// The real worker binary against a Twilio that creates every message but whose answers never
/// arrive in time and which posts no callbacks: after the grace period each of 200 sends is found
/// in Twilio's message list and adopted; Twilio holds exactly 200 messages.
#[tokio::test]
async fn two_hundred_lost_answers_are_adopted_from_the_list_and_none_is_sent_twice() {
    let tw = twilio().await;
    tw.set_faults(sim::twilio::Faults {
        timeout_next: 1000,
        timeout_creates: true,
        no_callbacks: true,
        ..Default::default()
    });
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(
        Settings::new(&db)
            .set("TWILIO_API_BASE", tw.base_url())
            .set("SEND_RATE_PER_SENDER", "0")
            .set("TWILIO_TIMEOUT_MS", "300")
            .set("UNKNOWN_OUTCOME_GRACE_SECS", "2"),
    )
    .await;
    let key = app.api_key(&["send"], None).await;
    for i in 0..200 {
        let r = app
            .http
            .post(app.url("/sms/send"))
            .bearer_auth(&key)
            .json(&json!({"to": format!("+1415771{i:04}"), "body": format!("notice {i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let started = Instant::now();
    let mut worker = app.spawn_worker_process("outbound-send,outbound-status", &[]);
    let settled = wait_until(Duration::from_secs(90), || async {
        app.count("SELECT count(*) FROM sms_messages WHERE direction = 'outbound' AND twilio_sid IS NOT NULL").await == 200
    })
    .await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    println!(
        "lost answers test: 200 sends settled from Twilio's list {:.1} s after the worker started",
        took.as_secs_f64()
    );
    assert!(settled.is_ok());
    assert_eq!(
        tw.stats().creates,
        200,
        "each message reached Twilio exactly once"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM sms_send_attempts WHERE evidence = 'twilio_list'")
            .await,
        200
    );
}
