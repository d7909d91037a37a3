//! Which side of the sidecar a connection or request is on.
//!
//! Metric labels, decision log entries, tap events and log lines name the side with
//! [`Direction::as_str`], so the spelling is in one place.

use std::fmt;

/// The two data paths, and the admin listener (which shares the HTTP server and
/// its connection metrics, never the decision path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Traffic from other workloads to the local app (`:15006`).
    Inbound,
    /// Traffic from the local app to other workloads (`:15001`, route listeners).
    Outbound,
    /// The admin listener (`:15000`): only in listener metrics.
    Admin,
}

impl Direction {
    /// The label used in metrics, logs and the decision log: `inbound` or `outbound`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
            Direction::Admin => "admin",
        }
    }

    /// Parses a label written by [`Direction::as_str`].
    pub fn from_label(s: &str) -> Option<Direction> {
        match s {
            "inbound" => Some(Direction::Inbound),
            "outbound" => Some(Direction::Outbound),
            "admin" => Some(Direction::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Direction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Direction;

    #[test]
    fn labels_round_trip() {
        for d in [Direction::Inbound, Direction::Outbound, Direction::Admin] {
            assert_eq!(Direction::from_label(d.as_str()), Some(d));
            assert_eq!(d.to_string(), d.as_str());
        }
        assert_eq!(Direction::from_label("sideways"), None);
    }
}
