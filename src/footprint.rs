//! The executable's and its shared libraries' pages out of the resident set unless
//! the sidecar uses them.
//!
//! A sidecar runs a lot of code once: command-line and YAML parsing, the Rego
//! compiler, certificate parsing and checks, the first TLS configuration. The
//! kernel maps an executable's pages as they are touched, and with each page the
//! neighbours in its 64 kB block that are in the page cache (fault-around). With the
//! request path's functions spread over 13.7 MB of machine code, that put 8 MB of
//! code in the RSS of a sidecar under load, and 14 MB after start-up. The C
//! library, the loader, `libm` and `libgcc_s` added 2 MB more, mostly by
//! fault-around: 1.3 MB of `libc.so.6` under load.
//!
//! Two measures, both on the clean read-only mappings (code and constants) of the
//! executable and of the shared objects the loader mapped, both leaving the pages
//! in the page cache:
//!
//! - [`map_by_page`], first thing at start-up, gives every page a mapping of its own
//!   (`madvise(MADV_DONTDUMP)` on every other page: a flag that only concerns core
//!   dumps, which leave out an executable's unmodified pages anyway, and splits the
//!   mapping where it changes). Fault-around stays inside a mapping, so each touch
//!   maps one page. The cost is one minor fault per page first used (a few thousand
//!   in a sidecar's life) and a few thousand entries in `/proc/PID/maps`. Skipped
//!   when the pages outnumber a quarter of `vm.max_map_count` (65,530 by default;
//!   the release binary has about 4,200).
//! - [`release_startup_pages`] unmaps those pages from this process
//!   (`madvise(MADV_DONTNEED)`); the next touch of each maps it again with a minor
//!   fault. The sidecar does it once the configuration is read, once identity,
//!   policy and authentication are set up, again before the warm-ups, and a last
//!   time once traffic has mapped the request path: [`RELEASE_AFTER_TRAFFIC`] after
//!   the first decision on a request or connection ([`traffic_decided`]), or
//!   [`RELEASE_AFTER`] start-up if none came.
//!
//! `PORTCULLIS_RELEASE_STARTUP_PAGES=off` turns both off.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long after start-up the start-up pages are released when no traffic came.
const RELEASE_AFTER: Duration = Duration::from_secs(10);

/// How long after the first decision the start-up pages are released: by then the
/// request path is mapped, and a sidecar that starts under load does not reach its
/// peak with start-up's code still resident.
const RELEASE_AFTER_TRAFFIC: Duration = Duration::from_secs(1);

static TRAFFIC: AtomicBool = AtomicBool::new(false);
static FIRST_TRAFFIC: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Notes that a request or connection was decided on (one atomic load after the
/// first call). A port probe does not count: it never reaches a decision.
pub fn traffic_decided() {
    if !TRAFFIC.load(Ordering::Relaxed) && !TRAFFIC.swap(true, Ordering::AcqRel) {
        FIRST_TRAFFIC.notify_one();
    }
}

/// Until the first decision ([`traffic_decided`]).
async fn first_traffic() {
    if !TRAFFIC.load(Ordering::Acquire) {
        FIRST_TRAFFIC.notified().await;
    }
}

/// When the last release is due: [`RELEASE_AFTER_TRAFFIC`] after the first
/// decision, or [`RELEASE_AFTER`] after this is first polled, whichever is sooner.
pub async fn release_due() {
    tokio::select! {
        _ = tokio::time::sleep(RELEASE_AFTER) => {}
        _ = async {
            first_traffic().await;
            tokio::time::sleep(RELEASE_AFTER_TRAFFIC).await;
        } => {}
    }
}

/// Whether `PORTCULLIS_RELEASE_STARTUP_PAGES=off` keeps every page as the kernel maps it.
#[cfg(target_os = "linux")]
fn turned_off() -> bool {
    std::env::var("PORTCULLIS_RELEASE_STARTUP_PAGES").is_ok_and(|v| v == "off")
}

/// The clean read-only mappings of the executable and its shared objects, read
/// from `/proc/self/smaps` line by line (with a mapping per page, the file is
/// several MB).
#[cfg(target_os = "linux")]
fn own_clean_mappings() -> Vec<(usize, usize)> {
    use std::io::BufRead;
    let (Ok(exe), Ok(smaps)) = (
        std::fs::read_link("/proc/self/exe"),
        std::fs::File::open("/proc/self/smaps"),
    ) else {
        return Vec::new();
    };
    let lines = std::io::BufReader::new(smaps).lines().map_while(Result::ok);
    clean_mappings(lines, &exe.to_string_lossy())
}

/// Splits the clean read-only mappings ([`own_clean_mappings`]) into one mapping
/// per page, so that a touch maps that page only (see the module's comment).
/// Returns the number of pages marked; 0 when turned off or nothing was done.
#[cfg(target_os = "linux")]
pub fn map_by_page() -> usize {
    if turned_off() {
        return 0;
    }
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return 0,
    };
    let mappings = own_clean_mappings();
    // Each page becomes a mapping: leave three quarters of the process's limit on
    // mappings (vm.max_map_count) to everything else, or split nothing.
    let pages: usize = mappings.iter().map(|(s, e)| (e - s) / page).sum();
    let limit = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(65_530);
    if pages > limit / 4 {
        return 0;
    }
    let mut marked = 0;
    for (start, end) in mappings {
        for at in (start..end).step_by(2 * page) {
            // SAFETY: the page lies in a read-only file mapping of our own executable,
            // listed by the kernel; MADV_DONTDUMP changes whether a core dump includes
            // it and nothing else (no access, no content).
            if unsafe { libc::madvise(at as *mut libc::c_void, page, libc::MADV_DONTDUMP) } == 0 {
                marked += 1;
            }
        }
    }
    marked
}

/// Unmaps the clean read-only and executable file mappings of the executable and
/// its shared objects from this process. Returns the bytes released (their pages
/// stay cached), or 0 when nothing was done.
#[cfg(target_os = "linux")]
pub fn release_startup_pages() -> usize {
    if turned_off() {
        return 0;
    }
    let mut released = 0;
    for (start, end) in own_clean_mappings() {
        // SAFETY: the range is a private file mapping of our own executable, listed by
        // the kernel, read-only and without a page of its own; MADV_DONTNEED on it
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

/// The address ranges in `smaps` (the lines of `/proc/self/smaps`) that map `exe`
/// or a shared object ([`shared_object`]) read-only (`r--p` or `r-xp`) and hold no
/// page of their own. A file replaced since it was mapped shows as `(deleted)` and
/// is left alone. A private page that was written is a copy (counted in
/// `Anonymous`), and dropping it would lose the write: RELRO pages, written by the
/// dynamic loader (relocations) before being made read-only, are skipped, and so
/// would be text the loader relocated or a debugger patched. (`Private_Dirty` is no guide: a freshly built executable's page-cache
/// pages are dirty until written back, and they are the file's own.) Adjacent ranges
/// (one mapping split by [`map_by_page`]) come back joined.
#[cfg(target_os = "linux")]
fn clean_mappings<S: AsRef<str>>(
    smaps: impl IntoIterator<Item = S>,
    exe: &str,
) -> Vec<(usize, usize)> {
    let mut clean: Vec<(usize, usize)> = Vec::new();
    // The mapping being read: its range if it is a candidate, and whether it holds
    // copies of its own (or did not say).
    let mut current: Option<(usize, usize)> = None;
    let mut copied = true;
    let mut finish = |current: Option<(usize, usize)>, copied: bool| {
        if let (Some((start, end)), false) = (current, copied) {
            match clean.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => clean.push((start, end)),
            }
        }
    };
    for line in smaps {
        let line = line.as_ref();
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
            let path = fields.nth(3);
            let ours =
                path.is_some_and(|p| p == exe || shared_object(p)) && fields.next().is_none();
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

/// Whether `path` names a shared object the loader maps (`libc.so.6`,
/// `ld-linux-x86-64.so.2`, `libfoo.so`): an absolute path whose file name ends in
/// `.so` or in `.so.` and a version of digits and dots.
#[cfg(target_os = "linux")]
fn shared_object(path: &str) -> bool {
    let Some(name) = path.strip_prefix('/').and_then(|p| p.rsplit('/').next()) else {
        return false;
    };
    name.ends_with(".so")
        || name.rsplit_once(".so.").is_some_and(|(_, version)| {
            !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.')
        })
}

/// Nothing to release where `/proc/self/smaps` does not exist.
#[cfg(not(target_os = "linux"))]
pub fn release_startup_pages() -> usize {
    0
}

/// Nothing to split where there is no `/proc/self/smaps`.
#[cfg(not(target_os = "linux"))]
pub fn map_by_page() -> usize {
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
    fn only_clean_read_only_mappings_of_the_executable_and_libraries_are_candidates() {
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
            clean_mappings(smaps.lines(), "/opt/bin/portcullis"),
            // Side by side: one range; then the C library's code.
            vec![
                (0x55d0c0000000, 0x55d0c1000000),
                (0x55d0c1200000, 0x55d0c1300000)
            ]
        );
        assert!(shared_object("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(shared_object("/lib64/ld-linux-x86-64.so.2"));
        assert!(shared_object("/opt/lib/libfoo.so"));
        assert!(!shared_object("/opt/data/policy.sort"));
        assert!(!shared_object("/opt/data/notes.so.txt.gz"));
        assert!(shared_object("/usr/lib/libssl.so.3.0.2"));
        assert!(!shared_object("[vdso]"));
    }

    /// Constants of the test binary: 256 kB of read-only data, not zero (zeroes
    /// would be placed in anonymous memory).
    static CONSTANTS: [u8; 256 * 1024] = [7; 256 * 1024];

    /// Resident kB of the mappings inside `range`. The pages at its two ends are
    /// left out: they also hold other constants, which concurrent tests read.
    fn resident_kb_in(range: std::ops::Range<usize>) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let mut inside = false;
        let mut total = 0;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or_default();
            if let Some((a, b)) = first.split_once('-') {
                let (a, b) = (
                    usize::from_str_radix(a, 16).unwrap_or(0),
                    usize::from_str_radix(b, 16).unwrap_or(0),
                );
                inside = range.start <= a && b <= range.end && a < b;
            } else if let (true, Some(v)) = (inside, line.strip_prefix("Rss:")) {
                total += v
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
        total
    }

    // One test for both functions: a release by a concurrent test would unmap the
    // page this one counts.
    #[test]
    fn with_a_mapping_per_page_a_touch_maps_one_page_and_release_unmaps_it() {
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

        let marked = map_by_page();
        assert!(marked > 100, "marked {marked} pages");
        let start = CONSTANTS.as_ptr() as usize;
        let range = start..start + CONSTANTS.len();
        release_startup_pages();
        assert_eq!(resident_kb_in(range.clone()), 0);
        // One byte in the middle: its page only, where fault-around would map the
        // 64 kB around it.
        let byte = std::hint::black_box(&CONSTANTS)[128 * 1024 + 100];
        assert_eq!(byte, 7);
        let resident = resident_kb_in(range.clone());
        assert!(
            resident > 0 && resident <= 8,
            "{resident} kB resident after one touch"
        );
        // Every page still reads the same.
        assert!(std::hint::black_box(&CONSTANTS).iter().all(|&b| b == 7));
        assert!(resident_kb_in(range) >= 248);
    }
}
