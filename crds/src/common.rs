//! Types shared by the three resources: durations, secret references,
//! quantities and the standard status condition helpers.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

pub use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// Longest period a limit may be counted over: 30 days.
pub const MAX_PERIOD_SECS: u64 = 30 * 24 * 3600;

/// Regular expression of a Kubernetes quantity (the apiserver's own grammar).
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// A counting period such as `1s`, `30m`, `1h` or `30d`: a positive whole
/// number followed by one unit (`s`, `m`, `h`, `d`), from 1s to 30d.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Period(pub String);

impl Period {
    /// The period in whole seconds, or `None` when the text is not a valid period.
    pub fn seconds(&self) -> Option<u64> {
        let (num, unit) = split_unit(&self.0)?;
        let mult = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return None,
        };
        let secs = num.checked_mul(mult)?;
        (1..=MAX_PERIOD_SECS).contains(&secs).then_some(secs)
    }

    /// The period as a [`Duration`], or `None` when invalid.
    pub fn duration(&self) -> Option<Duration> {
        self.seconds().map(Duration::from_secs)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Period {
    fn from(s: &str) -> Self {
        Period(s.to_string())
    }
}

impl JsonSchema for Period {
    fn schema_name() -> Cow<'static, str> {
        "Period".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 8,
            "x-kubernetes-validations": [{
                "rule": "self.matches('^[1-9][0-9]{0,6}[smhd]$') && int(self.substring(0, size(self) - 1)) * (self.endsWith('d') ? 86400 : (self.endsWith('h') ? 3600 : (self.endsWith('m') ? 60 : 1))) <= 2592000",
                "message": "must be a whole number followed by s, m, h or d (for example 1s, 30m, 1h, 30d), between 1s and 30d"
            }]
        })
    }
}

/// A timeout such as `500ms`, `30s` or `2m`: a positive whole number followed
/// by one unit (`ms`, `s`, `m`, `h`), from 1ms to 1h.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timeout(pub String);

impl Timeout {
    /// The timeout as a [`Duration`], or `None` when the text is not valid.
    pub fn duration(&self) -> Option<Duration> {
        let (num, unit) = split_unit(&self.0)?;
        let ms = match unit {
            "ms" => num,
            "s" => num.checked_mul(1000)?,
            "m" => num.checked_mul(60_000)?,
            "h" => num.checked_mul(3_600_000)?,
            _ => return None,
        };
        (1..=3_600_000).contains(&ms).then(|| Duration::from_millis(ms))
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for Timeout {
    fn schema_name() -> Cow<'static, str> {
        "Timeout".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": 10,
            "x-kubernetes-validations": [{
                "rule": "self.matches('^[1-9][0-9]{0,6}(ms|s|m|h)$') && (self.endsWith('ms') ? int(self.substring(0, size(self) - 2)) : int(self.substring(0, size(self) - 1)) * (self.endsWith('h') ? 3600000 : (self.endsWith('m') ? 60000 : 1000))) <= 3600000",
                "message": "must be a whole number followed by ms, s, m or h (for example 500ms, 30s, 2m), between 1ms and 1h"
            }]
        })
    }
}

fn split_unit(s: &str) -> Option<(u64, &str)> {
    let idx = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(idx);
    if num.is_empty() || num.starts_with('0') || num.len() > 7 {
        return None;
    }
    Some((num.parse().ok()?, unit))
}

/// Schema for a Kubernetes quantity field (`1Gi`, `500Mi`, `1024`), kept short
/// so `kubectl explain` shows the field's own description.
pub fn quantity_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "x-kubernetes-validations": [{
            "rule": "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))",
            "message": "must be a positive quantity such as 512Mi, 1Gi or 1048576"
        }]
    })
}

/// Parses a Kubernetes quantity into a whole number of units (bytes for sizes),
/// rounding fractions up. Returns `None` for malformed or negative quantities.
pub fn quantity_value(q: &Quantity) -> Option<u64> {
    let s = q.0.trim();
    let re = regex::Regex::new(QUANTITY_PATTERN).ok()?;
    if !re.is_match(s) || s.starts_with('-') {
        return None;
    }
    let s = s.trim_start_matches('+');
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let (mult, div): (f64, f64) = match suffix {
        "" => (1.0, 1.0),
        "Ki" => (1024.0, 1.0),
        "Mi" => (1024f64.powi(2), 1.0),
        "Gi" => (1024f64.powi(3), 1.0),
        "Ti" => (1024f64.powi(4), 1.0),
        "Pi" => (1024f64.powi(5), 1.0),
        "Ei" => (1024f64.powi(6), 1.0),
        "n" => (1.0, 1e9),
        "u" => (1.0, 1e6),
        "m" => (1.0, 1e3),
        "k" => (1e3, 1.0),
        "M" => (1e6, 1.0),
        "G" => (1e9, 1.0),
        "T" => (1e12, 1.0),
        "P" => (1e15, 1.0),
        "E" => (1e18, 1.0),
        exp if exp.starts_with(['e', 'E']) => (10f64.powi(exp[1..].parse::<i32>().ok()?), 1.0),
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    let v = (n * mult / div).ceil();
    (v.is_finite() && v >= 0.0 && v < u64::MAX as f64).then_some(v as u64)
}

/// A key of a Secret in the same namespace as the referring object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret (in the same namespace as this object).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret whose value is used.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Schema for `status.conditions`: standard conditions keyed by type.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema.insert(
        "description".into(),
        "Standard conditions (type, status, reason, message, lastTransitionTime, observedGeneration).".into(),
    );
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_parse_within_range() {
        assert_eq!(Period::from("1s").seconds(), Some(1));
        assert_eq!(Period::from("30m").seconds(), Some(1800));
        assert_eq!(Period::from("30d").seconds(), Some(MAX_PERIOD_SECS));
        assert_eq!(Period::from("31d").seconds(), None);
        assert_eq!(Period::from("0s").seconds(), None);
        assert_eq!(Period::from("10").seconds(), None);
        assert_eq!(Period::from("1w").seconds(), None);
        assert_eq!(Period::from("").seconds(), None);
    }

    #[test]
    fn timeouts_parse_within_range() {
        assert_eq!(Timeout("500ms".into()).duration(), Some(Duration::from_millis(500)));
        assert_eq!(Timeout("30s".into()).duration(), Some(Duration::from_secs(30)));
        assert_eq!(Timeout("1h".into()).duration(), Some(Duration::from_secs(3600)));
        assert_eq!(Timeout("2h".into()).duration(), None);
        assert_eq!(Timeout("1d".into()).duration(), None);
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(quantity_value(&Quantity("10Mi".into())), Some(10 * 1024 * 1024));
        assert_eq!(quantity_value(&Quantity("1k".into())), Some(1000));
        assert_eq!(quantity_value(&Quantity("1.5Ki".into())), Some(1536));
        assert_eq!(quantity_value(&Quantity("42".into())), Some(42));
        assert_eq!(quantity_value(&Quantity("1e3".into())), Some(1000));
        assert_eq!(quantity_value(&Quantity("-1".into())), None);
        assert_eq!(quantity_value(&Quantity("ten".into())), None);
    }
}
