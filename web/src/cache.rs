//! The offline cache: each room's document is kept in IndexedDB, so a reload while offline still
//! shows the board and loses no edit made before it.
//!
//! Raw `web-sys` IndexedDB calls behind two small async functions (a wrapper crate would add
//! more code than it saves for one object store and two operations).

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::Uint8Array;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{IdbDatabase, IdbOpenDbRequest, IdbRequest, IdbTransactionMode};

const DB: &str = "huddle";
const STORE: &str = "rooms";

/// Turns an IndexedDB request into a future of its result.
///
/// The two callbacks live as long as the future and are dropped when it completes (after the
/// request's handlers are cleared): a request fires only one of them, so handing both to JS for
/// good (`once_into_js`) leaked the other on every request.
fn request_future(request: &IdbRequest) -> impl Future<Output = Result<JsValue, JsValue>> {
    let mut callbacks = None;
    let promise = js_sys::Promise::new(&mut |resolve, reject| {
        let ok_request = request.clone();
        let on_success = Closure::once(move |_: web_sys::Event| {
            let _ =
                resolve.call1(&JsValue::NULL, &ok_request.result().unwrap_or(JsValue::UNDEFINED));
        });
        let on_error = Closure::once(move |_: web_sys::Event| {
            let _ = reject.call0(&JsValue::NULL);
        });
        request.set_onsuccess(Some(on_success.as_ref().unchecked_ref()));
        request.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        callbacks = Some((on_success, on_error));
    });
    let request = request.clone();
    async move {
        let result = JsFuture::from(promise).await;
        request.set_onsuccess(None);
        request.set_onerror(None);
        drop(callbacks);
        result
    }
}

async fn open() -> Option<IdbDatabase> {
    let factory = web_sys::window()?.indexed_db().ok()??;
    let request: IdbOpenDbRequest = factory.open_with_u32(DB, 1).ok()?;
    // Fires (if at all) before success; kept alive until the open completes.
    let upgrade = Closure::once({
        let request = request.clone();
        move |_: web_sys::Event| {
            if let Ok(db) = request.result().and_then(|r| r.dyn_into::<IdbDatabase>()) {
                let _ = db.create_object_store(STORE);
            }
        }
    });
    request.set_onupgradeneeded(Some(upgrade.as_ref().unchecked_ref()));
    let opened = request_future(&request).await;
    request.set_onupgradeneeded(None);
    drop(upgrade);
    opened.ok()?.dyn_into::<IdbDatabase>().ok()
}

thread_local! {
    static DATABASE: RefCell<Option<Rc<IdbDatabase>>> = const { RefCell::new(None) };
}

async fn database() -> Option<Rc<IdbDatabase>> {
    if let Some(db) = DATABASE.with(|d| d.borrow().clone()) {
        return Some(db);
    }
    let db = Rc::new(open().await?);
    DATABASE.with(|d| *d.borrow_mut() = Some(Rc::clone(&db)));
    Some(db)
}

/// The keys under which `room`'s saved updates lie: `<room>#…`, after the whole copy's key
/// `<room>` and before any other room's (room names are letters, digits, `-` and `_`, all of
/// which sort after `#`, and `~` sorts after every character used in an update's key).
fn updates_of(room: &str) -> Option<web_sys::IdbKeyRange> {
    web_sys::IdbKeyRange::bound(
        &JsValue::from_str(&format!("{room}#")),
        &JsValue::from_str(&format!("{room}#~")),
    )
    .ok()
}

/// Everything saved for `room`: its whole copy, if any, then each update saved since. Applying
/// them all, in any order (they are CRDT updates), gives the document as last saved.
pub async fn load(room: &str) -> Vec<Vec<u8>> {
    let mut saved = Vec::new();
    let Some(db) = database().await else { return saved };
    let Ok(tx) = db.transaction_with_str(STORE) else { return saved };
    let Ok(store) = tx.object_store(STORE) else { return saved };
    // Both requests in one transaction: one consistent view of what is saved.
    let whole = store.get(&JsValue::from_str(room)).ok();
    let updates = updates_of(room).and_then(|range| store.get_all_with_key(&range).ok());
    if let Some(request) = whole
        && let Ok(value) = request_future(&request).await
        && let Ok(bytes) = value.dyn_into::<Uint8Array>()
    {
        saved.push(bytes.to_vec());
    }
    if let Some(request) = updates
        && let Ok(values) = request_future(&request).await
        && let Ok(values) = values.dyn_into::<js_sys::Array>()
    {
        saved.extend(
            values.iter().filter_map(|v| v.dyn_into::<Uint8Array>().ok()).map(|a| a.to_vec()),
        );
    }
    saved
}

/// Replaces everything saved for `room` with `state`, a whole copy of its document. Returns
/// whether it was written.
pub async fn save_whole(room: &str, state: &[u8]) -> bool {
    let Some(db) = database().await else { return false };
    let Ok(tx) = db.transaction_with_str_and_mode(STORE, IdbTransactionMode::Readwrite) else {
        return false;
    };
    let Ok(store) = tx.object_store(STORE) else { return false };
    let Some(range) = updates_of(room) else { return false };
    // One transaction: the updates go only if the copy that holds them is written.
    let Ok(put) = store.put_with_key(&Uint8Array::from(state), &JsValue::from_str(room)) else {
        return false;
    };
    let Ok(delete) = store.delete(&range) else { return false };
    request_future(&put).await.is_ok() && request_future(&delete).await.is_ok()
}

/// Adds `update` (what changed since the previous save) to what is saved for `room`, under
/// `key` (see [`update_key`]). Returns whether it was written.
pub async fn save_update(room: &str, key: &str, update: &[u8]) -> bool {
    let Some(db) = database().await else { return false };
    let Ok(tx) = db.transaction_with_str_and_mode(STORE, IdbTransactionMode::Readwrite) else {
        return false;
    };
    let Ok(store) = tx.object_store(STORE) else { return false };
    debug_assert!(key.starts_with(&format!("{room}#")));
    match store.put_with_key(&Uint8Array::from(update), &JsValue::from_str(key)) {
        Ok(request) => request_future(&request).await.is_ok(),
        Err(_) => false,
    }
}

/// A key for an update of `room` that sorts after the room's earlier ones and never meets
/// another page's: the time, then a number counting this page's saves.
pub fn update_key(room: &str, count: u32) -> String {
    format!("{room}#{:015}-{count:08}", crate::sync::now_ms() as u64)
}
