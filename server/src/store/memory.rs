//! An in-memory [`Store`] for unit tests of the room logic: same contract, no disk.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use bytes::Bytes;
use huddle_protocol::RoomName;
use parking_lot::Mutex;

use super::{LogEntry, Seq, Store, StoreError, StoredRoom};

/// Keeps rooms in a map; everything is lost with the process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    rooms: Mutex<HashMap<RoomName, MemoryRoom>>,
}

#[derive(Debug, Default)]
struct MemoryRoom {
    snapshot: Option<(Seq, Vec<u8>)>,
    log: BTreeMap<Seq, Vec<u8>>,
    state_vector: Option<Vec<u8>>,
}

#[async_trait]
impl Store for MemoryStore {
    async fn load(&self, room: &RoomName) -> Result<StoredRoom, StoreError> {
        let rooms = self.rooms.lock();
        let Some(r) = rooms.get(room) else { return Ok(StoredRoom::default()) };
        let after = r.snapshot.as_ref().map_or(Seq(0), |(s, _)| *s);
        Ok(StoredRoom {
            snapshot: r.snapshot.clone(),
            snapshot_checked: true,
            snapshot_state_vector: r.state_vector.clone(),
            log: r.log.range(Seq(after.0 + 1)..).map(|(s, d)| (*s, d.clone())).collect(),
        })
    }

    async fn append(&self, batch: &[LogEntry]) -> Result<(), StoreError> {
        let mut rooms = self.rooms.lock();
        for e in batch {
            rooms.entry(e.room.clone()).or_default().log.insert(e.seq, e.update.to_vec());
        }
        Ok(())
    }

    async fn compact(
        &self,
        room: &RoomName,
        upto: Seq,
        snapshot: Bytes,
        state_vector: Vec<u8>,
    ) -> Result<(), StoreError> {
        let mut rooms = self.rooms.lock();
        let r = rooms.entry(room.clone()).or_default();
        if r.snapshot.as_ref().is_some_and(|(s, _)| *s >= upto) {
            return Ok(());
        }
        r.snapshot = Some((upto, snapshot.to_vec()));
        r.state_vector = Some(state_vector);
        r.log.retain(|s, _| *s > upto);
        Ok(())
    }

    async fn set_snapshot_state_vector(
        &self,
        room: &RoomName,
        seq: Seq,
        state_vector: Vec<u8>,
    ) -> Result<(), StoreError> {
        let mut rooms = self.rooms.lock();
        if let Some(r) = rooms.get_mut(room)
            && r.snapshot.as_ref().is_some_and(|(s, _)| *s == seq)
        {
            r.state_vector = Some(state_vector);
        }
        Ok(())
    }

    async fn close(&self) {}
}

#[cfg(test)]
pub(crate) mod tests {
    use futures_util::future::BoxFuture;

    use super::*;

    /// What a [`Hooked`] store runs before a write: it may wait (a slow disk) or fail (a full
    /// one).
    pub(crate) type Hook =
        Box<dyn Fn() -> BoxFuture<'static, Result<(), StoreError>> + Send + Sync>;

    /// A [`MemoryStore`] whose loads, appends or snapshot writes run a hook first, for tests
    /// that need storage to stall or fail at a chosen moment.
    pub(crate) struct Hooked {
        pub(crate) inner: MemoryStore,
        pub(crate) before_load: Option<Hook>,
        pub(crate) before_append: Option<Hook>,
        pub(crate) before_compact: Option<Hook>,
    }

    impl Hooked {
        /// A store that runs `hook` before each append.
        pub(crate) fn appends(hook: Hook) -> Self {
            Self { before_append: Some(hook), ..Self::plain() }
        }

        /// A store that runs `hook` before each snapshot write.
        pub(crate) fn snapshots(hook: Hook) -> Self {
            Self { before_compact: Some(hook), ..Self::plain() }
        }

        /// A store that runs `hook` before each load.
        pub(crate) fn loads(hook: Hook) -> Self {
            Self { before_load: Some(hook), ..Self::plain() }
        }

        fn plain() -> Self {
            Self {
                inner: MemoryStore::default(),
                before_load: None,
                before_append: None,
                before_compact: None,
            }
        }
    }

    impl std::fmt::Debug for Hooked {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Hooked").field("inner", &self.inner).finish_non_exhaustive()
        }
    }

    #[async_trait]
    impl Store for Hooked {
        async fn load(&self, room: &RoomName) -> Result<StoredRoom, StoreError> {
            if let Some(hook) = &self.before_load {
                hook().await?;
            }
            self.inner.load(room).await
        }
        async fn append(&self, batch: &[LogEntry]) -> Result<(), StoreError> {
            if let Some(hook) = &self.before_append {
                hook().await?;
            }
            self.inner.append(batch).await
        }
        async fn compact(
            &self,
            room: &RoomName,
            upto: Seq,
            snapshot: Bytes,
            state_vector: Vec<u8>,
        ) -> Result<(), StoreError> {
            if let Some(hook) = &self.before_compact {
                hook().await?;
            }
            self.inner.compact(room, upto, snapshot, state_vector).await
        }
        async fn set_snapshot_state_vector(
            &self,
            room: &RoomName,
            seq: Seq,
            state_vector: Vec<u8>,
        ) -> Result<(), StoreError> {
            self.inner.set_snapshot_state_vector(room, seq, state_vector).await
        }
        async fn close(&self) {}
    }
}
