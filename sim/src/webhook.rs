//! Correctly signed Twilio inbound webhooks: the field set Twilio really posts, form-encoded, with
//! the X-Twilio-Signature computed by the same code the ingress verifies with.

use rand::RngCore;

/// Account SID used when none is given (the shape Twilio's are: `AC` + 32 characters).
pub const DEFAULT_ACCOUNT_SID: &str = "AC00000000000000000000000000000000";
/// Our number used when none is given (the local run's `TWILIO_PHONE_NUMBER`).
pub const DEFAULT_TO: &str = "+15550001000";

/// One inbound SMS as Twilio would post it.
#[derive(Debug, Clone)]
pub struct InboundSms {
    pub message_sid: String,
    pub from: String,
    pub to: String,
    pub body: String,
    /// Further fields, sent after the standard ones (repeat a name to repeat a field).
    pub extra: Vec<(String, String)>,
}

/// "SM" + 32 lowercase hex characters, like Twilio's.
pub fn new_message_sid() -> String {
    new_message_sid_with(&mut rand::rng())
}

/// A MessageSid drawn from `rng`, for reproducible runs.
pub fn new_message_sid_with(rng: &mut impl RngCore) -> String {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("SM{hex}")
}

impl InboundSms {
    /// A new message with a fresh MessageSid.
    pub fn new(from: impl Into<String>, to: impl Into<String>, body: impl Into<String>) -> Self {
        Self {
            message_sid: new_message_sid(),
            from: from.into(),
            to: to.into(),
            body: body.into(),
            extra: Vec::new(),
        }
    }

    /// Adds a field after the standard ones.
    pub fn with_extra(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.push((name.into(), value.into()));
        self
    }

    /// The full field set Twilio sends for an inbound SMS, then `extra`.
    pub fn params(&self, account_sid: &str) -> Vec<(String, String)> {
        let segments = num_segments(&self.body).to_string();
        let mut p: Vec<(String, String)> = [
            ("ToCountry", "US"),
            ("ToState", "CA"),
            ("SmsMessageSid", self.message_sid.as_str()),
            ("NumMedia", "0"),
            ("ToCity", "SAN FRANCISCO"),
            ("FromZip", "94105"),
            ("SmsSid", self.message_sid.as_str()),
            ("FromState", "CA"),
            ("SmsStatus", "received"),
            ("FromCity", "SAN FRANCISCO"),
            ("Body", self.body.as_str()),
            ("FromCountry", "US"),
            ("To", self.to.as_str()),
            ("ToZip", "94105"),
            ("NumSegments", segments.as_str()),
            ("MessageSid", self.message_sid.as_str()),
            ("AccountSid", account_sid),
            ("From", self.from.as_str()),
            ("ApiVersion", "2010-04-01"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        p.extend(self.extra.iter().cloned());
        p
    }
}

/// Segments Twilio would count for `body` (see `shared::segments`): GSM-7 (160, or 153 per part) when every character is
/// in the GSM alphabet, else UCS-2 (70, or 67 UTF-16 units per part). Keeps `NumSegments`
/// consistent with accented and emoji bodies.
pub fn num_segments(body: &str) -> usize {
    shared::segments::count(body).0 as usize
}

/// The form body and the X-Twilio-Signature for `params` posted to `url`.
pub fn signed_request(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
) -> (String, String) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    (
        body,
        shared::twilio::signature::compute(auth_token, url, params),
    )
}

/// Posts a signed webhook to `url` (signed for that same URL).
pub async fn send(
    client: &reqwest::Client,
    url: &str,
    auth_token: &str,
    params: &[(String, String)],
) -> reqwest::Result<reqwest::Response> {
    send_to(client, url, url, auth_token, params).await
}

/// Posts to `post_url` a webhook signed for `signed_url` (the public URL behind a proxy).
pub async fn send_to(
    client: &reqwest::Client,
    post_url: &str,
    signed_url: &str,
    auth_token: &str,
    params: &[(String, String)],
) -> reqwest::Result<reqwest::Response> {
    let (body, signature) = signed_request(auth_token, signed_url, params);
    client
        .post(post_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .body(body)
        .send()
        .await
}
