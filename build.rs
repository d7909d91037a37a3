//! Link flags for the binaries.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Packed relative relocations (DT_RELR, glibc >= 2.36: Debian 12, Ubuntu 22.04).
    // A PIE's relocation table is otherwise ~1.4 MB of relative entries, read by the
    // dynamic loader at every start and resident for the life of the process; RELR
    // encodes the same relocations in a few kB. Still a PIE: ASLR is unchanged. The
    // linker records a GLIBC_ABI_DT_RELR version need, so an older glibc refuses to
    // load the binary with a clear error instead of misbehaving.
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.ends_with("-linux-gnu") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
