//! `GET /usage?tenant_id=&from=&to=`: messages and segments per tenant, by direction and status,
//! over whole UTC days, read from the usage ledger (`shared::usage`), which triggers keep in the
//! transactions that store and change messages. Paged: a year of every tenant is not one answer.

use crate::extract::Query;
use axum::{Json, extract::State};
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
    #[param(value_type = Option<crate::openapi::DayBound>, inline, example = "2026-11-01")]
    pub from: Option<String>,
    /// End, exclusive: YYYY-MM-DD, or an RFC 3339 time at 00:00 UTC (default: tomorrow, UTC, so
    /// that today counts).
    #[param(value_type = Option<crate::openapi::DayBound>, inline, example = "2026-12-01")]
    pub to: Option<String>,
    /// Rows per page, 1 to 1000 (default 200).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The previous page's `next_cursor`: where the page starts, after that row.
    #[param(
        max_length = 142,
        pattern = r"^[a-z_]{0,20}\.[a-z_]{0,20}\.[^\u0000]{0,100}$"
    )]
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
    // `from` after `to` is a window with no day in it, as in the opt-out ledger: an empty
    // answer, not an error.
    Ok((from, to))
}

/// Cursor: the last (tenant, direction, status) returned, as `<direction>.<status>.<tenant>`
/// (directions and statuses are lowercase words; the tenant, last, may hold dots). Any cursor of
/// that shape is a position in the ledger's key order, so the OpenAPI pattern states the whole rule.
pub(crate) fn encode_cursor((tenant, direction, status): &shared::usage::After) -> String {
    format!("{direction}.{status}.{tenant}")
}

fn decode_cursor(cursor: &str) -> Result<shared::usage::After, ApiError> {
    let word = |w: &str| w.len() <= 20 && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    let mut parts = cursor.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(d), Some(s), Some(t))
            if word(d) && word(s) && t.chars().count() <= 100 && !t.contains('\0') =>
        {
            Ok((t.to_owned(), d.to_owned(), s.to_owned()))
        }
        _ => Err(ApiError::bad_request(
            "invalid_cursor",
            "cursor is not one this API returned",
        )),
    }
}

/// Usage
///
/// Messages and segments by tenant, direction and delivery status over whole UTC days, from the
/// usage ledger (kept in the same transactions as the messages, so exact at every moment). Each
/// message counts for the tenant it belonged to when stored. Paged with `limit` and `cursor`. A
/// window whose `from` is after its `to` holds no day: an empty answer.
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
            day, or a time that is not 00:00 UTC); `invalid_limit`, \
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
            // Every form the document's pattern allows.
            (
                Some("2026-01-01t00:00:00.000z"),
                Some("2026-01-03T00:00:00-00:00"),
                Ok(("2026-01-01", "2026-01-03")),
            ),
            (Some("2026-01-01T00:00:00-05:00"), None, Err("from")),
            (Some("2026-01-01T12:00:00Z"), None, Err("from")),
            (None, Some("2026-01-01T00:00:01Z"), Err("to")),
            (
                Some("2026-01-02"),
                Some("2026-01-01"),
                Ok(("2026-01-02", "2026-01-01")),
            ),
            (Some("2902-02-23"), None, Ok(("2902-02-23", "2026-12-05"))),
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
        let dotted = (
            "a.b.c".to_string(),
            "outbound".to_string(),
            "sent".to_string(),
        );
        assert_eq!(decode_cursor(&encode_cursor(&dotted)).unwrap(), dotted);
        // The smallest key, and the longest the pattern allows, are positions too.
        assert!(decode_cursor("..").is_ok());
        assert!(decode_cursor(&format!("{0}.{0}.{1}", "z".repeat(20), "é".repeat(100))).is_ok());
        for garbage in ["nope", "", ".", "in.x", "IN.x.t", "in.x.t\0", "in-x.y.t"] {
            assert!(decode_cursor(garbage).is_err(), "{garbage:?}");
        }
        assert!(decode_cursor(&format!("in.x.{}", "t".repeat(101))).is_err());
    }
}
