//! A minimal logger for the server: `LEVEL target: message` lines on
//! stderr, level from `--log-level` (default info).

use log::{LevelFilter, Log, Metadata, Record};

struct Stderr;

impl Log for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "{} {} {}: {}",
                super::time::now_rfc3339(),
                r.level(),
                r.target(),
                r.args()
            );
        }
    }

    fn flush(&self) {}
}

static LOGGER: Stderr = Stderr;

/// Install the logger (once; later calls only change the level).
pub fn init(level: LevelFilter) {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

pub fn parse_level(text: &str) -> Result<LevelFilter, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a log level (off, error, warn, info, debug, trace)"))
}
