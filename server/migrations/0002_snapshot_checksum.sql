-- CRC-32 of `data`, written with it: a big snapshot can be served to joiners before it is
-- decoded (decoding 6.5 MB takes ~200 ms), so its integrity is checked this way first. NULL for
-- snapshots written before this column existed (they are decoded before anything is served).
ALTER TABLE room_snapshots ADD COLUMN checksum INTEGER;
