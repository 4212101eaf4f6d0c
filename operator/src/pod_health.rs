//! What the ApiManager's status says about its pods: the ones that cannot
//! run (crash loops, images that cannot be pulled, containers that cannot
//! be created, pods that cannot be scheduled), each named with the
//! kubelet's reason and the container's last words. Pure: the controller
//! lists the pods.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// Waiting reasons that mean the container will not run without a change.
const FAILING: [&str; 7] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// The longest container message quoted (the termination log can be long).
const MESSAGE_CHARS: usize = 300;

/// One line per failing pod ("pod apim-0: CrashLoopBackOff, restarted 4
/// times, last exit code 1: opening the database ..."), sorted by pod name.
pub fn failing_pods(pods: &[Pod]) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let status = pod.status.as_ref();
        let containers = status
            .into_iter()
            .flat_map(|s| s.init_container_statuses.iter().flatten().chain(s.container_statuses.iter().flatten()));
        if let Some(line) = containers.filter_map(container_problem).next() {
            out.push((name.clone(), format!("pod {name}: {line}")));
            continue;
        }
        let unschedulable = status.and_then(|s| s.conditions.as_ref()).and_then(|cs| {
            cs.iter().find(|c| {
                c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
            })
        });
        if let Some(c) = unschedulable {
            out.push((
                name.clone(),
                format!("pod {name}: unschedulable: {}", short(c.message.as_deref().unwrap_or(""))),
            ));
        }
    }
    out.sort();
    out.into_iter().map(|(_, line)| line).collect()
}

/// Why one container cannot run, if it cannot.
fn container_problem(c: &ContainerStatus) -> Option<String> {
    let waiting = c.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref().filter(|r| FAILING.contains(r))?;
    let mut line = format!("container {} {reason}", c.name);
    if c.restart_count > 0 {
        line.push_str(&format!(", restarted {} times", c.restart_count));
    }
    if let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
        line.push_str(&format!(", last exit code {}", t.exit_code));
        if let Some(m) = t.message.as_deref().filter(|m| !m.trim().is_empty()) {
            line.push_str(&format!(": {}", short(m)));
        } else if let Some(r) = &t.reason {
            line.push_str(&format!(" ({r})"));
        }
    } else if let Some(m) = waiting.message.as_deref().filter(|m| !m.trim().is_empty()) {
        line.push_str(&format!(": {}", short(m)));
    }
    Some(line)
}

/// `text` on one line, cut to [`MESSAGE_CHARS`] characters.
fn short(text: &str) -> String {
    one_line(text, MESSAGE_CHARS)
}

/// `text` on one line, cut to `max_chars` characters (with "...").
pub(crate) fn one_line(text: &str, max_chars: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}...", &one_line[..i]),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn crash_loops_and_pull_failures_are_named_with_the_last_words() {
        let pods = [
            pod(json!({ "metadata": { "name": "apim-1" }, "status": { "containerStatuses": [{
                "name": "gateway", "image": "tollgate-gateway:1", "imageID": "", "ready": false, "restartCount": 4,
                "state": { "waiting": { "reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container" } },
                "lastState": { "terminated": { "exitCode": 1, "reason": "Error",
                    "message": "opening the database folder /var/lib/tollgate/database: Permission denied (os error 13)\n" } } }] } })),
            pod(json!({ "metadata": { "name": "apim-0" }, "status": { "containerStatuses": [{
                "name": "gateway", "image": "tollgate-gateway:nope", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "waiting": { "reason": "ImagePullBackOff", "message": "Back-off pulling image \"tollgate-gateway:nope\"" } } }] } })),
            pod(json!({ "metadata": { "name": "apim-2" }, "status": { "containerStatuses": [{
                "name": "gateway", "image": "tollgate-gateway:1", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "waiting": { "reason": "ContainerCreating" } } }] } })),
            pod(json!({ "metadata": { "name": "apim-3" }, "status": { "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient cpu." }] } })),
        ];
        assert_eq!(
            failing_pods(&pods),
            [
                "pod apim-0: container gateway ImagePullBackOff: Back-off pulling image \"tollgate-gateway:nope\"",
                "pod apim-1: container gateway CrashLoopBackOff, restarted 4 times, last exit code 1: opening the \
                 database folder /var/lib/tollgate/database: Permission denied (os error 13)",
                "pod apim-3: unschedulable: 0/1 nodes are available: 1 Insufficient cpu.",
            ]
        );
    }

    #[test]
    fn running_starting_and_deleted_pods_are_not_failing_and_long_messages_are_cut() {
        let running = pod(json!({ "metadata": { "name": "apim-0" }, "status": { "containerStatuses": [{
            "name": "gateway", "image": "i", "imageID": "", "ready": true, "restartCount": 1,
            "state": { "running": {} } }] } }));
        let mut deleted = pod(json!({ "metadata": { "name": "apim-1", "deletionTimestamp": "2026-12-07T00:00:00Z" },
            "status": { "containerStatuses": [{ "name": "gateway", "image": "i", "imageID": "", "ready": false,
            "restartCount": 9, "state": { "waiting": { "reason": "CrashLoopBackOff" } } }] } }));
        assert!(failing_pods(&[running, deleted.clone()]).is_empty());
        deleted.metadata.deletion_timestamp = None;
        deleted.status.as_mut().unwrap().container_statuses.as_mut().unwrap()[0].last_state =
            serde_json::from_value(json!({ "terminated": { "exitCode": 2, "message": "x".repeat(1000) } })).unwrap();
        let line = &failing_pods(&[deleted])[0];
        assert!(line.ends_with("...") && line.len() < 400, "{line}");
    }
}
