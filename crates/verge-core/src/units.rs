//! Quantities that read both as numbers and as `32GB`- or `30s`-style
//! strings, because configs are written by people and APIs by programs.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Reads `<number><unit>`, with `mult` giving each (lowercase) unit's factor.
fn parse_quantity(s: &str, mult: impl Fn(&str) -> Option<f64>) -> Option<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v = num.parse::<f64>().ok()? * mult(&unit.trim().to_ascii_lowercase())?;
    (v.is_finite() && v <= u64::MAX as f64).then(|| v.round() as u64)
}

/// Deserialises a quantity from a non-negative number or a string with a unit.
struct QuantityVisitor<T>(&'static str, PhantomData<T>);

impl<T> serde::de::Visitor<'_> for QuantityVisitor<T>
where
    T: From<u64> + FromStr,
    T::Err: fmt::Display,
{
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        Ok(T::from(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        u64::try_from(v).map(T::from).map_err(|_| E::custom(format!("must not be negative, got {v}")))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<T, E> {
        if v.is_finite() && v >= 0.0 && v <= u64::MAX as f64 {
            Ok(T::from(v.round() as u64))
        } else {
            Err(E::custom(format!("must be a non-negative number, got {v}")))
        }
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

/// A number of bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub u64);

/// Why a byte quantity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid byte size {0:?}: use a whole number of bytes or a number with a unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")]
pub struct ParseBytesError(String);

impl From<u64> for Bytes {
    fn from(v: u64) -> Self {
        Bytes(v)
    }
}

impl FromStr for Bytes {
    type Err = ParseBytesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mult = |unit: &str| match unit {
            "" | "b" => Some(1.0),
            "k" | "kb" => Some(1e3),
            "m" | "mb" => Some(1e6),
            "g" | "gb" => Some(1e9),
            "t" | "tb" => Some(1e12),
            "ki" | "kib" => Some(1024.0),
            "mi" | "mib" => Some(1024f64.powi(2)),
            "gi" | "gib" => Some(1024f64.powi(3)),
            "ti" | "tib" => Some(1024f64.powi(4)),
            _ => None,
        };
        parse_quantity(s, mult).map(Bytes).ok_or_else(|| ParseBytesError(s.to_string()))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut i = 0;
        while v >= 1024.0 && i < UNITS.len() - 1 {
            v /= 1024.0;
            i += 1;
        }
        if i == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{v:.1} {}", UNITS[i])
        }
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(QuantityVisitor("a non-negative number of bytes or a size such as \"512MB\"", PhantomData))
    }
}

/// A duration in milliseconds that reads as a number of ms or as `30s`, `500ms`, `2m`, `1h`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

/// Why a duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: use milliseconds or a number with a unit (ms, s, m, h)")]
pub struct ParseMillisError(String);

impl From<u64> for Millis {
    fn from(v: u64) -> Self {
        Millis(v)
    }
}

impl FromStr for Millis {
    type Err = ParseMillisError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mult = |unit: &str| match unit {
            "" | "ms" => Some(1.0),
            "s" => Some(1e3),
            "m" => Some(60e3),
            "h" => Some(3600e3),
            _ => None,
        };
        parse_quantity(s, mult).map(Millis).ok_or_else(|| ParseMillisError(s.to_string()))
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(QuantityVisitor("milliseconds or a duration such as \"30s\"", PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!("32GB".parse::<Bytes>().unwrap(), Bytes(32_000_000_000));
        assert_eq!("4GiB".parse::<Bytes>().unwrap(), Bytes(4 << 30));
        assert_eq!("512".parse::<Bytes>().unwrap(), Bytes(512));
        assert_eq!("1.5 KiB".parse::<Bytes>().unwrap(), Bytes(1536));
        assert!("12 parsecs".parse::<Bytes>().is_err());
        assert!("".parse::<Bytes>().is_err());
    }

    #[test]
    fn json_accepts_numbers_and_strings_but_not_negatives() {
        assert_eq!(serde_json::from_str::<Bytes>("1024").unwrap(), Bytes(1024));
        assert_eq!(serde_json::from_str::<Bytes>("\"1KiB\"").unwrap(), Bytes(1024));
        assert!(serde_json::from_str::<Bytes>("-5").is_err());
        assert!(serde_json::from_str::<Bytes>("true").is_err());
    }
}

#[cfg(test)]
mod millis_tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!("30s".parse::<Millis>().unwrap(), Millis(30_000));
        assert_eq!("250ms".parse::<Millis>().unwrap(), Millis(250));
        assert_eq!("1.5m".parse::<Millis>().unwrap(), Millis(90_000));
        assert!("soon".parse::<Millis>().is_err());
        assert!(serde_json::from_str::<Millis>("-1").is_err());
    }
}
