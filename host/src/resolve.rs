//! DNS resolution for `do_resolve` rules, with HAProxy's `resolvers`
//! settings: one hickory resolver per section, family preference and
//! worker thread (built on first use, on the worker's own runtime, so its
//! background tasks run where its lookups do), answers held `hold_valid`,
//! every lookup bounded by `timeout_retry` × `resolve_retries`.
//!
//! As HAProxy's resolver, it asks the section's name servers only: no
//! `/etc/hosts`, no search domains (a name is taken as fully qualified).

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::config::resolvers::ResolversSpec;

/// Which address family a lookup asks for first (HAProxy's `ipv4`/`ipv6`
/// option of `do-resolve`; the other family is asked when the first has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefer {
    Ipv4,
    Ipv6,
}

/// The `[[resolvers]]` sections of one runtime generation, by name.
#[derive(Debug, Default)]
pub struct Resolvers {
    sections: HashMap<String, Arc<Section>>,
}

impl Resolvers {
    /// The sections of a config (`default` included).
    pub fn new(specs: &HashMap<String, Arc<ResolversSpec>>) -> Resolvers {
        Resolvers {
            sections: specs
                .iter()
                .map(|(name, spec)| (name.clone(), Arc::new(Section::new(Arc::clone(spec)))))
                .collect(),
        }
    }

    /// No section at all (for tests and tools that compile no `do_resolve`).
    pub fn none() -> &'static Resolvers {
        static NONE: std::sync::LazyLock<Resolvers> = std::sync::LazyLock::new(Resolvers::default);
        &NONE
    }

    /// The section called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Section>> {
        self.sections.get(name)
    }

    /// The section names, sorted (for error messages).
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.sections.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

/// One `[[resolvers]]` section: its settings and name servers.
#[derive(Debug)]
pub struct Section {
    spec: Arc<ResolversSpec>,
    servers: Vec<NameServerConfig>,
}

thread_local! {
    /// This worker's resolvers: per section (held weakly: a reload drops
    /// the old generation's) and family preference.
    static WORKER: RefCell<Vec<(Weak<Section>, Prefer, TokioResolver)>> =
        const { RefCell::new(Vec::new()) };
}

impl Section {
    fn new(spec: Arc<ResolversSpec>) -> Section {
        let mut servers: Vec<NameServerConfig> = spec
            .nameservers
            .iter()
            .map(|a| {
                let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                for c in &mut ns.connections {
                    c.port = a.port();
                }
                ns
            })
            .collect();
        if spec.parse_resolv_conf {
            // Read once per generation, as HAProxy reads it at start-up.
            match hickory_resolver::system_conf::read_system_conf() {
                Ok((conf, _)) => servers.extend(conf.name_servers().iter().cloned()),
                Err(e) => tracing::warn!(
                    resolvers = %spec.name,
                    error = %e,
                    "cannot read /etc/resolv.conf; the section has only its own name servers"
                ),
            }
        }
        Section { spec, servers }
    }

    /// The section's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The longest a lookup may take: every query's timeout, plus a margin.
    pub fn deadline(&self) -> Duration {
        self.spec.timeout_retry * self.spec.resolve_retries + Duration::from_millis(100)
    }

    /// The first address `name` resolves to, the `prefer`red family first;
    /// `None` on any failure (no server, NXDOMAIN, timeout, a bad name).
    pub async fn lookup(self: &Arc<Self>, name: &str, prefer: Prefer) -> Option<IpAddr> {
        if self.servers.is_empty() || name.is_empty() || name.len() > 253 {
            return None;
        }
        let resolver = self.worker_resolver(prefer)?;
        // A fully qualified name: no search domains, as HAProxy asks.
        let fqdn = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        match tokio::time::timeout(self.deadline(), resolver.lookup_ip(fqdn.as_str())).await {
            Ok(Ok(found)) => found.iter().next(),
            Ok(Err(e)) => {
                tracing::debug!(resolvers = %self.spec.name, name, error = %e, "resolution failed");
                None
            }
            Err(_) => {
                tracing::debug!(resolvers = %self.spec.name, name, "resolution timed out");
                None
            }
        }
    }

    /// This worker's resolver for this section and preference, built on first use.
    fn worker_resolver(self: &Arc<Self>, prefer: Prefer) -> Option<TokioResolver> {
        WORKER.with(|w| {
            let mut w = w.borrow_mut();
            if let Some((_, _, r)) = w
                .iter()
                .find(|(s, p, _)| *p == prefer && std::ptr::eq(s.as_ptr(), Arc::as_ptr(self)))
            {
                return Some(r.clone());
            }
            // Sections of dropped generations go with their resolvers.
            w.retain(|(s, _, _)| s.strong_count() > 0);
            let r = self.build(prefer)?;
            w.push((Arc::downgrade(self), prefer, r.clone()));
            Some(r)
        })
    }

    fn build(&self, prefer: Prefer) -> Option<TokioResolver> {
        let config = ResolverConfig::from_parts(None, Vec::new(), self.servers.clone());
        let mut opts = ResolverOpts::default();
        opts.timeout = self.spec.timeout_retry;
        opts.attempts = self.spec.resolve_retries.saturating_sub(1) as usize;
        opts.ip_strategy = match prefer {
            Prefer::Ipv4 => LookupIpStrategy::Ipv4thenIpv6,
            Prefer::Ipv6 => LookupIpStrategy::Ipv6thenIpv4,
        };
        opts.use_hosts_file = ResolveHosts::Never;
        opts.ndots = 0;
        // HAProxy reuses a valid answer for `hold valid`, whatever its TTL,
        // and asks again after a failure.
        opts.positive_min_ttl = Some(self.spec.hold_valid);
        opts.positive_max_ttl = Some(self.spec.hold_valid);
        opts.negative_max_ttl = Some(Duration::ZERO);
        opts.cache_size = 1024;
        match TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
        {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(resolvers = %self.spec.name, error = %e, "cannot build the resolver");
                None
            }
        }
    }
}
