//! ThrottlePolicy reconciler: checks what the schema cannot (IP ranges) and
//! reports Accepted. Artifacts that embed a policy are re-synced by the
//! ApiDeployment controller, which watches policies.

use std::sync::Arc;

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;
use tollgate_crds::{API_VERSION, ThrottlePolicy, conditions, throttle_policy::ThrottlePolicyStatus};

use super::{Context, FIELD_MANAGER};
use crate::{error::Result, plan, status};

const CONTROLLER: &str = "throttlepolicy";

pub async fn reconcile(p: Arc<ThrottlePolicy>, ctx: Arc<Context>) -> Result<Action> {
    ctx.started(CONTROLLER, &*p);
    if !ctx.watched(p.namespace().as_deref()) {
        return Ok(Action::await_change());
    }
    let _timer = ctx.metrics.start(CONTROLLER);
    let verdict = plan::check_policy(&p);
    let previous = p.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let generation = p.metadata.generation;
    let new = ThrottlePolicyStatus {
        observed_generation: generation,
        conditions: vec![status::condition(previous, conditions::ACCEPTED, &verdict, generation)],
    };
    let unchanged = p.status.as_ref().is_some_and(|s| {
        s.observed_generation == new.observed_generation && status::same_conditions(&s.conditions, &new.conditions)
    });
    if !unchanged {
        let api: Api<ThrottlePolicy> = Api::namespaced(ctx.client.clone(), &p.namespace().unwrap_or_default());
        let patch = json!({ "apiVersion": API_VERSION, "kind": "ThrottlePolicy", "status": new });
        ctx.may_write()?;
        api.patch_status(&p.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
        if !verdict.ok {
            ctx.event(&*p, true, verdict.reason, verdict.message.clone()).await;
        }
    }
    ctx.failures.reset(&super::failure_key("tp", &*p));
    Ok(Action::await_change())
}

pub fn error_policy(p: Arc<ThrottlePolicy>, error: &crate::error::Error, ctx: Arc<Context>) -> Action {
    super::error_policy(&*p, error, &ctx, CONTROLLER, "tp")
}
