//! The names the export accepts: relative paths of plain components, single names, the
//! reserved names clients never see (hint files, the export id file), and the cookie a
//! name gets in a listing. Pure checks; `openat2` in `mod.rs` enforces confinement.

use super::{FIRST_ENTRY_COOKIE, hint, identity};
use crate::proto::Status;

/// Longest name accepted in one path component (Linux NAME_MAX).
const NAME_MAX: usize = 255;

/// `.NAME.gvhint` for NAME (too long a name has none).
pub(super) fn hint_of(name: &std::ffi::OsStr) -> Result<std::ffi::OsString, Status> {
    use std::os::unix::ffi::OsStringExt;
    Ok(std::ffi::OsString::from_vec(hint::hint_name(
        name.as_encoded_bytes(),
    )))
}

/// Cookie of a directory entry: a 62-bit hash of its name, above the reserved range.
/// Stateless and stable: the same name keeps its place however the directory changes.
pub fn name_cookie(name: &[u8]) -> u64 {
    let h = blake3::hash(name);
    let v = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
    (v >> 2) + FIRST_ENTRY_COOKIE
}

pub(super) trait FromBytesChecked {
    fn from_encoded_bytes_checked(b: &[u8]) -> Result<&std::ffi::OsStr, Status>;
}

impl FromBytesChecked for std::ffi::OsStr {
    fn from_encoded_bytes_checked(b: &[u8]) -> Result<&std::ffi::OsStr, Status> {
        use std::os::unix::ffi::OsStrExt;
        if b.contains(&0) {
            return Err(Status::Inval);
        }
        Ok(std::ffi::OsStr::from_bytes(b))
    }
}

/// A relative path of plain components; `.` (empty) for the root.
pub(super) fn check_path(path: &[u8]) -> Result<&std::ffi::OsStr, Status> {
    use std::os::unix::ffi::OsStrExt;
    if path.is_empty() {
        return Ok(std::ffi::OsStr::new("."));
    }
    if path.contains(&0) || path.starts_with(b"/") {
        return Err(Status::Escape);
    }
    for comp in path.split(|&b| b == b'/') {
        if comp.is_empty() || comp == b"." || comp == b".." {
            return Err(Status::Escape);
        }
        if comp.len() > NAME_MAX {
            return Err(Status::NameTooLong);
        }
        if is_reserved(comp) {
            return Err(Status::Access);
        }
    }
    Ok(std::ffi::OsStr::from_bytes(path))
}

/// One path component: not empty, `.`, `..`, and without `/` or NUL.
pub fn check_name(name: &[u8]) -> Result<&std::ffi::OsStr, Status> {
    use std::os::unix::ffi::OsStrExt;
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(if name.is_empty() {
            Status::Inval
        } else {
            Status::Escape
        });
    }
    if name.len() > NAME_MAX {
        return Err(Status::NameTooLong);
    }
    // Hint files and the export's id file belong to the store's administrator:
    // invisible and untouchable here.
    if is_reserved(name) {
        return Err(Status::Access);
    }
    Ok(std::ffi::OsStr::from_bytes(name))
}

/// Names clients never see or touch.
pub(super) fn is_reserved(name: &[u8]) -> bool {
    hint::is_hint_name(name) || identity::is_identity_name(name)
}

pub(super) fn split_parent(path: &[u8]) -> Result<(&[u8], &std::ffi::OsStr), Status> {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => Ok((&path[..i], check_name(&path[i + 1..])?)),
        None if path.is_empty() => Err(Status::Inval),
        None => Ok((&[], check_name(path)?)),
    }
}

/// `dir/name`, or `name` at the root.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    if !dir.is_empty() {
        p.extend_from_slice(dir);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}
