//! The chat panel: messages live in the room's document, so history persists and syncs like the
//! board. Text is always rendered as text, never as HTML.

use huddle_protocol::schema::{Board, ChatMessage, MAX_CHAT_CHARS};
use huddle_protocol::yrs::Transact;
use leptos::html;
use leptos::prelude::*;

use crate::state::RoomState;
use crate::sync::now_ms;

/// How many messages the panel shows at first, and adds per "Show earlier messages": a team's
/// room keeps its chat for good, and drawing 20,000 messages took two seconds of the room's
/// opening and half a second per new message.
const CHAT_PAGE: usize = 100;

/// Most messages drawn while a reader scrolled up lets new ones pile up below.
const MAX_SHOWN: usize = 20 * CHAT_PAGE;

/// The newest messages, as the panel shows them.
#[derive(Debug, Clone, PartialEq)]
struct ChatView {
    /// The newest `shown` messages (fewer if the chat is shorter), in order.
    messages: Vec<ChatMessage>,
    /// Entries in the chat in all.
    total: usize,
    /// How many were asked for.
    shown: usize,
    /// The chat's version they were read at (see [`crate::sync::Connection::chat_version`]).
    version: u64,
}

impl ChatView {
    /// The messages with the keys the list renders them under: their position in the chat
    /// and their id. Ids alone are not keys: a stock Yjs client may leave them out or repeat
    /// them, and rows with one key are drawn as one (and new messages went missing).
    fn keyed(&self) -> Vec<((usize, String), ChatMessage)> {
        let first = self.total.saturating_sub(self.messages.len());
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| ((first + i, m.id.clone()), m.clone()))
            .collect()
    }
}

/// How close to the bottom (px) counts as "reading the latest", for auto-scroll.
const STICK_PX: i32 = 40;

fn time_of_day(ts: f64) -> String {
    let d = js_sys::Date::new(&wasm_bindgen::JsValue::from_f64(ts));
    format!("{:02}:{:02}", d.get_hours(), d.get_minutes())
}

/// Screens this narrow stack the side panel under the board (see `style.css`).
const NARROW_SCREEN: &str = "(max-width: 760px)";

/// True on a phone-sized screen, where an open chat would take a third of the board's room:
/// there the chat starts collapsed, a tap away, with the unread badge telling when to look.
fn narrow_screen() -> bool {
    window().match_media(NARROW_SCREEN).ok().flatten().is_some_and(|m| m.matches())
}

/// The chat panel.
#[component]
pub fn ChatPanel() -> impl IntoView {
    let state = expect_context::<RoomState>();
    let draft = RwSignal::new(String::new());
    let collapsed = RwSignal::new(narrow_screen());
    let seen = RwSignal::new(0usize);
    // Messages already there when the room opened are history, not news: a chat that starts
    // collapsed counts as unread only what arrives after the first sync.
    let history_read = StoredValue::new(false);
    let stick = StoredValue::new(true);
    // How many entries the chat had when last looked at (to tell what arrived).
    let last_count = StoredValue::new(0usize);
    let list_ref = NodeRef::<html::Ol>::new();
    // How many of the newest messages the panel shows; "Show earlier messages" adds a page.
    let shown = RwSignal::new(CHAT_PAGE);
    // Re-read the messages only when the chat changed, not on every document change (a drag
    // on the board changes the document at pointer rate), and only the ones shown.
    let chat = Memo::new(move |previous: Option<&ChatView>| {
        state.signals.doc_version.track();
        let shown = shown.get();
        state.conn.with_value(|c| {
            let version = c.chat_version();
            match previous {
                Some(p) if p.version == version && p.shown == shown => p.clone(),
                _ => c.with_doc(|doc| {
                    let board = Board::new(doc);
                    let (messages, total) = board.chat_tail(&doc.transact(), shown);
                    ChatView { messages, total, shown, version }
                }),
            }
        })
    });
    let too_long = move || draft.with(|d| d.chars().count() > MAX_CHAT_CHARS);
    let unread = move || {
        if collapsed.get() { chat.with(|c| c.total).saturating_sub(seen.get()) } else { 0 }
    };

    // Keep the newest message in view unless the reader scrolled up; a panel opened again
    // shows the newest too (its list is built anew, scrolled to the top).
    Effect::new(move |_| {
        let count = chat.with(|c| c.total);
        let synced = state.signals.synced.get();
        if collapsed.get() {
            if !history_read.get_value() {
                seen.set(count);
                history_read.set_value(synced);
            }
            return;
        }
        history_read.set_value(true);
        seen.set(count);
        // A reader scrolled up keeps what they are reading: the window grows by what arrived
        // instead of dropping its oldest messages above them (browsers without scroll
        // anchoring would shift the list under them), up to a bound on what is drawn.
        let arrived = count.saturating_sub(last_count.get_value());
        last_count.set_value(count);
        if !stick.get_value() && arrived > 0 && arrived < count {
            shown.update(|n| *n = (*n + arrived).min(MAX_SHOWN).max(*n));
        }
        if stick.get_value() {
            request_animation_frame(move || {
                if let Some(list) = list_ref.try_get_untracked().flatten() {
                    list.set_scroll_top(list.scroll_height());
                }
            });
        }
    });

    let send = move || {
        let text = draft.get_untracked();
        if text.trim().is_empty() || too_long() {
            return;
        }
        let me = state.me.get_value();
        let conn = state.conn.get_value();
        let message = ChatMessage {
            id: format!("{:x}-m{:x}", conn.client_id(), now_ms() as u64),
            author_id: me.id,
            author_name: me.name,
            author_color: me.color,
            text: text.trim_end().to_owned(),
            ts: now_ms(),
        };
        conn.edit(|b, t| b.post_chat(t, &message));
        draft.set(String::new());
        stick.set_value(true);
    };

    // A page of earlier messages goes above the ones being read, which stay where they are.
    let show_earlier = move || {
        let Some(list) = list_ref.get_untracked() else { return };
        let (height, top) = (list.scroll_height(), list.scroll_top());
        stick.set_value(false);
        shown.update(|n| *n = n.saturating_add(CHAT_PAGE));
        request_animation_frame(move || {
            list.set_scroll_top(list.scroll_height() - height + top);
        });
    };

    view! {
        <section class="chat" class:collapsed=move || collapsed.get() aria-label="Chat">
            <h2>
                <button class="chat-toggle" data-testid="chat-toggle"
                    aria-expanded=move || (!collapsed.get()).to_string()
                    on:click=move |_| {
                        collapsed.update(|c| *c = !*c);
                        if !collapsed.get_untracked() { stick.set_value(true); }
                    }>
                    "Chat"
                    {move || (unread() > 0).then(|| view! {
                        <span class="badge" data-testid="chat-unread" aria-label=format!("{} unread", unread())>{unread()}</span>
                    })}
                </button>
            </h2>
            <Show when=move || !collapsed.get()>
                <ol class="messages" data-testid="chat-messages" node_ref=list_ref aria-live="polite"
                    on:scroll=move |_| {
                        if let Some(l) = list_ref.get_untracked() {
                            stick.set_value(l.scroll_height() - l.scroll_top() - l.client_height() < STICK_PX);
                        }
                    }>
                    {move || chat.with(|c| c.total > c.shown).then(|| view! {
                        <li class="earlier">
                            <button class="ghost" data-testid="chat-earlier" on:click=move |_| show_earlier()>
                                "Show earlier messages"
                            </button>
                        </li>
                    })}
                    <For each=move || chat.with(ChatView::keyed) key=|(key, _)| key.clone() let:entry>
                        {let (_, m) = entry;
                        view! {
                        <li class="message" data-testid="chat-message" data-author=m.author_name.clone()>
                            <span class="author" style:color=m.author_color.clone()>{m.author_name.clone()}</span>
                            <time class="time">{time_of_day(m.ts)}</time>
                            <p class="text">{m.text.clone()}</p>
                        </li>
                        }}
                    </For>
                </ol>
                <div class="composer">
                    <textarea data-testid="chat-input" aria-label="Message" placeholder="Message…" title="Enter to send, Shift+Enter for a new line"
                        rows="2" prop:value=move || draft.get()
                        on:input=move |ev| draft.set(event_target_value(&ev))
                        on:keydown=move |ev: web_sys::KeyboardEvent| {
                            if ev.key() == "Enter" && !ev.shift_key() && !ev.is_composing() {
                                ev.prevent_default();
                                send();
                            }
                        }></textarea>
                    <button class="primary" data-testid="chat-send" disabled=too_long on:click=move |_| send()>"Send"</button>
                </div>
                {move || too_long().then(|| view! {
                    <p class="error" role="alert" data-testid="chat-too-long">
                        {format!("Messages are limited to {MAX_CHAT_CHARS} characters ({} now).", draft.with(|d| d.chars().count()))}
                    </p>
                })}
            </Show>
        </section>
    }
}
