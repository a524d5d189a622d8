//! Mounts the Huddle web client; everything else lives in the library.

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(huddle_web::App);
}
