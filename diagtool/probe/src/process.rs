//! Process figures from `/proc/self`: resident memory, open file descriptors, threads.
//!
//! Reading fails soft: on a system without `/proc` (or when a file is unreadable) the figure is 0,
//! because a snapshot without RSS is still worth serving.

use std::fs;

use crate::model::ProcessStats;

/// Reads this process's figures.
///
/// # Examples
/// ```
/// let stats = diagtool_probe::process_stats();
/// assert_eq!(stats.pid, std::process::id());
/// ```
pub fn process_stats() -> ProcessStats {
    ProcessStats {
        pid: std::process::id(),
        rss_bytes: rss_bytes().unwrap_or(0),
        open_fds: open_fds().unwrap_or(0),
        threads: threads().unwrap_or(0),
    }
}

fn rss_bytes() -> Option<u64> {
    // statm: size resident shared text lib data dt, in pages.
    let statm = fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page_size)
        .ok()
        .map(|page| pages.saturating_mul(page))
}

fn open_fds() -> Option<u64> {
    // The directory handle itself shows up in the listing; leave it out.
    let count = fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(count.saturating_sub(1))
}

fn threads() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// When the running executable's file was replaced or removed since the process started, a
/// warning saying so. Dumps and CPU profiles resolve symbols by reading the executable at its path,
/// so after a deploy that overwrote it their frames come out missing or wrong: the reader must know.
pub fn stale_binary_warning() -> Option<String> {
    let link = fs::read_link("/proc/self/exe").ok()?;
    stale_warning(&link.to_string_lossy())
}

/// Linux shows `/proc/self/exe` of a replaced or removed file with a ` (deleted)` suffix.
fn stale_warning(exe_link: &str) -> Option<String> {
    let path = exe_link.strip_suffix(" (deleted)")?;
    Some(format!(
        "the executable {path} was replaced or removed on disk after this process started: symbols \
         in dumps and CPU profiles may be missing or wrong; restart the process onto the new \
         binary to trace it"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_follow_real_changes() {
        let before = process_stats();
        assert!(before.rss_bytes > 0, "{before:?}");
        // Other tests open and close files in parallel, so only a lower bound is certain.
        let files: Vec<_> = (0..64)
            .map(|_| tempfile::tempfile().expect("tempfile"))
            .collect();
        assert!(process_stats().open_fds >= 64);
        drop(files);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || rx.recv());
        assert!(process_stats().threads >= 2);
        drop(tx);
        thread.join().expect("join").ok();
    }

    #[test]
    fn a_deleted_executable_is_named_and_a_present_one_is_not() {
        let warning = stale_warning("/usr/local/bin/shipper (deleted)").expect("warns");
        assert!(
            warning.contains("/usr/local/bin/shipper was replaced"),
            "{warning}"
        );
        assert_eq!(stale_warning("/usr/local/bin/shipper"), None);
        // The test binary itself is in place.
        assert_eq!(stale_binary_warning(), None);
    }
}
