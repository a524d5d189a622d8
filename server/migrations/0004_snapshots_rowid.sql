-- Snapshots move to an ordinary (rowid) table. A snapshot is one multi-megabyte blob, and
-- SQLite stores big rows poorly in a WITHOUT ROWID table (its rows live in an index B-tree
-- meant for small ones): writing and checkpointing a 7.3 MB snapshot there took 32-33 ms of
-- CPU against 8-10 ms in a rowid table (server/examples/snapshot_write.rs; docs/benchmarks.md,
-- "Session 19: a snapshot in a rowid table"), paid at every compaction. The log's small rows
-- stay WITHOUT ROWID.
CREATE TABLE room_snapshots_rowid (
    room TEXT PRIMARY KEY NOT NULL,
    seq  INTEGER NOT NULL,
    data BLOB NOT NULL,
    checksum INTEGER,
    state_vector BLOB,
    state_vector_checksum INTEGER
);
INSERT INTO room_snapshots_rowid (room, seq, data, checksum, state_vector, state_vector_checksum)
    SELECT room, seq, data, checksum, state_vector, state_vector_checksum FROM room_snapshots;
DROP TABLE room_snapshots;
ALTER TABLE room_snapshots_rowid RENAME TO room_snapshots;
