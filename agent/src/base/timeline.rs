//! The steps of one operation with their durations: printed as they finish (to stderr, for people) and kept for
//! history and `--json` output.

use std::time::Instant;

use serde::{Deserialize, Serialize};

#[derive(Debug)]
pub struct Timeline {
    pub steps: Vec<Timing>,
    print: bool,
    start: Instant,
}

impl Timeline {
    pub fn new(print: bool) -> Timeline {
        Timeline { steps: Vec::new(), print, start: Instant::now() }
    }

    /// A timeline whose first step (a download, say) already happened: its time counts in the duration.
    pub fn after(print: bool, first: Timing) -> Timeline {
        let start = Instant::now().checked_sub(std::time::Duration::from_millis(first.ms)).unwrap_or_else(Instant::now);
        let mut tl = Timeline { steps: Vec::new(), print, start };
        tl.record(&first.step, first.ms, first.detail);
        tl
    }

    /// Whether steps are printed (for people, on stderr).
    pub fn prints(&self) -> bool {
        self.print
    }

    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Runs one step, recording its duration and (on success) a detail line.
    pub fn step<T, E>(&mut self, name: &str, f: impl FnOnce() -> Result<(T, Option<String>), E>) -> Result<T, E> {
        let t = Instant::now();
        let out = f();
        let ms = t.elapsed().as_millis() as u64;
        let detail = match &out {
            Ok((_, d)) => d.clone(),
            Err(_) => Some("failed".to_owned()),
        };
        self.record(name, ms, detail);
        out.map(|(v, _)| v)
    }

    pub fn record(&mut self, name: &str, ms: u64, detail: Option<String>) {
        if self.print {
            crate::base::progress::note!("  {name:<12} {:>7}  {}", format!("{ms} ms"), detail.as_deref().unwrap_or(""));
        }
        self.steps.push(Timing { step: name.to_owned(), ms, detail });
    }

    pub fn note(&self, text: &str) {
        if self.print {
            crate::base::progress::note!("{text}");
        }
    }
}

/// One step of an operation and how long it took.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Timing {
    pub step: String,
    pub ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
