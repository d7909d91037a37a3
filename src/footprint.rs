//! Start-up code out of the resident set.
//!
//! A sidecar runs a lot of code once: command-line and YAML parsing, the Rego
//! compiler, certificate parsing and checks, the first TLS configuration. The
//! kernel maps the executable's pages as they are touched, and maps their
//! neighbours with them (fault-around), so after start-up most of the 14 MB of
//! machine code counts in the process's RSS although the request path uses a
//! fraction of it. [`release_startup_pages`] unmaps the executable's read-only
//! mappings from this process (`madvise(MADV_DONTNEED)`): the pages stay in the
//! page cache, and the next touch of each maps it again with a minor fault. The
//! sidecar does it [`RELEASE_AFTER`] start-up, not before it reports ready: the
//! first requests find the request path mapped by the warm-ups, and the few
//! requests after the release map back what they use (about 0.5 ms in all).
//!
//! `PORTCULLIS_RELEASE_STARTUP_PAGES=off` keeps every page mapped.

use std::time::Duration;

/// How long after start-up the start-up pages are released.
pub const RELEASE_AFTER: Duration = Duration::from_secs(10);

/// Unmaps the executable's read-only and executable file mappings from this
/// process. Returns the bytes released (their pages stay cached), or 0 when
/// nothing was done.
#[cfg(target_os = "linux")]
pub fn release_startup_pages() -> usize {
    if std::env::var("PORTCULLIS_RELEASE_STARTUP_PAGES").is_ok_and(|v| v == "off") {
        return 0;
    }
    let (Ok(exe), Ok(smaps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/smaps"),
    ) else {
        return 0;
    };
    let mut released = 0;
    for (start, end) in clean_mappings(&smaps, &exe.to_string_lossy()) {
        // SAFETY: the range is a private file mapping of our own executable, listed
        // by the kernel, read-only and without a dirty page; MADV_DONTNEED on it
        // drops the page table entries only, and the next access maps the same file
        // contents again.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if rc == 0 {
            released += end - start;
        }
    }
    released
}

/// The address ranges in `smaps` (the text of `/proc/self/smaps`) that map `exe`
/// read-only (`r--p` or `r-xp`) and hold no page of their own. A private page that
/// was written is a copy (counted in `Anonymous`), and dropping it would lose the
/// write: RELRO pages, written by the dynamic loader (relocations) before being made
/// read-only, are skipped, and so would be text the loader relocated or a debugger
/// patched. (`Private_Dirty` is no guide: a freshly built executable's page-cache
/// pages are dirty until written back, and they are the file's own.)
#[cfg(target_os = "linux")]
fn clean_mappings(smaps: &str, exe: &str) -> Vec<(usize, usize)> {
    let mut clean = Vec::new();
    // The mapping being read: its range if it is a candidate, and whether it holds
    // copies of its own (or did not say).
    let mut current: Option<(usize, usize)> = None;
    let mut copied = true;
    let mut finish = |current: Option<(usize, usize)>, copied: bool| {
        if let (Some(range), false) = (current, copied) {
            clean.push(range);
        }
    };
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some((start, end)) = first.split_once('-') {
            // A mapping's header: range, perms, offset, device, inode, path.
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            finish(current.take(), copied);
            copied = true;
            let perms = fields.next();
            let ours = fields.nth(3) == Some(exe) && fields.next().is_none();
            if ours && matches!(perms, Some("r--p" | "r-xp")) && end > start {
                current = Some((start, end));
            }
        } else if first == "Anonymous:" {
            copied = fields.next() != Some("0");
        }
    }
    finish(current, copied);
    clean
}

/// Nothing to release where `/proc/self/smaps` does not exist.
#[cfg(not(target_os = "linux"))]
pub fn release_startup_pages() -> usize {
    0
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn rss_file_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssFile:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn only_clean_read_only_mappings_of_the_executable_are_candidates() {
        let smaps = "\
55d0c0000000-55d0c0200000 r--p 00000000 fe:00 42 /opt/bin/portcullis
Private_Dirty:       120 kB
Anonymous:             0 kB
55d0c0200000-55d0c1000000 r-xp 00200000 fe:00 42 /opt/bin/portcullis
Private_Dirty:         0 kB
Anonymous:             0 kB
55d0c1000000-55d0c1100000 r--p 01000000 fe:00 42 /opt/bin/portcullis
Private_Dirty:       512 kB
Anonymous:           512 kB
55d0c1100000-55d0c1200000 rw-p 01100000 fe:00 42 /opt/bin/portcullis
Anonymous:             0 kB
55d0c1200000-55d0c1300000 r-xp 00000000 fe:00 43 /usr/lib/libc.so.6
Anonymous:             0 kB
55d0c1300000-55d0c1400000 r-xp 00000000 fe:00 44 /opt/bin/portcullis (deleted)
Anonymous:             0 kB
55d0c1400000-55d0c1500000 r-xp 01400000 fe:00 42 /opt/bin/portcullis
Private_Dirty:         0 kB
";
        assert_eq!(
            clean_mappings(smaps, "/opt/bin/portcullis"),
            vec![
                (0x55d0c0000000, 0x55d0c0200000),
                (0x55d0c0200000, 0x55d0c1000000)
            ]
        );
    }

    #[test]
    fn releases_the_executable_pages_and_the_code_still_runs() {
        let before = rss_file_kb();
        let released = release_startup_pages();
        // The test binary's code and constants, all of it mapped read-only.
        assert!(released > 1 << 20, "released {released} bytes");
        let after = rss_file_kb();
        assert!(after < before, "RssFile {before} kB -> {after} kB");
        // Code and constants fault back in on use: parse, format, allocate, hash.
        let v: serde_json::Value = serde_json::from_str(r#"{"a":[1,2,3]}"#).unwrap_or_default();
        assert_eq!(v["a"][2], 3);
        assert_eq!(format!("{:x}", 3054), "bee");
    }
}
