//! Request -> disk operation -> reply. Blocking: run it on a blocking thread.

use bytes::Bytes;

use super::disk::Export;
use crate::proto::{Reply, Request, Response, Status};

/// Carry out one request. Returns the reply and the reply's bulk data (READ only).
pub fn dispatch(export: &Export, req: Request, data: &[u8]) -> (Reply, Bytes) {
    if export.read_only() && req.modifies() {
        return (Err(Status::RoFs), Bytes::new());
    }
    let reply = match req {
        Request::Getattr { file } => export.getattr(&file).map(Response::Attr),
        Request::Lookup { dir, name } => export.lookup(&dir, &name).map(Response::Attr),
        Request::Setattr { file, set, guard } => {
            export.setattr(&file, &set, guard).map(Response::Attr)
        }
        Request::Read { file, offset, len } => {
            return match export.read(&file, offset, len) {
                Ok((bytes, eof, attr)) => (Ok(Response::Read { attr, eof }), Bytes::from(bytes)),
                Err(s) => (Err(s), Bytes::new()),
            };
        }
        Request::ReadPacked { file, offset, len } => {
            return match export.read(&file, offset, len) {
                Ok((bytes, eof, attr)) => {
                    let p = crate::proto::pack::pack(&bytes);
                    let resp = Response::Packed {
                        attr,
                        eof,
                        len: p.len,
                        zero: p.zero,
                        compressed: p.compressed,
                    };
                    (Ok(resp), Bytes::from(p.payload))
                }
                Err(s) => (Err(s), Bytes::new()),
            };
        }
        Request::Write { file, offset, sync } => {
            export
                .write(&file, offset, data, sync)
                .map(|attr| Response::Write {
                    attr,
                    count: data.len() as u32,
                })
        }
        Request::Commit { file } => export.commit(&file).map(|()| Response::Done),
        Request::Create { dir, name, how } => export
            .create(&dir, &name, &how)
            .map(|a| changed(export, Some(a), &[&dir])),
        Request::Mkdir { dir, name, mode } => export
            .mkdir(&dir, &name, mode)
            .map(|a| changed(export, Some(a), &[&dir])),
        Request::Symlink {
            dir, name, target, ..
        } => export
            .symlink(&dir, &name, &target)
            .map(|a| changed(export, Some(a), &[&dir])),
        Request::Readlink { file } => export.readlink(&file).map(Response::Target),
        Request::Link { file, dir, name } => export
            .link(&file, &dir, &name)
            .map(|a| changed(export, Some(a), &[&dir])),
        Request::Remove { dir, name } => export
            .remove(&dir, &name, false)
            .map(|()| changed(export, None, &[&dir])),
        Request::Rmdir { dir, name } => export
            .remove(&dir, &name, true)
            .map(|()| changed(export, None, &[&dir])),
        Request::Rename {
            from_dir,
            from_name,
            to_dir,
            to_name,
        } => export
            .rename(&from_dir, &from_name, &to_dir, &to_name)
            .map(|()| changed(export, None, &[&from_dir, &to_dir])),
        Request::Readdir { dir, after, max } => export
            .readdir(&dir, after, max.min(65_536))
            .map(|(entries, eof)| Response::Entries { entries, eof }),
        Request::Fsstat { .. } => export.fsstat().map(Response::FsStat),
        Request::Hint { file } => export
            .hint(&file)
            .map(|(attr, hint)| Response::Hint { attr, hint }),
        Request::SaveProfile {
            file,
            block_size,
            blocks,
        } => export
            .save_profile(&file, block_size, blocks)
            .map(|()| Response::Done),
        Request::BlockSums { file, block_size } => export
            .block_sums(&file, block_size)
            .map(|(attr, sums)| Response::BlockSums { attr, sums }),
    };
    (reply, Bytes::new())
}

/// Attributes of the directories a namespace change touched, read right after it.
fn changed(
    export: &Export,
    obj: Option<crate::proto::Attr>,
    dirs: &[&crate::proto::FileRef],
) -> Response {
    let dirs = dirs.iter().filter_map(|d| export.getattr(d).ok()).collect();
    Response::Changed { obj, dirs }
}
