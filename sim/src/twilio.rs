//! Twilio Programmable Messaging REST simulator: sending SMS, reading a message back, and signed
//! status callbacks, with injectable faults and counters for tests.
//!
//! # The contract we expect from Twilio (and simulate)
//!
//! Point the service's `TWILIO_API_BASE` at [`TwilioSimHandle::base_url`] (`http://IP:PORT`, no
//! trailing slash). Every REST request carries HTTP Basic auth `AccountSid:AuthToken`; anything
//! else answers `401` `{"code":20003,"message":"Authenticate","more_info":
//! "https://www.twilio.com/docs/errors/20003","status":401}`. Errors are always JSON
//! `{"code", "message", "more_info", "status"}` with a Twilio error code.
//!
//! - `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded: `To`, `From` or
//!   `MessagingServiceSid` (one required), `Body` (required unless a `MediaUrl` is given),
//!   `MediaUrl` (repeatable), `StatusCallback` (optional URL). Answers `201` with the Message
//!   resource: `sid` (`SM` + 32 lowercase hex), `account_sid`, `to`, `from` (`null` with a
//!   messaging service and no `From`), `messaging_service_sid`, `body`, `status` (`queued`, or
//!   `accepted` with a messaging service), `num_segments` and `num_media` (strings; segments by
//!   the GSM-7/UCS-2 rules of [`webhook::num_segments`]), `direction` `outbound-api`,
//!   `api_version` `2010-04-01`, `date_created`/`date_updated` (RFC 2822), `date_sent`,
//!   `error_code`, `error_message` and `price` (`null` at creation), `price_unit`, `uri`,
//!   `subresource_uris`. Validation, in this order, all `400`:
//!   - `21604` `To` missing; `21603` neither `From` nor `MessagingServiceSid`; `21701`
//!     `MessagingServiceSid` not `MG` + 32 hex; `21602` no `Body` and no `MediaUrl`;
//!   - `21211` `To` not E.164 (`+`, 7 to 15 digits, no formatting); `21212` `From` neither E.164,
//!     a short code (3 to 8 digits) nor an alphanumeric sender ID (up to 11 letters, digits,
//!     spaces, at least one letter); `21266` `To` equals `From`;
//!   - `21617` `Body` over 1600 characters; `21620` a `MediaUrl` not an http(s) URL; `21609`
//!     `StatusCallback` not an http(s) URL.
//! - `GET /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json`: the message as it is now (its
//!   status moves along as its callbacks go out), or `404` code `20404`.
//! - A path `AccountSid` other than the authenticated one answers `404` `20404`; a wrong method
//!   `405` `20004`.
//!
//! Every created message then lives through its status sequence in a background task, one step
//! every `callback_delay_ms` (20 ms by default): `queued` -> `sent` -> `delivered` (see
//! `final_status` for `undelivered` and `failed`). At each step the resource takes the step's
//! status (`date_sent` is set once sent; `from` becomes [`SERVICE_FROM`] (`+15550001000`) for a
//! messaging service without `From`; failures set `error_code`/`error_message`), and when the
//! create had a `StatusCallback` the sim POSTs it a form-encoded callback signed with
//! `X-Twilio-Signature` (over the exact `StatusCallback` string, query included, with the sim's
//! auth token): `SmsSid`, `SmsStatus`, `MessageStatus`, `To`, `MessagingServiceSid` (with a
//! service), `MessageSid`, `AccountSid`, `From`, `ApiVersion`, plus `ErrorCode` and `ErrorMessage`
//! for `undelivered` and `failed`. An answer other than `2xx` (or none within 10 s) counts as a
//! failed callback; nothing is retried. The callback options in force at creation apply to the
//! whole sequence.
//!
//! # Control API (never affected by faults or auth)
//!
//! - `POST /_sim/twilio/faults` with a JSON object (all fields optional; replaces the current
//!   faults; unknown fields are refused with `400`). `GET` shows the current faults and what is
//!   left of the `*_next` counters.
//!   - `fail_next` (u32), `fail_status` (u16, `500` by default), `fail_code` (Twilio code in the
//!     body, default `20000 + status`): the next N creates answer that status.
//!   - `rate_limit_next` (u32), `retry_after_secs` (optional u32): the next N creates answer `429`
//!     code `20429`, with `Retry-After` when set.
//!   - `timeout_next` (u32): the next N creates hang for 30 s so the caller times out.
//!     `timeout_creates` (bool, default `true`): a hung create still creates its message and
//!     runs its callbacks at once, as when Twilio accepted a request whose answer was lost;
//!     `false` creates nothing. After the hang the request answers `201` (or `504` code `20504`
//!     if nothing was created).
//!   - `permanent_errors` (`{"+15550000009": 21610}`): creates to exactly that `To` answer `400`
//!     with that code and Twilio's message for it (`21211` invalid To, `21610` unsubscribed
//!     recipient, `21614` not a mobile number, `21408` region not enabled, `21606` From not
//!     valid, `21612` cannot route; others get a generic message).
//!   - `final_status` (`{"+15550000010": {"status": "undelivered", "error_code": 30003}}`;
//!     `error_code` defaults to `30003`): messages to that `To` end `queued` -> `sent` ->
//!     `undelivered`, or `queued` -> `failed`, with that `ErrorCode`.
//!   - `duplicate_callbacks` (each callback posted twice in a row), `out_of_order` (callbacks
//!     posted in reverse: `delivered`, `sent`, `queued`; the resource still moves forward),
//!     `callback_delay_ms` (u64, default `20`), `no_callbacks` (statuses move but nothing is
//!     posted, as if every callback were lost).
//!   - `down` (bool): every REST request answers `503` code `20503` until cleared.
//!   - `outage` (bool): every create answers, in turn, `429` code `20429` (with `Retry-After`
//!     when `retry_after_secs` is set) and `fail_status` (`500` by default), creating nothing,
//!     until cleared: Twilio rate-limiting and failing for a while. Reads still work.
//! - `GET /_sim/twilio/stats`: `create_attempts` (every create POST, whatever its answer),
//!   `creates` (messages created, hung ones included), `unauthorized`, `messages` (`[{sid, to,
//!   from, messaging_service_sid, body, media_urls, status_callback}]` in creation order),
//!   `by_callback_id` (creates per value of the `message_id` query parameter of the
//!   `StatusCallback` URL: our service sends `?message_id=<uuid>`, so "sent exactly once" is a
//!   count of 1), `callbacks_sent` (answered `2xx`), `callbacks_failed`, and `callbacks_pending`
//!   (messages whose status sequence is still running; live, not cleared by reset).
//! - `POST /_sim/twilio/reset`: clears faults and stats; messages stay readable.
//!
//! Order of processing for a create: count the attempt, `down`, auth, path account, injected
//! fault (`outage`, then `timeout_next`, then `rate_limit_next`, then `fail_next`; one fault per
//! request),
//! validation, `permanent_errors`, create. A request refused before the fault step (`503` down,
//! `401`, `404`) consumes no `*_next` counter.
//!
//! # From Rust
//!
//! [`TwilioSim::start`]`(bind, account_sid, auth_token)` serves one account on its own port and
//! returns a [`TwilioSimHandle`] (`base_url`, `set_faults`, `stats`, `reset`, `message`,
//! `wait_for_callbacks`, `shutdown`; stops on drop). [`twilio_router`]`(`[`TwilioState`]`)` mounts
//! the same API next to other simulators with [`server::app`], as `sms-sim serve` does.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        Path, State,
        rejection::{BytesRejection, PathRejection},
    },
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use crate::{
    server::{self, SimServer},
    webhook,
};

/// How long a `timeout_next` create hangs: longer than any sane client timeout.
pub const HANG: Duration = Duration::from_secs(30);
/// The local run's account (`AC` + 32 characters).
pub const DEFAULT_ACCOUNT_SID: &str = webhook::DEFAULT_ACCOUNT_SID;
/// The local run's auth token.
pub const DEFAULT_AUTH_TOKEN: &str = "local-dev-token";
/// The sender a messaging service picks when the create gave no `From` (our local number).
pub const SERVICE_FROM: &str = webhook::DEFAULT_TO;
pub const API_VERSION: &str = "2010-04-01";
/// Twilio gives up on a status callback after about this long.
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Twilio's limit on a (concatenated) body.
const MAX_BODY_CHARS: usize = 1600;

/// Status of an outbound message, as Twilio spells it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    Accepted,
    Queued,
    Sending,
    Sent,
    Delivered,
    Undelivered,
    Failed,
    /// An inbound message.
    Received,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Undelivered => "undelivered",
            Self::Failed => "failed",
            Self::Received => "received",
        }
    }
}

/// The Message resource as Twilio's REST API returns it (the fields a client reads).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub sid: String,
    pub account_sid: String,
    pub to: String,
    pub from: Option<String>,
    pub messaging_service_sid: Option<String>,
    pub body: String,
    pub status: MessageStatus,
    pub num_segments: String,
    pub num_media: String,
    pub direction: String,
    pub api_version: String,
    pub date_created: String,
    pub date_updated: String,
    pub date_sent: Option<String>,
    pub error_code: Option<u32>,
    pub error_message: Option<String>,
    pub price: Option<String>,
    pub price_unit: String,
    pub uri: String,
    pub subresource_uris: BTreeMap<String, String>,
}

/// How a message to a given number ends instead of `delivered`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FailedStatus {
    /// `queued` -> `sent` -> `undelivered`: the carrier could not deliver it.
    Undelivered,
    /// `queued` -> `failed`: it never left Twilio.
    Failed,
}

/// A `final_status` entry: the status and the `ErrorCode` the sequence ends with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FinalStatus {
    pub status: FailedStatus,
    #[serde(default = "default_delivery_error")]
    pub error_code: u32,
}

fn default_delivery_error() -> u32 {
    30003
}

/// Injected misbehaviour. Setting faults replaces all of them. Unknown fields are refused so a
/// misspelt fault does not silently do nothing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// The next N creates answer `fail_status`.
    pub fail_next: u32,
    /// Status for `fail_next` (`500` by default).
    pub fail_status: u16,
    /// Twilio code in the `fail_next` body; `20000 + fail_status` when unset.
    pub fail_code: Option<u32>,
    /// The next N creates answer `429` code `20429`.
    pub rate_limit_next: u32,
    /// `Retry-After` of those `429`s, when set.
    pub retry_after_secs: Option<u32>,
    /// The next N creates hang for [`HANG`] (callers time out).
    pub timeout_next: u32,
    /// Whether a hung create still creates its message (and sends its callbacks): an "unknown
    /// outcome" for the caller. `true` by default.
    pub timeout_creates: bool,
    /// `To` (exactly as posted) -> Twilio code: creates to it answer `400` with that code.
    pub permanent_errors: BTreeMap<String, u32>,
    /// `To` (exactly as posted) -> how its messages end.
    pub final_status: BTreeMap<String, FinalStatus>,
    /// Post every callback twice.
    pub duplicate_callbacks: bool,
    /// Post callbacks in reverse order (the resource still moves forward).
    pub out_of_order: bool,
    /// Delay before each status step (`20` by default).
    pub callback_delay_ms: u64,
    /// Move statuses without posting any callback.
    pub no_callbacks: bool,
    /// Answer `503` to every REST request until cleared.
    pub down: bool,
    /// Answer every create with `429` and `fail_status` in turn until cleared.
    pub outage: bool,
    /// Fetches of these SIDs answer `500` (code 20500) until cleared.
    #[serde(default)]
    pub fetch_fails: std::collections::BTreeSet<String>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            fail_next: 0,
            fail_status: 500,
            fail_code: None,
            rate_limit_next: 0,
            retry_after_secs: None,
            timeout_next: 0,
            timeout_creates: true,
            permanent_errors: BTreeMap::new(),
            final_status: BTreeMap::new(),
            duplicate_callbacks: false,
            out_of_order: false,
            callback_delay_ms: 20,
            no_callbacks: false,
            down: false,
            outage: false,
            fetch_fails: Default::default(),
        }
    }
}

/// A created message as the create request gave it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CreatedMessage {
    pub sid: String,
    pub to: String,
    pub from: Option<String>,
    pub messaging_service_sid: Option<String>,
    pub body: String,
    pub media_urls: Vec<String>,
    pub status_callback: Option<String>,
    /// The create request's W3C `traceparent` header, if it had one.
    #[serde(default)]
    pub traceparent: Option<String>,
}

/// What the simulated Twilio was asked and did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Stats {
    /// Create POSTs, whatever their answer.
    pub create_attempts: u64,
    /// Messages created (hung creates that created included).
    pub creates: u64,
    /// REST requests refused with `401`.
    pub unauthorized: u64,
    /// Created messages in creation order.
    pub messages: Vec<CreatedMessage>,
    /// Creates per `message_id` query value of their `StatusCallback`.
    pub by_callback_id: BTreeMap<String, u64>,
    /// Callbacks answered `2xx`.
    pub callbacks_sent: u64,
    /// Callbacks without a `2xx` answer (error status, refused, timed out).
    pub callbacks_failed: u64,
    /// Messages whose status sequence is still running (live; reset leaves it).
    pub callbacks_pending: u64,
}

#[derive(Default)]
struct Inner {
    messages: HashMap<String, Message>,
    /// Every message's SID, outbound and inbound, in the order it reached the account.
    order: Vec<String>,
    /// Each message's media: (URL, content type), for the Media subresource.
    media: HashMap<String, Vec<(String, String)>>,
    faults: Faults,
    stats: Stats,
}

/// Shared state of one simulated Twilio account; cheap to clone.
#[derive(Clone)]
pub struct TwilioState {
    inner: Arc<Mutex<Inner>>,
    account_sid: Arc<str>,
    auth_token: Arc<str>,
    /// Posts status callbacks.
    http: reqwest::Client,
    /// Status sequences still running.
    pending: Arc<watch::Sender<usize>>,
    /// Set when the server stops, so hanging requests and sequences let go.
    closed: Arc<watch::Sender<bool>>,
}

/// What an injected fault makes of a create.
enum Injected {
    Hang { creates: bool },
    RateLimit(Option<u32>),
    Fail { status: StatusCode, code: u32 },
}

/// One step of a status sequence.
#[derive(Clone)]
struct Step {
    status: MessageStatus,
    error: Option<u32>,
}

/// A status sequence to run for a created message, fixed at creation.
struct Lifecycle {
    sid: String,
    /// Where to post callbacks; `None` to post nothing.
    callback: Option<String>,
    steps: Vec<Step>,
    out_of_order: bool,
    duplicate: bool,
    delay: Duration,
}

/// Decrements the pending count however a sequence task ends.
struct PendingGuard(Arc<watch::Sender<usize>>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl TwilioState {
    /// An account whose REST requests must authenticate as `account_sid:auth_token`.
    pub fn new(account_sid: impl Into<String>, auth_token: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(CALLBACK_TIMEOUT)
            .user_agent("TwilioProxy/1.1")
            .build()
            .unwrap_or_default();
        Self {
            inner: Arc::default(),
            account_sid: Arc::from(account_sid.into()),
            auth_token: Arc::from(auth_token.into()),
            http,
            pending: Arc::new(watch::channel(0).0),
            closed: Arc::new(watch::channel(false).0),
        }
    }

    /// A panic elsewhere must not turn every later request into a panic too.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn account_sid(&self) -> &str {
        &self.account_sid
    }

    /// Also the key status callbacks are signed with.
    pub fn auth_token(&self) -> &str {
        &self.auth_token
    }

    /// Replaces the current faults.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// The current faults, with what is left of the `*_next` counters.
    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub fn stats(&self) -> Stats {
        let mut stats = self.lock().stats.clone();
        stats.callbacks_pending = *self.pending.borrow() as u64;
        stats
    }

    /// Clears faults and stats; messages stay readable.
    pub fn reset(&self) {
        let mut inner = self.lock();
        inner.faults = Faults::default();
        inner.stats = Stats::default();
    }

    /// A message as `GET .../Messages/{sid}.json` would return it now.
    pub fn message(&self, sid: &str) -> Option<Message> {
        self.lock().messages.get(sid).cloned()
    }

    /// An SMS someone sent to one of the account's numbers: kept in the message log (direction
    /// `inbound`, status `received`) as Twilio keeps it, whether or not its webhook got through.
    pub fn receive_inbound(
        &self,
        sid: &str,
        from: &str,
        to: &str,
        body: &str,
        media: &[(&str, &str)],
    ) -> Message {
        let now = rfc2822_now();
        let message = Message {
            sid: sid.to_owned(),
            account_sid: self.account_sid.to_string(),
            to: to.to_owned(),
            from: Some(from.to_owned()),
            messaging_service_sid: None,
            body: body.to_owned(),
            status: MessageStatus::Received,
            num_segments: webhook::num_segments(body).to_string(),
            num_media: media.len().to_string(),
            direction: "inbound".into(),
            api_version: API_VERSION.into(),
            date_created: now.clone(),
            date_updated: now.clone(),
            date_sent: Some(now),
            error_code: None,
            error_message: None,
            price: None,
            price_unit: "USD".into(),
            uri: format!(
                "/{API_VERSION}/Accounts/{}/Messages/{sid}.json",
                self.account_sid
            ),
            subresource_uris: BTreeMap::from([(
                "media".to_owned(),
                format!(
                    "/{API_VERSION}/Accounts/{}/Messages/{sid}/Media.json",
                    self.account_sid
                ),
            )]),
        };
        let mut inner = self.lock();
        inner.messages.insert(sid.to_owned(), message.clone());
        inner.order.push(sid.to_owned());
        let media = media
            .iter()
            .map(|(u, t)| ((*u).to_owned(), (*t).to_owned()))
            .collect();
        inner.media.insert(sid.to_owned(), media);
        message
    }

    /// A message's media as (URL, content type); None for an unknown message.
    fn media_of(&self, sid: &str) -> Option<Vec<(String, String)>> {
        let inner = self.lock();
        inner
            .messages
            .contains_key(sid)
            .then(|| inner.media.get(sid).cloned().unwrap_or_default())
    }

    /// Waits until every status sequence has finished (all callbacks posted); `false` if that
    /// took longer than `timeout`.
    pub async fn wait_for_callbacks(&self, timeout: Duration) -> bool {
        let mut pending = self.pending.subscribe();
        tokio::time::timeout(timeout, pending.wait_for(|n| *n == 0))
            .await
            .is_ok()
    }

    /// Releases hanging requests, stops running status sequences, and makes later hangs and
    /// sequences end at once.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Sleeps `d` unless closed first; `false` when closed.
    async fn pause(&self, d: Duration) -> bool {
        let mut closed = self.closed.subscribe();
        if *closed.borrow() {
            return false;
        }
        if d.is_zero() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = closed.wait_for(|c| *c) => false,
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some((user, password)) = basic_credentials(headers) else {
            return false;
        };
        user == *self.account_sid
            && shared::twilio::signature::constant_time_eq(&password, &self.auth_token)
    }

    /// `down`, auth and path account: the common front of every REST endpoint.
    fn admit(&self, headers: &HeaderMap, path_account: &str, resource: &str) -> Option<Response> {
        if self.lock().faults.down {
            return Some(twilio_error(
                StatusCode::SERVICE_UNAVAILABLE,
                20503,
                "Service Unavailable",
            ));
        }
        if !self.authorized(headers) {
            self.lock().stats.unauthorized += 1;
            let mut resp = twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Twilio API\""),
            );
            return Some(resp);
        }
        if path_account != &*self.account_sid {
            return Some(not_found(resource));
        }
        None
    }

    /// Takes the next injected fault for a create, if any.
    fn take_injected(&self) -> Option<Injected> {
        let mut inner = self.lock();
        let attempts = inner.stats.create_attempts;
        let f = &mut inner.faults;
        if f.outage {
            // Alternating by attempt number, so a client sees both kinds of answer.
            if attempts % 2 == 1 {
                Some(Injected::RateLimit(f.retry_after_secs))
            } else {
                let status = StatusCode::from_u16(f.fail_status)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let code = f.fail_code.unwrap_or(20_000 + u32::from(status.as_u16()));
                Some(Injected::Fail { status, code })
            }
        } else if f.timeout_next > 0 {
            f.timeout_next -= 1;
            Some(Injected::Hang {
                creates: f.timeout_creates,
            })
        } else if f.rate_limit_next > 0 {
            f.rate_limit_next -= 1;
            Some(Injected::RateLimit(f.retry_after_secs))
        } else if f.fail_next > 0 {
            f.fail_next -= 1;
            let status =
                StatusCode::from_u16(f.fail_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let code = f.fail_code.unwrap_or(20_000 + u32::from(status.as_u16()));
            Some(Injected::Fail { status, code })
        } else {
            None
        }
    }

    /// Stores a validated message, records it, and starts its status sequence.
    fn create(&self, req: CreateRequest) -> Message {
        // Twilio's SIDs: MM for a message with media, SM otherwise.
        let sid = match req.media_urls.is_empty() {
            true => webhook::new_message_sid(),
            false => format!("MM{}", &webhook::new_message_sid()[2..]),
        };
        let now = rfc2822_now();
        let uri = format!(
            "/{API_VERSION}/Accounts/{}/Messages/{sid}.json",
            self.account_sid
        );
        let media_uri = format!(
            "/{API_VERSION}/Accounts/{}/Messages/{sid}/Media.json",
            self.account_sid
        );
        let message = Message {
            sid: sid.clone(),
            account_sid: self.account_sid.to_string(),
            to: req.to.clone(),
            from: req.from.clone(),
            messaging_service_sid: req.messaging_service_sid.clone(),
            body: req.body.clone(),
            status: if req.messaging_service_sid.is_some() {
                MessageStatus::Accepted
            } else {
                MessageStatus::Queued
            },
            num_segments: webhook::num_segments(&req.body).to_string(),
            num_media: req.media_urls.len().to_string(),
            direction: "outbound-api".into(),
            api_version: API_VERSION.into(),
            date_created: now.clone(),
            date_updated: now,
            date_sent: None,
            error_code: None,
            error_message: None,
            price: None,
            price_unit: "USD".into(),
            uri,
            subresource_uris: BTreeMap::from([("media".to_owned(), media_uri)]),
        };
        let callback_id = req.status_callback.as_deref().and_then(callback_id);
        let lifecycle = {
            let mut inner = self.lock();
            inner.messages.insert(sid.clone(), message.clone());
            inner.order.push(sid.clone());
            let media: Vec<(String, String)> = req
                .media_urls
                .iter()
                .map(|u| (u.clone(), content_type_of(u).to_owned()))
                .collect();
            inner.media.insert(sid.clone(), media);
            let stats = &mut inner.stats;
            stats.creates += 1;
            if let Some(id) = callback_id {
                *stats.by_callback_id.entry(id).or_default() += 1;
            }
            stats.messages.push(CreatedMessage {
                sid: sid.clone(),
                to: req.to.clone(),
                from: req.from,
                messaging_service_sid: req.messaging_service_sid,
                body: req.body,
                media_urls: req.media_urls,
                status_callback: req.status_callback.clone(),
                traceparent: req.traceparent,
            });
            let f = &inner.faults;
            let steps = match f.final_status.get(&req.to) {
                None => vec![
                    Step::ok(MessageStatus::Queued),
                    Step::ok(MessageStatus::Sent),
                    Step::ok(MessageStatus::Delivered),
                ],
                Some(FinalStatus {
                    status: FailedStatus::Undelivered,
                    error_code,
                }) => vec![
                    Step::ok(MessageStatus::Queued),
                    Step::ok(MessageStatus::Sent),
                    Step {
                        status: MessageStatus::Undelivered,
                        error: Some(*error_code),
                    },
                ],
                Some(FinalStatus {
                    status: FailedStatus::Failed,
                    error_code,
                }) => vec![
                    Step::ok(MessageStatus::Queued),
                    Step {
                        status: MessageStatus::Failed,
                        error: Some(*error_code),
                    },
                ],
            };
            Lifecycle {
                sid,
                callback: req.status_callback.filter(|_| !f.no_callbacks),
                steps,
                out_of_order: f.out_of_order,
                duplicate: f.duplicate_callbacks,
                delay: Duration::from_millis(f.callback_delay_ms),
            }
        };
        self.pending.send_modify(|n| *n += 1);
        let guard = PendingGuard(self.pending.clone());
        tokio::spawn(self.clone().run(lifecycle, guard));
        message
    }

    /// Moves the message through its steps, posting a callback at each.
    async fn run(self, life: Lifecycle, _guard: PendingGuard) {
        let mut emitted = life.steps.clone();
        if life.out_of_order {
            emitted.reverse();
        }
        for (step, posted) in life.steps.iter().zip(&emitted) {
            if !self.pause(life.delay).await {
                return;
            }
            let Some(message) = self.advance(&life.sid, step) else {
                return;
            };
            let Some(url) = &life.callback else {
                continue;
            };
            let params = self.callback_params(&message, posted);
            for _ in 0..if life.duplicate { 2 } else { 1 } {
                self.post_callback(url, &params).await;
            }
        }
    }

    /// Applies `step` to the stored message; the message after it.
    fn advance(&self, sid: &str, step: &Step) -> Option<Message> {
        let mut inner = self.lock();
        let m = inner.messages.get_mut(sid)?;
        let now = rfc2822_now();
        m.status = step.status;
        if m.from.is_none() {
            m.from = Some(SERVICE_FROM.to_owned());
        }
        if matches!(
            step.status,
            MessageStatus::Sent | MessageStatus::Delivered | MessageStatus::Undelivered
        ) && m.date_sent.is_none()
        {
            m.date_sent = Some(now.clone());
        }
        if let Some(code) = step.error {
            m.error_code = Some(code);
            m.error_message = Some(delivery_error_message(code).to_owned());
        }
        m.date_updated = now;
        Some(m.clone())
    }

    /// The form Twilio posts to a StatusCallback for `message` at status `step`.
    fn callback_params(&self, message: &Message, step: &Step) -> Vec<(String, String)> {
        let status = step.status.as_str();
        let from = message.from.as_deref().unwrap_or(SERVICE_FROM);
        let mut p: Vec<(&str, &str)> = vec![
            ("SmsSid", message.sid.as_str()),
            ("SmsStatus", status),
            ("MessageStatus", status),
            ("To", message.to.as_str()),
        ];
        if let Some(service) = &message.messaging_service_sid {
            p.push(("MessagingServiceSid", service.as_str()));
        }
        p.extend([
            ("MessageSid", message.sid.as_str()),
            ("AccountSid", &*self.account_sid),
            ("From", from),
            ("ApiVersion", API_VERSION),
        ]);
        let code = step.error.map(|c| c.to_string());
        if let (Some(code), Some(c)) = (code.as_deref(), step.error) {
            p.push(("ErrorCode", code));
            p.push(("ErrorMessage", delivery_error_message(c)));
        }
        p.into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// Posts one signed callback and counts the outcome; never retries.
    async fn post_callback(&self, url: &str, params: &[(String, String)]) {
        let outcome = webhook::send(&self.http, url, &self.auth_token, params).await;
        let ok = match &outcome {
            Ok(resp) if resp.status().is_success() => true,
            Ok(resp) => {
                tracing::debug!(status = resp.status().as_u16(), "status callback refused");
                false
            }
            Err(e) => {
                tracing::debug!(error = %e, "status callback not delivered");
                false
            }
        };
        let mut inner = self.lock();
        if ok {
            inner.stats.callbacks_sent += 1;
        } else {
            inner.stats.callbacks_failed += 1;
        }
    }
}

impl Step {
    fn ok(status: MessageStatus) -> Self {
        Self {
            status,
            error: None,
        }
    }
}

/// `(user, password)` of an `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The value of the `message_id` query parameter of a StatusCallback URL.
fn callback_id(url: &str) -> Option<String> {
    url::Url::parse(url)
        .ok()?
        .query_pairs()
        .find(|(k, _)| k == "message_id")
        .map(|(_, v)| v.into_owned())
}

fn rfc2822_now() -> String {
    chrono::Utc::now().to_rfc2822()
}

/// Twilio's error body `{code, message, more_info, status}` with `status`.
pub(crate) fn twilio_error(status: StatusCode, code: u32, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({
            "code": code,
            "message": message.into(),
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        })),
    )
        .into_response()
}

fn bad_request(code: u32, message: impl Into<String>) -> Response {
    twilio_error(StatusCode::BAD_REQUEST, code, message)
}

fn not_found(resource: &str) -> Response {
    twilio_error(
        StatusCode::NOT_FOUND,
        20404,
        format!("The requested resource {resource} was not found"),
    )
}

/// Twilio's wording for the codes `permanent_errors` is meant for.
fn permanent_error_message(code: u32, to: &str, from: Option<&str>) -> String {
    let from = from.unwrap_or(SERVICE_FROM);
    match code {
        21211 => format!("The 'To' number {to} is not a valid phone number."),
        21408 => format!(
            "Permission to send an SMS has not been enabled for the region indicated by the 'To' \
             number: {to}."
        ),
        21606 => format!(
            "The From phone number {from} is not a valid, SMS-capable inbound phone number or \
             short code for your account."
        ),
        21610 => "Attempt to send to unsubscribed recipient".to_owned(),
        21612 => format!(
            "The 'To' phone number: {to}, is not currently reachable using the 'From' phone \
             number: {from} via SMS."
        ),
        21614 => format!("To number: {to}, is not a mobile number"),
        _ => format!("Message to {to} refused (simulated error {code})"),
    }
}

/// Twilio's short description of a delivery error code (`ErrorMessage`, `error_message`).
fn delivery_error_message(code: u32) -> &'static str {
    match code {
        30001 => "Queue overflow",
        30002 => "Account suspended",
        30003 => "Unreachable destination handset",
        30004 => "Message blocked",
        30005 => "Unknown destination handset",
        30006 => "Landline or unreachable carrier",
        30007 => "Message filtered",
        30008 => "Unknown error",
        30034 => "Message from an unregistered number",
        _ => "Delivery failed",
    }
}

/// `+` and 7 to 15 digits, the first not 0.
fn is_e164(s: &str) -> bool {
    s.strip_prefix('+').is_some_and(|d| {
        (7..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0')
    })
}

/// E.164, a short code or an alphanumeric sender ID.
fn is_valid_from(s: &str) -> bool {
    let short_code = (3..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    let alphanumeric = (1..=11).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ')
        && s.bytes().any(|b| b.is_ascii_alphabetic());
    is_e164(s) || short_code || alphanumeric
}

fn is_http_url(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
}

/// A create's parameters, validated.
struct CreateRequest {
    to: String,
    from: Option<String>,
    messaging_service_sid: Option<String>,
    body: String,
    media_urls: Vec<String>,
    status_callback: Option<String>,
    /// A header, not a form field: set by the handler.
    traceparent: Option<String>,
}

/// A create refused with `400`: its Twilio code and message.
struct Refusal {
    code: u32,
    message: String,
}

fn refuse(code: u32, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

/// Validates a create form the way Twilio does.
fn parse_create(form: &[u8], permanent: &BTreeMap<String, u32>) -> Result<CreateRequest, Refusal> {
    let params: Vec<(String, String)> = url::form_urlencoded::parse(form).into_owned().collect();
    // Twilio takes the first of a repeated single-valued field; empty counts as absent.
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let media_urls: Vec<String> = params
        .iter()
        .filter(|(k, v)| k == "MediaUrl" && !v.is_empty())
        .map(|(_, v)| v.clone())
        .collect();
    let Some(to) = get("To") else {
        return Err(refuse(21604, "A 'To' phone number is required."));
    };
    let from = get("From");
    let service = get("MessagingServiceSid");
    if from.is_none() && service.is_none() {
        return Err(refuse(21603, "A 'From' phone number is required."));
    }
    if let Some(s) = &service {
        let valid =
            s.len() == 34 && s.starts_with("MG") && s[2..].bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            return Err(refuse(
                21701,
                format!("The Messaging Service Sid {s} is invalid."),
            ));
        }
    }
    let body = get("Body");
    if body.is_none() && media_urls.is_empty() {
        return Err(refuse(21602, "Message body is required."));
    }
    if !is_e164(&to) {
        return Err(refuse(
            21211,
            format!("The 'To' number {to} is not a valid phone number."),
        ));
    }
    if let Some(f) = &from {
        if !is_valid_from(f) {
            return Err(refuse(
                21212,
                format!(
                    "The 'From' number {f} is not a valid phone number, shortcode, or \
                     alphanumeric sender ID."
                ),
            ));
        }
        if *f == to {
            return Err(refuse(
                21266,
                format!("'To' and 'From' number cannot be the same: {to}"),
            ));
        }
    }
    let body = body.unwrap_or_default();
    if body.chars().count() > MAX_BODY_CHARS {
        return Err(refuse(
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        ));
    }
    if let Some(bad) = media_urls.iter().find(|u| !is_http_url(u)) {
        return Err(refuse(21620, format!("Invalid media URL(s): {bad}")));
    }
    let status_callback = get("StatusCallback");
    if let Some(cb) = &status_callback
        && !is_http_url(cb)
    {
        return Err(refuse(
            21609,
            format!("The StatusCallback URL {cb} is not a valid URL."),
        ));
    }
    if let Some(&code) = permanent.get(&to) {
        return Err(refuse(
            code,
            permanent_error_message(code, &to, from.as_deref()),
        ));
    }
    Ok(CreateRequest {
        to,
        from,
        messaging_service_sid: service,
        body,
        media_urls,
        status_callback,
        traceparent: None,
    })
}

async fn create_message(
    State(state): State<TwilioState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    state.lock().stats.create_attempts += 1;
    let account_sid = match path {
        Ok(Path(sid)) => sid,
        Err(e) => return twilio_error(StatusCode::NOT_FOUND, 20404, e.body_text()),
    };
    let resource = format!("/{API_VERSION}/Accounts/{account_sid}/Messages.json");
    if let Some(resp) = state.admit(&headers, &account_sid, &resource) {
        return resp;
    }
    let injected = state.take_injected();
    let creates = match injected {
        Some(Injected::RateLimit(retry_after)) => {
            let mut resp = twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
            if let Some(secs) = retry_after {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            return resp;
        }
        Some(Injected::Fail { status, code }) => {
            let reason = status.canonical_reason().unwrap_or("Injected failure");
            return twilio_error(status, code, reason);
        }
        Some(Injected::Hang { creates }) => creates,
        None => true,
    };
    let answer = match body {
        Err(e) => twilio_error(e.status(), 20001, e.body_text()),
        Ok(_) if !creates => twilio_error(StatusCode::GATEWAY_TIMEOUT, 20504, "Gateway Timeout"),
        Ok(form) => {
            let permanent = state.lock().faults.permanent_errors.clone();
            match parse_create(&form, &permanent) {
                Ok(mut req) => {
                    req.traceparent = headers
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    (StatusCode::CREATED, Json(state.create(req))).into_response()
                }
                Err(r) => bad_request(r.code, r.message),
            }
        }
    };
    if matches!(injected, Some(Injected::Hang { .. })) {
        // The outcome is settled (and any message created) before the hang, so a caller that
        // gives up still leaves the message behind.
        state.pause(HANG).await;
    }
    answer
}

async fn fetch_message(
    State(state): State<TwilioState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let (account_sid, file) = match path {
        Ok(Path(p)) => p,
        Err(e) => return twilio_error(StatusCode::NOT_FOUND, 20404, e.body_text()),
    };
    let resource = format!("/{API_VERSION}/Accounts/{account_sid}/Messages/{file}");
    if let Some(resp) = state.admit(&headers, &account_sid, &resource) {
        return resp;
    }
    if let Some(sid) = file.strip_suffix(".json")
        && state.lock().faults.fetch_fails.contains(sid)
    {
        return twilio_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            20500,
            "Internal Server Error",
        );
    }
    file.strip_suffix(".json")
        .and_then(|sid| state.message(sid))
        .map_or_else(|| not_found(&resource), |m| Json(m).into_response())
}

/// Twilio's ListMessage: newest first, filtered by `To`, `From`, `DateSent` (a day),
/// `DateSent<` and `DateSent>` (times, on `date_sent`), paged by `PageSize` (at most 1000) and
/// `Page`, with `next_page_uri` while more remain.
async fn list_messages(
    State(state): State<TwilioState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let account_sid = match path {
        Ok(Path(sid)) => sid,
        Err(e) => return twilio_error(StatusCode::NOT_FOUND, 20404, e.body_text()),
    };
    let resource = format!("/{API_VERSION}/Accounts/{account_sid}/Messages.json");
    if let Some(resp) = state.admit(&headers, &account_sid, &resource) {
        return resp;
    }
    let params: Vec<(String, String)> =
        url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let page_size: usize = get("PageSize")
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
        .clamp(1, 1000);
    let page: usize = get("Page").and_then(|v| v.parse().ok()).unwrap_or(0);
    let time = |v: &str| {
        chrono::DateTime::parse_from_rfc3339(v)
            .map(|t| t.with_timezone(&chrono::Utc))
            .or_else(|_| {
                chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
                    .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
            })
            .ok()
    };
    let (day, before, after) = (
        get("DateSent").and_then(|v| time(&v)),
        get("DateSent<").and_then(|v| time(&v)),
        get("DateSent>").and_then(|v| time(&v)),
    );
    let sent = |m: &Message| {
        m.date_sent
            .as_deref()
            .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    let all: Vec<Message> = {
        let inner = state.lock();
        inner
            .order
            .iter()
            .rev()
            .filter_map(|sid| inner.messages.get(sid).cloned())
            .filter(|m| get("To").is_none_or(|to| m.to == to))
            .filter(|m| get("From").is_none_or(|from| m.from.as_deref() == Some(from.as_str())))
            .filter(|m| {
                day.is_none_or(|d| sent(m).is_some_and(|t| t.date_naive() == d.date_naive()))
            })
            .filter(|m| before.is_none_or(|b| sent(m).is_some_and(|t| t <= b)))
            .filter(|m| after.is_none_or(|a| sent(m).is_some_and(|t| t >= a)))
            .collect()
    };
    let start = page * page_size;
    let messages: Vec<&Message> = all.iter().skip(start).take(page_size).collect();
    let next_page_uri = (start + page_size < all.len()).then(|| {
        let mut next: Vec<(String, String)> = params
            .iter()
            .filter(|(n, _)| n != "Page" && n != "PageSize")
            .cloned()
            .collect();
        next.push(("PageSize".into(), page_size.to_string()));
        next.push(("Page".into(), (page + 1).to_string()));
        let q: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(next)
            .finish();
        format!("{resource}?{q}")
    });
    Json(json!({
        "messages": messages,
        "page": page,
        "page_size": page_size,
        "start": start,
        "end": start + messages.len().saturating_sub(1),
        "uri": format!("{resource}?{}", query.unwrap_or_default()),
        "first_page_uri": format!("{resource}?PageSize={page_size}&Page=0"),
        "previous_page_uri": (page > 0).then(|| format!("{resource}?PageSize={page_size}&Page={}", page - 1)),
        "next_page_uri": next_page_uri,
    }))
    .into_response()
}

/// How Twilio delivers a webhook, from the connection overrides in the URL's fragment
/// (`#ct=...&rt=...&rc=...`): connect timeout, read timeout (ms) and retry count. Without them,
/// Twilio's defaults: 5 s to connect, 15 s in all, one retry, then it gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overrides {
    pub connect: Duration,
    pub read: Duration,
    pub retries: u32,
}

impl Overrides {
    /// The URL Twilio calls (and signs), without the fragment, and the overrides in it.
    pub fn from_url(url: &str) -> (String, Overrides) {
        let mut o = Overrides {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(15),
            retries: 1,
        };
        let Some((base, fragment)) = url.split_once('#') else {
            return (url.to_owned(), o);
        };
        for (k, v) in url::form_urlencoded::parse(fragment.as_bytes()) {
            let Ok(n) = v.parse::<u64>() else { continue };
            match k.as_ref() {
                "ct" => o.connect = Duration::from_millis(n),
                "rt" => o.read = Duration::from_millis(n),
                "rc" => o.retries = n.min(5) as u32,
                _ => {}
            }
        }
        (base.to_owned(), o)
    }
}

/// What became of one webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub attempts: u32,
    pub delivered: bool,
    /// The same on every attempt of one webhook (`I-Twilio-Idempotency-Token`).
    pub idempotency_token: String,
}

/// Posts a signed webhook as Twilio does: within the URL's connection overrides, retried up to
/// the retry count on a failed connection, a timeout or a 5xx, each attempt carrying the same
/// `I-Twilio-Idempotency-Token`; then it gives up (the message stays in the log).
pub async fn deliver_webhook(url: &str, auth_token: &str, params: &[(String, String)]) -> Delivery {
    let (target, o) = Overrides::from_url(url);
    let token = format!("{:032x}", rand::random::<u128>());
    let client = reqwest::Client::builder()
        .connect_timeout(o.connect)
        .timeout(o.read)
        .build()
        .expect("TLS backend initialises");
    let (body, signature) = webhook::signed_request(auth_token, &target, params);
    let mut attempts = 0;
    while attempts <= o.retries {
        attempts += 1;
        let sent = client
            .post(&target)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", &signature)
            .header("i-twilio-idempotency-token", &token)
            .body(body.clone())
            .send()
            .await;
        if let Ok(r) = &sent
            && (r.status().is_success() || r.status().is_client_error())
        {
            return Delivery {
                attempts,
                delivered: r.status().is_success(),
                idempotency_token: token,
            };
        }
    }
    Delivery {
        attempts,
        delivered: false,
        idempotency_token: token,
    }
}

/// A media URL's content type, by its extension (what Twilio reports from the fetched file).
fn content_type_of(url: &str) -> &'static str {
    match url
        .rsplit('.')
        .next()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("png") => "image/png",
        Some("gif") => "image/gif",
        Some("pdf") => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// The Media subresource: `{media_list: [{sid, parent_sid, content_type, uri}], ...}`; each
/// `uri` without `.json` is the media's own URL (as in an MMS webhook's `MediaUrlN`).
async fn list_media(
    State(state): State<TwilioState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let (account_sid, sid) = match path {
        Ok(Path(p)) => p,
        Err(e) => return twilio_error(StatusCode::NOT_FOUND, 20404, e.body_text()),
    };
    let resource = format!("/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}/Media.json");
    if let Some(resp) = state.admit(&headers, &account_sid, &resource) {
        return resp;
    }
    let Some(media) = state.media_of(&sid) else {
        return not_found(&resource);
    };
    let list: Vec<serde_json::Value> = media
        .iter()
        .enumerate()
        .map(|(i, (_, content_type))| {
            let me = format!("ME{:032x}", i as u128 + 1);
            json!({
                "sid": me,
                "parent_sid": sid,
                "account_sid": account_sid,
                "content_type": content_type,
                "uri": format!("/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}/Media/{me}.json"),
            })
        })
        .collect();
    Json(json!({
        "media_list": list,
        "page": 0,
        "page_size": 50,
        "uri": resource,
        "first_page_uri": format!("{resource}?PageSize=50&Page=0"),
        "next_page_uri": null,
        "previous_page_uri": null,
    }))
    .into_response()
}

async fn method_not_allowed() -> Response {
    twilio_error(StatusCode::METHOD_NOT_ALLOWED, 20004, "Method not allowed")
}

impl server::Controlled for TwilioState {
    type Faults = Faults;
    type Stats = Stats;
    fn set_faults(&self, faults: Faults) {
        TwilioState::set_faults(self, faults)
    }
    fn faults(&self) -> Faults {
        TwilioState::faults(self)
    }
    fn stats(&self) -> Stats {
        TwilioState::stats(self)
    }
    fn reset(&self) {
        TwilioState::reset(self)
    }
    fn fail_status(faults: &Faults) -> u16 {
        faults.fail_status
    }
}

/// Twilio's Messages routes plus the `/_sim/twilio` control API. It sets no fallback, so it
/// merges into a larger simulator (see [`server::app`]).
pub fn twilio_router(state: TwilioState) -> Router {
    Router::new()
        .route(
            "/2010-04-01/Accounts/{account_sid}/Messages.json",
            post(create_message)
                .get(list_messages)
                .fallback(method_not_allowed),
        )
        .route(
            "/2010-04-01/Accounts/{account_sid}/Messages/{file}",
            get(fetch_message).fallback(method_not_allowed),
        )
        .route(
            "/2010-04-01/Accounts/{account_sid}/Messages/{sid}/Media.json",
            get(list_media).fallback(method_not_allowed),
        )
        .merge(server::control_routes::<TwilioState>("twilio"))
        .with_state(state)
}

/// Starts simulated Twilio accounts.
pub struct TwilioSim;

/// A running simulated Twilio; stops when dropped.
pub struct TwilioSimHandle {
    addr: SocketAddr,
    /// `None` only once `shutdown` has taken it.
    server: Option<SimServer>,
    state: TwilioState,
}

impl TwilioSim {
    /// Serves the Twilio REST API for `account_sid` / `auth_token` on `bind` (`127.0.0.1:0` for
    /// tests).
    pub async fn start(
        bind: SocketAddr,
        account_sid: &str,
        auth_token: &str,
    ) -> anyhow::Result<TwilioSimHandle> {
        anyhow::ensure!(!account_sid.is_empty(), "account SID must not be empty");
        anyhow::ensure!(!auth_token.is_empty(), "auth token must not be empty");
        let state = TwilioState::new(account_sid, auth_token);
        let server = SimServer::start(bind, server::app([twilio_router(state.clone())])).await?;
        Ok(TwilioSimHandle {
            addr: server.addr(),
            server: Some(server),
            state,
        })
    }
}

impl TwilioSimHandle {
    /// `http://127.0.0.1:PORT`, no trailing slash: the service's `TWILIO_API_BASE`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// `{base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json`.
    pub fn messages_url(&self) -> String {
        format!(
            "{}/{API_VERSION}/Accounts/{}/Messages.json",
            self.base_url(),
            self.state.account_sid()
        )
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn state(&self) -> &TwilioState {
        &self.state
    }
    pub fn account_sid(&self) -> &str {
        self.state.account_sid()
    }
    pub fn auth_token(&self) -> &str {
        self.state.auth_token()
    }
    pub fn set_faults(&self, faults: Faults) {
        self.state.set_faults(faults);
    }
    pub fn faults(&self) -> Faults {
        self.state.faults()
    }
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }
    pub fn reset(&self) {
        self.state.reset();
    }
    pub fn message(&self, sid: &str) -> Option<Message> {
        self.state.message(sid)
    }
    /// An SMS arrives for the account: kept in the message log, and its webhook delivered to `url`
    /// as Twilio delivers one. See [`deliver_webhook`].
    pub async fn deliver_inbound(&self, url: &str, sms: &webhook::InboundSms) -> Delivery {
        self.state
            .receive_inbound(&sms.message_sid, &sms.from, &sms.to, &sms.body, &[]);
        deliver_webhook(
            url,
            &self.state.auth_token,
            &sms.params(&self.state.account_sid),
        )
        .await
    }

    /// See [`TwilioState::receive_inbound`].
    pub fn receive_inbound(
        &self,
        sid: &str,
        from: &str,
        to: &str,
        body: &str,
        media: &[(&str, &str)],
    ) -> Message {
        self.state.receive_inbound(sid, from, to, body, media)
    }
    /// See [`TwilioState::wait_for_callbacks`].
    pub async fn wait_for_callbacks(&self, timeout: Duration) -> bool {
        self.state.wait_for_callbacks(timeout).await
    }
    /// Stops accepting, releases hanging requests, stops status sequences and waits (briefly)
    /// for the server to finish.
    pub async fn shutdown(mut self) {
        self.state.close();
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

impl Drop for TwilioSimHandle {
    fn drop(&mut self) {
        // The server, if still here, stops through its own Drop.
        self.state.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_number_shapes() {
        assert!(is_e164("+15551230001"));
        assert!(is_e164("+447700900123"));
        for bad in ["15551230001", "+1 555 123 0001", "+0155512300", "+123", "+"] {
            assert!(!is_e164(bad), "{bad}");
        }
        for good in ["+15551230001", "12345", "ACME Rent", "Acme1"] {
            assert!(is_valid_from(good), "{good}");
        }
        for bad in ["12", "123456789", "Acme Rentals Inc", "ACME-RENT", ""] {
            assert!(!is_valid_from(bad), "{bad}");
        }
    }

    #[test]
    fn callback_id_reads_the_message_id_parameter() {
        assert_eq!(
            callback_id("http://h/cb?x=1&message_id=abc%2D1").as_deref(),
            Some("abc-1")
        );
        assert_eq!(callback_id("http://h/cb?x=1"), None);
    }
}
