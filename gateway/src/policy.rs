//! A ThrottlePolicy compiled for the request path.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use tollgate_crds::ThrottlePolicy;
use tollgate_crds::common::quantity_value;
use tollgate_crds::throttle_policy::{KeyBy, RateLimit, Scope};

use crate::throttle::{CounterTable, Registry, Window};

/// A compiled ThrottlePolicy.
pub struct Policy {
    /// `namespace/name`.
    pub id: String,
    pub name: String,
    pub limit: Window,
    pub burst: Option<Window>,
    /// Response bytes per period.
    pub bandwidth: Option<Window>,
    pub key_by: KeyBy,
    /// Lower-cased header name or claim name for keyBy Header / Claim.
    pub key_name: String,
    pub scope: Scope,
    pub stop_on_quota_reach: bool,
    pub conditions: Vec<Condition>,
    pub requests: Arc<CounterTable>,
    pub bytes: Arc<CounterTable>,
}

/// A conditional limit; every listed criterion must match.
pub struct Condition {
    pub ip_ranges: Vec<IpNet>,
    /// (lower-cased name, value)
    pub headers: Vec<(String, String)>,
    pub claims: Vec<(String, String)>,
    pub limit: Window,
}

/// What a condition can look at.
pub struct RequestFacts<'a> {
    pub client_ip: Option<IpAddr>,
    pub header: &'a dyn Fn(&str) -> Option<&'a str>,
    pub claim: &'a dyn Fn(&str) -> Option<String>,
}

fn window(l: &RateLimit) -> Result<Window, String> {
    let period_secs = l.per.seconds().ok_or_else(|| format!("invalid period {:?}", l.per.0))?;
    if l.requests < 1 {
        return Err("limit.requests must be at least 1".into());
    }
    Ok(Window { requests: l.requests as u64, period_secs })
}

impl Policy {
    /// Compiles a policy; its counters come from `registry` so they survive reloads.
    pub fn compile(tp: &ThrottlePolicy, registry: &Registry, max_keys: usize) -> Result<Policy, String> {
        let ns = tp.metadata.namespace.clone().unwrap_or_default();
        let name = tp.metadata.name.clone().unwrap_or_default();
        let id = format!("{ns}/{name}");
        let s = &tp.spec;
        let bandwidth = match &s.bandwidth {
            Some(b) => {
                let bytes =
                    quantity_value(&b.bytes).filter(|v| *v > 0).ok_or("bandwidth.bytes is not a positive quantity")?;
                let period_secs = b.per.seconds().ok_or("invalid bandwidth period")?;
                Some(Window { requests: bytes, period_secs })
            }
            None => None,
        };
        let mut conditions = Vec::new();
        for c in &s.conditions {
            let ip_ranges = c
                .match_
                .ip_ranges
                .iter()
                .map(|r| r.parse::<IpNet>().map_err(|_| format!("invalid CIDR {r:?}")))
                .collect::<Result<Vec<_>, _>>()?;
            conditions.push(Condition {
                ip_ranges,
                headers: c.match_.headers.iter().map(|h| (h.name.to_ascii_lowercase(), h.value.clone())).collect(),
                claims: c.match_.claims.iter().map(|h| (h.name.clone(), h.value.clone())).collect(),
                limit: window(&c.limit)?,
            });
        }
        let key_name = match s.key_by {
            KeyBy::Header => s.key_name.clone().unwrap_or_default().to_ascii_lowercase(),
            _ => s.key_name.clone().unwrap_or_default(),
        };
        if matches!(s.key_by, KeyBy::Header | KeyBy::Claim) && key_name.is_empty() {
            return Err("keyName is required when keyBy is Header or Claim".into());
        }
        Ok(Policy {
            requests: registry.table(&id, max_keys),
            bytes: registry.table(&format!("{id}#bytes"), max_keys),
            id,
            name,
            limit: window(&s.limit)?,
            burst: s.burst.as_ref().map(window).transpose()?,
            bandwidth,
            key_by: s.key_by,
            key_name,
            scope: s.scope,
            stop_on_quota_reach: s.stop_on_quota_reach,
            conditions,
        })
    }

    /// The limit for a request: the first matching condition's, else the default.
    /// Also returns which (0 = default, i+1 = condition i) for counter keys.
    pub fn limit_for(&self, facts: &RequestFacts<'_>) -> (usize, Window) {
        for (i, c) in self.conditions.iter().enumerate() {
            if c.matches(facts) {
                return (i + 1, c.limit);
            }
        }
        (0, self.limit)
    }
}

impl Condition {
    fn matches(&self, f: &RequestFacts<'_>) -> bool {
        if !self.ip_ranges.is_empty() {
            let Some(ip) = f.client_ip else { return false };
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
                v4 => v4,
            };
            if !self.ip_ranges.iter().any(|r| r.contains(&ip)) {
                return false;
            }
        }
        self.headers.iter().all(|(n, v)| (f.header)(n) == Some(v.as_str()))
            && self.claims.iter().all(|(n, v)| (f.claim)(n).as_deref() == Some(v.as_str()))
    }
}
