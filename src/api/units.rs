//! Kubernetes-style durations ("1m30s") and resource quantities ("500m",
//! "128Mi"). Both decode leniently: the original text is always kept (so a
//! manifest round-trips byte-for-byte in its typed form) and the parse result
//! is checked by validation, which can then report *every* bad value with its
//! field path instead of stopping at the first one.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The longest duration the API accepts in any field (10 years). Far
/// beyond any real timeout or interval, and far below what a clock can
/// hold: a valid manifest never makes `Instant` arithmetic overflow.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);

/// [`MAX_DURATION`] as error messages state it.
pub const MAX_DURATION_TEXT: &str = "87600h (10 years)";

/// `Ok(d)` if `d` is at most [`MAX_DURATION`]; else why not.
pub fn check_max_duration(d: std::time::Duration, text: &str) -> Result<std::time::Duration, String> {
    if d > MAX_DURATION {
        Err(format!("{text:?} is longer than the maximum of {MAX_DURATION_TEXT}"))
    } else {
        Ok(d)
    }
}

/// A duration such as `5s`, `1m30s`, `250ms`, `2h`, as Go's
/// `time.ParseDuration` accepts them (no sign, no bare numbers except `0`).
#[derive(Clone, PartialEq, Eq)]
pub struct Duration {
    text: String,
    parsed: Result<std::time::Duration, String>,
}

impl Duration {
    pub fn parse(text: &str) -> Result<std::time::Duration, String> {
        parse_duration(text)
    }

    /// Like [`Duration::parse`], refusing values above [`MAX_DURATION`]
    /// (for command-line flags: the same bound as manifests).
    pub fn parse_bounded(text: &str) -> Result<std::time::Duration, String> {
        parse_duration(text).and_then(|d| check_max_duration(d, text))
    }

    pub fn new(text: &str) -> Self {
        Duration {
            text: text.to_string(),
            parsed: parse_duration(text),
        }
    }

    /// The text is exact: in the largest of s, ms, us and ns that holds `d`
    /// as a whole number.
    pub fn from_std(d: std::time::Duration) -> Self {
        let nanos = d.subsec_nanos();
        let text = if nanos == 0 {
            format!("{}s", d.as_secs())
        } else if nanos % 1_000_000 == 0 {
            format!("{}ms", d.as_millis())
        } else if nanos % 1_000 == 0 {
            format!("{}us", d.as_micros())
        } else {
            format!("{}ns", d.as_nanos())
        };
        Duration { text, parsed: Ok(d) }
    }

    /// The parsed value; `None` when the text is invalid (validation reports it).
    pub fn get(&self) -> Option<std::time::Duration> {
        self.parsed.as_ref().ok().copied()
    }

    pub fn error(&self) -> Option<&str> {
        self.parsed.as_ref().err().map(String::as_str)
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Duration({:?})", self.text)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(Duration::new(&text))
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(format!("invalid duration {text:?}: must not be negative"));
    }
    let mut total_nanos: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("invalid duration {text:?}: expected a number at {rest:?}"));
        }
        let number = &rest[..num_len];
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => {
                return Err(format!(
                    "invalid duration {text:?}: missing unit (use ns, us, ms, s, m or h)"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (use ns, us, ms, s, m or h)"
                ))
            }
        };
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        if int_part.is_empty() && frac_part.is_empty() || frac_part.contains('.') {
            return Err(format!("invalid duration {text:?}: bad number {number:?}"));
        }
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part
                .parse()
                .map_err(|_| format!("invalid duration {text:?}: number too large"))?
        };
        let mut nanos = int
            .checked_mul(unit_nanos)
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
        if !frac_part.is_empty() {
            let digits = frac_part.len().min(18) as u32;
            let frac: u128 = frac_part[..digits as usize]
                .parse()
                .map_err(|_| format!("invalid duration {text:?}: bad fraction"))?;
            nanos += frac * unit_nanos / 10u128.pow(digits);
        }
        total_nanos = total_nanos
            .checked_add(nanos)
            .ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
    }
    let secs =
        u64::try_from(total_nanos / 1_000_000_000).map_err(|_| format!("invalid duration {text:?}: too large"))?;
    Ok(std::time::Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// A Kubernetes resource quantity: `100m` (milli-cores), `128Mi`, `1G`, `0.5`,
/// or a plain integer. Stored in thousandths of the base unit so that both CPU
/// (milli-cores) and memory (bytes) are exact.
#[derive(Clone, PartialEq, Eq)]
pub struct Quantity {
    text: QuantityText,
    parsed: Result<i128, String>,
}

/// Manifests may write `cpu: 1` (a YAML integer) or `cpu: "100m"`; keep which.
#[derive(Clone, PartialEq, Eq, Debug)]
enum QuantityText {
    Int(i64),
    Str(String),
}

impl Quantity {
    pub fn new(text: &str) -> Self {
        Quantity {
            text: QuantityText::Str(text.to_string()),
            parsed: parse_quantity_milli(text),
        }
    }

    /// Thousandths of the base unit (milli-cores for CPU, milli-bytes for memory).
    pub fn milli(&self) -> Option<i128> {
        self.parsed.as_ref().ok().copied()
    }

    /// Whole base units, rounded up (bytes for memory).
    pub fn units_ceil(&self) -> Option<i128> {
        self.milli().map(|m| (m + 999).div_euclid(1000))
    }

    pub fn error(&self) -> Option<&str> {
        self.parsed.as_ref().err().map(String::as_str)
    }
}

impl fmt::Debug for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Quantity({})", self)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.text {
            QuantityText::Int(i) => write!(f, "{i}"),
            QuantityText::Str(s) => f.write_str(s),
        }
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.text {
            QuantityText::Int(i) => s.serialize_i64(*i),
            QuantityText::Str(t) => s.serialize_str(t),
        }
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Float(f64),
            Str(String),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Int(i) => Quantity {
                text: QuantityText::Int(i),
                parsed: parse_quantity_milli(&i.to_string()),
            },
            Raw::Float(x) => Quantity::new(&x.to_string()),
            Raw::Str(s) => Quantity::new(&s),
        })
    }
}

fn parse_quantity_milli(text: &str) -> Result<i128, String> {
    let s = text.trim();
    let bad = |why: &str| format!("invalid quantity {text:?}: {why}");
    if s.is_empty() {
        return Err(bad("empty"));
    }
    let num_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(num_len);
    if number.starts_with('-') {
        return Err(bad("must not be negative"));
    }
    let number = number.trim_start_matches('+');
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(bad("expected a number such as 100m, 0.5, 128Mi or 2G"));
    }
    if !int_part.chars().all(|c| c.is_ascii_digit()) || !frac_part.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad("bad number"));
    }
    // (numerator, denominator) of the suffix's multiplier, in thousandths.
    let (mul, div): (i128, i128) = match suffix {
        "" => (1000, 1),
        "m" => (1, 1),
        "k" => (1000 * 1000, 1),
        "M" => (1000 * 1000_i128.pow(2), 1),
        "G" => (1000 * 1000_i128.pow(3), 1),
        "T" => (1000 * 1000_i128.pow(4), 1),
        "P" => (1000 * 1000_i128.pow(5), 1),
        "Ki" => (1000 * 1024, 1),
        "Mi" => (1000 * 1024_i128.pow(2), 1),
        "Gi" => (1000 * 1024_i128.pow(3), 1),
        "Ti" => (1000 * 1024_i128.pow(4), 1),
        "Pi" => (1000 * 1024_i128.pow(5), 1),
        "n" => (1, 1_000_000),
        "u" => (1, 1000),
        other => {
            return Err(bad(&format!(
                "unknown suffix {other:?} (use m, k, M, G, T, Ki, Mi, Gi, Ti)"
            )))
        }
    };
    if int_part.len() > 20 {
        return Err(bad("too large"));
    }
    let int: i128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().map_err(|_| bad("too large"))?
    };
    let frac_digits = frac_part.len().min(9) as u32;
    let frac: i128 = if frac_digits == 0 {
        0
    } else {
        frac_part[..frac_digits as usize]
            .parse()
            .map_err(|_| bad("bad fraction"))?
    };
    let scale = 10_i128.pow(frac_digits);
    let total = (int * scale + frac).checked_mul(mul).ok_or_else(|| bad("too large"))?;
    // Round up: a fraction of a milli-unit still needs one.
    Ok((total + scale * div - 1) / (scale * div))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as D;

    #[test]
    fn durations() {
        assert_eq!(Duration::parse("5s"), Ok(D::from_secs(5)));
        assert_eq!(Duration::parse("1m30s"), Ok(D::from_secs(90)));
        assert_eq!(Duration::parse("250ms"), Ok(D::from_millis(250)));
        assert_eq!(Duration::parse("1.5h"), Ok(D::from_secs(5400)));
        assert_eq!(Duration::parse("0"), Ok(D::ZERO));
        assert!(Duration::parse("5").unwrap_err().contains("missing unit"));
        assert!(Duration::parse("5x").unwrap_err().contains("unknown unit \"x\""));
        assert!(Duration::parse("-5s").unwrap_err().contains("negative"));
        assert!(Duration::parse("").is_err());
        assert!(Duration::parse("s").is_err());
        assert!(Duration::parse("99999999999999999999999h").is_err());
        assert_eq!(Duration::parse_bounded("87600h"), Ok(MAX_DURATION));
        assert_eq!(
            Duration::parse_bounded("87600h1ns"),
            Err("\"87600h1ns\" is longer than the maximum of 87600h (10 years)".into())
        );
        assert!(
            Duration::parse("3000000000000000h").is_ok(),
            "parses; validation bounds it"
        );
        // Found by the fuzzer: from_std wrote "0s" for 1.5us.
        for d in [D::from_nanos(1500), D::from_nanos(1), D::from_millis(1), D::new(3, 7)] {
            assert_eq!(Duration::parse(Duration::from_std(d).text()), Ok(d), "{d:?}");
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(Quantity::new("100m").milli(), Some(100));
        assert_eq!(Quantity::new("1").milli(), Some(1000));
        assert_eq!(Quantity::new("0.5").milli(), Some(500));
        assert_eq!(Quantity::new("128Mi").units_ceil(), Some(128 * 1024 * 1024));
        assert_eq!(Quantity::new("1G").units_ceil(), Some(1_000_000_000));
        assert_eq!(Quantity::new("1.5Gi").units_ceil(), Some(1536 * 1024 * 1024));
        assert!(Quantity::new("12XB").error().unwrap().contains("unknown suffix"));
        assert!(Quantity::new("-1").error().unwrap().contains("negative"));
        assert!(Quantity::new("abc").error().is_some());
        let q: Quantity = serde_json::from_str("2").unwrap();
        assert_eq!(q.milli(), Some(2000));
        assert_eq!(serde_json::to_string(&q).unwrap(), "2");
    }
}
