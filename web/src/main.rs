//! Mounts the Huddle web client; everything else lives in the library.

/// Talc instead of Rust's default wasm allocator (dlmalloc): opening a big room makes a few
/// hundred thousand small allocations in yrs, and malloc was the biggest single entry in its
/// CPU profile (docs/benchmarks.md).
#[cfg(all(not(target_feature = "atomics"), target_family = "wasm"))]
#[global_allocator]
static TALC: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(huddle_web::App);
}
