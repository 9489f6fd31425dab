//! The admin API on a Unix socket (HAProxy's stats socket): a stale socket
//! file is replaced, a live one or any other file is an error, the socket
//! gets its mode and owner before anyone can connect, and the file goes away
//! at exit.

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::config::admin::UnixSocket;

/// Checks (for `check`) that `path` could be bound: its directory exists and
/// nothing but a stale socket is there. Creates nothing.
pub fn probe(path: &Path) -> Result<(), String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "cannot create admin socket {}: {} is not a directory",
                path.display(),
                dir.display()
            ));
        }
        Err(e) => {
            return Err(format!(
                "cannot create admin socket {}: directory {}: {e}",
                path.display(),
                dir.display()
            ));
        }
    }
    stale(path).map(|_| ())
}

/// Whether `path` holds a stale socket (`Ok(true)`), nothing (`Ok(false)`),
/// or something that must not be removed (`Err`): a socket a process still
/// listens on, or a file that is not a socket.
fn stale(path: &Path) -> Result<bool, String> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("cannot inspect {}: {e}", path.display())),
    };
    if !meta.file_type().is_socket() {
        return Err(format!(
            "admin socket path {} exists and is not a socket; remove it or choose another path",
            path.display()
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(format!(
            "admin socket {} is in use by a running process (another portcullis?); stop it or choose another path",
            path.display()
        )),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(true),
        Err(e) => Err(format!(
            "cannot tell whether admin socket {} is stale: {e}",
            path.display()
        )),
    }
}

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
