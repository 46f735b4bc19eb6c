-- The embedded queue: one log of messages, a cursor per (group, partition),
-- a row per delivered and unsettled message, and the dead letters.

CREATE TABLE topics (
    name TEXT PRIMARY KEY NOT NULL,
    partitions INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE groups (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (topic, grp)
) WITHOUT ROWID;

-- seq is the rowid: commits are serialised by SQLite's write lock, so rowid
-- order is publish order. only_group is '' for a message of every group and
-- names the one group a redriven dead letter is for.
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    msg_id TEXT NOT NULL,
    key TEXT NOT NULL,
    payload BLOB NOT NULL,
    headers TEXT NOT NULL,
    published_at INTEGER NOT NULL,
    only_group TEXT NOT NULL DEFAULT ''
);
CREATE INDEX messages_by_partition ON messages (topic, partition, seq);
CREATE UNIQUE INDEX messages_by_id ON messages (topic, msg_id) WHERE only_group = '';

-- delivered = the highest seq of the partition handed to the group.
CREATE TABLE cursors (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    partition INTEGER NOT NULL,
    delivered INTEGER NOT NULL,
    PRIMARY KEY (topic, grp, partition)
) WITHOUT ROWID;

-- A delivered, unsettled message. in_flight = 1: held by a consumer until
-- due_at (its ack deadline); in_flight = 0: waiting for a retry at due_at.
CREATE TABLE pending (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    seq INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    in_flight INTEGER NOT NULL,
    due_at INTEGER NOT NULL,
    token INTEGER NOT NULL,
    history TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (topic, grp, seq)
) WITHOUT ROWID;
CREATE INDEX pending_by_partition ON pending (topic, grp, partition, due_at);
CREATE INDEX pending_by_seq ON pending (topic, seq);

-- record is the DeadLetter as JSON (its id field is this row's id).
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    dead_at INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX dead_letters_by_group ON dead_letters (topic, grp, id);
