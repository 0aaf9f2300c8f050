//! The inbound worker: normalisation, tenant resolution (local directory, then the Monitor with
//! variants, retries and caching), conversation linkage, language, opt-outs.

use std::time::Duration;

use harness::sims;
use harness::{
    app::{Settings, TestApp, wait_until},
    pg,
};
use shared::jobs;
use sim::monitor::Faults;

struct Conv {
    id: uuid::Uuid,
    tenant_id: Option<String>,
    phone_number_original: String,
    language_detected: Option<String>,
    language_confidence: Option<f32>,
}

async fn conversation(app: &TestApp, e164: &str) -> Option<Conv> {
    sqlx::query_as!(
        Conv,
        "SELECT id, tenant_id, phone_number_original, language_detected, language_confidence FROM sms_conversations WHERE phone_number = $1",
        e164
    )
    .fetch_optional(&app.pool)
    .await
    .unwrap()
}

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    app.count(sql).await
}

#[tokio::test]
async fn unknown_number_gets_a_conversation_without_tenant() {
    let db = pg::fresh_db().await;
    let mut app = TestApp::spawn(Settings::new(&db)).await;
    app.start_worker(&[jobs::INBOUND]).await;
    let sid = app
        .inbound("(555) 987-6543", "Hello, is the office open?")
        .await;
    app.drain(jobs::INBOUND).await;
    let conv = conversation(&app, "+15559876543")
        .await
        .expect("conversation created");
    assert_eq!(conv.tenant_id, None);
    assert_eq!(conv.phone_number_original, "(555) 987-6543");
    let msg = sqlx::query!(
        "SELECT conversation_id, language_detected, processed_at FROM sms_messages WHERE twilio_sid = $1",
        sid
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(msg.conversation_id, Some(conv.id));
    assert_eq!(msg.language_detected.as_deref(), Some("en"));
    assert!(msg.processed_at.is_some());
}

#[tokio::test]
async fn local_directory_matches_any_of_a_tenants_numbers() {
    let db = pg::fresh_db().await;
    sqlx::query(
        "INSERT INTO tenant_profiles (tenant_id, phone_numbers) VALUES ('t-1', '[\"+15551110001\", \"+15551110002\"]')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut app = TestApp::spawn(Settings::new(&db)).await;
    app.start_worker(&[jobs::INBOUND]).await;
    app.inbound("555-111-0002", "I will pay on Friday").await;
    app.drain(jobs::INBOUND).await;
    let conv = conversation(&app, "+15551110002").await.unwrap();
    assert_eq!(conv.tenant_id.as_deref(), Some("t-1"));
    let last_used: Option<String> = sqlx::query_scalar(
        "SELECT last_used_phone_number FROM tenant_profiles WHERE tenant_id = 't-1'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(last_used.as_deref(), Some("+15551110002"));
}

#[tokio::test]
async fn monitor_lookup_tries_variants_and_remembers_the_tenant() {
    let db = pg::fresh_db().await;
    // The Monitor stored the number in national format only.
    let monitor = sims::monitor(vec![sims::tenant("t-42", &["(555) 222-0042"], Some("es"))]).await;
    let mut app =
        TestApp::spawn(Settings::new(&db).set("MONITOR_API_URL", monitor.base_url())).await;
    let deps = app.start_worker(&[jobs::INBOUND]).await;
    app.inbound("+15552220042", "Hola, ya pagué la renta").await;
    app.drain(jobs::INBOUND).await;
    let conv = conversation(&app, "+15552220042").await.unwrap();
    assert_eq!(conv.tenant_id.as_deref(), Some("t-42"));
    let stats = monitor.stats();
    assert_eq!(stats.lookup_phones, vec!["+15552220042", "(555) 222-0042"]);
    let profile = sqlx::query!(
        "SELECT phone_numbers, language_preference FROM tenant_profiles WHERE tenant_id = 't-42'"
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(profile.phone_numbers, serde_json::json!(["+15552220042"]));
    assert_eq!(profile.language_preference.as_deref(), Some("es"));

    // A second message from the same number needs no new lookup: it is answered from the cache,
    // or from the directory when the change feed (every second) has meanwhile dropped the cached
    // entry, since the first message's profile write is a directory change (a race the test lost
    // in one full-suite run when it asserted a cache hit).
    app.inbound("+15552220042", "Gracias").await;
    app.drain(jobs::INBOUND).await;
    assert_eq!(monitor.stats().lookups, 2);
    let cache = deps.tenants.stats();
    assert_eq!(cache.monitor_found, 1, "{cache:?}");
    assert_eq!(
        count(&app, "SELECT count(*) FROM sms_conversations").await,
        1
    );
}

#[tokio::test]
async fn monitor_404_is_unknown_and_cached() {
    let db = pg::fresh_db().await;
    let monitor = sims::monitor(vec![]).await;
    let mut app =
        TestApp::spawn(Settings::new(&db).set("MONITOR_API_URL", monitor.base_url())).await;
    app.start_worker(&[jobs::INBOUND]).await;
    app.inbound("+15553330001", "hi").await;
    app.drain(jobs::INBOUND).await;
    let first = monitor.stats().lookups;
    assert!(first >= 2, "variants tried: {first}");
    app.inbound("+15553330001", "hello again").await;
    app.drain(jobs::INBOUND).await;
    assert_eq!(monitor.stats().lookups, first, "not-found answer cached");
    assert_eq!(
        conversation(&app, "+15553330001").await.unwrap().tenant_id,
        None
    );
}

#[tokio::test]
async fn monitor_5xx_is_retried_then_succeeds() {
    let db = pg::fresh_db().await;
    let monitor = sims::monitor(vec![sims::tenant("t-7", &["+15554440007"], None)]).await;
    monitor.set_faults(Faults {
        fail_next: 2,
        fail_status: 503,
        ..Faults::default()
    });
    let mut app = TestApp::spawn(
        Settings::new(&db)
            .set("MONITOR_API_URL", monitor.base_url())
            .set("MONITOR_MAX_ATTEMPTS", "3"),
    )
    .await;
    app.start_worker(&[jobs::INBOUND]).await;
    app.inbound("+15554440007", "ok").await;
    app.drain(jobs::INBOUND).await;
    assert_eq!(
        conversation(&app, "+15554440007")
            .await
            .unwrap()
            .tenant_id
            .as_deref(),
        Some("t-7")
    );
    assert_eq!(monitor.stats().lookups, 3);
}

#[tokio::test]
async fn monitor_timeouts_are_bounded_and_the_message_is_kept() {
    let db = pg::fresh_db().await;
    let monitor = sims::monitor(vec![sims::tenant("t-8", &["+15554440008"], None)]).await;
    monitor.set_faults(Faults {
        timeout_next: 10,
        ..Faults::default()
    });
    let mut app = TestApp::spawn(
        Settings::new(&db)
            .set("MONITOR_API_URL", monitor.base_url())
            .set("MONITOR_TIMEOUT_MS", "200")
            .set("MONITOR_MAX_ATTEMPTS", "2"),
    )
    .await;
    app.start_worker(&[jobs::INBOUND]).await;
    app.inbound("+15554440008", "ok").await;
    app.drain(jobs::INBOUND).await;
    // Stored and linked without tenant; two attempts on the first variant, then it gave up.
    assert_eq!(
        conversation(&app, "+15554440008").await.unwrap().tenant_id,
        None
    );
    assert_eq!(monitor.stats().lookups, 2);
}

#[tokio::test]
async fn unknown_then_known_attaches_the_tenant_to_the_same_conversation() {
    let db = pg::fresh_db().await;
    let monitor = sims::monitor(vec![sims::tenant("t-9", &["+15554440009"], None)]).await;
    monitor.set_faults(Faults {
        down: true,
        ..Faults::default()
    });
    let mut app = TestApp::spawn(
        Settings::new(&db)
            .set("MONITOR_API_URL", monitor.base_url())
            .set("MONITOR_MAX_ATTEMPTS", "1"),
    )
    .await;
    app.start_worker(&[jobs::INBOUND]).await;
    app.inbound("+15554440009", "Is anyone there?").await;
    app.drain(jobs::INBOUND).await;
    let before = conversation(&app, "+15554440009").await.unwrap();
    assert_eq!(before.tenant_id, None);

    // The Monitor comes back; a directory outage was not cached, so the next message resolves.
    monitor.set_faults(Faults::default());
    app.inbound("+15554440009", "Hello?").await;
    app.drain(jobs::INBOUND).await;
    let after = conversation(&app, "+15554440009").await.unwrap();
    assert_eq!(after.id, before.id);
    assert_eq!(after.tenant_id.as_deref(), Some("t-9"));
    assert_eq!(
        count(&app, "SELECT count(*) FROM sms_conversations").await,
        1
    );
    assert_eq!(count(&app, "SELECT count(*) FROM sms_messages").await, 2);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM sms_messages WHERE conversation_id IS NULL"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn each_message_is_processed_exactly_once_even_when_jobs_rerun() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db)).await;
    app.inbound("+15556660001", "Hola").await;
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM sms_messages")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let cfg = shared::config::Worker::load(&app.settings.0).unwrap();
    let deps = worker::Deps::new(&cfg, app.pool.clone());
    // The same job run concurrently and then again, as after a crash before its ack.
    let (a, b) = tokio::join!(
        worker::inbound::process(&deps, id),
        worker::inbound::process(&deps, id)
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, worker::inbound::Outcome::Processed { .. }))
            .count(),
        1
    );
    assert_eq!(
        worker::inbound::process(&deps, id).await.unwrap(),
        worker::inbound::Outcome::AlreadyProcessed
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM sms_conversations").await,
        1
    );
}

#[tokio::test]
async fn language_follows_the_prd_rule_and_updates_the_tenant() {
    let db = pg::fresh_db().await;
    let monitor = sims::monitor(vec![sims::tenant("t-lang", &["+15557770001"], None)]).await;
    let mut app =
        TestApp::spawn(Settings::new(&db).set("MONITOR_API_URL", monitor.base_url())).await;
    app.start_worker(&[jobs::INBOUND, jobs::MONITOR_LANGUAGE])
        .await;

    app.inbound(
        "+15557770001",
        "Hola, no tengo el dinero de la renta esta semana",
    )
    .await;
    app.drain(jobs::INBOUND).await;
    app.drain(jobs::MONITOR_LANGUAGE).await;
    let conv = conversation(&app, "+15557770001").await.unwrap();
    assert_eq!(conv.language_detected.as_deref(), Some("es"));
    let strong = conv.language_confidence.unwrap();

    // Weak evidence ("ok") does not overwrite strong.
    app.inbound("+15557770001", "ok").await;
    app.drain(jobs::INBOUND).await;
    let conv = conversation(&app, "+15557770001").await.unwrap();
    assert_eq!(conv.language_detected.as_deref(), Some("es"));
    assert_eq!(conv.language_confidence, Some(strong));

    // A strong message in another language wins, and the Monitor is told.
    app.inbound(
        "+15557770001",
        "Olá, eu já paguei o aluguel ontem, obrigado pela paciência",
    )
    .await;
    app.drain(jobs::INBOUND).await;
    app.drain(jobs::MONITOR_LANGUAGE).await;
    let conv = conversation(&app, "+15557770001").await.unwrap();
    assert_eq!(conv.language_detected.as_deref(), Some("pt"));
    let pref: Option<String> = sqlx::query_scalar(
        "SELECT language_preference FROM tenant_profiles WHERE tenant_id = 't-lang'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(pref.as_deref(), Some("pt"));
    let updates = monitor.stats().language_updates;
    let langs: Vec<&str> = updates.iter().map(|u| u.language.as_str()).collect();
    assert_eq!(langs, vec!["es", "pt"]);
    assert!(updates.iter().all(|u| u.tenant_id == "t-lang"));
}

#[tokio::test]
async fn monitor_language_update_is_retried_durably() {
    let db = pg::fresh_db().await;
    let monitor = sims::monitor(vec![sims::tenant("t-r", &["+15557770002"], None)]).await;
    let mut app =
        TestApp::spawn(Settings::new(&db).set("MONITOR_API_URL", monitor.base_url())).await;
    app.start_worker(&[jobs::INBOUND]).await;
    app.inbound("+15557770002", "Muchas gracias, pago el viernes")
        .await;
    app.drain(jobs::INBOUND).await;
    // Only the language queue is affected by the outage.
    monitor.set_faults(Faults {
        fail_next: 1,
        fail_status: 500,
        ..Faults::default()
    });
    app.start_worker(&[jobs::MONITOR_LANGUAGE]).await;
    wait_until(Duration::from_secs(15), || async {
        !monitor.stats().language_updates.is_empty()
    })
    .await
    .expect("language update delivered after a retry");
    let attempts: Vec<i64> = sqlx::query_scalar(
        "SELECT (convert_from(job, 'UTF8')::jsonb->>'attempt')::bigint FROM apalis.jobs WHERE job_type = 'monitor-language' ORDER BY run_at",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(attempts, vec![0, 1], "the retry is a job of its own");
}

#[tokio::test]
async fn opt_out_keywords_and_opt_out_type_are_recorded() {
    let db = pg::fresh_db().await;
    let mut app = TestApp::spawn(Settings::new(&db)).await;
    app.start_worker(&[jobs::INBOUND]).await;
    app.inbound("+15558880001", " Stop ").await;
    app.drain(jobs::INBOUND).await;
    let row = sqlx::query!("SELECT our_number, opted_out, keyword, message_id FROM sms_opt_outs WHERE their_number = '+15558880001'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(row.opted_out);
    assert_eq!(row.keyword.as_deref(), Some("STOP"));
    assert_eq!(row.our_number, harness::app::OUR_NUMBER);
    assert!(row.message_id.is_some());

    app.inbound("+15558880001", "start").await;
    app.drain(jobs::INBOUND).await;
    let opted_out: bool = sqlx::query_scalar(
        "SELECT opted_out FROM sms_opt_outs WHERE their_number = '+15558880001'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(!opted_out);

    // Twilio's OptOutType field counts even when the body is not a bare keyword.
    let mut sms = sim::webhook::InboundSms::new(
        "+15558880002",
        harness::app::OUR_NUMBER,
        "please stop texting me",
    );
    sms.extra.push(("OptOutType".into(), "STOP".into()));
    assert_eq!(
        app.post_webhook(&sms.params(harness::app::ACCOUNT_SID))
            .await
            .status(),
        200
    );
    // A "yes" from someone who never opted out records nothing.
    app.inbound("+15558880003", "Yes").await;
    app.drain(jobs::INBOUND).await;
    let rows = sqlx::query!(
        "SELECT their_number, opted_out, opt_out_type FROM sms_opt_outs ORDER BY their_number"
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].their_number, "+15558880002");
    assert!(rows[1].opted_out);
    assert_eq!(rows[1].opt_out_type.as_deref(), Some("STOP"));
}
