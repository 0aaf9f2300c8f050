//! The quarantine: messages that could not be routed, with their reason, filtered by reason and
//! tenant; replay one, or every one a filter matches after seeing how many that is. Replays need
//! the `admin` scope, as in the API, and go through the same functions.

use axum::{
    Form,
    extract::{Query, State},
    response::{IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use uuid::Uuid;

use super::{ConsoleError, Operator, html, session::CsrfOnly};
use crate::{
    AppState,
    error::ApiError,
    extract::Path,
    policy::{self, Action},
    unroutable::{self, Filter, REASONS, Unroutable},
};

const PAGE: i64 = 200;

#[derive(Deserialize, Default)]
pub struct Params {
    reason: Option<String>,
    tenant: Option<String>,
    #[serde(default)]
    include_replayed: Option<String>,
    /// Set after a replay: how many were replayed.
    done: Option<u64>,
}

fn filter(
    operator: &Operator,
    reason: Option<String>,
    tenant: Option<String>,
    include_replayed: bool,
) -> Result<Filter, ApiError> {
    Ok(Filter {
        tenant: policy::confine(
            &operator.key,
            Action::Read,
            tenant.filter(|t| !t.is_empty()),
        )?,
        reason: reason.filter(|r| !r.is_empty()),
        include_replayed,
    })
}

fn query_of(f: &Filter) -> String {
    format!(
        "reason={}&amp;tenant={}",
        html::q(f.reason.as_deref().unwrap_or_default()),
        html::q(f.tenant.as_deref().unwrap_or_default())
    )
}

/// The filter form, showing `f`; a tenant-scoped key has no tenant field.
fn filter_form(operator: &Operator, f: &Filter) -> String {
    let options: String = std::iter::once("")
        .chain(REASONS.iter().copied())
        .map(|r| {
            let selected = if f.reason.as_deref() == Some(r) {
                " selected"
            } else {
                ""
            };
            let label = if r.is_empty() { "any reason" } else { r };
            format!(r#"<option value="{r}"{selected}>{label}</option>"#)
        })
        .collect();
    let tenant_input = if operator.key.tenant_id.is_some() {
        String::new()
    } else {
        format!(
            r#"<label for="tenant">Tenant</label><input id="tenant" name="tenant" value="{}">"#,
            html::esc(f.tenant.as_deref().unwrap_or_default())
        )
    };
    format!(
        r#"<form method="get" action="/console/quarantine" class="search">
<label for="reason">Reason</label><select id="reason" name="reason">{options}</select>{tenant_input}
<label class="check"><input type="checkbox" name="include_replayed" value="1"{checked}> replayed ones too</label>
<button type="submit">Filter</button></form>"#,
        checked = if f.include_replayed { " checked" } else { "" },
    )
}

/// The quarantined messages, each with a replay button for an admin key.
fn table(operator: &Operator, list: &[Unroutable], admin: bool) -> String {
    let rows: String = list
        .iter()
        .map(|u| {
            let action = match (u.replayed_at, admin) {
                (Some(t), _) => format!("replayed {}", html::time(t)),
                (None, true) => format!(
                    r#"<form method="post" action="/console/quarantine/{}/replay" class="inline">{}<button type="submit">Replay</button></form>"#,
                    u.message_id,
                    html::csrf_field(&operator.csrf)
                ),
                (None, false) => "–".to_owned(),
            };
            format!(
                r#"<tr data-message-id="{id}"><td>{time}</td><td>{reason}</td><td>{detail}</td><td><a href="/console/numbers?number={q}">{from}</a></td><td>{tenant}</td><td class="text">{text}</td><td>{action}</td></tr>"#,
                id = u.message_id,
                time = html::time(u.created_at),
                reason = html::badge(&u.reason),
                detail = html::opt(u.detail.as_deref()),
                q = html::q(u.from.as_deref().unwrap_or_default()),
                from = html::opt(u.from.as_deref()),
                tenant = html::opt(u.tenant_id.as_deref()),
                text = html::esc(&u.content),
            )
        })
        .collect();
    format!(
        r#"<table class="quarantine"><tr><th>Quarantined</th><th>Reason</th><th>Detail</th><th>From</th><th>Tenant</th><th>Text</th><th></th></tr>{rows}</table>"#
    )
}

pub async fn page(
    State(state): State<AppState>,
    operator: Operator,
    Query(p): Query<Params>,
) -> Result<Response, ConsoleError> {
    let f = filter(&operator, p.reason, p.tenant, p.include_replayed.is_some())?;
    let list = unroutable::quarantined(&state.pool, &f, PAGE).await?;
    let admin = policy::has_scope(&operator.key.scopes, Action::Administer);
    let mut body = String::new();
    if let Some(n) = p.done {
        body.push_str(&format!(
            r#"<p class="notice">Replayed {n} message(s): they are routed again.</p>"#
        ));
    }
    body.push_str(&filter_form(&operator, &f));
    if list.is_empty() {
        body.push_str(r#"<p class="empty">Nothing in the quarantine matches.</p>"#);
    } else {
        if admin {
            body.push_str(&format!(
                r#"<p><a class="button" href="/console/quarantine/replay-all?{}">Replay all matching…</a></p>"#,
                query_of(&f)
            ));
        }
        body.push_str(&table(&operator, &list, admin));
    }
    Ok(html::page("Quarantine", Some(&operator), &body))
}

pub async fn replay_one(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<Uuid>,
    Form(form): Form<CsrfOnly>,
) -> Result<Response, ConsoleError> {
    operator.check(&form.csrf)?;
    policy::require(&operator.key, Action::Administer)?;
    if !unroutable::replay_one(&state.pool, &operator.key, id).await? {
        return Err(ApiError::NotFound("not in the quarantine (or already replayed)").into());
    }
    Ok(Redirect::to("/console/quarantine?done=1").into_response())
}

/// Shows how many messages a filter matches before replaying them all.
pub async fn confirm_all(
    State(state): State<AppState>,
    operator: Operator,
    Query(p): Query<Params>,
) -> Result<Response, ConsoleError> {
    policy::require(&operator.key, Action::Administer)?;
    let f = filter(&operator, p.reason, p.tenant, false)?;
    let n = unroutable::count(&state.pool, &f).await?;
    let body = format!(
        r#"<form method="post" action="/console/quarantine/replay-all" class="card narrow">
<p class="count"><strong>{n}</strong> quarantined message(s) match: reason {reason}, tenant {tenant}.</p>
<p>Replaying routes each of them again, with the routes as they are now.</p>
<input type="hidden" name="reason" value="{reason_v}"><input type="hidden" name="tenant" value="{tenant_v}">
<input type="hidden" name="expected" value="{n}">{csrf}
<button type="submit">Replay {n} message(s)</button> <a href="/console/quarantine?{back}">Cancel</a></form>"#,
        reason = html::esc(f.reason.as_deref().unwrap_or("any")),
        tenant = html::esc(f.tenant.as_deref().unwrap_or("any")),
        reason_v = html::esc(f.reason.as_deref().unwrap_or_default()),
        tenant_v = html::esc(f.tenant.as_deref().unwrap_or_default()),
        csrf = html::csrf_field(&operator.csrf),
        back = query_of(&f),
    );
    Ok(html::page("Replay the quarantine", Some(&operator), &body))
}

#[derive(Deserialize)]
pub struct ReplayAll {
    csrf: String,
    reason: Option<String>,
    tenant: Option<String>,
    /// The count the confirmation showed: the replay is refused when the quarantine changed.
    expected: Option<u64>,
}

pub async fn replay_all(
    State(state): State<AppState>,
    operator: Operator,
    Form(form): Form<ReplayAll>,
) -> Result<Response, ConsoleError> {
    operator.check(&form.csrf)?;
    policy::require(&operator.key, Action::Administer)?;
    let f = filter(&operator, form.reason, form.tenant, false)?;
    let n = unroutable::replay_matching(&state.pool, &f, form.expected).await?;
    Ok(Redirect::to(&format!("/console/quarantine?done={n}")).into_response())
}
