-- The state vector of `data` and its CRC-32, written with it: a big room that is only a snapshot
-- can then greet clients with its sync step 1 (asking for what they have that it lacks) without
-- decoding the snapshot, so a room that people only look at is never decoded at all. NULL for
-- snapshots written before these columns existed (those rooms are decoded once loaded).
ALTER TABLE room_snapshots ADD COLUMN state_vector BLOB;
ALTER TABLE room_snapshots ADD COLUMN state_vector_checksum INTEGER;
