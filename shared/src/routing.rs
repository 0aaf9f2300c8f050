//! The route delivery lifecycle's vocabulary, written by both binaries (the worker routes, the
//! ingress replays from the quarantine). Its transitions live in `worker/src/route.rs`.
//!
//! ```text
//!   (inbound processed) ──▶ pending ──agent 2xx──▶ routed
//!                    │        │  └──5xx/timeout──▶ pending (retry job) ... ──exhausted──▶ unroutable
//!                    │        └──4xx, unknown number, no route──────────────────────────▶ unroutable
//!                    └─(opt-out keyword)──▶ skipped                 unroutable ──replay──▶ pending
//! ```

use uuid::Uuid;

use crate::{
    jobs::{self, RouteMessage, When},
    telemetry::TraceContext,
};

/// `sms_messages.route_status` (CHECK in migration 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteStatus {
    Pending,
    Routed,
    Unroutable,
    Skipped,
}

impl RouteStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Routed => "routed",
            Self::Unroutable => "unroutable",
            Self::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Routed, Self::Unroutable, Self::Skipped]
            .into_iter()
            .find(|r| r.as_str() == s)
    }

    /// Nothing more to do for the message.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending)
    }
}

/// Puts a quarantined message back to `pending` with a fresh route job, in the caller's
/// transaction (which has already marked the quarantine row replayed).
pub async fn replay(
    conn: &mut sqlx::PgConnection,
    message_id: Uuid,
) -> Result<(), apalis_postgres::Error> {
    sqlx::query!(
        "UPDATE sms_messages SET route_status = $2 WHERE id = $1",
        message_id,
        RouteStatus::Pending.as_str()
    )
    .execute(&mut *conn)
    .await?;
    jobs::schedule(
        conn,
        &[RouteMessage {
            message_id,
            attempt: 0,
            trace: TraceContext::current(),
        }],
        When::NOW,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in ["pending", "routed", "unroutable", "skipped"] {
            assert_eq!(RouteStatus::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(RouteStatus::parse("retry"), None);
        assert!(!RouteStatus::Pending.is_final() && RouteStatus::Skipped.is_final());
    }
}
