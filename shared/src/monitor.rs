//! Client for the Collections Monitor, the platform's tenant directory.
//!
//! Contract (see docs/api.md): `GET {base}/tenants/lookup?phone=...` answers 200 with a tenant or 404;
//! `PUT {base}/tenants/{id}/language` records a language preference. Timeouts, connection errors,
//! 429 and 5xx are retried with exponential backoff and jitter, a bounded number of times.

use serde::{Deserialize, Serialize};

use crate::{config, retry::RetryPolicy, secret::Secret};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MonitorTenant {
    pub tenant_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub phone_numbers: Vec<String>,
    #[serde(default)]
    pub language_preference: Option<String>,
    /// IANA zone (`America/Chicago`), for quiet hours.
    #[serde(default)]
    pub timezone: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum MonitorError {
    /// Worth trying again later: timeouts, connection errors, 429, 5xx.
    #[error("monitor unavailable: {0}")]
    Unavailable(String),
    /// The Monitor refused the request itself (4xx other than 404/429, bad JSON).
    #[error("monitor rejected the request: {0}")]
    Rejected(String),
}

impl MonitorError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

#[derive(Debug, Clone)]
pub struct MonitorClient {
    base: String,
    api_key: Option<Secret>,
    http: reqwest::Client,
    retry: RetryPolicy,
}

enum Attempt<T> {
    Done(T),
    Retry(String),
}

impl MonitorClient {
    /// None when MONITOR_API_URL is not set.
    pub fn from_config(cfg: &config::Monitor) -> Option<Self> {
        let base = cfg.api_url.clone()?;
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .pool_max_idle_per_host(32)
            .build()
            .expect("TLS backend initialises");
        Some(Self {
            base,
            api_key: cfg.api_key.clone(),
            http,
            retry: cfg.retry(),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn authorized(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => req.bearer_auth(key.expose()),
            None => req,
        }
    }

    async fn with_retries<T, F, Fut>(&self, mut op: F) -> Result<T, MonitorError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Attempt<T>, MonitorError>>,
    {
        let mut last = String::new();
        for attempt in 0..self.retry.max_attempts {
            if attempt > 0 {
                tokio::time::sleep(self.retry.delay(attempt, None)).await;
            }
            match op().await? {
                Attempt::Done(v) => return Ok(v),
                Attempt::Retry(why) => {
                    tracing::debug!(attempt, reason = %why, "monitor call failed, retrying");
                    last = why;
                }
            }
        }
        Err(MonitorError::Unavailable(last))
    }

    /// Looks one written form of a number up. Ok(None) is a definitive "no such tenant".
    pub async fn lookup_one(&self, phone: &str) -> Result<Option<MonitorTenant>, MonitorError> {
        let url = format!("{}/tenants/lookup", self.base);
        self.with_retries(|| async {
            let sent = self
                .authorized(self.http.get(&url).query(&[("phone", phone)]))
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => return Ok(Attempt::Retry(transport_reason(&e))),
            };
            let status = resp.status();
            if status.as_u16() == 404 {
                return Ok(Attempt::Done(None));
            }
            if status.as_u16() == 429 || status.is_server_error() {
                return Ok(Attempt::Retry(format!("HTTP {status}")));
            }
            if !status.is_success() {
                return Err(MonitorError::Rejected(format!("HTTP {status}")));
            }
            match resp.json::<MonitorTenant>().await {
                Ok(t) => Ok(Attempt::Done(Some(t))),
                Err(e) if e.is_timeout() => Ok(Attempt::Retry("timeout reading body".into())),
                Err(e) => Err(MonitorError::Rejected(format!(
                    "unexpected lookup body: {e}"
                ))),
            }
        })
        .await
    }

    /// Tries each variant in turn; the first tenant found wins. A variant that stays unavailable
    /// after its retries ends the search: the Monitor is down, and the caller treats the number as
    /// unknown for now.
    pub async fn lookup(&self, variants: &[String]) -> Result<Option<MonitorTenant>, MonitorError> {
        for v in variants {
            if let Some(t) = self.lookup_one(v).await? {
                return Ok(Some(t));
            }
        }
        Ok(None)
    }

    /// Records a tenant's language preference; one attempt (the job queue schedules retries).
    pub async fn update_language(
        &self,
        tenant_id: &str,
        language: &str,
        confidence: f32,
    ) -> Result<(), MonitorError> {
        let url = format!(
            "{}/tenants/{}/language",
            self.base,
            url::form_urlencoded::byte_serialize(tenant_id.as_bytes()).collect::<String>()
        );
        let resp = self
            .authorized(self.http.put(&url).json(&serde_json::json!({
                "language": language,
                "confidence": confidence,
            })))
            .send()
            .await
            .map_err(|e| MonitorError::Unavailable(transport_reason(&e)))?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else if status.as_u16() == 429 || status.is_server_error() {
            Err(MonitorError::Unavailable(format!("HTTP {status}")))
        } else {
            Err(MonitorError::Rejected(format!("HTTP {status}")))
        }
    }
}

fn transport_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        "transport error".into()
    }
}
