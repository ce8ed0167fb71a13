//! The engine's decisions, as pure functions of the state and their inputs (no disk, no process; the clock is
//! passed in), each tested against fixtures:
//! - the gate of every switch an operator or the daemon asks for ([`may_switch_to`], [`not_bad`],
//!   [`not_lower_epoch`]): a version marked bad is not switched to, a pinned app is not moved to another version,
//!   and an app is not moved back to a release of a lower epoch, unless forced;
//! - whether the way back after a failure may go where it would ([`way_back`]): never across an epoch;
//! - what recovery does after a crash ([`recovery`]), from the journal and where `current` points;
//! - what the daemon converges to ([`converge`]), from the state, the disk and the accepted manifest;
//! - a fleet's rollout: each host's [`seed`], whether the [`wave`] in force covers it, and whether the hosts'
//!   reports have [`halted`] the release.
//!
//! The other decisions on a state are pure too and live with it: [`AppState::rollback_target`] and
//! [`AppState::prunable`].

use std::collections::HashSet;
use std::time::SystemTime;

use crate::base::version::Version;
use crate::error::Error;
use crate::source::manifest::{Accepted, Delta};
use crate::source::rollout::{Threshold, Wave};
use crate::statedir::state::{AppState, InFlight, Op, Step};

/// Why a switch to a version is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// The version is marked bad (why).
    Bad { reason: String },
    /// The app is pinned to another version.
    Pinned { pinned: Version },
    /// The target is of a lower epoch than the release the app is on (`current`).
    LowerEpoch { current: Version, current_epoch: u64, target_epoch: u64 },
}

/// Whether `target` may be switched to from the current release: not marked bad, the app not pinned to another
/// version, and not back to a lower epoch (when `target`'s epoch is recorded); `force` lets all through. The bad
/// mark is said first, then the pin.
pub fn may_switch_to(state: &AppState, target: &Version, force: bool) -> Result<(), Held> {
    not_bad(state, target, force)?;
    match &state.pin {
        Some(pin) if &pin.version != target && !force => return Err(Held::Pinned { pinned: pin.version.clone() }),
        _ => {}
    }
    not_lower_epoch(state, state.current.as_ref(), target, None, force)
}

/// The recorded epoch of a release on disk (0 when it declared none), or `None` when it is not recorded.
pub fn epoch_of(state: &AppState, v: &Version) -> Option<u64> {
    state.releases.get(v).map(|r| r.epoch())
}

/// The epoch rule: a switch from `from` to `target` of a lower epoch is held unless forced. A release's epoch
/// only ever grows across a marked schema migration, so a release of a lower epoch may not read what a higher
/// one migrated. `target_epoch` is what is known of `target` when it is not recorded yet (its manifest's);
/// `target`'s record wins when it has one. An unknown epoch holds nothing (the switch is checked again once the
/// release is unpacked and recorded); `from` unrecorded is epoch 0.
pub fn not_lower_epoch(
    state: &AppState,
    from: Option<&Version>,
    target: &Version,
    target_epoch: Option<u64>,
    force: bool,
) -> Result<(), Held> {
    let Some(from) = from.filter(|f| *f != target) else { return Ok(()) };
    let Some(target_epoch) = epoch_of(state, target).or(target_epoch) else { return Ok(()) };
    let current_epoch = epoch_of(state, from).unwrap_or(0);
    if target_epoch < current_epoch && !force {
        return Err(Held::LowerEpoch { current: from.clone(), current_epoch, target_epoch });
    }
    Ok(())
}

/// Whether the way back from `failed` (a release that did not prove healthy) to `target` is allowed: an
/// automatic rollback (after a deploy, a recovery, or an operator's switch that failed) never crosses an epoch
/// and is never forced. `Err` holds the epochs: the app stays on `failed`, degraded.
pub fn way_back(state: &AppState, failed: &Version, target: &Version) -> Result<(), Held> {
    not_lower_epoch(state, Some(failed), target, None, false)
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
            Held::LowerEpoch { current, current_epoch, target_epoch } => Error::LowerEpoch {
                app: app.to_owned(),
                current: current.to_string(),
                current_epoch,
                target: target.to_string(),
                target_epoch,
            },
        }
    }
}

/// What a restart after a crash does about the operation the journal says was in flight.
#[derive(Debug, Clone, PartialEq)]
pub enum Recovery {
    /// Nothing was in flight and the state agrees with `current`.
    Nothing,
    /// Nothing was in flight, but the state names another `current` than the symlink: the symlink is the truth.
    Correct { recorded: Option<Version>, actual: Option<Version> },
    /// Interrupted before the switch took effect: forgotten; the app is still on `actual`.
    Forget { flight: InFlight, actual: Option<Version> },
    /// Live but never proven, or a rollback (which is always finished): restart and verify it now. If it fails,
    /// a deploy falls back to the last good release and a rollback degrades (it never flips back and forth).
    Finish { flight: InFlight },
}

/// The recovery for `state` when `current` points at `actual`.
pub fn recovery(state: &AppState, actual: Option<&Version>) -> Recovery {
    let Some(f) = state.in_flight.clone() else {
        return if state.current.as_ref() == actual {
            Recovery::Nothing
        } else {
            Recovery::Correct { recorded: state.current.clone(), actual: actual.cloned() }
        };
    };
    let live = actual == Some(&f.version);
    match (f.op, f.step) {
        (_, Step::Unpacking | Step::Released) | (Op::Deploy, Step::Switching | Step::Checking) if !live => {
            Recovery::Forget { flight: f, actual: actual.cloned() }
        }
        _ => Recovery::Finish { flight: f },
    }
}

/// What the daemon does about the version its accepted manifest names.
#[derive(Debug, Clone, PartialEq)]
pub enum Converge {
    /// No manifest was accepted yet: nothing to converge to.
    NoManifest,
    /// The app is on that version, with nothing in flight.
    OnIt { version: Version },
    /// Not deploying it, and why; `retry` when the hold may lift without a new manifest (a pin), else settled.
    Hold { version: Version, why: String, retry: bool },
    /// Deploy it: from the release on disk when `on_disk`, else after fetching its artifact.
    Deploy { want: Box<Accepted>, on_disk: bool },
}

/// The decision for `state` at `now`, given the releases on disk and the artifacts refused (by version and
/// sha256) so far.
pub fn converge(
    state: &AppState,
    on_disk: &[Version],
    refused: &HashSet<(String, String)>,
    now: SystemTime,
) -> Converge {
    let Some(want) = state.channel.clone() else { return Converge::NoManifest };
    let v = want.version.clone();
    let hold = |why: String, retry: bool| Converge::Hold { version: v.clone(), why, retry };
    if state.current.as_ref() == Some(&v) && state.in_flight.is_none() {
        return Converge::OnIt { version: v };
    }
    if let Err(held) = may_switch_to(state, &v, false)
        .and_then(|()| not_lower_epoch(state, state.current.as_ref(), &v, want.epoch, false))
    {
        return match held {
            Held::Bad { reason } => hold(format!("{v} is marked bad ({reason})"), false),
            Held::Pinned { pinned } => hold(format!("pinned to {pinned}"), true),
            Held::LowerEpoch { current, current_epoch, target_epoch } => hold(
                format!(
                    "{v} is of epoch {target_epoch}, lower than {current}'s epoch {current_epoch}: the daemon never goes \
                     back across an epoch (deploy it by hand with --force)"
                ),
                false,
            ),
        };
    }
    if want.expired(now) {
        return hold(format!("the manifest naming {v} expired at {}; waiting for a newer one", want.expires), false);
    }
    if refused.contains(&(v.to_string(), want.sha256.clone())) {
        return hold(format!("the artifact of {v} was refused"), false);
    }
    let on_disk = on_disk.contains(&v) && state.releases.get(&v).is_some_and(|r| r.sha256 == want.sha256);
    Converge::Deploy { want: Box::new(want), on_disk }
}

/// The delta worth fetching for `want`: the one its manifest names, when its base is on disk as a release this
/// app recorded (with its index, the base's files are what the delta refers to). Anything else fetches the full
/// artifact.
pub fn delta_base<'a>(state: &AppState, on_disk: &[Version], want: &'a Accepted) -> Option<&'a Delta> {
    let d = want.delta.as_ref()?;
    (on_disk.contains(&d.from) && state.releases.contains_key(&d.from) && d.from != want.version).then_some(d)
}

/// A host's place in the rollout of `version` of `app`, in [0, 100): a hash of the three, so that every release
/// picks its early hosts anew and no host is always first.
pub fn seed(host: &str, app: &str, version: &Version) -> u8 {
    use sha2::Digest;
    let h = sha2::Sha256::new()
        .chain_update(b"switchback-wave\0")
        .chain_update(host)
        .chain_update(b"\0")
        .chain_update(app)
        .chain_update(b"\0")
        .chain_update(version.as_str())
        .finalize();
    let n = u64::from_be_bytes(h[..8].try_into().expect("8 bytes"));
    (n % 100) as u8
}

/// Where a rollout stands for one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaveDecision {
    /// The manifest has no waves, or the wave in force covers the host.
    Due { wave: Option<Wave> },
    /// Not yet: the wave in force (if any has started) does not cover the host; the first wave that will, and when
    /// it starts (`None`: no wave of this manifest ever covers it).
    NotYet { seed: u8, in_force: Option<Wave>, next: Option<(Wave, SystemTime)> },
}

/// Whether a host of seed `seed` is due to deploy what `want` names at `now`: when a wave whose delay (counted
/// from the manifest's `published_at`) has passed covers its seed (seed < percent). Without waves, at once.
pub fn wave(want: &Accepted, seed: u8, now: SystemTime) -> WaveDecision {
    if want.waves.is_empty() {
        return WaveDecision::Due { wave: None };
    }
    // Checked when the manifest was accepted; unreadable here means no rollout to wait for.
    let Some(published) = want.published_at.as_deref().and_then(|t| humantime::parse_rfc3339_weak(t).ok()) else {
        return WaveDecision::Due { wave: None };
    };
    let start = |w: &Wave| published + std::time::Duration::from_secs(w.after);
    let in_force = want.waves.iter().rev().find(|w| start(w) <= now).copied();
    match in_force {
        Some(w) if seed < w.percent => WaveDecision::Due { wave: Some(w) },
        _ => WaveDecision::NotYet {
            seed,
            in_force,
            next: want.waves.iter().find(|w| seed < w.percent && start(w) > now).map(|w| (*w, start(w))),
        },
    }
}

/// The failures of one release across a fleet, from the failure marks in the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Failures {
    /// Hosts that marked that they failed the release of this manifest.
    pub failed: u64,
    /// Hosts that report at all (the fleet, as far as the bucket knows it), when counted: a threshold in hosts
    /// needs no count of the fleet.
    pub hosts: Option<u64>,
}

/// Counts the hosts that marked a failure of the manifest `sequence` among the objects `listed` (names relative
/// to `BASE/APP/`, from a listing of its failure folder; a newer manifest for the same version, a resume, counts
/// afresh), of `hosts` that report.
pub fn failures<'a>(listed: impl IntoIterator<Item = &'a str>, sequence: u64, hosts: Option<u64>) -> Failures {
    let marked: std::collections::BTreeSet<&str> =
        listed.into_iter().filter_map(|rel| crate::source::rollout::failure_host(rel, sequence)).collect();
    Failures { failed: marked.len() as u64, hosts }
}

/// Why the release is halted, when the failures reach the manifest's `halt_after`.
pub fn halted(threshold: Option<Threshold>, f: Failures) -> Option<String> {
    let t = threshold?;
    t.reached(f.failed, f.hosts.unwrap_or(0)).then(|| match f.hosts {
        Some(hosts) => format!("halted: {} of {hosts} reporting hosts failed it (halt_after {t})", f.failed),
        None => format!("halted: {} host{} failed it (halt_after {t})", f.failed, if f.failed == 1 { "" } else { "s" }),
    })
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

    /// On `current`, with releases recorded at these epochs (`None`: recorded before epochs).
    fn epochs(current: &str, releases: &[(&str, Option<u64>)]) -> AppState {
        let mut s = AppState { current: Some(v(current)), ..AppState::default() };
        for (name, epoch) in releases {
            s.record_release(&v(name), "aa", 1, "t");
            s.releases.get_mut(&v(name)).unwrap().epoch = *epoch;
        }
        s
    }

    #[test]
    fn a_switch_back_to_a_lower_epoch_is_held_unless_forced() {
        let s = epochs("3", &[("1", Some(0)), ("2", Some(1)), ("3", Some(1)), ("4", Some(2))]);
        let held = Held::LowerEpoch { current: v("3"), current_epoch: 1, target_epoch: 0 };
        assert_eq!(may_switch_to(&s, &v("1"), false), Err(held.clone()));
        assert_eq!(may_switch_to(&s, &v("1"), true), Ok(()));
        // Within an epoch, and forward to a higher one, nothing is held.
        assert_eq!(may_switch_to(&s, &v("2"), false), Ok(()));
        assert_eq!(may_switch_to(&s, &v("4"), false), Ok(()));
        // The same version is no switch at all.
        assert_eq!(not_lower_epoch(&s, Some(&v("3")), &v("3"), Some(0), false), Ok(()));
        // The error says both versions, both epochs and the way through.
        let e = held.error("web", &v("1")).to_string();
        for want in ["`3` (epoch 1)", "`1` is of the lower epoch 0", "--force"] {
            assert!(e.contains(want), "{e} lacks {want}");
        }
        assert_eq!(
            Held::LowerEpoch { current: v("3"), current_epoch: 1, target_epoch: 0 }.error("web", &v("1")).exit_code(),
            crate::base::exit::FAILED
        );
    }

    #[test]
    fn an_unknown_epoch_holds_nothing_and_a_record_wins_over_a_manifest() {
        let s = epochs("2", &[("1", None), ("2", Some(1))]);
        // Recorded before epochs: epoch 0, so going back to it is held; a release not recorded yet is not.
        assert!(matches!(may_switch_to(&s, &v("1"), false), Err(Held::LowerEpoch { target_epoch: 0, .. })));
        assert_eq!(may_switch_to(&s, &v("9"), false), Ok(()));
        // ... unless what its manifest says is known.
        assert!(not_lower_epoch(&s, Some(&v("2")), &v("9"), Some(0), false).is_err());
        assert_eq!(not_lower_epoch(&s, Some(&v("2")), &v("9"), Some(1), false), Ok(()));
        // The record wins over the manifest's word.
        assert!(not_lower_epoch(&s, Some(&v("2")), &v("1"), Some(5), false).is_err());
        // From a release recorded before epochs (epoch 0), nothing is lower.
        let old = epochs("1", &[("1", None), ("2", Some(0))]);
        assert_eq!(may_switch_to(&old, &v("2"), false), Ok(()));
        // No current release: nothing to cross.
        assert_eq!(not_lower_epoch(&s, None, &v("1"), None, false), Ok(()));
    }

    #[test]
    fn the_way_back_never_crosses_an_epoch() {
        let s = epochs("3", &[("1", Some(0)), ("2", Some(1)), ("3", Some(1))]);
        assert_eq!(way_back(&s, &v("3"), &v("2")), Ok(()));
        assert_eq!(
            way_back(&s, &v("3"), &v("1")),
            Err(Held::LowerEpoch { current: v("3"), current_epoch: 1, target_epoch: 0 })
        );
        // Back to a higher epoch (an operator's switch to an older epoch that failed) is allowed.
        assert_eq!(way_back(&s, &v("1"), &v("3")), Ok(()));
    }

    #[test]
    fn the_daemon_holds_a_manifest_naming_a_lower_epoch() {
        let now = at("2026-06-01T00:00:00Z");
        let none = HashSet::new();
        let mut s = wanting("2", "2027-01-01T00:00:00Z");
        s.releases.get_mut(&v("1")).unwrap().epoch = Some(3);
        // Not on disk: the manifest's epoch decides; without one, it is fetched (and checked once unpacked).
        assert!(matches!(converge(&s, &[v("1")], &none, now), Converge::Deploy { .. }));
        s.channel.as_mut().unwrap().epoch = Some(2);
        match converge(&s, &[v("1")], &none, now) {
            Converge::Hold { why, retry: false, .. } => {
                assert!(why.contains("epoch 2, lower than 1's epoch 3"), "{why}")
            }
            other => panic!("not held: {other:?}"),
        }
        s.channel.as_mut().unwrap().epoch = Some(3);
        assert!(matches!(converge(&s, &[v("1")], &none, now), Converge::Deploy { .. }));
        // On disk and recorded at a lower epoch: held, whatever the manifest says.
        s.record_release(&v("2"), "bb", 2, "t");
        s.releases.get_mut(&v("2")).unwrap().epoch = Some(1);
        assert!(matches!(converge(&s, &[v("1"), v("2")], &none, now), Converge::Hold { retry: false, .. }));
    }

    fn flight(op: Op, version: &str, previous: &str, step: Step) -> InFlight {
        InFlight {
            op,
            version: v(version),
            previous: Some(v(previous)),
            step,
            started_at: "2026-01-01T00:00:00Z".into(),
            pid: 42,
        }
    }

    fn on(current: &str, f: Option<InFlight>) -> AppState {
        AppState { current: Some(v(current)), in_flight: f, ..AppState::default() }
    }

    #[test]
    fn recovery_forgets_a_deploy_that_never_went_live() {
        for step in [Step::Unpacking, Step::Released, Step::Switching, Step::Checking] {
            let f = flight(Op::Deploy, "2", "1", step);
            let s = on("1", Some(f.clone()));
            assert_eq!(recovery(&s, Some(&v("1"))), Recovery::Forget { flight: f, actual: Some(v("1")) }, "{step:?}");
        }
    }

    #[test]
    fn recovery_finishes_what_went_live_and_every_switching_rollback() {
        // A deploy that is live (the switch happened, or it was checking) is verified, never assumed good.
        for step in [Step::Switching, Step::Checking] {
            let f = flight(Op::Deploy, "2", "1", step);
            assert_eq!(recovery(&on("1", Some(f.clone())), Some(&v("2"))), Recovery::Finish { flight: f });
        }
        // A rollback interrupted at the switch is finished even before the symlink moved.
        let f = flight(Op::Rollback, "1", "2", Step::Switching);
        assert_eq!(recovery(&on("2", Some(f.clone())), Some(&v("2"))), Recovery::Finish { flight: f });
        // A rollback still unpacking changed nothing.
        let f = flight(Op::Rollback, "1", "2", Step::Unpacking);
        assert!(matches!(recovery(&on("2", Some(f)), Some(&v("2"))), Recovery::Forget { .. }));
    }

    #[test]
    fn recovery_trusts_the_symlink_over_the_state() {
        assert_eq!(recovery(&on("1", None), Some(&v("1"))), Recovery::Nothing);
        assert_eq!(recovery(&AppState::default(), None), Recovery::Nothing);
        assert_eq!(
            recovery(&on("1", None), Some(&v("2"))),
            Recovery::Correct { recorded: Some(v("1")), actual: Some(v("2")) }
        );
    }

    fn wanting(version: &str, expires: &str) -> AppState {
        let mut s = on("1", None);
        s.record_release(&v("1"), "aa", 1, "t");
        s.channel = Some(Accepted {
            sequence: 7,
            version: v(version),
            sha256: "bb".into(),
            size: 2,
            artifact: format!("releases/{version}.tar.zst"),
            expires: expires.into(),
            accepted_at: "2026-01-01T00:00:00Z".into(),
            from: "s3://bucket/web/channels/stable.json".into(),
            delta: None,
            published_at: None,
            waves: Vec::new(),
            halt_after: None,
            epoch: None,
        });
        s
    }

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    #[test]
    fn converge_deploys_what_the_manifest_names_unless_held() {
        let now = at("2026-06-01T00:00:00Z");
        let none = HashSet::new();
        let disk = [v("1")];
        assert_eq!(converge(&on("1", None), &disk, &none, now), Converge::NoManifest);
        let s = wanting("2", "2027-01-01T00:00:00Z");
        assert!(matches!(converge(&s, &disk, &none, now), Converge::Deploy { on_disk: false, .. }));
        // On disk with the same sha256: deployed from disk; with another one: fetched (and refused by deploy).
        let mut s2 = s.clone();
        s2.record_release(&v("2"), "bb", 2, "t");
        assert!(matches!(converge(&s2, &[v("1"), v("2")], &none, now), Converge::Deploy { on_disk: true, .. }));
        s2.releases.get_mut(&v("2")).unwrap().sha256 = "cc".into();
        assert!(matches!(converge(&s2, &[v("1"), v("2")], &none, now), Converge::Deploy { on_disk: false, .. }));
        // Already there.
        let mut s3 = s.clone();
        s3.current = Some(v("2"));
        assert_eq!(converge(&s3, &disk, &none, now), Converge::OnIt { version: v("2") });
        // ... but a deploy in flight towards it is not "there" yet.
        s3.in_flight = Some(flight(Op::Deploy, "2", "1", Step::Checking));
        assert!(matches!(converge(&s3, &disk, &none, now), Converge::Deploy { .. }));
    }

    #[test]
    fn a_delta_is_fetched_only_when_its_base_is_on_disk() {
        let mut s = wanting("2", "2027-01-01T00:00:00Z");
        let delta =
            Delta { from: v("1"), artifact: "releases/2.from-1.delta.tar.zst".into(), sha256: "dd".into(), size: 1 };
        let want = |s: &AppState| {
            let mut w = s.channel.clone().unwrap();
            w.delta = Some(delta.clone());
            w
        };
        let w = want(&s);
        assert_eq!(delta_base(&s, &[v("1")], &w), Some(&delta));
        // Not on disk (pruned), or on disk but not a release this app recorded: the full artifact.
        assert_eq!(delta_base(&s, &[], &w), None);
        s.releases.clear();
        assert_eq!(delta_base(&s, &[v("1")], &w), None);
        // No delta named.
        let plain = wanting("2", "2027-01-01T00:00:00Z");
        assert_eq!(delta_base(&plain, &[v("1")], plain.channel.as_ref().unwrap()), None);
    }

    #[test]
    fn converge_holds_and_says_why() {
        let now = at("2026-06-01T00:00:00Z");
        let none = HashSet::new();
        let s = wanting("2", "2027-01-01T00:00:00Z");
        let held = |s: &AppState, refused: &HashSet<(String, String)>, now| match converge(s, &[v("1")], refused, now) {
            Converge::Hold { why, retry, .. } => (why, retry),
            other => panic!("not held: {other:?}"),
        };
        let mut bad = s.clone();
        bad.mark_bad(&v("2"), "health checks failed", "t");
        assert_eq!(held(&bad, &none, now), ("2 is marked bad (health checks failed)".into(), false));
        let pinned = pinned(s.clone(), "1");
        assert_eq!(held(&pinned, &none, now), ("pinned to 1".into(), true));
        let late = at("2027-02-01T00:00:00Z");
        assert_eq!(
            held(&s, &none, late),
            ("the manifest naming 2 expired at 2027-01-01T00:00:00Z; waiting for a newer one".into(), false)
        );
        let refused: HashSet<_> = [("2".to_owned(), "bb".to_owned())].into();
        assert_eq!(held(&s, &refused, now), ("the artifact of 2 was refused".into(), false));
        // Another artifact for the same version is not refused by the memory of the first.
        let other: HashSet<_> = [("2".to_owned(), "zz".to_owned())].into();
        assert!(matches!(converge(&s, &[v("1")], &other, now), Converge::Deploy { .. }));
    }

    fn rollout(waves: &[(u8, u64)]) -> Accepted {
        let mut a = wanting("2.0.0", "2099-01-01T00:00:00Z").channel.unwrap();
        a.published_at = Some("2026-06-01T12:00:00Z".into());
        a.waves = waves.iter().map(|&(percent, after)| Wave { percent, after }).collect();
        a
    }

    #[test]
    fn seeds_spread_over_the_hosts_and_change_with_the_release() {
        let seeds: Vec<u8> = (0..1000).map(|i| seed(&format!("host-{i}"), "web", &v("2.0.0"))).collect();
        assert!(seeds.iter().all(|s| *s < 100));
        // Each tenth of the range holds about a tenth of the hosts.
        for tenth in 0..10u8 {
            let n = seeds.iter().filter(|s| **s / 10 == tenth).count();
            assert!((60..=140).contains(&n), "{n} hosts with seeds in {}0..{}9", tenth, tenth);
        }
        assert_eq!(seed("host-1", "web", &v("2.0.0")), seeds[1], "stable");
        let moved = (0..100).filter(|i| seed(&format!("host-{i}"), "web", &v("2.0.1")) != seeds[*i]).count();
        assert!(moved > 80, "a new release picks other early hosts ({moved} of 100 moved)");
        assert_ne!(
            (0..20).map(|i| seed(&format!("host-{i}"), "api", &v("2.0.0"))).collect::<Vec<_>>(),
            seeds[..20].to_vec()
        );
    }

    #[test]
    fn waves_cover_hosts_by_seed_as_time_passes() {
        let want = rollout(&[(1, 0), (10, 1800), (100, 7200)]);
        let t = |s: &str| at(s);
        // Before publication (a clock behind the publisher's): nobody.
        assert!(matches!(wave(&want, 0, t("2026-06-01T11:59:00Z")), WaveDecision::NotYet { in_force: None, .. }));
        // The first wave covers seed 0 only.
        assert_eq!(
            wave(&want, 0, t("2026-06-01T12:00:00Z")),
            WaveDecision::Due { wave: Some(Wave { percent: 1, after: 0 }) }
        );
        assert_eq!(
            wave(&want, 5, t("2026-06-01T12:29:59Z")),
            WaveDecision::NotYet {
                seed: 5,
                in_force: Some(Wave { percent: 1, after: 0 }),
                next: Some((Wave { percent: 10, after: 1800 }, t("2026-06-01T12:30:00Z")))
            }
        );
        assert!(matches!(wave(&want, 5, t("2026-06-01T12:30:00Z")), WaveDecision::Due { .. }));
        assert!(matches!(wave(&want, 99, t("2026-06-01T13:59:59Z")), WaveDecision::NotYet { .. }));
        assert!(matches!(wave(&want, 99, t("2026-06-01T14:00:00Z")), WaveDecision::Due { .. }));
        // A rollout that stops at 10%: the others are never covered.
        let canary = rollout(&[(10, 0)]);
        assert_eq!(
            wave(&canary, 50, t("2027-01-01T00:00:00Z")),
            WaveDecision::NotYet { seed: 50, in_force: Some(Wave { percent: 10, after: 0 }), next: None }
        );
        // No waves: today's behaviour.
        assert_eq!(wave(&rollout(&[]), 99, t("2026-06-01T11:00:00Z")), WaveDecision::Due { wave: None });
    }

    #[test]
    fn failures_halt_at_the_threshold_of_this_manifest() {
        let listed = [
            "failures/7/a.json",
            "failures/7/b.json",
            "failures/7/h.json",
            // Not marks of manifest 7: another manifest's, a report, names that are no host's.
            "failures/6/d.json",
            "failures/70/e.json",
            "reports/f.json",
            "failures/7/.json",
            "failures/7/x",
        ];
        let f = failures(listed, 7, Some(10));
        assert_eq!(f, Failures { failed: 3, hosts: Some(10) });
        assert_eq!(halted(None, f), None);
        assert_eq!(halted(Some(Threshold::Hosts(4)), f), None);
        let why = halted(Some(Threshold::Hosts(3)), f).unwrap();
        assert!(why.contains("3 of 10") && why.contains("halt_after 3"), "{why}");
        assert!(halted(Some(Threshold::Percent(30)), f).is_some());
        assert!(halted(Some(Threshold::Percent(31)), f).is_none());
        // A threshold in hosts needs no count of the fleet.
        let f = failures(listed, 7, None);
        assert_eq!(halted(Some(Threshold::Hosts(3)), f).unwrap(), "halted: 3 hosts failed it (halt_after 3)");
        // A resumed rollout (a newer manifest for the same version) counts afresh.
        assert_eq!(failures(listed, 8, Some(10)).failed, 0);
    }

    #[test]
    fn a_report_of_a_failure_calls_for_a_mark() {
        use crate::source::rollout::ReportOutcome as O;
        let r = |sequence, outcome| crate::source::rollout::HostReport {
            host: "h-1".into(),
            app: "web".into(),
            version: "2.0.0".into(),
            outcome,
            current: None,
            sequence,
            health: String::new(),
            duration_ms: 0,
            steps_ms: Default::default(),
            agent_version: "0".into(),
            time: "2026-06-01T12:00:00Z".into(),
            reported_at: None,
        };
        for o in [O::RolledBack, O::RollbackFailed, O::Failed, O::Refused] {
            assert_eq!(r(7, o).failure_mark().as_deref(), Some("failures/7/h-1.json"), "{o:?}");
            // Not under a manifest (a deploy by hand of another version): nothing to mark.
            assert_eq!(r(0, o).failure_mark(), None, "{o:?}");
        }
        for o in [O::Ok, O::Waiting, O::Halted, O::Rollback, O::Unknown] {
            assert_eq!(r(7, o).failure_mark(), None, "{o:?}");
        }
    }
}
