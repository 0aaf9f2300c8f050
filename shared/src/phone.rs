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

/// Normalises any written form to E.164, reading national forms in `region`.
///
/// Numbers that parse and have a possible length are accepted even when libphonenumber does not
/// know their range as assigned (e.g. the fictional 555 exchange): rejecting a real tenant because
/// metadata is stale would lose a message.
pub fn normalize(raw: &str, region: Id) -> Result<E164, PhoneError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(PhoneError::Empty);
    }
    // An international form is parsed without a region: the phonenumber crate otherwise applies
    // the region's rules to it and can drop digits (+55 11 9... lost its area code as US).
    let hint = if trimmed.starts_with('+') {
        None
    } else {
        Some(region)
    };
    let parsed =
        phonenumber::parse(hint, trimmed).map_err(|e| PhoneError::Unparseable(e.to_string()))?;
    let national_digits = parsed.national().to_string();
    if !(4..=14).contains(&national_digits.len()) {
        return Err(PhoneError::BadLength);
    }
    Ok(E164(parsed.format().mode(Mode::E164).to_string()))
}

/// Normalises strictly: the number must be valid for its region in libphonenumber's metadata.
pub fn normalize_strict(raw: &str, region: Id) -> Result<E164, PhoneError> {
    let e164 = normalize(raw, region)?;
    let parsed = phonenumber::parse(None, e164.as_str())
        .map_err(|e| PhoneError::Unparseable(e.to_string()))?;
    if phonenumber::is_valid(&parsed) {
        Ok(e164)
    } else {
        Err(PhoneError::Unparseable(
            "not a valid number for its region".into(),
        ))
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
    fn strict_rejects_fictional_ranges() {
        assert!(normalize_strict("+15551234567", Id::US).is_err());
        assert!(normalize_strict("+14155552671", Id::US).is_ok());
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
