//! Signals and wake-ups for the supervision loop, through one socket pair:
//! signal-hook writes a byte on SIGCHLD/SIGTERM/SIGINT (its handler does
//! nothing else), check threads write one when they have a result, and the
//! loop sleeps in poll() on the read end. No busy polling; an idle agent
//! sleeps until a deadline or a signal.

use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub struct Wakeups {
    read: UnixStream,
    write: UnixStream,
    shutdown: Arc<AtomicBool>,
}

/// A handle other threads use to wake the loop.
pub struct Waker(UnixStream);

impl Waker {
    pub fn wake(&self) {
        // A full socket buffer means a wake-up is pending already.
        let _ = (&self.0).write(&[1]);
    }
}

impl Wakeups {
    pub fn install() -> io::Result<Wakeups> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let shutdown = Arc::new(AtomicBool::new(false));
        for sig in [SIGCHLD, SIGTERM, SIGINT] {
            signal_hook::low_level::pipe::register(sig, write.try_clone()?)?;
        }
        for sig in [SIGTERM, SIGINT] {
            signal_hook::flag::register(sig, Arc::clone(&shutdown))?;
        }
        Ok(Wakeups { read, write, shutdown })
    }

    pub fn waker(&self) -> io::Result<Waker> {
        Ok(Waker(self.write.try_clone()?))
    }

    pub fn fd(&self) -> rustix::fd::BorrowedFd<'_> {
        use rustix::fd::AsFd;
        self.read.as_fd()
    }

    /// Empty the pipe after poll() said it is readable.
    pub fn drain(&self) {
        let mut buf = [0u8; 256];
        while matches!((&self.read).read(&mut buf), Ok(n) if n > 0) {}
    }

    /// SIGTERM or SIGINT arrived.
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }
}
