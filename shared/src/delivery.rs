//! The outbound lifecycle's writes. Every change of an outbound message's `delivery_status` is
//! one [`Transition`], made by the one function named for it here, and allowed only from the
//! states [`Transition::from`] lists and to those [`Transition::leads_to`] accepts ([`allows`]). The SQL
//! guards are built from those lists (`delivery_status = ANY($n)`), never copied, so an illegal
//! move (a cancel after the hand-over, `delivered` then `sent`) changes nothing whoever asks.
//! Callers decide which transition to make; each function writes it in the caller's
//! transaction, beside the job it schedules. `outbound::create` makes the first one.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::twilio::status::DeliveryStatus::{self, *};

/// `sms_send_attempts.outcome` (its CHECK lists exactly [`AttemptOutcome::ALL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    InFlight,
    Accepted,
    Retryable,
    Permanent,
    Unknown,
    /// Its answer was lost, but a status callback or Twilio's list proved Twilio has the message.
    Resolved,
    /// Its answer was lost and no sign of the message came within the grace period.
    Abandoned,
}

impl AttemptOutcome {
    pub const ALL: [AttemptOutcome; 7] = [
        Self::InFlight,
        Self::Accepted,
        Self::Retryable,
        Self::Permanent,
        Self::Unknown,
        Self::Resolved,
        Self::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InFlight => "in_flight",
            Self::Accepted => "accepted",
            Self::Retryable => "retryable",
            Self::Permanent => "permanent",
            Self::Unknown => "unknown",
            Self::Resolved => "resolved",
            Self::Abandoned => "abandoned",
        }
    }
}

/// What settled an attempt whose answer was lost (`sms_send_attempts.evidence`, its CHECK lists
/// exactly [`Evidence::ALL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// A status callback for the message arrived.
    StatusCallback,
    /// Twilio's message list shows it.
    TwilioList,
    /// Twilio's message list has no such message: taken as not created.
    TwilioListNone,
    /// The message's own status had moved on (a callback applied before the answer).
    Status,
}

impl Evidence {
    pub const ALL: [Evidence; 4] = [
        Self::StatusCallback,
        Self::TwilioList,
        Self::TwilioListNone,
        Self::Status,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::StatusCallback => "status_callback",
            Self::TwilioList => "twilio_list",
            Self::TwilioListNone => "twilio_list_none",
            Self::Status => "status",
        }
    }
}

/// Why the reconciler stopped polling a message (`sms_messages.reconcile_stopped`, its CHECK
/// lists exactly [`ReconcileStopped::ALL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileStopped {
    /// Twilio answers 404 for it.
    NotFound,
    /// Still not final after `RECONCILE_GIVE_UP_AFTER_SECS`.
    GaveUp,
}

impl ReconcileStopped {
    pub const ALL: [ReconcileStopped; 2] = [Self::NotFound, Self::GaveUp];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::GaveUp => "gave_up",
        }
    }
}

/// Closes an attempt with its outcome and, when its answer was lost, the evidence that settled
/// it.
pub async fn close_attempt<'c>(
    conn: impl sqlx::PgExecutor<'c>,
    message_id: Uuid,
    attempt: i32,
    outcome: AttemptOutcome,
    error: Option<&str>,
    evidence: Option<Evidence>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE sms_send_attempts SET outcome = $3, finished_at = now(), error_message = COALESCE($4, error_message),
             evidence = COALESCE($5, evidence)
         WHERE message_id = $1 AND attempt = $2",
        message_id,
        attempt,
        outcome.as_str(),
        error,
        evidence.map(Evidence::as_str)
    )
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Stored by `POST /sms/send`, an agent's reply or a confirmation (`outbound::create`).
    Create,
    /// A send run takes the message for an attempt, before calling Twilio ([`claim`]).
    Claim,
    /// Twilio has it: its answer to the create, or its message list after a lost answer
    /// ([`accept`]).
    Accept,
    /// Twilio refused for now; the next attempt waits ([`retry_later`]).
    RetryLater,
    /// Refused for good before Twilio had it: a permanent error, an opt-out found at the
    /// hand-over, an outcome still unknown after the last attempt ([`fail`]).
    Fail,
    /// `DELETE /sms/{id}` before the hand-over ([`cancel`]).
    Cancel,
    /// A status callback (or the reconciler's fetch, applied as one) moves it forward
    /// ([`apply_callbacks`]).
    Callback,
}

/// Every status an outbound message can hold.
pub const OUTBOUND: [DeliveryStatus; 13] = [
    Pending,
    Submitting,
    Accepted,
    Scheduled,
    Queued,
    Sending,
    Sent,
    Delivered,
    Undelivered,
    Failed,
    Canceled,
    PartiallyDelivered,
    Read,
];

impl Transition {
    pub const ALL: [Transition; 7] = [
        Self::Create,
        Self::Claim,
        Self::Accept,
        Self::RetryLater,
        Self::Fail,
        Self::Cancel,
        Self::Callback,
    ];

    /// The states it may start from (none for `Create`, which starts the lifecycle).
    pub fn from(self) -> &'static [DeliveryStatus] {
        match self {
            Self::Create => &[],
            // A retry after a refusal (pending), a due scheduled message, or a new attempt after
            // an outcome taken as lost (still submitting).
            Self::Claim => &[Pending, Scheduled, Submitting],
            // Before any callback moved it: a callback applied first is kept.
            Self::Accept => &[Pending, Submitting],
            Self::RetryLater => &[Submitting],
            Self::Fail => &[Pending, Scheduled, Submitting],
            Self::Cancel => &[Pending, Scheduled],
            // Any; whether the move goes forward is `DeliveryStatus::advances_to`.
            Self::Callback => &OUTBOUND,
        }
    }

    /// Whether it may lead to `status`. Twilio has the message after an accept (any status it
    /// reports but `canceled`, which it gives only to a message it was holding) and reports
    /// every status it has, `canceled` included, in callbacks.
    pub fn leads_to(self, status: DeliveryStatus) -> bool {
        match self {
            Self::Create => matches!(status, Pending | Scheduled),
            Self::Claim => status == Submitting,
            Self::Accept => status.at_twilio() && status != Canceled,
            Self::RetryLater => status == Pending,
            Self::Fail => status == Failed,
            Self::Cancel => status == Canceled,
            Self::Callback => status.at_twilio(),
        }
    }

    /// The `from` states as SQL parameters.
    fn sources_sql(self) -> Vec<&'static str> {
        self.from().iter().map(|s| s.as_str()).collect()
    }
}

/// Whether `transition` may move a message from `from` to `to`: the one rule every write obeys.
pub fn allows(transition: Transition, from: DeliveryStatus, to: DeliveryStatus) -> bool {
    transition.from().contains(&from)
        && transition.leads_to(to)
        && (transition != Transition::Callback || reachable(from, to))
}

/// Whether callbacks can take a message from `from` to `to` by forward steps: one batch may hold
/// several (`sent`, `delivered`, then a `read` that arrived first and waited for `delivered`).
fn reachable(from: DeliveryStatus, to: DeliveryStatus) -> bool {
    from.advances_to(to) || (to == Read && from.advances_to(Delivered))
}

/// Statuses of a message Twilio has that are not final: what the reconciler still polls
/// Twilio about.
pub fn open_at_twilio() -> Vec<&'static str> {
    OUTBOUND
        .iter()
        .filter(|s| s.at_twilio() && !s.is_final())
        .map(|s| s.as_str())
        .collect()
}

/// `Claim`: the message moves to `submitting` and its attempt is recorded `in_flight`, in one
/// statement, before Twilio is called. False: another run claimed it first (`send_attempts` is
/// no longer `seen_attempts`), Twilio has it, or its state allows no claim.
pub async fn claim(
    conn: &mut PgConnection,
    message_id: Uuid,
    attempt: i32,
    seen_attempts: i32,
) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query_scalar!(
        r#"WITH claimed AS (
               UPDATE sms_messages SET send_attempts = $2, delivery_status = $4,
                      status_updated_at = now(), updated_at = now()
               WHERE id = $1 AND send_attempts = $3 AND twilio_sid IS NULL
                 AND delivery_status = ANY($6::text[])
               RETURNING id
           )
           INSERT INTO sms_send_attempts (message_id, attempt, outcome)
           SELECT id, $2, $5 FROM claimed
           RETURNING attempt"#,
        message_id,
        attempt,
        seen_attempts,
        Submitting.as_str(),
        AttemptOutcome::InFlight.as_str(),
        &Transition::Claim.sources_sql() as &[&str]
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(claimed.is_some())
}

/// `Accept`: Twilio has the message as `sid`. The attempt is closed `accepted` (with `evidence`
/// when it was proven otherwise than by Twilio's answer), the SID stored, and the status set to
/// Twilio's unless a callback applied meanwhile already moved it. True when callbacks for the
/// SID wait to be applied (the caller schedules them in the same transaction).
pub async fn accept(
    conn: &mut PgConnection,
    message_id: Uuid,
    attempt: i32,
    sid: &str,
    status: DeliveryStatus,
) -> Result<bool, sqlx::Error> {
    debug_assert!(Transition::Accept.leads_to(status), "{status}");
    sqlx::query_scalar!(
        r#"WITH a AS (
               UPDATE sms_send_attempts SET outcome = $5, finished_at = now(), http_status = 201
               WHERE message_id = $1 AND attempt = $4
           ), m AS (
               UPDATE sms_messages SET twilio_sid = $2,
                      delivery_status = CASE WHEN delivery_status = ANY($6::text[]) THEN $3 ELSE delivery_status END,
                      status_updated_at = now(), updated_at = now()
               WHERE id = $1
           )
           SELECT EXISTS (SELECT 1 FROM sms_status_callbacks WHERE message_sid = $2 AND applied_at IS NULL) AS "pending!""#,
        message_id,
        sid,
        status.as_str(),
        attempt,
        AttemptOutcome::Accepted.as_str(),
        &Transition::Accept.sources_sql() as &[&str]
    )
    .fetch_one(&mut *conn)
    .await
}

/// `RetryLater`: back to `pending` until the retry the caller schedules. False: not allowed
/// from the message's state (a callback proved Twilio has it).
pub async fn retry_later(conn: &mut PgConnection, message_id: Uuid) -> Result<bool, sqlx::Error> {
    set(
        conn,
        Transition::RetryLater,
        message_id,
        Pending,
        None,
        None,
    )
    .await
}

/// `Fail`: `failed` for good with Twilio's (or our) code and reason. False: not allowed from the
/// message's state (Twilio has it; its own callbacks tell its fate).
pub async fn fail(
    conn: &mut PgConnection,
    message_id: Uuid,
    code: Option<&str>,
    reason: Option<&str>,
) -> Result<bool, sqlx::Error> {
    set(conn, Transition::Fail, message_id, Failed, code, reason).await
}

/// Why a cancel was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelRefused {
    AlreadyCanceled,
    AlreadyHandedOver,
}

/// Whether a message in `status`, with `send_attempts` made and Twilio's SID if any, may still
/// be canceled: only before the hand-over began (a retry waiting in `pending` is past it).
pub fn may_cancel(
    status: DeliveryStatus,
    send_attempts: i32,
    has_sid: bool,
) -> Result<(), CancelRefused> {
    if status == Canceled {
        Err(CancelRefused::AlreadyCanceled)
    } else if Transition::Cancel.from().contains(&status) && send_attempts == 0 && !has_sid {
        Ok(())
    } else {
        Err(CancelRefused::AlreadyHandedOver)
    }
}

/// `Cancel`: `canceled`, never sent. The caller holds the row (`FOR UPDATE`) and checked
/// [`may_cancel`]; the guard repeats it, so a send claim that won the race keeps the message.
pub async fn cancel(conn: &mut PgConnection, message_id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query!(
        "UPDATE sms_messages SET delivery_status = $2, status_updated_at = now(), updated_at = now()
         WHERE id = $1 AND delivery_status = ANY($3::text[]) AND send_attempts = 0 AND twilio_sid IS NULL",
        message_id,
        Canceled.as_str(),
        &Transition::Cancel.sources_sql() as &[&str]
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(done == 1)
}

/// One message's move by its callbacks: from the status read (and locked) to the new one.
pub struct CallbackMove<'a> {
    pub message_id: Uuid,
    pub from: DeliveryStatus,
    pub to: DeliveryStatus,
    pub error_code: Option<&'a str>,
}

/// `Callback`: each message moves to its callbacks' status, in one statement; a move that is
/// not forward, or whose message changed since it was read, changes nothing. Returns how many
/// moved.
pub async fn apply_callbacks(
    conn: &mut PgConnection,
    moves: &[CallbackMove<'_>],
) -> Result<u64, sqlx::Error> {
    let allowed: Vec<&CallbackMove> = moves
        .iter()
        .filter(|m| allows(Transition::Callback, m.from, m.to))
        .collect();
    if allowed.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = allowed.iter().map(|m| m.message_id).collect();
    let from: Vec<&str> = allowed.iter().map(|m| m.from.as_str()).collect();
    let to: Vec<&str> = allowed.iter().map(|m| m.to.as_str()).collect();
    let codes: Vec<Option<&str>> = allowed.iter().map(|m| m.error_code).collect();
    Ok(sqlx::query!(
        "UPDATE sms_messages m SET delivery_status = u.status, error_code = COALESCE(u.code, m.error_code),
                status_updated_at = now(), updated_at = now()
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[]) AS u(id, seen, status, code)
         WHERE m.id = u.id AND m.delivery_status = u.seen",
        &ids,
        &from as &[&str],
        &to as &[&str],
        &codes as &[Option<&str>]
    )
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// A status write guarded by its transition's `from` states.
async fn set(
    conn: &mut PgConnection,
    transition: Transition,
    message_id: Uuid,
    to: DeliveryStatus,
    code: Option<&str>,
    reason: Option<&str>,
) -> Result<bool, sqlx::Error> {
    debug_assert!(transition.leads_to(to), "{transition:?} -> {to}");
    let done = sqlx::query!(
        "UPDATE sms_messages SET delivery_status = $2, error_code = COALESCE($3, error_code),
                error_message = COALESCE($4, error_message), status_updated_at = now(), updated_at = now()
         WHERE id = $1 AND delivery_status = ANY($5::text[])",
        message_id,
        to.as_str(),
        code,
        reason,
        &transition.sources_sql() as &[&str]
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(done == 1)
}

#[cfg(test)]
mod tests {
    use super::{Transition::*, *};

    /// Every (transition, from, to) over every pair of outbound states, against the lifecycle
    /// as written out here: each row names the moves a transition makes; everything else is
    /// refused.
    #[test]
    fn every_move_over_every_pair_of_states() {
        let forward = |from: DeliveryStatus, to: DeliveryStatus| from.advances_to(to);
        type Rule<'a> = &'a dyn Fn(DeliveryStatus, DeliveryStatus) -> bool;
        let table: &[(Transition, Rule)] = &[
            (Create, &|_, _| false),
            (Claim, &|f, t| {
                matches!(f, Pending | Scheduled | Submitting) && t == Submitting
            }),
            (Accept, &|f, t| {
                matches!(f, Pending | Submitting) && t.at_twilio() && t != Canceled
            }),
            (RetryLater, &|f, t| f == Submitting && t == Pending),
            (Fail, &|f, t| {
                matches!(f, Pending | Scheduled | Submitting) && t == Failed
            }),
            (Cancel, &|f, t| {
                matches!(f, Pending | Scheduled) && t == Canceled
            }),
            (Callback, &|f, t| {
                t.at_twilio() && (forward(f, t) || (t == Read && forward(f, Delivered)))
            }),
        ];
        assert_eq!(table.len(), Transition::ALL.len());
        let mut checked = 0;
        for (transition, expected) in table {
            for from in OUTBOUND {
                for to in OUTBOUND {
                    assert_eq!(
                        allows(*transition, from, to),
                        expected(from, to),
                        "{transition:?}: {from} -> {to}"
                    );
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 7 * 13 * 13);
    }

    #[test]
    fn the_moves_the_issue_names_are_refused() {
        // A cancel after the hand-over, a late `sent` over `delivered`, a failure of a message
        // Twilio has, a claim of a canceled message.
        assert!(!allows(Cancel, Submitting, Canceled));
        assert!(!allows(Cancel, Queued, Canceled));
        assert!(!allows(Callback, Delivered, Sent));
        assert!(!allows(Fail, Sent, Failed));
        assert!(!allows(Claim, Canceled, Submitting));
        assert!(allows(Callback, Delivered, Read) && allows(Callback, Sent, Read));
        assert!(!allows(Callback, Failed, Read) && !allows(Callback, Read, Delivered));
    }

    #[test]
    fn cancel_only_before_the_hand_over() {
        let table = [
            (Pending, 0, false, Ok(())),
            (Scheduled, 0, false, Ok(())),
            (Pending, 1, false, Err(CancelRefused::AlreadyHandedOver)),
            (Submitting, 1, false, Err(CancelRefused::AlreadyHandedOver)),
            (Queued, 1, true, Err(CancelRefused::AlreadyHandedOver)),
            (Delivered, 1, true, Err(CancelRefused::AlreadyHandedOver)),
            (Canceled, 0, false, Err(CancelRefused::AlreadyCanceled)),
        ];
        for (status, attempts, sid, expected) in table {
            assert_eq!(may_cancel(status, attempts, sid), expected, "{status}");
        }
    }

    #[test]
    fn open_statuses_are_twilios_non_final_ones() {
        assert_eq!(open_at_twilio(), ["accepted", "queued", "sending", "sent"]);
    }
}
