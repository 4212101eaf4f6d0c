//! Standard `metav1.Condition`s: a new condition keeps the previous
//! lastTransitionTime while its status does not change.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

use crate::plan::Verdict;

/// The condition `type_` for `verdict`, carrying over the transition time
/// from `previous` when the status is unchanged.
pub fn condition(previous: &[Condition], type_: &str, verdict: &Verdict, generation: Option<i64>) -> Condition {
    let status = if verdict.ok { "True" } else { "False" };
    let last = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: verdict.reason.to_string(),
        message: truncate(&verdict.message, 1024),
        last_transition_time: last,
        observed_generation: generation,
    }
}

/// Whether two condition lists say the same thing (ignoring transition times).
pub fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter().all(|x| {
            b.iter().any(|y| {
                x.type_ == y.type_
                    && x.status == y.status
                    && x.reason == y.reason
                    && x.message == y.message
                    && x.observed_generation == y.observed_generation
            })
        })
}

/// The condition of a type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_survives_while_status_is_unchanged() {
        let first = condition(&[], "Ready", &Verdict::no("Waiting", "a"), Some(1));
        let t0 = first.last_transition_time.clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let again = condition(std::slice::from_ref(&first), "Ready", &Verdict::no("Other", "b"), Some(2));
        assert_eq!(again.last_transition_time, t0, "same status keeps the time");
        assert_eq!((again.reason.as_str(), again.observed_generation), ("Other", Some(2)));
        let flipped = condition(&[again], "Ready", &Verdict::yes("Ok", "c"), Some(2));
        assert_ne!(flipped.last_transition_time, t0);
        assert_eq!(flipped.status, "True");
    }

    #[test]
    fn comparison_ignores_times_only() {
        let a = condition(&[], "Ready", &Verdict::yes("Ok", "m"), Some(1));
        let mut b = a.clone();
        b.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        assert!(same_conditions(std::slice::from_ref(&a), &[b.clone()]));
        b.message = "other".into();
        assert!(!same_conditions(&[a], &[b]));
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(2000);
        let c = condition(&[], "X", &Verdict::no("R", long), None);
        assert!(c.message.len() <= 1024 + "…".len());
    }
}
