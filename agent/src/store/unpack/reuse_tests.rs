//! Unpacking with donors: files shared with releases on disk, and deltas that name files of their base
//! (`store::reuse`), tested through the unpacker.

use std::os::fd::AsFd;
use std::path::Path;

use sha2::Digest;

use crate::store::index;
use crate::store::reuse::{Donors, ReuseMode};
use crate::store::unpack::{self, Limits, Refusal, SHARED_KEY};

/// A tar (uncompressed) of `(path, data, pax)` files.
fn tar(files: &[(&str, &[u8], Option<String>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data, pax) in files {
        if let Some(v) = pax {
            let rec = pax_record(SHARED_KEY, v);
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_size(rec.len() as u64);
            h.set_mode(0o644);
            h.set_path("PaxHeader").unwrap();
            h.set_cksum();
            b.append(&h, rec.as_slice()).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

fn unpack_into(dir: &Path, archive: &[u8], donors: &mut Donors) -> Result<unpack::Report, unpack::UnpackError> {
    std::fs::create_dir_all(dir).unwrap();
    let fd = std::fs::File::open(dir).unwrap();
    // The tests reach the tar layer through a zstd frame, as a release arrives.
    let zst = zstd::encode_all(archive, 1).unwrap();
    unpack::unpack_tar_zst_reusing(
        zst.as_slice(),
        fd.as_fd(),
        &Limits::default(),
        None,
        &unpack::LinkPolicy::default(),
        donors,
    )
}

fn base(tmp: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = tmp.join("base");
    let report =
        unpack_into(&dir, &tar(&[("a/kept", b"same content", None), ("b", b"old", None)]), &mut Donors::none())
            .unwrap();
    let idx = tmp.join("base.jsonl");
    let fd = std::fs::File::open(&dir).unwrap();
    index::write(fd.as_fd(), &dir, "1", &report.hashes, &idx, None).unwrap();
    (dir, idx)
}

fn reference(data: &[u8]) -> String {
    format!("{}:{}", data.len(), hex::encode(sha2::Sha256::digest(data)))
}

#[test]
fn a_delta_takes_the_files_it_names_from_its_base() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, idx) = base(tmp.path());
    let delta = tar(&[("moved/kept", b"", Some(reference(b"same content"))), ("b", b"new", None)]);
    let mut donors = Donors::for_delta(ReuseMode::Hardlink, &[(dir.as_path(), idx.as_path())], None);
    let out = tmp.path().join("new");
    let r = unpack_into(&out, &delta, &mut donors).unwrap();
    assert_eq!((r.reused, r.reused_bytes, r.bytes), (1, 12, 15));
    assert_eq!(std::fs::read(out.join("moved/kept")).unwrap(), b"same content");
    assert_eq!(std::fs::read(out.join("b")).unwrap(), b"new");
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&out.join("moved/kept")), ino(&dir.join("a/kept")));
}

#[test]
fn a_delta_whose_base_lacks_a_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, idx) = base(tmp.path());
    let mut donors = Donors::for_delta(ReuseMode::Auto, &[(dir.as_path(), idx.as_path())], None);
    let delta = tar(&[("x", b"", Some(reference(b"never in the base")))]);
    let e = unpack_into(&tmp.path().join("n1"), &delta, &mut donors).unwrap_err();
    assert!(matches!(e.reason, Refusal::DeltaBaseMissing { size: 17, .. }), "{e}");
    assert_eq!(e.entry.as_deref(), Some("x"));
    // A reference with data of its own, or one that does not parse, is refused too.
    let with_data = tar(&[("x", b"data", Some(reference(b"same content")))]);
    let e = unpack_into(&tmp.path().join("n2"), &with_data, &mut donors).unwrap_err();
    assert!(matches!(e.reason, Refusal::DeltaRefWithData), "{e}");
    let bad = tar(&[("x", b"", Some("12:nothex".to_owned()))]);
    let e = unpack_into(&tmp.path().join("n3"), &bad, &mut donors).unwrap_err();
    assert!(matches!(e.reason, Refusal::DeltaRefMalformed { .. }), "{e}");
}

#[test]
fn outside_a_delta_the_reference_means_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, idx) = base(tmp.path());
    // As GNU tar reads it: an entry with its own (here empty) data; nothing is taken from a release on disk.
    let archive = tar(&[("x", b"", Some(reference(b"same content")))]);
    let mut donors = Donors::load(ReuseMode::Hardlink, &[(dir.as_path(), idx.as_path())], None);
    let out = tmp.path().join("full");
    unpack_into(&out, &archive, &mut donors).unwrap();
    assert_eq!(std::fs::read(out.join("x")).unwrap(), b"");
}

#[test]
fn a_changed_mode_or_a_changed_donor_is_never_shared() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, idx) = base(tmp.path());
    let mut donors = Donors::load(ReuseMode::Hardlink, &[(dir.as_path(), idx.as_path())], None);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(12);
    b.append_data(&mut h, "exec", b"same content".as_slice()).unwrap();
    let r = unpack_into(&tmp.path().join("m"), &b.into_inner().unwrap(), &mut donors).unwrap();
    assert_eq!(r.reused, 0);
    // The donor's file changed on disk since its index was written (another size): written, not shared.
    let kept = dir.join("a/kept");
    let mut perm = std::fs::metadata(&kept).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    std::fs::set_permissions(&kept, perm).unwrap();
    std::fs::write(&kept, b"same content, longer").unwrap();
    let mut donors = Donors::load(ReuseMode::Hardlink, &[(dir.as_path(), idx.as_path())], None);
    let r = unpack_into(&tmp.path().join("c"), &tar(&[("k", b"same content", None)]), &mut donors).unwrap();
    assert_eq!(r.reused, 0);
    assert_eq!(std::fs::read(tmp.path().join("c/k")).unwrap(), b"same content");
}
