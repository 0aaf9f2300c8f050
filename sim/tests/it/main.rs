//! The simulator's own tests: Monitor contract and faults, Twilio REST and status callbacks,
//! agent modes, signatures and faults, signed webhooks, load generator.

mod agent;
mod load;
mod monitor;
mod twilio;
mod webhook;

use std::sync::{Arc, Mutex, OnceLock};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    routing::post,
};
use sim::server::SimServer;

pub const TOKEN: &str = "test-auth-token";

/// What a tiny webhook receiver saw.
#[derive(Default)]
pub struct Seen {
    /// MessageSid of every request whose signature verified, in arrival order.
    pub sids: Vec<String>,
    pub rejected: usize,
}

struct HookState {
    verify_url: OnceLock<String>,
    seen: Mutex<Seen>,
}

/// A webhook receiver verifying signatures as the ingress does.
pub struct Hook {
    /// Where to post.
    pub url: String,
    state: Arc<HookState>,
    _server: SimServer,
}

impl Hook {
    /// Verifies against the URL posted to, or `public_url` (a proxy in front) when given.
    pub async fn spawn(public_url: Option<&str>) -> Hook {
        let state = Arc::new(HookState {
            verify_url: OnceLock::new(),
            seen: Mutex::default(),
        });
        let app = Router::new()
            .route("/webhook/twilio/sms", post(receive))
            .with_state(state.clone());
        let server = SimServer::start("127.0.0.1:0".parse().unwrap(), app)
            .await
            .unwrap();
        let url = format!("{}/webhook/twilio/sms", server.base_url());
        state
            .verify_url
            .set(public_url.map_or_else(|| url.clone(), str::to_owned))
            .unwrap();
        Hook {
            url,
            state,
            _server: server,
        }
    }

    pub fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.state.seen.lock().unwrap())
    }
}

async fn receive(State(s): State<Arc<HookState>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        != Some("application/x-www-form-urlencoded")
    {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE;
    }
    let params: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let sig = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let url = s.verify_url.get().map(String::as_str).unwrap_or("");
    let mut seen = s.seen.lock().unwrap();
    if !shared::twilio::signature::verify_form(&[TOKEN], url, &params, sig) {
        seen.rejected += 1;
        return StatusCode::FORBIDDEN;
    }
    let sid = params
        .iter()
        .find(|(k, _)| k == "MessageSid")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    seen.sids.push(sid);
    StatusCode::OK
}
