//! Human-readable unit identifiers: `key=value` pairs joined by commas.

use serde::{Deserialize, Serialize};
use std::fmt::{self, Display};
use std::str::FromStr;

/// A unit's stable identifier, such as `obs=0421`, `visit=12,ccd=34` or
/// `tract=0,patch=3,4,band=r`.
///
/// Values may contain commas (`patch=3,4`); keys are lowercase identifiers. The textual form is
/// what the ledger, the reports and `--unit ID` use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct UnitId(String);

/// Why a string is not a valid [`UnitId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid unit ID '{text}': {reason} (expected key=value pairs joined by commas, e.g. visit=12,ccd=34)"
)]
pub struct ParseUnitIdError {
    text: String,
    reason: &'static str,
}

impl UnitId {
    /// An empty ID, to be extended with [`UnitId::with`].
    pub fn new() -> Self {
        Self(String::new())
    }

    /// Appends `key=value`. Keys must be lowercase identifiers; values must be non-empty and
    /// free of `=` and whitespace.
    ///
    /// # Panics
    /// On an invalid key or value: IDs are built by stage code, so this is a programming error.
    pub fn with(mut self, key: &str, value: impl Display) -> Self {
        let value = value.to_string();
        assert!(valid_key(key), "invalid unit ID key '{key}'");
        assert!(
            valid_value(&value),
            "invalid unit ID value '{value}' for key '{key}'"
        );
        if !self.0.is_empty() {
            self.0.push(',');
        }
        self.0.push_str(key);
        self.0.push('=');
        self.0.push_str(&value);
        self
    }

    /// The textual form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The `(key, value)` pairs in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        split_pairs(&self.0).into_iter()
    }
}

fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn valid_value(value: &str) -> bool {
    !value.is_empty()
        && !value.starts_with(',')
        && !value.ends_with(',')
        && !value.contains(",,")
        && value.chars().all(|c| c != '=' && !c.is_whitespace())
}

/// Splits `a=1,b=2,3,c=x` into pairs; a comma-separated token without `=` continues the value
/// before it. Assumes the text was validated.
fn split_pairs(text: &str) -> Vec<(&str, &str)> {
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    let mut key_start = 0;
    let mut value_start = None;
    for i in 0..=bytes.len() {
        let at_end = i == bytes.len();
        if at_end || bytes[i] == b',' {
            // Does the next token carry its own key?
            let next_is_pair = at_end
                || text[i + 1..]
                    .split(',')
                    .next()
                    .is_some_and(|t| t.contains('='));
            if next_is_pair {
                if let Some(vs) = value_start {
                    pairs.push((&text[key_start..vs - 1], &text[vs..i]));
                }
                start = i + 1;
                key_start = start;
                value_start = None;
            }
        } else if bytes[i] == b'=' && value_start.is_none() && i >= start {
            value_start = Some(i + 1);
        }
    }
    pairs
}

impl FromStr for UnitId {
    type Err = ParseUnitIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason| ParseUnitIdError {
            text: text.to_string(),
            reason,
        };
        if text.is_empty() {
            return Err(fail("it is empty"));
        }
        if text.chars().any(char::is_whitespace) {
            return Err(fail("it contains white space"));
        }
        let first = text.split(',').next().unwrap_or_default();
        if !first.contains('=') {
            return Err(fail("it does not start with key=value"));
        }
        let pairs = split_pairs(text);
        let rebuilt: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if rebuilt.join(",") != text {
            return Err(fail("it is not a list of key=value pairs"));
        }
        for (key, value) in &pairs {
            if !valid_key(key) {
                return Err(fail("a key is not a lowercase identifier"));
            }
            if !valid_value(value) {
                return Err(fail("a value is empty or contains '='"));
            }
        }
        Ok(Self(text.to_string()))
    }
}

impl Display for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<UnitId> for String {
    fn from(id: UnitId) -> String {
        id.0
    }
}

impl TryFrom<String> for UnitId {
    type Error = ParseUnitIdError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_the_convention_examples() {
        for text in ["obs=0421", "visit=12,ccd=34", "tract=0,patch=3,4,band=r"] {
            let id: UnitId = text.parse().unwrap();
            assert_eq!(id.to_string(), text);
        }
        let id = UnitId::new()
            .with("tract", 0)
            .with("patch", "3,4")
            .with("band", "r");
        assert_eq!(id.as_str(), "tract=0,patch=3,4,band=r");
        assert_eq!(id.get("patch"), Some("3,4"));
        assert_eq!(id.get("band"), Some("r"));
        assert_eq!(id.get("visit"), None);
        assert_eq!(
            id.pairs().collect::<Vec<_>>(),
            vec![("tract", "0"), ("patch", "3,4"), ("band", "r")]
        );
    }

    #[test]
    fn rejects_malformed_ids() {
        for text in [
            "",
            "obs",
            "=3",
            "obs=",
            "Obs=1",
            "obs=1,",
            "obs=1,,ccd=2",
            "a=b=c",
            "obs = 1",
            "1obs=2",
        ] {
            assert!(text.parse::<UnitId>().is_err(), "accepted '{text}'");
        }
    }

    #[test]
    fn serde_round_trip_uses_the_text_form() {
        let id: UnitId = "visit=12,ccd=34".parse().unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"visit=12,ccd=34\"");
        assert_eq!(serde_json::from_str::<UnitId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<UnitId>("\"nope\"").is_err());
    }

    #[test]
    #[should_panic(expected = "invalid unit ID value")]
    fn builder_refuses_values_with_equals() {
        let _ = UnitId::new().with("obs", "a=b");
    }
}
