//! Link flags for the binaries.

use std::io::Write;
use std::process::{Command, Stdio};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Packed relative relocations (DT_RELR, glibc >= 2.36: Debian 12, Ubuntu 22.04).
    // A PIE's relocation table is otherwise ~1.4 MB of relative entries, read by the
    // dynamic loader at every start and resident for the life of the process; RELR
    // encodes the same relocations in a few kB. Still a PIE: ASLR is unchanged. The
    // linker records a GLIBC_ABI_DT_RELR version need, so an older glibc refuses to
    // load the binary with a clear error instead of misbehaving. Used only when the
    // system linker accepts the flag.
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.ends_with("-linux-gnu") && linker_packs_relocations() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Links an empty C program with the flag, as rustc's default linker driver (`cc`) would.
fn linker_packs_relocations() -> bool {
    let Ok(out_dir) = std::env::var("OUT_DIR") else {
        return false;
    };
    let out = std::path::Path::new(&out_dir).join("relr-probe");
    let child = Command::new("cc")
        .args([
            "-x",
            "c",
            "-",
            "-pie",
            "-fPIE",
            "-Wl,-z,pack-relative-relocs",
            "-o",
        ])
        .arg(&out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"int main(void) { return 0; }\n");
    }
    matches!(child.wait(), Ok(s) if s.success())
}
