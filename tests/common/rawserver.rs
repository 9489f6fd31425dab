//! A scripted HTTP/1 server on raw TCP, for the proxy's HTTP/1 client:
//! every request it reads is answered by steps the test chooses (bytes,
//! pauses between them, a close), so heads split across reads, odd framing
//! and early closes come exactly as written.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{IO_TIMEOUT, RawRequest, parse_raw_request};

/// One step of a scripted answer.
#[derive(Debug, Clone)]
pub enum Step {
    /// Write these bytes (one write call).
    Send(Vec<u8>),
    /// Wait before the next step.
    Pause(Duration),
    /// Close the connection (no further request is read on it).
    Close,
}

/// `Step::Send` of a string's bytes.
pub fn send(s: &str) -> Step {
    Step::Send(s.as_bytes().to_vec())
}

/// `Step::Pause` of `ms` milliseconds.
pub fn pause(ms: u64) -> Step {
    Step::Pause(Duration::from_millis(ms))
}

#[derive(Default)]
struct ScriptLog {
    connections: usize,
    requests: Vec<RawRequest>,
}

type Script = dyn Fn(usize, usize) -> Vec<Step> + Send + Sync;

/// A server answering request `r` on its connection `c` (both from 0) with
/// `script(c, r)`; it records connections and requests.
pub struct ScriptedServer {
    pub addr: SocketAddr,
    log: Arc<Mutex<ScriptLog>>,
    task: JoinHandle<()>,
}

impl ScriptedServer {
    pub async fn start<F>(script: F) -> ScriptedServer
    where
        F: Fn(usize, usize) -> Vec<Step> + Send + Sync + 'static,
    {
        let script: Arc<Script> = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log: Arc<Mutex<ScriptLog>> = Arc::default();
        let shared = Arc::clone(&log);
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let c = {
                    let mut l = shared.lock().expect("log");
                    l.connections += 1;
                    l.connections - 1
                };
                let (log, script) = (Arc::clone(&shared), Arc::clone(&script));
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 16 * 1024];
                    let mut r = 0;
                    loop {
                        while let Some((req, used)) = parse_raw_request(&buf) {
                            buf.drain(..used);
                            log.lock().expect("log").requests.push(req);
                            for step in script(c, r) {
                                match step {
                                    Step::Send(b) => {
                                        if s.write_all(&b).await.is_err() {
                                            return;
                                        }
                                    }
                                    Step::Pause(d) => tokio::time::sleep(d).await,
                                    Step::Close => return,
                                }
                            }
                            r += 1;
                        }
                        match tokio::time::timeout(IO_TIMEOUT, s.read(&mut chunk)).await {
                            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                    }
                });
            }
        });
        ScriptedServer { addr, log, task }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.log.lock().expect("log").connections
    }

    /// The complete requests read so far, all connections.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.log.lock().expect("log").requests.clone()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
