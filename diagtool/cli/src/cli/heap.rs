//! `diagtool heap`: one heap profile, read by allocation site.
//!
//! The target's `/debug/pprof/heap` serves in-use memory as a gzipped pprof profile; grouped with
//! `diagtool_model::heap::sites` (the one grouping the probe's metric uses too), it becomes a
//! table of allocation sites: in-use bytes, objects and the function at the site. `-o` keeps the
//! profile as served (for `go tool pprof`); `--flamegraph` draws it from the same profile, weighted
//! by in-use bytes, so the picture and the table come from one fetch.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use comfy_table::{ColumnConstraint, Width};

use super::commands::{right_align, table, write_output};
use super::fmt::bytes;
use super::{CliError, Client};
use crate::analysis::heap::HeapSample;
use crate::model::heap::{HeapSite, INUSE_SPACE};
use crate::pprof::{self, Profile};

/// One fetched heap profile: as served, decoded, and grouped by allocation site.
pub(super) struct Fetched {
    /// The gzipped profile as the target served it.
    pub(super) raw: Vec<u8>,
    /// The decoded profile.
    pub(super) profile: Profile,
    /// Its sites, stamped with our clock.
    pub(super) sample: HeapSample,
}

/// Milliseconds since the Unix epoch, by this machine's clock.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Fetches and reads one heap profile; an answer that is not a heap profile is an input error
/// naming the URL.
pub(super) async fn fetch(client: &Client) -> Result<Fetched, CliError> {
    let raw = client.heap().await?;
    let taken_at_ms = now_ms();
    let at = format!("{}/debug/pprof/heap", client.target());
    let profile = pprof::decode(&raw).map_err(|e| {
        CliError::Input(format!(
            "{at}: the heap profile cannot be read: {e}; is --target a diagtool probe?"
        ))
    })?;
    let sample = HeapSample::from_profile(&profile, taken_at_ms)
        .map_err(|e| CliError::Input(format!("{at}: {e}")))?;
    Ok(Fetched {
        raw,
        profile,
        sample,
    })
}

/// `diagtool heap`.
pub(super) async fn heap(
    client: &Client,
    output: Option<&Path>,
    flamegraph: Option<&Path>,
    top: usize,
    verbose: bool,
) -> anyhow::Result<ExitCode> {
    let fetched = fetch(client).await?;
    if let Some(path) = output {
        write_output(Some(path), &fetched.raw)?;
        eprintln!(
            "diagtool: wrote {} ({})",
            path.display(),
            bytes(fetched.raw.len() as u64)
        );
    }
    if let Some(svg) = flamegraph {
        draw_flamegraph(&fetched.profile, svg)?;
        eprintln!("diagtool: wrote {}", svg.display());
    }
    let text = sites_text(client.target(), &fetched.sample, top, verbose);
    write_output(None, text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// The header line, the table of the `top` largest sites, and with `verbose` their stacks.
pub(super) fn sites_text(target: &str, sample: &HeapSample, top: usize, verbose: bool) -> String {
    let mut out = format!(
        "{target}: {} in use in {} objects at {} allocation sites (sampled every {} allocated)\n",
        bytes(sample.inuse_bytes()),
        sample
            .sites
            .iter()
            .map(|s| u64::try_from(s.inuse_objects).unwrap_or(0))
            .sum::<u64>(),
        sample.sites.len(),
        bytes(sample.period_bytes)
    );
    let mut t = table(&["allocation site", "in use", "objects", "function"]);
    t.force_no_tty();
    keep_site_whole(
        &mut t,
        sample.sites.iter().take(top).map(|s| s.site.as_str()),
    );
    for s in sample.sites.iter().take(top) {
        t.add_row(vec![
            s.site.clone(),
            bytes(u64::try_from(s.inuse_bytes).unwrap_or(0)),
            s.inuse_objects.to_string(),
            s.function.clone(),
        ]);
    }
    right_align(&mut t, &[1, 2]);
    out.push_str(&t.to_string());
    out.push('\n');
    if sample.sites.len() > top {
        let _ = writeln!(out, "... and {} more sites", sample.sites.len() - top);
    }
    if verbose {
        for s in sample.sites.iter().take(top) {
            stack_text(&mut out, s);
        }
    }
    out
}

/// Gives the site column room for its longest site (up to 48 characters): the site is what the
/// operator reads, so other columns wrap first.
pub(super) fn keep_site_whole<'a>(
    t: &mut comfy_table::Table,
    sites: impl Iterator<Item = &'a str>,
) {
    let longest = sites.map(|s| s.chars().count()).max();
    if let (Some(longest), Some(column)) = (longest, t.column_mut(0)) {
        let keep = u16::try_from(longest.min(48) + 2).unwrap_or(50);
        column.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(keep)));
    }
}

/// A site's stack, outermost first, indented under a line naming the site.
pub(super) fn stack_text(out: &mut String, site: &HeapSite) {
    let _ = writeln!(
        out,
        "\n{} in use at {} ({}), allocated through (outermost first):",
        bytes(u64::try_from(site.inuse_bytes).unwrap_or(0)),
        site.site,
        site.function
    );
    if site.stack.is_empty() {
        out.push_str("    (no stack)\n");
    }
    for frame in &site.stack {
        let _ = writeln!(out, "    {frame}");
    }
}

/// Draws the profile's in-use bytes as an SVG flamegraph.
fn draw_flamegraph(profile: &Profile, svg: &Path) -> anyhow::Result<()> {
    let index = (0..profile.sample_type.len())
        .find(|&i| {
            pprof::sample_type_name(profile, i)
                .is_some_and(|name| name.starts_with(&format!("{INUSE_SPACE}/")))
        })
        .ok_or_else(|| CliError::Input("the heap profile has no inuse_space values".to_owned()))?;
    let folded = pprof::to_folded_with(profile, index);
    if folded.trim().is_empty() {
        return Err(CliError::Input(format!(
            "cannot draw {}: the heap profile holds no in-use memory",
            svg.display()
        ))
        .into());
    }
    let drawn = super::dump::draw(&folded, "Heap in use", "bytes")?;
    write_output(Some(svg), &drawn)
}

/// `+1.5 MiB`, `-512 B`, `0 B`: a signed byte count.
pub(super) fn signed_bytes(v: i64) -> String {
    match v {
        0 => "0 B".to_owned(),
        v if v < 0 => format!("-{}", bytes(v.unsigned_abs())),
        v => format!("+{}", bytes(v.unsigned_abs())),
    }
}

/// A signed growth in bytes per minute, `+15.2 MiB/min`; under one byte a minute, `0 B/min`.
pub(super) fn byte_rate(per_min: f64) -> String {
    format!("{}/min", signed_bytes(per_min.round() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::heap::HEAP_SAMPLE_SCHEMA;

    fn site(name: &str, bytes: i64) -> HeapSite {
        HeapSite {
            site: name.to_owned(),
            function: format!("app::{}", name.len()),
            inuse_bytes: bytes,
            inuse_objects: 2,
            stack: vec!["app::main at app/src/main.rs:3".to_owned()],
        }
    }

    #[test]
    fn the_table_shows_sizes_readably_and_stacks_only_when_verbose() {
        let sample = HeapSample {
            schema: HEAP_SAMPLE_SCHEMA.to_owned(),
            taken_at_ms: 0,
            period_bytes: 1 << 19,
            sites: vec![
                site("app/src/cache.rs:42", 3 << 20),
                site("app/src/io.rs:7", 512),
            ],
        };
        let text = sites_text("http://t", &sample, 1, false);
        assert!(text.starts_with("http://t: 3.0 MiB in use in 4 objects at 2 allocation sites (sampled every 512.0 KiB allocated)"), "{text}");
        assert!(text.contains("app/src/cache.rs:42"), "{text}");
        assert!(text.contains("... and 1 more sites"), "{text}");
        assert!(!text.contains("outermost first"), "{text}");
        let verbose = sites_text("http://t", &sample, 5, true);
        assert!(
            verbose.contains("    app::main at app/src/main.rs:3"),
            "{verbose}"
        );
        assert!(verbose.contains("512 B"), "{verbose}");
    }

    #[test]
    fn signed_sizes_and_rates_read_well() {
        assert_eq!(signed_bytes(0), "0 B");
        assert_eq!(signed_bytes(-512), "-512 B");
        assert_eq!(signed_bytes(3 << 20), "+3.0 MiB");
        assert_eq!(byte_rate(1_572_864.4), "+1.5 MiB/min");
        assert_eq!(byte_rate(0.2), "0 B/min");
    }
}
