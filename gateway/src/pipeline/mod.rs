//! The request pipeline: the checks between routing and forwarding, compiled
//! per API at reload into a list of small steps, each in its own file and
//! testable alone.
//!
//! Order (a step is left out when the API does not need it):
//!
//! 1. `interaction`: the `x-fapi-interaction-id` round trip (openBanking).
//! 2. `cors`: CORS headers for every answer; preflights answered here.
//! 3. `lifecycle`: Blocked APIs answer 503; Deprecated ones say so.
//! 4. `operations`: paths and methods the API does not declare (404/405).
//! 5. `authn`: checks the credential the API asks for and produces the one
//!    verified [`request::Principal`] the later steps use.
//! 6. `authz`: the scopes the operation lists, for OAuth2 tokens.
//! 7. `tpp_roles`: PSD2 roles of the client certificate (openBanking).
//! 8. `throttle`: the API's, the operation's and the subscription tier's
//!    ThrottlePolicies, all or nothing.
//! 9. `read_body` (POST/PUT/PATCH, when a later step needs the body): the
//!    proxy reads the whole body (bounded) and resumes; only callers the
//!    earlier steps admitted make the gateway buffer a body.
//! 10. `jws`: the request body's detached signature (openBanking).
//! 11. `idempotency`: payment idempotency keys (openBanking).
//!
//! Response signing (openBanking.jws.signResponses) needs the whole answer
//! before its head is sent, so the proxy drives those exchanges itself.
//!
//! A step answers the request itself by returning [`Flow::Reply`] or
//! [`Flow::Empty`]; the proxy then writes that answer and nothing after the
//! step runs. On a backend response every step's `on_response` runs.

pub mod authn;
pub mod authz;
pub mod cors;
pub mod idempotency;
pub mod interaction;
pub mod jws;
pub mod lifecycle;
pub mod operations;
pub mod request;
pub mod throttle;
pub mod tpp_roles;

use std::sync::Arc;

use pingora::http::{RequestHeader, ResponseHeader};
use tollgate_crds::ApiDeploymentSpec;

use crate::policy::Policy;
use crate::respond::Reply;
use crate::runtime::Shared;
use request::RequestCtx;

/// What a step decided.
pub enum Flow {
    /// Go on with the next step (after the last: forward to the backend).
    Next,
    /// Answer with a JSON error (or other gateway answer).
    Reply(Reply),
    /// Answer with a bodiless response (preflights, OPTIONS).
    Empty { status: u16, headers: Vec<(String, String)> },
    /// Answer with a stored answer (an idempotent repeat).
    Stored(crate::store::idempotency::StoredResponse),
    /// The later steps need the whole request body: the proxy reads it
    /// into `RequestCtx::body` and resumes the pipeline at `resume`.
    ReadBody { resume: usize },
}

/// One compiled step.
pub enum Step {
    /// Marks where the request body is read (POST, PUT, PATCH): after
    /// authentication and throttling, so only admitted callers make the
    /// gateway buffer a body.
    ReadBody,
    Interaction(interaction::InteractionStep),
    TppRoles(tpp_roles::TppRolesStep),
    Jws(jws::VerifyStep),
    Idempotency(idempotency::IdempotencyStep),
    Cors(cors::CorsStep),
    Lifecycle(lifecycle::LifecycleStep),
    Operations(operations::OperationsStep),
    Authn(authn::AuthnStep),
    Authz(authz::AuthzStep),
    Throttle(throttle::ThrottleStep),
}

impl Step {
    /// The step's name (status pages, tests).
    pub fn name(&self) -> &'static str {
        match self {
            Step::ReadBody => "read_body",
            Step::Interaction(_) => "interaction",
            Step::TppRoles(_) => "tpp_roles",
            Step::Jws(_) => "jws",
            Step::Idempotency(_) => "idempotency",
            Step::Cors(_) => "cors",
            Step::Lifecycle(_) => "lifecycle",
            Step::Operations(_) => "operations",
            Step::Authn(_) => "authn",
            Step::Authz(_) => "authz",
            Step::Throttle(_) => "throttle",
        }
    }

    async fn on_request(&self, req: &mut RequestHeader, ctx: &mut RequestCtx, rt: &Shared) -> Flow {
        match self {
            // Answered by Pipeline::on_request itself.
            Step::ReadBody => Flow::Next,
            Step::Interaction(s) => s.on_request(req, ctx),
            Step::TppRoles(s) => s.on_request(ctx),
            Step::Jws(s) => s.on_request(req, ctx, rt).await,
            Step::Idempotency(s) => s.on_request(req, ctx, rt).await,
            Step::Cors(s) => s.on_request(req, ctx),
            Step::Lifecycle(s) => s.on_request(),
            Step::Operations(s) => s.on_request(req, ctx),
            Step::Authn(s) => s.on_request(req, ctx, rt).await,
            Step::Authz(s) => s.on_request(ctx),
            Step::Throttle(s) => s.on_request(req, ctx, rt).await,
        }
    }

    fn on_response(&self, resp: &mut ResponseHeader, ctx: &RequestCtx) -> pingora::Result<()> {
        match self {
            Step::Cors(s) => s.on_response(resp, ctx),
            Step::Lifecycle(s) => s.on_response(resp),
            Step::Throttle(s) => s.on_response(resp, ctx),
            Step::Interaction(s) => s.on_response(resp, ctx),
            Step::ReadBody
            | Step::Operations(_)
            | Step::Authn(_)
            | Step::Authz(_)
            | Step::TppRoles(_)
            | Step::Jws(_)
            | Step::Idempotency(_) => Ok(()),
        }
    }
}

/// What an API's pipeline is compiled from.
pub struct PipelineSpec<'a> {
    /// `namespace/name` of the ApiDeployment.
    pub api_id: &'a str,
    pub spec: &'a ApiDeploymentSpec,
    /// The API-level ThrottlePolicy.
    pub policy: Option<Arc<Policy>>,
    /// The ThrottlePolicy of each entry of `spec.operations`, in order.
    pub operation_policies: Vec<Option<Arc<Policy>>>,
    /// Where subscription tiers are looked up.
    pub tiers: throttle::Tiers,
    /// The issuers `security.oauth2` trusts (None without oauth2).
    pub oauth2: Option<authn::OAuth2>,
}

/// An API's compiled request pipeline.
pub struct Pipeline {
    operations: Option<operations::Operations>,
    steps: Vec<Step>,
    /// openBanking.jws.signResponses.
    pub signs_responses: bool,
}

impl Pipeline {
    /// Compiles the steps `input` needs, in pipeline order.
    pub fn compile(input: PipelineSpec<'_>) -> Result<Pipeline, String> {
        let s = input.spec;
        let operations = operations::Operations::compile(&s.operations, input.operation_policies)?;
        let mut steps = Vec::new();
        let ob = s.open_banking.clone().unwrap_or_default();
        if ob.interaction_id {
            steps.push(Step::Interaction(interaction::InteractionStep));
        }
        if let Some(c) = &s.cors {
            steps.push(Step::Cors(cors::CorsStep::new(c.clone())));
        }
        if let Some(l) = lifecycle::LifecycleStep::new(s.lifecycle, &s.context) {
            steps.push(Step::Lifecycle(l));
        }
        if operations.is_some() {
            steps.push(Step::Operations(operations::OperationsStep));
        }
        let oauth2 = input.oauth2.is_some();
        let authn = s.security.as_ref().and_then(|sec| authn::AuthnStep::new(input.api_id, sec, s, input.oauth2));
        let tiers = authn.is_some().then_some(input.tiers);
        if let Some(a) = authn {
            steps.push(Step::Authn(a));
            if oauth2 && operations.as_ref().is_some_and(|o| o.has_scopes()) {
                steps.push(Step::Authz(authz::AuthzStep));
            }
        }
        if !ob.tpp_roles.is_empty() {
            steps.push(Step::TppRoles(tpp_roles::TppRolesStep { allowed: ob.tpp_roles.clone() }));
        }
        let op_policies = operations.as_ref().is_some_and(|o| o.has_policies());
        if input.policy.is_some() || op_policies || tiers.is_some() {
            steps.push(Step::Throttle(throttle::ThrottleStep::new(input.policy, tiers)));
        }
        let jws = ob.jws.unwrap_or_default();
        if jws.verify_requests || ob.idempotency.is_some() {
            steps.push(Step::ReadBody);
        }
        if jws.verify_requests {
            steps.push(Step::Jws(jws::VerifyStep));
        }
        if let Some(i) = &ob.idempotency {
            let ttl = i.ttl.duration().ok_or_else(|| format!("invalid openBanking.idempotency.ttl {:?}", i.ttl.0))?;
            // A claim whose gateway went away is freed after the backend
            // timeout (and a margin), not after the whole TTL.
            let lease = s.backend.timeout.duration().unwrap_or(std::time::Duration::from_secs(60))
                + std::time::Duration::from_secs(30);
            steps.push(Step::Idempotency(idempotency::IdempotencyStep {
                api_id: input.api_id.to_string(),
                ttl,
                lease,
            }));
        }
        Ok(Pipeline { operations, steps, signs_responses: jws.sign_responses })
    }

    /// The steps' names in order.
    pub fn step_names(&self) -> Vec<&'static str> {
        self.steps.iter().map(Step::name).collect()
    }

    /// Runs the steps for a routed request (`ctx.rest` set), from step
    /// `from`, until one answers it or the body must be read first
    /// ([`Flow::ReadBody`]: the caller reads it and resumes).
    pub async fn on_request(&self, req: &mut RequestHeader, ctx: &mut RequestCtx, rt: &Shared, from: usize) -> Flow {
        if from == 0
            && let Some(ops) = &self.operations
        {
            let op_path = if ctx.rest.is_empty() { "/" } else { ctx.rest.as_str() };
            ctx.operation = ops.lookup(op_path, &req.method);
        }
        for (i, step) in self.steps.iter().enumerate().skip(from) {
            if matches!(step, Step::ReadBody) {
                if ctx.body.is_none() && jws::has_signed_body(&req.method) {
                    return Flow::ReadBody { resume: i + 1 };
                }
                continue;
            }
            match step.on_request(req, ctx, rt).await {
                Flow::Next => {}
                answer => return answer,
            }
        }
        Flow::Next
    }

    /// Lets every step adjust a backend response.
    pub fn on_response(&self, resp: &mut ResponseHeader, ctx: &RequestCtx) -> pingora::Result<()> {
        for step in &self.steps {
            step.on_response(resp, ctx)?;
        }
        Ok(())
    }

    /// After the response: charges its size to bandwidth quotas.
    pub fn on_logging(&self, ctx: &RequestCtx, response_bytes: u64) {
        throttle::charge_bandwidth(ctx, response_bytes);
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Building blocks for the steps' unit tests.

    use std::sync::Arc;

    use pingora::http::RequestHeader;

    use crate::runtime::Shared;

    /// Services as a gateway without store or traffic manager has them.
    pub fn runtime() -> Shared {
        let metrics = Arc::new(crate::metrics::Metrics::new());
        Shared {
            counters: crate::throttle::Registry::new(metrics.throttle_keys_refused.clone()),
            health: Default::default(),
            metrics,
            max_keys: 1000,
            store: None,
            traffic: None,
            dns: Arc::default(),
            gateway_group: None,
            environments: vec![crate::store::keys::Environment::Production, crate::store::keys::Environment::Sandbox],
            jwks: Arc::new(crate::oauth::jwks::JwksCache::with_fetcher(
                Arc::new(|_| Box::pin(async { Err("no network in unit tests".to_string()) })),
                Default::default(),
            )),
            tokens: Arc::default(),
            builtin: None,
            key_manager: None,
            key_manager_endpoints: false,
            analytics: None,
            analytics_api: false,
            portal: None,
            client_keys: Arc::new(crate::oauth::client_keys::ClientKeys::new(std::time::Duration::from_secs(5))),
        }
    }

    pub fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, uri.as_bytes(), None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    pub fn spec(yaml: &str) -> tollgate_crds::ApiDeploymentSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    fn compile(yaml: &str) -> Pipeline {
        let spec = spec(yaml);
        let operation_policies = vec![None; spec.operations.len()];
        Pipeline::compile(PipelineSpec {
            api_id: "ns/api",
            spec: &spec,
            policy: None,
            operation_policies,
            tiers: Default::default(),
            oauth2: spec.security.as_ref().and_then(|s| s.oauth2.as_ref()).map(|_| authn::OAuth2 {
                issuers: Vec::new(),
                audience: None,
                forward_token: false,
            }),
        })
        .unwrap()
    }

    const BASE: &str =
        "apiManagerRef: {name: m}\ncontext: /a\nversion: v1\nbackend: {endpoints: [{url: 'http://127.0.0.1:1'}]}\n";

    #[test]
    fn only_the_steps_an_api_needs_are_compiled_in_order() {
        assert!(compile(BASE).step_names().is_empty(), "a plain API runs no step");
        let all = format!(
            "{BASE}lifecycle: Deprecated\ncors: {{allowOrigins: ['https://a.example']}}\n\
             operations: [{{method: GET, path: /x, scopes: [accounts]}}]\nsecurity: {{apiKey: {{}}, oauth2: {{}}}}\n"
        );
        assert_eq!(compile(&all).step_names(), ["cors", "lifecycle", "operations", "authn", "authz", "throttle"]);
        let keys_only =
            format!("{BASE}operations: [{{method: GET, path: /x, scopes: [a]}}]\nsecurity: {{apiKey: {{}}}}\n");
        assert_eq!(compile(&keys_only).step_names(), ["operations", "authn", "throttle"], "no scopes without oauth2");
    }

    #[tokio::test]
    async fn open_banking_steps_run_in_order_and_the_body_is_read_only_after_admission() {
        let ob = format!(
            "{BASE}openBanking: {{interactionId: true, tppRoles: [PISP], idempotency: {{ttl: 1h}}, \
             jws: {{verifyRequests: true}}}}\n"
        );
        assert_eq!(compile(&ob).step_names(), ["interaction", "tpp_roles", "read_body", "jws", "idempotency"]);
        // No certificate: refused by the role check before any body is read.
        let rt = runtime();
        let p = compile(&ob);
        let mut ctx = RequestCtx::default();
        let mut req = request("POST", "/a/v1/x", &[]);
        assert!(matches!(p.on_request(&mut req, &mut ctx, &rt, 0).await, Flow::Reply(r) if r.status == 401));
        assert!(ctx.interaction_id.is_some(), "the error carries an interaction id");
        // Without the role step, a POST stops at read_body and resumes after it.
        let p = compile(&format!("{BASE}openBanking: {{idempotency: {{ttl: 1h}}}}\n"));
        let mut ctx = RequestCtx::default();
        assert!(matches!(p.on_request(&mut req, &mut ctx, &rt, 0).await, Flow::ReadBody { resume: 1 }));
        ctx.body = Some(bytes::Bytes::from_static(b"{}"));
        // Resumed with the body: the idempotency step answers (no key).
        assert!(matches!(p.on_request(&mut req, &mut ctx, &rt, 1).await, Flow::Reply(r) if r.status == 400));
        // A GET needs no body.
        let mut get = request("GET", "/a/v1/x", &[]);
        assert!(matches!(p.on_request(&mut get, &mut RequestCtx::default(), &rt, 0).await, Flow::Next));
    }

    #[tokio::test]
    async fn a_step_that_answers_stops_the_pipeline() {
        let rt = runtime();
        let p = compile(&format!("{BASE}operations: [{{method: GET, path: /x}}]\nsecurity: {{apiKey: {{}}}}\n"));
        let mut ctx = RequestCtx { rest: "/nope".into(), ..Default::default() };
        let mut req = request("GET", "/a/v1/nope", &[]);
        match p.on_request(&mut req, &mut ctx, &rt, 0).await {
            Flow::Reply(r) => assert_eq!(r.status, 404),
            _ => panic!("expected 404"),
        }
        // The operation matched, so authentication ran next and refused.
        let mut ctx = RequestCtx { rest: "/x".into(), ..Default::default() };
        let mut req = request("GET", "/a/v1/x", &[]);
        match p.on_request(&mut req, &mut ctx, &rt, 0).await {
            Flow::Reply(r) => assert_eq!((r.status, r.message.as_str()), (401, "an API key is required")),
            _ => panic!("expected 401"),
        }
        assert!(ctx.principal.is_none());
    }
}
