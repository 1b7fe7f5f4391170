//! Who may use the NFS port, and what each caller may do: knfsd's export options.
//!
//! The store side runs as one ordinary user, so it cannot tell callers apart; the NFS
//! front must. This module is the whole policy, pure (no I/O): the gate asks it, for each
//! connection, whether the peer may connect at all ([`AccessPolicy::client`]); for each
//! call, who the caller is after squashing ([`AccessPolicy::caller`]); and, from the
//! object's attributes, whether that caller may do what the call does ([`permits`],
//! [`access_bits`]).
//!
//! Defaults are knfsd's: `secure` (privileged source ports only), AUTH_SYS required,
//! `root_squash` (uid/gid 0 act as the anonymous ids), loopback clients only. Modes are
//! checked like the kernel's `generic_permission`, with knfsd's owner override for READ,
//! WRITE and COMMIT (a file's owner may write a file it made read-only through an open it
//! already had: NFS has no open state, `cp` of a 0444 file depends on it). ACCESS answers
//! strictly by mode (no override), so the kernel enforces modes at open(2).

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use nfs3_server::nfs3_types::rpc::{auth_flavor, auth_stat, auth_unix, opaque_auth};
use nfs3_server::nfs3_types::xdr_codec::Unpack;

use crate::proto::{Attr, FileKind, SetAttr, SetTime};

/// knfsd's default anonymous uid/gid (`nobody`/`nogroup` on Debian).
pub const NOBODY: u32 = 65534;
/// Source ports below this are privileged (only root can bind them).
const PRIVILEGED_PORT_END: u16 = 1024;
/// AUTH_SYS allows at most 16 supplementary groups (RFC 5531, appendix A).
const MAX_AUTH_SYS_GIDS: usize = 16;

/// Which callers' ids are replaced by the anonymous ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Squash {
    /// uid 0 and gid 0 become the anonymous ids (knfsd's default `root_squash`).
    Root,
    /// Every caller becomes the anonymous ids (`all_squash`).
    All,
    /// Ids are taken as sent (`no_root_squash`).
    None,
}

/// One `--allow-clients` rule: a network and whether it may change anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRule {
    pub net: IpNet,
    pub read_only: bool,
}

impl ClientRule {
    /// `CIDR`, `ADDR`, optionally followed by `(ro)` or `(rw)` as in /etc/exports
    /// (default `ro`, as knfsd's).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, read_only) = match s.split_once('(') {
            Some((a, opt)) => match opt.strip_suffix(')') {
                Some("ro") => (a, true),
                Some("rw") => (a, false),
                _ => {
                    return Err(format!(
                        "`{s}`: the option in parentheses must be (ro) or (rw)"
                    ));
                }
            },
            None => (s, true),
        };
        let net = match addr.parse::<IpNet>() {
            Ok(n) => n.trunc(),
            Err(_) => match addr.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    return Err(format!(
                        "`{addr}` is not an address or network (e.g. 10.0.0.0/24, 192.0.2.7, fd00::/64)"
                    ));
                }
            },
        };
        Ok(Self { net, read_only })
    }
}

/// The NFS port's policy, fixed at start.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    /// `--insecure`: no check at all (any port, any credential, no modes). Loud.
    pub insecure: bool,
    /// knfsd's `secure`: calls must come from a privileged source port.
    pub require_privileged_port: bool,
    pub squash: Squash,
    pub anon_uid: u32,
    pub anon_gid: u32,
    /// `--allow-uid`: if set, only these uids (as sent, before squashing) get in.
    pub allowed_uids: Option<Vec<u32>>,
    /// Who may connect. Empty: loopback only, read-write.
    pub clients: Vec<ClientRule>,
}

impl Default for AccessPolicy {
    fn default() -> Self {
        Self {
            insecure: false,
            require_privileged_port: true,
            squash: Squash::Root,
            anon_uid: NOBODY,
            anon_gid: NOBODY,
            allowed_uids: None,
            clients: Vec::new(),
        }
    }
}

/// Why a call is refused before it is looked at: an RPC authentication error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// AUTH_TOOWEAK: unprivileged source port, AUTH_NULL, a uid not allowed.
    TooWeak,
    /// AUTH_BADCRED: a credential that does not decode.
    BadCred,
}

impl Refusal {
    pub fn auth_stat(self) -> auth_stat {
        match self {
            Refusal::TooWeak => auth_stat::AUTH_TOOWEAK,
            Refusal::BadCred => auth_stat::AUTH_BADCRED,
        }
    }
}

/// A caller as the permission checks see it: ids after squashing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub gids: Vec<u32>,
    /// The client's rule, or the export, allows no changes.
    pub read_only: bool,
    /// `--insecure`: every check passes.
    pub unchecked: bool,
    /// The client retries a call answered NFS3ERR_JUKEBOX by itself (every kernel
    /// client does). libnfs does not: it hands EAGAIN to its caller, and qemu's `nfs://`
    /// driver turns that into an I/O error on the VM's disk. Such a caller's call is
    /// retried by the gate instead, so it waits, as on a hard mount.
    pub retries_jukebox: bool,
}

impl Caller {
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.gids.contains(&gid)
    }

    /// For calls that carry no credential worth checking (the portmapper's).
    pub fn anonymous() -> Self {
        Caller {
            uid: NOBODY,
            gid: NOBODY,
            gids: Vec::new(),
            read_only: true,
            unchecked: false,
            retries_jukebox: true,
        }
    }
}

impl AccessPolicy {
    /// Whether `peer` may connect at all; `Some(read_only)` if it may.
    pub fn client(&self, peer: IpAddr) -> Option<bool> {
        let peer = canonical(peer);
        if self.clients.is_empty() {
            return peer.is_loopback().then_some(false);
        }
        // The most specific matching rule decides, as exportfs does.
        self.clients
            .iter()
            .filter(|r| r.net.contains(&peer))
            .max_by_key(|r| r.net.prefix_len())
            .map(|r| r.read_only)
    }

    /// Whether a socket bound at `listen` could be reached by anyone not named by a rule.
    /// `Err` says what to do.
    pub fn check_listen(&self, listen: SocketAddr) -> Result<(), String> {
        if listen.ip().is_loopback() || !self.clients.is_empty() {
            return Ok(());
        }
        Err(format!(
            "refusing to listen on {listen}: it is not a loopback address, so other hosts could \
             reach every image. Name the hosts allowed with --allow-clients (e.g. \
             --allow-clients '10.1.2.0/24(rw)'), or listen on 127.0.0.1"
        ))
    }

    /// Who is calling: `peer` (its source port), `cred` (the call's credential), and the
    /// connection's `read_only` from [`Self::client`].
    pub fn caller(
        &self,
        peer: SocketAddr,
        cred: &opaque_auth<'_>,
        read_only: bool,
    ) -> Result<Caller, Refusal> {
        if self.insecure {
            return Ok(Caller {
                uid: 0,
                gid: 0,
                gids: Vec::new(),
                read_only,
                unchecked: true,
                retries_jukebox: retries_jukebox(cred),
            });
        }
        if self.require_privileged_port && peer.port() >= PRIVILEGED_PORT_END {
            return Err(Refusal::TooWeak);
        }
        if cred.flavor != auth_flavor::AUTH_UNIX {
            return Err(Refusal::TooWeak);
        }
        let mut body = std::io::Cursor::new(&cred.body[..]);
        let (sys, _) = auth_unix::unpack(&mut body).map_err(|_| Refusal::BadCred)?;
        if sys.gids.len() > MAX_AUTH_SYS_GIDS {
            return Err(Refusal::BadCred);
        }
        if let Some(allowed) = &self.allowed_uids
            && !allowed.contains(&sys.uid)
        {
            return Err(Refusal::TooWeak);
        }
        let retries_jukebox = &*sys.machinename != LIBNFS_MACHINE_NAME;
        let (uid, gid, gids) = match self.squash {
            Squash::All => (self.anon_uid, self.anon_gid, Vec::new()),
            Squash::Root => {
                let map = |id: u32, anon: u32| if id == 0 { anon } else { id };
                (
                    map(sys.uid, self.anon_uid),
                    map(sys.gid, self.anon_gid),
                    sys.gids.iter().map(|&g| map(g, self.anon_gid)).collect(),
                )
            }
            Squash::None => (sys.uid, sys.gid, sys.gids),
        };
        Ok(Caller {
            uid,
            gid,
            gids,
            read_only,
            unchecked: false,
            retries_jukebox,
        })
    }
}

/// The AUTH_SYS machine name every libnfs client sends (libnfs's `libnfs_authunix_create`),
/// whatever host it runs on: how the gate knows a caller that does not retry JUKEBOX.
const LIBNFS_MACHINE_NAME: &[u8] = b"libnfs";

/// Whether the client behind `cred` retries JUKEBOX itself (see [`Caller::retries_jukebox`]);
/// a credential that does not decode is taken to be a kernel's.
fn retries_jukebox(cred: &opaque_auth<'_>) -> bool {
    if cred.flavor != auth_flavor::AUTH_UNIX {
        return true;
    }
    let mut body = std::io::Cursor::new(&cred.body[..]);
    auth_unix::unpack(&mut body).map_or(true, |(sys, _)| &*sys.machinename != LIBNFS_MACHINE_NAME)
}

/// An IPv4 peer reached through an IPv6 socket (`::ffff:a.b.c.d`) is that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What a call needs of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// knfsd's NFSD_MAY_OWNER_OVERRIDE: the owner passes whatever the mode says.
    pub owner_override: bool,
    /// knfsd's NFSD_MAY_READ_IF_EXEC: execute permission also allows reading (a client
    /// must read a binary to run it).
    pub read_if_exec: bool,
    /// Asked of a directory only: of anything else the call itself fails (NOTDIR), so
    /// the check passes and leaves the answer to it.
    pub dir_only: bool,
}

impl Want {
    pub const NOTHING: Want = Want {
        read: false,
        write: false,
        exec: false,
        owner_override: false,
        read_if_exec: false,
        dir_only: false,
    };
    /// Look a name up in a directory.
    pub const SEARCH: Want = Want {
        exec: true,
        dir_only: true,
        ..Want::NOTHING
    };
    /// List a directory.
    pub const LIST: Want = Want {
        read: true,
        dir_only: true,
        ..Want::NOTHING
    };
    /// Add or remove names in a directory.
    pub const CHANGE_DIR: Want = Want {
        write: true,
        exec: true,
        dir_only: true,
        ..Want::NOTHING
    };
    /// READ of a file.
    pub const READ_DATA: Want = Want {
        read: true,
        owner_override: true,
        read_if_exec: true,
        ..Want::NOTHING
    };
    /// WRITE, COMMIT, a size change.
    pub const WRITE_DATA: Want = Want {
        write: true,
        owner_override: true,
        ..Want::NOTHING
    };
}

/// The rwx bits of `a`'s mode that apply to `c` (owner, group or other class).
fn class_bits(c: &Caller, a: &Attr) -> u32 {
    let mode = a.mode & 0o777;
    if c.uid == a.uid {
        (mode >> 6) & 7
    } else if c.in_group(a.gid) {
        (mode >> 3) & 7
    } else {
        mode & 7
    }
}

/// Whether `c` may do `want` to the object whose attributes are `a` (modes only; a
/// read-only client is refused changes before this is asked).
pub fn permits(c: &Caller, a: &Attr, want: Want) -> bool {
    if c.unchecked || (want.dir_only && a.kind != FileKind::Directory) {
        return true;
    }
    if want.owner_override && c.uid == a.uid {
        return true;
    }
    if c.uid == 0 {
        // Root may do anything but execute a file nobody may execute.
        let any_x = a.mode & 0o111 != 0 || a.kind == FileKind::Directory;
        return !want.exec || any_x;
    }
    let bits = class_bits(c, a);
    let r = bits & 4 != 0 || (want.read_if_exec && bits & 1 != 0);
    let w = bits & 2 != 0;
    let x = bits & 1 != 0;
    (!want.read || r) && (!want.write || w) && (!want.exec || x)
}

/// ACCESS3 bits (RFC 1813 §3.3.4).
pub mod bits {
    pub const READ: u32 = 0x01;
    pub const LOOKUP: u32 = 0x02;
    pub const MODIFY: u32 = 0x04;
    pub const EXTEND: u32 = 0x08;
    pub const DELETE: u32 = 0x10;
    pub const EXECUTE: u32 = 0x20;
}

/// The ACCESS3 answer: of the bits `asked`, those `c` holds on `a`, by mode alone (no
/// owner override, as knfsd's `nfsd_access`), none of the changing ones when read-only.
pub fn access_bits(c: &Caller, a: &Attr, asked: u32, read_only: bool) -> u32 {
    let may = |w: Want| permits(c, a, w);
    let read = Want {
        read: true,
        ..Want::NOTHING
    };
    let write = Want {
        write: true,
        ..Want::NOTHING
    };
    let mut out = 0;
    let dir = a.kind == FileKind::Directory;
    if may(read) {
        out |= bits::READ;
    }
    if dir {
        if may(Want::SEARCH) {
            out |= bits::LOOKUP;
        }
        if !read_only && may(Want::CHANGE_DIR) {
            out |= bits::MODIFY | bits::EXTEND | bits::DELETE;
        }
    } else {
        if !read_only && may(write) {
            out |= bits::MODIFY | bits::EXTEND;
        }
        if may(Want {
            exec: true,
            ..Want::NOTHING
        }) {
            out |= bits::EXECUTE;
        }
    }
    out & asked
}

/// The caller may change `a`'s mode or times to explicit values: its owner, or root.
pub fn is_owner(c: &Caller, a: &Attr) -> bool {
    c.unchecked || c.uid == 0 || c.uid == a.uid
}

/// Why a SETATTR is refused: NFS3ERR_PERM (not the owner) or NFS3ERR_ACCES (no write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Perm,
    Access,
}

/// SETATTR's rules, as chown(2)/chmod(2)/utimensat(2)/truncate(2) have them: only root
/// gives a file away; the owner may change its group to one of its own groups, its mode
/// and its times; setting the times to "now" or the size needs write permission (with
/// knfsd's owner override for the size).
pub fn setattr_allowed(c: &Caller, a: &Attr, set: &SetAttr) -> Result<(), Denied> {
    if c.unchecked || c.uid == 0 {
        return Ok(());
    }
    if set.uid.is_some_and(|u| u != a.uid) {
        return Err(Denied::Perm);
    }
    if set
        .gid
        .is_some_and(|g| g != a.gid && !(c.uid == a.uid && c.in_group(g)))
    {
        return Err(Denied::Perm);
    }
    let explicit_time =
        matches!(set.atime, Some(SetTime::To(_))) || matches!(set.mtime, Some(SetTime::To(_)));
    if (set.mode.is_some() || explicit_time) && c.uid != a.uid {
        return Err(Denied::Perm);
    }
    let now = set.atime == Some(SetTime::ServerNow) || set.mtime == Some(SetTime::ServerNow);
    let write = Want {
        write: true,
        ..Want::NOTHING
    };
    if now && c.uid != a.uid && !permits(c, a, write) {
        return Err(Denied::Access);
    }
    if set.size.is_some() && !permits(c, a, Want::WRITE_DATA) {
        return Err(Denied::Access);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Time;
    use nfs3_server::nfs3_types::xdr_codec::{Opaque, Pack};

    fn attr(kind: FileKind, mode: u32, uid: u32, gid: u32) -> Attr {
        Attr {
            kind,
            mode,
            nlink: 1,
            uid,
            gid,
            size: 0,
            used: 0,
            rdev: (0, 0),
            dev: 0,
            ino: 1,
            ident: 1,
            atime: Time::default(),
            mtime: Time::default(),
            ctime: Time::default(),
        }
    }

    fn sys(uid: u32, gid: u32, gids: Vec<u32>) -> opaque_auth<'static> {
        let a = auth_unix {
            stamp: 1,
            machinename: Opaque::owned(b"host".to_vec()),
            uid,
            gid,
            gids,
        };
        let mut body = Vec::new();
        a.pack(&mut body).expect("pack");
        opaque_auth {
            flavor: auth_flavor::AUTH_UNIX,
            body: Opaque::owned(body),
        }
    }

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn defaults_are_secure_root_squash_auth_sys() {
        let p = AccessPolicy::default();
        assert_eq!(
            p.caller(peer(40000), &sys(1000, 1000, vec![]), false),
            Err(Refusal::TooWeak),
            "unprivileged source port"
        );
        assert_eq!(
            p.caller(peer(700), &opaque_auth::default(), false),
            Err(Refusal::TooWeak),
            "AUTH_NULL"
        );
        let bad = opaque_auth {
            flavor: auth_flavor::AUTH_UNIX,
            body: Opaque::owned(vec![1, 2, 3]),
        };
        assert_eq!(p.caller(peer(700), &bad, false), Err(Refusal::BadCred));
        let root = p
            .caller(peer(700), &sys(0, 0, vec![0, 5]), false)
            .expect("root");
        assert_eq!(
            (root.uid, root.gid, root.gids),
            (NOBODY, NOBODY, vec![NOBODY, 5])
        );
        let user = p
            .caller(peer(700), &sys(1000, 100, vec![27]), false)
            .unwrap();
        assert_eq!((user.uid, user.gid), (1000, 100));
    }

    #[test]
    fn squash_options_and_allow_list() {
        let mut p = AccessPolicy {
            squash: Squash::All,
            anon_uid: 1001,
            anon_gid: 1002,
            allowed_uids: Some(vec![0, 64055]),
            ..AccessPolicy::default()
        };
        assert_eq!(
            p.caller(peer(700), &sys(1000, 1000, vec![]), false),
            Err(Refusal::TooWeak),
            "uid not on the allow-list"
        );
        let qemu = p
            .caller(peer(700), &sys(64055, 64055, vec![1]), true)
            .unwrap();
        assert_eq!(
            (qemu.uid, qemu.gid, qemu.gids.len(), qemu.read_only),
            (1001, 1002, 0, true)
        );
        p.squash = Squash::None;
        let root = p.caller(peer(700), &sys(0, 0, vec![]), false).unwrap();
        assert_eq!(root.uid, 0);
        p.insecure = true;
        assert!(
            p.caller(peer(50000), &opaque_auth::default(), false)
                .unwrap()
                .unchecked
        );
    }

    #[test]
    fn modes_owner_group_other_and_overrides() {
        let p = AccessPolicy::default();
        let owner = p.caller(peer(700), &sys(1000, 100, vec![]), false).unwrap();
        let member = p
            .caller(peer(700), &sys(2000, 7, vec![100]), false)
            .unwrap();
        let other = p.caller(peer(700), &sys(3000, 300, vec![]), false).unwrap();
        let squashed_root = p.caller(peer(700), &sys(0, 0, vec![]), false).unwrap();
        let private = attr(FileKind::Regular, 0o600, 1000, 100);
        assert!(permits(&owner, &private, Want::READ_DATA));
        assert!(!permits(&member, &private, Want::READ_DATA));
        assert!(!permits(&other, &private, Want::READ_DATA));
        assert!(
            !permits(&squashed_root, &private, Want::READ_DATA),
            "root_squash"
        );
        let group = attr(FileKind::Regular, 0o640, 1000, 100);
        assert!(permits(&member, &group, Want::READ_DATA));
        assert!(!permits(&member, &group, Want::WRITE_DATA));
        // Owner override: the owner writes its own 0444 file; others do not.
        let ro = attr(FileKind::Regular, 0o444, 1000, 100);
        assert!(permits(&owner, &ro, Want::WRITE_DATA));
        assert!(!permits(&member, &ro, Want::WRITE_DATA));
        // ACCESS has no override: the kernel refuses open(O_WRONLY) of the 0444 file.
        assert_eq!(
            access_bits(&owner, &ro, 0x3f, false),
            bits::READ,
            "only READ of 0444 by its owner"
        );
        // Read-if-exec: an --x file may be read by those who may run it.
        let xonly = attr(FileKind::Regular, 0o711, 1000, 100);
        assert!(permits(&other, &xonly, Want::READ_DATA));
        assert_eq!(access_bits(&other, &xonly, 0x3f, false), bits::EXECUTE);
        // Directories.
        let dir = attr(FileKind::Directory, 0o755, 1000, 100);
        assert!(permits(&other, &dir, Want::SEARCH));
        assert!(!permits(&other, &dir, Want::CHANGE_DIR));
        assert!(
            permits(&other, &private, Want::SEARCH),
            "LOOKUP in a file: NOTDIR, not ACCES"
        );
        assert_eq!(
            access_bits(&owner, &dir, 0x3f, false),
            bits::READ | bits::LOOKUP | bits::MODIFY | bits::EXTEND | bits::DELETE
        );
        assert_eq!(
            access_bits(&owner, &dir, 0x3f, true),
            bits::READ | bits::LOOKUP
        );
        assert_eq!(access_bits(&other, &dir, bits::READ, false), bits::READ);
        // Unsquashed root: everything but running a file nobody may run.
        let root = AccessPolicy {
            squash: Squash::None,
            ..AccessPolicy::default()
        }
        .caller(peer(700), &sys(0, 0, vec![]), false)
        .unwrap();
        assert!(permits(&root, &private, Want::WRITE_DATA));
        assert_eq!(
            access_bits(&root, &private, 0x3f, false),
            bits::READ | bits::MODIFY | bits::EXTEND
        );
        assert!(is_owner(&owner, &private) && !is_owner(&other, &private));
    }

    #[test]
    fn setattr_rules() {
        let p = AccessPolicy::default();
        let owner = p
            .caller(peer(700), &sys(1000, 100, vec![200]), false)
            .unwrap();
        let other = p.caller(peer(700), &sys(3000, 300, vec![]), false).unwrap();
        let f = attr(FileKind::Regular, 0o666, 1000, 100);
        let set = |f: fn(&mut SetAttr)| {
            let mut s = SetAttr::default();
            f(&mut s);
            s
        };
        let chmod = set(|s| s.mode = Some(0o600));
        assert_eq!(setattr_allowed(&owner, &f, &chmod), Ok(()));
        assert_eq!(setattr_allowed(&other, &f, &chmod), Err(Denied::Perm));
        let give = set(|s| s.uid = Some(3000));
        assert_eq!(setattr_allowed(&owner, &f, &give), Err(Denied::Perm));
        let same = set(|s| s.uid = Some(1000));
        assert_eq!(setattr_allowed(&owner, &f, &same), Ok(()));
        let chgrp = set(|s| s.gid = Some(200));
        assert_eq!(setattr_allowed(&owner, &f, &chgrp), Ok(()));
        let chgrp_foreign = set(|s| s.gid = Some(999));
        assert_eq!(
            setattr_allowed(&owner, &f, &chgrp_foreign),
            Err(Denied::Perm)
        );
        let touch = set(|s| s.mtime = Some(SetTime::ServerNow));
        assert_eq!(
            setattr_allowed(&other, &f, &touch),
            Ok(()),
            "0666: others may write"
        );
        let private = attr(FileKind::Regular, 0o644, 1000, 100);
        assert_eq!(
            setattr_allowed(&other, &private, &touch),
            Err(Denied::Access)
        );
        let truncate = set(|s| s.size = Some(0));
        assert_eq!(
            setattr_allowed(&other, &private, &truncate),
            Err(Denied::Access)
        );
        let ro = attr(FileKind::Regular, 0o444, 1000, 100);
        assert_eq!(
            setattr_allowed(&owner, &ro, &truncate),
            Ok(()),
            "owner override"
        );
    }

    #[test]
    fn client_rules_and_listen() {
        let p = AccessPolicy::default();
        assert_eq!(p.client("127.0.0.1".parse().unwrap()), Some(false));
        assert_eq!(p.client("::1".parse().unwrap()), Some(false));
        assert_eq!(p.client("10.0.0.1".parse().unwrap()), None);
        assert!(p.check_listen("127.0.0.1:2049".parse().unwrap()).is_ok());
        let e = p.check_listen("0.0.0.0:2049".parse().unwrap()).unwrap_err();
        assert!(e.contains("--allow-clients"), "{e}");
        let p = AccessPolicy {
            clients: vec![
                ClientRule::parse("10.0.0.0/8").unwrap(),
                ClientRule::parse("10.1.2.0/24(rw)").unwrap(),
            ],
            ..AccessPolicy::default()
        };
        assert!(p.check_listen("0.0.0.0:2049".parse().unwrap()).is_ok());
        assert_eq!(
            p.client("10.9.9.9".parse().unwrap()),
            Some(true),
            "ro by default"
        );
        assert_eq!(
            p.client("10.1.2.3".parse().unwrap()),
            Some(false),
            "most specific wins"
        );
        assert_eq!(
            p.client("::ffff:10.1.2.3".parse().unwrap()),
            Some(false),
            "v4-mapped"
        );
        assert_eq!(
            p.client("127.0.0.1".parse().unwrap()),
            None,
            "only the rules"
        );
        assert_eq!(
            ClientRule::parse("192.0.2.7(rw)").unwrap().net,
            "192.0.2.7/32".parse::<IpNet>().unwrap()
        );
        assert!(ClientRule::parse("10.0.0.0/8(rx)").is_err());
        assert!(ClientRule::parse("host.example").is_err());
    }
}
