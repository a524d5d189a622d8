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

/// Drops the open database: the browser closed it (site data cleared to free space, say), and
/// every transaction on it fails from then on. The next save or load opens it again.
fn forget_database() {
    DATABASE.with(|d| *d.borrow_mut() = None);
}

/// The keys under which `room`'s records lie: `<room>#…`, before any other room's (room names
/// are letters, digits, `-` and `_`, all of which sort after `#`, and `~` sorts after every
/// character used in a record's key).
fn records_of(room: &str) -> Option<web_sys::IdbKeyRange> {
    web_sys::IdbKeyRange::bound(
        &JsValue::from_str(&format!("{room}#")),
        &JsValue::from_str(&format!("{room}#~")),
    )
    .ok()
}

/// Waits for `tx` to commit: true once it has, false if it aborted or failed. A request's own
/// success does not mean its transaction committed (a full disk shows only at commit).
async fn committed(tx: &web_sys::IdbTransaction) -> bool {
    let mut callbacks = None;
    let promise = js_sys::Promise::new(&mut |resolve, _reject| {
        let done = resolve.clone();
        let on_complete = Closure::once(move |_: web_sys::Event| {
            let _ = done.call1(&JsValue::NULL, &JsValue::TRUE);
        });
        let on_failure = Closure::<dyn FnMut(web_sys::Event)>::new(move |_: web_sys::Event| {
            let _ = resolve.call1(&JsValue::NULL, &JsValue::FALSE);
        });
        tx.set_oncomplete(Some(on_complete.as_ref().unchecked_ref()));
        tx.set_onabort(Some(on_failure.as_ref().unchecked_ref()));
        tx.set_onerror(Some(on_failure.as_ref().unchecked_ref()));
        callbacks = Some((on_complete, on_failure));
    });
    let outcome = JsFuture::from(promise).await.ok().and_then(|v| v.as_bool()).unwrap_or(false);
    tx.set_oncomplete(None);
    tx.set_onabort(None);
    tx.set_onerror(None);
    drop(callbacks);
    outcome
}

/// Everything saved for `room`, each record with its key: a whole copy of the document or an
/// update. Applying them all, in any order (they are CRDT updates), gives the document as last
/// saved. `None` if the cache could not be read (not the same as nothing saved: then nothing
/// saved may be replaced).
pub async fn load(room: &str) -> Option<Vec<(String, Vec<u8>)>> {
    let db = database().await?;
    let Ok(tx) = db.transaction_with_str(STORE) else {
        forget_database();
        return None;
    };
    let store = tx.object_store(STORE).ok()?;
    // One transaction: one consistent view of what is saved. An older version saved one whole
    // copy under the room's own name.
    let old = store.get(&JsValue::from_str(room)).ok()?;
    let range = records_of(room)?;
    let keys = store.get_all_keys_with_key(&range).ok()?;
    let values = store.get_all_with_key(&range).ok()?;
    let mut saved = Vec::new();
    if let Ok(bytes) = request_future(&old).await.ok()?.dyn_into::<Uint8Array>() {
        saved.push((room.to_owned(), bytes.to_vec()));
    }
    let keys: js_sys::Array = request_future(&keys).await.ok()?.dyn_into().ok()?;
    let values: js_sys::Array = request_future(&values).await.ok()?.dyn_into().ok()?;
    for (key, value) in keys.iter().zip(values.iter()) {
        if let (Some(key), Ok(bytes)) = (key.as_string(), value.dyn_into::<Uint8Array>()) {
            saved.push((key, bytes.to_vec()));
        }
    }
    Some(saved)
}

/// Writes `bytes` (a whole copy of the document, or an update) as the record `key` (see
/// [`record_key`]) and, in the same transaction, deletes the records `replaced` (which the
/// copy holds). Returns whether it was committed; if not, nothing changed.
pub async fn save(key: &str, bytes: &[u8], replaced: &[String]) -> bool {
    let Some(db) = database().await else { return false };
    let Ok(tx) = db.transaction_with_str_and_mode(STORE, IdbTransactionMode::Readwrite) else {
        forget_database();
        return false;
    };
    let Ok(store) = tx.object_store(STORE) else { return false };
    if store.put_with_key(&Uint8Array::from(bytes), &JsValue::from_str(key)).is_err() {
        let _ = tx.abort();
        return false;
    }
    for old in replaced {
        if store.delete(&JsValue::from_str(old)).is_err() {
            let _ = tx.abort();
            return false;
        }
    }
    // Asked to commit now rather than when the page next returns to its event loop: a save on
    // the way out (`pagehide`, a reload right after an edit) never gets back there, and an
    // uncommitted transaction dies with the page. (`commit()` is IndexedDB 3.0, in every
    // current browser; web-sys marks it deprecated from older WebIDL. Where it is missing
    // the call fails and the transaction commits on its own, as before.)
    #[allow(deprecated)]
    let _ = tx.commit();
    committed(&tx).await
}

/// A key for a record of `room`, unique to this page (`page`: a random tag) and sorted by
/// time: `<room>#<ms>-<page>-<count>`. Each page deletes only records it has read or written
/// itself, so two tabs on one room never delete each other's.
pub fn record_key(room: &str, page: &str, count: u32) -> String {
    format!("{room}#{:015}-{page}-{count:08}", crate::sync::now_ms() as u64)
}
