//! How deeply shared types nest in a document, so that an update nesting them too deeply is
//! refused before it is applied.
//!
//! Shared types (a `Y.Map` in a `Y.Map` in …) are items of their own, each naming its parent
//! (or a sibling it was inserted beside). yrs handles them one level per stack frame when it
//! deletes one (every item below it is deleted too), when it collects deleted ones at the end
//! of a transaction, and in `to_json`; so does Yjs. A chain of 200,000 maps is a 1.8 MB update
//! that yrs integrates without complaint; deleting its outermost map then overflows the stack,
//! and a stack overflow aborts the process: one crafted update, or a chain built up over many,
//! would take down the server and every client given the document. yrs gives no way to ask an
//! item for its parent, so the depth is kept here: for every item a document has integrated,
//! how deeply its container is nested ([`Nesting`]), run-length encoded per client (a client's
//! consecutive items nearly always share a level). An update is read block by block
//! ([`Nesting::check`]), each new shared type's depth worked out from its parent or sibling,
//! in the update or the document, and [`MAX_TYPE_DEPTH`] enforced; once applied, what went in
//! is recorded ([`Nesting::record`]).
//!
//! The check holds only if yrs integrates an update the way it is encoded. yrs does not always:
//! it keeps items whose dependencies are missing and retries them inside later applies, it
//! integrates a client's items around holes and then cuts held clocks out of later blocks and
//! re-places the rest. So [`Nesting::check`] also refuses what would set those off (out-of-order
//! items, missing dependencies; see there), which no Yjs client sends in a
//! single-server setup.
//!
//! The block layout is lib0's v1 update encoding, read exactly as yrs 0.28 reads it
//! (`Update::decode`): a block's clock length must match yrs' or every later ID in the update
//! would be misplaced. Written out here because yrs keeps an update's blocks to itself.

use std::collections::{HashMap, HashSet};

use yrs::encoding::read::{self, Cursor, Read};
use yrs::updates::encoder::{Encoder, EncoderV1};
use yrs::{ReadTxn, StateVector};

/// Deepest nesting of shared types a room accepts: a type directly in a root is at depth 1.
/// Huddle's own schema needs 2 (a shape map in `shapes`, its `points` array); rich-text
/// editors nest a block element per level of list or quote. yrs spends a few stack frames
/// per level when it deletes or collects a type, so 64 levels stay far inside the smallest
/// stack that handles a document (a wasm client's 1 MiB).
pub const MAX_TYPE_DEPTH: u16 = 64;

/// Why an update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NestingError {
    /// A shared type nested deeper than [`MAX_TYPE_DEPTH`].
    #[error("shared types nested more than {MAX_TYPE_DEPTH} deep")]
    TooDeep,
    /// An item whose parent (or the neighbour it was inserted beside) is neither in the
    /// update nor in the document (see [`Nesting::check`]).
    #[error("an item whose parent or neighbour the room does not have")]
    UnknownParent,
    /// Items the room holds sent again, in a block reaching past them, as sitting somewhere
    /// else (see [`Nesting::check`]).
    #[error("client {client}'s item at clock {clock} sent as sitting elsewhere than it does")]
    Mismatch {
        /// The client.
        client: u64,
        /// The last clock the room holds of it.
        clock: u32,
    },
    /// A client's items out of order (see [`Nesting::check`]).
    #[error("client {client}'s items out of order: clock {clock} where {expected} comes next")]
    OutOfOrder {
        /// The client.
        client: u64,
        /// Where its block starts.
        clock: u32,
        /// The clock the room expects next from it.
        expected: u32,
    },
    /// The update does not read as a v1 update.
    #[error("malformed update: {0}")]
    Malformed(String),
}

impl From<read::Error> for NestingError {
    fn from(e: read::Error) -> Self {
        NestingError::Malformed(e.to_string())
    }
}

/// Depth recorded for clocks the document holds no item for yet: yrs integrates a client's
/// items out of order when their parents are there, leaving a hole (a "skip") before them.
const HOLE: u16 = u16::MAX;

/// A run of consecutive clocks of one client whose items sit in containers of one depth
/// (0: a root). Runs of a client are contiguous from clock 0; a run starts where the one
/// before it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    end: u32,
    depth: u16,
}

/// For every item a document has integrated, how deeply its container nests (see the module
/// documentation). Kept beside the document and changed only with it: built from it
/// ([`Nesting::of_doc`]), then told of everything applied to it ([`Nesting::record`]).
#[derive(Debug, Default, Clone)]
pub struct Nesting {
    clients: HashMap<u64, Vec<Run>, ClientHash>,
    /// Clients with a hole in their runs (rare: see [`HOLE`]).
    holey: HashSet<u64, ClientHash>,
}

/// Hashes client ids with a multiplication whose high half is folded into the low one (the
/// table picks buckets from the low bits) instead of SipHash, which cost more than the rest of
/// checking a one-shape edit. Client ids are the peers' choice, so they could be chosen to
/// collide: yrs keys its own per-client maps on the bare id, which a peer can make collide as
/// well, so this adds no new exposure.
type ClientHash = std::hash::BuildHasherDefault<ClientHasher>;

/// See [`ClientHash`].
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientHasher(u64);

impl std::hash::Hasher for ClientHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        let p = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = p ^ (p >> 32);
    }
}

/// An item's id in an update: its client (an index into the update's distinct clients, see
/// `Clients`) and clock. Kept to 8 bytes: an update of tiny blocks (two bytes each for a
/// collected range) becomes a block list many times its size, and a message may be tens of
/// megabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Id {
    client: u32,
    clock: u32,
}

impl Id {
    /// No id (an item without that origin).
    const NONE: Id = Id { client: u32::MAX, clock: 0 };
}

/// Where an item sits, as its block says.
#[derive(Debug, Clone, Copy)]
enum Place {
    /// Nowhere: a garbage-collected range or a skip, which hold no items.
    Nothing,
    /// Directly in a root type.
    Root,
    /// In the shared type that is the item with this id.
    In(Id),
    /// Beside its origins (left and right; at least one is not [`Id::NONE`]), in the container
    /// of the left one, or of the right one if the left one was collected: yrs tells which
    /// only when it integrates the item, so the deeper of the two is taken (in anything a Yjs
    /// client writes, both are in the same container).
    Beside(Id, Id),
}

/// One block of an update.
#[derive(Debug, Clone, Copy)]
struct Block {
    clock: u32,
    len: u32,
    place: Place,
    is_type: bool,
    /// A skip: clocks the update does not have (a hole, not a collected range).
    skip: bool,
}

/// One client's blocks in an update: `blocks[range]`, by clock.
#[derive(Debug, Clone)]
struct Section {
    client: u64,
    range: std::ops::Range<usize>,
}

/// An update read by [`Nesting::check`]: its blocks and where each sits, for
/// [`Nesting::record`] once it is applied.
#[derive(Debug)]
pub struct Placed {
    blocks: Vec<Block>,
    /// Its sections, by client (one per client).
    sections: Vec<Section>,
    /// The depth of each block's container; `None` where it cannot be known.
    depths: Vec<Option<u16>>,
    /// Whether yrs integrates each block as it is, if it integrates it all (see
    /// [`Placed::is_plain`]).
    plain: bool,
}

impl Placed {
    /// Whether, checked ([`Nesting::check`]) and integrated whole (nothing waits for
    /// dependencies), yrs integrates each block the room lacks just as the update gives it:
    /// no block reaches back into clocks the room holds (a client's own edits never do).
    /// Otherwise yrs trims and re-places blocks, and what it integrated must be recorded from
    /// its own encoding of it (`TransactionMut::encode_update_v1`). Always false for updates
    /// only placed ([`Nesting::place`]).
    pub fn is_plain(&self) -> bool {
        self.plain
    }
}

/// Progress of working out a block's container depth.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Memo {
    Unvisited,
    Visiting,
    Done(Option<u16>),
}

impl Nesting {
    /// The nesting of everything `txn`'s document has integrated (not what waits for missing
    /// dependencies: that is read when it goes in).
    pub fn of_doc(txn: &impl ReadTxn) -> Self {
        let mut encoder = EncoderV1::new();
        txn.store().encode_diff(&StateVector::default(), &mut encoder);
        let mut nesting = Nesting::default();
        // A document's own encoding always reads; if it did not, an empty index refuses every
        // new type whose parent is in the document rather than let one through unchecked.
        if let Ok(placed) = nesting.place(&encoder.to_vec()) {
            nesting.record(&placed);
        }
        nesting
    }

    /// The nesting of a document built from `update` alone, with nothing left waiting for
    /// dependencies: a room loaded from its snapshot, which is read here rather than encoded
    /// again (a tenth of a second for a 100,000-shape room). `None` if it does not read.
    pub fn of_update(update: &[u8]) -> Option<Self> {
        let mut nesting = Nesting::default();
        let placed = nesting.place(update).ok()?;
        nesting.record(&placed);
        Some(nesting)
    }

    /// Reads `update` and works out where each of its blocks sits, refusing it if a shared
    /// type it brings would nest deeper than [`MAX_TYPE_DEPTH`], if anything it brings
    /// depends on items the room does not have, or if it brings a client's items out of
    /// order. Blocks the document holds already are not checked again (yrs skips them).
    ///
    /// The last two are refused, not left to yrs, because of what yrs does with them: it
    /// keeps items waiting for dependencies and retries them inside later applies, after
    /// later updates (which may bring other versions of the same items) changed what they
    /// land beside; it integrates a client's items out of order around holes, then cuts the
    /// clocks it holds out of later blocks and re-places the rest beside them, and reports
    /// the client's clock as where its first hole starts, so that even its own account of
    /// what it integrated leaves things out. Each of these let a crafted sequence of updates
    /// nest types deeper than any check of one update at a time can see. A Yjs client never
    /// sends its own items out of order or leaves gaps, and when it has what the room lacks
    /// (from another tab or provider), its sync step 2 after a reconnect brings it whole.
    ///
    /// # Errors
    /// See [`NestingError`].
    pub fn check(&self, update: &[u8]) -> Result<Placed, NestingError> {
        let mut placed = self.place(update)?;
        placed.plain = self.check_placed(&placed)?;
        Ok(placed)
    }

    /// [`Nesting::check`]'s rules, one pass over the blocks the room lacks; returns whether
    /// the update is plain ([`Placed::is_plain`]).
    ///
    /// Refused: anything but clocks the room holds for a client it holds out of order (rooms
    /// stored before this check), each client's new blocks not following on from its last
    /// clock (a gap; skips bring nothing, so they do not count as following on),
    /// blocks whose place is unknown, and types too deep. A block reaching past what the room
    /// holds (a client re-sending its edits merged) is cut there by yrs, the rest placed beside
    /// the last held clock: it must say it sits where that clock's item sits, or the two
    /// accounts of where the rest goes (yrs' encoding of it, and the parent it keeps) could
    /// differ; such an update is not plain.
    fn check_placed(&self, placed: &Placed) -> Result<bool, NestingError> {
        let mut plain = true;
        for section in &placed.sections {
            let client = section.client;
            let holey = !self.holey.is_empty() && self.holey.contains(&client);
            let held = self.end(client);
            let mut expected = held;
            for i in section.range.clone() {
                let block = &placed.blocks[i];
                let end = block.clock.saturating_add(block.len);
                if block.skip {
                    // yrs integrates nothing of a skip, and the next block must still follow
                    // on from what the room holds. (Yjs writes them for what it holds
                    // waiting, for instance after a hole the room had before this check.)
                    continue;
                }
                if holey {
                    // A client the room holds out of order (stored before this check): only
                    // what the room holds already, sent again, as every resync does (yrs'
                    // state vector stops at the client's first hole).
                    if self.fully_held(client, block.clock, end) {
                        continue;
                    }
                    return Err(NestingError::OutOfOrder { client, clock: block.clock, expected });
                }
                if end <= held {
                    continue; // held: yrs skips it
                }
                if block.clock < held {
                    // Reaching past what the room holds. A nested parent named outright is
                    // refused too: yrs would keep it as the rest's parent while linking the
                    // rest beside the held item, in whatever container that item is in, and
                    // depths agreeing does not make the two one container.
                    let agrees = placed.depths[i] == self.depth_at(client, held - 1);
                    let named_parent = matches!(block.place, Place::In(..));
                    if !agrees || named_parent || matches!(block.place, Place::Nothing) {
                        return Err(NestingError::Mismatch { client, clock: held - 1 });
                    }
                    plain = false;
                } else if block.clock != expected {
                    return Err(NestingError::OutOfOrder { client, clock: block.clock, expected });
                }
                expected = end;
                match placed.depths[i] {
                    None => return Err(NestingError::UnknownParent),
                    Some(d) if block.is_type && d >= MAX_TYPE_DEPTH => {
                        return Err(NestingError::TooDeep);
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(plain)
    }

    /// Reads `update` (what a document integrated, as yrs encodes it) and works out where each
    /// of its blocks sits, without checking, for [`Nesting::record`].
    ///
    /// # Errors
    /// [`NestingError::Malformed`] if it does not read.
    pub fn place(&self, update: &[u8]) -> Result<Placed, NestingError> {
        let (blocks, clients, sections) = read_blocks(update)?;
        let resolver =
            Resolver { nesting: self, blocks: &blocks, clients: &clients, sections: &sections };
        let depths = resolver.resolve_all();
        // Plain only once checked.
        Ok(Placed { blocks, sections, depths, plain: false })
    }

    /// Records the blocks of `placed` that the document did not hold: call it with what was
    /// integrated, once it was. Clocks already held are left as they are, whatever the update
    /// claimed about them (yrs kept its own).
    pub fn record(&mut self, placed: &Placed) {
        for section in &placed.sections {
            if section.range.is_empty() {
                continue; // an empty section: nothing to keep an entry for
            }
            let was_holey = !self.holey.is_empty() && self.holey.contains(&section.client);
            let runs = self.clients.entry(section.client).or_default();
            let mut holes = false;
            for i in section.range.clone() {
                let block = &placed.blocks[i];
                let depth = record_depth(block, placed.depths[i]);
                let last = runs.last().map_or(0, |r| r.end);
                let (start, end) = (block.clock, block.clock.saturating_add(block.len));
                if was_holey {
                    assign(runs, start, end, depth);
                } else if end > last {
                    // Only what lies past the held clocks: a block re-sent whole (a GC range
                    // over everything a client wrote, say) must not walk every run.
                    assign(runs, start.max(last), end, depth);
                }
                holes |= depth == HOLE || start > last || was_holey && start < last;
            }
            if holes {
                // Rare (a hole left or filled): worth a look at every run.
                if runs.iter().any(|r| r.depth == HOLE) {
                    self.holey.insert(section.client);
                } else {
                    self.holey.remove(&section.client);
                }
            }
        }
    }

    /// Whether the document holds every clock of `client` in `start..end` (none in a hole).
    fn fully_held(&self, client: u64, start: u32, end: u32) -> bool {
        let Some(runs) = self.clients.get(&client) else { return false };
        if runs.last().is_none_or(|r| r.end < end) {
            return false;
        }
        let first = runs.partition_point(|r| r.end <= start);
        runs[first..].iter().take_while(|r| r.end < end).all(|r| r.depth != HOLE)
            && runs[first..].iter().find(|r| r.end >= end).is_some_and(|r| r.depth != HOLE)
    }

    /// The depth recorded for `(client, clock)`, `None` past the client's last clock.
    fn depth_at(&self, client: u64, clock: u32) -> Option<u16> {
        let runs = self.clients.get(&client)?;
        let i = runs.partition_point(|r| r.end <= clock);
        runs.get(i).map(|r| r.depth)
    }

    /// The last clock `h` of `client` the document holds with `from <= h < to`.
    fn last_held(&self, client: u64, from: u32, to: u32) -> Option<u32> {
        let runs = self.clients.get(&client)?;
        let h = to.checked_sub(1)?.min(runs.last()?.end.checked_sub(1)?);
        let i = runs.partition_point(|r| r.end <= h);
        let h = if runs[i].depth == HOLE {
            // The clock before a hole is held: runs of one depth merge, so holes never meet.
            runs[..i].last()?.end.checked_sub(1)?
        } else {
            h
        };
        (h >= from).then_some(h)
    }

    /// The first clock of `client` past everything recorded.
    fn end(&self, client: u64) -> u32 {
        self.clients.get(&client).and_then(|runs| runs.last()).map_or(0, |r| r.end)
    }
}

/// The depth [`Nesting::record`] keeps for `block`, given the depth worked out for it.
fn record_depth(block: &Block, depth: Option<u16>) -> u16 {
    match (block.place, depth) {
        // Collected ranges and skips: nothing nests there. A skip is a hole.
        (Place::Nothing, _) if block.skip => HOLE,
        (Place::Nothing, _) => 0,
        // Integrated, yet its container unknown (nothing yrs integrates should be): counted as
        // deep as allowed, so no type goes beside or inside it.
        (_, None) => MAX_TYPE_DEPTH,
        (_, Some(d)) => d.min(HOLE - 1),
    }
}

/// Sets clocks `start..end` of one client's runs to `depth` where they are holes or past the
/// end (held clocks keep theirs), keeping runs contiguous and merged.
fn assign(runs: &mut Vec<Run>, start: u32, end: u32, depth: u16) {
    let last = runs.last().map_or(0, |r| r.end);
    if depth == HOLE && start < last {
        return; // nothing to tell of clocks held or missing already
    }
    if start >= last {
        // The common case: the client's next items, appended.
        if start > last {
            push(runs, Run { end: start, depth: HOLE });
        }
        push(runs, Run { end, depth });
        return;
    }
    // Into holes (a client's items arriving after later ones): rebuild the runs it touches.
    // (Each fill moves the runs after it, as yrs' own record of its holes does.)
    let first = runs.partition_point(|r| r.end <= start);
    let mut rebuilt = Vec::new();
    let mut from = if first == 0 { 0 } else { runs[first - 1].end };
    let mut i = first;
    while i < runs.len() && from < end {
        let run = runs[i];
        if run.depth == HOLE {
            let (a, b) = (start.max(from), end.min(run.end));
            if from < a {
                rebuilt.push(Run { end: a, depth: HOLE });
            }
            rebuilt.push(Run { end: b, depth });
            if b < run.end {
                rebuilt.push(Run { end: run.end, depth: HOLE });
            }
        } else {
            rebuilt.push(run);
        }
        from = run.end;
        i += 1;
    }
    // Runs of one depth side by side (a filled hole between held runs) are left unmerged:
    // merging would move every run after them, for each fill.
    runs.splice(first..i, rebuilt);
    if end > from {
        push(runs, Run { end, depth });
    }
}

/// Appends a run, merged into the last one if it has the same depth.
fn push(runs: &mut Vec<Run>, run: Run) {
    match runs.last_mut() {
        Some(last) if last.depth == run.depth => last.end = last.end.max(run.end),
        Some(last) if last.end >= run.end => {}
        _ => runs.push(run),
    }
}

/// Works out the container depth of each block of one update, from the update itself and
/// what the document holds; iterative, since a chain may be as long as the update.
struct Resolver<'a> {
    nesting: &'a Nesting,
    blocks: &'a [Block],
    /// The update's distinct clients, which [`Id::client`] indexes.
    clients: &'a [u64],
    /// The update's sections, by client.
    sections: &'a [Section],
}

impl Resolver<'_> {
    fn resolve_all(self) -> Vec<Option<u16>> {
        let mut memo = vec![Memo::Unvisited; self.blocks.len()];
        // Allocated only for a block depending on one later in the update.
        let mut stack = Vec::new();
        for i in 0..self.blocks.len() {
            if memo[i] == Memo::Unvisited {
                self.resolve(i, &mut memo, &mut stack);
            }
        }
        memo.into_iter().map(|m| if let Memo::Done(d) = m { d } else { None }).collect()
    }

    /// Works out block `start`'s container depth, and on the way that of every block of the
    /// update it depends on.
    fn resolve(&self, start: usize, memo: &mut [Memo], stack: &mut Vec<usize>) {
        // Most blocks depend only on what the room holds or on blocks before them.
        match self.evaluate(start, memo) {
            Found::Depth(d) => {
                memo[start] = Memo::Done(d);
                return;
            }
            Found::Needs(j) => {
                stack.clear();
                stack.extend([start, j]);
            }
        }
        while let Some(&i) = stack.last() {
            if let Memo::Done(_) = memo[i] {
                stack.pop();
                continue;
            }
            match self.evaluate(i, memo) {
                Found::Depth(d) => {
                    memo[i] = Memo::Done(d);
                    stack.pop();
                }
                Found::Needs(j) => stack.push(j),
            }
        }
    }

    /// Block `i`'s container depth if what it depends on is worked out, else the block to
    /// work out first. Marks it as being worked out (a cycle back to it is unresolvable).
    fn evaluate(&self, i: usize, memo: &mut [Memo]) -> Found {
        memo[i] = Memo::Visiting;
        match self.blocks[i].place {
            Place::Nothing | Place::Root => Found::Depth(Some(0)),
            Place::In(id) => match self.lookup(memo, id) {
                // The parent type sits one level below its own container.
                Found::Depth(d) => Found::Depth(d.map(|d| d.saturating_add(1).min(HOLE - 1))),
                needed => needed,
            },
            Place::Beside(left, right) => {
                let mut depth = Some(0);
                let mut needs = None;
                for id in [left, right].into_iter().filter(|id| *id != Id::NONE) {
                    match self.lookup(memo, id) {
                        Found::Depth(d) => depth = depth.zip(d).map(|(a, b)| a.max(b)),
                        Found::Needs(j) => needs = Some(j),
                    }
                }
                needs.map_or(Found::Depth(depth), Found::Needs)
            }
        }
    }

    /// The container depth of the item at `(client, clock)`, or the block of this update to
    /// work out first.
    fn lookup(&self, memo: &[Memo], id: Id) -> Found {
        let (client, clock) = (self.clients[id.client as usize], id.clock);
        if let Some(depth) = self.nesting.depth_at(client, clock)
            && depth != HOLE
        {
            return Found::Depth(Some(depth));
        }
        let Ok(s) = self.sections.binary_search_by_key(&client, |s| s.client) else {
            return Found::Depth(None);
        };
        let range = self.sections[s].range.clone();
        let k = self.blocks[range.clone()].partition_point(|b| b.clock <= clock);
        let Some(j) = k.checked_sub(1).map(|k| range.start + k) else {
            return Found::Depth(None);
        };
        let block = self.blocks[j];
        // (A skip holds no items: what names a clock in it names something missing.)
        if clock - block.clock >= block.len || block.skip {
            return Found::Depth(None);
        }
        let own = match memo[j] {
            Memo::Done(d) => d,
            // A cycle: yrs could never integrate it either.
            Memo::Visiting => None,
            Memo::Unvisited => return Found::Needs(j),
        };
        // yrs cuts the clocks the document holds out of a block before integrating it
        // (`BlockSet::exclude`): a piece after a held clock `h` gets `h` as its left origin
        // (keeping the block's right origin and parent) and may go into `h`'s container. The
        // deeper of the two counts.
        match self.nesting.last_held(client, block.clock, clock) {
            Some(h) => {
                Found::Depth(own.zip(self.nesting.depth_at(client, h)).map(|(a, b)| a.max(b)))
            }
            None => Found::Depth(own),
        }
    }
}

/// What [`Resolver::lookup`] found.
enum Found {
    Depth(Option<u16>),
    Needs(usize),
}

/// lib0 content kinds (the low four bits of a block's info byte), as yrs numbers them.
const CONTENT_DELETED: u8 = 1;
const CONTENT_JSON: u8 = 2;
const CONTENT_BINARY: u8 = 3;
const CONTENT_STRING: u8 = 4;
const CONTENT_EMBED: u8 = 5;
const CONTENT_FORMAT: u8 = 6;
const CONTENT_TYPE: u8 = 7;
const CONTENT_ANY: u8 = 8;
const CONTENT_DOC: u8 = 9;
/// Info bytes of the two blocks that hold no item.
const INFO_GC: u8 = 0;
const INFO_SKIP: u8 = 10;
const HAS_ORIGIN: u8 = 0x80;
const HAS_RIGHT_ORIGIN: u8 = 0x40;
const HAS_PARENT_SUB: u8 = 0x20;
/// The one type kind whose content carries more than its kind: an XML element's tag name.
const TYPE_XML_ELEMENT: u8 = 3;

/// An update as [`read_blocks`] reads it: its blocks, the distinct clients their ids name
/// (which [`Id::client`] indexes), and its sections, by client.
type ReadUpdate = (Vec<Block>, Vec<u64>, Vec<Section>);

/// The blocks of a v1 update, as yrs' `Update::decode` reads them (the delete set after them
/// is not needed).
fn read_blocks(update: &[u8]) -> Result<ReadUpdate, NestingError> {
    let mut r = Cursor::new(update);
    let section_count: u32 = r.read_var()?;
    let mut blocks = Vec::new();
    let mut sections = Vec::new();
    let mut clients = Clients::default();
    for s in 0..section_count {
        let count: u32 = r.read_var()?;
        let client = read_client(&mut r)?;
        let first = blocks.len();
        let mut clock: u32 = r.read_var()?;
        for b in 0..count {
            // Nothing after the last block is needed (the delete set): its values need not
            // be read past (a one-shape edit is one block of values).
            let last = s + 1 == section_count && b + 1 == count;
            let info = r.read_u8()?;
            let (len, place, is_type) = match info {
                INFO_GC | INFO_SKIP => (r.read_var::<u32>()?, Place::Nothing, false),
                _ => {
                    let mut id = |on: bool| {
                        if on { clients.read_id(&mut r) } else { Ok(Id::NONE) }
                    };
                    let origin = id(info & HAS_ORIGIN != 0)?;
                    let right = id(info & HAS_RIGHT_ORIGIN != 0)?;
                    let place = if origin == Id::NONE && right == Id::NONE {
                        let named = r.read_var::<u32>()? == 1;
                        let place = if named {
                            r.read_buf()?;
                            Place::Root
                        } else {
                            Place::In(clients.read_id(&mut r)?)
                        };
                        if info & HAS_PARENT_SUB != 0 {
                            r.read_buf()?;
                        }
                        place
                    } else {
                        Place::Beside(origin, right)
                    };
                    let kind = info & 0x0f;
                    (content_len(&mut r, kind, last)?, place, kind == CONTENT_TYPE)
                }
            };
            // yrs drops empty items without moving the clock on (and refuses empty GC/skips,
            // which `decode_update` has refused before this runs).
            if len == 0 {
                continue;
            }
            blocks.push(Block { clock, len, place, is_type, skip: info == INFO_SKIP });
            clock = clock.checked_add(len).ok_or(read::Error::UnexpectedValue)?;
        }
        sections.push(Section { client, range: first..blocks.len() });
    }
    sections.sort_unstable_by_key(|s| s.client);
    // yrs appends a second section of a client to the first, clocks overlapping, and then
    // overwrites blocks it still links to. No Yjs encoder writes one.
    if let Some(w) = sections.windows(2).find(|w| w[0].client == w[1].client) {
        return Err(NestingError::Malformed(format!("client {} named twice", w[0].client)));
    }
    Ok((blocks, clients.list, sections))
}

/// The distinct clients an update's ids name, each given a small index.
#[derive(Default)]
struct Clients {
    list: Vec<u64>,
    index: HashMap<u64, u32, ClientHash>,
}

impl Clients {
    /// Up to this many clients are looked up in the list itself (an edit names one or two);
    /// past it, through a map.
    const LISTED: usize = 16;

    fn read_id(&mut self, r: &mut Cursor<'_>) -> Result<Id, NestingError> {
        let client = read_client(r)?;
        let clock = r.read_var()?;
        Ok(Id { client: self.index_of(client), clock })
    }

    fn index_of(&mut self, client: u64) -> u32 {
        // At most as many clients as ids read, each of several bytes: far below u32::MAX.
        let next = u32::try_from(self.list.len()).unwrap_or(u32::MAX - 1);
        if self.index.is_empty() {
            if let Some(i) = self.list.iter().position(|&c| c == client) {
                return i as u32;
            }
            if self.list.len() < Self::LISTED {
                self.list.push(client);
                return next;
            }
            self.index = self.list.iter().zip(0..).map(|(&c, i)| (c, i)).collect();
        }
        let index = *self.index.entry(client).or_insert(next);
        if index == next {
            self.list.push(client);
        }
        index
    }
}

/// Client ids are 53 bits (JavaScript's safe integers): yrs keeps only those, so 7 and
/// 7 + 2^53 would be one client to it and two here.
fn read_client(r: &mut Cursor<'_>) -> Result<u64, NestingError> {
    let client: u64 = r.read_var()?;
    if client >> 53 != 0 {
        return Err(NestingError::Malformed(format!("client id {client} is over 53 bits")));
    }
    Ok(client)
}

/// Reads an item's content of kind `kind` and returns how many clocks it takes, as yrs counts
/// them (`ItemContent::len_utf16`). Values of the update's `last` block are not read past.
fn content_len(r: &mut Cursor<'_>, kind: u8, last: bool) -> Result<u32, read::Error> {
    Ok(match kind {
        CONTENT_DELETED => r.read_var()?,
        CONTENT_JSON => {
            // yrs reads one string more than the count says (and counts it).
            let count: u32 = r.read_var()?;
            for _ in 0..=count {
                r.read_buf()?;
            }
            count.checked_add(1).ok_or(read::Error::UnexpectedValue)?
        }
        CONTENT_BINARY => {
            r.read_buf()?;
            1
        }
        CONTENT_STRING => {
            // UTF-16 units, counted from the UTF-8 bytes (yrs checked they are UTF-8): one per
            // character, two for those beyond the BMP (four-byte sequences).
            let bytes = r.read_buf()?;
            let units = bytes.iter().filter(|&&b| b & 0xc0 != 0x80).count()
                + bytes.iter().filter(|&&b| b >= 0xf0).count();
            u32::try_from(units).map_err(|_| read::Error::UnexpectedValue)?
        }
        CONTENT_EMBED => {
            r.read_buf()?;
            1
        }
        CONTENT_FORMAT => {
            r.read_buf()?;
            r.read_buf()?;
            1
        }
        CONTENT_TYPE => {
            if r.read_u8()? == TYPE_XML_ELEMENT {
                r.read_buf()?;
            }
            1
        }
        CONTENT_ANY => {
            let count: u32 = r.read_var()?;
            if !last {
                for _ in 0..count {
                    skip_value(r, crate::wire::MAX_VALUE_DEPTH)?;
                }
            }
            count
        }
        CONTENT_DOC => {
            r.read_buf()?;
            skip_value(r, crate::wire::MAX_VALUE_DEPTH)?;
            1
        }
        _ => return Err(read::Error::UnexpectedValue),
    })
}

/// Reads past one lib0 value without building it (tags as in `wire`'s `decode_value`).
fn skip_value(r: &mut Cursor<'_>, depth: usize) -> Result<(), read::Error> {
    match r.read_u8()? {
        127 | 126 | 121 | 120 => {}
        125 => {
            r.read_var::<i64>()?;
        }
        124 => {
            r.read_exact(4)?;
        }
        123 | 122 => {
            r.read_exact(8)?;
        }
        119 => {
            r.read_buf()?;
        }
        118 | 117 if depth == 0 => return Err(read::Error::UnexpectedValue),
        118 => {
            let len: u64 = r.read_var()?;
            for _ in 0..len {
                r.read_buf()?;
                skip_value(r, depth - 1)?;
            }
        }
        117 => {
            let len: u64 = r.read_var()?;
            for _ in 0..len {
                skip_value(r, depth - 1)?;
            }
        }
        116 => {
            r.read_buf()?;
        }
        _ => return Err(read::Error::UnexpectedValue),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::types::ToJson;
    use yrs::updates::decoder::Decode;
    use yrs::{
        Array, ArrayPrelim, BranchID, Doc, GetString, Map, MapPrelim, MapRef, Options, Text,
        TextPrelim, Transact, Update, WriteTxn, XmlElementPrelim, XmlFragment, XmlTextPrelim,
    };

    fn doc(client: u64) -> Doc {
        Doc::with_options(Options { client_id: yrs::ClientID::new(client), ..Options::default() })
    }

    /// Nests `levels` maps under `map`, in one transaction; returns the update and the deepest.
    fn nest(doc: &Doc, map: Option<MapRef>, levels: usize) -> (Vec<u8>, MapRef) {
        let mut txn = doc.transact_mut();
        let mut m = map.unwrap_or_else(|| txn.get_or_insert_map("root"));
        for _ in 0..levels {
            m = m.insert(&mut txn, "k", MapPrelim::default());
        }
        (txn.encode_update_v1(), m)
    }

    /// What a room does with an update: check it, apply it, record what went in.
    fn admit(nesting: &mut Nesting, room: &Doc, update: &[u8]) -> Result<(), NestingError> {
        let placed = nesting.check(update)?;
        room.transact_mut()
            .apply_update(Update::decode_v1(update).expect("present"))
            .expect("present");
        nesting.record(&placed);
        Ok(())
    }

    fn depth_of(nesting: &Nesting, map: &MapRef) -> u16 {
        let BranchID::Nested(id) = map.as_ref().id() else { panic!("a root") };
        nesting.depth_at(id.client.get(), id.clock).expect("recorded") + 1
    }

    #[test]
    fn a_chain_as_deep_as_allowed_goes_in_one_deeper_does_not() {
        let (ok, _) = nest(&doc(1), None, usize::from(MAX_TYPE_DEPTH));
        let nesting = Nesting::default();
        nesting.check(&ok).expect("at the limit");
        let (deep, _) = nest(&doc(1), None, usize::from(MAX_TYPE_DEPTH) + 1);
        assert_eq!(nesting.check(&deep).expect_err("refused"), NestingError::TooDeep);
    }

    #[test]
    fn a_chain_built_over_many_updates_is_stopped_at_the_limit() {
        let (author, room) = (doc(1), doc(2));
        let mut nesting = Nesting::default();
        let (first, mut deepest) = nest(&author, None, 40);
        admit(&mut nesting, &room, &first).expect("40 levels");
        assert_eq!(depth_of(&nesting, &deepest), 40);
        let (more, next) = nest(&author, Some(deepest), 24);
        admit(&mut nesting, &room, &more).expect("64 levels");
        deepest = next;
        // (From a copy: the author's clock must not move on for what the room refuses.)
        let copy = doc(3);
        let full = author.transact().encode_state_as_update_v1(&StateVector::default());
        copy.transact_mut()
            .apply_update(Update::decode_v1(&full).expect("valid"))
            .expect("applies");
        let (over, _) = nest(&copy, Some(find_parent(&copy, 64)), 1);
        assert_eq!(nesting.check(&over).expect_err("refused"), NestingError::TooDeep);
        let _ = deepest;
        // Beside the deepest (a new value for its key: placed by its origin, not its parent),
        // at the same depth: allowed; one below that: not.
        let (beside, sibling) = {
            let parent = find_parent(&author, 63);
            let mut txn = author.transact_mut();
            let sibling = parent.insert(&mut txn, "k", MapPrelim::default());
            (txn.encode_update_v1(), sibling)
        };
        admit(&mut nesting, &room, &beside).expect("a sibling at 64");
        assert_eq!(depth_of(&nesting, &sibling), 64);
        let (under, _) = nest(&author, Some(sibling), 1);
        assert_eq!(nesting.check(&under).expect_err("refused"), NestingError::TooDeep);
    }

    /// The map at `depth` below `root` (following key `k`).
    fn find_parent(doc: &Doc, depth: usize) -> MapRef {
        let txn = doc.transact();
        let mut m = txn.get_map("root").expect("present");
        for _ in 0..depth {
            m = m.get(&txn, "k").expect("present").cast::<MapRef>().expect("present");
        }
        m
    }

    #[test]
    fn a_type_beside_a_collected_item_is_placed_by_its_right_origin() {
        use yrs::encoding::write::Write;
        let (author, room) = (doc(1), doc(2));
        let mut nesting = Nesting::default();
        let mut txn = author.transact_mut();
        let root = txn.get_or_insert_map("r");
        root.insert(&mut txn, "a", "x"); // clock 0, collected below
        let update = txn.encode_update_v1();
        drop(txn);
        admit(&mut nesting, &room, &update).expect("a string");
        let update = {
            let mut txn = author.transact_mut();
            root.remove(&mut txn, "a");
            txn.encode_update_v1()
        };
        admit(&mut nesting, &room, &update).expect("its removal");
        // Clocks 1..=64: maps nested 64 deep; clock 65: a string in the deepest.
        let (chain, deepest) = nest(&author, None, 64);
        admit(&mut nesting, &room, &chain).expect("64 levels");
        let update = {
            let mut txn = author.transact_mut();
            deepest.insert(&mut txn, "z", "v");
            txn.encode_update_v1()
        };
        admit(&mut nesting, &room, &update).expect("a string at the bottom");
        // A map (client 9) between the collected string and the deepest one: yrs finds no
        // left neighbour and puts it beside the right one, 65 deep.
        let mut crafted = Vec::new();
        crafted.write_var(1u32); // one client
        crafted.write_var(1u32); // one block
        crafted.write_var(9u64);
        crafted.write_var(0u32);
        crafted.write_u8(HAS_ORIGIN | HAS_RIGHT_ORIGIN | CONTENT_TYPE);
        crafted.write_var(1u64);
        crafted.write_var(0u32); // left origin: the collected string
        crafted.write_var(1u64);
        crafted.write_var(65u32); // right origin: the string at the bottom
        crafted.write_u8(1); // a map
        crafted.write_var(0u32); // no deletions
        Update::decode_v1(&crafted).expect("a valid update");
        assert_eq!(nesting.check(&crafted).expect_err("refused"), NestingError::TooDeep);
    }

    fn nesting_of(runs: Vec<Run>) -> Nesting {
        let mut nesting = Nesting::default();
        nesting.clients.insert(1, runs);
        nesting.holey.insert(1);
        nesting
    }

    #[test]
    fn a_piece_after_held_clocks_is_counted_in_the_held_items_container() {
        use yrs::encoding::write::Write;
        let (author, room) = (doc(1), doc(2));
        let mut nesting = Nesting::default();
        // Clocks 0..=63 of client 1: maps nested 64 deep.
        let (chain, deepest) = nest(&author, None, 64);
        admit(&mut nesting, &room, &chain).expect("64 levels");
        let BranchID::Nested(bottom) = deepest.as_ref().id() else { panic!("a root") };
        // Client 9's clock 0: a string in the deepest map.
        let mut first = Vec::new();
        first.write_var(1u32);
        first.write_var(1u32);
        first.write_var(9u64);
        first.write_var(0u32);
        first.write_u8(CONTENT_STRING); // no origins: the parent follows
        first.write_var(0u32); // the parent is an item
        first.write_var(bottom.client.get());
        first.write_var(bottom.clock);
        first.write_string("a");
        first.write_var(0u32);
        admit(&mut nesting, &room, &first).expect("a string");
        // Clocks 0..2 as "ab" beside the root's first map, then a map beside clock 1. yrs cuts
        // the held clock 0 off: "b" goes in beside "a", in the deepest map, and the map too.
        let mut second = Vec::new();
        second.write_var(1u32);
        second.write_var(2u32);
        second.write_var(9u64);
        second.write_var(0u32);
        second.write_u8(HAS_ORIGIN | CONTENT_STRING);
        second.write_var(1u64);
        second.write_var(0u32);
        second.write_string("ab");
        second.write_u8(HAS_ORIGIN | CONTENT_TYPE);
        second.write_var(9u64);
        second.write_var(1u32);
        second.write_u8(1); // a map
        second.write_var(0u32);
        Update::decode_v1(&second).expect("a valid update");
        assert_eq!(
            nesting.check(&second).expect_err("refused"),
            NestingError::Mismatch { client: 9, clock: 0 }
        );
        assert!(!nesting.place(&second).expect("reads").is_plain());
    }

    #[test]
    fn client_ids_yrs_would_alias_and_clients_named_twice_are_refused() {
        let mut aliased = Vec::new();
        {
            use yrs::encoding::write::Write;
            aliased.write_var(1u32);
            aliased.write_var(1u32);
            aliased.write_var((1u64 << 53) + 7);
            aliased.write_var(0u32);
            aliased.write_u8(CONTENT_STRING);
            aliased.write_var(1u32); // a root
            aliased.write_string("t");
            aliased.write_string("a");
            aliased.write_var(0u32);
        }
        assert!(matches!(Nesting::default().check(&aliased), Err(NestingError::Malformed(_))));
        let (a, _) = nest(&doc(5), None, 1);
        // The same section twice: sections, then each section again.
        let body = &a[1..a.len() - 1];
        let twice = [&[2u8][..], body, body, &[0]].concat();
        Update::decode_v1(&twice).expect("yrs reads it");
        assert!(matches!(Nesting::default().check(&twice), Err(NestingError::Malformed(_))));
    }

    #[test]
    fn a_type_whose_parent_the_room_lacks_is_refused() {
        let (author, other) = (doc(1), doc(4));
        let (first, _) = nest(&author, None, 2);
        other
            .transact_mut()
            .apply_update(Update::decode_v1(&first).expect("valid"))
            .expect("applies");
        let (second, _) = nest(&other, Some(find_parent(&other, 2)), 1);
        let nesting = Nesting::default();
        assert_eq!(nesting.check(&second).expect_err("refused"), NestingError::UnknownParent);
        // Together they are fine, in either order.
        let merged = Update::merge_updates([
            Update::decode_v1(&second).expect("present"),
            Update::decode_v1(&first).expect("present"),
        ]);
        nesting.check(&yrs::updates::encoder::Encode::encode_v1(&merged)).expect("both");
    }

    #[test]
    fn a_chain_far_too_deep_is_refused_without_recursing() {
        let (deep, _) = nest(&doc(1), None, 200_000);
        assert_eq!(Nesting::default().check(&deep).expect_err("refused"), NestingError::TooDeep);
    }

    #[test]
    fn it_reads_every_kind_of_content_at_the_clocks_yrs_gives_it() {
        let (a, b) = (doc(1), doc(2));
        {
            let mut txn = a.transact_mut();
            let text = txn.get_or_insert_text("text");
            text.insert(&mut txn, 0, "héllo 🎨 wörld");
            text.format(&mut txn, 1, 3, HashMap::from([("bold".into(), true.into())]));
            text.insert_embed(
                &mut txn,
                1,
                yrs::Any::from(HashMap::from([("x".to_owned(), yrs::Any::from(1))])),
            );
            let arr = txn.get_or_insert_array("arr");
            arr.insert_range(&mut txn, 0, [1.5, 2.0, 3.25]);
            arr.push_back(&mut txn, yrs::Any::Buffer(vec![1u8, 2, 3].into()));
            let nested = arr.push_back(&mut txn, ArrayPrelim::default());
            nested.push_back(&mut txn, TextPrelim::new("in 🎨"));
            let xml = txn.get_or_insert_xml_fragment("xml");
            let el = xml.push_back(&mut txn, XmlElementPrelim::empty("p"));
            el.push_back(&mut txn, XmlTextPrelim::new("para"));
            let map = txn.get_or_insert_map("map");
            map.insert(
                &mut txn,
                "big",
                yrs::Any::from(HashMap::from([(
                    "a".to_owned(),
                    yrs::Any::from(vec![yrs::Any::Null, yrs::Any::from(-7i64)]),
                )])),
            );
            map.insert(&mut txn, "sub", yrs::Doc::new());
            text.remove_range(&mut txn, 0, 1);
            arr.remove(&mut txn, 1);
        }
        {
            let mut txn = b.transact_mut();
            txn.apply_update(
                Update::decode_v1(&a.transact().encode_state_as_update_v1(&StateVector::default()))
                    .expect("present"),
            )
            .expect("present");
            let text = txn.get_or_insert_text("text");
            text.insert(&mut txn, 0, "🙂 from b");
        }
        let nesting = Nesting::of_doc(&b.transact());
        // A room loaded from its snapshot reads the snapshot instead: the same.
        let snapshot = b.transact().encode_state_as_update_v1(&StateVector::default());
        assert_eq!(Nesting::of_update(&snapshot).expect("reads").clients, nesting.clients);
        let sv = b.transact().state_vector();
        for (client, clock) in sv.iter() {
            assert_eq!(nesting.end(client.get()), *clock, "client {client:?}");
        }
        assert!(nesting.clients.values().flatten().all(|r| r.depth != HOLE));
        assert!(
            b.transact()
                .get_text("text")
                .expect("present")
                .get_string(&b.transact())
                .contains("🙂")
        );
        let _ = b.transact().get_map("map").expect("present").to_json(&b.transact());
    }

    /// Two updates of `author`'s: text at clocks 0..3, then a map in a root map at clock 3.
    fn text_then_map(author: &Doc) -> (Vec<u8>, Vec<u8>) {
        let update = |f: &dyn Fn(&mut yrs::TransactionMut)| {
            let mut txn = author.transact_mut();
            f(&mut txn);
            txn.encode_update_v1()
        };
        let early = update(&|t| t.get_or_insert_text("t").insert(t, 0, "abc"));
        let late = update(&|t| {
            t.get_or_insert_map("m").insert(t, "x", MapPrelim::default());
        });
        (early, late)
    }

    #[test]
    fn a_clients_items_out_of_order_are_refused_in_order_taken() {
        let (author, room) = (doc(7), doc(2));
        let mut nesting = Nesting::default();
        // yrs would take the map first, leaving a hole (see `Nesting::check`).
        let (early, late) = text_then_map(&author);
        let refused = nesting.check(&late).expect_err("refused");
        assert_eq!(refused, NestingError::OutOfOrder { client: 7, clock: 3, expected: 0 });
        admit(&mut nesting, &room, &early).expect("the text");
        admit(&mut nesting, &room, &late).expect("then the map");
        // Again: held, so skipped.
        admit(&mut nesting, &room, &early).expect("the text again");
        assert_eq!(nesting.end(7), 4);
    }

    #[test]
    fn a_block_reaching_past_what_the_room_holds_goes_in_if_it_agrees_with_it() {
        let (author, room) = (doc(7), doc(2));
        let mut nesting = Nesting::default();
        let text = |at: u32, s: &str| {
            let mut txn = author.transact_mut();
            txn.get_or_insert_text("t").insert(&mut txn, at, s);
            txn.encode_update_v1()
        };
        let (abc, de) = (text(0, "abc"), text(3, "de"));
        admit(&mut nesting, &room, &abc).expect("abc");
        // "abcde" as one block (the author's whole document: yrs joined the two): yrs cuts
        // off "abc".
        let _ = de;
        let merged = author.transact().encode_state_as_update_v1(&StateVector::default());
        assert_eq!(read_blocks(&merged).expect("reads").0.len(), 1, "one block");
        let placed = nesting.check(&merged).expect("agrees with what the room holds");
        assert!(!placed.is_plain());
        admit(&mut nesting, &room, &merged).expect("applies");
        let txn = room.transact();
        assert_eq!(txn.get_text("t").expect("present").get_string(&txn), "abcde");
        drop(txn);

        // The same in a text nested in a map: its first character names the text as its
        // parent, which yrs would keep for the rest while linking it beside the held part.
        let (author, room) = (doc(8), doc(2));
        let mut nesting = Nesting::default();
        let nested = {
            let mut txn = author.transact_mut();
            txn.get_or_insert_map("m").insert(&mut txn, "t", TextPrelim::new(""))
        };
        let type_and_abc = {
            let mut txn = author.transact_mut();
            nested.insert(&mut txn, 0, "abc");
            drop(txn);
            author.transact().encode_state_as_update_v1(&StateVector::default())
        };
        admit(&mut nesting, &room, &type_and_abc).expect("the text and abc");
        nested.insert(&mut author.transact_mut(), 3, "de");
        let merged = author.transact().encode_state_as_update_v1(&StateVector::default());
        assert!(matches!(nesting.check(&merged), Err(NestingError::Mismatch { client: 8, .. })));
    }

    /// A pseudo-random number below `n` (an LCG: the test must not depend on a seedless source).
    fn below(state: &mut u64, n: usize) -> usize {
        *state =
            state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((*state >> 33) as usize) % n
    }

    /// Every container of `doc` under its root map `m` (the map itself first), with its depth.
    fn containers(txn: &yrs::TransactionMut, root: &MapRef) -> Vec<(yrs::Out, u16)> {
        let mut found = vec![(yrs::Out::YMap(root.clone()), 0u16)];
        let mut i = 0;
        while i < found.len() {
            let (out, depth) = found[i].clone();
            let children: Vec<yrs::Out> = match &out {
                yrs::Out::YMap(m) => m.iter(txn).map(|(_, v)| v).collect(),
                yrs::Out::YArray(a) => a.iter(txn).collect(),
                _ => Vec::new(),
            };
            for child in children {
                if matches!(child, yrs::Out::YMap(_) | yrs::Out::YArray(_) | yrs::Out::YText(_)) {
                    found.push((child, depth + 1));
                }
            }
            i += 1;
        }
        found
    }

    /// Clients editing nested maps, arrays and texts concurrently, going offline and coming
    /// back with a sync step 2 as y-websocket does: the room refuses none of it, and everyone
    /// ends with the same document.
    #[test]
    fn clients_editing_nested_types_as_yjs_clients_do_are_never_refused() {
        let room = doc(1);
        let mut nesting = Nesting::default();
        let clients: Vec<Doc> = (10..14).map(doc).collect();
        let mut online = vec![true; clients.len()];
        let mut rng = 0x5eed_u64;
        let state = |d: &Doc| d.transact().state_vector();
        let diff = |d: &Doc, sv: &StateVector| d.transact().encode_state_as_update_v1(sv);
        let apply = |d: &Doc, u: &[u8]| {
            d.transact_mut().apply_update(Update::decode_v1(u).expect("valid")).expect("applies");
        };
        for step in 0..1500 {
            let c = below(&mut rng, clients.len());
            if below(&mut rng, 10) == 0 {
                online[c] = !online[c];
                if online[c] {
                    // Back: its sync step 2 to the room, then the room's to it.
                    let up = diff(&clients[c], &state(&room));
                    admit(&mut nesting, &room, &up)
                        .unwrap_or_else(|e| panic!("step {step}: resync refused: {e}"));
                    for (o, other) in clients.iter().enumerate() {
                        if o != c && online[o] {
                            apply(other, &up);
                        }
                    }
                    apply(&clients[c], &diff(&room, &state(&clients[c])));
                }
                continue;
            }
            let update = {
                let mut txn = clients[c].transact_mut();
                let root = txn.get_or_insert_map("m");
                let all = containers(&txn, &root);
                let (target, depth) = all[below(&mut rng, all.len())].clone();
                let key = format!("k{}", below(&mut rng, 6));
                // Mostly new containers (up to 8 deep), some values, few removals.
                let kind = match below(&mut rng, 12) {
                    _ if depth >= 8 => 3,
                    0..=3 => 0,
                    4 | 5 => 1,
                    6 | 7 => 2,
                    8..=10 => 3,
                    _ => 4,
                };
                match target {
                    yrs::Out::YMap(m) => match kind {
                        0 => drop(m.insert(&mut txn, key, MapPrelim::default())),
                        1 => drop(m.insert(&mut txn, key, ArrayPrelim::default())),
                        2 => drop(m.insert(&mut txn, key, TextPrelim::new("hi"))),
                        4 => drop(m.remove(&mut txn, &key)),
                        _ => drop(m.insert(&mut txn, format!("v{key}"), i64::from(step))),
                    },
                    yrs::Out::YArray(a) => {
                        let len = a.len(&txn);
                        let at = below(&mut rng, len as usize + 1) as u32;
                        match kind {
                            0 => drop(a.insert(&mut txn, at, MapPrelim::default())),
                            1 => drop(a.insert(&mut txn, at, ArrayPrelim::default())),
                            4 if len > 0 => a.remove(&mut txn, at.min(len - 1)),
                            _ => drop(a.insert(&mut txn, at, i64::from(step))),
                        }
                    }
                    yrs::Out::YText(t) => {
                        let len = t.len(&txn);
                        if kind == 4 && len > 0 {
                            t.remove_range(&mut txn, below(&mut rng, len as usize) as u32, 1);
                        } else {
                            t.insert(&mut txn, below(&mut rng, len as usize + 1) as u32, "xy");
                        }
                    }
                    _ => {}
                }
                txn.encode_update_v1()
            };
            if online[c] {
                admit(&mut nesting, &room, &update)
                    .unwrap_or_else(|e| panic!("step {step}: edit refused: {e}"));
                for (o, other) in clients.iter().enumerate() {
                    if o != c && online[o] {
                        apply(other, &update);
                    }
                }
            }
        }
        for client in &clients {
            let up = diff(client, &state(&room));
            admit(&mut nesting, &room, &up).expect("a last resync");
        }
        let everything = diff(&room, &StateVector::default());
        let expected = room.transact().get_map("m").expect("root").to_json(&room.transact());
        for client in &clients {
            apply(client, &everything);
            let txn = client.transact();
            assert_eq!(txn.get_map("m").expect("root").to_json(&txn), expected);
        }
        // What the room recorded is what it holds.
        let rebuilt = Nesting::of_doc(&room.transact());
        assert_eq!(rebuilt.clients.len(), nesting.clients.len());
        for (client, runs) in &rebuilt.clients {
            assert_eq!(nesting.end(*client), runs.last().map_or(0, |r| r.end));
        }
    }

    #[test]
    fn what_brings_nothing_new_leaves_the_index_as_it_was() {
        use yrs::encoding::write::Write;
        let (author, room) = (doc(5), doc(2));
        let mut nesting = Nesting::default();
        let (chain, _) = nest(&author, None, 3);
        admit(&mut nesting, &room, &chain).expect("3 levels");
        let before = nesting.clients.clone();
        // An empty section for client 9, a collected range over all of client 5's clocks,
        // and one new string from client 10 (so that the update is a change).
        let mut update = Vec::new();
        update.write_var(3u32);
        update.write_var(0u32); // client 9: no blocks
        update.write_var(9u64);
        update.write_var(0u32);
        update.write_var(1u32); // client 5: a collected range, clocks 0..3
        update.write_var(5u64);
        update.write_var(0u32);
        update.write_u8(INFO_GC);
        update.write_var(3u32);
        update.write_var(1u32); // client 10: "a" in the root type "t"
        update.write_var(10u64);
        update.write_var(0u32);
        update.write_u8(CONTENT_STRING);
        update.write_var(1u32);
        update.write_string("t");
        update.write_string("a");
        update.write_var(0u32);
        admit(&mut nesting, &room, &update).expect("applies");
        assert!(!nesting.clients.contains_key(&9), "no entry for an empty section");
        assert_eq!(nesting.clients.get(&5), before.get(&5), "client 5 as it was");
        assert_eq!(nesting.end(10), 1);
    }

    #[test]
    fn an_update_naming_many_clients_is_read_as_one_naming_few() {
        // Twenty clients each nesting a map in the last one's, then all of it as one update.
        let room = doc(1);
        let mut state = Vec::new();
        for client in 100..120 {
            let d = doc(client);
            if !state.is_empty() {
                d.transact_mut()
                    .apply_update(Update::decode_v1(&state).expect("valid"))
                    .expect("applies");
            }
            let mut txn = d.transact_mut();
            let mut m = txn.get_or_insert_map("root");
            while let Some(yrs::Out::YMap(next)) = m.get(&txn, "k") {
                m = next;
            }
            m.insert(&mut txn, "k", MapPrelim::default());
            drop(txn);
            state = d.transact().encode_state_as_update_v1(&StateVector::default());
        }
        let mut nesting = Nesting::default();
        admit(&mut nesting, &room, &state).expect("twenty levels from twenty clients");
        assert_eq!(nesting.clients, Nesting::of_doc(&room.transact()).clients);
        assert_eq!(nesting.depth_at(119, 0), Some(19), "the last map, in the 19th");
    }

    #[test]
    fn a_room_holding_a_client_out_of_order_takes_resyncs_but_nothing_new_from_it() {
        // A room stored before out-of-order items were refused: client 7's map (clock 3) went
        // in ahead of its text (clocks 0..3), leaving a hole.
        let (early, late) = text_then_map(&doc(7));
        let room = doc(1);
        room.transact_mut()
            .apply_update(Update::decode_v1(&late).expect("valid"))
            .expect("applies");
        let nesting = Nesting::of_doc(&room.transact());
        assert!(nesting.holey.contains(&7));
        // Any client's resync carries client 7 from its first hole on (yrs' state vector stops
        // there): a skip, then the map the room holds. Nothing new: taken.
        let resync = room.transact().encode_state_as_update_v1(&room.transact().state_vector());
        let copy = room.transact().encode_state_as_update_v1(&StateVector::default());
        for (what, bytes) in [("resync", &resync), ("whole copy", &copy)] {
            nesting.check(bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        assert!(read_blocks(&copy).expect("reads").0.iter().any(|b| b.skip), "a skip in it");
        // What the hole lacks is new: refused (yrs would fill the hole).
        assert!(matches!(nesting.check(&early), Err(NestingError::OutOfOrder { client: 7, .. })));
    }

    #[test]
    fn an_item_beside_a_skipped_clock_is_refused_as_missing_its_neighbour() {
        use yrs::encoding::write::Write;
        // Client 9: a skip over clocks 0..2; client 10: a map beside (9, 1).
        let mut update = Vec::new();
        update.write_var(2u32);
        update.write_var(1u32);
        update.write_var(9u64);
        update.write_var(0u32);
        update.write_u8(INFO_SKIP);
        update.write_var(2u32);
        update.write_var(1u32);
        update.write_var(10u64);
        update.write_var(0u32);
        update.write_u8(HAS_ORIGIN | CONTENT_TYPE);
        update.write_var(9u64);
        update.write_var(1u32);
        update.write_u8(1);
        update.write_var(0u32);
        Update::decode_v1(&update).expect("a valid update");
        let refused = Nesting::default().check(&update).expect_err("refused");
        assert_eq!(refused, NestingError::UnknownParent);
    }

    #[test]
    fn a_block_takes_at_most_32_bytes() {
        // A collected range is two bytes in an update: its block here is what a message of
        // tens of megabytes of them costs while it is checked.
        assert!(std::mem::size_of::<Block>() <= 32, "{}", std::mem::size_of::<Block>());
    }

    #[test]
    fn holes_are_filled_by_what_comes_later() {
        let mut runs = Vec::new();
        assign(&mut runs, 5, 8, 2);
        assert_eq!(runs, [Run { end: 5, depth: HOLE }, Run { end: 8, depth: 2 }]);
        assign(&mut runs, 2, 4, 1);
        assert_eq!(
            runs,
            [
                Run { end: 2, depth: HOLE },
                Run { end: 4, depth: 1 },
                Run { end: 5, depth: HOLE },
                Run { end: 8, depth: 2 }
            ]
        );
        // Held clocks keep their depth; the rest of the holes take the new one.
        assign(&mut runs, 0, 10, 2);
        assert_eq!(
            runs,
            [
                Run { end: 2, depth: 2 },
                Run { end: 4, depth: 1 },
                Run { end: 5, depth: 2 },
                Run { end: 10, depth: 2 }
            ]
        );
        assert_eq!(nesting_of(runs.clone()).last_held(1, 0, 10), Some(9));
        assign(&mut runs, 12, 13, 0);
        let nesting = nesting_of(runs);
        assert_eq!(nesting.last_held(1, 0, 12), Some(9), "the clock before a hole");
        assert_eq!(nesting.last_held(1, 10, 12), None);
        assert_eq!(nesting.last_held(1, 0, 20), Some(12));
    }
}
