-- 0004: flow control and schedules (version 3 -> 4). Tables, columns and indexes only:
-- `pgdurable init` applies this, then re-applies sql/schema.sql, which adds configure_queue,
-- pause_queue, resume_queue, reset_queue, the limited path of claim_runs / claim_run, the start
-- options concurrency_key and dedup_key, and the schedule functions (upsert_schedule,
-- due_schedules, fire_schedule, trigger_schedule, pause/resume/delete_schedule).
--
-- runs.concurrency_key, dedup_key, debounce_key, debounce_until: new, null for every existing
-- run (no limits change).
-- queues, queue_keys: new and empty: every existing queue stays unlimited.
-- schedules, retention: new and empty.
-- settings.retention: new, '30 days': retention is on by default from this version on (set it
-- to null to keep finished runs forever, as before).
-- The three indexes are partial and start small (running runs; pending runs with a key;
-- unfinished runs with a dedup key).

alter table pgdurable.runs add column if not exists concurrency_key text;
alter table pgdurable.runs add column if not exists dedup_key text;
alter table pgdurable.runs add column if not exists debounce_key text;
alter table pgdurable.runs add column if not exists debounce_until timestamptz;
alter table pgdurable.runs add column if not exists pause_requested boolean not null default false;
-- a new status, 'paused' (pause_run): re-creating the check reads every run once, under the
-- upgrade's lock
alter table pgdurable.runs drop constraint if exists runs_status_check;
alter table pgdurable.runs add constraint runs_status_check check (status in
    ('pending', 'running', 'sleeping', 'waiting', 'paused', 'completed', 'failed',
     'cancelled'));
-- heartbeat also returns pause_requested: its result type changes, so schema.sql re-creates it
drop function if exists pgdurable.heartbeat(text, uuid[], integer[], double precision);

-- the dashboard's runs page pages by (created_at, id): built once here, on every run
create index if not exists runs_created_idx
    on pgdurable.runs (created_at, id);
create index if not exists runs_running_idx
    on pgdurable.runs (queue_name, concurrency_key)
    where status = 'running';
create index if not exists runs_pending_key_idx
    on pgdurable.runs (queue_name, concurrency_key, created_at)
    where status = 'pending' and concurrency_key is not null;
create unique index if not exists runs_debounce_idx
    on pgdurable.runs (queue_name, workflow_name, debounce_key)
    where debounce_key is not null and status = 'pending';
create unique index if not exists runs_dedup_idx
    on pgdurable.runs (queue_name, dedup_key)
    where dedup_key is not null
      and status in ('pending', 'running', 'sleeping', 'waiting', 'paused');

create table if not exists pgdurable.queues (
    name             text primary key,
    concurrency      integer,
    key_concurrency  integer not null default 1,
    key_fifo         boolean not null default false,
    rate_count       integer,
    rate_period      interval,
    key_rate_count   integer,
    key_rate_period  interval,
    paused           boolean not null default false,
    recent           timestamptz[] not null default '{}',
    created_at       timestamptz not null,
    updated_at       timestamptz not null,
    constraint queues_name_check check (name ~ '^[A-Za-z0-9_.:-]{1,100}$'),
    constraint queues_limits_check check (
        coalesce(concurrency, 0) between 0 and 1000000
        and key_concurrency between 1 and 1000000
        and coalesce(rate_count, 1) between 1 and 10000
        and coalesce(key_rate_count, 1) between 1 and 10000
        and (rate_count is null) = (rate_period is null)
        and (key_rate_count is null) = (key_rate_period is null)
        and coalesce(rate_period, interval '1 second') > interval '0'
        and coalesce(key_rate_period, interval '1 second') > interval '0')
);

create table if not exists pgdurable.queue_keys (
    queue_name       text not null,
    concurrency_key  text not null,
    recent           timestamptz[] not null default '{}',
    constraint queue_keys_pkey primary key (queue_name, concurrency_key)
);

create table if not exists pgdurable.schedules (
    name           text primary key,
    workflow_name  text not null,
    cron           text not null,
    timezone       text not null default 'UTC',
    input          jsonb not null default '{"args": [], "kwargs": {}}',
    queue_name     text,
    catchup        text not null default 'latest',
    catchup_max    integer not null default 100,
    overlap        text not null default 'allow',
    paused         boolean not null default false,
    -- the next tick to fire; null: a worker computes it (new, changed or resumed schedule)
    next_fire_at   timestamptz,
    last_fire_at   timestamptz,
    last_run_id    uuid,
    created_at     timestamptz not null,
    updated_at     timestamptz not null,
    constraint schedules_name_check check (name ~ '^[A-Za-z_][A-Za-z0-9_.:<>-]{0,199}$'),
    constraint schedules_catchup_check check (catchup in ('skip', 'latest', 'all')
        and catchup_max between 1 and 10000),
    constraint schedules_overlap_check check (overlap in ('allow', 'skip', 'queue'))
);
create index if not exists schedules_due_idx on pgdurable.schedules (next_fire_at) where not paused;

alter table pgdurable.settings add column if not exists retention interval default '30 days';

create table if not exists pgdurable.retention (
    kind        text not null,
    name        text not null,
    keep        interval,
    updated_at  timestamptz not null,
    constraint retention_pkey primary key (kind, name),
    constraint retention_kind_check check (kind in ('workflow', 'queue')),
    constraint retention_keep_check check (keep is null or keep >= interval '0')
);

-- deleting a run's messages (gc_runs, purge_expired) looked up every consumed message
create index if not exists messages_run_idx on pgdurable.messages (run_id);
