//! Process-wide plugin state that every worker's instance of a plugin
//! shares: key-value shared data with compare-and-swap, shared queues, and
//! metrics (exported in `/metrics`).
//!
//! Shared data and queues are scoped by VM id (the plugin's `vm_id`, by
//! default its name), as in Envoy. Metrics are defined once per (plugin, name, type) and then updated
//! through per-instance cached handles, so the request path takes no lock.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};

use super::Status;
use crate::metrics::{Writer, label};

// ---------------------------------------------------------------------------
// Shared data
// ---------------------------------------------------------------------------

/// Most bytes one shared-data value may hold.
pub const MAX_SHARED_VALUE: usize = 1 << 20;
/// Most keys one VM's shared data may hold.
pub const MAX_SHARED_KEYS: usize = 100_000;

/// One VM's shared key-value store.
#[derive(Debug, Default)]
pub struct SharedData {
    map: scc::HashMap<Vec<u8>, (Vec<u8>, u32)>,
}

static CAS: AtomicU32 = AtomicU32::new(1);

fn next_cas() -> u32 {
    loop {
        let c = CAS.fetch_add(1, Ordering::Relaxed);
        if c != 0 {
            return c;
        }
    }
}

impl SharedData {
    /// The value and CAS token of `key`.
    pub fn get(&self, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.map.read_sync(key, |_, v| v.clone())
    }

    /// Sets `key`; a non-zero `cas` must match the current token (`CasMismatch` otherwise).
    pub fn set(&self, key: &[u8], value: &[u8], cas: u32) -> Status {
        if value.len() > MAX_SHARED_VALUE {
            return Status::BadArgument;
        }
        match self.map.entry_sync(key.to_vec()) {
            scc::hash_map::Entry::Occupied(mut o) => {
                if cas != 0 && o.get().1 != cas {
                    return Status::CasMismatch;
                }
                *o.get_mut() = (value.to_vec(), next_cas());
                Status::Ok
            }
            scc::hash_map::Entry::Vacant(v) => {
                if self.map.len() >= MAX_SHARED_KEYS {
                    return Status::BadArgument;
                }
                v.insert_entry((value.to_vec(), next_cas()));
                Status::Ok
            }
        }
    }
}

static SHARED: LazyLock<scc::HashMap<String, Arc<SharedData>>> =
    LazyLock::new(scc::HashMap::default);

/// The shared data of VM `vm_id` (created on first use).
pub fn shared_data(vm_id: &str) -> Arc<SharedData> {
    if let Some(d) = SHARED.read_sync(vm_id, |_, v| Arc::clone(v)) {
        return d;
    }
    Arc::clone(
        SHARED
            .entry_sync(vm_id.to_string())
            .or_insert_with(|| Arc::new(SharedData::default()))
            .get(),
    )
}

// ---------------------------------------------------------------------------
// Shared queues
// ---------------------------------------------------------------------------

/// Most items a queue holds; past it the oldest item is dropped.
pub const MAX_QUEUE_ITEMS: usize = 10_000;

#[derive(Debug)]
struct Queue {
    vm_id: String,
    name: String,
    items: VecDeque<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Queues {
    list: Vec<Queue>,
}

static QUEUES: LazyLock<Mutex<Queues>> = LazyLock::new(Mutex::default);
/// Bumped on every enqueue, so instances can skip checking their queues when nothing changed.
static QUEUE_GEN: AtomicU64 = AtomicU64::new(0);

fn queues() -> std::sync::MutexGuard<'static, Queues> {
    QUEUES.lock().unwrap_or_else(|p| p.into_inner())
}

/// The id of queue `name` of VM `vm_id`, created if needed (ids start at 1).
pub fn register_queue(vm_id: &str, name: &str) -> u32 {
    let mut q = queues();
    if let Some(i) = q
        .list
        .iter()
        .position(|x| x.vm_id == vm_id && x.name == name)
    {
        return id_of(i);
    }
    q.list.push(Queue {
        vm_id: vm_id.to_string(),
        name: name.to_string(),
        items: VecDeque::new(),
    });
    id_of(q.list.len() - 1)
}

fn id_of(index: usize) -> u32 {
    u32::try_from(index + 1).unwrap_or(u32::MAX)
}

fn index_of(id: u32) -> Option<usize> {
    usize::try_from(id).ok()?.checked_sub(1)
}

/// The id of an existing queue.
pub fn resolve_queue(vm_id: &str, name: &str) -> Option<u32> {
    queues()
        .list
        .iter()
        .position(|x| x.vm_id == vm_id && x.name == name)
        .map(id_of)
}

/// Appends to queue `id`; `NotFound` if there is no such queue.
pub fn enqueue(id: u32, data: &[u8]) -> Status {
    let mut q = queues();
    let Some(queue) = index_of(id).and_then(|i| q.list.get_mut(i)) else {
        return Status::NotFound;
    };
    if queue.items.len() >= MAX_QUEUE_ITEMS {
        queue.items.pop_front();
    }
    queue.items.push_back(data.to_vec());
    QUEUE_GEN.fetch_add(1, Ordering::Release);
    Status::Ok
}

/// Takes the oldest item of queue `id`: `Err(NotFound)` for no queue, `Err(Empty)` for none.
pub fn dequeue(id: u32) -> Result<Vec<u8>, Status> {
    let mut q = queues();
    let queue = index_of(id)
        .and_then(|i| q.list.get_mut(i))
        .ok_or(Status::NotFound)?;
    queue.items.pop_front().ok_or(Status::Empty)
}

/// Whether queue `id` holds items.
pub fn queue_has_items(id: u32) -> bool {
    let q = queues();
    index_of(id)
        .and_then(|i| q.list.get(i))
        .is_some_and(|x| !x.items.is_empty())
}

/// The enqueue generation (changes whenever any queue receives an item).
pub fn queue_generation() -> u64 {
    QUEUE_GEN.load(Ordering::Acquire)
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// Proxy-Wasm metric types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    /// From the ABI's numbering (0 counter, 1 gauge, 2 histogram).
    pub fn from_raw(raw: u32) -> Option<MetricKind> {
        Some(match raw {
            0 => MetricKind::Counter,
            1 => MetricKind::Gauge,
            2 => MetricKind::Histogram,
            _ => return None,
        })
    }
}

/// One metric: a value, plus a count for histograms (value is then the sum).
#[derive(Debug)]
pub struct Metric {
    pub plugin: String,
    pub name: String,
    pub kind: MetricKind,
    pub value: AtomicI64,
    pub count: AtomicU64,
}

impl Metric {
    /// Adds `delta` (counters refuse negative deltas).
    pub fn increment(&self, delta: i64) -> Status {
        match self.kind {
            MetricKind::Counter if delta < 0 => Status::BadArgument,
            MetricKind::Counter | MetricKind::Gauge => {
                self.value.fetch_add(delta, Ordering::Relaxed);
                Status::Ok
            }
            MetricKind::Histogram => Status::BadArgument,
        }
    }

    /// Records `v`: sets a gauge or counter, adds a histogram sample.
    pub fn record(&self, v: u64) -> Status {
        let v = i64::try_from(v).unwrap_or(i64::MAX);
        match self.kind {
            MetricKind::Counter | MetricKind::Gauge => self.value.store(v, Ordering::Relaxed),
            MetricKind::Histogram => {
                self.value.fetch_add(v, Ordering::Relaxed);
                self.count.fetch_add(1, Ordering::Relaxed);
            }
        }
        Status::Ok
    }

    /// The current value (a histogram's sum).
    pub fn get(&self) -> u64 {
        u64::try_from(self.value.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

/// Most metrics all plugins together may define.
pub const MAX_METRICS: usize = 10_000;

static METRICS: LazyLock<RwLock<Vec<Arc<Metric>>>> = LazyLock::new(RwLock::default);

/// Defines (or finds) metric `name` of `kind` for `plugin`; its id (ids start at 1).
pub fn define_metric(plugin: &str, name: &str, kind: MetricKind) -> Option<(u32, Arc<Metric>)> {
    let mut all = METRICS.write().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = all
        .iter()
        .position(|m| m.plugin == plugin && m.name == name && m.kind == kind)
    {
        return Some((id_of(i), Arc::clone(&all[i])));
    }
    if all.len() >= MAX_METRICS {
        return None;
    }
    let m = Arc::new(Metric {
        plugin: plugin.to_string(),
        name: name.to_string(),
        kind,
        value: AtomicI64::new(0),
        count: AtomicU64::new(0),
    });
    all.push(Arc::clone(&m));
    Some((id_of(all.len() - 1), m))
}

/// Metric `id` if it belongs to `plugin`.
pub fn metric(plugin: &str, id: u32) -> Option<Arc<Metric>> {
    let all = METRICS.read().unwrap_or_else(|p| p.into_inner());
    index_of(id)
        .and_then(|i| all.get(i))
        .filter(|m| m.plugin == plugin)
        .map(Arc::clone)
}

fn prom_name(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Appends every plugin-defined metric in Prometheus text format, as
/// `portcullis_wasm_<name>{plugin="..."}` (histograms as `_sum` and `_count`).
pub fn render_prometheus(out: &mut Writer) {
    let all = METRICS.read().unwrap_or_else(|p| p.into_inner());
    // A family's samples must be contiguous in the text format: group by name.
    let mut sorted: Vec<&Arc<Metric>> = all.iter().collect();
    sorted.sort_by(|a, b| (prom_name(&a.name), &a.plugin).cmp(&(prom_name(&b.name), &b.plugin)));
    let mut typed: HashSet<String> = HashSet::new();
    for m in sorted {
        let base = format!("portcullis_wasm_{}", prom_name(&m.name));
        let label = label("plugin", &m.plugin);
        let kind = match m.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "summary",
        };
        if !typed.contains(&base) {
            out.header(&base, kind, None);
            typed.insert(base.clone());
        }
        match m.kind {
            MetricKind::Counter | MetricKind::Gauge => {
                out.sample(&base, &label, m.value.load(Ordering::Relaxed));
            }
            MetricKind::Histogram => {
                let sum = m.value.load(Ordering::Relaxed);
                out.sample(&format!("{base}_sum"), &label, sum);
                out.sample(
                    &format!("{base}_count"),
                    &label,
                    m.count.load(Ordering::Relaxed),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_data_cas() {
        let d = SharedData::default();
        assert_eq!(d.get(b"k"), None);
        assert_eq!(d.set(b"k", b"v1", 0), Status::Ok);
        let (v, cas) = d.get(b"k").expect("set");
        assert_eq!(v, b"v1");
        assert_eq!(d.set(b"k", b"v2", cas.wrapping_add(1)), Status::CasMismatch);
        assert_eq!(d.set(b"k", b"v2", cas), Status::Ok);
        assert_eq!(d.set(b"k", b"v3", cas), Status::CasMismatch);
        assert_eq!(d.get(b"k").expect("set").0, b"v2");
    }

    #[test]
    fn queues_round_trip() {
        let id = register_queue("shared-test-vm", "q");
        assert_eq!(register_queue("shared-test-vm", "q"), id);
        assert_eq!(resolve_queue("shared-test-vm", "q"), Some(id));
        assert_eq!(resolve_queue("shared-test-vm", "nope"), None);
        assert_eq!(dequeue(id), Err(Status::Empty));
        assert_eq!(enqueue(id, b"a"), Status::Ok);
        assert!(queue_has_items(id));
        assert_eq!(dequeue(id), Ok(b"a".to_vec()));
        assert_eq!(enqueue(u32::MAX, b"a"), Status::NotFound);
        assert_eq!(dequeue(0), Err(Status::NotFound));
    }

    /// Queue names and shared-data keys are per VM id: the same name in two
    /// VMs is two queues, two keys.
    #[test]
    fn queues_and_data_are_scoped_by_vm_id() {
        let a = register_queue("scope-vm-a", "jobs");
        let b = register_queue("scope-vm-b", "jobs");
        assert_ne!(a, b);
        assert_eq!(resolve_queue("scope-vm-b", "jobs"), Some(b));
        assert_eq!(enqueue(a, b"for a"), Status::Ok);
        assert_eq!(dequeue(b), Err(Status::Empty));
        assert_eq!(dequeue(a), Ok(b"for a".to_vec()));
        assert_eq!(shared_data("scope-vm-a").set(b"k", b"1", 0), Status::Ok);
        assert_eq!(shared_data("scope-vm-b").get(b"k"), None);
        assert_eq!(
            shared_data("scope-vm-a").get(b"k").map(|v| v.0),
            Some(b"1".to_vec())
        );
    }

    #[test]
    fn metrics_define_and_render() {
        let (id, m) =
            define_metric("shared-test", "hits total", MetricKind::Counter).expect("room");
        let (id2, _) =
            define_metric("shared-test", "hits total", MetricKind::Counter).expect("room");
        assert_eq!(id, id2);
        assert_eq!(m.increment(2), Status::Ok);
        assert_eq!(m.increment(-1), Status::BadArgument);
        assert_eq!(metric("shared-test", id).expect("found").get(), 2);
        assert!(metric("other-plugin", id).is_none());
        let mut w = Writer::new();
        render_prometheus(&mut w);
        let out = w.finish();
        assert!(
            out.contains("portcullis_wasm_hits_total{plugin=\"shared-test\"} 2"),
            "{out}"
        );
    }

    /// Pins the text format: one TYPE per family, samples grouped and sorted
    /// by plugin, histograms as summaries, label values escaped.
    #[test]
    fn metrics_text_format() {
        let odd = "a\"b\\c\nd";
        for (plugin, v) in [("shared-test", -3), (odd, 5)] {
            let (_, m) = define_metric(plugin, "shared.depth", MetricKind::Gauge).expect("room");
            assert_eq!(m.increment(v), Status::Ok);
        }
        let (_, h) =
            define_metric("shared-test", "shared lat", MetricKind::Histogram).expect("room");
        assert_eq!(h.record(3), Status::Ok);
        assert_eq!(h.record(4), Status::Ok);
        let mut w = Writer::new();
        render_prometheus(&mut w);
        let out = w.finish();
        let gauge = concat!(
            "# TYPE portcullis_wasm_shared_depth gauge\n",
            "portcullis_wasm_shared_depth{plugin=\"a\\\"b\\\\c\\nd\"} 5\n",
            "portcullis_wasm_shared_depth{plugin=\"shared-test\"} -3\n",
        );
        assert!(out.contains(gauge), "{out}");
        let summary = concat!(
            "# TYPE portcullis_wasm_shared_lat summary\n",
            "portcullis_wasm_shared_lat_sum{plugin=\"shared-test\"} 7\n",
            "portcullis_wasm_shared_lat_count{plugin=\"shared-test\"} 2\n",
        );
        assert!(out.contains(summary), "{out}");
    }
}
