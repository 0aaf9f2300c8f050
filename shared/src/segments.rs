//! How carriers count an SMS: GSM-7 (with its extension table, whose characters take two septets)
//! when every character fits, else UCS-2; 160 septets or 70 UTF-16 units in one segment, 153 or 67
//! per segment once concatenated.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Encoding {
    #[serde(rename = "GSM-7")]
    Gsm7,
    #[serde(rename = "UCS-2")]
    Ucs2,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gsm7 => "GSM-7",
            Self::Ucs2 => "UCS-2",
        }
    }
}

const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\u{1b}ÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM_EXTENDED: &str = "\u{c}^{}\\[~]|€";

/// Septets for `c` in GSM-7, or None when it needs UCS-2.
fn gsm_septets(c: char) -> Option<usize> {
    if GSM_BASIC.contains(c) {
        Some(1)
    } else if GSM_EXTENDED.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// (segments, encoding) for a body.
pub fn count(body: &str) -> (u32, Encoding) {
    let septets: Option<usize> = body.chars().map(gsm_septets).sum();
    match septets {
        Some(n) => (segments(n, 160, 153), Encoding::Gsm7),
        None => (
            segments(body.encode_utf16().count(), 70, 67),
            Encoding::Ucs2,
        ),
    }
}

fn segments(units: usize, single: usize, multi: usize) -> u32 {
    if units <= single {
        1
    } else {
        units.div_ceil(multi) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm7_boundaries() {
        assert_eq!(count(""), (1, Encoding::Gsm7));
        assert_eq!(count(&"a".repeat(160)), (1, Encoding::Gsm7));
        assert_eq!(count(&"a".repeat(161)), (2, Encoding::Gsm7));
        assert_eq!(count(&"a".repeat(306)), (2, Encoding::Gsm7));
        assert_eq!(count(&"a".repeat(307)), (3, Encoding::Gsm7));
        // Extension characters take two septets.
        assert_eq!(count(&"€".repeat(80)), (1, Encoding::Gsm7));
        assert_eq!(count(&"€".repeat(81)), (2, Encoding::Gsm7));
        // Spanish punctuation and ñ, ü, é are in the GSM alphabet; á and í are not.
        assert_eq!(count("¿Qué tal? ñ ü é"), (1, Encoding::Gsm7));
        assert_eq!(count("Olá").1, Encoding::Ucs2);
        assert_eq!(count("Sí").1, Encoding::Ucs2);
    }

    #[test]
    fn ucs2_boundaries() {
        assert_eq!(count("Sí, gracias 🙏").1, Encoding::Ucs2);
        assert_eq!(count(&"ç".repeat(70)), (1, Encoding::Ucs2));
        assert_eq!(count(&"ç".repeat(71)), (2, Encoding::Ucs2));
        assert_eq!(count(&"ç".repeat(134)), (2, Encoding::Ucs2));
        assert_eq!(count(&"ç".repeat(135)), (3, Encoding::Ucs2));
        // An emoji is two UTF-16 units.
        assert_eq!(count(&"😀".repeat(35)), (1, Encoding::Ucs2));
        assert_eq!(count(&"😀".repeat(36)), (2, Encoding::Ucs2));
    }
}
