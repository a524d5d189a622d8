//! `sqlx::migrate!` embeds `migrations/` when the crate is compiled: a migration added or
//! changed there must rebuild it, or the binary would carry the old schema.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
