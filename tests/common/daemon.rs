//! The daemon under test: `portcullis run` as a child process (readiness,
//! signals, captured stdout/stderr, killed on drop) and one-shot runs of
//! the binary (`check`, `--version`).

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use super::{Backend, Ports, TempDir, simple_config};

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

/// The daemon binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

type Shared = Arc<Mutex<String>>;

fn collect<R: Read + Send + 'static>(mut pipe: R, into: Shared) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    into.lock().expect("log lock").push_str(&text);
                }
            }
        }
    });
}

/// Output of a finished (or killed) run of the binary.
#[derive(Debug)]
pub struct Finished {
    /// `None` if it had to be killed after the time limit.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `args`, killing it after `limit`.
pub fn run_bin(args: &[&str], limit: Duration) -> Finished {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn portcullis");
    let out: Shared = Arc::default();
    let err: Shared = Arc::default();
    let t_out = child.stdout.take().expect("stdout");
    let t_err = child.stderr.take().expect("stderr");
    let h1 = {
        let out = out.clone();
        std::thread::spawn(move || collect_blocking(t_out, out))
    };
    let h2 = {
        let err = err.clone();
        std::thread::spawn(move || collect_blocking(t_err, err))
    };
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break Some(st);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = h1.join();
    let _ = h2.join();
    let stdout = out.lock().expect("lock").clone();
    let stderr = err.lock().expect("lock").clone();
    Finished {
        status,
        stdout,
        stderr,
    }
}

fn collect_blocking<R: Read>(mut pipe: R, into: Shared) {
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => into
                .lock()
                .expect("lock")
                .push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
}

/// A running `portcullis run -c FILE`, killed on drop.
pub struct Daemon {
    child: Child,
    pub config_path: PathBuf,
    stdout: Shared,
    stderr: Shared,
    exited: Option<ExitStatus>,
    _dir: TempDir,
}

impl Daemon {
    /// Writes `config`, spawns the daemon and waits until every address in
    /// `ready` accepts connections (10 s at most).
    pub async fn start(config: &str, ready: &[SocketAddr]) -> Daemon {
        let mut d = Daemon::spawn(config);
        for addr in ready {
            d.wait_accepting(*addr, Duration::from_secs(10)).await;
        }
        d
    }

    /// Like [`Daemon::start`], with extra environment variables and a working directory
    /// (scripts that read `os.getenv` or open relative paths).
    pub async fn start_with(
        config: &str,
        ready: &[SocketAddr],
        env: &[(&str, &str)],
        cwd: Option<&Path>,
    ) -> Daemon {
        let mut d = Daemon::spawn_with(config, env, cwd);
        for addr in ready {
            d.wait_accepting(*addr, Duration::from_secs(10)).await;
        }
        d
    }

    /// Spawns without waiting for readiness.
    pub fn spawn(config: &str) -> Daemon {
        Daemon::spawn_with(config, &[], None)
    }

    /// Spawns with extra environment variables and a working directory, without waiting.
    pub fn spawn_with(config: &str, env: &[(&str, &str)], cwd: Option<&Path>) -> Daemon {
        Daemon::spawn_full(config, env, cwd, &[])
    }

    /// Spawns `portcullis run -c FILE ARGS...` (e.g. `--upgrade-socket`), without waiting.
    pub fn spawn_args(config: &str, args: &[&str]) -> Daemon {
        Daemon::spawn_full(config, &[], None, args)
    }

    fn spawn_full(config: &str, env: &[(&str, &str)], cwd: Option<&Path>, args: &[&str]) -> Daemon {
        let dir = TempDir::new("run");
        let config_path = dir.write("portcullis.toml", config);
        let mut cmd = Command::new(BIN);
        cmd.envs(env.iter().copied());
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let mut child = cmd
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn portcullis run");
        let stdout: Shared = Arc::default();
        let stderr: Shared = Arc::default();
        collect(child.stdout.take().expect("stdout"), stdout.clone());
        collect(child.stderr.take().expect("stderr"), stderr.clone());
        Daemon {
            child,
            config_path,
            stdout,
            stderr,
            exited: None,
            _dir: dir,
        }
    }

    /// Waits until `addr` accepts connections (panics after `limit`, or if the daemon exits).
    pub async fn wait_accepting(&mut self, addr: SocketAddr, limit: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await
            {
                return;
            }
            if let Some(st) = self.try_exit_status() {
                panic!(
                    "portcullis exited ({st}) before accepting on {addr}\n--- config ---\n{}\n--- stderr ---\n{}",
                    std::fs::read_to_string(&self.config_path).unwrap_or_default(),
                    self.stderr()
                );
            }
            if start.elapsed() > limit {
                panic!(
                    "portcullis not accepting on {addr} after {limit:?}\n--- stderr ---\n{}",
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) to the daemon.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety implications.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    /// Waits for the process to exit; `None` if it is still running after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(st) = self.try_exit_status() {
                return Some(st);
            }
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Everything the daemon wrote to stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().expect("lock").clone()
    }

    /// Waits until a complete stderr line satisfies `pred`.
    pub async fn wait_stderr_line(
        &self,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let start = Instant::now();
        loop {
            let text = self.stderr();
            // Only complete lines (terminated by '\n').
            let complete = match text.rfind('\n') {
                Some(i) => &text[..i],
                None => "",
            };
            if let Some(line) = complete.lines().find(|l| pred(l)) {
                return Some(line.to_string());
            }
            if start.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.try_exit_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let err = self.stderr();
            let tail: String = if err.len() > 6000 {
                let mut cut = err.len() - 6000;
                while !err.is_char_boundary(cut) {
                    cut += 1;
                }
                err[cut..].to_string()
            } else {
                err
            };
            eprintln!("--- portcullis stderr (tail) ---\n{tail}\n--- end ---");
        }
    }
}

impl Daemon {
    /// Waits until the Unix socket at `path` accepts connections.
    pub async fn wait_unix_accepting(&mut self, path: &Path, limit: Duration) {
        let start = Instant::now();
        loop {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return;
            }
            if let Some(st) = self.try_exit_status() {
                panic!(
                    "portcullis exited ({st}) before accepting on {}\n--- stderr ---\n{}",
                    path.display(),
                    self.stderr()
                );
            }
            if start.elapsed() > limit {
                panic!(
                    "portcullis not accepting on {} after {limit:?}\n--- stderr ---\n{}",
                    path.display(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// The usual setup
// ---------------------------------------------------------------------------

/// Starts a daemon with [`simple_config`] and waits until it is ready.
pub async fn simple_proxy(backends: &[&Backend]) -> (Daemon, Ports) {
    let ports = Ports::new();
    let cfg = simple_config(&ports, backends, &[]);
    let d = Daemon::start(&cfg, &[ports.web, ports.admin]).await;
    (d, ports)
}
