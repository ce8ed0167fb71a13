//! The gate of every switch an operator or the daemon asks for, as a pure function of the state and the request:
//! no disk, no clock, no process. A version marked bad is not switched to, and a pinned app is not moved to
//! another version, unless the request is forced. (The other decisions on a state are pure too and live with it:
//! [`AppState::rollback_target`] and [`AppState::prunable`].)

use crate::base::version::Version;
use crate::error::Error;
use crate::statedir::state::AppState;

/// Why a switch to a version is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// The version is marked bad (why).
    Bad { reason: String },
    /// The app is pinned to another version.
    Pinned { pinned: Version },
}

/// Whether `target` may be switched to: not marked bad, and the app not pinned to another version; `force` lets
/// both through. The bad mark is said first.
pub fn may_switch_to(state: &AppState, target: &Version, force: bool) -> Result<(), Held> {
    not_bad(state, target, force)?;
    match &state.pin {
        Some(pin) if &pin.version != target && !force => Err(Held::Pinned { pinned: pin.version.clone() }),
        _ => Ok(()),
    }
}

/// Whether `target` may be pinned to (and switched to): not marked bad, unless forced.
pub fn not_bad(state: &AppState, target: &Version, force: bool) -> Result<(), Held> {
    match state.bad.get(target) {
        Some(bad) if !force => Err(Held::Bad { reason: bad.reason.clone() }),
        _ => Ok(()),
    }
}

impl Held {
    /// The error an operator sees for a held switch of `app` to `target`.
    pub fn error(self, app: &str, target: &Version) -> Error {
        match self {
            Held::Bad { reason } => Error::MarkedBad { app: app.to_owned(), version: target.to_string(), reason },
            Held::Pinned { pinned } => Error::Pinned { app: app.to_owned(), pinned: pinned.to_string() },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statedir::state::{BadMark, Pin};

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn fixture() -> AppState {
        let mut s = AppState::default();
        s.bad.insert(v("2.0.0"), BadMark { at: "2026-01-01T00:00:00Z".into(), reason: "health checks failed".into() });
        s
    }

    fn pinned(mut s: AppState, to: &str) -> AppState {
        s.pin = Some(Pin { version: v(to), at: "2026-01-01T00:00:00Z".into(), by: "uid 0".into(), reason: None });
        s
    }

    #[test]
    fn a_bad_version_is_held_unless_forced() {
        let s = fixture();
        assert_eq!(may_switch_to(&s, &v("2.0.0"), false), Err(Held::Bad { reason: "health checks failed".into() }));
        assert_eq!(may_switch_to(&s, &v("2.0.0"), true), Ok(()));
        assert_eq!(may_switch_to(&s, &v("1.0.0"), false), Ok(()));
        assert_eq!(not_bad(&s, &v("2.0.0"), false), Err(Held::Bad { reason: "health checks failed".into() }));
    }

    #[test]
    fn a_pinned_app_moves_only_to_its_pin_unless_forced() {
        let s = pinned(fixture(), "1.0.0");
        assert_eq!(may_switch_to(&s, &v("1.1.0"), false), Err(Held::Pinned { pinned: v("1.0.0") }));
        assert_eq!(may_switch_to(&s, &v("1.0.0"), false), Ok(()));
        assert_eq!(may_switch_to(&s, &v("1.1.0"), true), Ok(()));
        // A pin does not hold a pin elsewhere: `pin` replaces it.
        assert_eq!(not_bad(&s, &v("1.1.0"), false), Ok(()));
    }

    #[test]
    fn the_bad_mark_is_said_before_the_pin() {
        let s = pinned(fixture(), "1.0.0");
        assert!(matches!(may_switch_to(&s, &v("2.0.0"), false), Err(Held::Bad { .. })));
        let e = Held::Pinned { pinned: v("1.0.0") }.error("web", &v("1.1.0"));
        assert!(e.to_string().contains("pinned to `1.0.0`"), "{e}");
    }
}
