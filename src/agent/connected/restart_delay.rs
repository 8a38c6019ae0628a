//! Where the agent must exit (a command line it cannot run with, a data
//! directory it cannot use or another agent holds), it first sleeps, longer
//! each time it exits again soon after the last time: init respawns it at
//! once (busybox has no backoff), and a tight respawn loop burns the
//! robot's CPU and fills its console. Each attempt is a new process, so the
//! last delay is recorded in the data dir (`restart-delay`).
//!
//! The clock is the boot clock (it counts across processes, not across
//! reboots; the boot id tells a new boot): a wall clock can jump on a robot
//! without an RTC.

use std::path::Path;
use std::time::Duration;

pub const FILE: &str = "restart-delay";
pub const FIRST: Duration = Duration::from_secs(1);
pub const LONGEST: Duration = Duration::from_secs(300);
/// An agent that ran this long since its last exit starts the delays over.
pub const CALM: Duration = Duration::from_secs(600);

/// The previous exit: in which boot, when its sleep began (boot clock) and
/// how long it was.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub boot_id: String,
    pub at: Duration,
    pub delay: Duration,
}

impl Record {
    fn parse(text: &str) -> Option<Record> {
        let mut words = text.split_whitespace();
        let boot_id = words.next()?.to_string();
        let at = Duration::from_millis(words.next()?.parse().ok()?);
        let delay = Duration::from_millis(words.next()?.parse().ok()?);
        Some(Record { boot_id, at, delay })
    }

    fn render(&self) -> String {
        format!("{} {} {}\n", self.boot_id, self.at.as_millis(), self.delay.as_millis())
    }
}

/// How long to sleep before this exit: twice the last delay (up to
/// [`LONGEST`]) if the last exit was in this boot and less than [`CALM`]
/// ago, else [`FIRST`].
pub fn next_delay(prev: Option<&Record>, boot_id: &str, now: Duration) -> Duration {
    let recent = prev.is_some_and(|p| {
        // An earlier time than recorded is another boot, whatever its id
        // says (no /proc: no id).
        let ended = p.at.saturating_add(p.delay);
        p.boot_id == boot_id && now >= p.at && now.saturating_sub(ended) < CALM
    });
    match prev {
        Some(p) if recent => p.delay.saturating_mul(2).clamp(FIRST, LONGEST),
        _ => FIRST,
    }
}

fn boot_clock() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u32::try_from(t.tv_nsec).unwrap_or(0);
    Duration::from_secs(secs).saturating_add(Duration::from_nanos(u64::from(nanos)))
}

/// Decide this exit's delay and record it in `data_dir` (before sleeping,
/// so an agent killed in its sleep still counts). Where it cannot be
/// recorded, the longest: nothing would tell the next attempt to wait.
pub fn record(data_dir: &Path) -> (Duration, Option<std::io::Error>) {
    let path = data_dir.join(FILE);
    let prev = std::fs::read_to_string(&path).ok().and_then(|t| Record::parse(&t));
    let boot_id = crate::agent::procfs::boot_id();
    let now = boot_clock();
    let delay = next_delay(prev.as_ref(), &boot_id, now);
    let rec = Record {
        boot_id: if boot_id.is_empty() { "-".into() } else { boot_id },
        at: now,
        delay,
    };
    let written = std::fs::create_dir_all(data_dir)
        .and_then(|()| crate::atomic_file::write(&path, rec.render().as_bytes(), 0o600));
    match written {
        Ok(()) => (delay, None),
        Err(e) => (LONGEST, Some(e)),
    }
}

/// Before an exit that init would answer with a respawn: say why the agent
/// waits, then wait (SIGTERM cuts it short). An operator at a terminal
/// gets the error at once.
pub fn before_exit(data_dir: &Path) {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        return;
    }
    let (delay, err) = record(data_dir);
    match err {
        None => eprintln!(
            "agent: exiting in {delay:?} (the delay grows while exits repeat; {})",
            data_dir.join(FILE).display()
        ),
        Some(e) => eprintln!(
            "agent: cannot record the restart delay in {}: {e}; exiting in {delay:?}",
            data_dir.display()
        ),
    }
    super::waiting::Pause::new().sleep(delay);
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn rec(boot: &str, at: u64, delay: u64) -> Record {
        Record {
            boot_id: boot.into(),
            at: Duration::from_secs(at),
            delay: Duration::from_secs(delay),
        }
    }

    #[test]
    fn the_first_exit_waits_a_second() {
        assert_eq!(next_delay(None, "b1", 100 * S), FIRST);
    }

    #[test]
    fn quick_repeats_double_up_to_the_longest() {
        // The last exit slept 1 s from t=100; this one comes 2 s later.
        assert_eq!(next_delay(Some(&rec("b1", 100, 1)), "b1", 103 * S), 2 * S);
        assert_eq!(next_delay(Some(&rec("b1", 100, 8)), "b1", 110 * S), 16 * S);
        assert_eq!(next_delay(Some(&rec("b1", 100, 200)), "b1", 301 * S), LONGEST);
        assert_eq!(next_delay(Some(&rec("b1", 100, 300)), "b1", 401 * S), LONGEST);
        // Killed in its sleep: still a repeat.
        assert_eq!(next_delay(Some(&rec("b1", 100, 4)), "b1", 101 * S), 8 * S);
    }

    #[test]
    fn calm_or_another_boot_starts_over() {
        assert_eq!(
            next_delay(Some(&rec("b1", 100, 60)), "b1", (160 + 600) * S),
            FIRST,
            "ran 10 minutes"
        );
        assert_eq!(next_delay(Some(&rec("b1", 100, 60)), "b2", 170 * S), FIRST);
        assert_eq!(
            next_delay(Some(&rec("-", 100, 60)), "-", 5 * S),
            FIRST,
            "boot clock before the record: a reboot without /proc"
        );
    }

    #[test]
    fn the_record_round_trips_and_garbage_is_no_record() {
        let r = rec("0f1e", 12, 4);
        assert_eq!(Record::parse(&r.render()), Some(r));
        assert_eq!(Record::parse("garbage"), None);
        assert_eq!(Record::parse(""), None);
    }

    #[test]
    fn recorded_delays_grow_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (first, e) = record(dir.path());
        assert!(e.is_none(), "{e:?}");
        assert_eq!(first, FIRST);
        let (second, _) = record(dir.path());
        assert_eq!(second, 2 * FIRST);
        let text = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(text.ends_with(" 2000\n"), "{text}");
    }

    #[test]
    fn an_unusable_data_dir_means_the_longest_delay() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        let (delay, e) = record(&file);
        assert_eq!(delay, LONGEST);
        assert!(e.is_some());
    }
}
