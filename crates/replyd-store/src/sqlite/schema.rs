//! The schema: the versioned migrations, applied in order at start (and by
//! `replyd migrate`), each once, in the same transaction as the row that
//! records it, so a crash leaves either all of it or none; and a
//! connection opened as the store needs it.

use rusqlite::{Connection, params};
use std::path::Path;
use std::time::Duration;

pub(super) fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // Every commit reaches the disk before anyone is told it happened.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    Ok(conn)
}

/// SQLite migrations: (version, SQL). Append only: never edit one that has
/// shipped.
pub const SQLITE: &[(i64, &str)] = &[
    (
        1,
        "
    CREATE TABLE jobs (
        id               BLOB PRIMARY KEY,   -- UUIDv7, 16 bytes
        tenant           TEXT NOT NULL,
        queue            TEXT NOT NULL,
        state            TEXT NOT NULL,
        run_at           INTEGER NOT NULL,   -- ms since the epoch
        lease_expires_at INTEGER,
        expires_at       INTEGER,
        idempotency_key  TEXT,
        input            BLOB,               -- NULL once purged (a tombstone)
        record           TEXT NOT NULL       -- replyd_core::JobRecord as JSON
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX jobs_ready ON jobs (queue, run_at) WHERE state = 'queued';
    CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'running';
    CREATE INDEX jobs_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL;
    CREATE INDEX jobs_tenant ON jobs (tenant, id);

    CREATE TABLE job_outputs (
        job_id       BLOB PRIMARY KEY,
        content_type TEXT NOT NULL,
        body         BLOB NOT NULL
    );

    CREATE TABLE events (
        id     INTEGER PRIMARY KEY AUTOINCREMENT,  -- commit order (one writer)
        job_id BLOB NOT NULL,
        kind   TEXT NOT NULL,
        at     INTEGER NOT NULL,
        job    TEXT NOT NULL                       -- the record after the event
    );
    CREATE INDEX events_job ON events (job_id, id);

    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    ",
    ),
    (
        2,
        "
    -- The highest event id ever removed from the log (by delete or garbage
    -- collection): a reader resuming below it may have missed events.
    CREATE TABLE log_floor (
        one   INTEGER PRIMARY KEY CHECK (one = 1),
        below INTEGER NOT NULL
    );
    ",
    ),
    (
        3,
        "
    -- Webhook deliveries owed (the outbox), written in the transaction of
    -- the event that owes them, and the log of their attempts.
    CREATE TABLE outbox (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id        BLOB NOT NULL,
        tenant        TEXT NOT NULL,
        queue         TEXT NOT NULL,
        kind          TEXT NOT NULL,
        url           TEXT NOT NULL,
        job           TEXT NOT NULL,        -- the record after the event
        state         TEXT NOT NULL,        -- pending | delivered | dead
        attempts      INTEGER NOT NULL DEFAULT 0,
        next_at       INTEGER NOT NULL,     -- ms since the epoch
        claimed_until INTEGER,
        created_at    INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL,
        last_error    TEXT
    );
    CREATE INDEX outbox_due ON outbox (next_at) WHERE state = 'pending';
    CREATE INDEX outbox_job ON outbox (job_id, id);
    CREATE INDEX outbox_state ON outbox (state, id);
    CREATE TABLE delivery_attempts (
        delivery_id INTEGER NOT NULL,
        at          INTEGER NOT NULL,
        status      INTEGER,
        latency_ms  INTEGER NOT NULL,
        error       TEXT
    );
    CREATE INDEX delivery_attempts_of ON delivery_attempts (delivery_id, at);
    ",
    ),
    (
        4,
        "
    -- The outbox carries every channel's deliveries: webhooks, and replies
    -- over message brokers. `target` is a webhook's URL or a reply's
    -- address (JSON). Each channel's deliveries are claimed on their own.
    ALTER TABLE outbox ADD COLUMN channel TEXT NOT NULL DEFAULT 'webhook';
    ALTER TABLE outbox RENAME COLUMN url TO target;
    DROP INDEX outbox_due;
    CREATE INDEX outbox_due ON outbox (channel, next_at) WHERE state = 'pending';
    ",
    ),
    (
        5,
        "
    -- An upstream HTTP service's answer (status and kept headers, JSON),
    -- replayed at /result (the gateway and the http executor).
    ALTER TABLE job_outputs ADD COLUMN upstream TEXT;
    ",
    ),
    (
        6,
        "
    -- Durable Streams (replyd_core::stream): one row per incarnation of a
    -- path, its bytes as chunks (one per append, one per JSON message) by
    -- position, and its idempotent producers' last writes.
    CREATE TABLE streams (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused
        tenant       TEXT NOT NULL,
        path         TEXT NOT NULL,
        content_type TEXT NOT NULL,
        ttl_secs     INTEGER,            -- a sliding TTL, or
        expires_at   INTEGER,            -- an absolute expiry (ms)
        touched_at   INTEGER NOT NULL,   -- last read or write (ms)
        closed       INTEGER NOT NULL DEFAULT 0,
        tail         INTEGER NOT NULL DEFAULT 0,
        source       INTEGER,            -- a fork's source stream
        fork_at      INTEGER,            -- and where it diverges
        forks        INTEGER NOT NULL DEFAULT 0,
        deleted      INTEGER NOT NULL DEFAULT 0,   -- gone, kept for forks
        last_seq     TEXT,
        closed_by    TEXT                -- JSON [producer, epoch, seq]
    );
    CREATE UNIQUE INDEX streams_path ON streams (tenant, path);
    CREATE TABLE stream_chunks (
        stream INTEGER NOT NULL,
        start  INTEGER NOT NULL,
        batch  INTEGER NOT NULL,         -- start of the append it came in
        data   BLOB NOT NULL,
        PRIMARY KEY (stream, start)
    ) WITHOUT ROWID;
    CREATE TABLE stream_producers (
        stream   INTEGER NOT NULL,
        producer TEXT NOT NULL,
        epoch    INTEGER NOT NULL,
        seq      INTEGER NOT NULL,
        PRIMARY KEY (stream, producer)
    ) WITHOUT ROWID;
    ",
    ),
    (
        7,
        "
    -- A job's output stream names its job, so that the job's end of life
    -- (garbage collection, delete) takes the output with it.
    ALTER TABLE streams ADD COLUMN job BLOB;
    CREATE INDEX streams_job ON streams (job) WHERE job IS NOT NULL;
    ",
    ),
    (
        8,
        "
    -- Dead letters counted as deliveries die and leave: a trigger adds +1
    -- or -1 per change, `dead_letters()` sums them (and folds them now and
    -- then), so a scrape reads no outbox rows; the oldest dead letter of a
    -- channel and tenant is one probe of outbox_dead.
    CREATE TABLE dead_letter_counts (
        channel TEXT NOT NULL,
        tenant  TEXT NOT NULL,
        delta   INTEGER NOT NULL
    );
    INSERT INTO dead_letter_counts (channel, tenant, delta)
        SELECT channel, tenant, count(*) FROM outbox WHERE state = 'dead'
        GROUP BY channel, tenant;
    CREATE INDEX outbox_dead ON outbox (channel, tenant, updated_at) WHERE state = 'dead';
    CREATE TRIGGER outbox_dies AFTER UPDATE OF state ON outbox
        WHEN NEW.state = 'dead' AND OLD.state <> 'dead'
        BEGIN INSERT INTO dead_letter_counts VALUES (NEW.channel, NEW.tenant, 1); END;
    CREATE TRIGGER outbox_revives AFTER UPDATE OF state ON outbox
        WHEN OLD.state = 'dead' AND NEW.state <> 'dead'
        BEGIN INSERT INTO dead_letter_counts VALUES (OLD.channel, OLD.tenant, -1); END;
    CREATE TRIGGER outbox_dead_deleted AFTER DELETE ON outbox
        WHEN OLD.state = 'dead'
        BEGIN INSERT INTO dead_letter_counts VALUES (OLD.channel, OLD.tenant, -1); END;
    -- Webhook endpoints that failed: dead letters in a row; paused ones
    -- hold their deliveries (state 'held') until resumed.
    CREATE TABLE endpoints (
        tenant        TEXT NOT NULL,
        channel       TEXT NOT NULL,
        target        TEXT NOT NULL,
        dead_in_a_row INTEGER NOT NULL DEFAULT 0,
        paused_at     INTEGER,
        PRIMARY KEY (tenant, channel, target)
    ) WITHOUT ROWID;
    CREATE INDEX outbox_held ON outbox (tenant, channel, target, id) WHERE state = 'held';
    -- Operational events, numbered in commit order.
    CREATE TABLE ops_events (
        id     INTEGER PRIMARY KEY AUTOINCREMENT,
        at     INTEGER NOT NULL,
        kind   TEXT NOT NULL,
        tenant TEXT NOT NULL,
        data   TEXT NOT NULL
    );
    CREATE INDEX ops_events_at ON ops_events (at);
    ",
    ),
    (
        9,
        "
    -- Paused queues: no job of one is leased until it is resumed.
    CREATE TABLE queue_pauses (
        queue     TEXT PRIMARY KEY,
        paused_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- The console's lists, newest first (replyd_store::listing): an
    -- operator looks a job up by its idempotency key in any tenant, lists
    -- a queue's jobs, and the failed or canceled ones. Each is written
    -- once per job (a queue never changes; those states are final).
    CREATE INDEX jobs_idempotency_any ON jobs (idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX jobs_queue ON jobs (queue, id);
    CREATE INDEX jobs_failed ON jobs (id) WHERE state = 'failed';
    CREATE INDEX jobs_canceled ON jobs (id) WHERE state = 'canceled';
    ",
    ),
    (
        10,
        "
    -- Priorities: a queue's jobs are leased by (order_at, id), where
    -- order_at is run_at less the job's head start, its priority's worth
    -- of waiting (JobRecord::order_at). Scheduled jobs wait by their due
    -- time for the promoter (`promote_due`), which queues them.
    ALTER TABLE jobs ADD COLUMN order_at INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET order_at = run_at WHERE state = 'queued';
    DROP INDEX jobs_ready;
    CREATE INDEX jobs_ready ON jobs (queue, order_at) WHERE state = 'queued';
    CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE state = 'scheduled';
    -- Limits (LeaseQuery::limits): a queue's running jobs, counted at each
    -- lease of a queue with max_running; and its token bucket (rate).
    CREATE INDEX jobs_running ON jobs (queue) WHERE state = 'running';
    CREATE TABLE queue_buckets (
        queue  TEXT PRIMARY KEY,
        tokens REAL NOT NULL,
        at     INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- Recurring schedules (replyd_core::schedule), by the tick each fires
    -- next.
    CREATE TABLE schedules (
        tenant     TEXT NOT NULL,
        name       TEXT NOT NULL,
        spec       TEXT NOT NULL,
        source     TEXT NOT NULL,
        next_at    INTEGER NOT NULL,
        last_at    INTEGER,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (tenant, name)
    ) WITHOUT ROWID;
    CREATE INDEX schedules_due ON schedules (next_at);
    -- Fair share: each group's clock in its queue's order
    -- (replyd_core::job::fair_start), kept a day after it last moved.
    CREATE TABLE group_clocks (
        queue  TEXT NOT NULL,
        tenant TEXT NOT NULL,
        grp    TEXT NOT NULL,
        tag    INTEGER NOT NULL,
        PRIMARY KEY (queue, tenant, grp)
    ) WITHOUT ROWID;
    ",
    ),
    (
        11,
        "
    -- One index of running jobs instead of two: a lease and a completion
    -- each changed both (issue 14, the writer's cost per transition). A
    -- queue's running jobs are counted by its prefix (max_running); the
    -- reaper finds expired leases by reading it whole, which holds only
    -- the running jobs (as many as the workers run at once).
    DROP INDEX jobs_leases;
    DROP INDEX jobs_running;
    CREATE INDEX jobs_running ON jobs (queue, lease_expires_at) WHERE state = 'running';
    ",
    ),
];

/// Applies every migration not yet applied. Safe to run from several
/// processes at once: `BEGIN IMMEDIATE` serializes them.
pub(super) fn apply(conn: &mut Connection) -> rusqlite::Result<usize> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
         )",
    )?;
    let mut applied = 0;
    for (version, sql) in SQLITE {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let done: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?1)",
            params![version],
            |r| r.get(0),
        )?;
        if !done {
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES (?1)",
                params![version],
            )?;
            applied += 1;
        }
        tx.commit()?;
    }
    Ok(applied)
}
