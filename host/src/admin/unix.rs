//! The admin API on a Unix socket (HAProxy's stats socket): a stale socket
//! file is replaced, a live one or any other file is an error, the socket
//! gets its mode and owner before anyone can connect, and the file goes away
//! at exit.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;

pub use crate::config::admin::probe_socket as probe;
use crate::config::admin::{UnixSocket, stale};

/// The socket file this process created; removed on drop if it is still ours
/// (same device and inode), so a successor's socket is never deleted.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && m.dev() == self.dev
            && m.ino() == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The socket file at `path`, bound by a process this one took over (a
/// binary upgrade): removed when this process stops, as if it had bound it.
pub fn adopt(path: &std::path::Path) -> Option<SocketFile> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    Some(SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// Binds the admin socket: removes a stale file, creates the socket with
/// no access for others, then applies the configured mode and owner.
pub fn bind(sock: &UnixSocket) -> Result<(UnixListener, SocketFile), String> {
    let path = &sock.path;
    if stale(path)? {
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale admin socket {}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), "removed stale admin socket");
    }
    // The socket file is created by bind(2) with the umask's permissions;
    // a strict umask for that call means nobody else can connect before
    // the chmod below. umask is process-wide, so it is restored at once.
    // SAFETY: umask(2) only swaps the process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener =
        bound.map_err(|e| format!("cannot bind admin socket {}: {e}", path.display()))?;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("cannot inspect admin socket {}: {e}", path.display()))?;
    let file = SocketFile {
        path: path.clone(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    if sock.owner.is_some() || sock.group.is_some() {
        std::os::unix::fs::chown(path, sock.owner, sock.group).map_err(|e| {
            format!(
                "cannot change the owner of admin socket {} to user {} group {}: {e} (changing owners needs root or CAP_CHOWN)",
                path.display(),
                sock.owner.map_or("-".to_string(), |u| u.to_string()),
                sock.group.map_or("-".to_string(), |g| g.to_string()),
            )
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(sock.mode)).map_err(|e| {
        format!(
            "cannot set mode {:04o} on admin socket {}: {e}",
            sock.mode,
            path.display()
        )
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot set up admin socket {}: {e}", path.display()))?;
    Ok((listener, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pc-unix-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn stale_live_and_foreign_files() {
        let d = temp("probe");
        let p = d.join("a.sock");
        assert_eq!(stale(&p), Ok(false));
        let live = UnixListener::bind(&p).expect("bind");
        assert!(stale(&p).is_err_and(|m| m.contains("in use")));
        drop(live);
        assert_eq!(stale(&p), Ok(true));
        let f = d.join("plain");
        std::fs::write(&f, "x").expect("write");
        assert!(stale(&f).is_err_and(|m| m.contains("not a socket")));
        assert!(probe(&d.join("missing-dir/a.sock")).is_err());
        let sock = UnixSocket {
            path: p.clone(),
            mode: 0o640,
            owner: None,
            group: None,
        };
        let (_l, file) = bind(&sock).expect("bind over a stale socket");
        let m = std::fs::metadata(&p).expect("socket");
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
        drop(file);
        assert!(!p.exists(), "socket file removed on drop");
        let _ = std::fs::remove_dir_all(&d);
    }
}
