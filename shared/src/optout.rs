//! Opt-out keywords as carriers and Twilio apply them: the whole body, case-insensitive.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptChange {
    OptOut,
    OptIn,
}

const OPT_OUT: &[&str] = &[
    "STOP",
    "STOPALL",
    "UNSUBSCRIBE",
    "CANCEL",
    "END",
    "QUIT",
    "REVOKE",
    "OPTOUT",
];
const OPT_IN: &[&str] = &["START", "YES", "UNSTOP"];

/// The keyword a body consists of, if any. Surrounding whitespace and trailing punctuation are
/// ignored ("Stop." and " stop " count); a keyword inside a sentence does not.
pub fn keyword(body: &str) -> Option<(OptChange, &'static str)> {
    let word = body
        .trim()
        .trim_end_matches(['.', '!'])
        .trim()
        .to_ascii_uppercase();
    if let Some(k) = OPT_OUT.iter().find(|k| **k == word) {
        return Some((OptChange::OptOut, k));
    }
    OPT_IN
        .iter()
        .find(|k| **k == word)
        .map(|k| (OptChange::OptIn, *k))
}

/// An opt-out in force: how and when the recipient opted out.
#[derive(Debug, Clone, PartialEq)]
pub struct OptedOut {
    pub keyword: Option<String>,
    pub changed_at: chrono::DateTime<chrono::Utc>,
}

/// Whether `their_number` opted out of messages from `our_number` (from any of our numbers when
/// we send through a messaging service and so have no number of our own). The one opt-out check
/// before every outbound message, whoever asks for it.
pub async fn opted_out(
    conn: &mut sqlx::PgConnection,
    our_number: Option<&str>,
    their_number: &str,
) -> Result<Option<OptedOut>, sqlx::Error> {
    sqlx::query_as!(
        OptedOut,
        r#"SELECT keyword, changed_at FROM sms_opt_outs
           WHERE their_number = $1 AND opted_out AND ($2::text IS NULL OR our_number = $2)
           ORDER BY changed_at DESC LIMIT 1"#,
        their_number,
        our_number
    )
    .fetch_optional(conn)
    .await
}

/// Twilio's `OptOutType` webhook field (STOP, START, HELP under Advanced Opt-Out).
pub fn from_opt_out_type(value: &str) -> Option<OptChange> {
    match value.trim().to_ascii_uppercase().as_str() {
        "STOP" => Some(OptChange::OptOut),
        "START" => Some(OptChange::OptIn),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_body_keywords() {
        assert_eq!(keyword("STOP"), Some((OptChange::OptOut, "STOP")));
        assert_eq!(keyword(" stop. "), Some((OptChange::OptOut, "STOP")));
        assert_eq!(
            keyword("Unsubscribe"),
            Some((OptChange::OptOut, "UNSUBSCRIBE"))
        );
        assert_eq!(keyword("optout"), Some((OptChange::OptOut, "OPTOUT")));
        assert_eq!(keyword("start"), Some((OptChange::OptIn, "START")));
        assert_eq!(keyword("Yes!"), Some((OptChange::OptIn, "YES")));
        assert_eq!(keyword("please stop texting me"), None);
        assert_eq!(keyword("HELP"), None);
        assert_eq!(keyword(""), None);
    }

    #[test]
    fn opt_out_type_field() {
        assert_eq!(from_opt_out_type("STOP"), Some(OptChange::OptOut));
        assert_eq!(from_opt_out_type("start"), Some(OptChange::OptIn));
        assert_eq!(from_opt_out_type("HELP"), None);
    }
}
