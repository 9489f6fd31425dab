//! Test peers written in Python, run with Debian's interpreter and the
//! modules scripts/setup.sh installs (`websockets`, `grpc`): a server
//! process on a loopback port, killed on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's interpreter, where python3-websockets and python3-grpcio live.
pub const PYTHON: &str = "/usr/bin/python3";

/// Fails (never skips) when `module` (Debian's `package`) is missing.
pub fn require_python_module(module: &str, package: &str) {
    let ok = Command::new(PYTHON)
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{PYTHON} with the `{module}` module is required (Debian's {package}); install it with `bash scripts/setup.sh`"
    );
}

/// A Python server process listening on `addr`, killed on drop.
pub struct PyServer {
    child: Child,
    pub addr: SocketAddr,
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PyServer {
    /// Runs `tests/<script> <args>` (which must listen on `addr`) and waits,
    /// at most 20 s, until it accepts connections.
    pub async fn start(script: &str, args: &[String], addr: SocketAddr) -> PyServer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests")
            .join(script);
        let child = Command::new(PYTHON)
            .arg(&path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", path.display()));
        let server = PyServer { child, addr };
        let until = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                Instant::now() < until,
                "{script} did not listen on {addr} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }
}

/// `serve [HOST] PORT [CERT KEY]` arguments for a peer script.
pub fn serve_args(addr: SocketAddr, with_host: bool, tls: Option<(&Path, &Path)>) -> Vec<String> {
    let mut args = vec!["serve".to_string()];
    if with_host {
        args.push(addr.ip().to_string());
    }
    args.push(addr.port().to_string());
    if let Some((cert, key)) = tls {
        args.push(cert.display().to_string());
        args.push(key.display().to_string());
    }
    args
}
