//! Logging refused TLS handshakes without letting a peer choose the log volume.
//!
//! Every refusal is logged at `debug` and counted in
//! `portcullis_tls_handshake_failures_total{direction,reason}` (by the caller). At
//! `warn`, the first refusal of each minute is logged with its detail; the others of
//! that minute are only counted here, and the first refusal of a later minute also
//! logs a summary of them: how many, and the most frequent reasons. However many
//! handshakes a peer fails, that is at most two `warn` lines a minute.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// How long one window of the summary lasts.
pub const WINDOW: Duration = Duration::from_secs(60);

/// How many reasons a summary names.
const TOP_REASONS: usize = 3;

#[derive(Default)]
struct Window {
    started: Option<Instant>,
    /// Refusals of this window not logged at `warn`, by direction and reason.
    suppressed: HashMap<(&'static str, &'static str), u64>,
}

static STATE: LazyLock<Mutex<Window>> = LazyLock::new(|| Mutex::new(Window::default()));

/// What [`note`] decided for one refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Log this refusal at `warn`; `summary` describes the previous window's others.
    Warn { summary: Option<String> },
    /// Counted for the next summary; log at `debug` only.
    Quiet,
}

/// Records one refusal at `now`.
fn note_at(
    state: &mut Window,
    direction: &'static str,
    reason: &'static str,
    now: Instant,
) -> Verdict {
    let open = state
        .started
        .is_some_and(|s| now.saturating_duration_since(s) < WINDOW);
    if open {
        *state.suppressed.entry((direction, reason)).or_default() += 1;
        return Verdict::Quiet;
    }
    let summary = summarise(&state.suppressed);
    state.suppressed.clear();
    state.started = Some(now);
    Verdict::Warn { summary }
}

fn summarise(suppressed: &HashMap<(&'static str, &'static str), u64>) -> Option<String> {
    let total: u64 = suppressed.values().sum();
    if total == 0 {
        return None;
    }
    let mut top: Vec<_> = suppressed.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let named: Vec<String> = top
        .iter()
        .take(TOP_REASONS)
        .map(|((direction, reason), n)| format!("{direction}/{reason}: {n}"))
        .collect();
    Some(format!(
        "{total} more TLS handshakes refused and not logged at warn (top reasons: {})",
        named.join(", ")
    ))
}

/// Logs one refused handshake: `debug` always, `warn` within the budget.
pub fn refused(direction: &'static str, reason: &'static str, detail: &dyn std::fmt::Display) {
    tracing::debug!(direction, reason, "TLS handshake refused: {detail}");
    let verdict = {
        let mut state = STATE.lock().unwrap_or_else(|p| p.into_inner());
        note_at(&mut state, direction, reason, Instant::now())
    };
    if let Verdict::Warn { summary } = verdict {
        if let Some(s) = summary {
            tracing::warn!("{s}");
        }
        tracing::warn!(
            direction,
            reason,
            "TLS handshake refused: {detail} (further refusals this minute are logged at debug and summarised)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_one_detailed_line_and_one_summary_per_window() {
        let mut w = Window::default();
        let t0 = Instant::now();
        assert_eq!(
            note_at(&mut w, "inbound", "expired", t0),
            Verdict::Warn { summary: None }
        );
        for i in 0..300u64 {
            let reason = if i % 3 == 0 { "unknown_ca" } else { "expired" };
            let at = t0 + Duration::from_millis(i * 100);
            assert_eq!(note_at(&mut w, "inbound", reason, at), Verdict::Quiet);
        }
        let Verdict::Warn { summary: Some(s) } =
            note_at(&mut w, "outbound", "expired", t0 + WINDOW)
        else {
            panic!("a new window logs a summary");
        };
        assert_eq!(
            s,
            "300 more TLS handshakes refused and not logged at warn (top reasons: inbound/expired: 200, inbound/unknown_ca: 100)"
        );
        // The new window is quiet again after its first line.
        assert_eq!(
            note_at(
                &mut w,
                "outbound",
                "expired",
                t0 + WINDOW + Duration::from_secs(1)
            ),
            Verdict::Quiet
        );
    }
}
