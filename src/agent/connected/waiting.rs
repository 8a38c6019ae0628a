//! An agent with nothing to do waits. Init starts it on a robot image that
//! is not configured yet (no server, no job file), or with settings the
//! server refuses; exiting would only make init (busybox has no respawn
//! backoff) start it again at once, in a loop that burns the robot's CPU
//! and fills its console. So it stays up, says once in a while what it is
//! missing, and re-reads its config file; once the file changes into
//! something it can run, it execs itself afresh (same pid, every setting
//! from the new file), or `run -f` for a job file.

use super::config::{self, AgentConfig, ConfigError, Settings};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How often a waiting agent re-reads its config file.
pub const RECHECK_ENV: &str = "K8S4R_CONFIG_RECHECK";
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(10);
/// How often a waiting agent repeats what it is missing.
pub const NOTICE_ENV: &str = "K8S4R_WAITING_NOTICE";
pub const DEFAULT_NOTICE: Duration = Duration::from_secs(60);
/// Bounds of both intervals: a zero interval would spin, a huge one would
/// overflow deadlines and leave a fixed robot idle.
const SHORTEST: Duration = Duration::from_millis(10);
const LONGEST: Duration = Duration::from_secs(86_400);

/// The standalone job a robot image names (see cross/rootfs.sh).
pub const JOB_FILE_KEY: &str = "K8S4R_JOB_FILE";

/// What an agent started in connected mode does with the settings it has.
#[derive(Debug, PartialEq)]
pub enum Start {
    /// Connect to the server.
    Connect(AgentConfig),
    /// No server, but a job file: run it standalone (`run -f`).
    RunJob(PathBuf),
    /// Nothing to do yet; says what is missing.
    Wait(String),
}

/// Decide from the flags, the environment and the config file as read
/// (flags win over the environment, the environment over the file).
pub fn decide(flags: &Settings, env: &Settings, file: &Result<Settings, ConfigError>, hostname: &str) -> Start {
    let file = match file {
        Ok(f) => f,
        Err(e) => return Start::Wait(e.to_string()),
    };
    let get = |key: &str| {
        [flags, env, file]
            .iter()
            .find_map(|m| m.get(key).filter(|v| !v.is_empty()))
    };
    if get("K8S4R_SERVER").is_none() {
        return match get(JOB_FILE_KEY) {
            // A job file named but not there yet (an image whose job comes
            // later): `run -f` would exit at once, into init's respawn loop.
            Some(job) if !std::path::Path::new(job).is_file() => Start::Wait(format!(
                "no server, and the job file {job} ({JOB_FILE_KEY}) does not exist"
            )),
            Some(job) => Start::RunJob(PathBuf::from(job)),
            None => Start::Wait(format!(
                "no server (--server or K8S4R_SERVER) and no job file ({JOB_FILE_KEY})"
            )),
        };
    }
    match config::resolve(flags, env, file, hostname) {
        Ok(c) => Start::Connect(c),
        Err(e) => Start::Wait(e.to_string()),
    }
}

/// The config file the agent started with, what it said then, and how
/// often to look at it again while there is nothing to do.
pub struct ConfigWatch {
    /// `--config`; None for the default file.
    pub path: Option<String>,
    pub read: Result<Settings, ConfigError>,
    pub intervals: Intervals,
}

impl ConfigWatch {
    /// Whether the file says something else now.
    pub fn changed(&self) -> bool {
        config::file_settings(self.path.as_deref()) != self.read
    }

    pub fn file(&self) -> &str {
        self.path.as_deref().unwrap_or(config::DEFAULT_CONFIG_FILE)
    }

    /// Say `reason` if the reminder says so, with what the agent does about it.
    pub fn remind(&self, reminder: &mut Reminder, reason: &str, doing: &str) {
        if reminder.due(reason, Instant::now()) {
            super::say(&format!(
                "agent: waiting: {reason}; {doing}re-reading {} every {:?}",
                self.file(),
                self.intervals.recheck
            ));
        }
    }
}

/// Wait until the config file holds settings that `decide` does not wait
/// on, then start afresh. Ok(0) when signalled; an error if the exec failed.
pub fn until_configured(
    watch: &ConfigWatch,
    mut reason: String,
    decide: &dyn Fn(&Result<Settings, ConfigError>) -> Start,
) -> Result<i32, String> {
    let pause = Pause::new();
    let mut reminder = Reminder::new(watch.intervals.notice);
    loop {
        watch.remind(&mut reminder, &reason, "");
        if pause.sleep(watch.intervals.recheck) {
            super::say("agent: signalled while waiting; exiting");
            return Ok(0);
        }
        match decide(&config::file_settings(watch.path.as_deref())) {
            Start::Wait(r) => reason = r,
            Start::Connect(_) | Start::RunJob(_) => return Err(start_afresh(watch)),
        }
    }
}

/// The config file changed: exec this agent again (same pid), so that
/// every setting comes from the new file. Returns why the exec failed.
pub fn start_afresh(watch: &ConfigWatch) -> String {
    super::say(&format!("agent: {} changed; starting afresh", watch.file()));
    format!("starting the agent afresh: {}", exec_agent(&own_args()))
}

/// The waiting agent's two intervals.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Intervals {
    /// Re-read the config file this often.
    pub recheck: Duration,
    /// Say what is missing this often (and whenever that changes).
    pub notice: Duration,
}

impl Default for Intervals {
    fn default() -> Self {
        Intervals {
            recheck: DEFAULT_RECHECK,
            notice: DEFAULT_NOTICE,
        }
    }
}

impl Intervals {
    /// From the settings (`K8S4R_CONFIG_RECHECK`, `K8S4R_WAITING_NOTICE`);
    /// an error names the setting and the bounds.
    pub fn from_settings(sources: &[&Settings]) -> Result<Intervals, ConfigError> {
        let read = |key: &str, default: Duration| -> Result<Duration, ConfigError> {
            let Some(text) = sources.iter().find_map(|m| m.get(key).filter(|v| !v.is_empty())) else {
                return Ok(default);
            };
            let d = crate::api::Duration::parse(text).map_err(|e| ConfigError(format!("{key} {text:?}: {e}")))?;
            if !(SHORTEST..=LONGEST).contains(&d) {
                return Err(ConfigError(format!(
                    "{key} {text:?}: must be between {SHORTEST:?} and {LONGEST:?}"
                )));
            }
            Ok(d)
        };
        Ok(Intervals {
            recheck: read(RECHECK_ENV, DEFAULT_RECHECK)?,
            notice: read(NOTICE_ENV, DEFAULT_NOTICE)?,
        })
    }
}

/// Says what is missing when that changes, and again once per interval
/// while it stays the same: a robot waiting for days writes a line a
/// minute, not one per re-read.
pub struct Reminder {
    every: Duration,
    last: Option<(String, Instant)>,
}

impl Reminder {
    pub fn new(every: Duration) -> Self {
        Reminder { every, last: None }
    }

    /// Whether to say `reason` now.
    pub fn due(&mut self, reason: &str, now: Instant) -> bool {
        let due = match &self.last {
            Some((said, at)) => said != reason || now.saturating_duration_since(*at) >= self.every,
            None => true,
        };
        if due {
            self.last = Some((reason.to_string(), now));
        }
        due
    }
}

/// Sleeps that SIGTERM or SIGINT cut short, where no supervisor listens
/// for signals (or no longer does): a waiting agent still stops at once
/// when init shuts down. A signal that came between two sleeps ends the
/// next one.
pub struct Pause(Option<std::os::unix::net::UnixStream>);

impl Pause {
    pub fn new() -> Pause {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let read = std::os::unix::net::UnixStream::pair().and_then(|(read, write)| {
            for sig in [SIGTERM, SIGINT] {
                signal_hook::low_level::pipe::register(sig, write.try_clone()?)?;
            }
            Ok(read)
        });
        // Without the pipe the signals keep their default action, which
        // ends the process: as good a stop for an agent with nothing to do.
        Pause(read.ok())
    }

    /// Sleep `d`; true if a signal ended the sleep (or came before it).
    pub fn sleep(&self, d: Duration) -> bool {
        let Some(read) = &self.0 else {
            std::thread::sleep(d);
            return false;
        };
        let deadline = Instant::now().checked_add(d);
        loop {
            let left = deadline.map_or(LONGEST, |t| t.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return false;
            }
            let ts = rustix::time::Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            let mut fds = [rustix::event::PollFd::new(read, rustix::event::PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(n) if n > 0 => return true,
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(_) => {
                    std::thread::sleep(left);
                    return false;
                }
            }
        }
    }
}

impl Default for Pause {
    fn default() -> Self {
        Pause::new()
    }
}

/// Replace this process with the agent binary run with `args`: the same
/// pid, so init sees no exit. Returns only if the exec failed.
pub fn exec_agent(args: &[OsString]) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    // /proc/self/exe; without /proc, the name it was started by.
    let program = std::env::current_exe()
        .ok()
        .or_else(|| std::env::args_os().next().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("k8s4r-agent"));
    std::process::Command::new(program).args(args).exec()
}

/// This process's own arguments, to start afresh with (`exec_agent`).
pub fn own_args() -> Vec<OsString> {
    std::env::args_os().skip(1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> Settings {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn wait_reason(s: Start) -> String {
        match s {
            Start::Wait(r) => r,
            other => panic!("expected to wait, got {other:?}"),
        }
    }

    #[test]
    fn an_unconfigured_image_waits_and_says_what_is_missing() {
        let none = Settings::new();
        // What cross/rootfs.sh writes without --server or --job.
        let file = config::parse_env_file("K8S4R_SERVER=\nK8S4R_JOIN_TOKEN=\nK8S4R_NAME=robot\nK8S4R_JOB_FILE=\n");
        let why = wait_reason(decide(&none, &none, &file, "host"));
        assert!(why.contains("no server") && why.contains("K8S4R_JOB_FILE"), "{why}");
    }

    #[test]
    fn a_server_from_any_source_connects() {
        let none = Settings::new();
        let file = Ok(map(&[("K8S4R_SERVER", "http://10.0.0.5:7443"), ("K8S4R_NAME", "r7")]));
        match decide(&none, &none, &file, "host") {
            Start::Connect(c) => assert_eq!((c.server.as_str(), c.name.as_str()), ("http://10.0.0.5:7443", "r7")),
            other => panic!("{other:?}"),
        }
        let flags = map(&[("K8S4R_SERVER", "http://flag:1")]);
        let empty_file = Ok(map(&[("K8S4R_SERVER", "")]));
        assert!(matches!(decide(&flags, &none, &empty_file, "host"), Start::Connect(_)));
    }

    #[test]
    fn a_job_file_without_a_server_runs_standalone_and_a_server_wins() {
        let none = Settings::new();
        let dir = tempfile::tempdir().unwrap();
        let job = dir.path().join("job.yaml");
        let named = job.display().to_string();
        let file = Ok(map(&[("K8S4R_SERVER", ""), (JOB_FILE_KEY, named.as_str())]));
        // Named but not there yet: wait for it rather than fail at once.
        match decide(&none, &none, &file, "h") {
            Start::Wait(why) => assert!(why.contains("does not exist"), "{why}"),
            other => panic!("{other:?}"),
        }
        std::fs::write(&job, "kind: Job\n").unwrap();
        assert_eq!(decide(&none, &none, &file, "h"), Start::RunJob(job));
        let env = map(&[("K8S4R_SERVER", "http://s:1")]);
        assert!(matches!(decide(&none, &env, &file, "h"), Start::Connect(_)));
    }

    #[test]
    fn settings_that_waiting_can_fix_wait_with_the_reason() {
        let none = Settings::new();
        let https = Ok(map(&[("K8S4R_SERVER", "https://s")]));
        assert!(wait_reason(decide(&none, &none, &https, "h")).contains("plain HTTP"));
        let bad_name = Ok(map(&[("K8S4R_SERVER", "http://s"), ("K8S4R_NAME", "Bad Name")]));
        assert!(wait_reason(decide(&none, &none, &bad_name, "h")).starts_with("robot name:"));
        let unreadable = Err(ConfigError("/etc/k8s4r/agent.env: line 2: expected KEY=value".into()));
        assert!(wait_reason(decide(&none, &none, &unreadable, "h")).contains("line 2"));
    }

    #[test]
    fn intervals_default_parse_and_are_bounded() {
        let none = Settings::new();
        assert_eq!(Intervals::from_settings(&[&none]).unwrap(), Intervals::default());
        let flags = map(&[(RECHECK_ENV, "200ms")]);
        let env = map(&[(RECHECK_ENV, "5s"), (NOTICE_ENV, "2s")]);
        let i = Intervals::from_settings(&[&flags, &env]).unwrap();
        assert_eq!(i.recheck, Duration::from_millis(200));
        assert_eq!(i.notice, Duration::from_secs(2));
        for bad in ["0s", "1ms", "2d", "soon"] {
            let e = Intervals::from_settings(&[&map(&[(NOTICE_ENV, bad)])]).unwrap_err();
            assert!(e.0.starts_with(NOTICE_ENV), "{bad}: {e}");
        }
    }

    #[test]
    fn the_reminder_speaks_on_change_and_once_per_interval() {
        let mut r = Reminder::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(r.due("no server", t0), "the first time");
        assert!(!r.due("no server", t0 + Duration::from_secs(10)));
        assert!(!r.due("no server", t0 + Duration::from_secs(59)));
        assert!(r.due("no server", t0 + Duration::from_secs(60)), "a minute later");
        assert!(
            r.due("refused", t0 + Duration::from_secs(61)),
            "something else is missing"
        );
        assert!(!r.due("refused", t0 + Duration::from_secs(62)));
    }

    #[test]
    fn a_pause_sleeps_its_time_without_a_signal() {
        let t0 = Instant::now();
        assert!(!Pause::new().sleep(Duration::from_millis(50)));
        assert!(t0.elapsed() >= Duration::from_millis(50));
    }
}
