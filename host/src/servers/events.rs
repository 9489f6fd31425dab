//! Server events (HAProxy 2.8's event framework, `SERVER_*` family): every
//! state change of a [`ServerState`](super::ServerState) is published on one
//! process-wide bounded broadcast channel; subscribers (Lua's
//! `core.event_sub` / `Server:event_sub`) each hold a receiver and handle
//! events in order. A subscriber that falls more than [`EVENT_BACKLOG`]
//! events behind misses the oldest ones and is told how many (HAProxy pauses
//! such a subscription and logs the loss the same way).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use super::CheckStatus;

/// Events a subscriber may lag behind before it misses some.
pub const EVENT_BACKLOG: usize = 256;

/// The event types of the `SERVER` family, as HAProxy names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EventKind {
    Add = 1,
    Del = 2,
    Up = 4,
    Down = 8,
    State = 16,
    Admin = 32,
    Check = 64,
}

impl EventKind {
    /// Every kind, in HAProxy's documentation order.
    pub const ALL: [EventKind; 7] = [
        EventKind::Add,
        EventKind::Del,
        EventKind::Down,
        EventKind::Up,
        EventKind::State,
        EventKind::Admin,
        EventKind::Check,
    ];

    /// HAProxy's name (`SERVER_DOWN`, ...).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Add => "SERVER_ADD",
            EventKind::Del => "SERVER_DEL",
            EventKind::Up => "SERVER_UP",
            EventKind::Down => "SERVER_DOWN",
            EventKind::State => "SERVER_STATE",
            EventKind::Admin => "SERVER_ADMIN",
            EventKind::Check => "SERVER_CHECK",
        }
    }

    /// The kinds a subscription name stands for (`SERVER` = all of them).
    pub fn mask_of(name: &str) -> Option<u8> {
        if name == "SERVER" {
            return Some(Self::ALL.iter().fold(0, |m, k| m | *k as u8));
        }
        Self::ALL
            .iter()
            .find(|k| k.name() == name)
            .map(|k| *k as u8)
    }
}

/// A check result as events report it (HAProxy's `ServerEventCheckRes`).
#[derive(Debug, Clone, Copy)]
pub struct CheckReport {
    pub passed: bool,
    pub status: CheckStatus,
    /// HTTP status of a layer-7 check, 0 if none.
    pub code: u16,
    pub duration_ms: u32,
    /// The health counter after this check, with its bounds.
    pub health: u32,
    pub rise: u32,
    pub fall: u32,
}

/// Operational state names of `SERVER_STATE` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpState {
    Stopped,
    Stopping,
    Running,
}

impl OpState {
    /// HAProxy's name (`STOPPED`, `STOPPING`, `RUNNING`).
    pub fn name(self) -> &'static str {
        match self {
            OpState::Stopped => "STOPPED",
            OpState::Stopping => "STOPPING",
            OpState::Running => "RUNNING",
        }
    }
}

/// What an event carries besides the server.
#[derive(Debug, Clone)]
pub enum Detail {
    /// `SERVER_UP`, `SERVER_DOWN`.
    None,
    /// `SERVER_STATE`: the effective state before and after; `admin` when an
    /// administrative change caused it; the check that caused it, if one did.
    State {
        old: OpState,
        new: OpState,
        admin: bool,
        cause: &'static str,
        check: Option<CheckReport>,
    },
    /// `SERVER_ADMIN`: the admin flags before and after (`MAINT`, `DRAIN`).
    Admin {
        old: &'static [&'static str],
        new: &'static [&'static str],
        cause: &'static str,
    },
    /// `SERVER_CHECK`.
    Check(CheckReport),
}

/// One event about one server.
#[derive(Debug, Clone)]
pub struct ServerEvent {
    pub kind: EventKind,
    /// Index of the backend in the config, and of the server in it.
    pub backend: usize,
    pub server: usize,
    /// Seconds since the epoch when the event happened.
    pub when: u64,
    pub detail: Detail,
}

/// The process-wide channel events go out on.
#[derive(Debug, Clone)]
pub struct EventBus(broadcast::Sender<Arc<ServerEvent>>);

impl Default for EventBus {
    fn default() -> Self {
        EventBus(broadcast::channel(EVENT_BACKLOG).0)
    }
}

impl EventBus {
    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ServerEvent>> {
        self.0.subscribe()
    }

    /// Publishes `kind` about server `server` of backend `backend`; costs
    /// nothing but a check when nobody subscribed.
    pub fn publish(&self, kind: EventKind, backend: usize, server: usize, detail: Detail) {
        if self.0.receiver_count() == 0 {
            return;
        }
        let when = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let _ = self.0.send(Arc::new(ServerEvent {
            kind,
            backend,
            server,
            when,
            detail,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_masks() {
        assert_eq!(EventKind::mask_of("SERVER_DOWN"), Some(8));
        assert_eq!(EventKind::mask_of("SERVER"), Some(127));
        assert_eq!(EventKind::mask_of("server_down"), None);
        assert_eq!(EventKind::mask_of("FOO"), None);
    }
}
