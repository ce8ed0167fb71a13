//! Entry names and link targets: from small pools, so that duplicates, paths through earlier entries and links
//! to earlier and later ones happen often, plus `..`, absolute paths, the sandbox's own outside markers, NULs,
//! over-long names and deep paths.

use super::case::G;

/// The words names are made of.
pub(super) const WORDS: &[&str] = &["a", "b", "c", "d", "x", "bin", "sub", "lib"];

/// A name from small pools, so that names repeat, go through earlier entries, and aim outward.
pub(super) fn hostile_name(g: &mut G, names: &[Vec<u8>]) -> Vec<u8> {
    let roll = g.rng.u32(0..100);
    let mut name = match roll {
        0..=29 => {
            let n = g.rng.usize(1..4);
            let parts: Vec<&str> = (0..n).map(|_| g.pick(WORDS)).collect();
            parts.join("/").into_bytes()
        }
        30..=49 if !names.is_empty() => {
            let earlier = g.pick(names);
            match g.rng.u32(0..4) {
                0 => earlier,
                1 => [earlier.as_slice(), b"/", g.pick(WORDS).as_bytes()].concat(),
                2 => [earlier.as_slice(), b"/../", g.pick(WORDS).as_bytes()].concat(),
                _ => [earlier.as_slice(), b"/"].concat(),
            }
        }
        50..=61 => g
            .pick(&[
                "..",
                "../x",
                "a/../b",
                "a/../../x",
                "x/..",
                ".",
                "./",
                "",
                "/",
                "../outside/pwned",
                "../up/victim-dir/pwned",
                "../abs/pwned",
                "../../victim",
                "a/b/../../../outside/pwned",
                "./../staging/../outside/pwned",
                "a/./../..",
                "..\\x",
                "...",
                "a/.../b",
            ])
            .into(),
        62..=67 => {
            let t = g.pick(g.targets);
            match g.rng.u32(0..4) {
                0 => t,
                1 => [b"/", t.as_slice()].concat(),
                2 => b"/tmp/switchback-fuzz-absolute".to_vec(),
                _ => [b"/./", t.as_slice()].concat(),
            }
        }
        68..=71 => g.pick(&[b"a\0b".as_slice(), b"a\0/../../x", b"\0", b"x/\0"]).to_vec(),
        72..=77 => match g.rng.u32(0..4) {
            0 => vec![b'n'; g.rng.usize(100..300)],
            1 => {
                let n = g.rng.usize(60..70);
                vec!["d"; n].join("/").into_bytes()
            }
            2 => {
                let c = "c".repeat(200);
                vec![c.as_str(); g.rng.usize(19..22)].join("/").into_bytes()
            }
            _ => [b"sub/".as_slice(), &[b'l'; 101]].concat(),
        },
        78..=81 => g.pick(&[b"\xff\xfe".as_slice(), b"a\nb", b" ", b"a/b/", b"sub//x", b"./a/./b"]).to_vec(),
        _ => g.pick(WORDS).into(),
    };
    if g.chance(5) {
        name.extend_from_slice(b"/");
    }
    if g.chance(5) {
        name = [b"./".as_slice(), &name].concat();
    }
    name
}

/// A link target: earlier entries by correct and off-by-one relative paths, outward, absolute, loops, oddities.
pub(super) fn hostile_target(g: &mut G, names: &[Vec<u8>], link: &[u8]) -> Vec<u8> {
    let depth = link.split(|b| *b == b'/').filter(|c| !c.is_empty() && *c != b".").count().saturating_sub(1);
    let roll = g.rng.u32(0..100);
    match roll {
        0..=24 if !names.is_empty() => {
            let to = g.pick(names);
            let ups = match g.rng.u32(0..5) {
                0 => depth + 1,
                1 => depth.saturating_sub(1),
                _ => depth,
            };
            [b"../".repeat(ups), to].concat()
        }
        25..=39 => {
            if !names.is_empty() && g.chance(50) {
                g.pick(names)
            } else {
                g.pick(WORDS).into()
            }
        }
        40..=54 => {
            let mut t: Vec<u8> = g
                .pick(&[
                    "..",
                    "../..",
                    "../outside",
                    "../outside/marker",
                    "../../victim",
                    "../up",
                    "../abs",
                    "./../x",
                    "a/../../x",
                    "x/../..",
                    "sub/../..",
                    "./.././staging",
                ])
                .into();
            if !names.is_empty() && g.chance(40) {
                // Through an earlier entry, which may itself be a link.
                let via = g.pick(names);
                t = [via.as_slice(), b"/", t.as_slice()].concat();
            }
            t
        }
        55..=62 => match g.rng.u32(0..3) {
            0 => g.pick(g.targets),
            1 => g.pick(&["/", "/etc", "//x", "/.."]).into(),
            _ => [b"../".repeat(depth + 2), b"sandbox/outside".to_vec()].concat(),
        },
        63..=67 => g.pick(&["", ".", "./", "a/.", "a/b/c/../../.."]).into(),
        68..=72 => {
            // Loops: itself, or back to an earlier link.
            if names.is_empty() || g.chance(30) {
                link.rsplit(|b| *b == b'/').find(|c| !c.is_empty()).unwrap_or(b"x").to_vec()
            } else {
                [b"../".repeat(depth), g.pick(names)].concat()
            }
        }
        73..=77 => match g.rng.u32(0..3) {
            0 => vec![b't'; g.rng.usize(101..300)],
            1 => b"a/".repeat(g.rng.usize(40..1200)),
            _ => [b"a/../".repeat(g.rng.usize(20..60)), b"..".to_vec()].concat(),
        },
        78..=82 => g.pick(&[b"a\0b".as_slice(), b"\0", b"..\0", b"\xff", b"a\nb"]).to_vec(),
        _ => {
            let a = hostile_name(g, names);
            let b: Vec<u8> = g.pick(&["..", ".", "x", "../.."]).into();
            [a, b"/".to_vec(), b].concat()
        }
    }
}

/// A plain name from a few words, or an earlier entry's, or a path through one.
pub(super) fn tame_name(g: &mut G, names: &[Vec<u8>]) -> Vec<u8> {
    if names.is_empty() || g.chance(50) {
        let n = g.rng.usize(1..4);
        let parts: Vec<&str> = (0..n).map(|_| g.pick(WORDS)).collect();
        return parts.join("/").into_bytes();
    }
    let earlier = g.pick(names);
    if g.chance(20) {
        earlier
    } else {
        [earlier.as_slice(), b"/", g.pick(WORDS).as_bytes()].concat()
    }
}
