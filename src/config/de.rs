//! Deserialization helpers shared by the configuration sections: null sections as
//! defaults, optional sections, humantime durations, and mappings converted after
//! they are read (so a conversion error carries the mapping's location).

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// A present key with a null value (`inbound:` with nothing under it) means the default.
pub(super) fn or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Used with `#[serde(default)]`: absent → `None`, present (even null) → `Some`.
pub(super) fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    or_default(d).map(Some)
}

pub(super) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        de::Error::custom(format!(
            "invalid duration \"{s}\": {e} (expected e.g. \"10s\", \"5m\", \"250ms\")"
        ))
    })
}

pub(super) fn de_duration_opt<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// Deserializes a mapping into the raw type `R`, then converts it; the conversion's
/// error is raised inside the mapping so that it carries the mapping's location.
pub(super) struct MapThen<R, T> {
    expecting: &'static str,
    convert: fn(R) -> Result<T, String>,
    _types: PhantomData<fn() -> (R, T)>,
}

impl<R, T> MapThen<R, T> {
    pub(super) fn new(expecting: &'static str, convert: fn(R) -> Result<T, String>) -> Self {
        MapThen {
            expecting,
            convert,
            _types: PhantomData,
        }
    }
}

impl<'de, R: Deserialize<'de>, T> Visitor<'de> for MapThen<R, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let raw = R::deserialize(de::value::MapAccessDeserializer::new(map))?;
        (self.convert)(raw).map_err(de::Error::custom)
    }
}
