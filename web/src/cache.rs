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

/// The saved document of `room`, if any.
pub async fn load(room: &str) -> Option<Vec<u8>> {
    let db = database().await?;
    let tx = db.transaction_with_str(STORE).ok()?;
    let request = tx.object_store(STORE).ok()?.get(&JsValue::from_str(room)).ok()?;
    let value = request_future(&request).await.ok()?;
    value.dyn_into::<Uint8Array>().ok().map(|a| a.to_vec())
}

/// Saves `state` as `room`'s document.
pub async fn save(room: &str, state: &[u8]) {
    let Some(db) = database().await else { return };
    let Ok(tx) = db.transaction_with_str_and_mode(STORE, IdbTransactionMode::Readwrite) else {
        return;
    };
    let Ok(store) = tx.object_store(STORE) else { return };
    if let Ok(request) = store.put_with_key(&Uint8Array::from(state), &JsValue::from_str(room)) {
        let _ = request_future(&request).await;
    }
}
