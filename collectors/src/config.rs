//! Configuration pieces shared by the collectors' sections: [`Enabled`], durations written with
//! a unit, and the [`Section`] every section implements. Each collector's own section type lives
//! in its module, with its defaults in `impl Default` beside the fields.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `enabled:` of a collector (and of the kernel hook): `auto`, `true` or `false`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Enabled {
    /// Run when the source is detected (the default of collectors whose source may be absent).
    #[default]
    Auto,
    /// Always run; a missing source is reported as an error where the collector can tell.
    Always,
    /// Never run.
    Never,
}

impl Enabled {
    /// Whether the collector runs at all.
    pub fn runs(self) -> bool {
        self != Self::Never
    }
}

impl<'de> Deserialize<'de> for Enabled {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        let invalid = || serde::de::Error::custom("expected one of `auto`, `true`, `false`");
        match Raw::deserialize(deserializer).map_err(|_| invalid())? {
            Raw::Bool(true) => Ok(Self::Always),
            Raw::Bool(false) => Ok(Self::Never),
            Raw::Text(text) => match text.as_str() {
                "auto" => Ok(Self::Auto),
                "true" => Ok(Self::Always),
                "false" => Ok(Self::Never),
                _ => Err(invalid()),
            },
        }
    }
}

impl Serialize for Enabled {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => serializer.serialize_str("auto"),
            Self::Always => serializer.serialize_bool(true),
            Self::Never => serializer.serialize_bool(false),
        }
    }
}

/// A duration written with a unit (`500ms`, `2s`, `1m 30s`), for
/// `#[serde(with = "collectors::config::duration")]`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// The longest duration any setting takes: beyond, a value is a mistake (a unit missed).
    pub const MAX: Duration = Duration::from_secs(24 * 60 * 60);

    /// Parses a duration from 1 ms to [`MAX`]: a zero interval would spin (a `0s` refresh polls
    /// as fast as it can) and a zero timeout fail everything.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let duration = super::duration_or_zero::deserialize(deserializer)?;
        if duration.is_zero() {
            return Err(serde::de::Error::custom(
                "a duration of 0 is not accepted here: give at least 1ms",
            ));
        }
        Ok(duration)
    }

    /// Writes the duration with units.
    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*duration))
    }

    pub(super) fn parse(text: &str) -> Result<Duration, String> {
        let duration = humantime::parse_duration(text).map_err(|e| {
            format!(
                "invalid duration {text:?} ({e}): expected a number with a unit, e.g. `500ms` or `2s`"
            )
        })?;
        if duration > MAX {
            return Err(format!(
                "duration {text:?} is longer than the longest accepted, {}",
                humantime::format_duration(MAX)
            ));
        }
        Ok(duration)
    }
}

/// Like [`duration`], where 0 means something (no wait, no grace).
pub mod duration_or_zero {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Parses a duration from 0 to [`super::duration::MAX`].
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::duration::parse(&text).map_err(serde::de::Error::custom)
    }

    /// Writes the duration with units.
    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        super::duration::serialize(duration, serializer)
    }
}

/// What every collector's section (`collectors.<name>`) has, whatever else it holds.
pub trait Section:
    std::fmt::Debug + Clone + Default + PartialEq + Serialize + DeserializeOwned + Send + Sync
{
    /// `enabled:`.
    fn enabled(&self) -> Enabled;
    /// `timeout:`, the deadline of one collection.
    fn timeout(&self) -> Duration;
    /// `includeKeys:`, key globs whose labels are kept (none: all).
    fn include_keys(&self) -> &[String];
    /// `excludeKeys:`, key globs whose labels are left out.
    fn exclude_keys(&self) -> &[String];
}

/// Implements [`Section`] for a section type with `enabled`, `timeout`, `include_keys` and
/// `exclude_keys` fields.
macro_rules! section {
    ($type:ty) => {
        impl $crate::config::Section for $type {
            fn enabled(&self) -> $crate::config::Enabled {
                self.enabled
            }
            fn timeout(&self) -> std::time::Duration {
                self.timeout
            }
            fn include_keys(&self) -> &[String] {
                &self.include_keys
            }
            fn exclude_keys(&self) -> &[String] {
                &self.exclude_keys
            }
        }
    };
}
pub(crate) use section;

/// The deadline of most collectors unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

/// The section of a collector with no settings beyond `enabled` and `timeout` (`linuxos`,
/// `sysfsdmi`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct BasicConfig {
    /// Run the collector.
    pub enabled: Enabled,
    /// Deadline.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Key globs (`*` wildcard) whose labels are kept; empty (the default): all.
    pub include_keys: Vec<String>,
    /// Key globs whose labels are left out (default none).
    pub exclude_keys: Vec<String>,
}

impl Default for BasicConfig {
    fn default() -> Self {
        Self {
            enabled: Enabled::Always,
            timeout: DEFAULT_TIMEOUT,
            include_keys: Vec::new(),
            exclude_keys: Vec::new(),
        }
    }
}

section!(BasicConfig);
