-- Each room is a snapshot (the whole document as one Yjs update, covering every log entry up to
-- and including `seq`) plus the log of updates after it. Loading a room is the snapshot followed
-- by the log in `seq` order.
CREATE TABLE IF NOT EXISTS room_snapshots (
    room TEXT PRIMARY KEY NOT NULL,
    seq  INTEGER NOT NULL,
    data BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS room_updates (
    room TEXT NOT NULL,
    seq  INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;
