-- The catalog database: products and the id sequences that must be global.
CREATE TABLE products (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    description TEXT    NOT NULL DEFAULT '',
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    stock       INTEGER NOT NULL CHECK (stock >= 0),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Blocks of user ids are reserved here so that ids are unique across shards.
CREATE TABLE id_sequences (
    name       TEXT    PRIMARY KEY,
    next_value INTEGER NOT NULL
);
INSERT INTO id_sequences (name, next_value) VALUES ('users', 1);

-- Facts about the data set, e.g. how many shards it was written with.
CREATE TABLE store_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
