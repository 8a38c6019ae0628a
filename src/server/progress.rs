//! Progress of long command-line work (`k8s4r bench robots`, `k8s4r
//! migrate`): a bar on stderr when it is a terminal (indicatif), plain
//! lines otherwise, one at every tenth of the way and one at the end, so a
//! log file or CI output gets a few readable lines instead of redraws.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One piece of work of `total` steps; cloned into the tasks doing it.
#[derive(Clone)]
pub struct Progress(Arc<Shown>);

enum Shown {
    Bar(indicatif::ProgressBar),
    Lines(Lines),
}

struct Lines {
    what: String,
    total: u64,
    done: AtomicU64,
    /// Tenths of the way already printed.
    tenths: AtomicU64,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Lines {
    fn say(&self, text: &str) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        // Progress is a courtesy: a closed stderr must not stop the work.
        let _ = writeln!(out, "{}: {text}", self.what);
    }

    fn tenths_of(&self, done: u64) -> u64 {
        match self.total {
            0 => 10,
            t => done.min(t).saturating_mul(10) / t,
        }
    }
}

impl Progress {
    /// `what` with `total` steps, on stderr: a bar on a terminal, else
    /// plain lines.
    pub fn new(what: &str, total: u64) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress::lines(what, total, Box::new(std::io::stderr()));
        }
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg} [{bar:32}] {pos}/{len} ({elapsed}, {eta} left)")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        Progress(Arc::new(Shown::Bar(bar)))
    }

    /// Plain lines to `out`, whatever it is.
    pub fn lines(what: &str, total: u64, out: Box<dyn Write + Send>) -> Progress {
        Progress(Arc::new(Shown::Lines(Lines {
            what: what.to_string(),
            total,
            done: AtomicU64::new(0),
            tenths: AtomicU64::new(0),
            out: Mutex::new(out),
        })))
    }

    /// `n` more steps done.
    pub fn inc(&self, n: u64) {
        match &*self.0 {
            Shown::Bar(b) => b.inc(n),
            Shown::Lines(l) => {
                let done = l.done.fetch_add(n, Ordering::SeqCst).saturating_add(n);
                let tenths = l.tenths_of(done);
                // Only the first to reach a tenth prints it.
                if tenths > l.tenths.fetch_max(tenths, Ordering::SeqCst) && tenths < 10 {
                    l.say(&format!("{done}/{} ({}%)", l.total, tenths * 10));
                }
            }
        }
    }

    /// The work is over (`note`: how it ended).
    pub fn finish(&self, note: &str) {
        match &*self.0 {
            // The bar gives way to the line a log would get, so what the
            // terminal keeps reads the same.
            Shown::Bar(b) => {
                b.finish_and_clear();
                eprintln!("{}: {}/{} {note}", b.message(), b.position(), b.length().unwrap_or(0));
            }
            Shown::Lines(l) => {
                let done = l.done.load(Ordering::SeqCst);
                l.tenths.store(10, Ordering::SeqCst);
                l.say(&format!("{done}/{} {note}", l.total));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_lines_at_each_tenth_and_at_the_end() {
        let out = Captured::default();
        let p = Progress::lines("copying", 200, Box::new(out.clone()));
        for _ in 0..200 {
            p.clone().inc(1);
        }
        p.finish("done");
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 10, "{text}");
        assert_eq!(lines[0], "copying: 20/200 (10%)");
        assert_eq!(lines[8], "copying: 180/200 (90%)");
        assert_eq!(lines[9], "copying: 200/200 done");
        // Nothing to do: only the end.
        let out = Captured::default();
        Progress::lines("nothing", 0, Box::new(out.clone())).finish("done");
        assert_eq!(
            String::from_utf8(out.0.lock().unwrap().clone()).unwrap(),
            "nothing: 0/0 done\n"
        );
    }
}
