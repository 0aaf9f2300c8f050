//! The opt-out ledger: every opt-out and opt-in, newest first, filtered by number.

use axum::{
    extract::{Query, State},
    response::Response,
};
use serde::Deserialize;
use shared::phone;

use super::{ConsoleError, Operator, html};
use crate::{
    AppState, conversations,
    opt_outs::{self, LedgerFilter, OptOutEvent},
};

const PAGE: i64 = 50;

#[derive(Deserialize)]
pub struct Params {
    number: Option<String>,
    cursor: Option<String>,
}

/// A table of ledger events.
pub fn events_table(title: &str, events: &[OptOutEvent]) -> String {
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                html::time(e.occurred_at),
                html::badge(&e.change),
                html::esc(&e.their_number),
                html::esc(&e.our_number),
                html::esc(&e.source),
                html::opt(e.keyword.as_deref().or(e.method.as_deref())),
                html::opt(e.tenant_id.as_deref()),
                html::opt(e.note.as_deref()),
            ]
        })
        .collect();
    html::table(
        "ledger",
        title,
        &[
            "When",
            "Change",
            "Their number",
            "Our number",
            "Source",
            "Keyword or method",
            "Tenant",
            "Note",
        ],
        &rows,
    )
}

pub async fn page(
    State(state): State<AppState>,
    operator: Operator,
    Query(p): Query<Params>,
) -> Result<Response, ConsoleError> {
    let written = p.number.filter(|n| !n.trim().is_empty());
    let number = written
        .as_deref()
        .map(|n| phone::sender(n, state.cfg.common.default_region).0);
    let cursor = p
        .cursor
        .as_deref()
        .map(conversations::decode_cursor::<i64>)
        .transpose()?;
    let (events, next) = opt_outs::ledger(
        &state.pool,
        &LedgerFilter {
            number: number.clone(),
            tenant: operator.key.tenant_id.clone(),
            cursor,
            ..Default::default()
        },
        PAGE,
    )
    .await?;
    let mut body = format!(
        r#"<form method="get" action="/console/opt-outs" class="search"><label for="number">Phone number</label>
<input id="number" name="number" value="{}" placeholder="any written form"><button type="submit">Filter</button></form>"#,
        html::esc(written.as_deref().unwrap_or_default())
    );
    if events.is_empty() {
        body.push_str(r#"<p class="empty">No opt-out events.</p>"#);
    } else {
        body.push_str(&events_table("Events, newest first", &events));
    }
    if let Some(next) = next {
        body.push_str(&format!(
            r#"<p class="pager"><a rel="next" href="/console/opt-outs?number={}&amp;cursor={}">Older →</a></p>"#,
            html::q(number.as_deref().unwrap_or_default()),
            html::q(&next)
        ));
    }
    Ok(html::page("Opt-out ledger", Some(&operator), &body))
}
