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
/// let stats = diagtool::probe::process_stats();
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
}
