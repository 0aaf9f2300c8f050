//! Quiet hours: collections messages reach a recipient only inside an allowed window of local
//! time (Regulation F, 12 CFR 1006.6(b)(1)(i), presumes before 8 a.m. and after 9 p.m. at the
//! consumer's location inconvenient; the TCPA's solicitation limits use the same window). When
//! the recipient's location is uncertain (a number whose prefix spans several time zones), the
//! time must be inside the window in EVERY likely zone. Outside it, a send is scheduled for the
//! next allowed moment. Zones come from the tenant's profile when known, else from the number
//! (libphonenumber's time-zone data by prefix, `data/time_zones.tsv`).

use std::{collections::HashMap, str::FromStr, sync::LazyLock};

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// The allowed window of local time: from `start` (inclusive) to `end` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl FromStr for Window {
    type Err = String;

    /// `HH:MM-HH:MM`, e.g. `08:00-21:00`; start before end.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s.trim().split_once('-').ok_or("expected HH:MM-HH:MM")?;
        let t = |v: &str| {
            NaiveTime::parse_from_str(v.trim(), "%H:%M").map_err(|_| format!("{v:?} is not HH:MM"))
        };
        let (start, end) = (t(a)?, t(b)?);
        if start >= end {
            return Err("the window must start before it ends".into());
        }
        Ok(Self { start, end })
    }
}

impl Window {
    fn contains(&self, local: NaiveTime) -> bool {
        local >= self.start && local < self.end
    }

    /// Whether `at` is inside the window in every zone.
    pub fn allows(&self, at: DateTime<Utc>, zones: &[Tz]) -> bool {
        zones
            .iter()
            .all(|z| self.contains(at.with_timezone(z).time()))
    }

    /// The first moment at or after `from` inside the window in every zone, or None when the
    /// zones' windows never meet (within a week).
    pub fn next_allowed(&self, from: DateTime<Utc>, zones: &[Tz]) -> Option<DateTime<Utc>> {
        if self.allows(from, zones) {
            return Some(from);
        }
        // The window opens at some zone's local start: try those instants in order first.
        let mut candidates: Vec<DateTime<Utc>> = zones
            .iter()
            .flat_map(|z| (0..8).filter_map(move |day| local_start(*z, from, day, self.start)))
            .filter(|c| *c > from)
            .collect();
        candidates.sort();
        candidates
            .into_iter()
            .find(|c| self.allows(*c, zones))
            .or_else(|| {
                // Safety net: minute by minute (windows that open inside a DST gap...).
                let mut t = from.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
                let end = from + Duration::days(7);
                while t < end {
                    if self.allows(t, zones) {
                        return Some(t);
                    }
                    t += Duration::minutes(1);
                }
                None
            })
    }
}

/// The instant the local clock of `zone` shows `start` on the `day`-th day after `from`'s local
/// date; in a daylight-saving gap (the time does not exist that day), the first instant after it.
fn local_start(zone: Tz, from: DateTime<Utc>, day: i64, start: NaiveTime) -> Option<DateTime<Utc>> {
    let date = from.with_timezone(&zone).date_naive() + Duration::days(day);
    let local = date.and_time(start);
    match zone.from_local_datetime(&local) {
        chrono::LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        chrono::LocalResult::Ambiguous(earliest, _) => Some(earliest.with_timezone(&Utc)),
        chrono::LocalResult::None => (1..=180)
            .map(|m| local + Duration::minutes(m))
            .find_map(|l| zone.from_local_datetime(&l).earliest())
            .map(|t| t.with_timezone(&Utc)),
    }
}

static PREFIX_ZONES: LazyLock<HashMap<&'static str, Vec<Tz>>> = LazyLock::new(|| {
    include_str!("../data/time_zones.tsv")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('\t'))
        .map(|(prefix, zones)| {
            (
                prefix,
                zones.split('&').filter_map(|z| z.parse().ok()).collect(),
            )
        })
        .collect()
});

/// The time zones a number (E.164) may be in: those of its longest known prefix.
pub fn zones_for_number(e164: &str) -> Vec<Tz> {
    let digits = e164.trim_start_matches('+');
    (1..=digits.len().min(9))
        .rev()
        .find_map(|n| PREFIX_ZONES.get(&digits[..n]))
        .cloned()
        .unwrap_or_default()
}

/// An IANA zone name (`America/New_York`) from a tenant profile.
pub fn parse_zone(name: &str) -> Option<Tz> {
    name.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    const DAY: &str = "08:00-21:00";

    #[test]
    fn windows_parse() {
        let w: Window = DAY.parse().unwrap();
        assert_eq!(w.start, NaiveTime::from_hms_opt(8, 0, 0).unwrap());
        for bad in ["8-21", "21:00-08:00", "08:00", "x"] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
    }

    #[test]
    fn next_allowed_moment_across_zones_and_daylight_saving() {
        let w: Window = DAY.parse().unwrap();
        let ny = chrono_tz::America::New_York;
        let la = chrono_tz::America::Los_Angeles;
        let hi = chrono_tz::Pacific::Honolulu;
        let table: &[(&str, &[Tz], &str)] = &[
            // Inside the window: now.
            ("2026-07-01T15:00:00Z", &[ny], "2026-07-01T15:00:00Z"),
            // 06:00 EDT: 08:00 EDT the same day.
            ("2026-07-01T10:00:00Z", &[ny], "2026-07-01T12:00:00Z"),
            // 21:30 EDT: 08:00 EDT the next day.
            ("2026-07-02T01:30:00Z", &[ny], "2026-07-02T12:00:00Z"),
            // Spring forward (8 March 2026): 01:30 EST, then 08:00 EDT = 12:00 UTC.
            ("2026-03-08T06:30:00Z", &[ny], "2026-03-08T12:00:00Z"),
            // Fall back (1 November 2026): 01:30 EDT, then 08:00 EST = 13:00 UTC.
            ("2026-11-01T05:30:00Z", &[ny], "2026-11-01T13:00:00Z"),
            // Two zones: 08:00 in both means 08:00 Pacific.
            ("2026-07-01T12:30:00Z", &[ny, la], "2026-07-01T15:00:00Z"),
            // New York open but Los Angeles not yet: still waits for Los Angeles.
            ("2026-07-01T14:00:00Z", &[ny, la], "2026-07-01T15:00:00Z"),
            // New York to Honolulu: the windows meet from 08:00 HST (18:00 UTC) to 21:00 EDT.
            ("2026-07-01T17:00:00Z", &[ny, hi], "2026-07-01T18:00:00Z"),
        ];
        for (from, zones, want) in table {
            assert_eq!(
                w.next_allowed(utc(from), zones),
                Some(utc(want)),
                "{from} {zones:?}"
            );
        }
        // Windows that never all meet (in July, in UTC: Los Angeles 15:00-04:00, London
        // 07:00-20:00, Shanghai 00:00-13:00): none.
        let far = [la, chrono_tz::Europe::London, chrono_tz::Asia::Shanghai];
        assert_eq!(w.next_allowed(utc("2026-07-01T17:00:00Z"), &far), None);
    }

    #[test]
    fn a_window_opening_inside_the_spring_gap_opens_after_it() {
        let w: Window = "02:30-21:00".parse().unwrap();
        let ny = chrono_tz::America::New_York;
        // 01:00 EST on 8 March 2026; 02:30 does not exist that day: 03:00 EDT = 07:00 UTC.
        assert_eq!(
            w.next_allowed(utc("2026-03-08T06:00:00Z"), &[ny]),
            Some(utc("2026-03-08T07:00:00Z"))
        );
    }

    #[test]
    fn zones_by_number_prefix() {
        assert_eq!(
            zones_for_number("+14155552671"),
            vec![chrono_tz::America::Los_Angeles]
        );
        assert_eq!(
            zones_for_number("+12125550199"),
            vec![chrono_tz::America::New_York]
        );
        assert!(zones_for_number("+5511912345678").contains(&chrono_tz::America::Sao_Paulo));
        assert!(zones_for_number("+351912345678").contains(&chrono_tz::Europe::Lisbon));
        assert_eq!(
            parse_zone("America/Chicago"),
            Some(chrono_tz::America::Chicago)
        );
        assert_eq!(parse_zone("Mars/Olympus"), None);
    }
}
