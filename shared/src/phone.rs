//! Phone numbers: E.164 normalisation (kept beside the original) and the written forms tried
//! against directories that may have stored a number any way.

use std::fmt;

use phonenumber::{Mode, country::Id};
use serde::{Deserialize, Serialize};

/// A number in E.164 (`+15551234567`). Only [`normalize`] makes one, so holding an `E164` means the
/// number parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct E164(String);

impl E164 {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last four digits, for logs: a full number is personal data.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    #[error("phone number is empty")]
    Empty,
    #[error("not a phone number: {0}")]
    Unparseable(String),
    #[error("phone number has an impossible length")]
    BadLength,
}

/// Parses a region code such as `US` or `BR`.
pub fn parse_region(code: &str) -> Option<Id> {
    code.trim().to_ascii_uppercase().parse().ok()
}

/// What a sender is (`sms_conversations.number_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberKind {
    Phone,
    ShortCode,
    Alphanumeric,
    Other,
}

impl NumberKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Phone => "phone",
            Self::ShortCode => "short_code",
            Self::Alphanumeric => "alphanumeric",
            Self::Other => "other",
        }
    }
}

/// A sender as stored: its E.164 when it is a phone number, else its written form, and its kind.
pub fn sender(raw: &str, region: Id) -> (String, Option<E164>, NumberKind) {
    if let Ok(e164) = normalize(raw, region) {
        return (e164.as_str().to_owned(), Some(e164), NumberKind::Phone);
    }
    let written = raw.trim().to_owned();
    let r = read(raw, region);
    let kind = if r.letters {
        NumberKind::Alphanumeric
    } else if !r.international
        && (3..=8).contains(&r.digits)
        && written.chars().all(|c| c.is_ascii_digit())
    {
        NumberKind::ShortCode
    } else {
        NumberKind::Other
    };
    (written, None, kind)
}

/// Why a number cannot be sent to (the reasons `POST /sms/send` gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unsendable {
    #[error("not a valid number")]
    NotValid,
    #[error("not a mobile/fixed-line number we can text")]
    NotTextable,
    #[error("short codes cannot be texted")]
    ShortCode,
}

/// A written number read the way libphonenumber reads it for `region`.
struct Read {
    number: Option<phonenumber::PhoneNumber>,
    /// Written with its country code (`+`, or the region's international prefix such as 011).
    international: bool,
    /// Letters besides a `tel:` scheme and a trailing extension.
    letters: bool,
    digits: usize,
}

/// Any Unicode decimal digit (full-width `４`, Arabic-Indic `٤`...) and the full-width plus as
/// ASCII, as libphonenumber normalises them.
fn ascii_digits(raw: &str) -> String {
    raw.chars()
        .map(|c| match c {
            '＋' => '+',
            '０'..='９' => char::from(b'0' + (c as u32 - '０' as u32) as u8),
            '٠'..='٩' => char::from(b'0' + (c as u32 - '٠' as u32) as u8),
            '۰'..='۹' => char::from(b'0' + (c as u32 - '۰' as u32) as u8),
            c => c,
        })
        .collect()
}

/// The text without a `tel:` scheme and a trailing extension (`ext. 12`, `x12`).
fn core_of(s: &str) -> &str {
    let s = s.trim();
    let s = match s.get(..4) {
        Some(scheme) if scheme.eq_ignore_ascii_case("tel:") => &s[4..],
        _ => s,
    };
    let without_digits = s.trim_end_matches(|c: char| c.is_ascii_digit());
    if without_digits.len() == s.len() {
        return s;
    }
    let before = without_digits.trim_end();
    let lower = before.to_ascii_lowercase();
    for marker in ["ext.", "ext", "x"] {
        if lower.ends_with(marker) {
            return before[..before.len() - marker.len()].trim_end();
        }
    }
    s
}

/// The length of the region's international prefix (011 in North America, 00 elsewhere...) at
/// the start of `digits`, if it is there.
fn idd_len(digits: &str, region: Id) -> Option<usize> {
    let meta = phonenumber::metadata::DATABASE.by_id(region.as_ref())?;
    let found = meta.international_prefix()?.find(digits)?;
    (found.start() == 0 && found.end() < digits.len()).then_some(found.end())
}

fn read(raw: &str, region: Id) -> Read {
    let ascii = ascii_digits(raw);
    let core = core_of(&ascii);
    let letters = core.chars().any(char::is_alphabetic);
    let digits: String = core.chars().filter(char::is_ascii_digit).collect();
    let plus = core.trim_start().starts_with('+');
    // With a country code, parse as international and without the region: the phonenumber crate
    // otherwise strips the REGION's national prefix from the foreign number (011 55 11 9...
    // lost the "1" of Sao Paulo's area code 11 as if it were the US trunk prefix).
    let (number, international) = if plus {
        (phonenumber::parse(None, core).ok(), true)
    } else if let Some(idd) = idd_len(&digits, region) {
        (
            phonenumber::parse(None, format!("+{}", &digits[idd..])).ok(),
            true,
        )
    } else {
        let national = phonenumber::parse(Some(region), core).ok();
        (national.map(|n| keep_trunk_digit(n, &digits)), false)
    };
    Read {
        number,
        international,
        letters,
        digits: digits.len(),
    }
}

/// libphonenumber strips a national prefix only when what is left is still a possible number; the
/// crate strips it regardless ("(123) 456-7890" lost its leading 1). Undo that when it made the
/// number impossible and the written digits were not.
fn keep_trunk_digit(n: phonenumber::PhoneNumber, digits: &str) -> phonenumber::PhoneNumber {
    if is_possible(&n) || n.national().to_string().len() >= digits.len() {
        return n;
    }
    match phonenumber::parse(None, format!("+{}{digits}", n.code().value())) {
        Ok(whole) if is_possible(&whole) => whole,
        _ => n,
    }
}

/// libphonenumber's `isPossibleNumber`: a length its country uses for some type of number
/// (local-only lengths too). The crate leaves the general descriptor's lengths empty, so this is
/// the union over the types, as libphonenumber builds it.
fn is_possible(n: &phonenumber::PhoneNumber) -> bool {
    let db = &phonenumber::metadata::DATABASE;
    // A number in no region's assigned ranges has no region: take its country code's main one.
    let meta = n.metadata(db).or_else(|| {
        db.by_code(&n.code().value())
            .and_then(|all| all.into_iter().next())
    });
    let Some(meta) = meta else {
        return false;
    };
    let d = meta.descriptors();
    let len = n.national().to_string().len() as u16;
    [
        d.fixed_line(),
        d.mobile(),
        d.toll_free(),
        d.premium_rate(),
        d.shared_cost(),
        d.personal_number(),
        d.voip(),
        d.pager(),
        d.uan(),
        d.voicemail(),
    ]
    .into_iter()
    .flatten()
    .any(|t| t.possible_length().contains(&len) || t.possible_local_length().contains(&len))
}

fn e164_of(n: &phonenumber::PhoneNumber) -> E164 {
    E164(n.format().mode(Mode::E164).to_string())
}

/// A short code as written: 3 to 6 digits without a country code.
fn short_code(r: &Read) -> bool {
    !r.letters && !r.international && (3..=6).contains(&r.digits)
}

/// A number a text may be sent to: only [`recipient`] makes one, so every send (the API's, an
/// agent's reply, an opt-out confirmation) has passed the same check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient(E164);

impl Recipient {
    /// E.164.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn masked(&self) -> String {
        self.0.masked()
    }
}

/// The number a send goes to, or why it cannot be sent to: valid for its country in
/// libphonenumber's metadata and of a type that takes texts. Letters are refused (never turned
/// into keypad digits: a letter O typed for a zero would reach someone else).
pub fn recipient(raw: &str, region: Id) -> Result<Recipient, Unsendable> {
    let r = read(raw, region);
    if r.letters {
        return Err(Unsendable::NotValid);
    }
    if short_code(&r) {
        return Err(Unsendable::ShortCode);
    }
    let n = r.number.ok_or(Unsendable::NotValid)?;
    if !phonenumber::is_valid(&n) {
        return Err(Unsendable::NotValid);
    }
    use phonenumber::Type;
    match n.number_type(&phonenumber::metadata::DATABASE) {
        Type::Mobile
        | Type::FixedLine
        | Type::FixedLineOrMobile
        | Type::Voip
        | Type::PersonalNumber
        | Type::TollFree => Ok(Recipient(e164_of(&n))),
        _ => Err(Unsendable::NotTextable),
    }
}

/// Normalises a sender (or any number looked up) as libphonenumber would: E.164 for a phone
/// number, even one outside the ranges its metadata knows as assigned (a real tenant must not be
/// lost to stale metadata). Not a phone number (Err): what does not parse, letters (alphanumeric
/// sender IDs), and, written without a country code, what has no possible length (short codes);
/// such senders keep their written form. A number written with its country code is taken as
/// written even when its length is off (Mexico's old "+52 1" mobile form), so all of its forms
/// meet in one conversation.
pub fn normalize(raw: &str, region: Id) -> Result<E164, PhoneError> {
    if raw.trim().is_empty() {
        return Err(PhoneError::Empty);
    }
    let r = read(raw, region);
    if r.letters || short_code(&r) {
        return Err(PhoneError::Unparseable("not a phone number".into()));
    }
    let n = r
        .number
        .ok_or_else(|| PhoneError::Unparseable("not a phone number".into()))?;
    if r.international || is_possible(&n) {
        Ok(e164_of(&n))
    } else {
        Err(PhoneError::BadLength)
    }
}

/// Written forms of one number to try against a directory, most likely first, without repeats:
/// as received, E.164, national (`(555) 123-4567`), national digits, and E.164 digits.
pub fn lookup_variants(raw: &str, e164: Option<&E164>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(5);
    let mut push = |s: String| {
        if !s.is_empty() && !out.contains(&s) {
            out.push(s);
        }
    };
    push(raw.trim().to_owned());
    if let Some(e164) = e164 {
        push(e164.0.clone());
        if let Ok(parsed) = phonenumber::parse(None, &e164.0) {
            push(parsed.format().mode(Mode::National).to_string());
            push(parsed.national().to_string());
        }
        push(e164.0.trim_start_matches('+').to_owned());
    } else {
        push(raw.chars().filter(char::is_ascii_digit).collect());
    }
    out
}

/// Masks all but the last four characters of a number for logs.
pub fn mask(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    if chars.len() <= 4 {
        return "*".repeat(chars.len());
    }
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{}{}", "*".repeat(chars.len() - 4), tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_common_us_forms() {
        for raw in [
            "+15551234567",
            "(555) 123-4567",
            "555-123-4567",
            "5551234567",
            "15551234567",
            "1 (555) 123 4567",
            " +1 555.123.4567 ",
        ] {
            assert_eq!(
                normalize(raw, Id::US).unwrap().as_str(),
                "+15551234567",
                "{raw}"
            );
        }
    }

    #[test]
    fn keeps_foreign_numbers() {
        assert_eq!(
            normalize("+55 11 91234-5678", Id::US).unwrap().as_str(),
            "+5511912345678"
        );
        assert_eq!(
            normalize("+34 612 345 678", Id::US).unwrap().as_str(),
            "+34612345678"
        );
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(normalize("", Id::US), Err(PhoneError::Empty));
        assert!(normalize("hello", Id::US).is_err());
        assert!(normalize("12", Id::US).is_err());
    }

    #[test]
    fn senders_keep_what_is_not_a_phone_number() {
        let table = [
            ("+1 415 555 2671", "+14155552671", NumberKind::Phone),
            ("12345", "12345", NumberKind::ShortCode),
            ("898287", "898287", NumberKind::ShortCode),
            ("ACME Rent", "ACME Rent", NumberKind::Alphanumeric),
            ("", "", NumberKind::Other),
            ("+52 1 55 1234 5678", "+5215512345678", NumberKind::Phone),
            ("011 52 1 55 1234 5678", "+5215512345678", NumberKind::Phone),
        ];
        for (raw, stored, kind) in table {
            let (s, _, k) = sender(raw, Id::US);
            assert_eq!((s.as_str(), k), (stored, kind), "{raw:?}");
        }
    }

    #[test]
    fn sends_need_valid_numbers() {
        assert_eq!(recipient("+15551234567", Id::US), Err(Unsendable::NotValid));
        assert_eq!(recipient("22395", Id::US), Err(Unsendable::ShortCode));
        assert_eq!(recipient("415-555-267O", Id::US), Err(Unsendable::NotValid));
        assert_eq!(
            recipient("+14155552671", Id::US).unwrap().as_str(),
            "+14155552671"
        );
    }

    #[test]
    fn variants_cover_the_written_forms() {
        let e = normalize("555-123-4567", Id::US).unwrap();
        assert_eq!(
            lookup_variants("555-123-4567", Some(&e)),
            vec![
                "555-123-4567",
                "+15551234567",
                "(555) 123-4567",
                "5551234567",
                "15551234567"
            ]
        );
    }

    #[test]
    fn masks() {
        assert_eq!(mask("+15551234567"), "********4567");
        assert_eq!(mask("123"), "***");
    }
}
