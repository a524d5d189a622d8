//! Times what the web client does with a big room's first sync, in wasm: the same allocator
//! (talc), the same session code, called from Node so V8 compiles and runs it as Chromium does.

use huddle_protocol::schema::Board;
use huddle_protocol::session::ClientSession;
use huddle_protocol::yrs::Doc;
use huddle_protocol::yrs::Transact;
use wasm_bindgen::prelude::*;

#[global_allocator]
static TALC: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

/// Milliseconds spent in `ClientSession::receive` of `frame` (a sync step 2) into a fresh
/// document, and in reading every shape back: `[receive, read]`.
#[wasm_bindgen]
pub fn open(frame: &[u8]) -> Vec<f64> {
    let now = js_sys::Date::now;
    let mut session = ClientSession::new(Doc::new(), || 0);
    let started = now();
    let received = session.receive(frame);
    let receive = now() - started;
    if received.is_err() {
        return vec![f64::NAN, f64::NAN];
    }
    let started = now();
    let board = Board::new(session.doc());
    let _shapes = board.shapes(&session.doc().transact());
    vec![receive, now() - started]
}
