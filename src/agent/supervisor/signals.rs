//! Signals and wake-ups for the supervision loop, through one socket pair:
//! signal-hook writes a byte on SIGCHLD/SIGTERM/SIGINT (its handler does
//! nothing else), check threads write one when they have a result, and the
//! loop sleeps in poll() on the read end. No busy polling; an idle agent
//! sleeps until a deadline or a signal.
//!
//! Those signals are for the loop's thread alone: every other agent thread
//! is started with [`spawn_worker`], which blocks them there. Otherwise the
//! kernel hands a task's SIGCHLD to whichever thread is asleep when the
//! loop's is busy, and a socket read with a timeout is not restarted after
//! a handler (signal(7)): the long poll failed with EINTR ("cannot reach
//! the server") and a health check could fail, each time a task exited.

use signal_hook::consts::{SIGCHLD, SIGINT, SIGTERM};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The signals the loop handles ([`Wakeups::install`]).
const HANDLED: [i32; 3] = [SIGCHLD, SIGTERM, SIGINT];

/// `std::thread::spawn`, with the loop's signals blocked in the new thread
/// (see the module doc).
pub fn spawn_worker<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        super::sys::block_signals(&HANDLED);
        f()
    })
}

pub struct Wakeups {
    read: UnixStream,
    write: UnixStream,
    shutdown: Arc<AtomicBool>,
    /// SIGCHLD arrived: a child may be waiting to be reaped.
    child_exited: Arc<AtomicBool>,
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
        for sig in HANDLED {
            signal_hook::low_level::pipe::register(sig, write.try_clone()?)?;
        }
        for sig in [SIGTERM, SIGINT] {
            signal_hook::flag::register(sig, Arc::clone(&shutdown))?;
        }
        // Set at first: children may have ended before this (an agent
        // that exec'd itself inherits its tasks, exited ones included).
        let child_exited = Arc::new(AtomicBool::new(true));
        signal_hook::flag::register(SIGCHLD, Arc::clone(&child_exited))?;
        Ok(Wakeups {
            read,
            write,
            shutdown,
            child_exited,
        })
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

    /// Whether SIGCHLD arrived since the last call: only then can
    /// waitpid find a child (with 1,000 children, each waitpid walks them
    /// all in the kernel, so it is not called on every wake-up). Taken
    /// before reaping, so a child that ends meanwhile sets it again.
    pub fn take_child_exited(&self) -> bool {
        self.child_exited.swap(false, Ordering::SeqCst)
    }

    /// SIGTERM or SIGINT arrived.
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked_here() -> Vec<i32> {
        super::super::sys::blocked_signals(&HANDLED)
    }

    #[test]
    fn a_worker_thread_never_takes_the_loops_signals() {
        assert_eq!(spawn_worker(blocked_here).join().unwrap(), HANDLED.to_vec());
        // A plain thread would (the mask is per thread, inherited from the
        // test harness's, which blocks none of them).
        assert_eq!(std::thread::spawn(blocked_here).join().unwrap(), Vec::<i32>::new());
    }
}
