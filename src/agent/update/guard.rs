//! The new agent's probation: every start of a freshly installed version is
//! counted in `update/pending.json` before anything else; a start that
//! finds [`MAX_STARTS`] starts already counted (none of which reached the
//! server) rolls back instead of running. The deadline after a start is the
//! other half (see `Updater`). [`on_start`] is pure.

use super::record::Pending;

/// Starts a new version gets to reach the server.
pub const MAX_STARTS: u32 = 3;

#[derive(Debug, PartialEq)]
pub enum StartAction {
    /// No update in progress.
    Nothing,
    /// An update was recorded but this is not its version (the swap never
    /// happened, or it was rolled back): forget it.
    Stale,
    /// On probation: this is start number `pending.starts` (save it).
    Counted(Pending),
    /// Three starts did not reach the server: restore `.prev`.
    RollBack(Pending),
}

pub fn on_start(pending: Option<Pending>, current: &str) -> StartAction {
    match pending {
        None => StartAction::Nothing,
        Some(p) if p.version != current => StartAction::Stale,
        Some(p) if p.starts >= MAX_STARTS => StartAction::RollBack(p),
        Some(mut p) => {
            p.starts += 1;
            StartAction::Counted(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fourth_start_after_three_failures_rolls_back() {
        let mut p = Pending {
            version: "0.2.0".into(),
            from_version: "0.1.0".into(),
            ..Default::default()
        };
        assert_eq!(on_start(None, "0.2.0"), StartAction::Nothing);
        assert_eq!(on_start(Some(p.clone()), "0.1.0"), StartAction::Stale);
        for n in 1..=MAX_STARTS {
            match on_start(Some(p.clone()), "0.2.0") {
                StartAction::Counted(next) => {
                    assert_eq!(next.starts, n);
                    p = next;
                }
                other => panic!("start {n}: {other:?}"),
            }
        }
        assert_eq!(on_start(Some(p.clone()), "0.2.0"), StartAction::RollBack(p));
    }
}
