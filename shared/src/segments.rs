//! How carriers (and Twilio, which bills by it) count an SMS: GSM-7 (with its extension table,
//! whose characters take two septets) when every character fits, else UCS-2; 160 septets or 70
//! UTF-16 units in one segment, at most 153 or 67 per part once concatenated, since a character
//! is never split between parts (an escape pair, a surrogate pair, a whole emoji sequence).

use serde::Serialize;
use unicode_segmentation::UnicodeSegmentation;

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

/// GSM 03.38's basic table (one septet each), as Twilio maps Unicode to it: `Ç` (not `ç`), no
/// escape character of its own.
const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// Its extension table: an escape septet and one more each.
const GSM_EXTENDED: &str = "\u{c}^{}\\[~]|€";

/// Bits in one SMS (140 octets), and the concatenation header's (UDH) share of each part.
const SEGMENT_BITS: i64 = 1120;
const HEADER_BITS: i64 = 48;

/// Septets for a grapheme in GSM-7, or None when it needs UCS-2 (anything that is not one
/// UTF-16 unit of the two tables: accents written as combining marks, emoji, `ç`, backtick).
fn gsm_septets(grapheme: &str) -> Option<i64> {
    let mut chars = grapheme.chars();
    let (Some(c), None) = (chars.next(), chars.next()) else {
        return None;
    };
    if GSM_BASIC.contains(c) {
        Some(1)
    } else if GSM_EXTENDED.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// The units carriers never split: user-perceived characters (an emoji with its modifiers and
/// joiners, a flag, a letter with its combining marks), except that CR LF is two.
fn graphemes(body: &str) -> impl Iterator<Item = &str> {
    body.graphemes(true).flat_map(|g| {
        let pair = g == "\r\n";
        [if pair { "\r" } else { g }, if pair { "\n" } else { "" }]
            .into_iter()
            .filter(|g| !g.is_empty())
    })
}

/// (segments, encoding) for a body, as Twilio counts (and bills) them: GSM-7 when every
/// character is in its tables, else UCS-2; one segment while the whole fits 140 octets, else
/// parts of 134 octets after the header, filled in order, and a character (an escape pair, a
/// surrogate pair, a whole emoji sequence) never split between two parts.
pub fn count(body: &str) -> (u32, Encoding) {
    let septets: Option<Vec<i64>> = graphemes(body).map(gsm_septets).collect();
    let (bits, encoding): (Vec<i64>, Encoding) = match septets {
        Some(s) => (s.into_iter().map(|n| n * 7).collect(), Encoding::Gsm7),
        None => (
            graphemes(body)
                .map(|g| g.encode_utf16().count() as i64 * 16)
                .collect(),
            Encoding::Ucs2,
        ),
    };
    (segments(&bits), encoding)
}

fn segments(bits: &[i64]) -> u32 {
    if bits.iter().sum::<i64>() <= SEGMENT_BITS {
        return 1;
    }
    let part = SEGMENT_BITS - HEADER_BITS;
    let (mut parts, mut free) = (1, part);
    for &b in bits {
        if b > free {
            parts += 1;
            free = part;
        }
        free -= b;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use Encoding::*;

    /// Bodies at the edges, with what GSM 03.38 and UTF-16 packing give (Twilio's calculator
    /// agrees on each): (body, segments, encoding).
    fn table() -> Vec<(String, u32, Encoding)> {
        let r = |s: &str, n: usize| s.repeat(n);
        vec![
            (String::new(), 1, Gsm7),
            (r("a", 160), 1, Gsm7),
            (r("a", 161), 2, Gsm7),
            (r("a", 306), 2, Gsm7),
            (r("a", 307), 3, Gsm7),
            (r("a", 459), 3, Gsm7),
            (r("a", 460), 4, Gsm7),
            // Extension characters take two septets, and an escape pair is never split.
            (r("€", 80), 1, Gsm7),
            (r("€", 81), 2, Gsm7),
            (r("€", 153), 3, Gsm7),
            (format!("{}€{}", r("a", 152), r("a", 152)), 3, Gsm7),
            (format!("{}€{}", r("a", 151), r("a", 153)), 2, Gsm7),
            (format!("{}€", r("a", 158)), 1, Gsm7),
            (format!("{}€", r("a", 159)), 2, Gsm7),
            (r("[]", 40), 1, Gsm7),
            (r("\u{c}", 80), 1, Gsm7),
            // CR LF is two characters; both are in the basic table.
            (r("\r\n", 80), 1, Gsm7),
            (r("\r\n", 81), 2, Gsm7),
            // Spanish punctuation and ñ, ü, é, Ç are GSM; á, í, ç, backtick, ESC are not.
            ("¿Qué tal? ñ ü é Ç".into(), 1, Gsm7),
            ("Olá".into(), 1, Ucs2),
            ("Sí".into(), 1, Ucs2),
            ("ç".into(), 1, Ucs2),
            ("`".into(), 1, Ucs2),
            ("\u{1b}".into(), 1, Ucs2),
            // An accent written as a combining mark is two units: UCS-2.
            ("e\u{301}".into(), 1, Ucs2),
            (r("ç", 70), 1, Ucs2),
            (r("ç", 71), 2, Ucs2),
            (r("ç", 134), 2, Ucs2),
            (r("ç", 135), 3, Ucs2),
            // A surrogate pair is never split: 33 emoji fill a part (66 units).
            (r("😀", 35), 1, Ucs2),
            (r("😀", 36), 2, Ucs2),
            (r("😀", 66), 2, Ucs2),
            (r("😀", 67), 3, Ucs2),
            (format!("{}😀", r("ç", 68)), 1, Ucs2),
            (format!("{}😀", r("ç", 69)), 2, Ucs2),
            // ... and the part it cannot finish moves whole to the next.
            (format!("{}😀{}", r("ç", 66), r("ç", 65)), 2, Ucs2),
            (format!("{}😀{}", r("ç", 66), r("ç", 66)), 3, Ucs2),
            // GSM characters in a UCS-2 body are one unit each.
            (format!("😀{}", r("a", 68)), 1, Ucs2),
            (format!("😀{}", r("a", 69)), 2, Ucs2),
            // Whole emoji sequences are never split: a flag (4 units), a family (11 units),
            // a skin tone (4 units), a keycap (3 units).
            (r("🇺🇸", 17), 1, Ucs2),
            (r("🇺🇸", 18), 2, Ucs2),
            (r("🇺🇸", 32), 2, Ucs2),
            (r("🇺🇸", 33), 3, Ucs2),
            (r("👨‍👩‍👧‍👦", 6), 1, Ucs2),
            (r("👨‍👩‍👧‍👦", 7), 2, Ucs2),
            (format!("{}👨‍👩‍👧‍👦", r("ç", 60)), 2, Ucs2),
            (format!("{}👍🏽", r("ç", 66)), 1, Ucs2),
            (r("1️⃣", 23), 1, Ucs2),
            (r("1️⃣", 24), 2, Ucs2),
        ]
    }

    #[test]
    fn edges_of_gsm7_and_utf16_packing() {
        for (body, segments, encoding) in table() {
            assert_eq!(
                count(&body),
                (segments, encoding),
                "{:?} ({} chars)",
                body.chars().take(12).collect::<String>(),
                body.chars().count()
            );
        }
    }
}
