//! Live backend and server state: health (HAProxy's check health counter),
//! administrative state (maintenance, drain), the user weight, load and
//! counters. Built once per runtime by the assembly step and shared by the
//! balancer, the health checks, the admin API and plugins (Lua's `Server`
//! and `Proxy` objects), so a script that drains a server changes what the
//! balancer picks at once.
//!
//! Everything is atomics: workers update it without locks and readers see a
//! slightly racy but consistent-enough snapshot, as with HAProxy's stats.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use crate::config::{Backend, Balance};

pub mod events;
pub mod queue;

pub use events::{CheckReport, Detail, EventBus, EventKind, OpState, ServerEvent};

/// Response counters by status class: 1xx, 2xx, 3xx, 4xx, 5xx, other.
#[derive(Debug, Default)]
pub struct StatusCounters {
    classes: [AtomicU64; 6],
}

impl StatusCounters {
    /// Counts one response with `status`.
    pub fn record(&self, status: u16) {
        let idx = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        self.classes[idx].fetch_add(1, Relaxed);
    }

    /// The six counters in order 1xx..5xx, other.
    pub fn snapshot(&self) -> [u64; 6] {
        std::array::from_fn(|i| self.classes[i].load(Relaxed))
    }
}

/// Names of the [`StatusCounters`] classes, in order.
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Per-backend counters.
#[derive(Debug, Default)]
pub struct BackendStats {
    pub requests: AtomicU64,
    pub responses: StatusCounters,
    /// Requests that found no usable server (503).
    pub no_server: AtomicU64,
}

/// The last health check's result, named as HAProxy's `check_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CheckStatus {
    /// No check has completed yet.
    Init = 0,
    /// Connection refused or reset.
    L4Con = 1,
    /// Connection timed out.
    L4Tout = 2,
    /// The response did not arrive in time.
    L7Tout = 3,
    /// The response was not valid HTTP.
    L7Rsp = 4,
    /// The status was one `expect` accepts.
    L7Ok = 5,
    /// The status was not one `expect` accepts.
    L7Sts = 6,
}

impl CheckStatus {
    /// HAProxy's short name (`show stat`'s `check_status`).
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Init => "INI",
            CheckStatus::L4Con => "L4CON",
            CheckStatus::L4Tout => "L4TOUT",
            CheckStatus::L7Tout => "L7TOUT",
            CheckStatus::L7Rsp => "L7RSP",
            CheckStatus::L7Ok => "L7OK",
            CheckStatus::L7Sts => "L7STS",
        }
    }

    /// HAProxy's description of the status (`reason.desc` of check events).
    pub fn description(self) -> &'static str {
        match self {
            CheckStatus::Init => "Initializing",
            CheckStatus::L4Con => "Layer4 connection problem",
            CheckStatus::L4Tout => "Layer4 timeout",
            CheckStatus::L7Tout => "Layer7 timeout",
            CheckStatus::L7Rsp => "Layer7 invalid response",
            CheckStatus::L7Ok => "Layer7 check passed",
            CheckStatus::L7Sts => "Layer7 wrong status",
        }
    }

    fn from_u8(v: u8) -> CheckStatus {
        match v {
            1 => CheckStatus::L4Con,
            2 => CheckStatus::L4Tout,
            3 => CheckStatus::L7Tout,
            4 => CheckStatus::L7Rsp,
            5 => CheckStatus::L7Ok,
            6 => CheckStatus::L7Sts,
            _ => CheckStatus::Init,
        }
    }
}

/// A server's health-check settings as its health counter needs them.
#[derive(Debug, Clone, Copy)]
pub struct CheckParams {
    pub rise: u32,
    pub fall: u32,
}

/// Operational states (HAProxy's `cur_state`).
const OP_STOPPED: u8 = 0;
const OP_RUNNING: u8 = 1;
const OP_STOPPING: u8 = 2;

/// Administrative flags (HAProxy's `cur_admin`): set by scripts or operators.
const ADMIN_MAINT: u8 = 1;
const ADMIN_DRAIN: u8 = 2;

/// What a state change did, for logs and event subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The server became usable again.
    Up,
    /// The server stopped being usable.
    Down,
}

/// One server's live state: health, admin state, weight, load and counters.
#[derive(Debug)]
pub struct ServerState {
    /// Index of its backend in the config, and its own index there.
    pub backend: usize,
    pub index: usize,
    /// Where its state changes are published.
    events: EventBus,
    pub name: Arc<str>,
    pub addr: SocketAddr,
    /// 1-based position in its backend (HAProxy's `puid` / `sid`).
    pub puid: u32,
    /// The configured weight (HAProxy's `iweight`).
    pub initial_weight: u32,
    /// The weight in force (HAProxy's `uweight`), changed by `set_weight`.
    weight: AtomicU32,
    /// Operational state (`OP_*`): health checks or `check_force_*` set it.
    op: AtomicU8,
    admin: AtomicU8,
    /// Health-check settings, if the backend checks this server.
    pub check: Option<CheckParams>,
    check_enabled: AtomicBool,
    /// A check is running now (HAProxy shows `* ` before `check_status`).
    checking: AtomicBool,
    /// HAProxy's `check.health`: 0..rise+fall-1; up at or above `rise`.
    health: AtomicU32,
    check_status: AtomicU8,
    /// HTTP status of the last layer-7 check, 0 if none.
    check_code: AtomicU16,
    /// Duration of the last check, in milliseconds.
    check_duration_ms: AtomicU32,
    /// When the operational or admin state last changed (ms since `born`).
    last_change_ms: AtomicU64,
    born: Instant,
    /// Requests currently being served (for leastconn).
    pub active: AtomicU32,
    /// Highest `active` seen (HAProxy's `smax`).
    pub max_active: AtomicU32,
    pub requests: AtomicU64,
    /// Connection failures, resets and timeouts.
    pub failures: AtomicU64,
    pub responses: StatusCounters,
    /// Upstream connections opened.
    pub connects: AtomicU64,
    pub checks_failed: AtomicU64,
    /// Times the server went from up to down.
    pub downs: AtomicU64,
    /// Most requests served at once (`maxconn`, changed by `set_maxconn`); 0: no limit.
    pub maxconn: AtomicU32,
    /// Requests waiting for this server in particular (`qcur`), and the most seen (`qmax`).
    pub queued: AtomicU32,
    pub max_queued: AtomicU32,
}

impl ServerState {
    /// A running server with its configured weight; `check` if
    /// health-checked; its `puid` is `index + 1`.
    pub fn new(
        (backend, index): (usize, usize),
        events: EventBus,
        name: Arc<str>,
        addr: SocketAddr,
        weight: u32,
        check: Option<CheckParams>,
    ) -> ServerState {
        ServerState {
            backend,
            index,
            events,
            puid: u32::try_from(index + 1).unwrap_or(u32::MAX),
            name,
            addr,
            initial_weight: weight,
            weight: AtomicU32::new(weight),
            op: AtomicU8::new(OP_RUNNING),
            admin: AtomicU8::new(0),
            check,
            check_enabled: AtomicBool::new(check.is_some()),
            checking: AtomicBool::new(false),
            // HAProxy starts a checked server up "but it will fall at the
            // first failure": health = rise.
            health: AtomicU32::new(check.map_or(0, |c| c.rise)),
            check_status: AtomicU8::new(CheckStatus::Init as u8),
            check_code: AtomicU16::new(0),
            check_duration_ms: AtomicU32::new(0),
            last_change_ms: AtomicU64::new(0),
            born: Instant::now(),
            active: AtomicU32::new(0),
            max_active: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            responses: StatusCounters::default(),
            connects: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
            downs: AtomicU64::new(0),
            maxconn: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            max_queued: AtomicU32::new(0),
        }
    }

    /// A reload kept this server (same backend, name, address, weight and
    /// check settings): its health, admin state, weight in force and
    /// counters carry over from `old`, so a reload neither revives a down
    /// server nor takes one out of maintenance.
    pub fn inherit(&self, old: &ServerState) {
        let copy32 = |to: &AtomicU32, from: &AtomicU32| to.store(from.load(Relaxed), Relaxed);
        let copy64 = |to: &AtomicU64, from: &AtomicU64| to.store(from.load(Relaxed), Relaxed);
        copy32(&self.weight, &old.weight);
        self.op.store(old.op.load(Relaxed), Relaxed);
        self.admin.store(old.admin.load(Relaxed), Relaxed);
        self.check_enabled
            .store(old.check_enabled.load(Relaxed), Relaxed);
        copy32(&self.health, &old.health);
        self.check_status
            .store(old.check_status.load(Relaxed), Relaxed);
        self.check_code.store(old.check_code.load(Relaxed), Relaxed);
        copy32(&self.check_duration_ms, &old.check_duration_ms);
        copy32(&self.max_active, &old.max_active);
        copy64(&self.requests, &old.requests);
        copy64(&self.failures, &old.failures);
        copy64(&self.connects, &old.connects);
        copy64(&self.checks_failed, &old.checks_failed);
        copy64(&self.downs, &old.downs);
    }

    /// Whether health checks (or a forced state) say the server runs
    /// (also when stopping: `check_force_nolb`).
    pub fn is_running(&self) -> bool {
        self.op.load(Relaxed) != OP_STOPPED
    }

    /// Whether the server was forced to NOLB: up, but takes no new requests.
    pub fn is_stopping(&self) -> bool {
        self.op.load(Relaxed) == OP_STOPPING
    }

    /// Whether the server is in maintenance (`set_maint`).
    pub fn is_maint(&self) -> bool {
        self.admin.load(Relaxed) & ADMIN_MAINT != 0
    }

    /// Whether the server was set to drain (`set_drain`).
    pub fn is_drain(&self) -> bool {
        self.admin.load(Relaxed) & ADMIN_DRAIN != 0
    }

    /// Whether the server is up: running and not in maintenance.
    pub fn is_up(&self) -> bool {
        self.is_running() && !self.is_maint()
    }

    /// HAProxy's `server_is_draining`: running with an effective weight of
    /// zero (drained or weighted down to 0).
    pub fn is_draining(&self) -> bool {
        self.is_up() && (self.is_drain() || self.weight() == 0)
    }

    /// The weight in force (`get_weight`).
    pub fn weight(&self) -> u32 {
        self.weight.load(Relaxed)
    }

    /// The weight balancing uses: zero unless up and not draining.
    pub fn lb_weight(&self) -> u32 {
        if !self.is_up() || self.is_drain() || self.is_stopping() {
            0
        } else {
            self.weight()
        }
    }

    /// Marks the server running or stopped (a forced or checked state);
    /// returns the transition if that changed whether it is up.
    pub fn set_up(&self, up: bool) -> Option<Transition> {
        self.set_op(if up { OP_RUNNING } else { OP_STOPPED }, None)
    }

    fn set_op(&self, op: u8, check: Option<CheckReport>) -> Option<Transition> {
        let was_up = self.is_up();
        let was = self.op.swap(op, Relaxed);
        if was == op {
            return None;
        }
        self.touch();
        if was != OP_STOPPED && op == OP_STOPPED {
            self.downs.fetch_add(1, Relaxed);
        }
        let cause = if check.is_some() {
            "health check"
        } else {
            "forced"
        };
        self.publish(
            EventKind::State,
            Detail::State {
                old: op_state(was),
                new: op_state(op),
                admin: false,
                cause,
                check,
            },
        );
        self.publish_transition(transition(was_up, self.is_up()))
    }

    fn publish(&self, kind: EventKind, detail: Detail) {
        self.events.publish(kind, self.backend, self.index, detail);
    }

    fn publish_transition(&self, t: Option<Transition>) -> Option<Transition> {
        match t {
            Some(Transition::Up) => self.publish(EventKind::Up, Detail::None),
            Some(Transition::Down) => self.publish(EventKind::Down, Detail::None),
            None => {}
        }
        t
    }

    /// Puts the server in maintenance (HAProxy's `set server ... state maint`).
    /// Like HAProxy's `srv_adm_set_maint`, this ends a drain.
    pub fn set_maint(&self) -> Option<Transition> {
        self.set_admin(|_| ADMIN_MAINT)
    }

    /// Drains the server: no new requests, those in flight finish.
    /// Like HAProxy's `srv_adm_set_drain`, this ends a maintenance.
    pub fn set_drain(&self) -> Option<Transition> {
        self.set_admin(|_| ADMIN_DRAIN)
    }

    /// Clears maintenance and drain (`set server ... state ready`).
    pub fn set_ready(&self) -> Option<Transition> {
        self.set_admin(|_| 0)
    }

    fn set_admin(&self, f: impl Fn(u8) -> u8) -> Option<Transition> {
        let was_up = self.is_up();
        let old = self
            .admin
            .fetch_update(Relaxed, Relaxed, |a| Some(f(a)))
            .unwrap_or_else(|a| a);
        let new = f(old);
        if new == old {
            return None;
        }
        self.touch();
        let up = self.is_up();
        if was_up && !up {
            self.downs.fetch_add(1, Relaxed);
        }
        self.publish(
            EventKind::Admin,
            Detail::Admin {
                old: admin_names(old),
                new: admin_names(new),
                cause: "",
            },
        );
        let t = transition(was_up, up);
        if t.is_some() {
            let state = |up: bool| {
                if up {
                    OpState::Running
                } else {
                    OpState::Stopped
                }
            };
            self.publish(
                EventKind::State,
                Detail::State {
                    old: state(was_up),
                    new: state(up),
                    admin: true,
                    cause: "",
                    check: None,
                },
            );
        }
        self.publish_transition(t)
    }

    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_change_ms.store(ms, Relaxed);
    }

    /// Seconds since the state last changed (HAProxy's `lastchg`).
    pub fn last_change_secs(&self) -> u64 {
        let now = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(self.last_change_ms.load(Relaxed)) / 1000
    }

    /// Changes the weight as HAProxy's `set weight` does: `"N"` absolute
    /// (0..=256) or `"N%"` of the configured weight. A backend with a static
    /// algorithm (`source`) only accepts 0% and 100%.
    pub fn set_weight_request(&self, text: &str, static_lb: bool) -> Result<(), &'static str> {
        let w = parse_weight(text, self.initial_weight)?;
        if w != 0 && w != self.initial_weight && static_lb {
            return Err(
                "Backend is using a static LB algorithm and only accepts weights '0%' and '100%'.",
            );
        }
        self.weight.store(w, Relaxed);
        Ok(())
    }

    /// Whether the server serves `maxconn` requests already.
    pub fn is_full(&self) -> bool {
        let m = self.maxconn.load(Relaxed);
        m != 0 && self.active.load(Relaxed) >= m
    }

    /// Takes a slot for a request if the server is under its `maxconn`
    /// (one atomic step, so two workers never both take the last one), and
    /// counts it as [`ServerState::begin_request`] does.
    pub fn try_begin_request(&self) -> bool {
        let m = self.maxconn.load(Relaxed);
        if m == 0 {
            self.begin_request();
            return true;
        }
        let taken = self
            .active
            .fetch_update(Relaxed, Relaxed, |a| (a < m).then(|| a + 1));
        match taken {
            Ok(before) => {
                self.requests.fetch_add(1, Relaxed);
                self.max_active.fetch_max(before + 1, Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// Counts one request starting on this server (updating `smax`).
    pub fn begin_request(&self) {
        self.requests.fetch_add(1, Relaxed);
        let now = self.active.fetch_add(1, Relaxed).saturating_add(1);
        self.max_active.fetch_max(now, Relaxed);
    }

    /// Whether health checks run for this server now.
    pub fn check_enabled(&self) -> bool {
        self.check.is_some() && self.check_enabled.load(Relaxed)
    }

    /// Marks a check as running (or done).
    pub fn set_checking(&self, on: bool) {
        self.checking.store(on, Relaxed);
    }

    /// Whether a check is running now.
    pub fn is_checking(&self) -> bool {
        self.checking.load(Relaxed)
    }

    /// Enables or disables configured checks (`check_enable`/`check_disable`).
    pub fn set_check_enabled(&self, on: bool) {
        if self.check.is_some() {
            self.check_enabled.store(on, Relaxed);
        }
    }

    /// HAProxy's `check_force_up`/`check_force_down`: sets the health
    /// counter to its top or to zero and the server running or stopped.
    pub fn force_check(&self, up: bool) -> Option<Transition> {
        let top = self.check.map_or(0, |c| c.rise + c.fall - 1);
        self.health.store(if up { top } else { 0 }, Relaxed);
        self.set_up(up)
    }

    /// HAProxy's `check_force_nolb`: health at the top, the server stopping
    /// (up, but balancing no longer picks it).
    pub fn force_nolb(&self) -> Option<Transition> {
        let top = self.check.map_or(0, |c| c.rise + c.fall - 1);
        self.health.store(top, Relaxed);
        self.set_op(OP_STOPPING, None)
    }

    /// Records a check result and moves the health counter as HAProxy
    /// does: a success climbs toward `rise` (then jumps to the top), a
    /// failure falls toward zero; returns a transition if one happened.
    pub fn record_check(
        &self,
        status: CheckStatus,
        code: u16,
        duration_ms: u32,
    ) -> Option<Transition> {
        let old_status = self.check_status.swap(status as u8, Relaxed);
        self.check_code.store(code, Relaxed);
        self.check_duration_ms.store(duration_ms, Relaxed);
        let c = self.check?;
        let top = c.rise + c.fall - 1;
        let h = self.health.load(Relaxed);
        let passed = status == CheckStatus::L7Ok;
        if !passed {
            self.checks_failed.fetch_add(1, Relaxed);
        }
        // A success climbs (to the top once it reaches `rise`), a failure
        // falls (to zero once it drops below `rise`).
        let (health, op) = if passed {
            match h {
                h if h >= top => (top, None),
                h if h + 1 >= c.rise => (top, Some(OP_RUNNING)),
                h => (h + 1, None),
            }
        } else {
            match h {
                0 => (0, None),
                h if h - 1 < c.rise => (0, Some(OP_STOPPED)),
                h => (h - 1, None),
            }
        };
        self.health.store(health, Relaxed);
        let report = CheckReport {
            passed,
            status,
            code,
            duration_ms,
            health,
            rise: c.rise,
            fall: c.fall,
        };
        if old_status != status as u8 || health != h {
            self.publish(EventKind::Check, Detail::Check(report));
        }
        op.and_then(|op| self.set_op(op, Some(report)))
    }

    /// The last check's status, code and duration; `None` without checks
    /// or while they are disabled (HAProxy's stats leave them empty then).
    pub fn last_check(&self) -> Option<(CheckStatus, u16, u32)> {
        if !self.check_enabled() {
            return None;
        }
        Some((
            CheckStatus::from_u8(self.check_status.load(Relaxed)),
            self.check_code.load(Relaxed),
            self.check_duration_ms.load(Relaxed),
        ))
    }

    /// The `status` HAProxy's stats show: `UP`, `UP 1/3`, `DOWN`,
    /// `DOWN 1/2`, `DRAIN`, `MAINT`, `no check`.
    pub fn status_text(&self) -> String {
        if self.is_maint() {
            return "MAINT".into();
        }
        let checked = self.check_enabled();
        let (rise, fall) = self.check.map_or((0, 0), |c| (c.rise, c.fall));
        let health = self.health.load(Relaxed);
        if self.is_stopping() {
            let going_down = checked && health < rise + fall - 1;
            if going_down {
                return format!("NOLB {}/{}", health + 1 - rise, fall);
            }
            return "NOLB".into();
        }
        if self.is_running() {
            let going_down = checked && health < rise + fall - 1;
            if self.is_drain() {
                if going_down {
                    return format!("DRAIN {}/{}", health + 1 - rise, fall);
                }
                return "DRAIN".into();
            }
            if going_down {
                return format!("UP {}/{}", health + 1 - rise, fall);
            }
            if !checked {
                return "no check".into();
            }
            "UP".into()
        } else if checked && health > 0 {
            format!("DOWN {health}/{rise}")
        } else {
            "DOWN".into()
        }
    }
}

fn op_state(op: u8) -> OpState {
    match op {
        OP_STOPPED => OpState::Stopped,
        OP_STOPPING => OpState::Stopping,
        _ => OpState::Running,
    }
}

/// The admin flags as `SERVER_ADMIN` events name them.
fn admin_names(admin: u8) -> &'static [&'static str] {
    match admin {
        ADMIN_MAINT => &["MAINT", "FMAINT"],
        ADMIN_DRAIN => &["DRAIN", "FDRAIN"],
        _ => &[],
    }
}

fn transition(was_up: bool, up: bool) -> Option<Transition> {
    match (was_up, up) {
        (false, true) => Some(Transition::Up),
        (true, false) => Some(Transition::Down),
        _ => None,
    }
}

/// HAProxy's `server_parse_weight_change_request`, with its messages.
fn parse_weight(text: &str, initial: u32) -> Result<u32, &'static str> {
    if text.is_empty() {
        return Err("Require <weight> or <weight%>.");
    }
    // strtol: leading blanks, an optional sign, digits.
    let t = text.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (neg, digits_from) = match t.as_bytes().first() {
        Some(b'-') => (true, 1),
        Some(b'+') => (false, 1),
        _ => (false, 0),
    };
    let rest = &t[digits_from..];
    let ndigits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if ndigits == 0 {
        return Err("Empty weight string empty or preceded by garbage");
    }
    let magnitude: i64 = rest[..ndigits].parse().unwrap_or(i64::MAX);
    let w = if neg { -magnitude } else { magnitude };
    let end = &rest[ndigits..];
    if end == "%" {
        if w < 0 {
            return Err("Relative weight must be positive.");
        }
        let pct = w.min(25600);
        let scaled = i64::from(initial) * pct / 100;
        return Ok(u32::try_from(scaled.min(256)).unwrap_or(256));
    }
    if !(0..=256).contains(&w) {
        return Err("Absolute weight can only be between 0 and 256 inclusive.");
    }
    if !end.is_empty() {
        return Err("Trailing garbage in weight string");
    }
    Ok(u32::try_from(w).unwrap_or(0))
}

/// A backend's counters and servers.
#[derive(Debug)]
pub struct BackendState {
    pub name: Arc<str>,
    /// Whether the algorithm is static (weights only 0% or 100%), as
    /// HAProxy's map-based `source` hashing is.
    pub static_lb: bool,
    pub stats: BackendStats,
    pub servers: Vec<ServerState>,
    /// Requests waiting for a server under its `maxconn`.
    pub queue: queue::Queue,
    /// The backend's `email_alert` settings (Lua's `Proxy:get_mailers()`).
    pub email_alert: Option<Arc<crate::config::mailers::EmailAlert>>,
}

impl BackendState {
    /// Fresh state for backend number `index`: every server running,
    /// counters zero, changes published on `events`.
    pub fn new(index: usize, backend: &Backend, events: &EventBus) -> BackendState {
        let check = backend.health_check.as_ref().map(|c| CheckParams {
            rise: c.rise.max(1),
            fall: c.fall.max(1),
        });
        BackendState {
            name: backend.name.clone(),
            static_lb: backend.balance == Balance::Source,
            stats: BackendStats::default(),
            servers: backend
                .servers
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    ServerState::new(
                        (index, i),
                        events.clone(),
                        s.name.clone(),
                        s.addr,
                        s.weight,
                        if s.check { check } else { None },
                    )
                })
                .inspect(|st| {
                    if let Some(cfg) = backend.servers.get(st.index) {
                        st.maxconn.store(cfg.maxconn, Relaxed);
                    }
                })
                .collect(),
            queue: queue::Queue::default(),
            email_alert: backend.email_alert.clone(),
        }
    }

    /// Servers up and with a weight (HAProxy's `srv_act`).
    pub fn usable_servers(&self) -> usize {
        self.servers.iter().filter(|s| s.lb_weight() > 0).count()
    }

    /// HAProxy's backend `status`: `UP` while some server takes requests
    /// (a total balancing weight above zero), else `DOWN`.
    pub fn status_text(&self) -> &'static str {
        if self.servers.iter().any(|s| s.lb_weight() > 0) {
            "UP"
        } else {
            "DOWN"
        }
    }
}

/// Every backend's live state, in config order, and the channel their
/// servers' events go out on. Derefs to the backends.
#[derive(Debug)]
pub struct Servers {
    backends: Vec<BackendState>,
    pub events: EventBus,
}

impl std::ops::Deref for Servers {
    type Target = [BackendState];
    fn deref(&self) -> &[BackendState] {
        &self.backends
    }
}

/// The runtime's live backend state, shared.
pub type Backends = Arc<Servers>;

/// Builds the live state of `backends`.
pub fn build(backends: &[Backend]) -> Backends {
    let events = EventBus::default();
    Arc::new(Servers {
        backends: backends
            .iter()
            .enumerate()
            .map(|(i, b)| BackendState::new(i, b, &events))
            .collect(),
        events,
    })
}

/// A reload: every server of `new` that is declared as in `old` (same
/// backend name, server name, address, weight and health-check settings)
/// takes over its live state ([`ServerState::inherit`]). Returns how many did.
pub fn carry_over(new: &Servers, new_cfg: &[Backend], old: &Servers, old_cfg: &[Backend]) -> usize {
    let mut kept = 0;
    for (nb, ncfg) in new.iter().zip(new_cfg) {
        let Some((ob, ocfg)) = old.iter().zip(old_cfg).find(|(b, _)| b.name == nb.name) else {
            continue;
        };
        for (ns, nscfg) in nb.servers.iter().zip(&ncfg.servers) {
            let same = |(os, oscfg): &(&ServerState, &crate::config::Server)| {
                os.name == ns.name
                    && os.addr == ns.addr
                    && os.initial_weight == ns.initial_weight
                    && oscfg.check == nscfg.check
                    // Debug text: the check settings are plain data without PartialEq.
                    && format!("{:?}", ocfg.health_check) == format!("{:?}", ncfg.health_check)
            };
            if let Some((os, _)) = ob.servers.iter().zip(&ocfg.servers).find(same) {
                ns.inherit(os);
                kept += 1;
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(weight: u32, check: Option<(u32, u32)>) -> ServerState {
        ServerState::new(
            (0, 0),
            EventBus::default(),
            Arc::from("s1"),
            "127.0.0.1:1".parse().unwrap(),
            weight,
            check.map(|(rise, fall)| CheckParams { rise, fall }),
        )
    }

    #[test]
    fn weight_requests_follow_haproxy() {
        let cases: &[(&str, u32, bool, Result<u32, &str>)] = &[
            ("50", 10, false, Ok(50)),
            ("0", 10, false, Ok(0)),
            ("256", 10, false, Ok(256)),
            (
                "257",
                10,
                false,
                Err("Absolute weight can only be between 0 and 256 inclusive."),
            ),
            (
                "-1",
                10,
                false,
                Err("Absolute weight can only be between 0 and 256 inclusive."),
            ),
            ("50%", 10, false, Ok(5)),
            ("200%", 200, false, Ok(256)),
            ("-5%", 10, false, Err("Relative weight must be positive.")),
            ("", 10, false, Err("Require <weight> or <weight%>.")),
            (
                "abc",
                10,
                false,
                Err("Empty weight string empty or preceded by garbage"),
            ),
            ("12x", 10, false, Err("Trailing garbage in weight string")),
            (" 7", 10, false, Ok(7)),
            (
                "5",
                10,
                true,
                Err(
                    "Backend is using a static LB algorithm and only accepts weights '0%' and '100%'.",
                ),
            ),
            ("100%", 10, true, Ok(10)),
            ("0%", 10, true, Ok(0)),
        ];
        for (text, initial, static_lb, want) in cases {
            let s = server(*initial, None);
            let got = s.set_weight_request(text, *static_lb).map(|()| s.weight());
            assert_eq!(&got, want, "set_weight({text:?}) from {initial}");
        }
    }

    #[test]
    fn health_counter_moves_as_haproxy_does() {
        let s = server(1, Some((2, 3)));
        assert_eq!(
            s.status_text(),
            "UP 1/3",
            "up at start, falls at the first failure"
        );
        assert_eq!(s.record_check(CheckStatus::L7Ok, 200, 1), None);
        assert_eq!(s.status_text(), "UP");
        assert_eq!(s.record_check(CheckStatus::L4Con, 0, 1), None);
        assert_eq!(s.status_text(), "UP 2/3");
        assert_eq!(s.record_check(CheckStatus::L4Con, 0, 1), None);
        assert_eq!(s.status_text(), "UP 1/3");
        assert_eq!(
            s.record_check(CheckStatus::L7Sts, 500, 1),
            Some(Transition::Down)
        );
        assert_eq!(s.status_text(), "DOWN");
        assert_eq!(s.record_check(CheckStatus::L7Ok, 200, 1), None);
        assert_eq!(s.status_text(), "DOWN 1/2");
        assert_eq!(
            s.record_check(CheckStatus::L7Ok, 200, 1),
            Some(Transition::Up)
        );
        assert_eq!(s.status_text(), "UP");
    }

    #[test]
    fn admin_state_overrides_and_clears() {
        let s = server(4, None);
        assert_eq!(s.status_text(), "no check");
        assert_eq!(s.set_drain(), None);
        assert!(s.is_draining());
        assert_eq!(s.lb_weight(), 0);
        assert_eq!(s.status_text(), "DRAIN");
        assert_eq!(s.set_maint(), Some(Transition::Down));
        assert_eq!(s.status_text(), "MAINT");
        assert!(!s.is_draining());
        assert_eq!(s.set_ready(), Some(Transition::Up));
        assert_eq!(s.lb_weight(), 4);
        assert_eq!(s.downs.load(Relaxed), 1);
        s.set_weight_request("0", false).unwrap();
        assert!(
            s.is_draining(),
            "weight 0 drains, as HAProxy's server_is_draining"
        );
    }
}
