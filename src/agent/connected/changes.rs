//! What the connected loop tells the reconciler of each step's desired set
//! ([`Reconciler::tell`](crate::agent::reconcile::Reconciler::tell)): the
//! names the answers' deltas touched since the step before, so the step
//! looks at those only. A complete set, the first step, and a set the loop
//! derived (tasks stopped while offline, a robot-local revert) change
//! apart from the answers: such a step, and the one after it, compare the
//! set whole.

use crate::agent::reconcile::Since;

pub struct Changes {
    since: Since,
    /// The last step's set was derived.
    derived_last: bool,
}

impl Default for Changes {
    fn default() -> Self {
        Changes {
            since: Since::Unknown,
            derived_last: true,
        }
    }
}

impl Changes {
    /// The set was replaced whole.
    pub fn complete(&mut self) {
        self.since = Since::Unknown;
    }

    /// A delta added, changed or removed tasks `names`.
    pub fn delta(&mut self, names: impl IntoIterator<Item = String>) {
        self.since.add(names);
    }

    /// What to tell the next step, whose set is the answers' own or one
    /// the loop `derived` from it; the changes start anew after it.
    pub fn for_step(&mut self, derived: bool) -> Since {
        let since = std::mem::replace(&mut self.since, Since::Touched(Default::default()));
        let derived_before = std::mem::replace(&mut self.derived_last, derived);
        match derived || derived_before {
            true => Since::Unknown,
            false => since,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touched(names: &[&str]) -> Since {
        Since::Touched(names.iter().map(|n| n.to_string()).collect())
    }

    #[test]
    fn a_step_is_told_what_changed_since_the_step_before_and_all_of_it_around_a_derived_set() {
        let mut changes = Changes::default();
        assert_eq!(changes.for_step(false), Since::Unknown, "the first step");
        assert_eq!(changes.for_step(false), touched(&[]), "nothing new");
        changes.delta(["b".to_string()]);
        changes.delta(["a".to_string()]);
        assert_eq!(changes.for_step(false), touched(&["a", "b"]));
        assert_eq!(changes.for_step(false), touched(&[]));
        changes.complete();
        changes.delta(["c".to_string()]);
        assert_eq!(changes.for_step(false), Since::Unknown, "a complete set");
        // A derived set, and the first step back on the answers' own.
        changes.delta(["d".to_string()]);
        assert_eq!(changes.for_step(true), Since::Unknown);
        assert_eq!(changes.for_step(true), Since::Unknown);
        assert_eq!(changes.for_step(false), Since::Unknown, "back from a derived set");
        changes.delta(["e".to_string()]);
        assert_eq!(changes.for_step(false), touched(&["e"]));
    }
}
