//! The robot's request counter: strictly increasing over the robot's whole
//! life, restarts included, because the server refuses a counter that is
//! not above the last one it accepted (a replayed request). Writing every
//! value would wear a robot's flash, so the file holds a *reservation*:
//! the highest counter the agent may use before writing again. After a
//! restart the agent starts above the stored reservation, so a counter
//! used before the restart (at most the reservation) is never used again.

use super::keys::read_private;
use crate::atomic_file;
use std::io;
use std::path::{Path, PathBuf};

pub const FILE: &str = "robot.counter";
/// Counters reserved per write: one write per this many requests.
pub const STEP: u64 = 1000;

pub struct Counter {
    path: PathBuf,
    /// The next counter to hand out.
    next: u64,
    /// The highest counter on disk (every counter up to it may be used).
    reserved: u64,
}

impl Counter {
    /// Open `<data dir>/robot.counter`; a missing file starts at 1.
    pub fn open(data_dir: &Path) -> io::Result<Counter> {
        let path = data_dir.join(FILE);
        let reserved = match read_private(&path, 64)? {
            None => 0,
            Some((bytes, _)) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} does not hold a counter", path.display()),
                    )
                })?,
        };
        let next = reserved
            .checked_add(1)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "the request counter is exhausted"))?;
        // Nothing is reserved in this run yet: the first take writes.
        Ok(Counter {
            path,
            next,
            reserved: next - 1,
        })
    }

    /// The next counter, reserving more on disk first when needed. An error
    /// hands out nothing: a counter not covered by the file could be used
    /// again after a restart.
    pub fn take(&mut self) -> io::Result<u64> {
        let n = self.next;
        let after = n
            .checked_add(1)
            .ok_or_else(|| io::Error::other("the request counter is exhausted"))?;
        if n > self.reserved {
            let reserve = n.saturating_add(STEP - 1);
            atomic_file::write(&self.path, format!("{reserve}\n").as_bytes(), 0o600)?;
            self.reserved = reserve;
        }
        self.next = after;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_only_grow_across_restarts_and_write_once_per_step() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        let mut c = Counter::open(dir.path()).unwrap();
        assert_eq!(c.take().unwrap(), 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{STEP}\n"));
        use std::os::unix::fs::MetadataExt;
        let written = std::fs::metadata(&path).unwrap().ino();
        let mut last = 1;
        for _ in 1..STEP {
            last = c.take().unwrap();
        }
        assert_eq!(last, STEP);
        // Within the reservation nothing was written (an atomic write
        // would have replaced the file).
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), written);
        assert_eq!(c.take().unwrap(), STEP + 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n", 2 * STEP));
        drop(c);

        // A restart (after using only STEP + 1 of the 2 * STEP reserved)
        // starts above everything reserved, never reusing one.
        let mut c = Counter::open(dir.path()).unwrap();
        let after = c.take().unwrap();
        assert_eq!(after, 2 * STEP + 1);
        assert!(after > last + 1);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_damaged_counter_file_is_an_error_and_a_failed_reservation_hands_out_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "many").unwrap();
        assert!(Counter::open(dir.path()).is_err());
        std::fs::write(dir.path().join(FILE), format!("{}", u64::MAX)).unwrap();
        assert!(Counter::open(dir.path()).is_err(), "exhausted");

        let gone = dir.path().join("gone");
        std::fs::create_dir(&gone).unwrap();
        let mut c = Counter::open(&gone).unwrap();
        std::fs::remove_dir(&gone).unwrap();
        assert!(c.take().is_err(), "the reservation could not be written");
        std::fs::create_dir(&gone).unwrap();
        assert_eq!(c.take().unwrap(), 1, "nothing was handed out by the failed take");
    }
}
