//! Delivery statuses (`sms_messages.delivery_status`) and the order they may move in. Callbacks
//! repeat and arrive out of order, so a status is applied only when it moves the message forward:
//! queued < sending < sent < delivered / undelivered / failed, and read only after delivered.
//! The migration's CHECK constraint lists exactly [`DeliveryStatus::ALL`].

use std::{fmt, str::FromStr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    /// Ours: stored, not yet handed to Twilio.
    Pending,
    /// Ours: a call to Twilio is under way or its outcome is not known yet.
    Submitting,
    Accepted,
    /// Ours: stored, to be handed to Twilio at its `scheduled_for` (a requested time, or the end
    /// of quiet hours). We never use Twilio's own scheduling, so this is never Twilio's.
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
    /// Inbound messages.
    Receiving,
    Received,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 15] = [
        Self::Pending,
        Self::Submitting,
        Self::Accepted,
        Self::Scheduled,
        Self::Queued,
        Self::Sending,
        Self::Sent,
        Self::Delivered,
        Self::Undelivered,
        Self::Failed,
        Self::Canceled,
        Self::PartiallyDelivered,
        Self::Read,
        Self::Receiving,
        Self::Received,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Submitting => "submitting",
            Self::Accepted => "accepted",
            Self::Scheduled => "scheduled",
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Undelivered => "undelivered",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::PartiallyDelivered => "partially_delivered",
            Self::Read => "read",
            Self::Receiving => "receiving",
            Self::Received => "received",
        }
    }

    /// How far along an outbound message is; 0 before Twilio has it.
    pub fn rank(self) -> u8 {
        match self {
            Self::Pending
            | Self::Submitting
            | Self::Scheduled
            | Self::Receiving
            | Self::Received => 0,
            Self::Accepted | Self::Queued => 1,
            Self::Sending => 2,
            Self::Sent => 3,
            Self::Delivered
            | Self::Undelivered
            | Self::Failed
            | Self::Canceled
            | Self::PartiallyDelivered => 4,
            Self::Read => 5,
        }
    }

    /// Final: nothing after it except `read` after `delivered`.
    pub fn is_final(self) -> bool {
        self.rank() >= 4
    }

    /// Whether Twilio has the message (a status only Twilio gives).
    pub fn at_twilio(self) -> bool {
        self.rank() > 0
    }

    /// Whether `new` may replace `self`.
    pub fn advances_to(self, new: DeliveryStatus) -> bool {
        match new {
            Self::Read => self == Self::Delivered,
            _ => new.rank() > self.rank(),
        }
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown delivery status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for DeliveryStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// Statuses Twilio reports (every one but our own two).
pub fn is_known(status: &str) -> bool {
    status
        .parse::<DeliveryStatus>()
        .is_ok_and(|s| !matches!(s, DeliveryStatus::Pending | DeliveryStatus::Submitting))
}

#[cfg(test)]
mod tests {
    use super::DeliveryStatus::{self, *};

    #[test]
    fn moves_only_forward() {
        let table: &[(DeliveryStatus, DeliveryStatus, bool)] = &[
            (Pending, Queued, true),
            (Submitting, Queued, true),
            (Queued, Submitting, false),
            (Queued, Sending, true),
            (Sending, Sent, true),
            (Sent, Delivered, true),
            (Delivered, Read, true),
            (Delivered, Sent, false),
            (Delivered, Queued, false),
            (Failed, Delivered, false),
            (Sent, Read, false),
            (Sent, Sent, false),
            (Sent, Undelivered, true),
        ];
        for (from, to, ok) in table {
            assert_eq!(from.advances_to(*to), *ok, "{from} -> {to}");
        }
        assert!(Failed.is_final() && !Sent.is_final());
        assert!(!Scheduled.at_twilio() && Canceled.is_final());
    }

    #[test]
    fn every_status_round_trips_and_only_twilios_are_known() {
        for s in DeliveryStatus::ALL {
            assert_eq!(s.as_str().parse::<DeliveryStatus>(), Ok(s));
        }
        assert!(super::is_known("delivered") && super::is_known("received"));
        assert!(!super::is_known("pending") && !super::is_known("bogus"));
    }
}
