//! Delivery statuses and the order they may move in. Callbacks repeat and arrive out of order, so
//! a status is applied only when it moves the message forward: queued < sending < sent <
//! delivered / undelivered / failed, and read only after delivered.

/// Our own statuses before Twilio has the message: `pending` (stored, not yet handed over) and
/// `submitting` (a call to Twilio is under way or its outcome is not known yet).
pub fn rank(status: &str) -> u8 {
    match status {
        "pending" | "submitting" => 0,
        "accepted" | "scheduled" | "queued" => 1,
        "sending" => 2,
        "sent" => 3,
        "delivered" | "undelivered" | "failed" | "canceled" | "partially_delivered" => 4,
        "read" => 5,
        _ => 0,
    }
}

/// Final statuses: nothing after them except `read` after `delivered`.
pub fn is_final(status: &str) -> bool {
    rank(status) >= 4
}

/// Whether `new` may replace `current`.
pub fn advances(current: &str, new: &str) -> bool {
    match new {
        "read" => current == "delivered",
        _ => rank(new) > rank(current),
    }
}

/// Statuses Twilio reports for an outbound message.
pub fn is_known(status: &str) -> bool {
    matches!(
        status,
        "queued"
            | "sending"
            | "sent"
            | "delivered"
            | "undelivered"
            | "failed"
            | "receiving"
            | "received"
            | "accepted"
            | "scheduled"
            | "read"
            | "canceled"
            | "partially_delivered"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_only_forward() {
        assert!(advances("pending", "queued"));
        assert!(advances("submitting", "queued"));
        assert!(!advances("queued", "submitting"));
        assert!(advances("queued", "sending"));
        assert!(advances("sending", "sent"));
        assert!(advances("sent", "delivered"));
        assert!(advances("delivered", "read"));
        assert!(!advances("delivered", "sent"));
        assert!(!advances("delivered", "queued"));
        assert!(!advances("failed", "delivered"));
        assert!(!advances("sent", "read"));
        assert!(!advances("sent", "sent"));
        assert!(advances("sent", "undelivered"));
        assert!(is_final("failed") && !is_final("sent"));
    }
}
