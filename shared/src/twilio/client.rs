//! Twilio's REST API for messages: create (`POST .../Messages.json`) and fetch. Each response is
//! classified so the caller knows whether the message exists at Twilio, certainly does not, or
//! might (a timeout after the request went out).

use std::time::Duration;

use serde::Deserialize;

use crate::secret::Secret;

#[derive(Debug, Clone)]
pub struct TwilioClient {
    base: String,
    account_sid: String,
    auth_token: Secret,
    http: reqwest::Client,
}

/// What Twilio says about a message.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct MessageResource {
    pub sid: String,
    pub status: String,
    #[serde(default)]
    pub error_code: Option<serde_json::Value>,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// RFC 2822, as Twilio writes it.
    #[serde(default)]
    pub date_created: Option<String>,
    /// RFC 2822; null until sent (or received).
    #[serde(default)]
    pub date_sent: Option<String>,
    /// `inbound`, `outbound-api`, `outbound-reply`...
    #[serde(default)]
    pub direction: Option<String>,
    #[serde(default)]
    pub num_segments: Option<String>,
    #[serde(default)]
    pub num_media: Option<String>,
}

#[derive(Debug, Deserialize)]
struct MessagePage {
    messages: Vec<MessageResource>,
    next_page_uri: Option<String>,
}

/// What a search of Twilio's message list is looking for: a message we may have created.
pub struct SentMessage<'a> {
    pub to: &'a str,
    pub from: Option<&'a str>,
    pub messaging_service_sid: Option<&'a str>,
    pub body: &'a str,
    /// How many media the message carries (MMS).
    pub num_media: usize,
    /// Created no earlier than this (the attempt's start, less a margin for clock skew).
    pub since: chrono::DateTime<chrono::Utc>,
}

/// A time as Twilio writes it (RFC 2822), or RFC 3339.
fn twilio_time(d: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc2822(d)
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(d))
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

impl MessageResource {
    /// When it was sent (inbound: received), for the backfill's watermark.
    pub fn sent(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        twilio_time(self.date_sent.as_deref()?)
    }

    fn created(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        twilio_time(self.date_created.as_deref()?)
    }

    /// Whether this is the message a search looks for.
    pub fn matches(&self, want: &SentMessage<'_>) -> bool {
        self.to.as_deref() == Some(want.to)
            && self.body.as_deref() == Some(want.body)
            && match want.messaging_service_sid {
                Some(service) => self.messaging_service_sid.as_deref() == Some(service),
                None => want.from.is_none() || self.from.as_deref() == want.from,
            }
            && self
                .num_media
                .as_deref()
                .is_none_or(|n| n == want.num_media.to_string())
            && self.created().is_some_and(|t| t >= want.since)
    }
    pub fn error_code_string(&self) -> Option<String> {
        match &self.error_code {
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct ErrorBody {
    code: Option<i64>,
    message: Option<String>,
}

/// The outcome of a create call.
#[derive(Debug, Clone, PartialEq)]
// One per call and short-lived: boxing the accepted resource would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum CreateOutcome {
    Accepted(MessageResource),
    /// Not created; worth retrying (429/20429, 5xx, connection refused), after `retry_after` when
    /// Twilio said so.
    Retryable {
        http_status: Option<u16>,
        code: Option<String>,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Not created and never will be as asked (bad number, opted out, authentication...).
    Permanent {
        http_status: Option<u16>,
        code: Option<String>,
        message: String,
    },
    /// The request may have reached Twilio (timeout, connection lost mid-way): the message may
    /// exist. Resolve before trying again.
    Unknown {
        message: String,
    },
}

pub struct NewMessage<'a> {
    pub to: &'a str,
    pub from: Option<&'a str>,
    pub messaging_service_sid: Option<&'a str>,
    pub body: &'a str,
    pub media_urls: &'a [String],
    pub status_callback: String,
}

impl TwilioClient {
    pub fn new(base: &str, account_sid: &str, auth_token: &Secret, timeout: Duration) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            account_sid: account_sid.to_owned(),
            auth_token: auth_token.clone(),
            http: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(5)))
                .pool_max_idle_per_host(64)
                .build()
                .expect("TLS backend initialises"),
        }
    }

    fn messages_url(&self) -> String {
        format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.base, self.account_sid
        )
    }

    /// A client span of its own; Twilio gets its `traceparent`.
    #[tracing::instrument(name = "twilio_create_message", skip_all, fields(otel.kind = "client", http.response.status_code))]
    pub async fn create(&self, msg: &NewMessage<'_>) -> CreateOutcome {
        let mut form: Vec<(&str, &str)> = vec![
            ("To", msg.to),
            ("Body", msg.body),
            ("StatusCallback", msg.status_callback.as_str()),
        ];
        match (msg.messaging_service_sid, msg.from) {
            (Some(sid), _) => form.push(("MessagingServiceSid", sid)),
            (None, Some(from)) => form.push(("From", from)),
            (None, None) => {}
        }
        for url in msg.media_urls {
            form.push(("MediaUrl", url));
        }
        let request = self
            .http
            .post(self.messages_url())
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .form(&form);
        let sent = crate::telemetry::inject(request, &tracing::Span::current())
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            // Refused before anything was sent: certainly not created.
            Err(e) if e.is_connect() => {
                return CreateOutcome::Retryable {
                    http_status: None,
                    code: None,
                    message: "connection failed".into(),
                    retry_after: None,
                };
            }
            Err(e) => {
                return CreateOutcome::Unknown {
                    message: if e.is_timeout() {
                        "timeout waiting for Twilio".into()
                    } else {
                        "connection lost waiting for Twilio".into()
                    },
                };
            }
        };
        let status = resp.status().as_u16();
        tracing::Span::current().record("http.response.status_code", status);
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(_) if (200..300).contains(&status) => {
                return CreateOutcome::Unknown {
                    message: "accepted but the answer was cut off".into(),
                };
            }
            Err(_) => Default::default(),
        };
        if (200..300).contains(&status) {
            return match serde_json::from_slice::<MessageResource>(&bytes) {
                Ok(m) => CreateOutcome::Accepted(m),
                Err(_) => CreateOutcome::Unknown {
                    message: "accepted with an unreadable answer".into(),
                },
            };
        }
        let err: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
        let code = err.as_ref().and_then(|e| e.code);
        let message = err
            .and_then(|e| e.message)
            .unwrap_or_else(|| format!("HTTP {status}"));
        let code_s = code.map(|c| c.to_string());
        if status == 429 || code == Some(20429) || status >= 500 {
            CreateOutcome::Retryable {
                http_status: Some(status),
                code: code_s,
                message,
                retry_after,
            }
        } else {
            CreateOutcome::Permanent {
                http_status: Some(status),
                code: code_s,
                message,
            }
        }
    }

    /// Fetches a message's current state; None when Twilio does not know the SID.
    #[tracing::instrument(name = "twilio_fetch_message", skip_all, fields(otel.kind = "client"))]
    pub async fn fetch(&self, sid: &str) -> anyhow::Result<Option<MessageResource>> {
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages/{}.json",
            self.base, self.account_sid, sid
        );
        let request = self
            .http
            .get(url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()));
        let resp = crate::telemetry::inject(request, &tracing::Span::current())
            .send()
            .await?;
        if resp.status().as_u16() == 404 {
            return Ok(None);
        }
        let resp = resp.error_for_status()?;
        Ok(Some(resp.json().await?))
    }

    /// The inbound messages Twilio received at `to` (or at any of our numbers) since `since`
    /// (`DateSent>`), every page of them: what the backfill compares with what we stored.
    #[tracing::instrument(name = "twilio_list_inbound", skip_all, fields(otel.kind = "client"))]
    pub async fn list_received(
        &self,
        to: Option<&str>,
        since: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<Vec<MessageResource>> {
        // Built before any await: the serializer is not Send.
        let query = {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            if let Some(to) = to {
                q.append_pair("To", to);
            }
            q.append_pair(
                "DateSent>",
                &since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )
            .append_pair("PageSize", "1000")
            .finish()
        };
        let mut url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json?{query}",
            self.base, self.account_sid
        );
        let mut received = Vec::new();
        loop {
            let request = self
                .http
                .get(&url)
                .basic_auth(&self.account_sid, Some(self.auth_token.expose()));
            let page: MessagePage = crate::telemetry::inject(request, &tracing::Span::current())
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            received.extend(
                page.messages
                    .into_iter()
                    .filter(|m| m.direction.as_deref() == Some("inbound")),
            );
            match page.next_page_uri {
                Some(next) => url = format!("{}{next}", self.base),
                None => return Ok(received),
            }
        }
    }

    /// A message's media from its Media subresource, as (URL, content type): the URL is the
    /// media's own (the subresource's `uri` without `.json`), as an MMS webhook's `MediaUrlN`.
    #[tracing::instrument(name = "twilio_list_media", skip_all, fields(otel.kind = "client"))]
    pub async fn media(&self, sid: &str) -> anyhow::Result<Vec<(String, String)>> {
        #[derive(Deserialize)]
        struct Media {
            content_type: String,
            uri: String,
        }
        #[derive(Deserialize)]
        struct MediaPage {
            media_list: Vec<Media>,
        }
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages/{sid}/Media.json",
            self.base, self.account_sid
        );
        let request = self
            .http
            .get(url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()));
        let page: MediaPage = crate::telemetry::inject(request, &tracing::Span::current())
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(page
            .media_list
            .into_iter()
            .map(|m| {
                let own = m.uri.strip_suffix(".json").unwrap_or(&m.uri).to_owned();
                (format!("{}{own}", self.base), m.content_type)
            })
            .collect())
    }

    /// Searches Twilio's message list (ListMessage, newest first, by `To`) for a message we may
    /// have created since `want.since`, following the pages until the messages are older. Err
    /// when the list cannot be read: the caller then waits, never guesses.
    #[tracing::instrument(name = "twilio_list_messages", skip_all, fields(otel.kind = "client"))]
    pub async fn find_sent(
        &self,
        want: &SentMessage<'_>,
    ) -> anyhow::Result<Option<MessageResource>> {
        let mut url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json?{}",
            self.base,
            self.account_sid,
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("To", want.to)
                .append_pair("PageSize", "100")
                .finish()
        );
        for _ in 0..20 {
            let request = self
                .http
                .get(&url)
                .basic_auth(&self.account_sid, Some(self.auth_token.expose()));
            let page: MessagePage = crate::telemetry::inject(request, &tracing::Span::current())
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            if let Some(found) = page.messages.iter().find(|m| m.matches(want)) {
                return Ok(Some(found.clone()));
            }
            // Newest first: once a page reaches before the attempt, nothing older can match.
            let older = page.messages.last().and_then(MessageResource::created);
            match page.next_page_uri {
                Some(next) if older.is_none_or(|t| t >= want.since) => {
                    url = format!("{}{next}", self.base);
                }
                _ => return Ok(None),
            }
        }
        anyhow::bail!("the message list is longer than 20 pages since the attempt")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_token() {
        let client = TwilioClient::new(
            "https://api.twilio.com",
            "AC00000000000000000000000000000000",
            &Secret::new("tok-3n-s3cret"),
            Duration::from_secs(1),
        );
        assert!(!format!("{client:?}").contains("tok-3n-s3cret"));
    }
}
