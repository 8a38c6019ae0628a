//! Panics are bugs. A request that panics loses only itself (tokio catches
//! the unwind of its task), so without a count they would go unnoticed: the
//! hook counts every panic in the process, the log says where, and
//! `/metrics` serves the count as `k8s4r_panics_total` for tests and
//! monitoring (it must stay 0 under any input).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static PANICS: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();

/// Count panics from now on (idempotent); the previous hook still prints.
pub fn install() {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::Relaxed);
            log::error!("BUG: panic: {info}");
            previous(info);
        }));
    });
}

/// Panics since start-up.
pub fn count() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// The Prometheus text exposition of the server's own health counters.
pub fn metrics_text() -> String {
    format!(
        "# HELP k8s4r_panics_total Panics caught in the server process (must stay 0).\n\
         # TYPE k8s4r_panics_total counter\n\
         k8s4r_panics_total {}\n",
        count()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_is_counted() {
        install();
        let before = count();
        let caught = std::panic::catch_unwind(|| panic!("deliberate"));
        assert!(caught.is_err());
        assert!(count() > before, "the hook did not count the panic");
        assert!(metrics_text().contains(&format!("k8s4r_panics_total {}", count())));
    }
}
