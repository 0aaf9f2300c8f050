//! `GET /usage?tenant_id=&from=&to=`: messages and segments per tenant, by direction and status,
//! over whole UTC days, read from the usage ledger (`shared::usage`), which triggers keep in the
//! transactions that store and change messages. Paged: a year of every tenant is not one answer.

use crate::extract::Query;
use axum::{Json, extract::State};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{AppState, auth::ApiKey, error::ApiError};

/// Rows per page.
pub const DEFAULT_LIMIT: i64 = 200;
pub const MAX_LIMIT: i64 = 1_000;
/// Default window: the last 30 days, today included.
const DEFAULT_DAYS: u64 = 30;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Count only this tenant (a tenant-scoped key always counts only its own).
    #[param(min_length = 1, max_length = 100)]
    pub tenant_id: Option<String>,
    /// First day, inclusive: YYYY-MM-DD, or an RFC 3339 time at 00:00 UTC (default: 29 days
    /// before today, UTC).
    #[param(value_type = Option<crate::openapi::TimeOrDay>, inline, example = "2026-11-01")]
    pub from: Option<String>,
    /// End, exclusive: YYYY-MM-DD, or an RFC 3339 time at 00:00 UTC (default: tomorrow, UTC, so
    /// that today counts).
    #[param(value_type = Option<crate::openapi::TimeOrDay>, inline, example = "2026-12-01")]
    pub to: Option<String>,
    /// Rows per page, 1 to 1000 (default 200).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The previous page's `next_cursor` (only a cursor this API returned is accepted).
    #[param(min_length = 1, max_length = 600, pattern = "^[A-Za-z0-9_-]+$")]
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageRow {
    /// Null: messages of no known tenant.
    pub tenant_id: Option<String>,
    pub direction: String,
    pub status: String,
    pub messages: i64,
    pub segments: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Usage {
    /// 00:00 UTC of the first day counted.
    pub from: DateTime<Utc>,
    /// 00:00 UTC of the day after the last one counted.
    pub to: DateTime<Utc>,
    pub tenant_id: Option<String>,
    /// Ordered by tenant (null first), direction, status.
    pub rows: Vec<UsageRow>,
    /// Give as `cursor` (with the same window) for the next page; null on the last page. A page
    /// may hold fewer rows than `limit` and still not be the last.
    pub next_cursor: Option<String>,
}

pub(crate) fn parse_time(field: &'static str, v: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(v, "%Y-%m-%d")
        .map(|d| d.and_time(NaiveTime::MIN).and_utc())
        .map_err(|_| ApiError::Validation(vec![(field, "must be RFC 3339 or YYYY-MM-DD".into())]))
}

/// A window bound: usage is kept per UTC day, so a bound is a day (a time must be a midnight).
fn parse_day(field: &'static str, v: &str) -> Result<NaiveDate, ApiError> {
    let t = parse_time(field, v)?;
    if t.time() != NaiveTime::MIN {
        return Err(ApiError::Validation(vec![(
            field,
            "usage is counted per UTC day: give YYYY-MM-DD or a time at 00:00 UTC".into(),
        )]));
    }
    Ok(t.date_naive())
}

/// The window `[from, to)` in days, with the defaults.
fn window(
    from: Option<&str>,
    to: Option<&str>,
    today: NaiveDate,
) -> Result<(NaiveDate, NaiveDate), ApiError> {
    let to = match to {
        Some(v) => parse_day("to", v)?,
        None => today + Days::new(1),
    };
    let from = match from {
        Some(v) => parse_day("from", v)?,
        None => to - Days::new(DEFAULT_DAYS),
    };
    if from > to {
        return Err(ApiError::Validation(vec![(
            "from",
            "must not be after to".into(),
        )]));
    }
    Ok((from, to))
}

fn encode_cursor(after: &shared::usage::After) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(after).expect("strings serialise"))
}

fn decode_cursor(cursor: &str) -> Result<shared::usage::After, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "cursor is not one this API returned")
        })
}

/// Usage
///
/// Messages and segments by tenant, direction and delivery status over whole UTC days, from the
/// usage ledger (kept in the same transactions as the messages, so exact at every moment). Each
/// message counts for the tenant it belonged to when stored. Paged with `limit` and `cursor`.
#[utoipa::path(
    get,
    path = "/usage",
    tag = "tenants",
    operation_id = "usage",
    security(("api_key" = ["read"])),
    params(UsageParams),
    responses(
        (status = 200, description = "The counts.", body = Usage),
        (status = 400, description = "`invalid_request` with `errors` for `from` / `to` (not a \
            day, a time that is not 00:00 UTC, or `from` after `to`); `invalid_limit`, \
            `invalid_cursor`; `invalid_query`: a query that does not parse.",
         body = crate::error::ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::MissingScope),
        (status = 404, description = "`not_found`: a tenant-scoped key asking for another tenant.",
         body = crate::error::ErrorBody),
        (status = 500, response = crate::openapi::Internal),
        (status = 503, response = crate::openapi::Unavailable),
    )
)]
pub async fn usage(
    State(state): State<AppState>,
    key: ApiKey,
    Query(p): Query<UsageParams>,
) -> Result<Json<Usage>, ApiError> {
    // A tenant-scoped key counts only its tenant; asking for another is asking for nothing.
    let tenant = crate::policy::confine(&key, crate::policy::Action::Read, p.tenant_id)?;
    let (from, to) = window(p.from.as_deref(), p.to.as_deref(), Utc::now().date_naive())?;
    let limit =
        crate::conversations::parse_limit_within(p.limit.as_deref(), DEFAULT_LIMIT, MAX_LIMIT)?;
    let after = p.cursor.as_deref().map(decode_cursor).transpose()?;
    let page = shared::usage::page(
        &state.pool,
        from,
        to,
        tenant.as_deref(),
        after.as_ref(),
        // 1 to MAX_LIMIT, checked above.
        limit as usize,
    )
    .await?;
    let next_cursor = page.next.as_ref().map(encode_cursor);
    let rows = page.rows;
    Ok(Json(Usage {
        from: from.and_time(NaiveTime::MIN).and_utc(),
        to: to.and_time(NaiveTime::MIN).and_utc(),
        tenant_id: tenant,
        rows: rows
            .into_iter()
            .map(|r| UsageRow {
                tenant_id: r.tenant_id,
                direction: r.direction,
                status: r.status,
                messages: r.messages,
                segments: r.segments,
            })
            .collect(),
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    /// (from, to) and the window, or the field in error.
    type Case = (
        Option<&'static str>,
        Option<&'static str>,
        Result<(&'static str, &'static str), &'static str>,
    );

    #[test]
    fn windows() {
        let today = day("2026-12-04");
        let cases: &[Case] = &[
            (None, None, Ok(("2026-11-05", "2026-12-05"))),
            (Some("2026-12-01"), None, Ok(("2026-12-01", "2026-12-05"))),
            (None, Some("2026-02-01"), Ok(("2026-01-02", "2026-02-01"))),
            (
                Some("2026-01-01T00:00:00Z"),
                Some("2026-01-02T00:00:00+00:00"),
                Ok(("2026-01-01", "2026-01-02")),
            ),
            (
                Some("2026-01-01"),
                Some("2026-01-01"),
                Ok(("2026-01-01", "2026-01-01")),
            ),
            (Some("2026-01-01T00:00:00-05:00"), None, Err("from")),
            (Some("2026-01-01T12:00:00Z"), None, Err("from")),
            (None, Some("2026-01-01T00:00:01Z"), Err("to")),
            (Some("2026-01-02"), Some("2026-01-01"), Err("from")),
            (Some("yesterday"), None, Err("from")),
            (None, Some(""), Err("to")),
        ];
        for (from, to, want) in cases {
            let got = window(*from, *to, today);
            match (want, got) {
                (Ok((f, t)), Ok(got)) => assert_eq!(got, (day(f), day(t)), "{from:?} {to:?}"),
                (Err(field), Err(ApiError::Validation(errors))) => {
                    assert_eq!(errors[0].0, *field, "{from:?} {to:?}")
                }
                (want, got) => panic!("{from:?} {to:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn cursor_round_trip_and_garbage() {
        let after = (
            "t|1".to_string(),
            "inbound".to_string(),
            "received".to_string(),
        );
        assert_eq!(decode_cursor(&encode_cursor(&after)).unwrap(), after);
        assert!(decode_cursor("nope").is_err());
        assert!(decode_cursor("").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("[1,2,3]")).is_err());
    }
}
