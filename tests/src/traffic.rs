//! Traffic as Twilio and API clients send it, and the checks every fault and deployment test
//! makes afterwards: nothing lost, nothing doubled.

use std::time::Instant;

use serde_json::json;
use sim::{twilio::TwilioSimHandle, webhook::InboundSms};
use uuid::Uuid;

use crate::app::{ACCOUNT_SID, AUTH_TOKEN, OUR_NUMBER, TestApp};

/// Talks to the ingress like Twilio and API clients do; cheap to clone into load tasks.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    /// Where requests go (one ingress replica).
    pub base_url: String,
    /// The URL webhooks are signed for (PUBLIC_URL + path).
    pub signed_url: String,
    pub key: String,
}

/// One answer of the ingress, with when its request started and ended.
#[derive(Debug, Clone)]
pub struct Answer {
    /// `0` when no HTTP answer came at all.
    pub status: u16,
    pub retry_after: bool,
    pub started: Instant,
    pub finished: Instant,
    /// The webhook's MessageSid, or the send's message id.
    pub id: String,
}

impl Client {
    pub fn of(app: &TestApp, key: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .unwrap(),
            base_url: app.base_url.clone(),
            signed_url: app.webhook_url(),
            key: key.to_owned(),
        }
    }

    pub async fn webhook(&self, from: &str, body: &str) -> Answer {
        self.post_sms(&InboundSms::new(from, OUR_NUMBER, body))
            .await
    }

    /// Posts this SMS's webhook once (a retry posts the same MessageSid again).
    pub async fn post_sms(&self, sms: &InboundSms) -> Answer {
        let started = Instant::now();
        let resp = sim::webhook::send_to(
            &self.http,
            &format!("{}/webhook/twilio/sms", self.base_url),
            &self.signed_url,
            AUTH_TOKEN,
            &sms.params(ACCOUNT_SID),
        )
        .await;
        let (status, retry_after) = match &resp {
            Ok(r) => (r.status().as_u16(), r.headers().contains_key("retry-after")),
            Err(_) => (0, false),
        };
        Answer {
            status,
            retry_after,
            started,
            finished: Instant::now(),
            id: sms.message_sid.clone(),
        }
    }

    pub async fn send(&self, to: &str, body: &str) -> Answer {
        self.send_with_key(to, body, None).await
    }

    /// A send with an `Idempotency-Key`, so that it may be retried.
    pub async fn send_with_key(
        &self,
        to: &str,
        body: &str,
        idempotency_key: Option<&str>,
    ) -> Answer {
        let started = Instant::now();
        let mut req = self
            .http
            .post(format!("{}/sms/send", self.base_url))
            .bearer_auth(&self.key)
            .json(&json!({"to": to, "body": body}));
        if let Some(k) = idempotency_key {
            req = req.header("idempotency-key", k);
        }
        let resp = req.send().await;
        let (status, retry_after, id) = match resp {
            Ok(r) => {
                let status = r.status().as_u16();
                let retry_after = r.headers().contains_key("retry-after");
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                let id = body["message_id"].as_str().unwrap_or_default().to_owned();
                (status, retry_after, id)
            }
            Err(_) => (0, false, String::new()),
        };
        Answer {
            status,
            retry_after,
            started,
            finished: Instant::now(),
            id,
        }
    }
}

/// `(messages, distinct messages)` in route jobs (a job carries a batch, or one message in the
/// shape written before batches): processing a message puts it in exactly one.
pub async fn route_jobs(app: &TestApp) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(DISTINCT id) FROM (
             SELECT COALESCE(m->>'message_id', j.body->>'message_id') AS id
             FROM (SELECT convert_from(job, 'UTF8')::jsonb AS body FROM apalis.jobs WHERE job_type = 'route') j
             LEFT JOIN LATERAL jsonb_array_elements(j.body->'messages') m ON true
         ) x",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

/// Asserts that Twilio received each of these message ids exactly once, and nothing else.
pub async fn assert_sent_once(app: &TestApp, tw: &TwilioSimHandle, ids: &[String]) {
    assert_sent_once_all(&app.pool, tw, ids).await
}

/// [`assert_sent_once`] with the database's pool.
pub async fn assert_sent_once_all(pool: &sqlx::PgPool, tw: &TwilioSimHandle, ids: &[String]) {
    let stats = tw.stats();
    let twice: Vec<_> = stats
        .by_callback_id
        .iter()
        .filter(|(_, n)| **n != 1)
        .collect();
    if !twice.is_empty() {
        let ids: Vec<Uuid> = twice.iter().filter_map(|(id, _)| id.parse().ok()).collect();
        let ledger: Vec<String> = sqlx::query_scalar(
            "SELECT concat_ws(' ', message_id, attempt, outcome, http_status, error_message)
             FROM sms_send_attempts WHERE message_id = ANY($1) ORDER BY message_id, attempt",
        )
        .bind(&ids)
        .fetch_all(pool)
        .await
        .unwrap_or_default();
        panic!("sent more than once: {twice:?}; their attempts: {ledger:?}");
    }
    let missing: Vec<_> = ids
        .iter()
        .filter(|id| stats.by_callback_id.get(*id) != Some(&1))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} never reached Twilio, e.g. {:?}",
        missing.len(),
        ids.len(),
        missing.first()
    );
    assert_eq!(stats.creates as usize, ids.len(), "nothing else was sent");
}
