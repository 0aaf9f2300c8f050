//! The one way to create an outbound message, whoever asks for it (`POST /sms/send`, an agent's
//! reply): the same body limit, the same opt-out check, the same priority rule, the same sender.
//! The message belongs to the conversation's current tenant, for good.
//! The message row (`pending`) and its send job are written in the caller's transaction.

use uuid::Uuid;

use crate::{
    jobs::{self, SendMessage, When},
    optout::{self, OptedOut},
    segments::{self, Encoding},
    telemetry::TraceContext,
    twilio::status::DeliveryStatus,
};

/// Twilio's limit for one message body.
pub const MAX_BODY_CHARS: usize = 1600;
/// A send to a conversation that had an inbound message this recently is a reply.
pub const REPLY_WINDOW_MINUTES: i32 = 30;
/// Replies go ahead of bulk sends.
pub const REPLY_PRIORITY: i16 = 10;

/// Who we send as: our number, and the messaging service when there is one (it wins at Twilio).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sender {
    pub phone_number: Option<String>,
    pub messaging_service_sid: Option<String>,
}

pub struct NewOutbound<'a> {
    pub conversation_id: Uuid,
    /// A number that takes texts (only `phone::recipient` makes one).
    pub to: &'a crate::phone::Recipient,
    pub body: &'a str,
    pub media_urls: &'a [String],
    /// Hand it to Twilio at this time (stored `scheduled` until then), and why.
    pub schedule: Option<Schedule>,
    /// The quiet hours in force (None: none apply to this sender).
    pub quiet_hours: Option<&'a crate::config::QuietHours>,
    /// Sent inside quiet hours because the caller said so; recorded on the message.
    pub quiet_hours_override: bool,
    /// The confirmation of an opt-out just received: the one message a number that opted out
    /// may still be sent (once; see `optout::Recorded::newly_opted_out`).
    pub opt_out_confirmation: bool,
}

/// A later hand-over to Twilio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub at: chrono::DateTime<chrono::Utc>,
    pub reason: ScheduleReason,
}

/// Why a message waits (`sms_messages.schedule_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleReason {
    /// The caller asked for `send_at`.
    Requested,
    /// Quiet hours at the recipient's location: the next allowed moment.
    QuietHours,
}

impl ScheduleReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::QuietHours => "quiet_hours",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    pub message_id: Uuid,
    pub segments: u32,
    pub encoding: Encoding,
    pub is_reply: bool,
    pub status: DeliveryStatus,
    pub scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
    pub schedule_reason: Option<ScheduleReason>,
}

/// Why a message was not created.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    BodyTooLong {
        chars: usize,
    },
    OptedOut(OptedOut),
    /// Quiet hours apply, and no moment is inside the window in every time zone the recipient
    /// may be in.
    NoAllowedTime,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BodyTooLong { chars } => {
                write!(f, "is {chars} characters; at most {MAX_BODY_CHARS}")
            }
            Self::NoAllowedTime => f.write_str(
                "no moment is inside quiet hours in every time zone the recipient may be in; \
                 set the tenant's timezone",
            ),
            Self::OptedOut(o) => write!(
                f,
                "the recipient opted out with {:?} at {}; send START to opt back in",
                o.keyword.as_deref().unwrap_or("STOP"),
                o.changed_at.to_rfc3339()
            ),
        }
    }
}

/// The body rule: at most [`MAX_BODY_CHARS`] characters (never truncated).
pub fn check_body(body: &str) -> Result<(), Refused> {
    let chars = body.chars().count();
    if chars > MAX_BODY_CHARS {
        return Err(Refused::BodyTooLong { chars });
    }
    Ok(())
}

/// The priority rule: a reply (an inbound message on the conversation within the window) goes
/// ahead of bulk sends.
pub fn priority(is_reply: bool) -> i16 {
    if is_reply { REPLY_PRIORITY } else { 0 }
}

/// The hand-over time once quiet hours are applied: the requested time (or now), moved to the
/// next moment inside the window in every time zone the recipient may be in (the tenant's own
/// zone when its profile has one, else those of the number's prefix).
fn quiet_hours(
    msg: &NewOutbound<'_>,
    conv: &Conversation,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<Schedule>, Refused> {
    let Some(policy) = msg.quiet_hours else {
        return Ok(msg.schedule);
    };
    let is_reply = conv.is_reply;
    if msg.quiet_hours_override || !policy.applies(conv.workflow_type.as_deref(), is_reply) {
        return Ok(msg.schedule);
    }
    let zones = match conv
        .timezone
        .as_deref()
        .and_then(crate::quiet_hours::parse_zone)
    {
        Some(zone) => vec![zone],
        None => crate::quiet_hours::zones_for_number(msg.to.as_str()),
    };
    let from = msg.schedule.map_or(now, |s| s.at.max(now));
    match policy.window.next_allowed(from, &zones) {
        None => Err(Refused::NoAllowedTime),
        Some(at) if at > from => Ok(Some(Schedule {
            at,
            reason: ScheduleReason::QuietHours,
        })),
        Some(_) => Ok(msg.schedule),
    }
}

/// What a send needs to know of its conversation, read in one statement: whether it answers a
/// resident (an inbound message within [`REPLY_WINDOW_MINUTES`]), its workflow type and the
/// tenant's time zone (for quiet hours).
struct Conversation {
    is_reply: bool,
    workflow_type: Option<String>,
    timezone: Option<String>,
}

async fn conversation(
    conn: &mut sqlx::PgConnection,
    conversation_id: uuid::Uuid,
) -> Result<Conversation, sqlx::Error> {
    sqlx::query_as!(
        Conversation,
        r#"SELECT EXISTS (SELECT 1 FROM sms_messages WHERE conversation_id = c.id AND direction = 'inbound'
                          AND created_at > now() - make_interval(mins => $2)) AS "is_reply!",
                  c.workflow_type, t.timezone AS "timezone?"
           FROM sms_conversations c LEFT JOIN tenant_profiles t ON t.tenant_id = c.tenant_id
           WHERE c.id = $1"#,
        conversation_id,
        REPLY_WINDOW_MINUTES
    )
    .fetch_one(conn)
    .await
}

/// Stores the message (`pending`) and its send job on `conn` (the caller's transaction), or says
/// why not.
pub async fn create(
    conn: &mut sqlx::PgConnection,
    sender: &Sender,
    msg: &NewOutbound<'_>,
) -> Result<Result<Created, Refused>, apalis_postgres::Error> {
    if let Err(refused) = check_body(msg.body) {
        return Ok(Err(refused));
    }
    if !msg.opt_out_confirmation
        && let Some(o) =
            optout::opted_out(conn, sender.phone_number.as_deref(), msg.to.as_str()).await?
    {
        return Ok(Err(Refused::OptedOut(o)));
    }
    let conv = conversation(conn, msg.conversation_id).await?;
    let is_reply = conv.is_reply;
    let priority = priority(is_reply);
    let (segments, encoding) = segments::count(msg.body);
    // A time already here (or within a second) is now.
    let now = chrono::Utc::now();
    let schedule = match quiet_hours(msg, &conv, now) {
        Ok(schedule) => schedule,
        Err(refused) => return Ok(Err(refused)),
    }
    .filter(|s| s.at > now + chrono::Duration::seconds(1));
    let status = if schedule.is_some() {
        DeliveryStatus::Scheduled
    } else {
        DeliveryStatus::Pending
    };
    let media = (!msg.media_urls.is_empty()).then(|| serde_json::json!(msg.media_urls));
    let message_id = sqlx::query_scalar!(
        r#"INSERT INTO sms_messages (conversation_id, direction, message_content, delivery_status, to_number,
               from_number, messaging_service_sid, num_segments, encoding, media_urls, priority, status_updated_at,
               tenant_id, scheduled_for, schedule_reason, quiet_hours_override)
           VALUES ($1, 'outbound', $2, $3, $4, $5, $6, $7, $8, $9, $10, now(),
                   (SELECT tenant_id FROM sms_conversations WHERE id = $1), $11, $12, $13)
           RETURNING id"#,
        msg.conversation_id,
        msg.body,
        status.as_str(),
        msg.to.as_str(),
        sender.phone_number,
        sender.messaging_service_sid,
        segments as i32,
        encoding.as_str(),
        media,
        priority,
        schedule.map(|s| s.at),
        schedule.map(|s| s.reason.as_str()),
        msg.quiet_hours_override
    )
    .fetch_one(&mut *conn)
    .await?;
    let when = match schedule {
        Some(s) => When::after((s.at - now).to_std().unwrap_or_default()),
        None => When::NOW,
    };
    jobs::schedule(
        conn,
        &[SendMessage {
            message_id,
            slot: None,
            trace: TraceContext::current(),
        }],
        when.with_priority(priority),
    )
    .await?;
    Ok(Ok(Created {
        message_id,
        segments,
        encoding,
        is_reply,
        status,
        scheduled_for: schedule.map(|s| s.at),
        schedule_reason: schedule.map(|s| s.reason),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_limit_and_priority() {
        let table = [(0, true), (1600, true), (1601, false)];
        for (chars, ok) in table {
            assert_eq!(check_body(&"é".repeat(chars)).is_ok(), ok, "{chars}");
        }
        assert_eq!(
            check_body(&"x".repeat(1700)),
            Err(Refused::BodyTooLong { chars: 1700 })
        );
        assert_eq!(priority(true), REPLY_PRIORITY);
        assert_eq!(priority(false), 0);
    }
}
