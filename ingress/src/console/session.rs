//! Signing in and out of the console: an API key becomes a session cookie. Only the token's
//! SHA-256 is stored; each request re-reads the session with its key, so revoking or expiring the
//! key ends the session at once. The sign-in form is protected by a double-submit token (a cookie
//! and a field that must match), every later form by the session's own CSRF token.

use axum::{
    Form,
    extract::{FromRequestParts, State},
    http::{HeaderMap, StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
};
use rand::RngCore;
use serde::Deserialize;
use shared::twilio::signature::constant_time_eq;

use super::{ConsoleError, html};
use crate::{
    AppState,
    auth::{self, ApiKey},
};

/// The session cookie's name and path: behind https, `__Host-` (the browser then refuses it
/// unless Secure, host-only and for the whole host, so no sibling domain or path can plant or
/// shadow it); over plain http (local development) the prefix cannot be used.
fn session_cookie(state: &AppState) -> (&'static str, &'static str) {
    if state.cfg.public_url.starts_with("https://") {
        ("__Host-sms_console", "/")
    } else {
        (SESSION_COOKIE, "/console")
    }
}

const SESSION_COOKIE: &str = "sms_console";
const LOGIN_COOKIE: &str = "sms_console_login";
/// How long a session lasts without signing in again.
pub const SESSION_HOURS: i64 = 8;

/// A signed-in operator: the key behind the session, and the session's CSRF token.
#[derive(Debug, Clone)]
pub struct Operator {
    pub key: ApiKey,
    pub csrf: String,
}

impl Operator {
    /// A form's `csrf` field must be this session's token.
    pub fn check(&self, token: &str) -> Result<(), ConsoleError> {
        if constant_time_eq(token, &self.csrf) {
            Ok(())
        } else {
            Err(ConsoleError::Forged)
        }
    }
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// The value of cookie `name`, if sent.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, Secure behind https.
fn set_cookie(state: &AppState, name: &str, value: &str, path: &str, max_age_secs: i64) -> String {
    let secure = if state.cfg.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{name}={value}; Path={path}; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{secure}"
    )
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ConsoleError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ConsoleError> {
        let token = cookie(&parts.headers, session_cookie(state).0).ok_or(ConsoleError::SignIn)?;
        let row = sqlx::query!(
            r#"SELECT s.csrf_token, k.id, k.name, k.scopes, k.tenant_id
               FROM console_sessions s JOIN api_keys k ON k.id = s.api_key_id
               WHERE s.token_hash = $1 AND s.expires_at > now()
                 AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())"#,
            auth::hash_key(token)
        )
        .fetch_optional(&state.pool)
        .await?
        .ok_or(ConsoleError::SignIn)?;
        Ok(Operator {
            key: ApiKey {
                id: row.id,
                name: row.name,
                scopes: row.scopes,
                tenant_id: row.tenant_id,
            },
            csrf: row.csrf_token,
        })
    }
}

fn login_page(state: &AppState, status: StatusCode, problem: Option<&str>) -> Response {
    let token = random_hex(16);
    let problem = problem
        .map(|p| format!(r#"<p class="error">{}</p>"#, html::esc(p)))
        .unwrap_or_default();
    let mut response = html::page(
        "Sign in",
        None,
        &format!(
            r#"{problem}<form method="post" action="/console/login" class="card narrow">
<label for="key">API key</label>
<input id="key" name="key" type="password" autocomplete="off" required placeholder="sk_...">
{csrf}
<button type="submit">Sign in</button>
<p class="hint">A key with the <code>read</code> scope (<code>sms-ingress api-key create</code>). A key confined to a tenant shows only that tenant. The session lasts {SESSION_HOURS} hours.</p>
</form>"#,
            csrf = html::csrf_field(&token),
        ),
    );
    *response.status_mut() = status;
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(state, LOGIN_COOKIE, &token, "/console/login", 600)
            .parse()
            .expect("a cookie header"),
    );
    response
}

/// The sign-in form (or the console, when already signed in).
pub async fn login_form(
    State(state): State<AppState>,
    operator: Result<Operator, ConsoleError>,
) -> Response {
    if operator.is_ok() {
        return Redirect::to("/console/numbers").into_response();
    }
    login_page(&state, StatusCode::OK, None)
}

#[derive(Deserialize)]
pub struct SignIn {
    key: String,
    csrf: String,
}

/// Checks the key as the API does and opens a session.
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Result<Response, ConsoleError> {
    let sent = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if sent.is_empty() || !constant_time_eq(sent, &form.csrf) {
        return Err(ConsoleError::Forged);
    }
    let key = match auth::lookup(&state.pool, form.key.trim()).await? {
        Some(key) if crate::policy::has_scope(&key.scopes, crate::policy::Action::Read) => key,
        Some(_) => {
            return Ok(login_page(
                &state,
                StatusCode::FORBIDDEN,
                Some("This key lacks the read scope."),
            ));
        }
        None => {
            return Ok(login_page(
                &state,
                StatusCode::UNAUTHORIZED,
                Some("That key is not valid, or it was revoked or has expired."),
            ));
        }
    };
    let token = random_hex(32);
    let mut tx = state.pool.begin().await?;
    // Expired sessions go when anyone signs in.
    sqlx::query!("DELETE FROM console_sessions WHERE expires_at < now()")
        .execute(&mut *tx)
        .await?;
    sqlx::query!(
        "INSERT INTO console_sessions (token_hash, api_key_id, csrf_token, expires_at)
         VALUES ($1, $2, $3, now() + make_interval(hours => $4))",
        auth::hash_key(&token),
        key.id,
        random_hex(16),
        SESSION_HOURS as i32
    )
    .execute(&mut *tx)
    .await?;
    crate::error::commit(tx).await?;
    tracing::info!(key = %key.name, "console sign-in");
    let mut response = Redirect::to("/console/numbers").into_response();
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(
            &state,
            session_cookie(&state).0,
            &token,
            session_cookie(&state).1,
            SESSION_HOURS * 3600,
        )
        .parse()
        .expect("a cookie header"),
    );
    headers.append(
        header::SET_COOKIE,
        set_cookie(&state, LOGIN_COOKIE, "", "/console/login", 0)
            .parse()
            .expect("a cookie header"),
    );
    Ok(response)
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    pub csrf: String,
}

/// Ends the session.
pub async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    operator: Operator,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, ConsoleError> {
    operator.check(&form.csrf)?;
    let (name, path) = session_cookie(&state);
    if let Some(token) = cookie(&headers, name) {
        sqlx::query!(
            "DELETE FROM console_sessions WHERE token_hash = $1",
            auth::hash_key(token)
        )
        .execute(&state.pool)
        .await?;
    }
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, name, "", path, 0)
            .parse()
            .expect("a cookie header"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_by_name() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; sms_console=tok; b=2".parse().unwrap());
        h.append(header::COOKIE, "sms_console_login=x".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), Some("x"));
        assert_eq!(cookie(&h, "missing"), None);
    }
}
