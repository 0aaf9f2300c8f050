//! Opt-outs and opt-ins in English, Spanish and Portuguese.
//!
//! Revocation of consent by "any reasonable means" (FCC 2024, 47 CFR 64.1200(a)(10)): the
//! carriers' whole-message keywords (STOP, QUIT, END, REVOKE, OPT OUT, CANCEL, UNSUBSCRIBE...) and
//! their Spanish and Portuguese equivalents (BAJA, PARAR, ALTO, DETENER; PARAR, SAIR, PARE...),
//! in any case, with or without accents and surrounding punctuation; and revocation phrases
//! anywhere in a message ("stop texting me", "no me manden más mensajes", "não quero mais
//! receber mensagens"). Precision matters as much as recall: a lone "no", or "pare de cobrar"
//! (stop charging), is not an opt-out. `tests/optout_accuracy.rs` measures both on a labelled
//! set. Each detection names the rule that matched, which is recorded with the opt-out.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptChange {
    OptOut,
    OptIn,
}

impl OptChange {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OptOut => "opt_out",
            Self::OptIn => "opt_in",
        }
    }
}

/// What a message says about consent, and the rule that found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub change: OptChange,
    /// The keyword or phrase as matched (normalised: lower case, no accents).
    pub matched: &'static str,
    /// `keyword:<lang>` (the whole message) or `phrase:<lang>` (anywhere in it).
    pub rule: String,
}

impl Detected {
    /// The keyword in the carriers' spelling (upper case), for the ledger.
    pub fn keyword(&self) -> String {
        self.matched.to_uppercase()
    }
}

/// Whole-message opt-out keywords, normalised (lower case, no accents), by language.
const OPT_OUT_KEYWORDS: &[(&str, &[&str])] = &[
    (
        "en",
        &[
            "stop",
            "stopall",
            "stop all",
            "unsubscribe",
            "cancel",
            "end",
            "quit",
            "revoke",
            "optout",
            "opt out",
            "stop please",
            "please stop",
        ],
    ),
    (
        "es",
        &[
            "baja",
            "darme de baja",
            "dar de baja",
            "parar",
            "para",
            "alto",
            "detener",
            "cancelar",
            "basta",
            "no mas",
            "cancelar suscripcion",
        ],
    ),
    (
        "pt",
        &[
            "sair",
            "pare",
            "chega",
            "descadastrar",
            "remover",
            "cancelar inscricao",
        ],
    ),
];

/// Whole-message opt-in keywords (only lift an opt-out in force: YES, SI, SIM are everyday words).
const OPT_IN_KEYWORDS: &[(&str, &[&str])] = &[
    ("en", &["start", "unstop", "yes", "subscribe"]),
    ("es", &["alta", "reanudar", "comenzar", "suscribir", "si"]),
    ("pt", &["iniciar", "voltar", "reativar", "sim", "assinar"]),
];

/// Revocation phrases, found anywhere in a message on word boundaries.
const OPT_OUT_PHRASES: &[(&str, &[&str])] = &[
    (
        "en",
        &[
            "stop texting",
            "stop text me",
            "stop messaging",
            "stop sending me",
            "stop sending messages",
            "stop sending texts",
            "stop contacting me",
            "dont text me",
            "don t text me",
            "do not text me",
            "dont message me",
            "do not message me",
            "do not contact me",
            "dont contact me",
            "no more texts",
            "no more messages",
            "unsubscribe me",
            "remove me from",
            "opt me out",
            "i want to opt out",
            "stop all messages",
            "stop the texts",
            "stop the messages",
            "take me off this list",
            "take me off your list",
            "take me off the list",
        ],
    ),
    (
        "es",
        &[
            "no me manden mas",
            "no me envien mas",
            "no me escriban mas",
            "no me mande mas",
            "no me envie mas",
            "dejen de enviarme",
            "dejen de mandarme",
            "dejen de escribirme",
            "deje de enviarme",
            "deje de mandarme",
            "quiero darme de baja",
            "no quiero mas mensajes",
            "no quiero recibir mas",
            "no quiero recibir mensajes",
            "borrenme de",
            "quitenme de",
            "eliminen mi numero",
            "no me contacten",
            "no mas mensajes",
            "no quiero que me escriban",
        ],
    ),
    (
        "pt",
        &[
            "nao quero mais receber",
            "nao quero receber mais",
            "nao quero receber mensagens",
            "nao quero mais mensagens",
            "parem de me enviar",
            "parem de enviar",
            "parem de mandar",
            "parem de me mandar",
            "pare de me enviar",
            "pare de me mandar",
            "pare de enviar mensagens",
            "pare de mandar mensagens",
            "nao me enviem mais",
            "nao me mandem mais",
            "quero sair da lista",
            "me tirem da lista",
            "me remova",
            "me removam",
            "parem com as mensagens",
            "nao me mande mais",
        ],
    ),
];

/// Lower case, accents folded, punctuation and symbols as spaces, spaces collapsed.
pub fn normalise(body: &str) -> String {
    let folded: String = body
        .chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'á' | 'à' | 'â' | 'ã' | 'ä' => 'a',
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'í' | 'ì' | 'î' | 'ï' => 'i',
            'ó' | 'ò' | 'ô' | 'õ' | 'ö' => 'o',
            'ú' | 'ù' | 'û' | 'ü' => 'u',
            'ç' => 'c',
            'ñ' => 'n',
            '\'' | '’' => '\0',
            c if c.is_alphanumeric() => c,
            _ => ' ',
        })
        .filter(|c| *c != '\0')
        .collect();
    folded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The opt-out or opt-in a message expresses, if any: a whole-message keyword first, else a
/// revocation phrase anywhere in it.
pub fn detect(body: &str) -> Option<Detected> {
    let text = normalise(body);
    if text.is_empty() {
        return None;
    }
    for (change, table) in [
        (OptChange::OptOut, OPT_OUT_KEYWORDS),
        (OptChange::OptIn, OPT_IN_KEYWORDS),
    ] {
        for (lang, words) in table {
            if let Some(w) = words.iter().find(|w| **w == text) {
                return Some(Detected {
                    change,
                    matched: w,
                    rule: format!("keyword:{lang}"),
                });
            }
        }
    }
    let padded = format!(" {text} ");
    for (lang, phrases) in OPT_OUT_PHRASES {
        if let Some(p) = phrases.iter().find(|p| padded.contains(&format!(" {p} "))) {
            return Some(Detected {
                change: OptChange::OptOut,
                matched: p,
                rule: format!("phrase:{lang}"),
            });
        }
    }
    None
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

/// How an opt change reached us (`sms_opt_out_events.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Sms,
    Twilio,
    Api,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Twilio => "twilio",
            Self::Api => "api",
        }
    }
}

/// One opt-out or opt-in to record.
#[derive(Debug, Clone)]
pub struct Change<'a> {
    pub our_number: &'a str,
    pub their_number: &'a str,
    pub change: OptChange,
    pub source: Source,
    /// For the API: phone_call, letter, email, in_person, web_form, other.
    pub method: Option<&'a str>,
    pub keyword: Option<&'a str>,
    pub rule: Option<&'a str>,
    /// Twilio's `OptOutType` or our own marker (`twilio-21610`), kept in the state row.
    pub opt_out_type: Option<&'a str>,
    pub message_id: Option<uuid::Uuid>,
    pub tenant_id: Option<&'a str>,
    pub note: Option<&'a str>,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
}

/// Records an opt change in the ledger and, when it is the newest for the pair, in the state in
/// force; in the caller's transaction. An opt-in changes only a number that opted out ("YES" and
/// "SI" are everyday words).
pub async fn record(
    conn: &mut sqlx::PgConnection,
    c: &Change<'_>,
) -> Result<Recorded, sqlx::Error> {
    // (changed, newly_opted_out): the state in force changed, and the number was not opted out
    // before (the one moment a confirmation may be sent).
    let (changed, newly_opted_out) = match c.change {
        // An opt-out locks the pair's row first to learn whether it was already opted out.
        OptChange::OptOut => {
            let before = sqlx::query_scalar!(
                "SELECT opted_out FROM sms_opt_outs WHERE our_number = $1 AND their_number = $2 FOR UPDATE",
                c.our_number,
                c.their_number
            )
            .fetch_optional(&mut *conn)
            .await?;
            let changed = sqlx::query!(
                r#"INSERT INTO sms_opt_outs (our_number, their_number, opted_out, keyword, opt_out_type, message_id, changed_at, rule)
                   VALUES ($1, $2, true, $3, $4, $5, $6, $7)
                   ON CONFLICT (our_number, their_number) DO UPDATE SET
                       opted_out = true, keyword = EXCLUDED.keyword, opt_out_type = EXCLUDED.opt_out_type,
                       message_id = EXCLUDED.message_id, changed_at = EXCLUDED.changed_at, rule = EXCLUDED.rule
                   WHERE sms_opt_outs.changed_at <= EXCLUDED.changed_at"#,
                c.our_number, c.their_number, c.keyword, c.opt_out_type, c.message_id, c.occurred_at, c.rule
            )
            .execute(&mut *conn)
            .await?
            .rows_affected()
                > 0;
            (changed, changed && before != Some(true))
        }
        // An opt-in needs no such answer: its UPDATE takes the same row lock at the same point,
        // one round trip instead of two (a no-op for the many numbers never opted out).
        OptChange::OptIn => {
            let changed = sqlx::query!(
                r#"UPDATE sms_opt_outs SET opted_out = false, keyword = $3, opt_out_type = $4,
                       message_id = $5, changed_at = $6, rule = $7
                   WHERE our_number = $1 AND their_number = $2 AND changed_at <= $6"#,
                c.our_number,
                c.their_number,
                c.keyword,
                c.opt_out_type,
                c.message_id,
                c.occurred_at,
                c.rule
            )
            .execute(&mut *conn)
            .await?
            .rows_affected()
                > 0;
            (changed, false)
        }
    };
    // Every opt-out received is in the ledger; an opt-in only when it lifted one.
    let event_id = if changed || c.change == OptChange::OptOut {
        Some(sqlx::query_scalar!(
            r#"INSERT INTO sms_opt_out_events (our_number, their_number, change, source, method, keyword, rule,
                   message_id, tenant_id, note, occurred_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id"#,
            c.our_number, c.their_number, c.change.as_str(), c.source.as_str(), c.method, c.keyword,
            c.rule, c.message_id, c.tenant_id, c.note, c.occurred_at
        )
        .fetch_one(&mut *conn)
        .await?)
    } else {
        None
    };
    Ok(Recorded {
        event_id,
        changed,
        newly_opted_out,
    })
}

/// What recording an opt change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The ledger event written, if any (an opt-in that lifted nothing writes none).
    pub event_id: Option<i64>,
    /// The state in force changed (an opt-in that lifted an opt-out, a newer opt-out).
    pub changed: bool,
    /// The number was not opted out before: the one moment a confirmation may be sent.
    pub newly_opted_out: bool,
}

/// The confirmation of an opt-out, in the recipient's language (en, es or pt).
pub fn confirmation(language: Option<&str>) -> &'static str {
    match language {
        Some("es") => {
            "Se ha dado de baja y no recibirá más mensajes nuestros. Responda ALTA para volver a recibirlos."
        }
        Some("pt") => {
            "Você foi descadastrado e não receberá mais mensagens nossas. Responda INICIAR para voltar a recebê-las."
        }
        _ => {
            "You are unsubscribed and will receive no more messages from us. Reply START to resubscribe."
        }
    }
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
    fn keywords_and_phrases() {
        let table: &[(&str, Option<(OptChange, &str)>)] = &[
            ("STOP", Some((OptChange::OptOut, "keyword:en"))),
            (" stop. ", Some((OptChange::OptOut, "keyword:en"))),
            ("Unsubscribe", Some((OptChange::OptOut, "keyword:en"))),
            ("opt-out", Some((OptChange::OptOut, "keyword:en"))),
            ("¡BAJA!", Some((OptChange::OptOut, "keyword:es"))),
            ("Detener", Some((OptChange::OptOut, "keyword:es"))),
            ("SAIR", Some((OptChange::OptOut, "keyword:pt"))),
            ("Pare!!", Some((OptChange::OptOut, "keyword:pt"))),
            ("start", Some((OptChange::OptIn, "keyword:en"))),
            ("Sí", Some((OptChange::OptIn, "keyword:es"))),
            (
                "please stop texting me",
                Some((OptChange::OptOut, "phrase:en")),
            ),
            (
                "No me manden más mensajes",
                Some((OptChange::OptOut, "phrase:es")),
            ),
            (
                "Não quero mais receber mensagens",
                Some((OptChange::OptOut, "phrase:pt")),
            ),
            ("no", None),
            ("pare de cobrar", None),
            ("Can you stop by the office?", None),
            ("HELP", None),
            ("", None),
        ];
        for (body, want) in table {
            let got = detect(body).map(|d| (d.change, d.rule));
            assert_eq!(got, want.map(|(c, r)| (c, r.to_owned())), "{body:?}");
        }
    }

    #[test]
    fn opt_out_type_field() {
        assert_eq!(from_opt_out_type("STOP"), Some(OptChange::OptOut));
        assert_eq!(from_opt_out_type("start"), Some(OptChange::OptIn));
        assert_eq!(from_opt_out_type("HELP"), None);
    }
}
