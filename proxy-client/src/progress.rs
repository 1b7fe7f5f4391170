//! Progress of a long command (`flush`, `prefetch`): a bar on a terminal, JSON lines on
//! stdout otherwise (a script, a log, a systemd unit), at most one a second plus the last.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    what: &'static str,
    item: String,
    total: u64,
    done: u64,
    last_line: Option<Instant>,
}

impl Progress {
    /// `what` the command does, to `item` (a file, an export), `total` bytes.
    pub fn new(what: &'static str, item: String, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            bar.set_message(item.clone());
            bar
        });
        Self {
            bar,
            what,
            item,
            total,
            done: 0,
            last_line: None,
        }
    }

    pub fn set_total(&mut self, total: u64) {
        self.total = total;
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    pub fn set(&mut self, done: u64) {
        self.done = done;
        match &self.bar {
            Some(b) => b.set_position(done),
            None if self
                .last_line
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) =>
            {
                self.line("progress");
            }
            None => {}
        }
    }

    pub fn inc(&mut self, n: u64) {
        self.set(self.done + n);
    }

    /// The end: the bar finishes with `msg`, or a last JSON line says `"event":"done"`.
    pub fn finish(&mut self, msg: &'static str) {
        match &self.bar {
            Some(b) => b.finish_with_message(msg),
            None => self.line("done"),
        }
    }

    /// Nothing happened after all: no trace left.
    pub fn clear(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }

    fn line(&mut self, event: &str) {
        self.last_line = Some(Instant::now());
        println!(
            "{}",
            serde_json::json!({
                "event": event,
                "what": self.what,
                "item": self.item,
                "done_bytes": self.done,
                "total_bytes": self.total,
            })
        );
    }
}
