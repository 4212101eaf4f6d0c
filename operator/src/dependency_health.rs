//! What the ApiManager's status says about the outside services its pods
//! depend on (the external database, Redis of the traffic manager), as
//! each pod itself reports them on its management port
//! (`GET /status/dependencies`). Pure: the controller fetches the answers.

use serde_json::Value;

/// The longest error quoted from a pod.
const ERROR_CHARS: usize = 200;

/// One line per pod and dependency it cannot reach ("pod apim-0: database
/// unreachable: ..."), sorted by pod name. Answers that are not the
/// expected JSON are ignored (the pod's readiness covers a pod that does
/// not answer at all).
pub fn problems(answers: &[(String, Value)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut sorted: Vec<&(String, Value)> = answers.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (pod, body) in sorted {
        if let Some(db) = body.get("database").filter(|d| d.is_object())
            && db["state"].as_str() != Some("ok")
        {
            out.push(format!(
                "pod {pod}: database unreachable: {}",
                short(db["error"].as_str().unwrap_or("no answer"))
            ));
        }
        if let Some(tm) = body.get("trafficManager").filter(|t| t.is_object())
            && tm["state"].as_str() != Some("ok")
        {
            let mode = tm["failureMode"].as_str().unwrap_or("open").to_ascii_lowercase();
            let effect = if mode == "closed" {
                "limited APIs are refused (failure mode closed)"
            } else {
                "limits are counted per pod (failure mode open)"
            };
            out.push(format!(
                "pod {pod}: Redis (traffic manager) unreachable, {effect}: {}",
                short(tm["error"].as_str().unwrap_or("no answer"))
            ));
        }
    }
    out
}

fn short(text: &str) -> String {
    crate::pod_health::one_line(text, ERROR_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn healthy_pods_and_pods_without_those_dependencies_say_nothing() {
        let answers = vec![
            ("apim-0".to_string(), json!({"database": {"state": "ok"}, "trafficManager": {"state": "ok"}})),
            ("apim-1".to_string(), json!({"database": null, "trafficManager": null})),
            ("apim-2".to_string(), json!("not the expected document")),
        ];
        assert!(problems(&answers).is_empty());
    }

    #[test]
    fn each_unreachable_dependency_is_named_with_its_pod_and_error_sorted_by_pod() {
        let answers = vec![
            (
                "apim-gateway-production-0".to_string(),
                json!({"database": null, "trafficManager": {"state": "degraded", "failureMode": "Closed",
                       "error": "connection refused\n(os error 111)"}}),
            ),
            (
                "apim-control-plane-0".to_string(),
                json!({"database": {"state": "unreachable", "error": "pool timed out while waiting for an open connection"},
                       "trafficManager": {"state": "degraded", "failureMode": "Open", "error": "timed out"}}),
            ),
        ];
        assert_eq!(
            problems(&answers),
            vec![
                "pod apim-control-plane-0: database unreachable: pool timed out while waiting for an open connection",
                "pod apim-control-plane-0: Redis (traffic manager) unreachable, limits are counted per pod (failure \
                 mode open): timed out",
                "pod apim-gateway-production-0: Redis (traffic manager) unreachable, limited APIs are refused \
                 (failure mode closed): connection refused (os error 111)",
            ]
        );
    }

    #[test]
    fn long_errors_are_cut() {
        let long = "x".repeat(1000);
        let answers = vec![("p".to_string(), json!({"database": {"state": "unreachable", "error": long}}))];
        let line = &problems(&answers)[0];
        assert!(line.len() < 260 && line.ends_with("..."), "{line}");
    }
}
