-- 0004: flow control (version 3 -> 4). Tables, columns and indexes only: `pgdurable init`
-- applies this, then re-applies sql/schema.sql, which adds configure_queue, pause_queue,
-- resume_queue, the limited path of claim_runs / claim_run and the start options
-- concurrency_key and dedup_key.
--
-- runs.concurrency_key, runs.dedup_key: new, null for every existing run (no limits change).
-- queues, queue_keys: new and empty: every existing queue stays unlimited.
-- The three indexes are partial and start small (running runs; pending runs with a key;
-- unfinished runs with a dedup key).

alter table pgdurable.runs add column if not exists concurrency_key text;
alter table pgdurable.runs add column if not exists dedup_key text;

create index if not exists runs_running_idx
    on pgdurable.runs (queue_name, concurrency_key)
    where status = 'running';
create index if not exists runs_pending_key_idx
    on pgdurable.runs (queue_name, concurrency_key, created_at)
    where status = 'pending' and concurrency_key is not null;
create unique index if not exists runs_dedup_idx
    on pgdurable.runs (queue_name, dedup_key)
    where dedup_key is not null and status in ('pending', 'running', 'sleeping', 'waiting');

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
