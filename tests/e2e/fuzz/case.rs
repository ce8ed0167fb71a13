//! One case, made from `(seed, index)` alone: its random stream, which generator makes it, whether it is mutated,
//! how it is fed, and its limits.

use switchback::config::Limits;

use super::benign::{benign, Model};
use super::compression::pack;
use super::headers::single_header;
use super::hostile::hostile;
use super::links::links;
use super::mutate::mutate;
use super::sandbox::Feed;
use crate::tarw::Tar;

/// One generated input.
pub struct Case {
    pub feed: Feed,
    pub bytes: Vec<u8>,
    pub limits: Limits,
    /// For benign archives: what must come out.
    pub(super) expect: Option<Model>,
    /// What the generator did, for replays.
    notes: Vec<String>,
}

impl Case {
    /// The input in the cargo-fuzz target's format: a selector byte (0 plain tar, 3 a zstd stream as it is),
    /// then the bytes.
    pub fn fuzz_input(&self) -> Vec<u8> {
        let mut out = vec![if self.feed == Feed::Tar { 0 } else { 3 }];
        out.extend_from_slice(&self.bytes);
        out
    }

    pub(super) fn describe(&self) -> String {
        let l = &self.limits;
        let limits = if format!("{l:?}") == format!("{:?}", Limits::default()) {
            "default limits".to_owned()
        } else {
            format!("{l:?}")
        };
        let mut notes = self.notes.clone();
        if notes.len() > 60 {
            notes.truncate(60);
            notes.push("...".into());
        }
        format!(
            "{:?}, {} bytes, {limits}, {}\n  {}",
            self.feed,
            self.bytes.len(),
            if self.expect.is_some() { "benign: must unpack" } else { "may be refused" },
            notes.join("\n  ")
        )
    }
}

/// The random stream of one case: `(seed, index)` mixed with splitmix64.
fn case_rng(seed: u64, index: u64) -> fastrand::Rng {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fastrand::Rng::with_seed(mix(seed ^ mix(index)))
}

/// A case's generator state: its random stream and what it noted for replays.
pub(super) struct G<'a> {
    pub(super) rng: fastrand::Rng,
    notes: Vec<String>,
    /// Absolute paths into the sandbox, outside `staging`.
    pub(super) targets: &'a [Vec<u8>],
    /// How often (percent) a hostile header gets wild numeric fields, a bad checksum or an odd record size.
    pub(super) chaos: u32,
}

impl G<'_> {
    pub(super) fn chance(&mut self, percent: u32) -> bool {
        self.rng.u32(0..100) < percent
    }

    pub(super) fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.rng.usize(0..xs.len())].clone()
    }

    pub(super) fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.rng.fill(&mut v);
        v
    }

    pub(super) fn note(&mut self, s: String) {
        self.notes.push(s);
    }
}

/// Bytes as text for the notes, cut when long.
pub(super) fn shown(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b).escape_debug().to_string();
    if s.len() > 80 {
        format!("{}...({} bytes)", s.chars().take(60).collect::<String>(), b.len())
    } else {
        s
    }
}

/// The case `index` of `seed`; `targets` are the sandbox's absolute paths that hostile names aim at.
pub fn generate(seed: u64, index: u64, targets: &[Vec<u8>]) -> Case {
    let mut g = G { rng: case_rng(seed, index), notes: Vec::new(), targets, chaos: 0 };
    let mut limits = Limits::default();
    let roll = g.rng.u32(0..100);
    let (mut tar, expect) = match roll {
        0..=19 => {
            let (tar, model) = benign(&mut g);
            (tar, Some(model))
        }
        20..=34 => {
            let (tar, _) = benign(&mut g);
            (tar, None)
        }
        35..=49 => (links(&mut g), None),
        50..=89 => {
            if g.chance(20) {
                limits = small_limits(&mut g);
            }
            let tame = g.chance(35);
            (hostile(&mut g, tame), None)
        }
        90..=94 => (single_header(&mut g), None),
        _ => {
            let n = g.rng.usize(0..3000);
            g.note(format!("{n} random bytes"));
            (Tar { bytes: g.bytes(n), headers: Vec::new() }, None)
        }
    };
    if (20..=34).contains(&roll) || ((35..=89).contains(&roll) && g.chance(25)) {
        mutate(&mut g, &mut tar);
    }
    let (feed, bytes) = pack(&mut g, tar.bytes, expect.is_some());
    Case { feed, bytes, limits, expect, notes: g.notes }
}

fn small_limits(g: &mut G) -> Limits {
    let mut l = Limits::default();
    if g.chance(50) {
        l.max_unpacked = g.pick(&[1, 10, 512, 4096, 1 << 20]);
    }
    if g.chance(50) {
        l.max_entries = g.pick(&[1, 2, 3, 5, 10]);
    }
    if g.chance(50) {
        l.max_path_len = g.pick(&[1, 5, 20, 100, 255]);
    }
    if g.chance(50) {
        l.max_depth = g.pick(&[1, 2, 3, 5]);
    }
    if g.chance(50) {
        l.max_record = g.pick(&[0, 1, 10, 100, 600]);
    }
    if g.chance(30) {
        l.max_window = g.pick(&[1 << 10, 1 << 12, 1 << 16, 1 << 19, 1 << 20]);
    }
    l
}
