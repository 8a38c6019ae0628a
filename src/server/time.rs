//! Wall-clock time as Kubernetes writes it (RFC 3339, UTC, whole seconds),
//! ages as `kubectl get` shows them, and the bounds of time arithmetic: no
//! duration a client names may make a clock computation overflow.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest duration the server accepts from a request (timeouts, token
/// lifetimes): the API's one limit for every duration, ten years.
pub use crate::api::units::MAX_DURATION;

/// `MAX_DURATION` for messages about parameters given in seconds.
pub const MAX_DURATION_TEXT: &str = "315360000 seconds (10 years)";

/// `d` from now on tokio's clock; None when the clock cannot represent it
/// (then it never comes).
pub fn deadline_in(d: Duration) -> Option<tokio::time::Instant> {
    tokio::time::Instant::now().checked_add(d)
}

/// `at + d`, or `at` itself when that is not representable: for deadlines
/// where ending early is the safe side (a lease believed valid).
pub fn later_or_now(at: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    at.checked_add(d).unwrap_or(at)
}

/// The unix time `d` after `now`, saturating.
pub fn unix_after(now: i64, d: Duration) -> i64 {
    now.saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub use crate::api::rfc3339::format_rfc3339;

pub fn now_rfc3339() -> String {
    format_rfc3339(now_unix())
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `t` with microseconds (`2024-05-01T10:00:00.123456Z`), as audit events
/// carry their timestamps; times before 1970 are 1970.
pub fn format_rfc3339_micros(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2);
    let whole = format_rfc3339(secs);
    format!("{}.{:06}Z", whole.trim_end_matches('Z'), d.subsec_micros())
}

/// Parse `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(r) = rest.strip_prefix('.') {
        rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let o = oh * 3600 + om * 60;
            if rest.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    Some(days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + s - offset)
}

/// An age the way kubectl prints one (`45s`, `3m12s`, `5h`, `12d`).
pub fn human_age(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let s = secs.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    if s < 120 {
        format!("{s}s")
    } else if m < 10 {
        if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 192 {
        if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for t in [0, 951_782_400, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&format_rfc3339(t)), Some(t));
        }
        assert_eq!(format_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(
            format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_123)),
            "2023-11-14T22:13:20.000123Z"
        );
        assert_eq!(parse_rfc3339("2023-11-14T23:13:20.5+01:00"), Some(1_700_000_000));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(parse_rfc3339("2023-13-14T23:13:20Z"), None);
    }

    #[test]
    fn ages() {
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(190), "3m10s");
        assert_eq!(human_age(3600 * 5 + 60), "5h1m");
        assert_eq!(human_age(86_400 * 3), "3d");
    }
}
