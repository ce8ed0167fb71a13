//! The tests' one raw tar writer: 512-byte headers written field by field, so that a test can build what no real
//! tar writes (names that escape, sizes that disagree with their data, odd numeric fields, broken checksums,
//! extension records anywhere). Benign releases are built with the `tar` crate instead (`harness::Release`).
//!
//! Two ways to write, on one [`Tar`]:
//! - the consuming builder, `Tar::new().dir("d/").file("d/x", b"x").end()`, for archives written by hand (the
//!   hostile corpus, the fidelity reproductions): ustar headers, and a field that does not fit its header is the
//!   test's mistake, so it panics;
//! - the `append*` methods, for generators (the fuzz test): any [`Format`], header blocks as they are given,
//!   fields cut to fit, and the offset of every header kept for mutations to aim at.
//!
//! The cargo-fuzz target (`fuzz/fuzz_targets/unpack.rs`) includes this file beside the fuzz module: it uses nothing
//! of the rest of the test crate.

#![allow(dead_code)]

/// The header layout: magic and version, and for ustar the name prefix; V7 has neither.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Ustar,
    Gnu,
    V7,
}

/// One 512-byte header, field by field. `size` is what the header claims, whatever data follows it.
#[derive(Clone, Copy)]
pub struct Hdr<'a> {
    pub kind: u8,
    pub name: &'a [u8],
    pub link: &'a [u8],
    pub prefix: &'a [u8],
    pub mode: u64,
    pub size: u64,
    pub format: Format,
}

/// A ustar header of type `kind` for `name`: mode 644, size 0, no link target or prefix.
pub fn hdr(kind: u8, name: &[u8]) -> Hdr<'_> {
    Hdr { kind, name, link: b"", prefix: b"", mode: 0o644, size: 0, format: Format::Ustar }
}

impl Hdr<'_> {
    /// The header as any reader takes it: uid and gid 0, owner `root`, a fixed mtime, the format's magic, and a
    /// correct checksum. Text fields that do not fit are cut; numbers that do not fit in octal are base-256.
    pub fn bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        put(&mut b[0..100], self.name);
        octal(&mut b[100..108], self.mode);
        octal(&mut b[108..116], 0); // uid
        octal(&mut b[116..124], 0); // gid
        octal(&mut b[124..136], self.size);
        octal(&mut b[136..148], 1_700_000_000); // mtime
        b[156] = self.kind;
        put(&mut b[157..257], self.link);
        self.put_magic(&mut b);
        if self.format != Format::V7 {
            put(&mut b[265..297], b"root");
            put(&mut b[297..329], b"root");
        }
        set_checksum(&mut b);
        b
    }

    /// Writes the format's magic and version (and for ustar the name prefix) into `b`; V7 has neither.
    pub fn put_magic(&self, b: &mut [u8; 512]) {
        match self.format {
            Format::Ustar => {
                b[257..263].copy_from_slice(b"ustar\0");
                b[263..265].copy_from_slice(b"00");
                put(&mut b[345..500], self.prefix);
            }
            Format::Gnu => b[257..265].copy_from_slice(b"ustar  \0"),
            Format::V7 => {}
        }
    }

    /// Panics unless every field fits its header as written: names, link and prefix whole, numbers in octal.
    #[track_caller]
    fn assert_fits(&self) {
        for (value, width) in [(self.name, 100), (self.link, 100), (self.prefix, 155)] {
            assert!(value.len() <= width, "{:?} does not fit in {width} bytes", String::from_utf8_lossy(value));
        }
        for (value, digits) in [(self.mode, 7), (self.size, 11)] {
            assert!(value < 1 << (3 * digits), "{value} does not fit in {digits} octal digits");
        }
    }
}

/// A tar stream being written, with the offset of each of its headers.
#[derive(Default)]
pub struct Tar {
    pub bytes: Vec<u8>,
    pub headers: Vec<usize>,
}

impl Tar {
    pub fn new() -> Tar {
        Tar::default()
    }

    // -- For generators: any format, blocks as given. ----------------------------------------------------------

    /// Appends a header block as it is (whatever its fields and checksum say), then `data` padded to a whole block.
    pub fn append(&mut self, header: [u8; 512], data: &[u8]) {
        self.headers.push(self.bytes.len());
        self.bytes.extend_from_slice(&header);
        self.bytes.extend_from_slice(data);
        self.bytes.resize(self.bytes.len().next_multiple_of(512), 0);
    }

    /// A sound extension record (PAX `x`/`g`, GNU `L`/`K`) named `name`, with `body` as its data.
    pub fn append_record(&mut self, kind: u8, name: &[u8], body: &[u8], format: Format) {
        self.append(Hdr { size: body.len() as u64, format, ..hdr(kind, name) }.bytes(), body);
    }

    /// A GNU long name (`L`) or long link (`K`) record for `value`, NUL-terminated as GNU tar writes it.
    pub fn append_gnu_long(&mut self, kind: u8, value: &[u8], format: Format) {
        self.append_record(kind, b"././@LongLink", &[value, b"\0"].concat(), format);
    }

    /// The two zero blocks that end an archive.
    pub fn append_end(&mut self) {
        self.bytes.extend_from_slice(&[0; 1024]);
    }

    // -- For archives written by hand: ustar, and every field must fit. ----------------------------------------

    /// Appends a header and `data`, padded to a whole block. The checksum ends with two spaces (`011574  `)
    /// where [`Hdr::bytes`] writes GNU tar's NUL and space: readers take either, and the hand-written archives have
    /// always been written so (their bytes stay what they were).
    #[track_caller]
    pub fn push(mut self, h: Hdr<'_>, data: &[u8]) -> Tar {
        h.assert_fits();
        let mut header = h.bytes();
        header[154] = b' ';
        self.append(header, data);
        self
    }

    /// Appends a header block as it is (a checksum of the test's own making), then `data` padded to a block.
    pub fn block(mut self, header: [u8; 512], data: &[u8]) -> Tar {
        self.append(header, data);
        self
    }

    #[track_caller]
    pub fn file(self, name: impl AsRef<[u8]>, data: &[u8]) -> Tar {
        self.file_mode(name, data, 0o644)
    }

    #[track_caller]
    pub fn file_mode(self, name: impl AsRef<[u8]>, data: &[u8], mode: u32) -> Tar {
        self.push(Hdr { mode: mode.into(), size: data.len() as u64, ..hdr(b'0', name.as_ref()) }, data)
    }

    #[track_caller]
    pub fn dir(self, name: impl AsRef<[u8]>) -> Tar {
        self.dir_mode(name, 0o755)
    }

    #[track_caller]
    pub fn dir_mode(self, name: impl AsRef<[u8]>, mode: u32) -> Tar {
        self.push(Hdr { mode: mode.into(), ..hdr(b'5', name.as_ref()) }, b"")
    }

    #[track_caller]
    pub fn symlink(self, name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Tar {
        self.push(Hdr { mode: 0o777, link: target.as_ref(), ..hdr(b'2', name.as_ref()) }, b"")
    }

    #[track_caller]
    pub fn hardlink(self, name: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Tar {
        self.push(Hdr { link: target.as_ref(), ..hdr(b'1', name.as_ref()) }, b"")
    }

    /// A data-less entry of any type byte (devices, fifos, unknown types).
    #[track_caller]
    pub fn special(self, kind: u8, name: impl AsRef<[u8]>) -> Tar {
        self.push(hdr(kind, name.as_ref()), b"")
    }

    /// A PAX extended header: `b'x'` for the next entry, `b'g'` global.
    #[track_caller]
    pub fn pax(self, kind: u8, records: &[(&str, &[u8])]) -> Tar {
        let data = pax_records(records);
        self.push(Hdr { size: data.len() as u64, ..hdr(kind, b"PaxHeaders/entry") }, &data)
    }

    /// A GNU long name (`b'L'`) or long link (`b'K'`) record; the value is stored NUL-terminated, as GNU tar does.
    #[track_caller]
    pub fn gnu_long(self, kind: u8, value: impl AsRef<[u8]>) -> Tar {
        let data = [value.as_ref(), b"\0"].concat();
        self.push(Hdr { size: data.len() as u64, ..hdr(kind, b"././@LongLink") }, &data)
    }

    /// The stream with its two end-of-archive zero blocks.
    pub fn end(mut self) -> Vec<u8> {
        self.append_end();
        self.bytes
    }

    /// The stream as written so far, without end-of-archive blocks.
    pub fn unterminated(self) -> Vec<u8> {
        self.bytes
    }

    /// `end()`, compressed with zstd (level 3, as `harness::zst`).
    pub fn zst(self) -> Vec<u8> {
        zstd::encode_all(&self.end()[..], 3).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Fields
// ---------------------------------------------------------------------------------------------------------------

/// Copies `value` into the start of `field`, cut to fit.
pub fn put(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Computes the checksum with its own field full of spaces, then writes it as six digits, NUL, space.
pub fn set_checksum(h: &mut [u8]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// A numeric field the way tar writes it: zero-padded octal and a NUL, or base-256 when that does not fit.
pub fn octal(field: &mut [u8], v: u64) {
    let text = format!("{v:0width$o}", width = field.len() - 1);
    if text.len() < field.len() {
        field[..text.len()].copy_from_slice(text.as_bytes());
        field[text.len()..].fill(0);
    } else {
        base256(field, v);
    }
}

/// A numeric field in GNU's base-256: the high bit of the first byte set, then the value big-endian.
pub fn base256(field: &mut [u8], v: u64) {
    field.fill(0);
    field[0] = 0x80;
    let be = v.to_be_bytes();
    let n = be.len().min(field.len() - 1);
    let len = field.len();
    field[len - n..].copy_from_slice(&be[be.len() - n..]);
}

/// Reads a numeric field as tar does (octal between spaces and NULs, or base-256); garbage reads as 0.
pub fn parse_num(field: &[u8]) -> u64 {
    if field[0] & 0x80 != 0 {
        return field[1..].iter().fold(0u64, |a, b| a.saturating_mul(256).saturating_add(u64::from(*b)));
    }
    let s: Vec<u8> =
        field.iter().copied().skip_while(|b| *b == b' ' || *b == 0).take_while(|b| *b != b' ' && *b != 0).collect();
    std::str::from_utf8(&s).ok().and_then(|s| u64::from_str_radix(s, 8).ok()).unwrap_or(0)
}

/// Repairs the checksum of every header, walking the stream by the headers' size fields as a reader would. Used
/// after mutations (and by the cargo-fuzz target) so that changes reach the parser instead of its checksum test.
pub fn fix_checksums(tar: &mut [u8]) {
    let mut at = 0usize;
    while at + 512 <= tar.len() {
        let block = &mut tar[at..at + 512];
        if block.iter().all(|b| *b == 0) {
            at += 512;
            continue;
        }
        set_checksum(block);
        let size = parse_num(&block[124..136]);
        let skip = size.div_ceil(512).saturating_mul(512);
        match usize::try_from(skip).ok().and_then(|s| s.checked_add(512)).and_then(|s| at.checked_add(s)) {
            Some(next) => at = next,
            None => return,
        }
    }
}

/// One PAX record `LEN key=value\n`, where LEN counts the whole record including its own digits.
pub fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = base + 1;
    while len != base + len.to_string().len() {
        len = base + len.to_string().len();
    }
    let mut out = format!("{len} ").into_bytes();
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// PAX records for each `(key, value)`, in order.
pub fn pax_records(records: &[(&str, &[u8])]) -> Vec<u8> {
    records.iter().flat_map(|(key, value)| pax_record(key.as_bytes(), value)).collect()
}

/// Splits a path for the ustar prefix field: prefix up to 155 bytes, name up to 100, at a `/`.
pub fn ustar_split(path: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    (0..path.len()).rev().filter(|i| path[*i] == b'/').find_map(|i| {
        let (p, n) = (&path[..i], &path[i + 1..]);
        (p.len() <= 155 && n.len() <= 100 && !n.is_empty() && !p.is_empty()).then(|| (p.to_vec(), n.to_vec()))
    })
}
