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
    jobs::{self, RouteMessage, RouteMessages, When},
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

    pub const ALL: [RouteStatus; 4] =
        [Self::Pending, Self::Routed, Self::Unroutable, Self::Skipped];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Nothing more to do for the message.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending)
    }
}

/// Why a routing decision went where it went (`sms_routing_decisions.reason`, its CHECK lists
/// exactly [`RouteReason::ALL`]): the rule that chose the route, or why there was none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteReason {
    /// The tenant's own route.
    Tenant,
    /// The route for the conversation's workflow type.
    WorkflowType,
    /// The default route.
    Default,
    /// No tenant has the number.
    UnknownNumber,
    /// No route serves the tenant.
    NoRoute,
}

impl RouteReason {
    pub const ALL: [RouteReason; 5] = [
        Self::Tenant,
        Self::WorkflowType,
        Self::Default,
        Self::UnknownNumber,
        Self::NoRoute,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tenant => "tenant",
            Self::WorkflowType => "workflow_type",
            Self::Default => "default",
            Self::UnknownNumber => "unknown_number",
            Self::NoRoute => "no_route",
        }
    }

    /// The rule that chose a route with these targets (a tenant's, a workflow type's, or
    /// neither: the default).
    pub fn of_route(tenant: bool, workflow_type: bool) -> Self {
        match (tenant, workflow_type) {
            (true, _) => Self::Tenant,
            (false, true) => Self::WorkflowType,
            (false, false) => Self::Default,
        }
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
        &[RouteMessages::one(RouteMessage {
            message_id,
            attempt: 0,
            trace: TraceContext::current(),
        })],
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
