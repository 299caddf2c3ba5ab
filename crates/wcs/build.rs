//! Links WCSLIB (Debian `wcslib-dev`, found with pkg-config) and generates declarations for
//! the few functions and the `wcsprm` struct the binding uses.

fn main() {
    let lib = pkg_config::Config::new()
        .atleast_version("7.0")
        .probe("wcslib")
        .expect("WCSLIB ≥ 7 not found by pkg-config: install wcslib-dev (scripts/install-deps.sh)");
    println!("cargo:rerun-if-changed=wrapper.h");
    let mut builder = bindgen::Builder::default()
        .header("wrapper.h")
        .allowlist_function("wcspih|wcsset|wcsp2s|wcss2p|wcsvfree|wcshdo|wcsdealloc|wcserr_enable")
        .allowlist_type("wcsprm")
        .allowlist_var("WCSHDR_all|WCSHDO_safe|WCSHDO_P17")
        .layout_tests(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for dir in lib.include_paths.iter() {
        builder = builder.clang_arg(format!("-I{}", dir.display()));
        if let Some(parent) = dir.parent() {
            builder = builder.clang_arg(format!("-I{}", parent.display()));
        }
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    builder
        .generate()
        .expect("bindgen could not read the WCSLIB headers")
        .write_to_file(out.join("wcslib.rs"))
        .expect("writing the WCSLIB bindings");
}
