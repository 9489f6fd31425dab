//! A DNS server for tests: answers A and AAAA questions over UDP from a
//! fixed table, NXDOMAIN for other names, and counts the questions.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::UdpSocket;

/// A running test DNS server.
pub struct Dns {
    pub addr: SocketAddr,
    /// Questions answered so far.
    pub questions: Arc<AtomicUsize>,
}

/// Serves `names` (lower-case, no trailing dot) on a loopback UDP port.
pub async fn dns_server(names: &[(&str, IpAddr)]) -> Dns {
    let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
    let addr = sock.local_addr().expect("dns addr");
    let table: HashMap<String, Vec<IpAddr>> =
        names.iter().fold(HashMap::new(), |mut m, (n, ip)| {
            m.entry(n.to_string()).or_default().push(*ip);
            m
        });
    let questions = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&questions);
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                return;
            };
            if let Some(reply) = answer(&buf[..n], &table) {
                count.fetch_add(1, Ordering::Relaxed);
                let _ = sock.send_to(&reply, peer).await;
            }
        }
    });
    Dns { addr, questions }
}

/// The reply to one query: its question echoed, then the matching records.
fn answer(q: &[u8], table: &HashMap<String, Vec<IpAddr>>) -> Option<Vec<u8>> {
    if q.len() < 12 {
        return None;
    }
    // The question's name: length-prefixed labels up to a zero byte.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question = q.get(12..i + 4)?;
    let name = labels.join(".");
    let known = table.get(&name);
    let records: Vec<&IpAddr> = known
        .map(|ips| {
            ips.iter()
                .filter(|ip| matches!((qtype, ip), (1, IpAddr::V4(_)) | (28, IpAddr::V6(_))))
                .collect()
        })
        .unwrap_or_default();
    let mut r = Vec::with_capacity(512);
    r.extend_from_slice(&q[..2]); // id
    // Response, recursion desired + available; NXDOMAIN for unknown names.
    r.extend_from_slice(if known.is_some() {
        &[0x81, 0x80]
    } else {
        &[0x81, 0x83]
    });
    r.extend_from_slice(&[0, 1]); // one question
    r.extend_from_slice(&(records.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]); // no authority, no additional
    r.extend_from_slice(question);
    for ip in records {
        r.extend_from_slice(&[0xc0, 12]); // the question's name
        r.extend_from_slice(&qtype.to_be_bytes());
        r.extend_from_slice(&[0, 1]); // IN
        r.extend_from_slice(&60u32.to_be_bytes()); // TTL
        match ip {
            IpAddr::V4(a) => {
                r.extend_from_slice(&[0, 4]);
                r.extend_from_slice(&a.octets());
            }
            IpAddr::V6(a) => {
                r.extend_from_slice(&[0, 16]);
                r.extend_from_slice(&a.octets());
            }
        }
    }
    Some(r)
}
