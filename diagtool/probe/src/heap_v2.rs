//! A reader of jemalloc's `prof.dump` text (`heap_v2`), with the unbiasing `jeprof` and Go's pprof
//! apply.
//!
//! The file holds a header with the sample interval, then one record per distinct backtrace:
//! ```text
//! heap_v2/524288
//!   t*: 28: 9437184 [0: 0]
//!   t0: 28: 9437184 [0: 0]
//! @ 0x55d0c1a2b3c4 0x55d0c1a2b000 ...
//!   t*: 12: 6291456 [0: 0]
//!   t3: 12: 6291456 [0: 0]
//!
//! MAPPED_LIBRARIES:
//! ...
//! ```
//! `t*` is the sum over threads: objects and bytes in use, then (in brackets) the cumulative ones.
//! Addresses are return addresses, innermost (jemalloc's own frames) first.
//!
//! Since jemalloc 5.3 (`prof_unbias`, on by default) the figures are written so that the classic
//! correction `x / (1 - exp(-avg / interval))` yields the unbiased estimate of in-use memory, so
//! that correction is applied here, once, as `jeprof` does.

/// One backtrace of the dump with its in-use figures, already scaled up.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawStack {
    /// Return addresses, innermost first.
    pub(crate) addresses: Vec<u64>,
    /// Estimated objects in use.
    pub(crate) objects: i64,
    /// Estimated bytes in use.
    pub(crate) bytes: i64,
}

/// A parsed dump.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct HeapDump {
    /// Bytes between samples, on average (jemalloc's `2^lg_prof_sample`).
    pub(crate) sample_bytes: u64,
    /// Backtraces with memory in use (records whose in-use figures are zero are dropped).
    pub(crate) stacks: Vec<RawStack>,
    /// Records dropped because the cap was reached.
    pub(crate) truncated: usize,
}

/// Why a dump could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum ParseError {
    #[error("the dump does not start with a heap_v2/INTERVAL header (found {0:?})")]
    Header(String),
    #[error("line {line} of the dump is not a `t*: OBJECTS: BYTES [..]` record: {text:?}")]
    Counts { line: usize, text: String },
    #[error("line {line} of the dump has a bad address: {text:?}")]
    Address { line: usize, text: String },
}

/// Parses `text`, keeping at most `max_stacks` backtraces (the largest in-use ones are not
/// preferred: the dump's order is kept, and the rest only counted).
pub(crate) fn parse(text: &str, max_stacks: usize) -> Result<HeapDump, ParseError> {
    let mut lines = text.lines().enumerate();
    let header = lines.next().map_or("", |(_, line)| line.trim());
    let sample_bytes = header
        .strip_prefix("heap_v2/")
        .and_then(|rate| rate.trim().parse::<u64>().ok())
        .ok_or_else(|| ParseError::Header(header.chars().take(40).collect()))?;
    let mut dump = HeapDump {
        sample_bytes,
        ..HeapDump::default()
    };
    let mut current: Option<Vec<u64>> = None;
    for (index, line) in lines {
        let trimmed = line.trim();
        if trimmed == "MAPPED_LIBRARIES:" {
            break;
        }
        if let Some(rest) = trimmed.strip_prefix('@') {
            let addresses = rest
                .split_whitespace()
                .map(|word| {
                    let hex = word.trim_start_matches("0x");
                    u64::from_str_radix(hex, 16).map_err(|_| ParseError::Address {
                        line: index + 1,
                        text: word.to_owned(),
                    })
                })
                .collect::<Result<Vec<u64>, _>>()?;
            current = Some(addresses);
        } else if let Some(rest) = trimmed.strip_prefix("t*:") {
            // The header's own `t*` (no backtrace yet) is the process total: not a stack.
            let Some(addresses) = current.take() else {
                continue;
            };
            let (objects, bytes) = counts(rest).ok_or_else(|| ParseError::Counts {
                line: index + 1,
                text: trimmed.to_owned(),
            })?;
            let (objects, bytes) = unbias(objects, bytes, sample_bytes);
            if objects == 0 && bytes == 0 {
                continue;
            }
            if dump.stacks.len() >= max_stacks {
                dump.truncated += 1;
                continue;
            }
            dump.stacks.push(RawStack {
                addresses,
                objects,
                bytes,
            });
        }
        // Per-thread lines (`t3: ...`) repeat what `t*` summed.
    }
    Ok(dump)
}

/// `28: 9437184 [0: 0]` -> (28, 9437184).
fn counts(text: &str) -> Option<(u64, u64)> {
    let live = text.split('[').next()?;
    let (objects, bytes) = live.split_once(':')?;
    Some((objects.trim().parse().ok()?, bytes.trim().parse().ok()?))
}

/// Scales sampled figures to an estimate of the whole: an allocation of `avg` bytes is sampled
/// with probability `1 - exp(-avg / interval)` (the correction of `jeprof` and Go's pprof).
pub(crate) fn unbias(objects: u64, bytes: u64, interval: u64) -> (i64, i64) {
    let clamp = |value: f64| -> i64 {
        if value.is_finite() && value < i64::MAX as f64 {
            value.round() as i64
        } else {
            i64::MAX
        }
    };
    if bytes == 0 || interval <= 1 {
        return (clamp(objects as f64), clamp(bytes as f64));
    }
    let avg = bytes as f64 / objects.max(1) as f64;
    let scale = 1.0 / (1.0 - (-avg / interval as f64).exp());
    (clamp(objects as f64 * scale), clamp(bytes as f64 * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "heap_v2/524288\n  t*: 30: 10485760 [0: 0]\n  t0: 30: 10485760 [0: 0]\n\
        @ 0x10 0x20 0x30\n  t*: 20: 5242880 [0: 0]\n  t0: 20: 5242880 [0: 0]\n\
        @ 0x11 0x21\n  t*: 0: 0 [4: 4096]\n\
        @ 0x12\n  t*: 1: 5242880 [0: 0]\n  t2: 1: 5242880 [0: 0] worker\n\
        \nMAPPED_LIBRARIES:\n55d0c1000000-55d0c2000000 r-xp 00000000 08:01 1 /bin/shipper\n";

    #[test]
    fn reads_stacks_and_scales_them_up() {
        let dump = parse(DUMP, 100).expect("parses");
        assert_eq!(dump.sample_bytes, 524_288);
        assert_eq!(dump.stacks.len(), 2, "the freed stack is dropped");
        assert_eq!(dump.stacks[0].addresses, vec![0x10, 0x20, 0x30]);
        // 256 KiB objects at a 512 KiB interval: sampled with p = 1 - e^-0.5 = 0.3935.
        let scale = 1.0 / (1.0 - (-0.5f64).exp());
        assert_eq!(dump.stacks[0].bytes, (5_242_880.0 * scale).round() as i64);
        assert_eq!(dump.stacks[0].objects, (20.0 * scale).round() as i64);
        // Objects far larger than the interval are (almost) always sampled: no scaling.
        let extra = dump.stacks[1].bytes - 5_242_880;
        assert!((0..5_242_880 / 10_000).contains(&extra), "{extra}");
        assert_eq!(dump.stacks[1].objects, 1);
    }

    #[test]
    fn the_cap_keeps_the_first_stacks_and_counts_the_rest() {
        let dump = parse(DUMP, 1).expect("parses");
        assert_eq!(dump.stacks.len(), 1);
        assert_eq!(dump.truncated, 1);
    }

    #[test]
    fn bad_input_names_the_line() {
        assert!(matches!(
            parse("heap_v1/3\n", 10),
            Err(ParseError::Header(_))
        ));
        assert!(matches!(parse("", 10), Err(ParseError::Header(_))));
        let err = parse("heap_v2/8\n@ 0x1 zz\n", 10).expect_err("bad address");
        assert_eq!(
            err,
            ParseError::Address {
                line: 2,
                text: "zz".to_owned()
            }
        );
        let err = parse("heap_v2/8\n@ 0x1\n  t*: x: 1 [0: 0]\n", 10).expect_err("bad counts");
        assert!(matches!(err, ParseError::Counts { line: 3, .. }), "{err}");
    }

    #[test]
    fn unbias_keeps_zero_and_unsampled_figures() {
        assert_eq!(unbias(0, 0, 524_288), (0, 0));
        assert_eq!(unbias(3, 300, 1), (3, 300));
    }
}
