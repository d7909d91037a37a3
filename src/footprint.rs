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
    let (Ok(exe), Ok(maps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::read_to_string("/proc/self/maps"),
    ) else {
        return 0;
    };
    let exe = exe.to_string_lossy();
    let mut released = 0;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms), Some(offset)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        // Only pages nobody wrote: dropping a written private page would lose the
        // write. The machine code (`r-xp`) and the first read-only segment (file
        // offset 0: headers, constants, unwind tables) are never written. Other
        // read-only mappings are not safe: RELRO pages were written by the dynamic
        // loader (relocations) before being made read-only.
        let clean = perms == "r-xp" || (perms == "r--p" && offset.bytes().all(|b| b == b'0'));
        if !clean || fields.nth(2) != Some(&*exe) {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: the range is a read-only private file mapping of our own
        // executable, listed by the kernel; MADV_DONTNEED on it drops the page
        // table entries only, and the next access maps the same file contents.
        let rc =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        if rc == 0 {
            released += end - start;
        }
    }
    released
}

/// Nothing to release where `/proc/self/maps` does not exist.
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
