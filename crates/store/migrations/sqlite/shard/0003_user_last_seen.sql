-- Users' last-seen times, written in batches by the api's write-behind
-- cache (`POST /users/{id}/seen`); NULL until a user is first seen.
ALTER TABLE users ADD COLUMN last_seen_at INTEGER;
