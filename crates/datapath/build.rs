//! Builds the kernel programs (crates/ebpf) with the nightly toolchain and
//! bpf-linker, and checks first that the two agree on the LLVM version.
//!
//! `MYELIN_EBPF_STUB=1` (or aya-build's `AYA_BUILD_SKIP=1`) skips the kernel
//! build and embeds an empty object, for lint-only builds on machines without
//! the kernel toolchain; such a binary refuses to load programs and says why.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, anyhow, bail};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=MYELIN_EBPF_STUB");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("myelin");
    let skip = ["MYELIN_EBPF_STUB", "AYA_BUILD_SKIP"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")));
    if skip {
        println!("cargo:warning=building without kernel programs (stub object): lint-only build");
        std::fs::write(&object, b"").context("writing the stub object")?;
        return Ok(());
    }
    check_llvm_versions()?;
    let ebpf = aya_build::Package {
        name: "myelin-ebpf",
        root_dir: "../ebpf",
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Nightly)
}

/// bpf-linker links the nightly's LLVM bitcode; different LLVM majors fail
/// late with obscure errors, so stop early with the fix.
fn check_llvm_versions() -> anyhow::Result<()> {
    const FIX: &str = "install the matching bpf-linker: apt-get install llvm-22-dev && \
        LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --no-default-features --features llvm-22 \
        (or run `make setup`)";
    let rustc = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version", "--verbose"])
        .output()
        .context("running `rustup run nightly rustc -vV`: the nightly toolchain is needed for the kernel programs; run `make setup`")?;
    if !rustc.status.success() {
        bail!(
            "the nightly toolchain is missing ({}); run `make setup` or `rustup toolchain install nightly --component rust-src`",
            String::from_utf8_lossy(&rustc.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&rustc.stdout);
    let nightly_llvm = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .ok_or_else(|| anyhow!("cannot read the nightly's LLVM version from `rustc -vV`"))?
        .to_string();
    let linker = which_bpf_linker().ok_or_else(|| anyhow!("bpf-linker is not installed: {FIX}"))?;
    println!("cargo:rerun-if-changed={}", linker.display());
    let ldd = Command::new("ldd")
        .arg(&linker)
        .output()
        .context("running ldd on bpf-linker")?;
    let libs = String::from_utf8_lossy(&ldd.stdout);
    let linker_llvm = libs
        .split_whitespace()
        .find_map(|w| {
            w.strip_prefix("libLLVM.so.")
                .or_else(|| w.strip_prefix("libLLVM-"))
        })
        .and_then(|v| v.split(['.', '-']).next())
        .map(str::to_string);
    match linker_llvm {
        Some(v) if v == nightly_llvm => Ok(()),
        Some(v) => bail!(
            "bpf-linker is built against LLVM {v} but the nightly toolchain uses LLVM {nightly_llvm}; \
             {FIX} (replace 22 by {nightly_llvm})"
        ),
        // A statically linked bpf-linker: nothing to compare, let the build tell.
        None => Ok(()),
    }
}

fn which_bpf_linker() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let home_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|c| c.join("bin"));
    std::env::split_paths(&path)
        .chain(home_bin)
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}
