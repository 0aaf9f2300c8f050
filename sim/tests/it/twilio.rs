use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{OriginalUri, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use serde_json::{Value, json};
use shared::twilio::signature::verify_form;
use sim::{
    monitor::{MonitorState, monitor_router},
    server::{self, SimServer},
    twilio::{
        FailedStatus, Faults, FinalStatus, MessageStatus, SERVICE_FROM, TwilioSim, TwilioSimHandle,
        TwilioState, twilio_router,
    },
};

use crate::TOKEN;

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const FROM: &str = "+15550001000";
const TO: &str = "+15551230001";
const SERVICE: &str = "MG0123456789abcdef0123456789abcdef";
const WAIT: Duration = Duration::from_secs(5);

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn twilio() -> TwilioSimHandle {
    TwilioSim::start(local(), ACCOUNT, TOKEN).await.unwrap()
}

/// `(status, JSON body or Null)` of an authenticated create.
async fn create(
    http: &reqwest::Client,
    sim: &TwilioSimHandle,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let resp = http
        .post(sim.messages_url())
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// `(status, JSON body or Null)` of an authenticated fetch.
async fn fetch(http: &reqwest::Client, sim: &TwilioSimHandle, sid: &str) -> (u16, Value) {
    let resp = http
        .get(format!(
            "{}/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid}.json",
            sim.base_url()
        ))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn post_json(http: &reqwest::Client, url: String, body: Value) -> u16 {
    http.post(url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Asserts a Twilio error body: exactly `{code, message, more_info, status}`.
fn assert_twilio_error(body: &Value, status: u16, code: u64) {
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(
        body["more_info"],
        format!("https://www.twilio.com/docs/errors/{code}")
    );
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(body.as_object().unwrap().len(), 4, "{body}");
}

/// One status callback as received.
#[derive(Debug, Clone)]
struct Callback {
    /// Path and query it was posted to.
    target: String,
    params: Vec<(String, String)>,
    /// The signature verified over the full URL with [`TOKEN`].
    valid: bool,
    /// The message's status at the sim when the callback arrived.
    status_at_sim: Option<MessageStatus>,
}

impl Callback {
    fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn status(&self) -> &str {
        self.get("MessageStatus").unwrap_or("")
    }
}

#[derive(Default)]
struct ReceiverState {
    base: OnceLock<String>,
    sim: OnceLock<TwilioState>,
    got: Mutex<Vec<Callback>>,
}

/// A status-callback endpoint verifying signatures as our service does; `/fail` answers `500`.
struct Receiver {
    base: String,
    state: Arc<ReceiverState>,
    _server: SimServer,
}

impl Receiver {
    async fn spawn(sim: &TwilioSimHandle) -> Receiver {
        let state = Arc::new(ReceiverState::default());
        let app = Router::new()
            .route("/cb", post(receive))
            .route("/fail", post(receive))
            .with_state(state.clone());
        let server = SimServer::start(local(), app).await.unwrap();
        let base = server.base_url();
        state.base.set(base.clone()).unwrap();
        let _ = state.sim.set(sim.state().clone());
        Receiver {
            base,
            state,
            _server: server,
        }
    }
    fn got(&self) -> Vec<Callback> {
        self.state.got.lock().unwrap().clone()
    }
    fn statuses(&self) -> Vec<String> {
        self.got().iter().map(|c| c.status().to_owned()).collect()
    }
}

async fn receive(
    State(s): State<Arc<ReceiverState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let sig = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let url = format!("{}{uri}", s.base.get().unwrap());
    let form = headers
        .get("content-type")
        .is_some_and(|v| v == "application/x-www-form-urlencoded");
    let valid = form && verify_form(&[TOKEN], &url, &params, sig);
    let sid = params
        .iter()
        .find(|(k, _)| k == "MessageSid")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let status_at_sim = s.sim.get().and_then(|t| t.message(&sid)).map(|m| m.status);
    s.got.lock().unwrap().push(Callback {
        target: uri.to_string(),
        params,
        valid,
        status_at_sim,
    });
    if uri.path() == "/fail" {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

fn faults(f: impl FnOnce(&mut Faults)) -> Faults {
    let mut faults = Faults::default();
    f(&mut faults);
    faults
}

#[tokio::test]
async fn rest_requests_need_the_accounts_credentials() {
    let sim = twilio().await;
    let http = reqwest::Client::new();
    assert!(sim.base_url().starts_with("http://127.0.0.1:") && !sim.base_url().ends_with('/'));
    assert_eq!(
        sim.messages_url(),
        format!(
            "{}/2010-04-01/Accounts/{ACCOUNT}/Messages.json",
            sim.base_url()
        )
    );
    let form = [("To", TO), ("From", FROM), ("Body", "hi")];

    let none = http
        .post(sim.messages_url())
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    assert!(none.headers().contains_key("www-authenticate"));
    assert_eq!(
        none.json::<Value>().await.unwrap(),
        json!({"code": 20003, "message": "Authenticate",
               "more_info": "https://www.twilio.com/docs/errors/20003", "status": 401})
    );
    for (user, password) in [
        (ACCOUNT, "wrong"),
        ("AC00000000000000000000000000000000", TOKEN),
    ] {
        let resp = http
            .post(sim.messages_url())
            .basic_auth(user, Some(password))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.json::<Value>().await.unwrap()["code"], 20003);
    }
    let bearer = http
        .post(sim.messages_url())
        .bearer_auth(TOKEN)
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 401);
    let get = http
        .get(format!(
            "{}/2010-04-01/Accounts/{ACCOUNT}/Messages/SM00000000000000000000000000000000.json",
            sim.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 401);

    // Right credentials, another account's path.
    let other = http
        .post(format!(
            "{}/2010-04-01/Accounts/AC99999999999999999999999999999999/Messages.json",
            sim.base_url()
        ))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    assert_twilio_error(&other.json().await.unwrap(), 404, 20404);

    // GET is ListMessage; DELETE is no method of the list.
    let wrong_method = http
        .delete(sim.messages_url())
        .basic_auth(ACCOUNT, Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_twilio_error(&wrong_method.json().await.unwrap(), 405, 20004);

    let stats = sim.stats();
    assert_eq!(stats.create_attempts, 5);
    assert_eq!(stats.unauthorized, 5);
    assert_eq!(stats.creates, 0);
    assert_eq!(create(&http, &sim, &form).await.0, 201);
}

#[tokio::test]
async fn create_validates_like_twilio() {
    let sim = twilio().await;
    let http = reqwest::Client::new();
    let long = "a".repeat(1601);
    let cases: Vec<(Vec<(&str, &str)>, u64)> = vec![
        (vec![("From", FROM), ("Body", "hi")], 21604),
        (vec![("To", ""), ("From", FROM), ("Body", "hi")], 21604),
        (vec![("To", TO), ("Body", "hi")], 21603),
        (
            vec![("To", TO), ("MessagingServiceSid", "MG12"), ("Body", "hi")],
            21701,
        ),
        (vec![("To", TO), ("From", FROM)], 21602),
        (vec![("To", TO), ("From", FROM), ("Body", "")], 21602),
        (
            vec![("To", "5551230001"), ("From", FROM), ("Body", "hi")],
            21211,
        ),
        (
            vec![("To", "+1 (555) 123-0001"), ("From", FROM), ("Body", "hi")],
            21211,
        ),
        (vec![("To", "+1555"), ("From", FROM), ("Body", "hi")], 21211),
        (
            vec![("To", TO), ("From", "not a number!"), ("Body", "hi")],
            21212,
        ),
        (vec![("To", TO), ("From", TO), ("Body", "hi")], 21266),
        (vec![("To", TO), ("From", FROM), ("Body", &long)], 21617),
        (
            vec![("To", TO), ("From", FROM), ("MediaUrl", "ftp://x/y.png")],
            21620,
        ),
        (
            vec![
                ("To", TO),
                ("From", FROM),
                ("Body", "hi"),
                ("StatusCallback", "/relative/cb"),
            ],
            21609,
        ),
    ];
    for (form, code) in &cases {
        let (status, body) = create(&http, &sim, form).await;
        assert_eq!(status, 400, "{form:?}: {body}");
        assert_twilio_error(&body, 400, *code);
    }
    // A JSON body carries no form fields: Twilio sees no To.
    let json_body = http
        .post(sim.messages_url())
        .basic_auth(ACCOUNT, Some(TOKEN))
        .json(&json!({"To": TO, "From": FROM, "Body": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json_body.status(), 400);
    assert_eq!(json_body.json::<Value>().await.unwrap()["code"], 21604);

    let stats = sim.stats();
    assert_eq!(stats.create_attempts, cases.len() as u64 + 1);
    assert_eq!(stats.creates, 0);
    assert!(stats.messages.is_empty());
    // Alphanumeric sender IDs and short codes are valid senders.
    for from in ["ACME Rent", "12345"] {
        let (status, body) =
            create(&http, &sim, &[("To", TO), ("From", from), ("Body", "hi")]).await;
        assert_eq!(status, 201, "{from}: {body}");
    }
}

#[tokio::test]
async fn create_returns_the_message_resource_and_get_reads_it() {
    let sim = twilio().await;
    let http = reqwest::Client::new();
    // Statuses stay put while we look.
    sim.set_faults(faults(|f| f.callback_delay_ms = 60_000));

    let (status, m) = create(
        &http,
        &sim,
        &[
            ("To", TO),
            ("From", FROM),
            ("Body", "Hola José, ¿cómo está?"),
        ],
    )
    .await;
    assert_eq!(status, 201, "{m}");
    let sid = m["sid"].as_str().unwrap().to_owned();
    assert_eq!(sid.len(), 34);
    assert!(sid.starts_with("SM"));
    assert!(
        sid[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(m["account_sid"], ACCOUNT);
    assert_eq!(m["to"], TO);
    assert_eq!(m["from"], FROM);
    assert_eq!(m["messaging_service_sid"], Value::Null);
    assert_eq!(m["body"], "Hola José, ¿cómo está?");
    assert_eq!(m["status"], "queued");
    assert_eq!(m["num_segments"], "1");
    assert_eq!(m["num_media"], "0");
    assert_eq!(m["direction"], "outbound-api");
    assert_eq!(m["api_version"], "2010-04-01");
    for null in ["date_sent", "error_code", "error_message", "price"] {
        assert_eq!(m[null], Value::Null, "{null}");
    }
    assert_eq!(
        m["uri"],
        format!("/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid}.json")
    );
    let created = m["date_created"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc2822(created).is_ok(),
        "{created}"
    );
    assert!(created.ends_with(" +0000"), "{created}");
    assert_eq!(m["date_updated"], created);

    let (status, got) = fetch(&http, &sim, &sid).await;
    assert_eq!(status, 200);
    assert_eq!(got, m);
    assert_eq!(serde_json::to_value(sim.message(&sid).unwrap()).unwrap(), m);

    // UCS-2 segments; a messaging service without From; media without a body.
    let (_, long) = create(
        &http,
        &sim,
        &[("To", TO), ("From", FROM), ("Body", &"ç".repeat(71))],
    )
    .await;
    assert_eq!(long["num_segments"], "2");
    let (status, svc) = create(
        &http,
        &sim,
        &[
            ("To", TO),
            ("MessagingServiceSid", SERVICE),
            ("MediaUrl", "https://example.com/a.png"),
            ("MediaUrl", "https://example.com/b.png"),
        ],
    )
    .await;
    assert_eq!(status, 201, "{svc}");
    assert_eq!(svc["status"], "accepted");
    assert_eq!(svc["from"], Value::Null);
    assert_eq!(svc["messaging_service_sid"], SERVICE);
    assert_eq!(svc["body"], "");
    assert_eq!(svc["num_media"], "2");
    assert_eq!(
        sim.stats().messages[2].media_urls,
        vec!["https://example.com/a.png", "https://example.com/b.png"]
    );

    let (status, body) = fetch(&http, &sim, "SM00000000000000000000000000000000").await;
    assert_eq!(status, 404);
    assert_twilio_error(&body, 404, 20404);
    let no_ext = http
        .get(format!(
            "{}/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid}",
            sim.base_url()
        ))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(no_ext.status(), 404);

    // Without a StatusCallback the status still moves on.
    sim.set_faults(faults(|f| f.callback_delay_ms = 1));
    let (_, plain) = create(&http, &sim, &[("To", TO), ("From", FROM), ("Body", "x")]).await;
    let (_, svc2) = create(
        &http,
        &sim,
        &[("To", TO), ("MessagingServiceSid", SERVICE), ("Body", "x")],
    )
    .await;
    assert!(
        tokio::time::timeout(WAIT, async {
            loop {
                let a = sim.message(plain["sid"].as_str().unwrap()).unwrap();
                let b = sim.message(svc2["sid"].as_str().unwrap()).unwrap();
                if a.status == MessageStatus::Delivered && b.status == MessageStatus::Delivered {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .is_ok()
    );
    let (_, now) = fetch(&http, &sim, plain["sid"].as_str().unwrap()).await;
    assert_eq!(now["status"], "delivered");
    assert!(now["date_sent"].is_string());
    assert_eq!(now["error_code"], Value::Null);
    let (_, svc_now) = fetch(&http, &sim, svc2["sid"].as_str().unwrap()).await;
    assert_eq!(svc_now["from"], SERVICE_FROM, "the service picked a sender");
    assert_eq!(sim.stats().callbacks_sent, 0);
}

#[tokio::test]
async fn default_callbacks_arrive_signed_in_order() {
    let sim = twilio().await;
    let recv = Receiver::spawn(&sim).await;
    let http = reqwest::Client::new();
    let id = "0191b6a4-6f7e-7c3a-9d1e-2b3c4d5e6f70";
    let callback = format!("{}/cb?message_id={id}&tenant=t-1", recv.base);
    let t0 = Instant::now();
    let (status, m) = create(
        &http,
        &sim,
        &[
            ("To", TO),
            ("From", FROM),
            ("Body", "Olá"),
            ("StatusCallback", &callback),
        ],
    )
    .await;
    assert_eq!(status, 201);
    let sid = m["sid"].as_str().unwrap();
    assert!(sim.wait_for_callbacks(WAIT).await);
    assert!(
        t0.elapsed() >= Duration::from_millis(60),
        "20 ms apart by default"
    );

    let got = recv.got();
    assert_eq!(recv.statuses(), ["queued", "sent", "delivered"]);
    for cb in &got {
        assert!(cb.valid, "bad signature: {cb:?}");
        assert_eq!(cb.target, format!("/cb?message_id={id}&tenant=t-1"));
        assert_eq!(cb.get("MessageSid"), Some(sid));
        assert_eq!(cb.get("SmsSid"), Some(sid));
        assert_eq!(cb.get("SmsStatus"), Some(cb.status()));
        assert_eq!(cb.get("AccountSid"), Some(ACCOUNT));
        assert_eq!(cb.get("From"), Some(FROM));
        assert_eq!(cb.get("To"), Some(TO));
        assert_eq!(cb.get("ApiVersion"), Some("2010-04-01"));
        assert_eq!(cb.get("ErrorCode"), None);
        assert_eq!(cb.get("MessagingServiceSid"), None);
        // The resource had moved to the callback's status before it was posted.
        assert_eq!(
            cb.status_at_sim.map(|s| s.as_str()),
            Some(cb.status()),
            "{cb:?}"
        );
    }
    // Signed for the exact URL with the sim's token, nothing else.
    let url = format!("{}{}", recv.base, got[0].target);
    let sig = shared::twilio::signature::compute(TOKEN, &url, &got[0].params);
    assert!(verify_form(&[TOKEN], &url, &got[0].params, &sig));
    assert!(!verify_form(&["other"], &url, &got[0].params, &sig));
    assert!(!verify_form(
        &[TOKEN],
        &format!("{}/cb", recv.base),
        &got[0].params,
        &sig
    ));

    assert_eq!(fetch(&http, &sim, sid).await.1["status"], "delivered");
    let stats = sim.stats();
    assert_eq!((stats.callbacks_sent, stats.callbacks_failed), (3, 0));
    assert_eq!(stats.callbacks_pending, 0);
    assert_eq!(stats.by_callback_id.get(id), Some(&1));
    assert_eq!(
        stats.messages[0].status_callback.as_deref(),
        Some(callback.as_str())
    );

    // A messaging service's callbacks name it and the sender it picked.
    let (_, svc) = create(
        &http,
        &sim,
        &[
            ("To", TO),
            ("MessagingServiceSid", SERVICE),
            ("Body", "x"),
            ("StatusCallback", &callback),
        ],
    )
    .await;
    assert!(sim.wait_for_callbacks(WAIT).await);
    let svc_cbs: Vec<Callback> = recv
        .got()
        .into_iter()
        .filter(|c| c.get("MessageSid") == svc["sid"].as_str())
        .collect();
    assert_eq!(svc_cbs.len(), 3);
    assert!(svc_cbs.iter().all(|c| c.valid
        && c.get("MessagingServiceSid") == Some(SERVICE)
        && c.get("From") == Some(SERVICE_FROM)));
}

#[tokio::test]
async fn fail_next_and_rate_limit_answer_then_recover() {
    let sim = twilio().await;
    let http = reqwest::Client::new();
    let form = [("To", TO), ("From", FROM), ("Body", "hi")];
    let faults_url = format!("{}/_sim/twilio/faults", sim.base_url());

    assert_eq!(
        post_json(&http, faults_url.clone(), json!({"fail_next": 1})).await,
        204
    );
    assert_eq!(sim.faults().fail_status, 500, "default fail_status");
    let (status, body) = create(&http, &sim, &form).await;
    assert_eq!(status, 500);
    assert_twilio_error(&body, 500, 20500);
    assert_eq!(create(&http, &sim, &form).await.0, 201);

    sim.set_faults(faults(|f| {
        f.fail_next = 1;
        f.fail_status = 503;
    }));
    let (status, body) = create(&http, &sim, &form).await;
    assert_eq!(status, 503);
    assert_twilio_error(&body, 503, 20503);
    sim.set_faults(faults(|f| {
        f.fail_next = 1;
        f.fail_status = 400;
        f.fail_code = Some(21611);
    }));
    let (status, body) = create(&http, &sim, &form).await;
    assert_eq!(status, 400);
    assert_twilio_error(&body, 400, 21611);
    assert_eq!(sim.faults().fail_next, 0);

    sim.set_faults(faults(|f| {
        f.rate_limit_next = 2;
        f.retry_after_secs = Some(3);
    }));
    for _ in 0..2 {
        let resp = http
            .post(sim.messages_url())
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "3");
        assert_twilio_error(&resp.json().await.unwrap(), 429, 20429);
    }
    assert_eq!(create(&http, &sim, &form).await.0, 201);
    sim.set_faults(faults(|f| f.rate_limit_next = 1));
    let resp = http
        .post(sim.messages_url())
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(!resp.headers().contains_key("retry-after"));

    // An unauthenticated create consumes no fault.
    sim.set_faults(faults(|f| f.fail_next = 1));
    let anon = http
        .post(sim.messages_url())
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    assert_eq!(sim.faults().fail_next, 1);

    let stats = sim.stats();
    assert_eq!(stats.create_attempts, 9);
    assert_eq!(stats.creates, 2);
    assert_eq!(stats.messages.len(), 2);
}

#[tokio::test]
async fn down_answers_503_to_every_rest_request() {
    let sim = twilio().await;
    let http = reqwest::Client::new();
    let form = [("To", TO), ("From", FROM), ("Body", "hi")];
    let (_, m) = create(&http, &sim, &form).await;
    let sid = m["sid"].as_str().unwrap();
    let faults_url = format!("{}/_sim/twilio/faults", sim.base_url());
    assert_eq!(
        post_json(&http, faults_url.clone(), json!({"down": true})).await,
        204
    );
    let (status, body) = create(&http, &sim, &form).await;
    assert_eq!(status, 503);
    assert_twilio_error(&body, 503, 20503);
    let (status, body) = fetch(&http, &sim, sid).await;
    assert_eq!(status, 503);
    assert_twilio_error(&body, 503, 20503);
    // Down even for bad credentials; the control API still answers.
    let anon = http.post(sim.messages_url()).send().await.unwrap();
    assert_eq!(anon.status(), 503);
    let stats = http
        .get(format!("{}/_sim/twilio/stats", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), 200);
    assert_eq!(
        post_json(&http, faults_url, json!({"down": false})).await,
        204
    );
    assert_eq!(create(&http, &sim, &form).await.0, 201);
    assert_eq!(fetch(&http, &sim, sid).await.0, 200);
    assert_eq!(sim.stats().create_attempts, 4);
    assert_eq!(sim.stats().creates, 2);
}

#[tokio::test]
async fn an_outage_answers_429_and_5xx_in_turn_until_cleared() {
    let sim = twilio().await;
    let http = reqwest::Client::new();
    let form = [("To", TO), ("From", FROM), ("Body", "hi")];
    let (_, m) = create(&http, &sim, &form).await;
    let sid = m["sid"].as_str().unwrap();
    let faults_url = format!("{}/_sim/twilio/faults", sim.base_url());
    assert_eq!(
        post_json(
            &http,
            faults_url.clone(),
            json!({"outage": true, "retry_after_secs": 2, "fail_status": 503})
        )
        .await,
        204
    );
    let mut seen = Vec::new();
    for _ in 0..4 {
        let resp = http
            .post(sim.messages_url())
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(&form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        if status == 429 {
            assert_eq!(resp.headers()["retry-after"], "2");
            assert_twilio_error(&resp.json().await.unwrap(), 429, 20429);
        } else {
            assert_twilio_error(&resp.json().await.unwrap(), 503, 20503);
        }
        seen.push(status);
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![429, 429, 503, 503], "both kinds, in turn");
    // Reads still work during the outage; nothing was created.
    assert_eq!(fetch(&http, &sim, sid).await.0, 200);
    assert_eq!(sim.stats().creates, 1);
    assert_eq!(post_json(&http, faults_url, json!({})).await, 204);
    assert_eq!(create(&http, &sim, &form).await.0, 201);
    assert_eq!(sim.stats().create_attempts, 6);
    assert_eq!(sim.stats().creates, 2);
}

#[tokio::test]
async fn hung_create_times_out_but_creates_by_default() {
    let sim = twilio().await;
    let recv = Receiver::spawn(&sim).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let callback = format!("{}/cb?message_id=hung-1", recv.base);
    let form = [
        ("To", TO),
        ("From", FROM),
        ("Body", "hi"),
        ("StatusCallback", callback.as_str()),
    ];
    sim.set_faults(faults(|f| {
        f.timeout_next = 1;
        f.callback_delay_ms = 1;
    }));
    assert!(sim.faults().timeout_creates, "creates by default");
    let err = impatient
        .post(sim.messages_url())
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&form)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // The caller saw nothing, yet the message exists and goes out.
    let stats = sim.stats();
    assert_eq!((stats.create_attempts, stats.creates), (1, 1));
    assert_eq!(stats.by_callback_id.get("hung-1"), Some(&1));
    assert!(sim.wait_for_callbacks(WAIT).await);
    assert_eq!(recv.statuses(), ["queued", "sent", "delivered"]);
    let sid = &sim.stats().messages[0].sid;
    assert_eq!(sim.message(sid).unwrap().status, MessageStatus::Delivered);
    // Only the next one hangs.
    assert_eq!(create(&reqwest::Client::new(), &sim, &form).await.0, 201);

    sim.set_faults(faults(|f| {
        f.timeout_next = 1;
        f.timeout_creates = false;
    }));
    let err = impatient
        .post(sim.messages_url())
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&form)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let stats = sim.stats();
    assert_eq!((stats.create_attempts, stats.creates), (3, 2));
    assert_eq!(stats.by_callback_id.get("hung-1"), Some(&2));

    // Shutting down releases a hanging create instead of waiting 30 s.
    sim.set_faults(faults(|f| {
        f.timeout_next = 1;
        f.timeout_creates = false;
    }));
    let patient = reqwest::Client::new();
    let url = sim.messages_url();
    let form_owned: Vec<(String, String)> = form
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let hanging = tokio::spawn(async move {
        let resp = patient
            .post(url)
            .basic_auth(ACCOUNT, Some(TOKEN))
            .form(&form_owned)
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok::<_, reqwest::Error>((status, resp.json::<Value>().await?))
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    sim.shutdown().await;
    assert!(t0.elapsed() < Duration::from_secs(3));
    let (status, body) = tokio::time::timeout(Duration::from_secs(3), hanging)
        .await
        .expect("released")
        .unwrap()
        .unwrap();
    assert_eq!(status, 504);
    assert_twilio_error(&body, 504, 20504);
}

#[tokio::test]
async fn permanent_errors_refuse_that_number_only() {
    let sim = twilio().await;
    let http = reqwest::Client::new();
    let cases = [
        ("+15550000001", 21211, "is not a valid phone number"),
        ("+15550000002", 21610, "unsubscribed recipient"),
        ("+15550000003", 21614, "is not a mobile number"),
        (
            "+15550000004",
            21408,
            "Permission to send an SMS has not been enabled",
        ),
        (
            "+15550000005",
            21606,
            "is not a valid, SMS-capable inbound phone number",
        ),
        ("+15550000006", 21612, "is not currently reachable"),
    ];
    let map: serde_json::Map<String, Value> = cases
        .iter()
        .map(|(to, code, _)| (to.to_string(), json!(code)))
        .collect();
    assert_eq!(
        post_json(
            &http,
            format!("{}/_sim/twilio/faults", sim.base_url()),
            json!({"permanent_errors": map})
        )
        .await,
        204
    );
    for _ in 0..2 {
        for (to, code, text) in cases {
            let (status, body) =
                create(&http, &sim, &[("To", to), ("From", FROM), ("Body", "hi")]).await;
            assert_eq!(status, 400, "{to}");
            assert_twilio_error(&body, 400, code);
            assert!(body["message"].as_str().unwrap().contains(text), "{body}");
        }
    }
    assert_eq!(
        create(&http, &sim, &[("To", TO), ("From", FROM), ("Body", "hi")])
            .await
            .0,
        201
    );
    let stats = sim.stats();
    assert_eq!((stats.create_attempts, stats.creates), (13, 1));
}

#[tokio::test]
async fn final_status_ends_with_the_error() {
    let sim = twilio().await;
    let recv = Receiver::spawn(&sim).await;
    let http = reqwest::Client::new();
    let (undelivered, failed) = ("+15550000010", "+15550000011");
    let faults_url = format!("{}/_sim/twilio/faults", sim.base_url());
    assert_eq!(
        post_json(
            &http,
            faults_url.clone(),
            json!({"callback_delay_ms": 1, "final_status": {
                undelivered: {"status": "undelivered"},
                failed: {"status": "failed", "error_code": 30007}}})
        )
        .await,
        204
    );
    assert_eq!(
        sim.faults().final_status[undelivered],
        FinalStatus {
            status: FailedStatus::Undelivered,
            error_code: 30003
        }
    );
    let callback = format!("{}/cb", recv.base);
    let mut sids = Vec::new();
    for to in [undelivered, failed] {
        let (status, m) = create(
            &http,
            &sim,
            &[
                ("To", to),
                ("From", FROM),
                ("Body", "hi"),
                ("StatusCallback", &callback),
            ],
        )
        .await;
        assert_eq!(status, 201);
        sids.push(m["sid"].as_str().unwrap().to_owned());
    }
    assert!(sim.wait_for_callbacks(WAIT).await);
    let of = |sid: &str| -> Vec<Callback> {
        recv.got()
            .into_iter()
            .filter(|c| c.get("MessageSid") == Some(sid))
            .collect()
    };

    let u = of(&sids[0]);
    let statuses: Vec<&str> = u.iter().map(Callback::status).collect();
    assert_eq!(statuses, ["queued", "sent", "undelivered"]);
    assert!(u.iter().all(|c| c.valid));
    assert_eq!(u[1].get("ErrorCode"), None);
    assert_eq!(u[2].get("ErrorCode"), Some("30003"));
    assert_eq!(
        u[2].get("ErrorMessage"),
        Some("Unreachable destination handset")
    );
    let (_, m) = fetch(&http, &sim, &sids[0]).await;
    assert_eq!(m["status"], "undelivered");
    assert_eq!(m["error_code"], 30003);
    assert_eq!(m["error_message"], "Unreachable destination handset");
    assert!(m["date_sent"].is_string());

    let f = of(&sids[1]);
    let statuses: Vec<&str> = f.iter().map(Callback::status).collect();
    assert_eq!(statuses, ["queued", "failed"]);
    assert_eq!(f[1].get("ErrorCode"), Some("30007"));
    assert_eq!(f[1].get("ErrorMessage"), Some("Message filtered"));
    let (_, m) = fetch(&http, &sim, &sids[1]).await;
    assert_eq!(m["status"], "failed");
    assert_eq!(m["error_code"], 30007);
    assert_eq!(
        m["date_sent"],
        Value::Null,
        "a failed message was never sent"
    );

    for bad in [
        json!({"final_status": {TO: {"status": "delivered"}}}),
        json!({"final_status": {TO: {"status": "failed", "code": 1}}}),
    ] {
        assert_eq!(post_json(&http, faults_url.clone(), bad).await, 400);
    }
}

#[tokio::test]
async fn duplicate_out_of_order_and_lost_callbacks() {
    let sim = twilio().await;
    let recv = Receiver::spawn(&sim).await;
    let http = reqwest::Client::new();
    let callback = format!("{}/cb", recv.base);
    let form = [
        ("To", TO),
        ("From", FROM),
        ("Body", "hi"),
        ("StatusCallback", callback.as_str()),
    ];

    sim.set_faults(faults(|f| {
        f.duplicate_callbacks = true;
        f.callback_delay_ms = 1;
    }));
    create(&http, &sim, &form).await;
    assert!(sim.wait_for_callbacks(WAIT).await);
    let got = recv.got();
    assert_eq!(
        recv.statuses(),
        ["queued", "queued", "sent", "sent", "delivered", "delivered"]
    );
    for pair in got.chunks(2) {
        assert_eq!(pair[0].params, pair[1].params);
        assert!(pair[0].valid && pair[1].valid);
    }
    assert_eq!(sim.stats().callbacks_sent, 6);

    recv.state.got.lock().unwrap().clear();
    sim.set_faults(faults(|f| {
        f.out_of_order = true;
        f.callback_delay_ms = 1;
    }));
    let (_, m) = create(&http, &sim, &form).await;
    assert!(sim.wait_for_callbacks(WAIT).await);
    assert_eq!(recv.statuses(), ["delivered", "sent", "queued"]);
    let at_sim: Vec<_> = recv.got().iter().map(|c| c.status_at_sim).collect();
    assert_eq!(
        at_sim,
        [
            Some(MessageStatus::Queued),
            Some(MessageStatus::Sent),
            Some(MessageStatus::Delivered)
        ],
        "the resource itself moves forward"
    );
    assert!(recv.got().iter().all(|c| c.valid));
    let sid = m["sid"].as_str().unwrap();
    assert_eq!(fetch(&http, &sim, sid).await.1["status"], "delivered");

    recv.state.got.lock().unwrap().clear();
    sim.set_faults(faults(|f| {
        f.no_callbacks = true;
        f.callback_delay_ms = 1;
    }));
    let (_, m) = create(&http, &sim, &form).await;
    assert!(sim.wait_for_callbacks(WAIT).await);
    assert!(recv.got().is_empty());
    let sid = m["sid"].as_str().unwrap();
    assert_eq!(fetch(&http, &sim, sid).await.1["status"], "delivered");
    let stats = sim.stats();
    assert_eq!((stats.callbacks_sent, stats.callbacks_failed), (9, 0));
}

#[tokio::test]
async fn failed_callbacks_are_counted_not_retried() {
    let sim = twilio().await;
    let recv = Receiver::spawn(&sim).await;
    let http = reqwest::Client::new();
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind(local()).unwrap();
        l.local_addr().unwrap()
    };
    sim.set_faults(faults(|f| f.callback_delay_ms = 1));
    for callback in [format!("{}/fail", recv.base), format!("http://{closed}/cb")] {
        let (status, _) = create(
            &http,
            &sim,
            &[
                ("To", TO),
                ("From", FROM),
                ("Body", "hi"),
                ("StatusCallback", &callback),
            ],
        )
        .await;
        assert_eq!(status, 201);
    }
    assert!(sim.wait_for_callbacks(WAIT).await);
    assert_eq!(
        recv.statuses(),
        ["queued", "sent", "delivered"],
        "once each"
    );
    let stats = sim.stats();
    assert_eq!((stats.callbacks_sent, stats.callbacks_failed), (0, 6));
    for m in &stats.messages {
        assert_eq!(
            sim.message(&m.sid).unwrap().status,
            MessageStatus::Delivered
        );
    }
}

#[tokio::test]
async fn by_callback_id_counts_creates_per_message_id() {
    let sim = twilio().await;
    let http = reqwest::Client::new();
    sim.set_faults(faults(|f| f.no_callbacks = true));
    let cb = |id: &str| format!("https://sms.example.com/webhook/twilio/status?message_id={id}");
    let (a, b) = (cb("a-1"), cb("b-2"));
    for callback in [&a, &a, &b] {
        let (status, _) = create(
            &http,
            &sim,
            &[
                ("To", TO),
                ("From", FROM),
                ("Body", "hi"),
                ("StatusCallback", callback),
            ],
        )
        .await;
        assert_eq!(status, 201);
    }
    // Neither a create without StatusCallback nor one without message_id counts.
    create(&http, &sim, &[("To", TO), ("From", FROM), ("Body", "hi")]).await;
    create(
        &http,
        &sim,
        &[
            ("To", TO),
            ("From", FROM),
            ("Body", "hi"),
            ("StatusCallback", "https://sms.example.com/status?x=1"),
        ],
    )
    .await;
    // Nor a failed one.
    sim.set_faults(faults(|f| {
        f.no_callbacks = true;
        f.fail_next = 1;
    }));
    let (status, _) = create(
        &http,
        &sim,
        &[
            ("To", TO),
            ("From", FROM),
            ("Body", "hi"),
            ("StatusCallback", &b),
        ],
    )
    .await;
    assert_eq!(status, 500);

    let stats: Value = http
        .get(format!("{}/_sim/twilio/stats", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["by_callback_id"], json!({"a-1": 2, "b-2": 1}));
    assert_eq!(stats["creates"], 5);
    assert_eq!(stats["create_attempts"], 6);
    assert_eq!(stats["messages"].as_array().unwrap().len(), 5);
    let first = &stats["messages"][0];
    assert_eq!(first["to"], TO);
    assert_eq!(first["from"], FROM);
    assert_eq!(first["body"], "hi");
    assert_eq!(first["status_callback"], a);
    assert!(first["sid"].as_str().unwrap().starts_with("SM"));
}

#[tokio::test]
async fn control_api_sets_faults_reports_and_resets() {
    let sim = twilio().await;
    let http = reqwest::Client::new();
    let base = sim.base_url();
    let faults_url = format!("{base}/_sim/twilio/faults");
    for bad in [
        json!({"fail_nxt": 1}),
        json!({"fail_status": 200}),
        json!({"callback_delay_ms": -1}),
        json!({"permanent_errors": {TO: "21610"}}),
        json!([]),
    ] {
        let resp = http.post(&faults_url).json(&bad).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        assert_eq!(resp.json::<Value>().await.unwrap()["error"], "bad_body");
    }
    assert_eq!(sim.faults(), Faults::default());
    let defaults: Value = http
        .get(&faults_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(defaults["fail_status"], 500);
    assert_eq!(defaults["callback_delay_ms"], 20);
    assert_eq!(defaults["timeout_creates"], true);

    assert_eq!(
        post_json(
            &http,
            faults_url.clone(),
            json!({"fail_next": 3, "out_of_order": true})
        )
        .await,
        204
    );
    let (_, body) = create(&http, &sim, &[("To", TO), ("From", FROM), ("Body", "hi")]).await;
    assert_eq!(body["code"], 20500);
    let current: Value = http
        .get(&faults_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(current["fail_next"], 2);
    assert_eq!(current["out_of_order"], true);
    // Setting faults replaces them all.
    assert_eq!(
        post_json(&http, faults_url.clone(), json!({"no_callbacks": true})).await,
        204
    );
    assert_eq!(sim.faults(), faults(|f| f.no_callbacks = true));

    let (_, m) = create(&http, &sim, &[("To", TO), ("From", FROM), ("Body", "hi")]).await;
    let sid = m["sid"].as_str().unwrap();
    assert_eq!(sim.stats().creates, 1);
    let reset = http
        .post(format!("{base}/_sim/twilio/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 204);
    assert_eq!(sim.stats().create_attempts, 0);
    assert!(sim.stats().messages.is_empty());
    assert_eq!(sim.faults(), Faults::default());
    assert_eq!(fetch(&http, &sim, sid).await.0, 200, "messages kept");
    sim.state().set_faults(faults(|f| f.fail_next = 1));
    sim.reset();
    assert_eq!(sim.faults(), Faults::default());
}

#[tokio::test]
async fn one_server_plays_monitor_and_twilio() {
    let monitor = MonitorState::default();
    let twilio = TwilioState::new(ACCOUNT, TOKEN);
    let server = SimServer::start(
        local(),
        server::app([
            monitor_router(monitor.clone()),
            twilio_router(twilio.clone()),
        ]),
    )
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let base = server.base_url();
    let lookup = http
        .get(format!("{base}/tenants/lookup?phone=%2B15551230001"))
        .send()
        .await
        .unwrap();
    assert_eq!(lookup.status(), 404);
    assert_eq!(
        lookup.json::<Value>().await.unwrap(),
        json!({"error": "not_found"})
    );
    let created = http
        .post(format!(
            "{base}/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
        ))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .form(&[("To", TO), ("From", FROM), ("Body", "hi")])
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(twilio.stats().creates, 1);
    assert_eq!(monitor.stats().lookups, 1);
    for path in ["/_sim/health", "/_sim/twilio/stats", "/_sim/monitor/stats"] {
        assert_eq!(
            http.get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    twilio.close();
    server.shutdown().await;
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let sim = twilio().await;
    let addr = sim.addr();
    drop(sim);
    let http = reqwest::Client::new();
    let mut refused = false;
    for _ in 0..50 {
        if http
            .get(format!("http://{addr}/_sim/health"))
            .send()
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "server still answering after drop");
    assert!(TwilioSim::start(local(), ACCOUNT, "").await.is_err());
}

/// ListMessage: newest first, filtered by `To`, paged with `PageSize`/`Page` and `next_page_uri`.
#[tokio::test]
async fn the_message_list_filters_and_pages_like_twilios() {
    let sim = twilio().await;
    let http = reqwest::Client::new();
    for i in 0..5 {
        let to = if i % 2 == 0 {
            "+14155550601"
        } else {
            "+14155550602"
        };
        let body = format!("m{i}");
        let form = [("To", to), ("From", FROM), ("Body", body.as_str())];
        assert_eq!(create(&http, &sim, &form).await.0, 201);
    }
    let page = |q: &str| {
        let http = http.clone();
        let url = format!("{}?{q}", sim.messages_url());
        async move {
            let r = http
                .get(url)
                .basic_auth(ACCOUNT, Some(TOKEN))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let first = page("To=%2B14155550601&PageSize=2").await;
    let bodies: Vec<&str> = first["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        vec!["m4", "m2"],
        "newest first, only that recipient"
    );
    let next = first["next_page_uri"].as_str().expect("a next page");
    let r = http
        .get(format!("{}{next}", sim.base_url()))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .send()
        .await
        .unwrap();
    let second: Value = r.json().await.unwrap();
    assert_eq!(second["messages"][0]["body"], "m0");
    assert!(second["next_page_uri"].is_null());
    assert_eq!(
        page("To=%2B14155550602").await["messages"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

/// Any unknown route under Twilio's API answers Twilio's JSON error shape.
#[tokio::test]
async fn unknown_api_routes_answer_twilios_error_shape() {
    let sim = twilio().await;
    let r = reqwest::Client::new()
        .get(format!(
            "{}/2010-04-01/Accounts/{ACCOUNT}/Calls.json",
            sim.base_url()
        ))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], 20404);
    assert_eq!(body["status"], 404);
    assert!(
        body["message"].is_string() && body["more_info"].is_string(),
        "{body}"
    );
}

/// A message with media gets an `MM` SID and a Media subresource listing each medium.
#[tokio::test]
async fn mms_have_mm_sids_and_a_media_subresource() {
    let sim = twilio().await;
    let http = reqwest::Client::new();
    let form = [
        ("To", "+14155550701"),
        ("From", FROM),
        ("Body", "photo"),
        ("MediaUrl", "https://media.example/a.jpg"),
    ];
    let (status, created) = create(&http, &sim, &form).await;
    assert_eq!(status, 201);
    let sid = created["sid"].as_str().unwrap();
    assert!(sid.starts_with("MM") && sid.len() == 34, "{sid}");
    let media: Value = http
        .get(format!(
            "{}/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid}/Media.json",
            sim.base_url()
        ))
        .basic_auth(ACCOUNT, Some(TOKEN))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(media["media_list"][0]["content_type"], "image/jpeg");
    assert_eq!(media["media_list"][0]["parent_sid"], sid);
    let (_, plain) = create(
        &http,
        &sim,
        &[("To", "+14155550701"), ("From", FROM), ("Body", "hi")],
    )
    .await;
    assert!(plain["sid"].as_str().unwrap().starts_with("SM"));
}

/// Connection overrides in a webhook URL's fragment, and Twilio's defaults without them.
#[test]
fn webhook_connection_overrides() {
    use sim::twilio::Overrides;
    let (url, o) =
        Overrides::from_url("https://sms.example.com/webhook/twilio/sms?x=1#ct=800&rt=3000&rc=3");
    assert_eq!(url, "https://sms.example.com/webhook/twilio/sms?x=1");
    assert_eq!(
        (o.connect, o.read, o.retries),
        (Duration::from_millis(800), Duration::from_millis(3000), 3)
    );
    let (_, d) = Overrides::from_url("https://sms.example.com/webhook/twilio/sms");
    assert_eq!(
        (d.connect, d.read, d.retries),
        (Duration::from_secs(5), Duration::from_secs(15), 1)
    );
}
