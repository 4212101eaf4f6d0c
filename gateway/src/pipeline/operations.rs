//! Pipeline step `operations`: when an API declares `spec.operations`, only
//! those paths (404 otherwise) and methods (405 with Allow otherwise; a
//! plain OPTIONS is answered 204 with Allow) reach the backend. The match
//! itself runs before the first step, so CORS preflights and throttling see
//! the operation too.

use std::collections::BTreeMap;
use std::sync::Arc;

use tollgate_crds::api_deployment::Operation as OperationSpec;

use super::Flow;
use super::request::{OpMatch, Operation, RequestCtx};
use crate::policy::Policy;
use crate::respond::Reply;

/// The operations declared at one path template.
struct PathOps {
    methods: Vec<(http::Method, Arc<Operation>)>,
    /// Value of the Allow header.
    allow: Arc<str>,
}

/// An API's declared operations, by path template.
pub struct Operations {
    router: matchit::Router<usize>,
    paths: Vec<PathOps>,
}

impl Operations {
    /// Compiles `ops` (with each one's resolved ThrottlePolicy, in order);
    /// None when the API declares none.
    pub fn compile(ops: &[OperationSpec], policies: Vec<Option<Arc<Policy>>>) -> Result<Option<Operations>, String> {
        if ops.is_empty() {
            return Ok(None);
        }
        let mut by_path: BTreeMap<&str, Vec<(http::Method, Arc<Operation>)>> = BTreeMap::new();
        for (op, policy) in ops.iter().zip(policies.into_iter().chain(std::iter::repeat(None))) {
            let method = http::Method::from_bytes(op.method.as_str().as_bytes()).map_err(|e| e.to_string())?;
            let name: Arc<str> = format!("{} {}", method, op.path).into();
            let compiled = Arc::new(Operation { name, policy, scopes: op.scopes.clone() });
            by_path.entry(op.path.as_str()).or_default().push((method, compiled));
        }
        let mut router = matchit::Router::new();
        let mut paths = Vec::new();
        for (path, methods) in by_path {
            router.insert(path, paths.len()).map_err(|e| format!("operation path {path:?}: {e}"))?;
            let mut names: Vec<&str> = methods.iter().map(|(m, _)| m.as_str()).collect();
            if !names.contains(&"OPTIONS") {
                names.push("OPTIONS");
            }
            paths.push(PathOps { allow: names.join(", ").into(), methods });
        }
        Ok(Some(Operations { router, paths }))
    }

    /// Whether any operation has its own ThrottlePolicy.
    pub fn has_policies(&self) -> bool {
        self.paths.iter().flat_map(|p| &p.methods).any(|(_, o)| o.policy.is_some())
    }

    /// Whether any operation lists OAuth2 scopes.
    pub fn has_scopes(&self) -> bool {
        self.paths.iter().flat_map(|p| &p.methods).any(|(_, o)| !o.scopes.is_empty())
    }

    /// The declared operation for `method` at `path` (HEAD falls back to GET).
    pub fn lookup(&self, path: &str, method: &http::Method) -> OpMatch {
        let Ok(found) = self.router.at(path) else { return OpMatch::NoPath };
        let p = &self.paths[*found.value];
        let op = p
            .methods
            .iter()
            .find(|(m, _)| m == method || (method == http::Method::HEAD && m == http::Method::GET))
            .map(|(_, o)| o.clone());
        OpMatch::Path { allow: p.allow.clone(), op }
    }
}

/// The compiled `operations` step.
pub struct OperationsStep;

impl OperationsStep {
    pub fn on_request(&self, req: &pingora::http::RequestHeader, ctx: &RequestCtx) -> Flow {
        let path = if ctx.rest.is_empty() { "/" } else { ctx.rest.as_str() };
        match &ctx.operation {
            OpMatch::Undeclared | OpMatch::Path { op: Some(_), .. } => Flow::Next,
            OpMatch::NoPath => {
                Flow::Reply(Reply::new(404, "not_found", format!("no operation of this API matches {path}")))
            }
            OpMatch::Path { allow, op: None } if req.method == http::Method::OPTIONS => {
                Flow::Empty { status: 204, headers: vec![("allow".into(), allow.to_string())] }
            }
            OpMatch::Path { allow, op: None } => Flow::Reply(
                Reply::new(405, "method_not_allowed", format!("{} is not allowed on {path}", req.method))
                    .header("allow", allow.to_string()),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::test_support::{request, spec};

    fn ops() -> Operations {
        let s = spec(
            "apiManagerRef: {name: m}\ncontext: /a\nversion: v1\nbackend: {endpoints: [{url: 'http://127.0.0.1:1'}]}\n\
             operations: [{method: GET, path: '/accounts/{id}', scopes: [accounts]}, {method: POST, path: /payments}]\n",
        );
        Operations::compile(&s.operations, vec![None, None]).unwrap().unwrap()
    }

    #[test]
    fn lookup_matches_templates_and_methods() {
        let o = ops();
        let get = http::Method::GET;
        assert_eq!(o.lookup("/accounts/42", &get).operation().unwrap().scopes, ["accounts"]);
        assert!(o.lookup("/accounts/42", &http::Method::HEAD).operation().is_some(), "HEAD is GET");
        assert!(matches!(o.lookup("/accounts/42/x", &get), OpMatch::NoPath));
        match o.lookup("/payments", &get) {
            OpMatch::Path { allow, op: None } => assert_eq!(&*allow, "POST, OPTIONS"),
            _ => panic!("path matches, method does not"),
        }
    }

    #[test]
    fn the_step_refuses_undeclared_paths_and_methods() {
        let o = ops();
        let answer = |method: &str, path: &str| {
            let req = request(method, path, &[]);
            let ctx = RequestCtx { rest: path.into(), operation: o.lookup(path, &req.method), ..Default::default() };
            OperationsStep.on_request(&req, &ctx)
        };
        assert!(matches!(answer("GET", "/accounts/1"), Flow::Next));
        assert!(matches!(answer("GET", "/nope"), Flow::Reply(r) if r.status == 404));
        match answer("DELETE", "/payments") {
            Flow::Reply(r) => {
                assert_eq!(r.status, 405);
                assert!(r.headers.contains(&("allow".into(), "POST, OPTIONS".into())));
            }
            _ => panic!("405 expected"),
        }
        assert!(matches!(answer("OPTIONS", "/payments"), Flow::Empty { status: 204, .. }));
    }
}
