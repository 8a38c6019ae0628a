//! Panics are bugs. A request that panics loses only itself: the server
//! binary unwinds (the release profile does not abort; only the musl agent
//! builds set `CARGO_PROFILE_RELEASE_PANIC=abort`, see the Makefile), the
//! HTTP layer turns the unwind into a 500, and one Job whose reconcile
//! panics does not stop the others. Without a count they would go
//! unnoticed: the hook counts every panic in the process, the log says
//! where, and `/metrics` serves the count as `k8s4r_panics_total` for tests
//! and monitoring (it must stay 0 under any input).
//!
//! A background loop the server cannot work without (the cache, the
//! controllers' queue, the election) is different: if it died alone the
//! process would live on half-working, so [`spawn_essential`] ends the
//! process for its supervisor to restart it, as an abort would have.

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

/// Run `task` on the runtime; if it panics, log which one and abort the
/// process (its state can no longer be trusted to make progress).
pub fn spawn_essential<F>(what: &'static str, task: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let handle = tokio::spawn(task);
    tokio::spawn(async move {
        if let Err(e) = handle.await {
            if e.is_panic() {
                log::error!("BUG: {what} panicked; exiting so that the server is restarted whole");
                std::process::abort();
            }
        }
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
