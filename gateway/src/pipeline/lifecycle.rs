//! Pipeline step `lifecycle`: a Blocked API answers 503 without reaching
//! its backend; a Deprecated one is served with `Deprecation: true`
//! (RFC 9745 draft form). Published APIs do not run this step; Created and
//! Retired ones are not routed at all.

use pingora::http::ResponseHeader;
use tollgate_crds::api_deployment::Lifecycle;

use super::Flow;
use crate::respond::Reply;

/// The compiled `lifecycle` step.
pub struct LifecycleStep {
    blocked: bool,
    deprecated: bool,
    context: String,
}

impl LifecycleStep {
    /// The step for `lifecycle`, None when it has nothing to do.
    pub fn new(lifecycle: Lifecycle, context: &str) -> Option<LifecycleStep> {
        let blocked = lifecycle == Lifecycle::Blocked;
        let deprecated = lifecycle == Lifecycle::Deprecated;
        (blocked || deprecated).then(|| LifecycleStep { blocked, deprecated, context: context.to_string() })
    }

    pub fn on_request(&self) -> Flow {
        if self.blocked {
            return Flow::Reply(Reply::new(503, "api_blocked", format!("API {} is blocked", self.context)));
        }
        Flow::Next
    }

    pub fn on_response(&self, resp: &mut ResponseHeader) -> pingora::Result<()> {
        if self.deprecated {
            resp.insert_header("deprecation", "true")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_refuses_deprecated_marks_published_needs_no_step() {
        assert!(LifecycleStep::new(Lifecycle::Published, "/a").is_none());
        match LifecycleStep::new(Lifecycle::Blocked, "/a").unwrap().on_request() {
            Flow::Reply(r) => assert_eq!((r.status, r.code), (503, "api_blocked")),
            _ => panic!("blocked must answer"),
        }
        let step = LifecycleStep::new(Lifecycle::Deprecated, "/a").unwrap();
        assert!(matches!(step.on_request(), Flow::Next));
        let mut resp = ResponseHeader::build(200, None).unwrap();
        step.on_response(&mut resp).unwrap();
        assert_eq!(resp.headers.get("deprecation").unwrap(), "true");
    }
}
