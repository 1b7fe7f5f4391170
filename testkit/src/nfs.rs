//! What an NFS client puts on the wire to say who it is.

use nfs3_client::nfs3_types::rpc::{auth_flavor, auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::{Opaque, Pack};

/// An AUTH_SYS credential as a kernel client sends it, from host `machine`.
pub fn auth_sys(machine: &str, uid: u32, gid: u32, gids: &[u32]) -> opaque_auth<'static> {
    let cred = auth_unix {
        stamp: 1,
        machinename: Opaque::owned(machine.as_bytes().to_vec()),
        uid,
        gid,
        gids: gids.to_vec(),
    };
    let mut body = Vec::new();
    cred.pack(&mut body)
        .expect("packing into a Vec cannot fail");
    opaque_auth {
        flavor: auth_flavor::AUTH_UNIX,
        body: Opaque::owned(body),
    }
}
