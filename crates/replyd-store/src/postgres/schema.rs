//! The schema: the versioned migrations, applied at connect under an advisory lock, so that nodes that start together take turns.

use super::backend;
use replyd_core::store::StoreResult;
use sqlx::postgres::PgPool;

/// The advisory lock that serializes migrations.
pub(super) const MIGRATION_LOCK: i64 = 0x7265_706c_7964_0002;

pub(super) async fn migrate(pool: &PgPool) -> StoreResult<()> {
    migrate_to(pool, i64::MAX).await
}

/// Applies the pending migrations up to `last` (tests of an upgrade).
pub(super) async fn migrate_to(pool: &PgPool, last: i64) -> StoreResult<()> {
    let mut conn = pool.acquire().await.map_err(backend)?;
    // A session lock: nodes starting together migrate one after another.
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    let result = async {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    bigint PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
        for (version, sql) in POSTGRES.iter().filter(|(v, _)| *v <= last) {
            let done: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = $1)",
            )
            .bind(version)
            .fetch_one(&mut *conn)
            .await
            .map_err(backend)?;
            if done {
                continue;
            }
            let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(backend)?;
            // Our own migration text, not input.
            sqlx::raw_sql(sqlx::AssertSqlSafe(*sql))
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
                .bind(version)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            tracing::info!(version, "applied migration");
        }
        Ok(())
    }
    .await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await;
    result
}

/// PostgreSQL migrations: (version, SQL), append only. Applied by
/// `PgStore::connect` under an advisory lock, so nodes that start together
/// take turns.
const POSTGRES: &[(i64, &str)] = &[
    (
        1,
        "
    CREATE TABLE jobs (
        id               uuid PRIMARY KEY,   -- UUIDv7
        tenant           text NOT NULL,
        queue            text NOT NULL,
        state            text NOT NULL,
        run_at           bigint NOT NULL,    -- ms since the epoch
        lease_expires_at bigint,
        expires_at       bigint,
        idempotency_key  text,
        input            bytea,              -- NULL once purged (a tombstone)
        record           text NOT NULL       -- replyd_core::JobRecord as JSON
    );
    CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX jobs_ready ON jobs (queue, run_at) WHERE state = 'queued';
    CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'running';
    CREATE INDEX jobs_expiry ON jobs (expires_at) WHERE expires_at IS NOT NULL;
    CREATE INDEX jobs_tenant ON jobs (tenant, id);

    CREATE TABLE job_outputs (
        job_id       uuid PRIMARY KEY,
        content_type text NOT NULL,
        body         bytea NOT NULL
    );

    -- id: insertion order; position: commit order, assigned by the
    -- sequencer (see postgres.rs). Readers see only positioned events.
    CREATE TABLE events (
        id       bigserial PRIMARY KEY,
        position bigint UNIQUE,
        job_id   uuid NOT NULL,
        kind     text NOT NULL,
        at       bigint NOT NULL,
        job      text NOT NULL
    );
    CREATE INDEX events_unpositioned ON events (id) WHERE position IS NULL;
    CREATE INDEX events_job ON events (job_id, position);

    CREATE TABLE meta (
        key   text PRIMARY KEY,
        value bytea NOT NULL
    );
    ",
    ),
    (
        2,
        "
    -- The highest position ever removed from the log (see SQLite's v2).
    CREATE TABLE log_floor (
        one   integer PRIMARY KEY CHECK (one = 1),
        below bigint NOT NULL
    );
    ",
    ),
    (
        3,
        "
    -- Webhook deliveries owed (the outbox); see SQLite's v3.
    CREATE TABLE outbox (
        id            bigserial PRIMARY KEY,
        job_id        uuid NOT NULL,
        tenant        text NOT NULL,
        queue         text NOT NULL,
        kind          text NOT NULL,
        url           text NOT NULL,
        job           text NOT NULL,
        state         text NOT NULL,
        attempts      integer NOT NULL DEFAULT 0,
        next_at       bigint NOT NULL,
        claimed_until bigint,
        created_at    bigint NOT NULL,
        updated_at    bigint NOT NULL,
        last_error    text
    );
    CREATE INDEX outbox_due ON outbox (next_at) WHERE state = 'pending';
    CREATE INDEX outbox_job ON outbox (job_id, id);
    CREATE INDEX outbox_state ON outbox (state, id);
    CREATE TABLE delivery_attempts (
        delivery_id bigint NOT NULL,
        at          bigint NOT NULL,
        status      integer,
        latency_ms  bigint NOT NULL,
        error       text
    );
    CREATE INDEX delivery_attempts_of ON delivery_attempts (delivery_id, at);
    ",
    ),
    (
        4,
        "
    -- Every channel's deliveries; see SQLite's v4.
    ALTER TABLE outbox ADD COLUMN channel text NOT NULL DEFAULT 'webhook';
    ALTER TABLE outbox RENAME COLUMN url TO target;
    DROP INDEX outbox_due;
    CREATE INDEX outbox_due ON outbox (channel, next_at) WHERE state = 'pending';
    ",
    ),
    (
        5,
        "
    -- See SQLite's v5.
    ALTER TABLE job_outputs ADD COLUMN upstream text;
    ",
    ),
    (
        6,
        "
    -- A delivery claim's two lookups, each with its own index, so that its
    -- plan does not depend on statistics (a fresh or fast-grown outbox has
    -- none that fit). The due scan returns rows already in claim order
    -- (next_at, id) and stops at the limit; the check for an earlier
    -- pending delivery of the same job probes pending rows only. (SQLite
    -- names its indexes in the statement instead, and its (channel,
    -- next_at) index is ordered by id within a time already.)
    DROP INDEX outbox_due;
    CREATE INDEX outbox_due ON outbox (channel, next_at, id) WHERE state = 'pending';
    CREATE INDEX outbox_pending_job ON outbox (job_id, channel, id) WHERE state = 'pending';
    ",
    ),
    (
        7,
        "
    -- Durable Streams: see SQLite's v6. An append locks its stream's row,
    -- so positions are handed out in commit order on every node.
    CREATE TABLE streams (
        id           bigserial PRIMARY KEY,
        tenant       text NOT NULL,
        path         text NOT NULL,
        content_type text NOT NULL,
        ttl_secs     bigint,
        expires_at   bigint,
        touched_at   bigint NOT NULL,
        closed       boolean NOT NULL DEFAULT false,
        tail         bigint NOT NULL DEFAULT 0,
        source       bigint,
        fork_at      bigint,
        forks        integer NOT NULL DEFAULT 0,
        deleted      boolean NOT NULL DEFAULT false,
        last_seq     text,
        closed_by    text
    );
    CREATE UNIQUE INDEX streams_path ON streams (tenant, path);
    CREATE INDEX streams_absolute_expiry ON streams (expires_at)
        WHERE expires_at IS NOT NULL AND NOT deleted;
    CREATE INDEX streams_ttl ON streams (touched_at)
        WHERE ttl_secs IS NOT NULL AND NOT deleted;
    CREATE TABLE stream_chunks (
        stream bigint NOT NULL,
        start  bigint NOT NULL,
        batch  bigint NOT NULL,
        data   bytea NOT NULL,
        PRIMARY KEY (stream, start)
    );
    CREATE TABLE stream_producers (
        stream   bigint NOT NULL,
        producer text NOT NULL,
        epoch    bigint NOT NULL,
        seq      bigint NOT NULL,
        PRIMARY KEY (stream, producer)
    );
    ",
    ),
    (
        8,
        "
    -- See SQLite's v7.
    ALTER TABLE streams ADD COLUMN job uuid;
    CREATE INDEX streams_job ON streams (job) WHERE job IS NOT NULL;
    ",
    ),
    (
        9,
        "
    -- A lease takes the queue's oldest jobs in (run_at, id) order: with id
    -- in the index the scan stops after the jobs it takes. Without it,
    -- jobs sharing a run_at (a burst submitted within a millisecond) were
    -- sorted whole on every lease: 50,000 queued jobs made each lease of
    -- 100 read and sort all 50,000 (37 ms; 147 ms under load).
    DROP INDEX jobs_ready;
    CREATE INDEX jobs_ready ON jobs (queue, run_at, id) WHERE state = 'queued';
    ",
    ),
    (
        10,
        "
    -- Positions fixed at write, from the writing transaction's id, and read
    -- below the horizon of the oldest transaction still open (events.rs):
    -- the sequencer, its second write per event and its cluster-wide lock
    -- are gone. All nodes must run this version: an older node would still
    -- write events without a position.
    --
    -- First, position what the old sequencer had not reached, in id order,
    -- past every position handed out.
    WITH base AS (
        SELECT greatest((SELECT coalesce(max(position), 0) FROM events),
                        (SELECT coalesce(max(below), 0) FROM log_floor)) AS b
    ), todo AS (
        SELECT id, row_number() OVER (ORDER BY id) AS r FROM events WHERE position IS NULL
    )
    UPDATE events e SET position = base.b + todo.r FROM todo, base WHERE e.id = todo.id;
    -- New positions start past every old one: xid * 65536 + shift.
    CREATE TABLE event_origin (
        one   integer PRIMARY KEY CHECK (one = 1),
        shift bigint NOT NULL
    );
    INSERT INTO event_origin (one, shift)
    SELECT 1, greatest(0, greatest((SELECT coalesce(max(position), 0) FROM events),
                                   (SELECT coalesce(max(below), 0) FROM log_floor))
                          + 1 - pg_current_xact_id()::text::bigint * 65536);
    -- The position is the key: the id column, its sequence and its index go.
    DROP INDEX events_unpositioned;
    ALTER TABLE events DROP COLUMN id;
    ALTER TABLE events DROP CONSTRAINT events_position_key, ADD PRIMARY KEY (position);
    ",
    ),
    (
        11,
        "
    -- Dead letters counted as deliveries die and leave; see SQLite's v8.
    -- Rows of +1 and -1, not one counter per channel and tenant: writers
    -- never wait for one another on a counter row.
    CREATE TABLE dead_letter_counts (
        channel text NOT NULL,
        tenant  text NOT NULL,
        delta   bigint NOT NULL
    );
    INSERT INTO dead_letter_counts (channel, tenant, delta)
        SELECT channel, tenant, count(*) FROM outbox WHERE state = 'dead'
        GROUP BY channel, tenant;
    CREATE INDEX outbox_dead ON outbox (channel, tenant, updated_at) WHERE state = 'dead';
    CREATE FUNCTION replyd_count_dead_letters() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO dead_letter_counts VALUES (OLD.channel, OLD.tenant, -1);
            RETURN OLD;
        ELSIF NEW.state = 'dead' THEN
            INSERT INTO dead_letter_counts VALUES (NEW.channel, NEW.tenant, 1);
        ELSE
            INSERT INTO dead_letter_counts VALUES (OLD.channel, OLD.tenant, -1);
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER outbox_dead_changes AFTER UPDATE OF state ON outbox FOR EACH ROW
        WHEN ((OLD.state = 'dead') <> (NEW.state = 'dead'))
        EXECUTE FUNCTION replyd_count_dead_letters();
    CREATE TRIGGER outbox_dead_deleted AFTER DELETE ON outbox FOR EACH ROW
        WHEN (OLD.state = 'dead')
        EXECUTE FUNCTION replyd_count_dead_letters();
    CREATE TABLE endpoints (
        tenant        text NOT NULL,
        channel       text NOT NULL,
        target        text NOT NULL,
        dead_in_a_row integer NOT NULL DEFAULT 0,
        paused_at     bigint,
        PRIMARY KEY (tenant, channel, target)
    );
    CREATE INDEX outbox_held ON outbox (tenant, channel, target, id) WHERE state = 'held';
    -- Numbered in commit order: a transaction that writes them takes
    -- OPS_LOCK (outbox.rs) before anything else.
    CREATE TABLE ops_events (
        id     bigserial PRIMARY KEY,
        at     bigint NOT NULL,
        kind   text NOT NULL,
        tenant text NOT NULL,
        data   text NOT NULL
    );
    CREATE INDEX ops_events_at ON ops_events (at);
    ",
    ),
    (
        12,
        "
    -- Paused queues: no job of one is leased until it is resumed.
    CREATE TABLE queue_pauses (
        queue     text PRIMARY KEY,
        paused_at bigint NOT NULL
    );
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
        13,
        "
    -- Priorities: a queue's jobs are leased by (order_at, id), where
    -- order_at is run_at less the job's head start, its priority's worth
    -- of waiting (JobRecord::order_at). Scheduled jobs wait by their due
    -- time for the promoter (`promote_due`), which queues them.
    ALTER TABLE jobs ADD COLUMN order_at bigint NOT NULL DEFAULT 0;
    UPDATE jobs SET order_at = run_at WHERE state = 'queued';
    DROP INDEX jobs_ready;
    CREATE INDEX jobs_ready ON jobs (queue, order_at, id) WHERE state = 'queued';
    CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE state = 'scheduled';
    -- Limits (LeaseQuery::limits): a queue's running jobs, counted at each
    -- lease of a queue with max_running; and its token bucket (rate).
    -- Leases of a limited queue take its advisory lock first.
    CREATE INDEX jobs_running ON jobs (queue) WHERE state = 'running';
    CREATE TABLE queue_buckets (
        queue  text PRIMARY KEY,
        tokens float8 NOT NULL,
        at     bigint NOT NULL
    );
    -- Recurring schedules (replyd_core::schedule), by the tick each fires
    -- next.
    CREATE TABLE schedules (
        tenant     text NOT NULL,
        name       text NOT NULL,
        spec       text NOT NULL,
        source     text NOT NULL,
        next_at    bigint NOT NULL,
        last_at    bigint,
        created_at bigint NOT NULL,
        updated_at bigint NOT NULL,
        PRIMARY KEY (tenant, name)
    );
    CREATE INDEX schedules_due ON schedules (next_at);
    -- Fair share: each group's clock in its queue's order
    -- (replyd_core::job::fair_start), kept a day after it last moved.
    CREATE TABLE group_clocks (
        queue  text NOT NULL,
        tenant text NOT NULL,
        grp    text NOT NULL,
        tag    bigint NOT NULL,
        PRIMARY KEY (queue, tenant, grp)
    );
    ",
    ),
    (
        14,
        "
    -- Every transition of a job writes a new version of its row (a change
    -- of state is never a HOT update: the partial indexes name it), and a
    -- new version gets an entry in every index of the table, whether its
    -- key changed or not. The console's indexes by tenant and by queue
    -- (whose keys never change) move to a table written once per job, so
    -- that a lease and a completion no longer write two entries each
    -- into them (issue 25). Deleted by (tenant, id), its index.
    CREATE TABLE job_keys (
        tenant text NOT NULL,
        queue  text NOT NULL,
        id     uuid NOT NULL
    );
    INSERT INTO job_keys (tenant, queue, id) SELECT tenant, queue, id FROM jobs;
    CREATE INDEX job_keys_tenant ON job_keys (tenant, id);
    CREATE INDEX job_keys_queue ON job_keys (queue, id);
    DROP INDEX jobs_tenant;
    DROP INDEX jobs_queue;
    -- One index of running jobs instead of two (see SQLite's v11): a
    -- queue's running jobs are counted by its prefix (max_running), the
    -- lease expiry walks it whole (as many entries as jobs run at once).
    DROP INDEX jobs_leases;
    DROP INDEX jobs_running;
    CREATE INDEX jobs_running ON jobs (queue, lease_expires_at) WHERE state = 'running';
    ",
    ),
];
