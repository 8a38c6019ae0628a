//! Who decides a Robot's labels. An operator labels robots (`kubectl label
//! robot`, metadata.labels); an agent reports labels of its own
//! (`--labels`, spec.labels). Labels under the project's domains
//! (`k8s4r.io/`, `robot.k8s4r.io/`, any `*.k8s4r.io/`) are operator-only:
//! a robot's claim to one is dropped, so a selector on them (say
//! `k8s4r.io/env: production`) cannot be joined by a robot that says so
//! itself. Where both set a key, the operator's value wins.

use std::collections::BTreeMap;

/// Is `key` under a domain only operators may label robots with?
pub fn is_operator_only(key: &str) -> bool {
    key.split_once('/')
        .is_some_and(|(domain, _)| domain == "k8s4r.io" || domain.ends_with(".k8s4r.io"))
}

/// A robot's claimed labels split into (kept, dropped operator-only keys).
pub fn split_claim(claimed: &BTreeMap<String, String>) -> (BTreeMap<String, String>, Vec<String>) {
    let (dropped, kept): (BTreeMap<_, _>, BTreeMap<_, _>) = claimed
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .partition(|(k, _)| is_operator_only(k));
    (kept, dropped.into_keys().collect())
}

/// The labels selectors see: the robot's own (minus operator-only keys),
/// then the operator's over them.
pub fn effective(operator: &BTreeMap<String, String>, robot: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = robot
        .iter()
        .filter(|(k, _)| !is_operator_only(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.extend(operator.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_projects_domains_are_operator_only() {
        for key in ["k8s4r.io/env", "robot.k8s4r.io/job", "fleet.k8s4r.io/x"] {
            assert!(is_operator_only(key), "{key}");
        }
        for key in ["env", "example.com/k8s4r.io", "notk8s4r.io/x", "k8s4r.io.evil.com/x"] {
            assert!(!is_operator_only(key), "{key}");
        }
    }

    #[test]
    fn a_robot_cannot_claim_or_override_what_the_operator_decides() {
        let claim = map(&[("k8s4r.io/env", "production"), ("zone", "lab"), ("arch", "arm64")]);
        let (kept, dropped) = split_claim(&claim);
        assert_eq!(kept, map(&[("zone", "lab"), ("arch", "arm64")]));
        assert_eq!(dropped, ["k8s4r.io/env"]);
        let operator = map(&[("zone", "hall-2"), ("k8s4r.io/env", "staging")]);
        assert_eq!(
            effective(&operator, &claim),
            map(&[("zone", "hall-2"), ("arch", "arm64"), ("k8s4r.io/env", "staging")])
        );
    }
}
