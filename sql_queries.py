"""Every SQL statement of the project, one idea each.

Data values never reach this text: they travel as COPY payloads or query parameters.
"""

# ---------------------------------------------------------------- schema: the star

songs_table_create = """
CREATE TABLE songs (
    song_id     text PRIMARY KEY,
    title       text NOT NULL,
    artist_id   text NOT NULL REFERENCES artists (artist_id),
    year        integer CHECK (year > 0),
    duration    numeric NOT NULL,
    -- the artist as this song's own file gives it: plays match its name, and an artist takes
    -- the name and place of its smallest song
    artist_name      text NOT NULL,
    artist_location  text,
    artist_latitude  double precision,
    artist_longitude double precision
)"""

artists_table_create = """
CREATE TABLE artists (
    artist_id   text PRIMARY KEY,
    name        text NOT NULL,
    location    text,
    latitude    double precision,
    longitude   double precision
)"""

users_table_create = """
CREATE TABLE users (
    user_id     integer PRIMARY KEY,
    first_name  text,
    last_name   text,
    gender      text,
    level       text NOT NULL CHECK (level IN ('free', 'paid'))
)"""

time_table_create = """
CREATE TABLE time (
    start_time  timestamptz NOT NULL,
    hour        smallint NOT NULL,
    day         smallint NOT NULL,
    week        smallint NOT NULL,
    month       smallint NOT NULL,
    year        smallint NOT NULL,
    weekday     smallint NOT NULL CHECK (weekday BETWEEN 1 AND 7)
)"""  # its key: BULK_KEYS, below

songplays_table_create = """
CREATE TABLE songplays (
    songplay_id     bigint GENERATED ALWAYS AS IDENTITY,
    start_time      timestamptz NOT NULL,
    user_id         integer NOT NULL,
    level           text NOT NULL CHECK (level IN ('free', 'paid')),
    first_name      text,
    last_name       text,
    gender          text,
    song_id         text,
    artist_id       text,
    session_id      integer NOT NULL,
    item_in_session integer NOT NULL,
    location        text,
    user_agent      text,
    song_title      text NOT NULL,
    artist_name     text,
    song_length     numeric,
    file_id         bigint NOT NULL
)"""  # its keys (user_id first: Citus keeps a user's plays together): BULK_KEYS, below

songplays_index_user_time = "CREATE INDEX songplays_user_time ON songplays (user_id, start_time)"

# Where several log files hold a play (user_id, session_id, item_in_session), songplays keeps the
# copy of the file first in path order (FILE_ORDER), and this table the first copy of each other
# file: a file loaded again, or a copy resent in an earlier folder, then settles which copy wins
# from what the files hold, whatever order they came in (settle_queries). Normally tiny.
songplay_copies_table_create = """
CREATE TABLE songplay_copies (
    user_id         integer NOT NULL,
    session_id      integer NOT NULL,
    item_in_session integer NOT NULL,
    file_id         bigint NOT NULL,
    start_time      timestamptz NOT NULL,
    level           text NOT NULL,
    first_name      text,
    last_name       text,
    gender          text,
    location        text,
    user_agent      text,
    song_title      text NOT NULL,
    artist_name     text,
    song_length     numeric,
    PRIMARY KEY (user_id, session_id, item_in_session, file_id)
)"""
songplay_copies_index_file = "CREATE INDEX songplay_copies_file ON songplay_copies (file_id)"
songs_index_artist = "CREATE INDEX songs_artist ON songs (artist_id, song_id)"
# manifest_known's damaged, at each run's start: what a whole file's rejections are, by file.
load_rejects_index_file_problems = """
CREATE INDEX load_rejects_file_problems ON load_rejects (path, run_id) WHERE line IS NULL"""

# ---------------------------------------------------------------- schema: the keys of the fact
# Everything on songplays and time that a load maintains row by row and does not read, in the
# order it is built (a bulk load drops it in the reverse order). create_tables.py adds it once
# the tables are placed (on Citus too). A bulk load, a first load into an empty songplays, writes
# its plays and instants with all of it dropped and builds it back at its end in one transaction:
# PostgreSQL's "Populating a Database" advice (a key or foreign key maintained row by row costs
# about as much as the insert itself; built afterwards it takes one sort or one join).
# songplays_user_time stays: the users merge reads it.
BULK_KEYS = {
    "time_pkey": (
        "ALTER TABLE time ADD CONSTRAINT time_pkey PRIMARY KEY (start_time)",
        "ALTER TABLE time DROP CONSTRAINT IF EXISTS time_pkey",
    ),
    "songplays_pkey": (
        "ALTER TABLE songplays ADD CONSTRAINT songplays_pkey PRIMARY KEY (user_id, songplay_id)",
        "ALTER TABLE songplays DROP CONSTRAINT IF EXISTS songplays_pkey",
    ),
    "songplays_user_id_session_id_item_in_session_key": (
        "ALTER TABLE songplays ADD CONSTRAINT songplays_user_id_session_id_item_in_session_key "
        "UNIQUE (user_id, session_id, item_in_session)",
        "ALTER TABLE songplays "
        "DROP CONSTRAINT IF EXISTS songplays_user_id_session_id_item_in_session_key",
    ),
    "songplays_file": (  # used only when a changed log file is loaded again
        "CREATE INDEX songplays_file ON songplays (file_id)",
        "DROP INDEX IF EXISTS songplays_file",
    ),
    # What taking an instant out of time reads: its foreign key checks that no play has it, a
    # scan of every play without this index (a changed file's instants gone, on a big table).
    "songplays_start_time": (
        "CREATE INDEX songplays_start_time ON songplays (start_time)",
        "DROP INDEX IF EXISTS songplays_start_time",
    ),
    "songplays_start_time_fkey": (
        "ALTER TABLE songplays ADD CONSTRAINT songplays_start_time_fkey "
        "FOREIGN KEY (start_time) REFERENCES time (start_time)",
        "ALTER TABLE songplays DROP CONSTRAINT IF EXISTS songplays_start_time_fkey",
    ),
    "songplays_user_id_fkey": (
        "ALTER TABLE songplays ADD CONSTRAINT songplays_user_id_fkey "
        "FOREIGN KEY (user_id) REFERENCES users (user_id)",
        "ALTER TABLE songplays DROP CONSTRAINT IF EXISTS songplays_user_id_fkey",
    ),
    "songplays_song_id_fkey": (
        "ALTER TABLE songplays ADD CONSTRAINT songplays_song_id_fkey "
        "FOREIGN KEY (song_id) REFERENCES songs (song_id)",
        "ALTER TABLE songplays DROP CONSTRAINT IF EXISTS songplays_song_id_fkey",
    ),
    "songplays_artist_id_fkey": (
        "ALTER TABLE songplays ADD CONSTRAINT songplays_artist_id_fkey "
        "FOREIGN KEY (artist_id) REFERENCES artists (artist_id)",
        "ALTER TABLE songplays DROP CONSTRAINT IF EXISTS songplays_artist_id_fkey",
    ),
}
bulk_keys_create = [create for create, _ in BULK_KEYS.values()]
bulk_keys_drop = [drop for _, drop in reversed(BULK_KEYS.values())]

bulk_keys_present = """
SELECT n FROM unnest(%(names)s::text[]) AS n
WHERE to_regclass(n) IS NOT NULL
   OR EXISTS (SELECT 1 FROM pg_constraint c
              WHERE c.conrelid IN ('songplays'::regclass, 'time'::regclass) AND c.conname = n)"""

# A bulk load is a first load: no play loaded yet, and no copy of one.
songplays_empty = """
SELECT NOT EXISTS (SELECT FROM songplays) AND NOT EXISTS (SELECT FROM songplay_copies)"""

# Dropping or building the keys waits this long for other sessions (a notebook holding songplays
# in an open transaction), then gives up: the load goes on with the keys in place, or leaves them
# to be built by the next run.
keys_lock_timeout = "SET LOCAL lock_timeout = '3s'"

# A key is first tried as the rows stand: it fails only when a bulk load wrote an instant or a
# play twice (files that share them); they are then settled and the key built again.
key_attempt = "SAVEPOINT key_attempt"
key_attempt_undo = "ROLLBACK TO SAVEPOINT key_attempt"

# The plays a bulk load wrote more than once (files that share plays), found when songplays'
# unique key could not be built: settle_queries keeps the copy of the file first in path order,
# as the key in place does.
plays_duplicated_keys = """
INSERT INTO stage_keys (user_id, session_id, item_in_session)
SELECT user_id, session_id, item_in_session FROM songplays
GROUP BY user_id, session_id, item_in_session HAVING count(*) > 1"""

# The tables a bulk load has just written may have no statistics, or those an autovacuum took
# while the load's transaction was writing them (0 rows): a nested loop planned on them takes time
# quadratic in the rows (hours for 200,000 instants). What was written twice is settled without,
# and the keys built after it checked with hash joins (on Citus: the coordinator's plans).
settling_without_nested_loops = "SET LOCAL enable_nestloop = off"

# Instants are the same row wherever they come from: one of each stays.
time_duplicates_remove = """
DELETE FROM time t USING time u WHERE t.start_time = u.start_time AND t.ctid > u.ctid"""

# Statistics of what the load's statements and checks join and filter on: songplays' other columns
# (text, most of them) would take two thirds of the time, and autovacuum analyzes them soon after
# (an ANALYZE of some columns leaves its count of the rows changed since the last).
analyze_after_bulk_load = """
ANALYZE songplays (songplay_id, user_id, session_id, item_in_session, start_time, file_id,
                   song_id, artist_id),
        time, users"""

# ---------------------------------------------------------------- schema: load bookkeeping

load_runs_table_create = """
CREATE TABLE load_runs (
    run_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,  -- when it made its report; NULL: killed, cut off or stopped
    status      text NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'succeeded', 'failed', 'interrupted')),
    data_dir    text NOT NULL
)"""

load_manifest_table_create = """
CREATE TABLE load_manifest (
    file_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    path        text NOT NULL UNIQUE,
    kind        text NOT NULL CHECK (kind IN ('song', 'log')),
    size_bytes  bigint NOT NULL,
    mtime_ns    bigint NOT NULL,  -- 0 for an object: its etag says when it changed
    etag        text,             -- an object's ETag (NULL for a file on disk)
    sha256      text NOT NULL,
    run_id      bigint NOT NULL REFERENCES load_runs (run_id),
    records     integer NOT NULL,
    loaded      integer NOT NULL,
    skipped     integer NOT NULL,
    duplicates  integer NOT NULL,
    rejected    integer NOT NULL,
    loaded_at   timestamptz NOT NULL DEFAULT now()
)"""

load_rejects_table_create = """
CREATE TABLE load_rejects (
    reject_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      bigint NOT NULL REFERENCES load_runs (run_id),
    path        text NOT NULL,
    line        integer,
    reason      text NOT NULL,
    raw         text
)"""

# ---------------------------------------------------------------- schema: row counts
# The summary's rows before and after each star table, and the plays resolved to a song: kept
# exact by statement triggers, each INSERT, UPDATE, DELETE or TRUNCATE adding what it changed
# (counted from its transition tables) in its own transaction, whoever runs it, whatever their
# search_path (the functions keep create_tables.py's: the tables' schema); a statement that
# changes no count leaves the row alone, so that an open transaction that edited a play does not
# hold up every load behind its lock on that row. Reading them costs nothing, where count(*)
# reads every row: a month of plays, for a day's load. Citus does not run such triggers on
# distributed and reference tables: there the load counts the tables themselves (row_count,
# resolved_plays_counted).
row_counts_table_create = """
CREATE TABLE row_counts (
    table_name  text PRIMARY KEY,
    row_count   bigint NOT NULL,
    resolved    bigint NOT NULL  -- songplays: the plays with a song_id; 0 for the others
)"""

row_counts_function_create = """
CREATE OR REPLACE FUNCTION sparkify_count_rows() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE row_counts SET row_count = 0 WHERE table_name = TG_TABLE_NAME;
    ELSIF TG_OP = 'INSERT' THEN
        UPDATE row_counts SET row_count = row_count + d.n
        FROM (SELECT count(*) AS n FROM new_rows) d
        WHERE table_name = TG_TABLE_NAME AND d.n > 0;
    ELSE
        UPDATE row_counts SET row_count = row_count - d.n
        FROM (SELECT count(*) AS n FROM old_rows) d
        WHERE table_name = TG_TABLE_NAME AND d.n > 0;
    END IF;
    RETURN NULL;
END $$"""

# songplays also counts its resolved plays, which an UPDATE (songplays_resolve_songs) changes.
plays_count_function_create = """
CREATE OR REPLACE FUNCTION sparkify_count_plays() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        UPDATE row_counts SET row_count = 0, resolved = 0 WHERE table_name = 'songplays';
    ELSIF TG_OP = 'INSERT' THEN
        UPDATE row_counts SET row_count = row_count + d.n, resolved = resolved + d.n_resolved
        FROM (SELECT count(*) AS n, count(song_id) AS n_resolved FROM new_rows) d
        WHERE table_name = 'songplays' AND d.n > 0;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE row_counts SET row_count = row_count - d.n, resolved = resolved - d.n_resolved
        FROM (SELECT count(*) AS n, count(song_id) AS n_resolved FROM old_rows) d
        WHERE table_name = 'songplays' AND d.n > 0;
    ELSE
        UPDATE row_counts SET resolved = resolved + d.n_resolved
        FROM (SELECT (SELECT count(song_id) FROM new_rows)
                     - (SELECT count(song_id) FROM old_rows) AS n_resolved) d
        WHERE table_name = 'songplays' AND d.n_resolved <> 0;
    END IF;
    RETURN NULL;
END $$"""


# Made by create_tables.py where the star is not on Citus, the star's tables empty.
# One trigger per event: a trigger with transition tables may have only one.
_COUNT_EVENTS = {
    "insert": "INSERT ON {table} REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT",
    "delete": "DELETE ON {table} REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT",
    "update": "UPDATE ON {table} REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
    "FOR EACH STATEMENT",
    "truncate": "TRUNCATE ON {table} FOR EACH STATEMENT",
}
row_counts_create = [
    row_counts_function_create,
    plays_count_function_create,
    *[
        f"CREATE TRIGGER {table}_count_{event} AFTER "
        + _COUNT_EVENTS[event].format(table=table)
        + f" EXECUTE FUNCTION {function}()"
        for table, function, events in [
            ("songplays", "sparkify_count_plays", ["insert", "delete", "update", "truncate"]),
            *[
                (table, "sparkify_count_rows", ["insert", "delete", "truncate"])
                for table in ("users", "songs", "artists", "time")
            ],
        ]
        for event in events
    ],
]
row_counts_seed = """
INSERT INTO row_counts (table_name, row_count, resolved)
SELECT t, 0, 0 FROM unnest(%(tables)s::text[]) AS t"""

row_counts_read = "SELECT table_name, row_count, resolved FROM row_counts"

# songplays' row counted again: its kept count was found wrong (the per-file check's total).
# It returns how far off the kept counts of plays and of resolved plays were.
row_counts_recount_plays = """
WITH kept AS (SELECT row_count, resolved FROM row_counts WHERE table_name = 'songplays'),
     counted AS (SELECT count(*) AS n, count(song_id) AS resolved FROM songplays)
UPDATE row_counts SET row_count = counted.n, resolved = counted.resolved
FROM kept, counted
WHERE table_name = 'songplays'
RETURNING counted.n - kept.row_count, counted.resolved - kept.resolved"""

# A star table missing from row_counts (a schema copied without its rows, pg_dump
# --schema-only, the star's data restored beside it; a row deleted by hand) is counted once, at
# a load's start; a table it has is not read.
row_counts_restore = [
    f"""
INSERT INTO row_counts (table_name, row_count, resolved)
SELECT '{table}', c.n, c.resolved FROM (SELECT count(*) AS n, {resolved} AS resolved FROM {table}) c
WHERE NOT EXISTS (SELECT FROM row_counts WHERE table_name = '{table}')"""
    for table, resolved in [
        ("songplays", "count(song_id)"),
        *[(table, "0") for table in ("users", "songs", "artists", "time")],
    ]
]

# Parents before children, so that each foreign key finds its table. songplays' own keys,
# foreign keys and file index, and time's key, come last (bulk_keys_create), after the tables are
# placed on Citus.
create_table_queries = [
    load_runs_table_create,
    load_manifest_table_create,
    load_rejects_table_create,
    load_rejects_index_file_problems,
    artists_table_create,
    songs_table_create,
    users_table_create,
    time_table_create,
    songplays_table_create,
    songplays_index_user_time,
    songplay_copies_table_create,
    songplay_copies_index_file,
    songs_index_artist,
    row_counts_table_create,
]

TABLES = [
    "songplays",
    "users",
    "songs",
    "artists",
    "time",
    "songplay_copies",
    "load_rejects",
    "load_manifest",
    "load_runs",
]
STAR_TABLES = TABLES[:5]

CITUS_STAGING = ["stage_plays_citus"]  # made only on Citus (below)
COUNTING = ["row_counts"]  # the star's row counts, which its triggers keep (not in the diagram)

# create_tables.py drops and creates the tables in one schema, the one CREATE TABLE writes into
# (the first of search_path that exists): unqualified, DROP TABLE would take a table of the same
# name from any schema on the path (public, while CREATE TABLE writes into a schema named after
# the role). For its transaction only; the row-count functions keep it (sparkify_count_rows),
# the session's temporary schema last, so that no temporary table of a writer's is found first.
# With no such schema (none on the path exists, or the role may not use it): NULL, the path
# left as it is.
search_path_create_schema = """
SELECT current_schema(), current_setting('search_path'),
       CASE WHEN current_schema() IS NOT NULL
            THEN set_config('search_path', quote_ident(current_schema()) || ', pg_temp', true)
       END"""
# Whether that schema is the session's temporary one (search_path = pg_temp, ...): the tables
# would then be temporary, gone when the session ends.
create_schema_temporary = """
SELECT count(*) > 0 FROM pg_namespace
WHERE oid = pg_my_temp_schema() AND nspname = current_schema()"""

# The project's table names that tables of someone else's hold in that schema: those there
# when no load_runs is (the table that marks the project's set, made first by every version).
# create_tables.py drops only its own.
tables_of_others = """
SELECT t FROM unnest(%(tables)s::text[]) AS t
WHERE to_regclass('load_runs') IS NULL AND to_regclass(t) IS NOT NULL"""

# Without CASCADE: a view of the user's over these tables stops the drop with a clear error
# instead of vanishing with them.
drop_tables = "DROP TABLE IF EXISTS " + ", ".join(TABLES + COUNTING + CITUS_STAGING)

# The sessions that hold a lock on one of our tables in this database (an open notebook
# transaction, a psql session inside BEGIN, autovacuum): one row each, with what they lock or wait
# to lock (a lock asked for is in the queue of those asked after it); with modes, only the locks
# of those modes that are held count.
table_lock_holders = """
SELECT a.pid, a.backend_type, r.oid AS role, r.rolname, r.rolsuper, a.application_name,
       string_agg(DISTINCT l.relation::regclass::text, ', ') AS tables
FROM pg_locks l
JOIN pg_stat_activity a ON a.pid = l.pid
LEFT JOIN pg_roles r ON r.oid = a.usesysid
WHERE l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.relation = ANY (SELECT to_regclass(t)::oid FROM unnest(%(tables)s::text[]) AS t)
  AND l.pid <> pg_backend_pid()
  AND (%(modes)s::text[] IS NULL OR (l.granted AND l.mode = ANY (%(modes)s::text[])))
GROUP BY a.pid, a.backend_type, r.oid, r.rolname, r.rolsuper, a.application_name"""

# Those holders would make DROP wait: the clients' sessions this role may end are ended first (a
# superuser may end any; another role those of a role whose privileges it has, or as a member of
# pg_signal_backend any but a superuser's), and named as lock_holders_left names them.
# Autovacuum, which has no role, lets go by itself once DROP waits. pg_stat_activity shows no
# backend_type of another role's session (without pg_read_all_stats): a session of a role is
# taken for a client's unless it says otherwise.
terminate_lock_holders = f"""
WITH holder AS ({table_lock_holders})
SELECT pid, coalesce('role ' || rolname, backend_type), application_name, tables
FROM holder
WHERE CASE WHEN role IS NOT NULL
                AND coalesce(backend_type, 'client backend') = 'client backend'
                AND (current_setting('is_superuser')::boolean
                     OR (NOT rolsuper
                         AND (pg_has_role(role, 'USAGE')
                              OR pg_has_role('pg_signal_backend', 'USAGE'))))
           THEN pg_terminate_backend(pid)
           ELSE false END
ORDER BY pid"""

# create_tables.py's DROP and --full-refresh's TRUNCATE wait this long for the holders left
# (autovacuum lets go after deadlock_timeout, 1 s by default), then give up; the sessions still
# holding a lock are then named.
tables_lock_timeout = "SET LOCAL lock_timeout = '5s'"
lock_holders_left = f"""
SELECT pid, coalesce('role ' || rolname, backend_type), application_name, tables,
       coalesce(rolsuper, false)
FROM ({table_lock_holders}) holder ORDER BY pid"""
role_name = "SELECT current_user"
server_encoding = "SHOW server_encoding"

# etl.py's statements wait this long (its --wait: '10s') for a lock another session holds on a
# table (an open transaction that locked it, an index being built), then stop, and the sessions
# in the way are named; the SET LOCAL timeouts above win inside their transactions.
load_lock_timeout = "SELECT set_config('lock_timeout', %(timeout)s, false)"
# The lock modes that keep a load's writes (ROW EXCLUSIVE) off a table; without them, a session
# writing to it (ROW SHARE: SELECT ... FOR UPDATE) may hold a row the load writes.
WRITES_KEPT_OFF = ["ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"]
WRITING = ["RowShareLock", "RowExclusiveLock"]
ANY_LOCK = [*WRITES_KEPT_OFF, *WRITING, "AccessShareLock", "ShareUpdateExclusiveLock"]

# On the embedded server, create_tables.py creates the database first.
database_exists = "SELECT 1 FROM pg_database WHERE datname = %(name)s"
create_database = "CREATE DATABASE {name}"

missing_tables = """
SELECT t FROM unnest(%(tables)s::text[]) AS t WHERE to_regclass(t) IS NULL"""

# Where none is on the search_path: the schemas that hold the project's tables (load_runs), and
# whether the role may use each (without USAGE, a schema on the path hides its tables).
tables_elsewhere = """
SELECT n.nspname, has_schema_privilege(n.oid, 'USAGE')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = 'load_runs' AND c.relkind = 'r' AND n.nspname !~ '^pg_'
ORDER BY n.nspname"""
search_path_show = "SELECT current_setting('search_path')"

# A Citus worker node: Citus's catalog there, the distributed songplays too (its metadata is on
# every node), but not load_runs, which stays on the coordinator.
on_a_citus_worker = """
SELECT to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL
   AND to_regclass('songplays') IS NOT NULL AND to_regclass('load_runs') IS NULL"""

# create_tables.py stamps the tables with a digest of the statements that made them
# (db.schema_stamp), on load_runs; a load reads it to find tables made by another version.
schema_stamp_write = "COMMENT ON TABLE load_runs IS %(stamp)s"
schema_stamp_read = "SELECT obj_description(to_regclass('load_runs'), 'pg_class')"

# The session's search_path becomes the schema that holds the project's tables (load_runs',
# the first of search_path that has one), alone: a table of the same name earlier on the path
# (in a schema named after the role, say) is never read or written instead. The temporary
# staging tables are found all the same (a session's temporary schema is searched first).
tables_schema_use = """
SELECT set_config('search_path', quote_ident(n.nspname), false)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass('load_runs') AND n.oid <> pg_my_temp_schema()"""

# ---------------------------------------------------------------- schema: on a Citus cluster
# Citus (distributed PostgreSQL) is an extension: where the database has it (a Citus
# coordinator), create_tables.py places the tables once they exist, before songplays' keys come:
# songplays and users hash-distributed on user_id into the same shards (a user's plays sit beside
# the user, so joins and merges on user_id run on each worker), the small dimensions copied to
# every node as reference tables (any shard joins them where it is), and the load bookkeeping
# left as plain tables on the coordinator. Referenced tables first, for the foreign keys.
# Elsewhere none of this runs: the same schema, the same statements, on one server.

# tools/citus_cluster.py, setting up a local cluster: each step is a no-op when done already.
cluster_create_extension = "CREATE EXTENSION IF NOT EXISTS citus"
cluster_set_coordinator = "SELECT citus_set_coordinator_host(%(host)s, %(port)s)"
cluster_add_worker = "SELECT citus_add_node(%(host)s, %(port)s)"
cluster_coordinator_holds_shards = """
SELECT citus_set_node_property(%(host)s, %(port)s, 'shouldhaveshards', true)"""

citus_present = "SELECT count(*) > 0 FROM pg_extension WHERE extname = 'citus'"

# Asked only where citus_present: the statements below are for a distributed songplays.
songplays_distributed = """
SELECT count(*) > 0 FROM pg_dist_partition WHERE logicalrelid = to_regclass('songplays')"""

# Plays are staged where they are merged: in a table distributed like songplays, so that the
# merge (songplays_insert_citus) runs as one INSERT ... SELECT per shard on the workers instead of
# pulling every row through the coordinator. UNLOGGED: it only ever holds a batch in flight.
# songplay_id is taken from songplays' own sequence as rows are copied in (on the coordinator, in
# file order), so the merge calls no volatile function, which would keep it from the workers.
stage_plays_citus_create = """
CREATE UNLOGGED TABLE stage_plays_citus (
    songplay_id bigint NOT NULL DEFAULT nextval('songplays_songplay_id_seq'),
    path text, start_time timestamptz, user_id integer, level text,
    song_title text, artist_name text, song_length numeric, session_id integer,
    item_in_session integer, location text, user_agent text,
    first_name text, last_name text, gender text
)"""

citus_distribute_queries = [
    "SELECT create_reference_table('artists')",
    "SELECT create_reference_table('songs')",
    "SELECT create_reference_table('time')",
    "SELECT create_distributed_table('users', 'user_id')",
    "SELECT create_distributed_table('songplays', 'user_id', colocate_with => 'users')",
    "SELECT create_distributed_table('songplay_copies', 'user_id', colocate_with => 'users')",
    stage_plays_citus_create,
    "SELECT create_distributed_table('stage_plays_citus', 'user_id', colocate_with => 'users')",
]

# On Citus, a transaction that writes a reference table (time, songs, artists) after a
# multi-shard statement on songplays (or another table of its shards) must run all of them over
# one connection per worker: else "cannot modify table ... because there was a parallel
# operation on a distributed table".
citus_sequential = "SET LOCAL citus.multi_shard_modify_mode TO 'sequential'"

# A load's lock timeout (--wait) reaches the workers, where a row an open transaction holds is
# waited for: Citus sends a transaction's SET LOCAL to them once told to (batch_job_settings'
# citus.propagate_set_commands; not a session's SET), so each part sets the session's timeout
# again, for its transaction.
lock_timeout_show = "SELECT current_setting('lock_timeout')"
lock_timeout_local = "SET LOCAL lock_timeout = %(lock_timeout)s"


# ---------------------------------------------------------------- one run at a time

LOCK_KEY = 7_246_391_802  # any fixed number; etl.py and create_tables.py share it

try_lock = "SELECT pg_try_advisory_lock(%(key)s)"

# A run marks its server session as its own (unless another run's mark is there), then reads
# the mark back in the transaction that takes the load lock, and at its end lets go of both. A
# pooler that hands one server session to several clients in turn (PgBouncer's pool_mode =
# transaction) would let a second run share the first's lock (it is taken again by the session
# that holds it), temporary tables and settings: there the mark of a run is found, or the lock's
# transaction runs in another session, without this run's. A session of its own never holds one.
session_mark = """
SELECT current_setting('sparkify.run', true),
       CASE WHEN coalesce(current_setting('sparkify.run', true), '') = ''
            THEN set_config('sparkify.run', %(mark)s, false) END"""
session_mark_read = "SELECT current_setting('sparkify.run', true)"
session_let_go = "SELECT pg_advisory_unlock(%(key)s), set_config('sparkify.run', '', false)"

# A load's session (and create_tables.py's) runs as a batch job, as pg_dump's does. No time limit
# a role or database sets for interactive work ends it midway: a big load's keys take minutes to
# build, a batch's transaction waits while the next part is parsed, the session waits between
# batches. And an error the load expects (rows written twice that a key refuses, a lock not
# granted in time) ends its statement, not the session (exit_on_error). And a double it reads
# back is the double the server holds (extra_float_digits 3, on every PostgreSQL version: at 0 and
# below, a bulk load's song durations came back rounded, and a play would not match its song).
# And a client gone without a word (its machine crashed, the network cut) is found within a
# minute, as the client finds a server gone (db.KEEPALIVES): its session would otherwise hold the
# load lock, every later run refused, until the server's keepalive defaults gave up, two hours
# on (on a socket the server ignores them). And no statement is compiled (jit): a load's
# statements are planned anew for each batch, and with a server's JIT thresholds near 0 one more
# day of 20,000 plays spent minutes compiling its merge, its server process growing by gigabytes.
# And the server's notices and warnings are not sent (client_min_messages): psycopg2 hands a
# statement's notices to Python as it ends and clears what was raised meanwhile, so Ctrl-C or
# SIGTERM during a statement ending with one (DROP … IF EXISTS's "skipping", Citus's "drop
# cascades to …", the warning of a COMMIT whose wait for a synchronous standby a stop cancelled)
# was lost: create_tables.py went on to drop the tables, a load to its next batch. On Citus, a
# transaction's SET LOCAL is sent to the workers too (citus.propagate_set_commands): the lock
# timeouts of a load's parts, of --full-refresh's TRUNCATE and of create_tables.py's DROP reach a
# session holding a shard there. Each setting the server has (idle_session_timeout since
# PostgreSQL 14, transaction_timeout since 17, citus.* on Citus).
batch_job_settings = """
SELECT set_config(s.name, v.setting, false)
FROM (VALUES ('statement_timeout', '0'),
             ('idle_in_transaction_session_timeout', '0'),
             ('idle_session_timeout', '0'),
             ('transaction_timeout', '0'),
             ('exit_on_error', 'off'),
             ('extra_float_digits', '3'),
             ('jit', 'off'),
             ('tcp_keepalives_idle', '30'),
             ('tcp_keepalives_interval', '10'),
             ('tcp_keepalives_count', '3'),
             ('tcp_user_timeout', '60000'),
             ('client_min_messages', 'error'),
             ('citus.propagate_set_commands', 'local')) v (name, setting)
JOIN pg_settings s USING (name)"""

# Triggers keep the star's row counts and check its foreign keys: in a session whose
# session_replication_role is 'replica' none fires. It is set back to 'origin', which only a
# superuser (or a role granted SET on it) may do.
replication_role_origin = """
SELECT set_config('session_replication_role', 'origin', false)
WHERE current_setting('session_replication_role') <> 'origin'"""

# The session holding the lock checks every second that its client is still there, even in the
# middle of a statement: a killed run's server process ends (letting go of the lock) within a
# second, instead of when its statement would have ended (a big load's keys take 20 s to build).
client_check = "SET client_connection_check_interval = '1s'"
CLIENT_CHECK_SINCE = 140000  # the server_version_num that has it

# Exactly our key: a bigint key is (classid, objid) with objsubid 1; Citus, among others, takes
# advisory locks of its own (objsubid 2 for a pair of integers, its own numbers above that).
# A stop (Ctrl-C, SIGTERM) cancels the statements of the run's sessions, from a session of its own.
cancel_backends = "SELECT pg_cancel_backend(pid) FROM unnest(%(pids)s::int[]) AS pid"

lock_holder = """
SELECT a.pid, a.application_name, a.backend_start
FROM pg_locks l JOIN pg_stat_activity a USING (pid)
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND (l.classid::bigint << 32) | l.objid::bigint = %(key)s
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"""

# ---------------------------------------------------------------- runs and the manifest

# The runs since the last that made its report (finished_at is when it did): killed, cut off,
# or stopped by an error; and any still marked running. The run that completes their work marks
# those interrupted, checks every row, and reports what they rejected.
runs_unreported = """
WITH interrupted AS (
    UPDATE load_runs SET status = 'interrupted' WHERE status = 'running' RETURNING run_id)
SELECT run_id FROM interrupted
UNION
SELECT run_id FROM load_runs
WHERE run_id > coalesce((SELECT max(run_id) FROM load_runs WHERE finished_at IS NOT NULL), 0)
ORDER BY run_id"""

run_start = "INSERT INTO load_runs (data_dir) VALUES (%(data_dir)s) RETURNING run_id"

run_finish = """
UPDATE load_runs SET status = %(status)s, finished_at = now() WHERE run_id = %(run_id)s"""

run_stopped = "UPDATE load_runs SET status = 'failed' WHERE run_id = %(run_id)s"

# Whether the last run that made its report failed it (a check, the reconciliation, a key not
# built back): the checks are then owed, whatever this run loads.
last_report_failed = """
SELECT coalesce((SELECT status = 'failed' FROM load_runs WHERE finished_at IS NOT NULL
                 ORDER BY run_id DESC LIMIT 1), false)"""

# What the manifest knows of each file; damaged: the run that loaded it found a problem with the
# file itself (gzip data damaged, no record, the database refusing it), which a rejection without
# a line records. Such a file is read (hashed) at each run whatever its size and mtime say, so that
# a repair keeping both (cp -p, rsync -t) is found.
manifest_known = """
SELECT m.path, m.size_bytes, m.mtime_ns, m.etag, m.sha256,
       EXISTS (SELECT FROM load_rejects r
               WHERE r.path = m.path AND r.run_id = m.run_id AND r.line IS NULL) AS damaged,
       m.records > m.rejected AS usable, m.run_id
FROM load_manifest m
WHERE m.kind = %(kind)s"""

manifest_touch = """
UPDATE load_manifest SET size_bytes = %(size_bytes)s, mtime_ns = %(mtime_ns)s, etag = %(etag)s
WHERE path = %(path)s"""

full_refresh = "TRUNCATE songplays, songplay_copies, users, time, songs, artists, load_manifest"

# Of the folders a full refresh cannot list, those holding files the manifest has, in path order:
# the manifest's folders found once, in one pass (a scan of it for each folder took minutes where
# thousands of entries are ignored beside a long manifest).
folders_loaded_from = """
SELECT f FROM unnest(%(folders)s::text[]) AS f
WHERE f IN (
    SELECT array_to_string(parts[1:n], '/')
    FROM (SELECT string_to_array(path, '/') AS parts FROM load_manifest) AS loaded,
         generate_series(1, cardinality(parts) - 1) AS n
)
ORDER BY f COLLATE "C"
"""

# ---------------------------------------------------------------- staging (per connection)

# The staging CSV carries instants as UTC without a zone: a batch's transaction reads them so.
staging_time_zone = "SET LOCAL TIME ZONE 'UTC'"
# The notebooks' sessions show instants in UTC, as the time table's parts are.
session_time_zone = "SET TIME ZONE 'UTC'"

# Each staging table's columns and types, declared once: etl.py renders its COPY payloads in
# this order. Rows live until the batch's transaction ends.
STAGING = {
    "stage_songs": {
        "path": "text",
        "line": "integer",
        "song_id": "text",
        "title": "text",
        "artist_id": "text",
        "year": "integer",
        "duration": "numeric",
        "artist_name": "text",
        "artist_location": "text",
        "artist_latitude": "double precision",
        "artist_longitude": "double precision",
    },
    "stage_plays": {
        "path": "text",
        "start_time": "timestamptz",
        "user_id": "integer",
        "level": "text",
        "song_title": "text",
        "artist_name": "text",
        "song_length": "numeric",
        "session_id": "integer",
        "item_in_session": "integer",
        "location": "text",
        "user_agent": "text",
        "first_name": "text",
        "last_name": "text",
        "gender": "text",
    },
    "stage_users": {
        "user_id": "integer",
        "first_name": "text",
        "last_name": "text",
        "gender": "text",
        "level": "text",
        "start_time": "timestamptz",
        "session_id": "integer",
        "item_in_session": "integer",
    },
    "stage_time": {
        "start_time": "timestamptz",
        "hour": "smallint",
        "day": "smallint",
        "week": "smallint",
        "month": "smallint",
        "year": "smallint",
        "weekday": "smallint",
    },
    # first: the file's first part in this batch (a later part of a big file adds to its counts)
    "stage_manifest": {
        "path": "text",
        "kind": "text",
        "first": "boolean",
        "size_bytes": "bigint",
        "mtime_ns": "bigint",
        "sha256": "text",
        "records": "integer",
        "loaded": "integer",
        "skipped": "integer",
        "rejected": "integer",
        "etag": "text",
        "file_id": "bigint",  # taken already (a bulk load's new log files), or NULL
    },
    "stage_rejects": {"path": "text", "line": "integer", "reason": "text", "raw": "text"},
    # Plays taken out of songplays (a changed file's, or a copy that lost): what they had set is
    # checked once the batch's plays are in (orphaned instants and users, users' latest plays).
    "stage_gone": {
        "start_time": "timestamptz",
        "user_id": "integer",
        "session_id": "integer",
        "item_in_session": "integer",
    },
    # A song batch's keys, before and after it (songplays_resolve_songs): as plays name them.
    "stage_song_keys": {"song_title": "text", "artist_name": "text", "song_length": "numeric"},
    # settle_queries: the plays to settle, and every copy of them (source: 'songplays', 'copies' or
    # 'staged'), with what becomes of each (outcome: 'win', 'lose' or 'drop').
    "stage_keys": {"user_id": "integer", "session_id": "integer", "item_in_session": "integer"},
    # The plays whose copy in songplay_copies took the stored one's place in this batch (kept for
    # the whole batch: stage_truncate leaves it).
    "stage_promoted": {
        "user_id": "integer",
        "session_id": "integer",
        "item_in_session": "integer",
    },
    "stage_contest": {
        "candidate": "bigint GENERATED ALWAYS AS IDENTITY",
        "source": "text",
        "songplay_id": "bigint",
        "file_id": "bigint",
        "start_time": "timestamptz",
        "user_id": "integer",
        "level": "text",
        "first_name": "text",
        "last_name": "text",
        "gender": "text",
        "session_id": "integer",
        "item_in_session": "integer",
        "location": "text",
        "user_agent": "text",
        "song_title": "text",
        "artist_name": "text",
        "song_length": "numeric",
        "song_id": "text",
        "artist_id": "text",
        "outcome": "text",
    },
}
STAGE_COLUMNS = {table: list(columns) for table, columns in STAGING.items()}

stage_table_queries = [
    f"CREATE TEMP TABLE IF NOT EXISTS {table} ("
    + ", ".join(f"{name} {kind}" for name, kind in columns.items())
    + ") ON COMMIT DELETE ROWS"
    for table, columns in STAGING.items()
]

stage_truncate = "TRUNCATE " + ", ".join(table for table in STAGING if table != "stage_promoted")

# Each staging table's COPY of a part's payload.
copy_into = {table: f"COPY {table} FROM STDIN WITH (FORMAT csv)" for table in STAGING}

# ---------------------------------------------------------------- merging a batch

# The manifest's next file id, which a bulk load takes ahead for its new log files.
_next_file_id = "nextval(pg_get_serial_sequence('load_manifest', 'file_id'))"

# A file's first part in a batch writes its manifest row whole: a new file numbered by file_id's
# identity (which any role that may insert into the table takes, where nextval() needs USAGE on
# the sequence), or by the id a bulk load took for it (file_ids_take). A later part of a big file
# adds its counts (manifest_add_part). loaded and duplicates of a log file are added once its
# plays are in.
_MANIFEST_COLUMNS = """path, kind, size_bytes, mtime_ns, etag, sha256, run_id,
                           records, loaded, skipped, duplicates, rejected"""
_MANIFEST_ROWS = """path, kind, size_bytes, mtime_ns, etag, sha256, %(run_id)s,
       records, loaded, skipped, 0, rejected
FROM stage_manifest"""
_MANIFEST_REPLACED = """ON CONFLICT (path) DO UPDATE SET
    kind = EXCLUDED.kind, size_bytes = EXCLUDED.size_bytes, mtime_ns = EXCLUDED.mtime_ns,
    etag = EXCLUDED.etag, sha256 = EXCLUDED.sha256, run_id = EXCLUDED.run_id,
    records = EXCLUDED.records,
    loaded = EXCLUDED.loaded, skipped = EXCLUDED.skipped, duplicates = EXCLUDED.duplicates,
    rejected = EXCLUDED.rejected, loaded_at = now()"""
manifest_upsert = f"""
INSERT INTO load_manifest ({_MANIFEST_COLUMNS})
SELECT {_MANIFEST_ROWS}
WHERE first AND file_id IS NULL
{_MANIFEST_REPLACED}"""
manifest_upsert_numbered = f"""
INSERT INTO load_manifest (file_id, {_MANIFEST_COLUMNS})
OVERRIDING SYSTEM VALUE
SELECT file_id, {_MANIFEST_ROWS}
WHERE first AND file_id IS NOT NULL
{_MANIFEST_REPLACED}"""

manifest_add_part = """
UPDATE load_manifest m
SET records = m.records + s.records, loaded = m.loaded + s.loaded,
    skipped = m.skipped + s.skipped, rejected = m.rejected + s.rejected
FROM stage_manifest s
WHERE m.path = s.path AND NOT s.first"""

rejects_insert = """
INSERT INTO load_rejects (run_id, path, line, reason, raw)
SELECT %(run_id)s, path, line, reason, raw FROM stage_rejects"""

# Files in the order etl.py lists and loads them: by the components of their manifest paths
# (path), then code points, whatever the database's collation.
FILE_ORDER = "string_to_array(path, '/') COLLATE \"C\""
# "The smallest song_id" (a play's song among equal keys, an artist's values) by code point too.
SONG_ORDER = 'song_id COLLATE "C"'

# A song_id found in several files: the file loaded last wins; within a batch, the last in path
# order (its last line), as if each file were a batch of its own. A fresh load thus takes the
# last file in path order, however the files are cut into batches.
_staged_songs = f"""
SELECT DISTINCT ON (song_id) *
FROM stage_songs
ORDER BY song_id, {FILE_ORDER} DESC, line DESC"""

# An artist's attributes come from its song with the smallest song_id, whatever the order in
# which files arrive: a batch's candidate (of the songs as the batch leaves them) wins only if
# no smaller song of that artist is loaded and kept by the batch (a new artist has no song
# loaded yet). One INSERT ... ON CONFLICT: on Citus a reference table cannot be updated FROM a
# TEMP table.
artists_upsert = f"""
INSERT INTO artists (artist_id, name, location, latitude, longitude)
SELECT c.artist_id, c.artist_name, c.artist_location, c.artist_latitude, c.artist_longitude
FROM (SELECT DISTINCT ON (artist_id) *
      FROM ({_staged_songs}) staged ORDER BY artist_id, {SONG_ORDER}) c
WHERE NOT EXISTS (
    SELECT 1 FROM songs s
    WHERE s.artist_id = c.artist_id AND s.{SONG_ORDER} < c.song_id
      AND NOT EXISTS (SELECT 1 FROM stage_songs t WHERE t.song_id = s.song_id))
ON CONFLICT (artist_id) DO UPDATE SET
    name = EXCLUDED.name, location = EXCLUDED.location,
    latitude = EXCLUDED.latitude, longitude = EXCLUDED.longitude
WHERE (artists.name, artists.location, artists.latitude, artists.longitude) IS DISTINCT FROM
      (EXCLUDED.name, EXCLUDED.location, EXCLUDED.latitude, EXCLUDED.longitude)"""

songs_upsert = f"""
INSERT INTO songs (song_id, title, artist_id, year, duration,
                   artist_name, artist_location, artist_latitude, artist_longitude)
SELECT song_id, title, artist_id, year, duration,
       artist_name, artist_location, artist_latitude, artist_longitude
FROM ({_staged_songs}) staged
ON CONFLICT (song_id) DO UPDATE SET
    title = EXCLUDED.title, artist_id = EXCLUDED.artist_id,
    year = EXCLUDED.year, duration = EXCLUDED.duration, artist_name = EXCLUDED.artist_name,
    artist_location = EXCLUDED.artist_location, artist_latitude = EXCLUDED.artist_latitude,
    artist_longitude = EXCLUDED.artist_longitude
WHERE (songs.title, songs.artist_id, songs.year, songs.duration, songs.artist_name,
       songs.artist_location, songs.artist_latitude, songs.artist_longitude)
      IS DISTINCT FROM
      (EXCLUDED.title, EXCLUDED.artist_id, EXCLUDED.year, EXCLUDED.duration,
       EXCLUDED.artist_name, EXCLUDED.artist_location, EXCLUDED.artist_latitude,
       EXCLUDED.artist_longitude)"""

# A song file may give a song to another artist_id. The artists the batch takes songs from are
# found before the songs change; once the plays follow their songs (songplays_resolve_songs),
# each takes the name and place of its smallest song left, and one left with no song goes, as a
# fresh load of the files would never have made it. (On Citus, songs written first keep the
# plays' shards to one connection each in the transaction: the artists can be written after.)
artists_losing_songs = f"""
SELECT DISTINCT songs.artist_id
FROM songs JOIN ({_staged_songs}) staged USING (song_id)
WHERE songs.artist_id <> staged.artist_id"""

artists_from_songs_left = f"""
UPDATE artists a
SET name = s.artist_name, location = s.artist_location,
    latitude = s.artist_latitude, longitude = s.artist_longitude
FROM (SELECT DISTINCT ON (artist_id) * FROM songs
      WHERE artist_id = ANY (%(artists)s) ORDER BY artist_id, {SONG_ORDER}) s
WHERE a.artist_id = s.artist_id
  AND (a.name, a.location, a.latitude, a.longitude) IS DISTINCT FROM
      (s.artist_name, s.artist_location, s.artist_latitude, s.artist_longitude)"""

artists_delete_songless = """
DELETE FROM artists a
WHERE a.artist_id = ANY (%(artists)s)
  AND NOT EXISTS (SELECT 1 FROM songs s WHERE s.artist_id = a.artist_id)"""

# A play's song: the smallest song_id of its title, artist name and duration, the artist's name as
# the song's own file gives it (an artist's songs may name it in several ways: "Blue Rain",
# "Blue Rain feat. X"; artists.name is one of them).
_song_keys = f"""
SELECT DISTINCT ON (title, artist_name, duration)
       title, artist_name, duration, song_id, artist_id
FROM songs
ORDER BY title, artist_name, duration, {SONG_ORDER}"""

# The same, of the keys the plays of a statement name, which it gives as a WITH query played_keys
# (song_title, artist_name, song_length): the catalogue is scanned and only those are sorted, so a
# statement over a day's plays follows the day, not the catalogue (a day's merge onto 200,000
# songs: the join 0.05 s against 0.26 s).
_song_keys_played = f"""
SELECT DISTINCT ON (title, artist_name, duration)
       title, artist_name, duration, song_id, artist_id
FROM songs
WHERE (title, artist_name, duration) IN (
    SELECT song_title, artist_name, song_length FROM played_keys)
ORDER BY title, artist_name, duration, {SONG_ORDER}"""

# Each play (the row p of the statement) with its song k, as the merge resolves it, among the
# songs of played_keys. On Citus a TEMP table cannot be updated from the songs, reference tables:
# a play is resolved where it is read (on one server a skipped staged play's comes after it,
# contest_staged_songs).
_played_song = f"""LEFT JOIN ({_song_keys_played}) k
       ON k.title = p.song_title AND k.artist_name = p.artist_name AND k.duration = p.song_length"""

# A song batch may add songs, and change songs: the plays naming a key one of them had before
# (song_keys_changing, before the batch's songs are written) or has now are resolved again from
# scratch (to a song, another one, or none), as a load of the files as they now are resolves
# them. A play resolved to a song names its key (every play is resolved by its key), so these are
# every play the batch can move. On Citus the update runs on each shard, the keys sent along.
# With no play loaded yet (a first load's songs) the update stops at once (its last line). (LIMIT
# 1: on Citus, every row of every shard would come back to the coordinator first. That test comes
# after the songs are written, not with the keys noted before: on Citus a reference table cannot
# be written in a transaction once a distributed table was read in parallel.)
song_keys_changing = """
INSERT INTO stage_song_keys (song_title, artist_name, song_length)
SELECT title, artist_name, duration FROM songs WHERE song_id IN (SELECT song_id FROM stage_songs)
UNION ALL
SELECT title, artist_name, duration FROM stage_songs"""

songplays_resolve_songs = f"""
WITH played_keys AS (SELECT song_title, artist_name, song_length FROM stage_song_keys)
UPDATE songplays p
SET song_id = k.song_id, artist_id = k.artist_id
FROM (SELECT q.user_id, q.songplay_id, b.song_id, b.artist_id
      FROM songplays q
      LEFT JOIN ({_song_keys_played}) b
             ON b.title = q.song_title AND b.artist_name = q.artist_name
            AND b.duration = q.song_length
      WHERE (q.song_title, q.artist_name, q.song_length) IN (
          SELECT song_title, artist_name, song_length FROM stage_song_keys)) k
WHERE p.user_id = k.user_id AND p.songplay_id = k.songplay_id
  AND (p.song_id, p.artist_id) IS DISTINCT FROM (k.song_id, k.artist_id)
  AND EXISTS (SELECT 1 FROM songplays LIMIT 1)"""

# ---------------------------------------------------------------- a bulk load's plays, written once
# With the keys dropped, a part's plays and instants are COPYed straight into songplays and time,
# each play's song and file resolved by the parse worker before (as the merge below resolves
# them). Once the run's song files are in, the worker gets the song keys and each new log file's
# id, taken then (file_ids_take). A catalogue of more than SONG_KEYS_IN_MEMORY song keys, or
# SONG_KEY_BYTES_IN_MEMORY bytes of them, is not sent: the load is then no bulk load, and the
# merge below resolves its plays here, with the keys in place.
# The keys travel as the CSV text COPY writes, a few bytes a key where a Python object takes
# hundreds; the run and each worker hold them, about five times their text over the process tree
# (120 MB of 1 to 5 KB titles and artist names took 616 MB more than short ones).
SONG_KEYS_IN_MEMORY = 2_000_000
SONG_KEY_BYTES_IN_MEMORY = 128 << 20
song_keys_copy = f"""
COPY (SELECT title, artist_name, duration::float8, song_id, artist_id FROM ({_song_keys}) k
      LIMIT {SONG_KEYS_IN_MEMORY + 1})
TO STDOUT WITH (FORMAT csv)"""
file_ids_take = f"SELECT {_next_file_id} FROM generate_series(1, %(files)s)"
SONGPLAYS_COPY_COLUMNS = [
    "start_time",
    "user_id",
    "level",
    "first_name",
    "last_name",
    "gender",
    "song_id",
    "artist_id",
    "session_id",
    "item_in_session",
    "location",
    "user_agent",
    "song_title",
    "artist_name",
    "song_length",
    "file_id",
]
TIME_COPY_COLUMNS = ["start_time", "hour", "day", "week", "month", "year", "weekday"]
BULK_COPIES = {
    table: f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)"
    for table, columns in [("songplays", SONGPLAYS_COPY_COLUMNS), ("time", TIME_COPY_COLUMNS)]
}

time_insert = """
INSERT INTO time (start_time, hour, day, week, month, year, weekday)
SELECT start_time, hour, day, week, month, year, weekday FROM stage_time
ON CONFLICT (start_time) DO NOTHING"""

# On Citus, rows written with ON CONFLICT into a reference table travel as intermediate results
# to every node and are merged there: five times slower than a plain insert, which is copied
# straight in. Only the new instants are inserted, with nothing to conflict: the load is the only
# writer of time (one load at a time: the advisory lock).
time_insert_citus = """
INSERT INTO time (start_time, hour, day, week, month, year, weekday)
SELECT start_time, hour, day, week, month, year, weekday FROM stage_time s
WHERE NOT EXISTS (SELECT 1 FROM time t WHERE t.start_time = s.start_time)"""

# A user's row reflects their latest play: a batch's row wins only if no later play is loaded.
users_update = """
UPDATE users u
SET first_name = s.first_name, last_name = s.last_name, gender = s.gender, level = s.level
FROM stage_users s
LEFT JOIN LATERAL (  -- the user's latest loaded play: a short backward scan of songplays_user_time
    SELECT p.start_time, p.session_id, p.item_in_session FROM songplays p
    WHERE p.user_id = s.user_id
    ORDER BY p.start_time DESC, p.session_id DESC, p.item_in_session DESC LIMIT 1) latest ON true
WHERE u.user_id = s.user_id
  AND (latest.start_time IS NULL
       OR (latest.start_time, latest.session_id, latest.item_in_session)
          <= (s.start_time, s.session_id, s.item_in_session))
  AND (u.first_name, u.last_name, u.gender, u.level) IS DISTINCT FROM
      (s.first_name, s.last_name, s.gender, s.level)"""

# The same on Citus, where a LATERAL subquery may not join a TEMP table to the shards: "no later
# play of the user", each shard checking its own plays (one pass over them, in parallel). On one
# server that pass over all of songplays would cost more than the LATERAL's index probes.
users_update_citus = """
UPDATE users u
SET first_name = s.first_name, last_name = s.last_name, gender = s.gender, level = s.level
FROM stage_users s
WHERE u.user_id = s.user_id
  AND NOT EXISTS (
      SELECT 1 FROM songplays p
      WHERE p.user_id = u.user_id
        AND (p.start_time, p.session_id, p.item_in_session)
            > (s.start_time, s.session_id, s.item_in_session))
  AND (u.first_name, u.last_name, u.gender, u.level) IS DISTINCT FROM
      (s.first_name, s.last_name, s.gender, s.level)"""

# Only the batch's new users are sent: on Citus the rows of an INSERT ... ON CONFLICT from the
# coordinator go to every shard (and NOT EXISTS may not join a TEMP table to a distributed one).
users_insert = """
INSERT INTO users (user_id, first_name, last_name, gender, level)
SELECT user_id, first_name, last_name, gender, level FROM stage_users
WHERE user_id NOT IN (SELECT user_id FROM users WHERE user_id IN (SELECT user_id FROM stage_users))
ON CONFLICT (user_id) DO NOTHING"""

# A changed log file is loaded again: first take back what its previous load contributed, its
# plays (remembered in stage_gone) and its copies of other files' plays.
songplays_delete_reloaded = """
WITH gone AS (
    DELETE FROM songplays
    WHERE file_id IN (SELECT m.file_id FROM load_manifest m JOIN stage_manifest s USING (path)
                      WHERE s.first)
    RETURNING start_time, user_id, session_id, item_in_session)
INSERT INTO stage_gone SELECT start_time, user_id, session_id, item_in_session FROM gone"""

copies_delete_reloaded = """
DELETE FROM songplay_copies
WHERE file_id IN (SELECT m.file_id FROM load_manifest m JOIN stage_manifest s USING (path)
                  WHERE s.first)"""

# What the plays taken out had set, once the batch's own plays are in. Uncorrelated: on Citus a
# reference table's DELETE may not be correlated with a distributed table.
time_delete_orphans = """
DELETE FROM time
WHERE start_time IN (
    SELECT start_time FROM stage_gone
    EXCEPT
    SELECT start_time FROM songplays WHERE start_time IN (SELECT start_time FROM stage_gone))"""

users_delete_orphans = """
DELETE FROM users u
WHERE u.user_id IN (SELECT user_id FROM stage_gone)
  AND NOT EXISTS (SELECT 1 FROM songplays p WHERE p.user_id = u.user_id)"""

# Each user whose plays changed, as of their latest play now (each play keeps the user as it
# recorded them): a short backward scan of songplays_user_time per user, as in users_update.
# Sorting every play of those users instead grew with the database: 0.48 s of a changed day's
# 4.1 s reload at 595,000 plays.
users_refresh = """
UPDATE users u
SET first_name = p.first_name, last_name = p.last_name, gender = p.gender, level = p.level
FROM (SELECT DISTINCT user_id FROM stage_gone) g
CROSS JOIN LATERAL (
    SELECT q.first_name, q.last_name, q.gender, q.level FROM songplays q
    WHERE q.user_id = g.user_id
    ORDER BY q.start_time DESC, q.session_id DESC, q.item_in_session DESC LIMIT 1) p
WHERE u.user_id = g.user_id
  AND (u.first_name, u.last_name, u.gender, u.level) IS DISTINCT FROM
      (p.first_name, p.last_name, p.gender, p.level)"""

# The same on Citus, where a LATERAL subquery may not join a TEMP table to the shards: each
# shard's plays of those users, in one pass.
users_refresh_citus = """
UPDATE users u
SET first_name = p.first_name, last_name = p.last_name, gender = p.gender, level = p.level
FROM (SELECT DISTINCT ON (user_id) user_id, first_name, last_name, gender, level FROM songplays
      WHERE user_id IN (SELECT user_id FROM stage_gone)
      ORDER BY user_id, start_time DESC, session_id DESC, item_in_session DESC) p
WHERE u.user_id = p.user_id
  AND (u.first_name, u.last_name, u.gender, u.level) IS DISTINCT FROM
      (p.first_name, p.last_name, p.gender, p.level)"""

# Once plays went (stage_gone): their users as of their latest play left, and the users and
# instants no play holds any more; then stage_gone is done with (a big changed file's later
# parts would go over its first part's plays again). stage_gone analyzed first: a temporary
# table has no statistics until then, and planned as a table of a few hundred rows,
# time_delete_orphans probed songplays_start_time once per play gone (a 1M-event log file
# changed: its reload took 35.6 and 38.2 s without, 28.1 and 29.4 s with, in turn).
stage_gone_analyze = "ANALYZE stage_gone"
stage_gone_done = "TRUNCATE stage_gone"


after_plays_gone = [
    stage_gone_analyze,
    users_refresh,
    users_delete_orphans,
    time_delete_orphans,
    stage_gone_done,
]
after_plays_gone_citus = [
    users_refresh_citus if query is users_refresh else query for query in after_plays_gone
]


# Each play resolved in one join on (title, artist name, duration); counts per file come back.
# A play whose key is loaded already is skipped (fewer inserted than staged: the copies are then
# settled, settle_queries). songplay_ids go in key order, copies of a play in their files' order,
# as a bulk load and Citus number them: the join's own order follows the staging table's pages,
# where a row may fill the space of one deleted before.
songplays_insert = f"""
WITH played_keys AS (SELECT song_title, artist_name, song_length FROM stage_plays),
song_keys AS ({_song_keys_played}
), inserted AS (
    INSERT INTO songplays (start_time, user_id, level, first_name, last_name, gender, song_id,
                           artist_id, session_id, item_in_session, location, user_agent,
                           song_title, artist_name, song_length, file_id)
    SELECT p.start_time, p.user_id, p.level, p.first_name, p.last_name, p.gender, k.song_id,
           k.artist_id, p.session_id, p.item_in_session, p.location, p.user_agent,
           p.song_title, p.artist_name, p.song_length, m.file_id
    FROM stage_plays p
    JOIN load_manifest m USING (path)
    LEFT JOIN song_keys k ON k.title = p.song_title AND k.artist_name = p.artist_name
                         AND k.duration = p.song_length
    ORDER BY p.user_id, p.session_id, p.item_in_session, {FILE_ORDER}
    ON CONFLICT (user_id, session_id, item_in_session) DO NOTHING
    RETURNING file_id
)
SELECT m.path, count(*)
FROM inserted i JOIN load_manifest m USING (file_id)
GROUP BY m.path"""

# The same merge on Citus, from stage_plays_citus: on each shard, on its worker. Such a pushed-down
# INSERT ... SELECT may not call a volatile function (songplay_id was taken as rows were staged),
# hold a CTE in a subquery, or join a table of the coordinator (the batch's file ids come as
# parameters: paths and file_ids, in the same order). Its song keys are the whole catalogue's:
# narrowed to those the staged plays name, the statement reads a distributed table in a subquery,
# and Citus no longer pushes it down (INSERT/SELECT method: repartition).
stage_plays_copy_citus = """
COPY stage_plays_citus (path, start_time, user_id, level, song_title, artist_name, song_length,
                        session_id, item_in_session, location, user_agent, first_name,
                        last_name, gender)
FROM STDIN WITH (FORMAT csv)"""

manifest_file_ids = "SELECT path, file_id FROM load_manifest WHERE path = ANY (%(paths)s)"

songplays_insert_citus = f"""
INSERT INTO songplays (songplay_id, start_time, user_id, level, first_name, last_name, gender,
                       song_id, artist_id, session_id, item_in_session, location, user_agent,
                       song_title, artist_name, song_length, file_id)
OVERRIDING SYSTEM VALUE
SELECT p.songplay_id, p.start_time, p.user_id, p.level, p.first_name, p.last_name, p.gender,
       k.song_id, k.artist_id, p.session_id, p.item_in_session, p.location, p.user_agent,
       p.song_title, p.artist_name, p.song_length, f.file_id
FROM stage_plays_citus p
JOIN unnest(%(paths)s::text[], %(file_ids)s::bigint[]) AS f (path, file_id) ON f.path = p.path
LEFT JOIN ({_song_keys}) k
       ON k.title = p.song_title AND k.artist_name = p.artist_name AND k.duration = p.song_length
ON CONFLICT (user_id, session_id, item_in_session) DO NOTHING"""

# Counts per file: a staged play went in if its songplay_id did (the primary key, per shard).
songplays_inserted_citus = """
SELECT p.path, count(*)
FROM stage_plays_citus p
JOIN songplays s ON s.user_id = p.user_id AND s.songplay_id = p.songplay_id
GROUP BY p.path"""

# A batch's staged plays go with its transaction; a run starts by clearing what anything else
# may have left (one load at a time: the advisory lock). By DELETE, not TRUNCATE: a pg_dump
# reading every table would hold TRUNCATE up (and a load with it) until it ends.
stage_plays_done_citus = "DELETE FROM stage_plays_citus"

# A worker that failed as a batch committed (two-phase) keeps its part prepared until the
# coordinator recovers it, each citus.recover_2pc_interval (a minute): a run recovers first, so
# that it reads what was committed (the manifest says a file loaded; its plays on that worker
# would be missing, and a new version of the file would wait on their locks). Where the role
# may: Citus grants it to superusers alone; the minute's recovery then does it.
citus_recover_prepared = """
SELECT CASE WHEN has_function_privilege('recover_prepared_transactions()', 'EXECUTE')
            THEN recover_prepared_transactions() END"""

manifest_add_loaded = """
UPDATE load_manifest
SET loaded = loaded + %(loaded)s, duplicates = duplicates + %(duplicates)s
WHERE path = %(path)s"""

# ---------------------------------------------------------------- settling copies of a play
# Several log files may hold the same play (user_id, session_id, item_in_session): a file resent
# whole in another folder, one repeating part of another (at-least-once delivery), maybe with
# other values. songplays keeps the copy of the file first in path order (files are listed and
# loaded sorted by path components; FILE_ORDER sorts their manifest paths the same way, by code
# point), songplay_copies the first copy of each other file; a file's own later copies of a play
# count as its duplicates only. When that changes (the merge skipped a staged play whose key is
# stored from another file, a changed file's plays are taken back, a bulk load appended a play
# twice), the keys concerned go to stage_keys, every copy of them to stage_contest, and
# settle_queries puts the winner in songplays and the others in songplay_copies, adds the instants
# of new winners to time, notes in stage_gone the plays whose users and instants to check, and
# moves each file's manifest counts between loaded and duplicates. Every step runs on Citus too:
# stage_contest is a TEMP table on the coordinator, filled from the shards, and the shards are
# written from it by uncorrelated statements (IN a subquery, INSERT ... SELECT).

_contest_columns = """start_time, user_id, level, first_name, last_name, gender, session_id,
    item_in_session, location, user_agent, song_title, artist_name, song_length"""

# Staged plays the merge skipped: another file's copy is stored, or the file's own first copy
# (from an earlier part of a big file) with other values. The play a merge inserted matches its
# stored row, and is left out.
_contest_staged_differs = """(s.file_id, s.start_time, s.level, s.first_name, s.last_name, s.gender,
       s.location, s.user_agent, s.song_title, s.artist_name, s.song_length)
      IS DISTINCT FROM"""


# A candidate's values, read from the table its statement names p (_contest_columns' order).
_contest_values = """p.start_time, p.user_id, p.level, p.first_name, p.last_name, p.gender,
       p.session_id, p.item_in_session, p.location, p.user_agent, p.song_title, p.artist_name,
       p.song_length"""

# The staged plays that the merge skipped (FROM the staging table p, with its file ids f), as
# candidates: what makes them skipped plays.
_contest_staged_stored = """JOIN songplays s
     ON s.user_id = p.user_id AND s.session_id = p.session_id
    AND s.item_in_session = p.item_in_session"""
_contest_staged_skipped = f"""WHERE {_contest_staged_differs}
      (f.file_id, p.start_time, p.level, p.first_name, p.last_name, p.gender,
       p.location, p.user_agent, p.song_title, p.artist_name, p.song_length)"""

# On one server the candidates come first, each found by its key in songplays' unique index, and
# their songs after (contest_staged_songs): in one statement the planner, which cannot tell that
# a key finds one stored play at most, took a part's skipped plays for a handful and probed
# every song key for each in a nested loop (a file resent with other values, sorting first,
# 12,500 plays against 20,000 songs: 7.7 s in that loop, against 0.1 s in two statements).
contest_staged = f"""
INSERT INTO stage_contest (source, file_id, {_contest_columns})
SELECT 'staged', f.file_id, {_contest_values}
FROM stage_plays p
JOIN load_manifest f ON f.path = p.path
{_contest_staged_stored}
{_contest_staged_skipped}"""
contest_staged_songs = f"""
WITH played_keys AS (SELECT song_title, artist_name, song_length FROM stage_contest)
UPDATE stage_contest c
SET song_id = k.song_id, artist_id = k.artist_id
FROM ({_song_keys_played}) k
WHERE c.source = 'staged'
  AND k.title = c.song_title AND k.artist_name = c.artist_name AND k.duration = c.song_length"""
# On Citus, in one statement, with the file ids as parameters (as for songplays_insert_citus).
contest_staged_citus = f"""
WITH played_keys AS (SELECT song_title, artist_name, song_length FROM stage_plays_citus)
INSERT INTO stage_contest (source, file_id, song_id, artist_id, {_contest_columns})
SELECT 'staged', f.file_id, k.song_id, k.artist_id, {_contest_values}
FROM stage_plays_citus p
JOIN unnest(%(paths)s::text[], %(file_ids)s::bigint[]) AS f (path, file_id) ON f.path = p.path
{_contest_staged_stored}
{_played_song}
{_contest_staged_skipped}"""

staged_keys = """
INSERT INTO stage_keys (user_id, session_id, item_in_session)
SELECT DISTINCT user_id, session_id, item_in_session FROM stage_contest"""

# The plays a changed file took back that another file holds a copy of.
reloaded_keys = """
INSERT INTO stage_keys (user_id, session_id, item_in_session)
SELECT DISTINCT user_id, session_id, item_in_session FROM songplay_copies
WHERE (user_id, session_id, item_in_session) IN (
    SELECT user_id, session_id, item_in_session FROM stage_gone)"""

_settle_played = f"""
INSERT INTO stage_contest (source, songplay_id, file_id, song_id, artist_id, {_contest_columns})
SELECT 'songplays', songplay_id, file_id, song_id, artist_id, {_contest_columns}
FROM songplays
WHERE (user_id, session_id, item_in_session) IN (
    SELECT user_id, session_id, item_in_session FROM stage_keys)"""

_settle_copied = f"""
WITH copies AS (
    SELECT * FROM songplay_copies
    WHERE (user_id, session_id, item_in_session) IN (
        SELECT user_id, session_id, item_in_session FROM stage_keys)
), played_keys AS (SELECT song_title, artist_name, song_length FROM copies)
INSERT INTO stage_contest (source, file_id, song_id, artist_id, {_contest_columns})
SELECT 'copies', p.file_id, k.song_id, k.artist_id, {_contest_values}
FROM copies p
{_played_song}"""

# The winner of each key: the first file in path order; of a file's copies, the one stored before
# (its first; a bulk load's appended copies: the first appended). Every other file's first copy
# loses; a file's later copies drop.
_settle_decide = f"""
UPDATE stage_contest c
SET outcome = CASE WHEN r.best = 1 THEN 'win' WHEN r.in_file = 1 THEN 'lose' ELSE 'drop' END
FROM (SELECT c.candidate,
             row_number() OVER (PARTITION BY c.user_id, c.session_id, c.item_in_session
                                ORDER BY {FILE_ORDER}, c.source = 'staged', c.songplay_id)
                 AS best,
             row_number() OVER (PARTITION BY c.user_id, c.session_id, c.item_in_session,
                                             c.file_id
                                ORDER BY c.source = 'staged', c.songplay_id) AS in_file
      FROM stage_contest c JOIN load_manifest m USING (file_id)) r
WHERE c.candidate = r.candidate"""

_settle_copies_add = f"""
INSERT INTO songplay_copies (file_id, {_contest_columns})
SELECT file_id, {_contest_columns} FROM stage_contest
WHERE outcome = 'lose' AND source <> 'copies'"""

_settle_copies_take = """
DELETE FROM songplay_copies
WHERE (user_id, session_id, item_in_session, file_id) IN (
    SELECT user_id, session_id, item_in_session, file_id FROM stage_contest
    WHERE source = 'copies' AND outcome = 'win')"""

_settle_songplays_take = """
DELETE FROM songplays
WHERE (user_id, songplay_id) IN (
    SELECT user_id, songplay_id FROM stage_contest
    WHERE source = 'songplays' AND outcome <> 'win')"""

# A new winner's instant, with its parts as transform.time_table computes them (UTC, ISO week
# and weekday).
_settle_time = """
INSERT INTO time (start_time, hour, day, week, month, year, weekday)
SELECT start_time, extract(hour FROM utc), extract(day FROM utc), extract(week FROM utc),
       extract(month FROM utc), extract(year FROM utc), extract(isodow FROM utc)
FROM (SELECT DISTINCT start_time, start_time AT TIME ZONE 'UTC' AS utc FROM stage_contest c
      WHERE c.outcome = 'win' AND c.source <> 'songplays'
        AND NOT EXISTS (SELECT 1 FROM time t WHERE t.start_time = c.start_time)) w"""

# In the keys' order, as the merge inserts (their songplay_ids then follow the plays, not the
# order a join of their titles came in, which the database's collation sets).
_settle_songplays_add = f"""
INSERT INTO songplays (file_id, song_id, artist_id, {_contest_columns})
SELECT file_id, song_id, artist_id, {_contest_columns} FROM stage_contest
WHERE outcome = 'win' AND source <> 'songplays'
ORDER BY user_id, session_id, item_in_session"""

_settle_gone = """
INSERT INTO stage_gone (start_time, user_id, session_id, item_in_session)
SELECT start_time, user_id, session_id, item_in_session FROM stage_contest"""

# Once the manifest has its counts (settle_manifest): the plays a copy took the place of.
settle_promoted = """
INSERT INTO stage_promoted (user_id, session_id, item_in_session)
SELECT user_id, session_id, item_in_session FROM stage_contest
WHERE outcome = 'win' AND source = 'copies'"""

settle_queries = [
    _settle_played,
    _settle_copied,
    _settle_decide,
    _settle_copies_add,
    _settle_copies_take,
    _settle_songplays_take,
    _settle_time,
    _settle_songplays_add,
    _settle_gone,
]

# Each file's plays that went into songplays (+) or out of it (-), moved between its loaded and
# duplicates; returned for every file that had a copy in the contest (so, a row at least), with
# the file's path and run, and how many of the plays moved out were not promoted from a copy
# earlier in the batch (a play a changed file gave up to a copy and took back is not taken over).
settle_manifest = """
UPDATE load_manifest m SET loaded = m.loaded + d.moved, duplicates = m.duplicates - d.moved
FROM (SELECT file_id,
             count(*) FILTER (WHERE source <> 'songplays' AND outcome = 'win')
             - count(*) FILTER (WHERE source = 'songplays' AND outcome <> 'win') AS moved,
             count(*) FILTER (WHERE source = 'songplays' AND outcome <> 'win' AND NOT EXISTS (
                 SELECT 1 FROM stage_promoted p
                 WHERE (p.user_id, p.session_id, p.item_in_session)
                     = (c.user_id, c.session_id, c.item_in_session))) AS taken
      FROM stage_contest c GROUP BY file_id) d
WHERE m.file_id = d.file_id
RETURNING m.path, m.run_id, d.moved, d.taken"""

settle_done = "TRUNCATE stage_keys, stage_contest"

# ---------------------------------------------------------------- the summary

# Each star table counted: on Citus, where no trigger keeps row_counts (on the shards in
# parallel), and by test.ipynb.
row_count = {table: f"SELECT count(*) FROM {table}" for table in STAR_TABLES}
resolved_plays_counted = "SELECT count(*) FROM songplays WHERE song_id IS NOT NULL"

# The run's first rejects: song files' first (as they load: their paths start with songs, the
# song folder's path, a URL in an object store), then by path and line; those an earlier run gave
# too after the others: a whole file named at every run (an emptied file, a link left dangling)
# does not hide the day's new problems.
run_rejects = """
SELECT path, line, reason FROM load_rejects r WHERE run_id = %(run_id)s
ORDER BY line IS NULL AND EXISTS (
             SELECT 1 FROM load_rejects e
             WHERE e.path = r.path AND e.run_id < r.run_id AND e.line IS NULL
               AND e.reason = r.reason),
         NOT starts_with(path, %(songs)s), path COLLATE "C", line NULLS FIRST, reject_id
LIMIT %(limit)s"""

# What runs that stopped before their report rejected in the files they loaded, where the
# manifest still has the version they loaded (a file loaded again since has rejects of its own).
_earlier_rejects = """
FROM load_rejects r JOIN load_manifest m ON m.path = r.path AND m.run_id = r.run_id
WHERE r.run_id = ANY(%(runs)s)"""
# Records as a run counts them (every record of a file rejected whole included: the manifest's
# count), and the whole files.
earlier_rejects_count = f"""
SELECT (SELECT coalesce(sum(rejected), 0) FROM load_manifest WHERE run_id = ANY(%(runs)s)),
       (SELECT count(*) {_earlier_rejects} AND r.line IS NULL)"""
# What those runs loaded: the files whose loaded version is theirs, and their records loaded.
earlier_loads = """
SELECT kind, count(*), coalesce(sum(loaded), 0) FROM load_manifest WHERE run_id = ANY(%(runs)s)
GROUP BY kind"""
earlier_rejects = f"""
SELECT r.path, r.line, r.reason {_earlier_rejects}
ORDER BY NOT starts_with(r.path, %(songs)s), r.path COLLATE "C", r.line NULLS FIRST,
         r.reject_id
LIMIT %(limit)s"""

# ---------------------------------------------------------------- post-load checks
# Each returns the number of offending rows; zero passes. Most of what they check, a constraint
# of the schema guarantees for every row while it is in place and validated (a bulk load drops
# songplays' keys and foreign keys, and load.build_keys builds and validates them over every row
# at its end): such a check is answered by its constraints, and runs over
# every row only when one of them is missing. What no constraint says runs over this run's plays
# (the plays of the log files this run loaded, found through songplays_file), or over every row
# when the run may have changed other plays: it loaded song files (plays are resolved again) or
# settled copies of a play (plays and manifest counts of other files move).
# Each check: every_row, the check over the whole star; constraints, what guarantees it while in
# place and validated; this_run (where the constraints leave something), that over this run's
# log files.


# The plays of this run's log files (songplays_file finds them).
_this_run_plays = """
SELECT * FROM songplays
WHERE file_id IN (SELECT file_id FROM load_manifest WHERE run_id = %(run_id)s AND kind = 'log')"""

_song_unresolvable = """LEFT JOIN songs s USING (song_id)
WHERE (p.song_id IS NULL) <> (p.artist_id IS NULL)
   OR (p.song_id IS NOT NULL AND (s.song_id IS NULL OR s.artist_id <> p.artist_id))"""

CHECKS = {
    # The primary key (user_id, songplay_id) keeps it not null; songplay_id is GENERATED ALWAYS
    # AS IDENTITY, drawn from its sequence (on Citus too, as plays are staged).
    "songplays.songplay_id unique and not null": {
        "every_row": "SELECT count(*) - count(DISTINCT songplay_id) FROM songplays",
        "constraints": ["songplays_pkey"],
        "this_run": f"SELECT count(*) - count(DISTINCT songplay_id) FROM ({_this_run_plays}) p",
    },
    "users.user_id unique and not null": {
        "every_row": "SELECT count(*) - count(DISTINCT user_id) FROM users",
        "constraints": ["users_pkey"],
    },
    "songs.song_id unique and not null": {
        "every_row": "SELECT count(*) - count(DISTINCT song_id) FROM songs",
        "constraints": ["songs_pkey"],
    },
    "artists.artist_id unique and not null": {
        "every_row": "SELECT count(*) - count(DISTINCT artist_id) FROM artists",
        "constraints": ["artists_pkey"],
    },
    "time.start_time unique and not null": {
        "every_row": "SELECT count(*) - count(DISTINCT start_time) FROM time",
        "constraints": ["time_pkey"],
    },
    "every songplay has its user": {
        "every_row": """
        SELECT count(*) FROM songplays p LEFT JOIN users u USING (user_id)
        WHERE u.user_id IS NULL""",
        "constraints": ["songplays_user_id_fkey"],
    },
    "every songplay has its time": {
        "every_row": """
        SELECT count(*) FROM songplays p LEFT JOIN time t USING (start_time)
        WHERE t.start_time IS NULL""",
        "constraints": ["songplays_start_time_fkey"],
    },
    # The foreign keys say each id exists; not that both are there or neither, nor that the
    # song is the artist's.
    "song_id and artist_id both null or both resolvable": {
        "every_row": f"SELECT count(*) FROM songplays p {_song_unresolvable}",
        "constraints": ["songplays_song_id_fkey", "songplays_artist_id_fkey"],
        "this_run": f"SELECT count(*) FROM ({_this_run_plays}) p {_song_unresolvable}",
    },
    "level in {free, paid}": {
        "every_row": """
        SELECT (SELECT count(*) FROM users WHERE level NOT IN ('free', 'paid'))
             + (SELECT count(*) FROM songplays WHERE level NOT IN ('free', 'paid'))""",
        "constraints": ["users_level_check", "songplays_level_check"],
    },
    # The manifest's count of a log file changes only when the file is loaded, or when settling
    # moves its plays (then the check runs over every file). Scoped, it reads this run's files
    # one by one, and the other files in total against the rest of the kept row count: where
    # those differ (a play deleted by hand from an earlier file, a count kept wrong while the
    # triggers were off), it runs over every file instead. A play of a file the manifest does
    # not have counts as one more file that does not match.
    "songplays per file match the manifest": {
        "every_row": """
        SELECT count(*) FROM (SELECT file_id, loaded FROM load_manifest WHERE kind = 'log') m
        FULL JOIN (SELECT file_id, count(*) AS n FROM songplays GROUP BY file_id) p
            USING (file_id)
        WHERE coalesce(m.loaded, 0) <> coalesce(p.n, 0) OR m.file_id IS NULL""",
        "constraints": [],
        "this_run": """
        SELECT count(*) FROM load_manifest m
        WHERE m.kind = 'log' AND m.run_id = %(run_id)s
          AND m.loaded <> (SELECT count(*) FROM songplays p WHERE p.file_id = m.file_id)""",
        "others_differ": """
        SELECT (SELECT coalesce(sum(loaded), 0) FROM load_manifest
                WHERE kind = 'log' AND run_id <> %(run_id)s)
               IS DISTINCT FROM
               (SELECT row_count FROM row_counts WHERE table_name = 'songplays')
               - (SELECT count(*) FROM songplays
                  WHERE file_id IN (SELECT file_id FROM load_manifest
                                    WHERE kind = 'log' AND run_id = %(run_id)s))""",
    },
}

# The constraints of CHECKS that are in place and validated.
constraints_in_force = """
SELECT conname FROM pg_constraint
WHERE conname = ANY (%(names)s) AND convalidated
  AND conrelid = ANY (SELECT to_regclass(t)::oid FROM unnest(%(tables)s::text[]) AS t)"""

# ---------------------------------------------------------------- the audit (audit.py, test.ipynb)
# The latest run: the folder (or URL) it read, its number and how it ended.
audit_last_run = """
SELECT data_dir, run_id, status FROM load_runs ORDER BY run_id DESC LIMIT 1"""

# The plays the manifest says the log files' loads took.
audit_plays_in_manifest = "SELECT coalesce(sum(loaded), 0) FROM load_manifest WHERE kind = 'log'"

# Each log file's latest load: its content's SHA-256, and the plays and duplicates it took.
audit_log_loads = """
SELECT path, sha256, loaded + duplicates FROM load_manifest WHERE kind = 'log'"""

# The lines each log file's latest load rejected.
audit_rejected_lines = """
SELECT r.path, r.line
FROM load_rejects r JOIN load_manifest m ON m.path = r.path AND m.run_id = r.run_id
WHERE m.kind = 'log' AND r.line IS NOT NULL"""

# ---------------------------------------------------------------- the diagram (erd.py)
# The tables' columns, in order.
catalog_columns = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
FROM unnest(%(tables)s::text[]) WITH ORDINALITY AS t (name, ord)
JOIN pg_class c ON c.oid = to_regclass(t.name)
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY t.ord, a.attnum"""

# Primary keys, unique constraints and foreign keys, columns in key order.
catalog_keys = """
SELECT rel.relname, con.contype,
       ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY AS k (num, i)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.num
             ORDER BY k.i),
       ref.relname,
       ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY AS k (num, i)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.num
             ORDER BY k.i)
FROM pg_constraint con
JOIN pg_class rel ON rel.oid = con.conrelid
LEFT JOIN pg_class ref ON ref.oid = con.confrelid
WHERE con.conrelid = ANY (SELECT to_regclass(t) FROM unnest(%(tables)s::text[]) AS t)
  AND con.contype IN ('p', 'u', 'f')"""

# On Citus: how each of the tables is placed (tables not in pg_dist_partition stay local).
catalog_placement = """
SELECT t.name,
       CASE WHEN p.partmethod = 'h'
            THEN 'distributed on ' || column_to_column_name(p.logicalrelid, p.partkey)
            WHEN p.repmodel = 't' THEN 'reference table'
            ELSE 'local to the coordinator' END
FROM unnest(%(tables)s::text[]) AS t (name)
LEFT JOIN pg_dist_partition p ON p.logicalrelid = to_regclass(t.name)"""
