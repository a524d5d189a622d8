//! `huddle-web`: the Huddle web client (Leptos, client-side rendered, compiled to wasm).
//!
//! Modules:
//! - [`identity`]: the local user (name, colour) kept in `localStorage`; random room names.
//! - [`sync`]: the connection: `huddle-protocol`'s `ClientSession` over a browser WebSocket,
//!   reconnect with backoff, undo/redo of one's own edits, throttled presence.
//! - [`state`]: what a room view's components share ([`state::RoomState`], [`state::Tool`]).
//! - [`board`]: the canvas board and every tool's pointer handling.
//! - [`geometry`], [`render`]: viewport maths, hit testing, and drawing.
//! - [`chat`]: the chat panel.
//! - [`cache`]: the offline cache of each room's document in IndexedDB.
//! - [`export`]: PNG / SVG / JSON export, copy and paste.
//! - [`icons`]: the toolbar's SVG icons.
//!
//! This file holds the top-level components: routing, the landing page, the room layout.

pub mod board;
pub mod cache;
pub mod chat;
pub mod export;
pub mod geometry;
pub mod icons;
pub mod identity;
pub mod render;
pub mod state;
pub mod sync;

use std::rc::Rc;

use huddle_protocol::RoomName;
use huddle_protocol::presence::{Presence, ScreenSize, User, Viewport};
use huddle_protocol::yrs::Any;
use leptos::ev;
use leptos::prelude::*;
use wasm_bindgen::JsCast;

use crate::board::BoardView;
use crate::chat::ChatPanel;
use crate::identity::{Identity, USER_COLORS, random_room_name};
use crate::state::{RoomState, Tool};
use crate::sync::{Connection, Refusal, Signals, Status, now_ms};

/// No input for this long marks a user as away.
const IDLE_AFTER_MS: f64 = 120_000.0;
/// Where the theme someone chose is remembered (`dark` or `light`).
const THEME_KEY: &str = "huddle.theme";

/// Whether a key event happens while typing in a text field (shortcuts must not fire then).
pub fn typing_in_field(ev: &web_sys::KeyboardEvent) -> bool {
    in_field(ev.target())
}

/// Whether an event's target is a text field (where keys and pastes belong to the field).
fn in_field(target: Option<web_sys::EventTarget>) -> bool {
    target.and_then(|t| t.dyn_into::<web_sys::Element>().ok()).is_some_and(|el| {
        matches!(el.tag_name().as_str(), "INPUT" | "TEXTAREA")
            || el.has_attribute("contenteditable")
    })
}

fn current_path() -> String {
    window().location().pathname().unwrap_or_default()
}

fn navigate(path: RwSignal<String>, to: &str) {
    // Already there (joining the room whose link was opened): nothing to re-render.
    if path.get_untracked() == to {
        return;
    }
    if let Ok(history) = window().history() {
        let _ = history.push_state_with_url(&wasm_bindgen::JsValue::NULL, "", Some(to));
    }
    path.set(to.to_owned());
}

/// The application: the landing page at `/`, a room at `/r/{room}`.
#[component]
pub fn App() -> impl IntoView {
    let path = RwSignal::new(current_path());
    let popstate = window_event_listener(ev::popstate, move |_| path.set(current_path()));
    on_cleanup(move || popstate.remove());
    let identity = RwSignal::new(Identity::load());
    // The theme someone picked is remembered; until they pick one, the system's is used.
    let storage = window().local_storage().ok().flatten();
    let chosen = storage.as_ref().and_then(|s| s.get_item(THEME_KEY).ok().flatten());
    let dark = RwSignal::new(match chosen.as_deref() {
        Some("dark") => true,
        Some("light") => false,
        _ => window()
            .match_media("(prefers-color-scheme: dark)")
            .ok()
            .flatten()
            .is_some_and(|m| m.matches()),
    });
    Effect::new(move |first: Option<()>| {
        let dark = dark.get();
        if let Some(body) = document().body() {
            body.set_class_name(if dark { "theme-dark" } else { "theme-light" });
        }
        // Only a change is a choice: the first run applies the system's theme.
        if first.is_some()
            && let Some(storage) = &storage
        {
            let _ = storage.set_item(THEME_KEY, if dark { "dark" } else { "light" });
        }
    });

    move || {
        let room = path
            .get()
            .strip_prefix("/r/")
            .and_then(|r| RoomName::parse(r.trim_end_matches('/')).ok());
        // A room opens at once, also for someone who has not given a name yet: the board
        // loads behind the name prompt (they can see what they are joining, and nobody sees
        // them until they join).
        match room {
            Some(room) => {
                view! { <RoomView room=room.to_string() path=path identity=identity dark=dark/> }
                    .into_any()
            }
            None => view! { <Landing path=path identity=identity room=None/> }.into_any(),
        }
    }
}

/// The landing page: who you are (asked once), then create a room or join one by name.
#[component]
fn Landing(
    /// The router's path, to navigate into a room.
    path: RwSignal<String>,
    /// The remembered identity, set here.
    identity: RwSignal<Option<Identity>>,
    /// A room already chosen through its URL (we only need a name first).
    room: Option<String>,
) -> impl IntoView {
    let name = RwSignal::new(identity.get_untracked().map(|i| i.name).unwrap_or_default());
    let color = RwSignal::new(
        identity
            .get_untracked()
            .map(|i| i.color)
            .unwrap_or_else(|| USER_COLORS[identity::random_below(8)].to_owned()),
    );
    let join = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let target = room.clone();
    let enter = move |room: Option<String>| {
        let n = name.get_untracked();
        if n.trim().is_empty() {
            error.set(Some("Please enter your name first.".into()));
            return;
        }
        let me = Identity::new(&n, &color.get_untracked());
        me.save();
        identity.set(Some(me));
        let room = room.unwrap_or_else(random_room_name);
        navigate(path, &format!("/r/{room}"));
    };
    let enter_join = move || {
        let raw = join.get_untracked();
        // Accept a pasted room URL as well as a bare name.
        let candidate = raw.trim().rsplit('/').next().unwrap_or_default().to_owned();
        match RoomName::parse(&candidate) {
            Ok(r) => enter(Some(r.to_string())),
            Err(e) => error.set(Some(format!("That room name won't work: {e}."))),
        }
    };
    view! {
        <main class="landing">
            <div class="landing-card">
                <h1 class="brand"><img src="/assets/favicon.svg" alt="" width="36" height="36"/>"Huddle"</h1>
                {match room.clone() {
                    // Over a room's board: say which room they are joining.
                    Some(room) => view! {
                        <p class="tagline" data-testid="join-room-name">"You are joining "<strong>{room}</strong>". Who are you?"</p>
                    }.into_any(),
                    None => view! {
                        <p class="tagline">"Draw together, see each other, talk beside the board."</p>
                    }.into_any(),
                }}
                <label class="field">
                    <span>"Your name"</span>
                    <input type="text" data-testid="name-input" aria-label="Your name" maxlength="40" autofocus=true
                        prop:value=move || name.get() on:input=move |ev| name.set(event_target_value(&ev))
                        placeholder="e.g. Ada"/>
                </label>
                <div class="field">
                    <span>"Your colour"</span>
                    <div class="swatches" role="radiogroup" aria-label="Your colour">
                        {USER_COLORS.iter().map(|c| {
                            let c = (*c).to_owned();
                            let c2 = c.clone();
                            let c3 = c.clone();
                            view! {
                                <button class="swatch" role="radio" aria-label=format!("Colour {c}")
                                    data-testid=format!("color-{}", &c[1..])
                                    aria-checked=move || (color.get() == c2).to_string()
                                    style:background=c.clone() on:click=move |_| color.set(c3.clone())></button>
                            }
                        }).collect_view()}
                    </div>
                </div>
                {move || error.get().map(|e| view! { <p class="error" role="alert" data-testid="landing-error">{e}</p> })}
                {match target {
                    Some(room) => view! {
                        <button class="primary" data-testid="enter-room" on:click=move |_| enter(Some(room.clone()))>
                            "Join the room"
                        </button>
                    }.into_any(),
                    None => view! {
                        <button class="primary" data-testid="create-room" on:click=move |_| enter(None)>"Create a room"</button>
                        <div class="join">
                            <input type="text" data-testid="join-input" aria-label="Room name or link" placeholder="Room name or link"
                                prop:value=move || join.get() on:input=move |ev| join.set(event_target_value(&ev))
                                on:keydown=move |ev: web_sys::KeyboardEvent| if ev.key() == "Enter" { enter_join() }/>
                            <button data-testid="join-room" on:click=move |_| enter_join()>"Join"</button>
                        </div>
                    }.into_any(),
                }}
            </div>
        </main>
    }
}

/// One room: toolbar, board, people and chat, status bar.
#[component]
fn RoomView(
    /// The room's name.
    room: String,
    /// The router's path (the name prompt may navigate).
    path: RwSignal<String>,
    /// The local user, once they have given a name.
    identity: RwSignal<Option<Identity>>,
    /// Dark theme switch.
    dark: RwSignal<bool>,
) -> impl IntoView {
    let signals = Signals::new();
    let named = identity.get_untracked();
    let joined = RwSignal::new(named.is_some());
    // Until they join, nothing is authored or announced under this placeholder.
    let me = named.unwrap_or_else(|| Identity::new("", USER_COLORS[0]));
    let user =
        |me: &Identity| User { id: me.id.clone(), name: me.name.clone(), color: me.color.clone() };
    let presence = Presence { user: user(&me), ..Presence::default() };
    let conn = Connection::new(&room, presence, joined.get_untracked(), signals);
    conn.start();
    let state = RoomState {
        conn: StoredValue::new_local(Rc::clone(&conn)),
        signals,
        me: StoredValue::new(me),
        tool: RwSignal::new(Tool::Select),
        stroke: RwSignal::new("#1e1e1e".into()),
        fill: RwSignal::new("transparent".into()),
        width: RwSignal::new(2.0),
        selection: RwSignal::new(Vec::new()),
        view: RwSignal::new(Viewport::default()),
        follow: RwSignal::new(None),
        board_size: RwSignal::new((0.0, 0.0)),
        editing: RwSignal::new(None),
        dark,
        joined,
    };
    // Joining: the name given in the prompt becomes who we are here, and others see us.
    Effect::new(move |_| {
        if let Some(me) = identity.get()
            && !joined.get_untracked()
        {
            state.conn.get_value().join(user(&me));
            state.me.set_value(me);
            joined.set(true);
        }
    });
    provide_context(state);
    document().set_title(&format!("{room} · Huddle"));

    // Presence follows the view and the selection; a heartbeat keeps it alive.
    Effect::new(move |_| {
        let view = state.view.get();
        state.conn.get_value().update_presence(|p| p.viewport = Some(view));
    });
    Effect::new(move |_| {
        let (w, h) = state.board_size.get();
        if w > 0.0 && h > 0.0 {
            state.conn.get_value().update_presence(|p| p.screen = Some(ScreenSize { w, h }));
        }
    });
    Effect::new(move |_| {
        let selection = state.selection.get();
        // Presence states are bounded (64 KiB on the server): others see a bounded part of our
        // selection outlined.
        let shown = huddle_protocol::presence::selection_for_presence(selection);
        state.conn.get_value().update_presence(|p| p.selection = shown);
    });
    let heartbeat = set_interval_with_handle(
        move || state.conn.get_value().heartbeat(),
        std::time::Duration::from_millis(huddle_protocol::presence::HEARTBEAT_MS),
    );
    // Away: the tab is hidden, or no input for a while.
    let last_input = StoredValue::new(now_ms());
    let refresh_idle = move || {
        let idle = document().hidden() || now_ms() - last_input.get_value() > IDLE_AFTER_MS;
        let conn = state.conn.get_value();
        if conn.presence().idle != idle {
            conn.update_presence(|p| p.idle = idle);
        }
    };
    let visibility = window_event_listener(ev::visibilitychange, move |_| refresh_idle());
    let activity = window_event_listener(ev::pointermove, move |_| {
        last_input.set_value(now_ms());
        refresh_idle();
    });
    let typing = window_event_listener(ev::keydown, move |_| {
        last_input.set_value(now_ms());
        refresh_idle();
    });
    // Back online: retry at once instead of waiting out the backoff.
    let online = window_event_listener(ev::online, move |_| state.conn.get_value().reconnect_now());
    let offline =
        window_event_listener(ev::offline, move |_| state.conn.get_value().went_offline());
    // Leaving the page: write pending edits to the offline cache.
    let pagehide = window_event_listener(ev::pagehide, move |_| state.conn.get_value().save_now());
    // Leaving the page while edits made offline are neither on the server nor in the offline
    // cache (storage full or unavailable): the browser asks first.
    let beforeunload = window_event_listener(ev::beforeunload, move |e| {
        if state.conn.get_value().would_lose_edits() {
            e.prevent_default();
            // Older browsers ask only when a return value is set.
            e.set_return_value("Edits made offline are not saved on this device yet.");
        }
    });
    // Also re-reads everyone's presence: a peer that went silent shows as away without any
    // message arriving to say so.
    let idle_check = set_interval_with_handle(
        move || {
            refresh_idle();
            state.signals.presence_version.update(|v| *v += 1);
        },
        std::time::Duration::from_secs(10),
    );
    // Follow mode: show what the followed person's screen shows whenever it changes, all of
    // it, whatever the two screens' sizes.
    Effect::new(move |_| {
        let Some(target) = state.follow.get() else { return };
        let (w, h) = state.board_size.get();
        let Some((_, leader)) = state.peers().into_iter().find(|(id, _)| *id == target) else {
            return;
        };
        if let Some(v) = leader.viewport.map(|v| v.followed(leader.screen, ScreenSize { w, h }))
            && state.view.get_untracked() != v
        {
            state.view.set(v);
        }
    });
    let keys =
        window_event_listener(ev::keydown, move |ev: web_sys::KeyboardEvent| shortcut(state, &ev));
    let copies = window_event_listener(ev::copy, move |ev: web_sys::ClipboardEvent| {
        if !in_field(ev.target()) && !text_selected() && state.joined.get_untracked() {
            export::copy_event(state, &ev);
        }
    });
    let pastes = window_event_listener(ev::paste, move |ev: web_sys::ClipboardEvent| {
        if !in_field(ev.target()) && state.joined.get_untracked() {
            export::paste_event(state, &ev);
        }
    });
    on_cleanup(move || {
        if let Ok(h) = heartbeat {
            h.clear();
        }
        visibility.remove();
        activity.remove();
        typing.remove();
        online.remove();
        offline.remove();
        pagehide.remove();
        beforeunload.remove();
        if let Ok(h) = idle_check {
            h.clear();
        }
        keys.remove();
        copies.remove();
        pastes.remove();
        // The stored value may already be disposed with the owner; then the socket goes with it.
        if let Some(conn) = state.conn.try_get_value() {
            conn.close();
        }
    });

    let share = room.clone();
    view! {
        <div class="room" data-testid="room">
            <header class="topbar">
                <a class="brand small" href="/" aria-label="Huddle home" data-testid="home"><img src="/assets/favicon.svg" alt="" width="22" height="22"/>"Huddle"</a>
                <span class="room-name" data-testid="room-name" title="Room name">{room.clone()}</span>
                <ShareButton room=share/>
                <div class="spacer"></div>
                <StatusBadge/>
                <button class="ghost" data-testid="theme-toggle" aria-label="Toggle dark theme" title="Toggle dark theme"
                    on:click=move |_| dark.update(|d| *d = !*d)>{move || icons::icon(if dark.get() { icons::SUN } else { icons::MOON })}</button>
            </header>
            <Toolbar/>
            <BoardView/>
            <aside class="sidebar">
                <People/>
                <ChatPanel/>
            </aside>
            {move || (!joined.get()).then(|| view! {
                <div class="join-overlay" data-testid="join-prompt" role="dialog" aria-modal="true" aria-label="Join the room">
                    <Landing path=path identity=identity room=Some(room.clone())/>
                </div>
            })}
        </div>
    }
}

/// What the Share button is showing.
#[derive(Debug, Clone, PartialEq)]
enum ShareNote {
    /// The link is on the clipboard.
    Copied,
    /// The page may not write to the clipboard: the link, for the person to copy.
    ByHand(String),
}

/// How long "Link copied" stays up.
const SHARE_NOTE_MS: u64 = 2500;

/// Copies the room's link to the clipboard and says so. Where the page may not use the
/// clipboard (plain HTTP on a LAN address is not a secure context, and browsers then offer no
/// `navigator.clipboard`), or the browser refuses, it shows the link selected in a field
/// instead, so it can be copied by hand.
#[component]
fn ShareButton(
    /// The room's name.
    room: String,
) -> impl IntoView {
    let note = RwSignal::new(None::<ShareNote>);
    let field = NodeRef::<leptos::html::Input>::new();
    let share = move |_| {
        let url = format!("{}/r/{room}", window().location().origin().unwrap_or_default());
        let Some(clipboard) = export::system_clipboard() else {
            note.set(Some(ShareNote::ByHand(url)));
            return;
        };
        note.set(Some(ShareNote::Copied));
        set_timeout(
            move || {
                if note.try_get_untracked().flatten() == Some(ShareNote::Copied) {
                    note.set(None);
                }
            },
            std::time::Duration::from_millis(SHARE_NOTE_MS),
        );
        let written = clipboard.write_text(&url);
        leptos::task::spawn_local(async move {
            if wasm_bindgen_futures::JsFuture::from(written).await.is_err() {
                let _ = note.try_set(Some(ShareNote::ByHand(url)));
            }
        });
    };
    view! {
        <span class="share">
            <button class="ghost" data-testid="copy-link" aria-label="Copy the room link" title="Copy the room link"
                on:click=share>"Share"</button>
            {move || match note.get() {
                Some(ShareNote::Copied) => view! {
                    <span class="share-note" role="status" data-testid="share-note">"Link copied"</span>
                }.into_any(),
                Some(ShareNote::ByHand(url)) => {
                    field.on_load(|input| {
                        let _ = input.focus();
                        input.select();
                    });
                    view! {
                        <input class="share-link" data-testid="share-link" readonly node_ref=field
                            aria-label="Room link: copy it to share the room" title="Copy this link to share the room"
                            prop:value=url
                            on:keydown=move |ev| if ev.key() == "Escape" || ev.key() == "Enter" { note.set(None) }
                            on:blur=move |_| note.set(None)/>
                    }.into_any()
                }
                None => ().into_any(),
            }}
        </span>
    }
}

/// Keyboard shortcuts for every tool and the common commands.
fn shortcut(state: RoomState, ev: &web_sys::KeyboardEvent) {
    if typing_in_field(ev) || !state.joined.get_untracked() {
        return;
    }
    let key = ev.key().to_lowercase();
    let cmd = ev.ctrl_key() || ev.meta_key();
    let conn = state.conn.get_value();
    match (cmd, key.as_str()) {
        (true, "z") if ev.shift_key() => conn.redo(),
        (true, "z") => conn.undo(),
        (true, "y") => conn.redo(),
        (true, "d") => duplicate(state),
        (true, "a") => select_all(state),
        // Ctrl+C and Ctrl+V arrive as `copy` and `paste` events, with the clipboard's data.
        (false, "delete" | "backspace") => delete_selection(state),
        (false, "escape") => state.selection.set(Vec::new()),
        (false, "arrowleft" | "arrowright" | "arrowup" | "arrowdown")
            if !state.selection.get_untracked().is_empty() =>
        {
            let step = if ev.shift_key() { 10.0 } else { 1.0 };
            let (dx, dy) = match key.as_str() {
                "arrowleft" => (-step, 0.0),
                "arrowright" => (step, 0.0),
                "arrowup" => (0.0, -step),
                _ => (0.0, step),
            };
            nudge_selection(state, dx, dy);
        }
        (false, k) if k.chars().count() == 1 => {
            let c = k.chars().next().unwrap_or(' ');
            if let Some(tool) = Tool::ALL.into_iter().find(|t| t.key() == c) {
                state.tool.set(tool);
            }
            return;
        }
        _ => return,
    }
    ev.prevent_default();
}

/// Moves the selected shapes by `(dx, dy)` board units: the arrow keys, for placing shapes
/// precisely and for moving them without a pointer.
fn nudge_selection(state: RoomState, dx: f64, dy: f64) {
    let moved: Vec<(String, f64, f64)> =
        export::selected_shapes(state).into_iter().map(|s| (s.id, s.x + dx, s.y + dy)).collect();
    state.conn.get_value().edit(|b, t| {
        for (id, x, y) in &moved {
            b.set_fields(t, id, [("x", Any::from(*x)), ("y", Any::from(*y))]);
        }
    });
}

/// Whether the user has selected page text (then Ctrl+C copies that, not shapes).
fn text_selected() -> bool {
    window().get_selection().ok().flatten().is_some_and(|s| !s.is_collapsed())
}

/// Deletes the selected shapes.
pub fn delete_selection(state: RoomState) {
    let selection = state.selection.get_untracked();
    if selection.is_empty() {
        return;
    }
    state.conn.get_value().edit(|b, t| {
        for id in &selection {
            b.remove_shape(t, id);
        }
    });
    state.selection.set(Vec::new());
}

fn select_all(state: RoomState) {
    let ids = state.conn.with_value(|c| {
        c.with_doc(|doc| {
            let board = huddle_protocol::schema::Board::new(doc);
            let txn = huddle_protocol::yrs::Transact::transact(doc);
            board.shapes(&txn).into_iter().map(|s| s.id).collect::<Vec<_>>()
        })
    });
    state.selection.set(ids);
}

/// Duplicates the selection, offset a little, and selects the copies.
pub fn duplicate(state: RoomState) {
    export::place_copies(state, &export::selected_shapes(state), 20.0, 'd');
}

/// Sets a style field on every selected shape.
fn restyle(state: RoomState, field: &'static str, value: Any) {
    let selection = state.selection.get_untracked();
    if selection.is_empty() {
        return;
    }
    state.conn.get_value().edit(|b, t| {
        for id in &selection {
            b.set_field(t, id, field, value.clone());
        }
    });
}

/// Moves the selection to the top or bottom of the stack.
fn restack(state: RoomState, to_front: bool) {
    let selected = export::selected_shapes(state);
    if selected.is_empty() {
        return;
    }
    let z = if to_front {
        export::max_z(state) + 1.0
    } else {
        export::min_z(state) - selected.len() as f64
    };
    state.conn.get_value().edit(|b, t| {
        for (i, s) in selected.iter().enumerate() {
            b.set_field(t, &s.id, "z", Any::from(z + i as f64));
        }
    });
}

const STROKES: [&str; 6] = ["#1e1e1e", "#e03131", "#2f9e44", "#1971c2", "#f08c00", "#9c36b5"];
const FILLS: [&str; 6] = ["transparent", "#ffc9c9", "#b2f2bb", "#a5d8ff", "#ffec99", "#eebefa"];

/// The tool palette, style controls and commands.
#[component]
fn Toolbar() -> impl IntoView {
    let state = expect_context::<RoomState>();
    let zoom_by = move |factor: f64| {
        let view = state.view.get_untracked();
        let (w, h) = export::board_size();
        state.follow.set(None);
        state.view.set(geometry::zoom_at(&view, factor, w / 2.0, h / 2.0));
    };
    view! {
        <nav class="toolbar" aria-label="Tools">
            <div class="tool-group" role="toolbar">
                {Tool::ALL.into_iter().map(|tool| view! {
                    <button class="tool" data-testid=format!("tool-{}", tool.name())
                        aria-label=format!("{} ({})", tool.name(), tool.key().to_ascii_uppercase())
                        title=format!("{} ({})", tool.name(), tool.key().to_ascii_uppercase())
                        aria-pressed=move || (state.tool.get() == tool).to_string()
                        class:active=move || state.tool.get() == tool
                        on:click=move |_| state.tool.set(tool)>{icons::icon(tool.icon())}</button>
                }).collect_view()}
            </div>
            <div class="tool-group" aria-label="Stroke colour">
                {STROKES.into_iter().map(|c| view! {
                    <button class="swatch small" data-testid=format!("stroke-{}", &c[1..]) aria-label=format!("Stroke {c}")
                        title=format!("Stroke {c}")
                        class:active=move || state.stroke.get() == c style:background=c
                        on:click=move |_| { state.stroke.set(c.into()); restyle(state, "stroke", Any::from(c)); }></button>
                }).collect_view()}
            </div>
            <div class="tool-group" aria-label="Fill colour">
                {FILLS.into_iter().map(|c| view! {
                    <button class="swatch small" class:none=c == "transparent" data-testid=format!("fill-{}", c.trim_start_matches('#'))
                        aria-label=format!("Fill {c}") title=format!("Fill {c}")
                        class:active=move || state.fill.get() == c style:background=c
                        on:click=move |_| { state.fill.set(c.into()); restyle(state, "fill", Any::from(c)); }></button>
                }).collect_view()}
            </div>
            <div class="tool-group">
                <label class="width" title="Stroke width">
                    <span class="sr-only">"Stroke width"</span>
                    <input type="range" min="1" max="16" step="1" data-testid="stroke-width" aria-label="Stroke width"
                        prop:value=move || state.width.get().to_string()
                        on:input=move |ev| {
                            let w: f64 = event_target_value(&ev).parse().unwrap_or(2.0);
                            state.width.set(w);
                            restyle(state, "width", Any::from(w));
                        }/>
                </label>
            </div>
            <div class="tool-group">
                <button class="tool" data-testid="undo" aria-label="Undo (Ctrl+Z)" title="Undo (Ctrl+Z)" on:click=move |_| state.conn.get_value().undo()>{icons::icon(icons::UNDO)}</button>
                <button class="tool" data-testid="redo" aria-label="Redo (Ctrl+Shift+Z)" title="Redo (Ctrl+Shift+Z)" on:click=move |_| state.conn.get_value().redo()>{icons::icon(icons::REDO)}</button>
                <button class="tool" data-testid="bring-front" aria-label="Bring to front" title="Bring to front" on:click=move |_| restack(state, true)>{icons::icon(icons::FRONT)}</button>
                <button class="tool" data-testid="send-back" aria-label="Send to back" title="Send to back" on:click=move |_| restack(state, false)>{icons::icon(icons::BACK)}</button>
                <button class="tool" data-testid="duplicate" aria-label="Duplicate (Ctrl+D)" title="Duplicate (Ctrl+D)" on:click=move |_| duplicate(state)>{icons::icon(icons::DUPLICATE)}</button>
                <button class="tool" data-testid="delete" aria-label="Delete (Del)" title="Delete (Del)" on:click=move |_| delete_selection(state)>{icons::icon(icons::DELETE)}</button>
            </div>
            <div class="tool-group">
                <button class="tool" data-testid="zoom-out" aria-label="Zoom out" title="Zoom out" on:click=move |_| zoom_by(0.8)>{icons::icon(icons::MINUS)}</button>
                <button class="tool zoom-label" data-testid="zoom-reset" aria-label="Reset zoom" title="Reset zoom"
                    on:click=move |_| { state.follow.set(None); state.view.set(Viewport::default()); }>
                    {move || format!("{:.0}%", state.view.get().zoom * 100.0)}
                </button>
                <button class="tool" data-testid="zoom-in" aria-label="Zoom in" title="Zoom in" on:click=move |_| zoom_by(1.25)>{icons::icon(icons::PLUS)}</button>
                <button class="tool" data-testid="zoom-fit" aria-label="Zoom to fit" title="Zoom to fit" on:click=move |_| export::zoom_to_fit(state)>{icons::icon(icons::FIT)}</button>
            </div>
            <div class="tool-group">
                <button class="tool text" data-testid="export-png" aria-label="Export PNG" title="Export the board (or selection) as PNG" on:click=move |_| export::export_png(state)>"PNG"</button>
                <button class="tool text" data-testid="export-svg" aria-label="Export SVG" title="Export the board (or selection) as SVG" on:click=move |_| export::export_svg(state)>"SVG"</button>
                <button class="tool text" data-testid="export-json" aria-label="Export JSON" title="Export the room as JSON" on:click=move |_| export::export_json(state)>"JSON"</button>
            </div>
        </nav>
    }
}

/// Connection state: connected / reconnecting in N s / offline.
#[component]
fn StatusBadge() -> impl IntoView {
    let state = expect_context::<RoomState>();
    let tick = RwSignal::new(0u32);
    let ticker = set_interval_with_handle(
        move || tick.update(|t| *t += 1),
        std::time::Duration::from_millis(500),
    );
    on_cleanup(move || {
        if let Ok(h) = ticker {
            h.clear();
        }
    });
    let text = move || {
        tick.track();
        // Disconnected with the offline cache failing: edits live only in this tab.
        let unsaved =
            state.signals.cache_failed.get() && state.signals.status.get() != Status::Connected;
        let status = match state.signals.status.get() {
            Status::Connected => "Connected".to_owned(),
            Status::Connecting => "Connecting…".to_owned(),
            Status::Reconnecting { at_ms } => {
                format!("Reconnecting in {} s", ((at_ms - now_ms()) / 1000.0).ceil().max(0.0))
            }
            Status::Offline => "Offline".to_owned(),
            Status::Refused { why, at_ms } => {
                let why = match why {
                    Refusal::RoomFull => "Room is full: your new shapes are not saved",
                    Refusal::Limit => "The server refused your last change",
                };
                format!("{why} · retrying in {} s", ((at_ms - now_ms()) / 1000.0).ceil().max(0.0))
            }
        };
        if unsaved { format!("{status} · edits not saved on this device") } else { status }
    };
    let kind = move || match state.signals.status.get() {
        Status::Connected => "connected",
        Status::Connecting => "connecting",
        Status::Reconnecting { .. } => "reconnecting",
        Status::Offline => "offline",
        Status::Refused { .. } => "refused",
    };
    view! {
        <span class="status" data-testid="connection-status" data-state=kind role="status" aria-live="polite">
            <span class="dot"></span>{text}
        </span>
    }
}

/// Who is in the room; click someone to follow their view.
#[component]
fn People() -> impl IntoView {
    let state = expect_context::<RoomState>();
    // Shown once the user joins (their name comes from the prompt).
    let me = move || state.me.get_value();
    let people = move || {
        let mut peers = state.peers();
        peers.sort_by(|a, b| a.1.user.name.cmp(&b.1.user.name));
        peers
    };
    view! {
        <section class="people" aria-label="People in this room">
            <h2>"People"</h2>
            <ul data-testid="presence-list">
                {move || state.joined.get().then(|| view! {
                    <li class="person me" data-testid="presence-me">
                        <span class="avatar" style:background=me().color>{me().name.chars().next().unwrap_or('?').to_string()}</span>
                        <span class="name">{me().name}" (you)"</span>
                    </li>
                })}
                {move || people().into_iter().map(|(id, p)| {
                    let following = move || state.follow.get() == Some(id);
                    let name = p.user.name.clone();
                    view! {
                        <li class="person" data-testid="presence-item" data-name=p.user.name.clone() data-idle=p.idle.to_string()>
                            <button class="person-button" aria-label=format!("Follow {name}") title=format!("Follow {name}'s view")
                                data-testid="follow" aria-pressed=move || following().to_string()
                                on:click=move |_| state.follow.update(|f| *f = if *f == Some(id) { None } else { Some(id) })>
                                <span class="avatar" style:background=p.user.color.clone()>{p.user.name.chars().next().unwrap_or('?').to_string()}</span>
                                <span class="name">{p.user.name.clone()}</span>
                                {p.idle.then(|| view! { <span class="idle">"away"</span> })}
                                {move || following().then(|| view! { <span class="following">"following"</span> })}
                            </button>
                        </li>
                    }
                }).collect_view()}
            </ul>
        </section>
    }
}
