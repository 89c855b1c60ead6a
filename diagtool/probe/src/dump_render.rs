//! Turning raw task traces into frames, and a dump into its renderings.
//!
//! Traces are resolved (symbolised) off the service's runtime, on the debug server's blocking
//! thread, one per distinct raw trace ([`trace_key`] groups them first: symbolising costs about
//! 14 us per frame set). The same dump feeds three renderings: the JSON document
//! ([`crate::model::Dump`]), Go-style text ([`render_text`], `debug=1` grouped and `debug=2` per
//! task) and a pprof task profile ([`to_pprof`], a sample per distinct trace valued by its task
//! count).

use std::fmt::Write;

use super::registry::short_path;
use crate::model::Dump;
use crate::pprof::{Frame, ProfileBuilder};

/// Keys unresolved traces for grouping, reusing one text buffer across a dump.
///
/// tokio offers no view of an unresolved trace but its Debug text (its instruction addresses), so
/// the key is a 128-bit hash of that text: "same trace" without symbols. The text goes to one
/// reused buffer and is hashed in 8-byte words by two multiply-rotate hashes with different
/// constants: a dump keys one trace per task (10k tasks: about 2 MB of text), and SipHash fed in
/// many small writes cost about three times as much.
#[derive(Debug, Default)]
pub(crate) struct TraceKeyer {
    text: String,
}

impl TraceKeyer {
    /// The grouping key of `trace`.
    pub(crate) fn key(&mut self, trace: &(impl std::fmt::Debug + ?Sized)) -> (u64, u64) {
        self.text.clear();
        let _ = write!(self.text, "{trace:?}");
        let bytes = self.text.as_bytes();
        let mut a: u64 = 0x9e37_79b9_7f4a_7c15 ^ bytes.len() as u64;
        let mut b: u64 = 0xc2b2_ae3d_27d4_eb4f ^ bytes.len() as u64;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let word = u64::from_le_bytes(word);
            a = (a ^ word)
                .wrapping_mul(0x5851_f42d_4c95_7f2d)
                .rotate_left(31);
            b = (b ^ word)
                .wrapping_mul(0x1405_7b7e_f767_814f)
                .rotate_left(27);
        }
        let mut tail = [0u8; 8];
        tail[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
        let word = u64::from_le_bytes(tail);
        a = (a ^ word).wrapping_mul(0x5851_f42d_4c95_7f2d);
        b = (b ^ word).wrapping_mul(0x1405_7b7e_f767_814f);
        (a ^ (a >> 29), b ^ (b >> 32))
    }
}

/// The grouping key of one unresolved trace (see [`TraceKeyer`]).
#[cfg(test)]
fn trace_key(trace: &(impl std::fmt::Debug + ?Sized)) -> (u64, u64) {
    TraceKeyer::default().key(trace)
}

/// Frames of tokio's tracing machinery, dropped from traces: they are the same in every trace
/// and say nothing about where the task waits.
const NOISE_PREFIXES: &[&str] = &[
    "backtrace::",
    "tokio::runtime::task::trace::",
    "<tokio::runtime::task::trace::",
    "tokio::runtime::context::",
    "std::thread::local::",
    "core::ops::function::",
    "tokio::loom::std::",
    "core::cell::",
];

/// The trace line of a task whose poll reached no tokio leaf future.
pub const NO_TOKIO_LEAF: &str = "(not waiting on a tokio resource: a pending or foreign future, \
     such as std::future::pending or a futures channel; tokio's trace sees only tokio's own leaves)";

/// The trace line of a global dump's task whose own frames tokio's trace left out and the code
/// search ([`super::dump_root`]) could not find.
pub const ROOT_NOT_FOUND: &str = "(the task's own frames were inlined into tokio's task root, \
     which tokio's trace leaves out; spawn it with diagtool_probe::spawn_named or traced() to keep them)";

/// One trace as frames, outermost first, each `function at file:line` (the file shortened).
/// tokio gives one backtrace per leaf future polled (several under `join!`); a later backtrace
/// adds only the frames past its common prefix with the one before, so shared callers show once.
/// A trace that reached no tokio leaf is the one line [`NO_TOKIO_LEAF`].
pub fn frames(trace: &tokio::runtime::dump::Trace) -> Vec<String> {
    frames_of(trace, None)
}

/// [`frames`] for a global dump's task spawned at `site`: each backtrace also gets the frames
/// tokio's trace leaves out, those inlined into the task's root (see [`super::dump_root`]).
pub(crate) fn frames_rooted(trace: &tokio::runtime::dump::Trace, site: &str) -> Vec<String> {
    frames_of(trace, Some(site))
}

fn frames_of(trace: &tokio::runtime::dump::Trace, rooted: Option<&str>) -> Vec<String> {
    let backtraces = trace.resolve_backtraces();
    if backtraces.is_empty() {
        return vec![NO_TOKIO_LEAF.to_owned()];
    }
    let mut out: Vec<String> = Vec::new();
    let mut previous: Vec<String> = Vec::new();
    for backtrace in backtraces {
        // Frames come innermost first; a frame holds its inlined symbols innermost first too.
        let mut stack: Vec<String> = Vec::new();
        for frame in backtrace.frames() {
            for symbol in frame.symbols() {
                let Some(name) = symbol.name_demangled() else {
                    continue;
                };
                let file = symbol.filename().map(|f| f.to_string_lossy());
                stack.extend(symbol_text(name, file.as_deref(), symbol.lineno()));
            }
        }
        if let Some(site) = rooted {
            let outermost = backtrace.frames().last();
            // A wrapped task's outermost frame is the wrapper's own: nothing was lost above it,
            // and each wrapped future type would cost a search.
            let wrapped = outermost
                .and_then(|frame| frame.symbols().last())
                .and_then(|symbol| symbol.name_demangled())
                .is_some_and(|name| name.contains(WRAPPER));
            if !wrapped {
                let address = outermost.map(|f| f.symbol_address() as usize);
                stack.extend(root_frames(address, site, &stack));
            }
        }
        stack.reverse();
        let shared = stack
            .iter()
            .zip(&previous)
            .take_while(|(a, b)| a == b)
            .count();
        out.extend(stack[shared..].iter().cloned());
        previous = stack;
    }
    out
}

/// `frames` of a task whose future has type `future` (empty: unknown): when the trace reached no
/// tokio leaf, the future's type name is the one frame of the task's own to show.
pub(crate) fn with_future(mut frames: Vec<String>, future: &str) -> Vec<String> {
    if !future.is_empty() && frames.len() == 1 && frames[0] == NO_TOKIO_LEAF {
        frames.insert(0, format!("{future} (the task's future)"));
    }
    frames
}

/// The probe's wrapper, as its `poll` is named in a trace.
const WRAPPER: &str = "diagtool_probe::selftrace::Traced<";

/// `function at file:line` (file shortened), or `None` for tokio's tracing machinery.
fn symbol_text(name: &str, file: Option<&str>, line: Option<u32>) -> Option<String> {
    let name = strip_hash(name);
    if NOISE_PREFIXES.iter().any(|prefix| name.starts_with(prefix)) {
        return None;
    }
    Some(match (file, line) {
        (Some(file), Some(line)) => format!("{name} at {}:{line}", frame_path(file)),
        _ => name.to_owned(),
    })
}

/// The frames (innermost first) inlined into the task's root that called the function at
/// `outermost` (the backtrace's outermost kept frame), chosen as [`super::dump_root`] says.
fn root_frames(outermost: Option<usize>, site: &str, stack: &[String]) -> Vec<String> {
    let places = outermost.map(super::dump_root::places).unwrap_or_default();
    let texts = |place: &super::dump_root::Place| -> Vec<String> {
        place
            .iter()
            .filter_map(|s| symbol_text(&s.name, s.file.as_deref(), s.line))
            .collect()
    };
    let site_file = site.rsplitn(3, ':').last().unwrap_or(site);
    let mut chosen: Vec<&super::dump_root::Place> = places.iter().collect();
    if chosen.len() > 1 {
        let in_site_file: Vec<_> = chosen
            .iter()
            .copied()
            .filter(|place| {
                place.iter().any(|s| {
                    s.file
                        .as_deref()
                        .is_some_and(|file| frame_path(file) == site_file)
                })
            })
            .collect();
        if !in_site_file.is_empty() {
            chosen = in_site_file;
        }
    }
    match chosen.as_slice() {
        [] => {
            // Only worth saying when nothing of the task's own shows.
            let own = stack.iter().any(|frame| !is_runtime_frame(frame));
            if own {
                Vec::new()
            } else {
                vec![ROOT_NOT_FOUND.to_owned()]
            }
        }
        [one] => texts(one),
        several => {
            let listed: Vec<String> = several
                .iter()
                .filter_map(|place| texts(place).last().cloned())
                .collect();
            vec![format!(
                "(the task's own frames were inlined into tokio's task root, which tokio's trace \
                 leaves out; {} places in the code park like this one: {})",
                several.len(),
                listed.join(" | ")
            )]
        }
    }
}

/// A frame of tokio, the standard library or the probe's wrapper: not the service's own.
fn is_runtime_frame(frame: &str) -> bool {
    [
        "tokio::", "<tokio::", "core::", "<core::", "std::", "<std::", "alloc::", "<alloc::",
    ]
    .iter()
    .any(|prefix| frame.starts_with(prefix))
}

/// Debug info names files by absolute path; show workspace files relative (to the current
/// directory, else to the workspace this crate was built in) and dependencies as `crate-version/...`.
fn frame_path(path: &str) -> String {
    let short = short_path(path);
    if !short.starts_with('/') {
        return short.into_owned();
    }
    // This crate lives at `diagtool/probe/` in its workspace.
    let build_root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2);
    let cwd = std::env::current_dir().ok();
    for root in [build_root, cwd.as_deref()].into_iter().flatten() {
        if let Ok(rest) = std::path::Path::new(path).strip_prefix(root) {
            return rest.to_string_lossy().into_owned();
        }
    }
    short.into_owned()
}

/// Drops the `::h0123456789abcdef` suffix of a legacy-mangled symbol.
pub(crate) fn strip_hash(name: &str) -> &str {
    match name.rsplit_once("::h") {
        Some((head, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            head
        }
        _ => name,
    }
}

/// Splits `function at file:line` into a pprof frame.
fn pprof_frame(text: &str) -> Frame {
    if let Some((function, place)) = text.rsplit_once(" at ")
        && let Some((file, line)) = place.rsplit_once(':')
        && let Ok(line) = line.parse()
    {
        return Frame::at(function, file, line);
    }
    Frame::named(text)
}

/// The dump as a gzipped pprof task profile (`debug=0`): one sample per group, valued by its task
/// count (`tasks/count`), with the spawn site as the root frame so `go tool pprof` splits by site.
pub fn to_pprof(dump: &Dump) -> Vec<u8> {
    let mut builder = ProfileBuilder::new(&[("tasks", "count")])
        .main_binary(&crate::pprof::current_binary())
        .timing((dump.taken_at_ms as i64).saturating_mul(1_000_000), 0);
    for group in &dump.groups {
        let mut stack = vec![Frame::named(format!("spawned at {}", group.site))];
        stack.extend(group.trace.iter().map(|frame| pprof_frame(frame)));
        builder.add(&stack, &[group.count as i64]);
    }
    builder.encode_gzip()
}

/// The dump as Go-style text: `debug=1` (or less) groups identical traces, largest first, each
/// headed by its count and spawn site; `debug=2` (or more) prints one block per task.
pub fn render_text(dump: &Dump, debug: u8) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "task dump: {} tasks in {} groups, taken at {} ms",
        dump.tasks.len(),
        dump.groups.len(),
        dump.taken_at_ms
    );
    if let Some(mode) = &dump.mode {
        let _ = writeln!(out, "mode: {mode}");
    }
    if let Some(counts) = dump
        .not_traced
        .as_ref()
        .filter(|c| c.unwrapped + c.no_answer > 0)
    {
        let _ = writeln!(
            out,
            "not traced: {} spawned without the probe's wrapper, {} gave no answer in time",
            counts.unwrapped, counts.no_answer
        );
    }
    if debug >= 2 {
        for task in &dump.tasks {
            let name = task
                .name
                .as_deref()
                .map(|n| format!(" \"{n}\""))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "\ntask {}{name} [age {:.1}s]: spawned at {}",
                task.id, task.age_s, task.site
            );
            write_trace(&mut out, &task.trace);
        }
    } else {
        for group in &dump.groups {
            let _ = writeln!(out, "\n{} @ {}", group.count, group.site);
            write_trace(&mut out, &group.trace);
        }
    }
    out
}

/// Leaf first, like Go's goroutine dump.
fn write_trace(out: &mut String, trace: &[String]) {
    if trace.is_empty() {
        let _ = writeln!(out, "#\t{NO_TOKIO_LEAF}");
    }
    for frame in trace.iter().rev() {
        let _ = writeln!(out, "#\t{frame}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::group;
    use crate::model::{DUMP_SCHEMA, DumpTask};

    fn task(id: u64, site: &str, trace: &[&str]) -> DumpTask {
        DumpTask {
            id,
            site: site.to_owned(),
            name: None,
            age_s: 1.0,
            trace: trace.iter().map(|s| (*s).to_owned()).collect(),
            not_traced: None,
        }
    }

    #[test]
    fn trace_keys_match_for_equal_text_only() {
        // Unresolved traces print as their addresses; any Debug value stands in for them.
        assert_eq!(trace_key(&[1, 2]), trace_key(&[1, 2]));
        assert_ne!(trace_key(&[1, 2]), trace_key(&[1, 3]));
        assert_ne!(trace_key(&[12]), trace_key(&[1, 2][..]));
    }

    #[test]
    fn hashes_and_frame_places_parse() {
        assert_eq!(strip_hash("app::park::h0123456789abcdef"), "app::park");
        assert_eq!(strip_hash("app::hello"), "app::hello");
        assert_eq!(
            pprof_frame("app::park::{{closure}} at app/src/lib.rs:12"),
            Frame::at("app::park::{{closure}}", "app/src/lib.rs", 12)
        );
        assert_eq!(pprof_frame("app::park"), Frame::named("app::park"));
    }

    #[test]
    fn pprof_task_profile_counts_tasks_per_trace() {
        let tasks = vec![
            task(1, "a.rs:1:1", &["f at a.rs:3", "g at a.rs:9"]),
            task(2, "a.rs:1:1", &["f at a.rs:3", "g at a.rs:9"]),
            task(3, "b.rs:2:2", &["h"]),
        ];
        let dump = Dump {
            schema: DUMP_SCHEMA.to_owned(),
            taken_at_ms: 5,
            groups: group(&tasks),
            tasks,
            mode: None,
            not_traced: None,
        };
        let profile = crate::pprof::decode(&to_pprof(&dump)).expect("decodes");
        // The main binary is named (so `go tool pprof` neither warns nor re-symbolizes), and every
        // location points at it.
        let binary = &profile.string_table[profile.mapping[0].filename as usize];
        assert_eq!(*binary, crate::pprof::current_binary());
        assert!(profile.mapping[0].has_functions);
        assert!(profile.location.iter().all(|l| l.mapping_id == 1));
        assert_eq!(
            crate::pprof::to_folded(&profile),
            "spawned at a.rs:1:1;f;g 2\nspawned at b.rs:2:2;h 1\n"
        );
        let text = render_text(&dump, 1);
        assert!(
            text.contains("\n2 @ a.rs:1:1\n#\tg at a.rs:9\n#\tf at a.rs:3\n"),
            "{text}"
        );
        let text = render_text(&dump, 2);
        assert_eq!(text.matches("\ntask ").count(), 3, "{text}");
    }
}
