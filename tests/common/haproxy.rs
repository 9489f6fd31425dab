//! Real HAProxy 2.6 for side-by-side tests: checked with `haproxy -c`, run
//! in the foreground (`-db`) with its output in a log file, killed on drop.
//! HAProxy is installed by `scripts/setup.sh`; without it these tests fail,
//! they never skip.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

/// A running HAProxy, killed (and reaped) on drop.
pub struct HaProxy {
    child: Child,
    _dir: TempDir,
    log: PathBuf,
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl HaProxy {
    /// Checks and starts HAProxy on `cfg` from directory `cwd` (HAProxy
    /// resolves relative paths against it); waits until `web` accepts.
    pub async fn start(cfg: &str, cwd: &Path, web: SocketAddr) -> HaProxy {
        HaProxy::start_with(cfg, cwd, &[], &[web]).await
    }

    /// [`HaProxy::start`] with environment variables, waiting for every
    /// address in `listen`.
    pub async fn start_with(
        cfg: &str,
        cwd: &Path,
        env: &[(String, String)],
        listen: &[SocketAddr],
    ) -> HaProxy {
        let dir = TempDir::new("haproxy");
        let path = dir.write("haproxy.cfg", cfg);
        let log = dir.path().join("haproxy.log");
        let check = Command::new("haproxy")
            .current_dir(cwd)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .arg("-c")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("run haproxy -c");
        assert!(
            check.status.success(),
            "haproxy rejects the config:\n{}{}\n{cfg}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let logf = std::fs::File::create(&log).expect("haproxy log file");
        let child = Command::new("haproxy")
            .current_dir(cwd)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log fd"))
            .stderr(logf)
            .spawn()
            .expect("start haproxy");
        let h = HaProxy {
            child,
            _dir: dir,
            log,
        };
        for &addr in listen {
            let start = Instant::now();
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "haproxy did not listen on {addr}: {}",
                    h.log()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        h
    }

    /// Stops HAProxy gracefully (SIGUSR1: soft stop, then exit, which
    /// flushes what Lua wrote to its buffered stdout); its whole log.
    pub async fn stop(&mut self) -> String {
        // SAFETY: kill(2) on our own child's pid has no memory-safety implications.
        let _ = unsafe { libc::kill(self.child.id() as i32, libc::SIGUSR1) };
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "haproxy did not stop after SIGUSR1: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.log()
    }

    /// What HAProxy wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The installed HAProxy's version line; panics (fails the test) when it
/// is missing or is not 2.6, the version these comparisons target.
pub fn haproxy_26() -> String {
    let out = Command::new("haproxy")
        .arg("-v")
        .output()
        .unwrap_or_else(|e| {
            panic!("haproxy is required for this test and could not be run ({e}); install it with `bash scripts/setup.sh`")
        });
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("HAProxy version 2.6"),
        "this comparison targets HAProxy 2.6; `haproxy -v` says: {text}"
    );
    text.lines().next().unwrap_or("").to_string()
}
