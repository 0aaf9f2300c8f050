//! Health at a glance: each queue's depth, its oldest due job and its failures in the last hour,
//! and messages in and out per minute over the last hour (a tenant-scoped key counts only its
//! tenant's messages).

use std::{collections::BTreeMap, time::Duration};

use axum::{extract::State, response::Response};
use chrono::{DateTime, Utc};

use super::{ConsoleError, Operator, html};
use crate::AppState;

/// Bars of inbound (up) and outbound (down) per minute, as an inline SVG.
fn chart(minutes: &[(DateTime<Utc>, i64, i64)]) -> String {
    let max = minutes
        .iter()
        .map(|(_, i, o)| (*i).max(*o))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let (w, half) = (8.0, 60.0);
    let bars: String = minutes
        .iter()
        .enumerate()
        .map(|(k, (t, i, o))| {
            let x = k as f64 * (w + 2.0);
            let hi = *i as f64 / max * half;
            let ho = *o as f64 / max * half;
            format!(
                r#"<rect class="in" x="{x}" y="{yi:.1}" width="{w}" height="{hi:.1}"><title>{t} in {i}</title></rect><rect class="out" x="{x}" y="{half}" width="{w}" height="{ho:.1}"><title>{t} out {o}</title></rect>"#,
                yi = half - hi,
                t = t.format("%H:%M"),
            )
        })
        .collect();
    format!(
        r#"<svg class="chart" viewBox="0 0 600 120" role="img" aria-label="Messages in (up) and out (down) per minute over the last hour"><line x1="0" y1="{half}" x2="600" y2="{half}" class="axis"/>{bars}</svg>
<p class="legend"><span class="key in"></span> in <span class="key out"></span> out · busiest minute {max}</p>"#,
        max = max as i64
    )
}

pub async fn page(
    State(state): State<AppState>,
    operator: Operator,
) -> Result<Response, ConsoleError> {
    // Queue depths are service-wide figures: for unscoped keys only (the policy's global).
    let service_wide = crate::policy::sees(
        &operator.key,
        crate::policy::Action::Read,
        crate::policy::Owner::Global,
    );
    let depths = if service_wide {
        shared::jobs::depths(&state.pool).await?
    } else {
        Vec::new()
    };
    let failures: BTreeMap<String, i64> = if service_wide {
        shared::jobs::failures_within(&state.pool, Duration::from_secs(3600))
            .await?
            .into_iter()
            .collect()
    } else {
        BTreeMap::new()
    };
    let rows: String = shared::jobs::ALL_QUEUES
        .iter()
        .map(|queue| {
            let d = depths.iter().find(|d| d.queue == *queue).cloned().unwrap_or_default();
            let oldest = if d.pending == 0 {
                "–".to_owned()
            } else {
                format!("{:.0} s", d.oldest_due_secs)
            };
            let failed = failures.get(*queue).copied().unwrap_or(0);
            format!(
                r#"<tr data-queue="{queue}"><td>{queue}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{oldest}</td><td class="num{warn}">{failed}</td></tr>"#,
                d.pending,
                d.scheduled,
                d.running,
                warn = if failed > 0 { " warn" } else { "" },
            )
        })
        .collect();
    let minutes = match operator.key.tenant_id.as_deref() {
        None => shared::traffic::last_hour(&state.pool).await?,
        Some(tenant) => shared::traffic::last_hour_of(&state.pool, tenant).await?,
    };
    let (total_in, total_out) = minutes
        .iter()
        .fold((0, 0), |(a, b), (_, i, o)| (a + i, b + o));
    let queues = if service_wide {
        format!(
            r#"<h2>Queues</h2>
<table class="queues"><tr><th>Queue</th><th>Due now</th><th>Scheduled</th><th>Running</th><th>Oldest due job</th><th>Failed, last hour</th></tr>{rows}</table>"#
        )
    } else {
        String::new()
    };
    let body = format!(
        r#"{queues}
<h2>Messages per minute, last hour</h2>
<p>{total_in} in, {total_out} out{scope}.</p>
{chart}"#,
        scope = operator
            .key
            .tenant_id
            .as_deref()
            .map(|t| format!(" (tenant {})", html::esc(t)))
            .unwrap_or_default(),
        chart = chart(&minutes),
    );
    Ok(html::page("Health", Some(&operator), &body))
}
