//! Who decides a Robot's labels. A Robot has one label set,
//! `metadata.labels`: what selectors match and what `kubectl label robot`
//! edits. Labels declared in `spec.labels` (an agent's `--labels`, which
//! it reports when it registers, or the original CRD's manifests) land
//! there too; `spec.labels` keeps what was declared, so the server can tell
//! declared keys from the operator's. Labels under the project's domains
//! (`k8s4r.io/`, `robot.k8s4r.io/`, any `*.k8s4r.io/`) are operator-only: a
//! robot's claim to one is dropped, so a selector on them (say
//! `k8s4r.io/env: production`) cannot be joined by a robot that says so
//! itself. Where the operator has set a key to another value than the
//! declared one, the operator's value wins.

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

/// The Robot's labels after its declared labels change from `previous`
/// to `declared`, given its labels now (`current`). A declared key is set
/// unless the operator changed it from what was declared before; a key
/// no longer declared goes unless the operator changed it. (A key the
/// operator removed comes back when it is declared again, as a kubelet's
/// node labels do when it registers.)
pub fn merge_report(
    current: &BTreeMap<String, String>,
    previous: &BTreeMap<String, String>,
    reported: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let agents = |k: &String| current.get(k).is_none_or(|v| previous.get(k) == Some(v));
    let mut labels = current.clone();
    for k in previous.keys() {
        if !reported.contains_key(k) && current.contains_key(k) && agents(k) {
            labels.remove(k);
        }
    }
    for (k, v) in reported {
        if agents(k) {
            labels.insert(k.clone(), v.clone());
        }
    }
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
        // First registration: the kept claim is the label set.
        assert_eq!(merge_report(&map(&[]), &map(&[]), &kept), kept);
        // The operator relabels zone and adds one; the declared set changes
        // (arch dropped, gpu added).
        let current = map(&[("zone", "hall-2"), ("arch", "arm64"), ("k8s4r.io/env", "staging")]);
        let again = map(&[("zone", "lab2"), ("gpu", "yes")]);
        assert_eq!(
            merge_report(&current, &kept, &again),
            map(&[("zone", "hall-2"), ("gpu", "yes"), ("k8s4r.io/env", "staging")])
        );
    }
}
