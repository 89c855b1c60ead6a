//! Delivery accounting: which written lines arrived, which twice, which never, which mangled.
//!
//! The generator numbers each file's lines without gaps, so what was written is a count per file,
//! and what arrived is a bit per line. A received line is *delivered* the first time its number
//! is seen, a *duplicate* after that, *corrupted* when its text differs from what the generator
//! wrote under that number (a broken escape, a cut line), and *foreign* when it is no generated
//! line at all or names a line that was never written.

use super::generator::{line_text, lines_in_file, parse_seq};

/// What was written: the generator's settings and its total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Files written.
    pub files: u32,
    /// Lines written over all files.
    pub lines: u64,
    /// The generator's line length.
    pub line_bytes: usize,
    /// The generator's special-line period.
    pub special_every: u64,
}

/// The accounting of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    written: Written,
    seen: Vec<Vec<u64>>,
    delivered: u64,
    duplicates: u64,
    corrupted: u64,
    foreign: u64,
    examples: Vec<String>,
}

/// The figures of a [`Ledger`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    /// Lines written.
    pub written: u64,
    /// Distinct written lines that arrived intact.
    pub delivered: u64,
    /// Written lines that never arrived intact.
    pub missing: u64,
    /// Arrivals of a line already delivered.
    pub duplicates: u64,
    /// Arrivals whose text differs from the line written under that number.
    pub corrupted: u64,
    /// Arrivals that are no written line.
    pub foreign: u64,
    /// A few missing lines (`file:seq`) and bad arrivals, for the report.
    pub examples: Vec<String>,
}

const MAX_EXAMPLES: usize = 5;

impl Ledger {
    /// An empty ledger for what was written.
    pub fn new(written: Written) -> Self {
        let seen = (0..written.files)
            .map(|f| {
                let n = lines_in_file(written.lines, written.files, f);
                vec![0u64; n.div_ceil(64) as usize]
            })
            .collect();
        Ledger {
            written,
            seen,
            delivered: 0,
            duplicates: 0,
            corrupted: 0,
            foreign: 0,
            examples: Vec::new(),
        }
    }

    fn example(&mut self, text: String) {
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(text);
        }
    }

    /// Accounts for one received line.
    pub fn record(&mut self, line: &str) {
        let w = self.written;
        let Some((file, seq)) = parse_seq(line) else {
            self.foreign += 1;
            self.example(format!("foreign line {:?}", truncate(line)));
            return;
        };
        if file >= w.files || seq >= lines_in_file(w.lines, w.files, file) {
            self.foreign += 1;
            self.example(format!("line {file}:{seq} was never written"));
            return;
        }
        if line != line_text(file, seq, w.line_bytes, w.special_every) {
            self.corrupted += 1;
            self.example(format!("line {file}:{seq} arrived as {:?}", truncate(line)));
            return;
        }
        let word = &mut self.seen[file as usize][(seq / 64) as usize];
        let bit = 1u64 << (seq % 64);
        if *word & bit != 0 {
            self.duplicates += 1;
        } else {
            *word |= bit;
            self.delivered += 1;
        }
    }

    /// The figures, with up to a few examples of missing lines.
    pub fn report(&self) -> DeliveryReport {
        let mut examples = self.examples.clone();
        let missing = self.written.lines - self.delivered;
        if missing > 0 {
            'files: for (file, words) in self.seen.iter().enumerate() {
                let n = lines_in_file(self.written.lines, self.written.files, file as u32);
                for seq in 0..n {
                    if words[(seq / 64) as usize] & (1 << (seq % 64)) == 0 {
                        if examples.len() >= 2 * MAX_EXAMPLES {
                            break 'files;
                        }
                        examples.push(format!("line {file}:{seq} missing"));
                    }
                }
            }
        }
        DeliveryReport {
            written: self.written.lines,
            delivered: self.delivered,
            missing,
            duplicates: self.duplicates,
            corrupted: self.corrupted,
            foreign: self.foreign,
            examples,
        }
    }
}

fn truncate(line: &str) -> String {
    line.chars().take(80).collect()
}

/// Accounts for every received line at once.
pub fn account<'a>(written: Written, lines: impl IntoIterator<Item = &'a str>) -> DeliveryReport {
    let mut ledger = Ledger::new(written);
    for line in lines {
        ledger.record(line);
    }
    ledger.report()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const W: Written = Written {
        files: 3,
        lines: 100,
        line_bytes: 60,
        special_every: 7,
    };

    fn all() -> Vec<String> {
        (0..W.lines)
            .map(|k| line_text((k % 3) as u32, k / 3, 60, 7))
            .collect()
    }

    #[test]
    fn every_line_once_is_complete() {
        let lines = all();
        let r = account(W, lines.iter().rev().map(String::as_str));
        assert_eq!((r.delivered, r.missing, r.duplicates), (100, 0, 0));
        assert!(r.examples.is_empty());
    }

    #[test]
    fn missing_lines_are_counted_and_named() {
        let lines = all();
        // Drop lines k = 10 (file 1, seq 3) and k = 99 (file 0, seq 33).
        let kept = lines
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != 10 && *k != 99)
            .map(|(_, l)| l.as_str());
        let r = account(W, kept);
        assert_eq!((r.delivered, r.missing), (98, 2));
        assert!(
            r.examples.contains(&"line 1:3 missing".to_owned()),
            "{:?}",
            r.examples
        );
        assert!(
            r.examples.contains(&"line 0:33 missing".to_owned()),
            "{:?}",
            r.examples
        );
    }

    #[test]
    fn duplicates_are_counted_not_delivered_twice() {
        let lines = all();
        let twice = lines.iter().chain(lines.iter().take(5)).map(String::as_str);
        let r = account(W, twice);
        assert_eq!((r.delivered, r.missing, r.duplicates), (100, 0, 5));
    }

    #[test]
    fn mangled_and_foreign_lines_do_not_count_as_delivered() {
        let lines = all();
        let special = line_text(0, 6, 60, 7);
        assert!(special.contains('\\'));
        let mangled = special.replace('\\', "\\\\");
        let mut received: Vec<&str> = lines
            .iter()
            .map(String::as_str)
            .filter(|l| *l != special)
            .collect();
        received.push(&mangled);
        received.push("hello from elsewhere");
        received.push("soak seq=9:0 pad");
        received.push("soak seq=0:34 pad");
        let r = account(W, received);
        assert_eq!(r.delivered, 99);
        assert_eq!(r.missing, 1);
        assert_eq!(r.corrupted, 1);
        assert_eq!(r.foreign, 3);
        assert!(
            r.examples.iter().any(|e| e.contains("0:6 arrived as")),
            "{:?}",
            r.examples
        );
        assert!(
            r.examples
                .iter()
                .any(|e| e.contains("0:34 was never written"))
        );
    }

    #[test]
    fn nothing_written_nothing_missing() {
        let w = Written { lines: 0, ..W };
        let r = account(w, std::iter::empty());
        assert_eq!(r, DeliveryReport::default());
    }
}
