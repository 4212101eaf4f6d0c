//! Pipeline step `throttle`: the API's ThrottlePolicy, the operation's and
//! the caller's subscription tier, checked all or nothing: a request refused
//! by any of them consumes no quota of the others (what was counted is given
//! back, also on the traffic manager). Counters are keyed by what the
//! policy's `keyBy` names, read only from verified facts (the Principal's
//! application and claims, the client address as `--trusted-proxies`
//! allows).
//!
//! Answers: 429 with `Retry-After` and `RateLimit-*` when a policy with
//! `stopOnQuotaReach` is exhausted; 503 when a Cluster-scoped count cannot be
//! made and the traffic manager's failure mode is Closed. A policy with
//! `stopOnQuotaReach: false` lets the request through and flags it
//! (`X-Tollgate-Quota-Exceeded`, metric action "flagged").

use std::net::IpAddr;
use std::sync::Arc;

use pingora::http::{RequestHeader, ResponseHeader};
use tollgate_crds::throttle_policy::{KeyBy, Scope};

use super::Flow;
use super::request::{RequestCtx, header};
use crate::metrics::ResultLabels;
use crate::policy::{Policy, RequestFacts};
use crate::respond::Reply;
use crate::runtime::Shared;
use crate::throttle::{Decision, Window, key_hash, now_ms};
use crate::traffic::{ClusterCount, FailureMode};

/// Policies by name, of one namespace.
pub type NamespacePolicies = Arc<foldhash::HashMap<String, Arc<Policy>>>;

/// Where an API's subscription tiers are found: its own namespace first,
/// then its ApiManager's.
#[derive(Clone, Default)]
pub struct Tiers {
    pub own: Option<NamespacePolicies>,
    pub manager: Option<NamespacePolicies>,
}

impl Tiers {
    pub fn get(&self, tier: &str) -> Option<&Arc<Policy>> {
        self.own.as_ref().and_then(|m| m.get(tier)).or_else(|| self.manager.as_ref().and_then(|m| m.get(tier)))
    }
}

/// The compiled `throttle` step.
pub struct ThrottleStep {
    api_policy: Option<Arc<Policy>>,
    /// Subscription tiers (None when the API has no authentication).
    tiers: Option<Tiers>,
}

/// One request counted against one limit, to give back when a later check
/// refuses the request.
struct Reservation {
    policy: Arc<Policy>,
    key: u64,
    window: Window,
    cluster: bool,
}

enum Verdict {
    Pass(Decision),
    Reject(Decision, String),
    /// Redis is unreachable and the failure mode is Closed.
    Unavailable(String),
}

/// The RateLimit-* headers for a decision.
pub fn ratelimit_headers(d: &Decision) -> [(&'static str, u64); 3] {
    [("ratelimit-limit", d.limit), ("ratelimit-remaining", d.remaining), ("ratelimit-reset", d.reset_secs())]
}

/// The counter key of a client address: IPv4 (also IPv4-mapped IPv6) as is,
/// IPv6 by its /64, the smallest block one subscriber is usually given, so
/// one host cannot mint unlimited keys from its own prefix.
fn client_ip_key(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets()[..8].to_vec(),
        },
    }
}

impl ThrottleStep {
    pub fn new(api_policy: Option<Arc<Policy>>, tiers: Option<Tiers>) -> ThrottleStep {
        ThrottleStep { api_policy, tiers }
    }

    pub async fn on_request(&self, req: &RequestHeader, ctx: &mut RequestCtx, rt: &Shared) -> Flow {
        // A subscription whose tier is not deployed (deleted, or never
        // written to this gateway) is refused, never served unthrottled.
        let tier = match (self.tiers.as_ref(), ctx.principal.as_ref().and_then(|p| p.tier.as_deref())) {
            (Some(tiers), Some(t)) => match tiers.get(t) {
                Some(policy) => Some(policy.clone()),
                None => {
                    rt.metrics.throttled(t, "tier_unavailable").inc();
                    return Flow::Reply(
                        Reply::new(
                            503,
                            "tier_unavailable",
                            format!("the subscription's tier {t:?} is not deployed on this gateway"),
                        )
                        .header("retry-after", "5"),
                    );
                }
            },
            _ => None,
        };
        let op = ctx.operation.operation().and_then(|o| o.policy.clone());
        let mut held = Vec::new();
        for policy in [self.api_policy.clone(), op, tier].into_iter().flatten() {
            let verdict = check_policy(&policy, req, ctx, rt, &mut held).await;
            let reply = match verdict {
                Verdict::Pass(d) => {
                    if ctx.ratelimit.is_none_or(|cur| d.remaining < cur.remaining) {
                        ctx.ratelimit = Some(d);
                    }
                    continue;
                }
                Verdict::Unavailable(message) => {
                    rt.metrics.throttled(&policy.id, "unavailable").inc();
                    Reply::new(503, "traffic_manager_unavailable", message).header("retry-after", "1")
                }
                Verdict::Reject(d, message) => {
                    rt.metrics.throttled(&policy.id, "rejected").inc();
                    ctx.throttled = true;
                    let mut reply =
                        Reply::new(429, "too_many_requests", message).header("retry-after", d.reset_secs().to_string());
                    reply.headers.extend(ratelimit_headers(&d).map(|(n, v)| (n.to_string(), v.to_string())));
                    reply.extra = Some(serde_json::json!({"policy": policy.name}));
                    reply
                }
            };
            // Refused: nothing this request counted stays counted.
            refund(rt, held);
            ctx.bandwidth.clear();
            ctx.flagged = None;
            return Flow::Reply(reply);
        }
        if let Some(p) = &ctx.flagged {
            rt.metrics.throttled(&p.id, "flagged").inc();
        }
        Flow::Next
    }

    pub fn on_response(&self, resp: &mut ResponseHeader, ctx: &RequestCtx) -> pingora::Result<()> {
        if let Some(d) = &ctx.ratelimit {
            // Numbers straight into header values (no string and no
            // validation pass per header on every answer).
            for (n, v) in ratelimit_headers(d) {
                resp.insert_header(n, http::HeaderValue::from(v))?;
            }
        }
        if let Some(p) = &ctx.flagged {
            resp.insert_header("x-tollgate-quota-exceeded", p.name.as_str())?;
        }
        Ok(())
    }
}

/// Charges a response's size to the bandwidth quotas the request passed.
pub fn charge_bandwidth(ctx: &RequestCtx, bytes: u64) {
    if ctx.bandwidth.is_empty() {
        return;
    }
    let now = now_ms();
    for (policy, key) in &ctx.bandwidth {
        if let Some(bw) = policy.bandwidth {
            policy.bytes.hit(*key, bw, bytes, true, now);
        }
    }
}

/// Counts one request against one limit: cluster-wide for Cluster-scoped
/// policies when a traffic manager is configured, else in this process.
async fn count(
    rt: &Shared,
    policy: &Arc<Policy>,
    key: u64,
    window: Window,
    count_over: bool,
    held: &mut Vec<Reservation>,
) -> Result<Decision, String> {
    if policy.scope == Scope::Cluster
        && let Some(tm) = &rt.traffic
    {
        match tm.hit(key, window).await {
            ClusterCount::Counted(d) => {
                if d.allowed {
                    held.push(Reservation { policy: policy.clone(), key, window, cluster: true });
                }
                return Ok(d);
            }
            ClusterCount::Unavailable => match tm.failure_mode {
                FailureMode::Open => {
                    rt.metrics.traffic_fallback.get_or_create(&ResultLabels { result: "open" }).inc();
                }
                FailureMode::Closed => {
                    rt.metrics.traffic_fallback.get_or_create(&ResultLabels { result: "closed" }).inc();
                    return Err(format!(
                        "cluster-wide throttling for policy {} is unavailable (traffic manager unreachable)",
                        policy.name
                    ));
                }
            },
        }
    }
    let d = policy.requests.hit(key, window, 1, count_over, now_ms());
    if d.allowed || count_over {
        held.push(Reservation { policy: policy.clone(), key, window, cluster: false });
    }
    Ok(d)
}

/// Gives back what a request refused by a later check had counted.
fn refund(rt: &Shared, held: Vec<Reservation>) {
    for r in held {
        match (&rt.traffic, r.cluster) {
            (Some(tm), true) => tm.refund(r.key, r.window),
            _ => r.policy.requests.refund(r.key, r.window, 1, now_ms()),
        }
    }
}

/// Counts the request against `policy`.
async fn check_policy(
    policy: &Arc<Policy>,
    req: &RequestHeader,
    ctx: &mut RequestCtx,
    rt: &Shared,
    held: &mut Vec<Reservation>,
) -> Verdict {
    let principal = ctx.principal.as_ref();
    let key: Vec<u8> = match policy.key_by {
        KeyBy::Api => Vec::new(),
        KeyBy::Consumer => principal.map(|p| p.application.clone().into_bytes()).unwrap_or_default(),
        KeyBy::ClientIp => ctx.client.ip.map(client_ip_key).unwrap_or_default(),
        KeyBy::Header => header(req, &policy.key_name).unwrap_or("").as_bytes().to_vec(),
        // Only verified claims count: a forged token must not mint its own
        // counter.
        KeyBy::Claim => principal.and_then(|p| p.claim(&policy.key_name)).unwrap_or_default().into_bytes(),
    };
    let (which, window) = {
        let header_fn = |n: &str| header(req, n);
        let claim_fn = |n: &str| principal.and_then(|p| p.claim(n));
        let facts = RequestFacts { client_ip: ctx.client.ip, header: &header_fn, claim: &claim_fn };
        policy.limit_for(&facts)
    };
    let now = now_ms();
    let id = policy.id.as_bytes();
    let count_over = !policy.stop_on_quota_reach;
    if let Some(bw) = policy.bandwidth {
        let k = key_hash(&[id, b"bytes", &key]);
        if let Some(d) = policy.bytes.peek_exhausted(k, bw, now) {
            if policy.stop_on_quota_reach {
                return Verdict::Reject(d, format!("bandwidth quota of policy {} reached", policy.name));
            }
            ctx.flagged = Some(policy.clone());
        }
        ctx.bandwidth.push((policy.clone(), k));
    }
    if let Some(burst) = policy.burst {
        let d = match count(rt, policy, key_hash(&[id, b"burst", &key]), burst, count_over, held).await {
            Ok(d) => d,
            Err(why) => return Verdict::Unavailable(why),
        };
        if !d.allowed {
            if policy.stop_on_quota_reach {
                return Verdict::Reject(d, format!("spike arrest of policy {} reached", policy.name));
            }
            ctx.flagged = Some(policy.clone());
        }
    }
    let d = match count(rt, policy, key_hash(&[id, &[which as u8], &key]), window, count_over, held).await {
        Ok(d) => d,
        Err(why) => return Verdict::Unavailable(why),
    };
    if !d.allowed {
        if policy.stop_on_quota_reach {
            return Verdict::Reject(d, format!("quota of policy {} reached", policy.name));
        }
        ctx.flagged = Some(policy.clone());
    }
    Verdict::Pass(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::request::{Credential, OpMatch, Operation, Principal};
    use crate::pipeline::test_support::{request, runtime};
    use crate::store::keys::Environment;

    fn policy(rt: &Shared, name: &str, spec: &str) -> Arc<Policy> {
        let tp: tollgate_crds::ThrottlePolicy = serde_saphyr::from_str(&format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: ThrottlePolicy\nmetadata: {{name: {name}, namespace: ns}}\nspec: {spec}\n"
        ))
        .unwrap();
        Arc::new(Policy::compile(&tp, &rt.counters, rt.max_keys).unwrap())
    }

    fn principal(app: &str, tier: Option<&str>) -> Principal {
        Principal {
            credential: Credential::ApiKey,
            application: app.into(),
            environment: Environment::Production,
            tier: tier.map(str::to_string),
            client_id: None,
            token: None,
            client_cert: None,
        }
    }

    fn ctx_for(op_policy: Option<&Arc<Policy>>, principal: Option<Principal>) -> RequestCtx {
        let op = Arc::new(Operation { name: "".into(), policy: op_policy.cloned(), scopes: Vec::new() });
        RequestCtx { operation: OpMatch::Path { allow: "GET".into(), op: Some(op) }, principal, ..Default::default() }
    }

    async fn status(step: &ThrottleStep, rt: &Shared, ctx: &mut RequestCtx) -> u16 {
        let req = request("GET", "/a/v1/x", &[]);
        match step.on_request(&req, ctx, rt).await {
            Flow::Next => 200,
            Flow::Reply(r) => r.status,
            Flow::Empty { status, .. } => status,
            Flow::Stored(s) => s.status,
            Flow::ReadBody { .. } => 0,
        }
    }

    #[tokio::test]
    async fn a_request_refused_by_the_tier_consumes_no_api_or_operation_quota() {
        let rt = runtime();
        let api = policy(&rt, "api", "{limit: {requests: 3, per: 1m}}");
        let op = policy(&rt, "op", "{limit: {requests: 3, per: 1m}}");
        let gold = policy(&rt, "gold", "{limit: {requests: 1, per: 1m}, keyBy: Consumer}");
        let tiers = Tiers { own: Some(Arc::new([("gold".into(), gold)].into_iter().collect())), manager: None };
        let step = ThrottleStep::new(Some(api.clone()), Some(tiers));

        assert_eq!(status(&step, &rt, &mut ctx_for(Some(&op), Some(principal("a", Some("gold"))))).await, 200);
        for _ in 0..5 {
            assert_eq!(status(&step, &rt, &mut ctx_for(Some(&op), Some(principal("a", Some("gold"))))).await, 429);
        }
        // Application b still finds the API's and the operation's two left.
        assert_eq!(status(&step, &rt, &mut ctx_for(Some(&op), Some(principal("b", Some("gold"))))).await, 200);
        assert_eq!(status(&step, &rt, &mut ctx_for(Some(&op), Some(principal("b", Some("gold"))))).await, 429);
        let mut ctx = ctx_for(Some(&op), Some(principal("c", None)));
        assert_eq!(status(&step, &rt, &mut ctx).await, 200, "the shared quotas had exactly one left");
        assert_eq!(ctx.ratelimit.unwrap().remaining, 0);
        assert_eq!(status(&step, &rt, &mut ctx_for(Some(&op), Some(principal("c", None)))).await, 429);
    }

    #[tokio::test]
    async fn a_subscription_to_a_tier_that_is_not_deployed_is_refused_not_unthrottled() {
        let rt = runtime();
        let gold = policy(&rt, "gold", "{limit: {requests: 100, per: 1m}, keyBy: Consumer}");
        let tiers = Tiers { own: Some(Arc::new([("gold".into(), gold)].into_iter().collect())), manager: None };
        let step = ThrottleStep::new(None, Some(tiers));
        assert_eq!(status(&step, &rt, &mut ctx_for(None, Some(principal("a", Some("gold"))))).await, 200);
        assert_eq!(status(&step, &rt, &mut ctx_for(None, Some(principal("a", Some("platinum"))))).await, 503);
        assert_eq!(status(&step, &rt, &mut ctx_for(None, Some(principal("a", None)))).await, 200, "no tier: none");
    }

    #[tokio::test]
    async fn consumers_are_keyed_by_the_verified_application_and_claims_only_when_verified() {
        let rt = runtime();
        let per_app = policy(&rt, "per-app", "{limit: {requests: 1, per: 1m}, keyBy: Consumer}");
        let step = ThrottleStep::new(Some(per_app), None);
        assert_eq!(status(&step, &rt, &mut ctx_for(None, Some(principal("a", None)))).await, 200);
        assert_eq!(status(&step, &rt, &mut ctx_for(None, Some(principal("a", None)))).await, 429);
        assert_eq!(status(&step, &rt, &mut ctx_for(None, Some(principal("b", None)))).await, 200);

        let per_sub = policy(&rt, "per-sub", "{limit: {requests: 1, per: 1m}, keyBy: Claim, keyName: sub}");
        let step = ThrottleStep::new(Some(per_sub), None);
        let with_sub = |sub: &str| {
            let mut p = principal("app", None);
            let mut claims = serde_json::Map::new();
            claims.insert("sub".into(), sub.into());
            p.credential = Credential::OAuth2;
            p.token = Some(Arc::new(crate::oauth::VerifiedToken {
                issuer_id: "ns/idp".into(),
                claims,
                client_id: None,
                scopes: Vec::new(),
                x5t_s256: None,
                expires: 0,
                issuer_fingerprint: [0; 32],
                keys: None,
            }));
            ctx_for(None, Some(p))
        };
        assert_eq!(status(&step, &rt, &mut with_sub("alice")).await, 200);
        assert_eq!(status(&step, &rt, &mut with_sub("alice")).await, 429);
        assert_eq!(status(&step, &rt, &mut with_sub("bob")).await, 200);
    }

    #[tokio::test]
    async fn over_quota_without_stop_is_flagged_and_reported() {
        let rt = runtime();
        let soft = policy(&rt, "soft", "{limit: {requests: 1, per: 1m}, stopOnQuotaReach: false}");
        let step = ThrottleStep::new(Some(soft), None);
        let mut ctx = ctx_for(None, None);
        assert_eq!(status(&step, &rt, &mut ctx).await, 200);
        assert!(ctx.flagged.is_none());
        let mut ctx = ctx_for(None, None);
        assert_eq!(status(&step, &rt, &mut ctx).await, 200);
        let mut resp = ResponseHeader::build(200, None).unwrap();
        step.on_response(&mut resp, &ctx).unwrap();
        assert_eq!(resp.headers.get("x-tollgate-quota-exceeded").unwrap(), "soft");
        assert_eq!(resp.headers.get("ratelimit-remaining").unwrap(), "0");
        assert!(rt.metrics.encode().contains("policy=\"ns/soft\",action=\"flagged\""));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_mapped_ipv4_as_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_ip_key(ip("2001:db8:1:2::1")), client_ip_key(ip("2001:db8:1:2:ffff:1:2:3")));
        assert_ne!(client_ip_key(ip("2001:db8:1:2::1")), client_ip_key(ip("2001:db8:1:3::1")));
        assert_eq!(client_ip_key(ip("::ffff:203.0.113.7")), client_ip_key(ip("203.0.113.7")));
        assert_ne!(client_ip_key(ip("203.0.113.7")), client_ip_key(ip("203.0.113.8")));
    }
}
