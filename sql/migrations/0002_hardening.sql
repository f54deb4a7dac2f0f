-- 0002: hardening (version 1 -> 2). Tables, columns and indexes only: `pgdurable init` applies
-- this, then re-applies sql/schema.sql, which replaces every function and view.
--
-- runs: disconnects (lost-connection hand-backs, counted toward max_recoveries) and
--       heartbeat_at (server time of the last claim or heartbeat: restarts cost no recovery).
-- settings: JSON limits for values written through SQL, the clock-shift switch (off).
-- workflows, workers: the registry workers keep current.
-- runs_claim_idx: (queue, workflow, priority, available_at), so a worker reads only what it runs.
-- Functions whose signature or result changed are dropped here and recreated by schema.sql.

alter table pgdurable.runs add column if not exists disconnects integer not null default 0;
alter table pgdurable.runs add column if not exists heartbeat_at timestamptz;

create table if not exists pgdurable.settings (
    id                boolean primary key default true check (id),
    allow_clock_shift boolean not null default false,
    max_value_bytes   integer not null default 33554432,
    max_json_depth    integer not null default 100,
    max_int_digits    integer not null default 1000,
    constraint settings_limits_check check (max_value_bytes between 1024 and 1073741823
        and max_json_depth between 32 and 10000 and max_int_digits between 600 and 4300)
);
insert into pgdurable.settings (id) values (true) on conflict do nothing;

create table if not exists pgdurable.workflows (
    name         text primary key,
    queue_name   text not null,
    updated_at   timestamptz not null
);

create table if not exists pgdurable.workers (
    id           text primary key,
    queues       text[] not null,
    workflows    text[] not null,
    started_at   timestamptz not null,
    last_seen_at timestamptz not null
);

drop index if exists pgdurable.runs_claim_idx;
create index runs_claim_idx
    on pgdurable.runs (queue_name, workflow_name, priority desc, available_at)
    where status = 'pending';

drop function if exists pgdurable.claim_runs(text, text[], integer, double precision);
drop function if exists pgdurable.claim_run(uuid, text, double precision);
drop function if exists pgdurable._take_runs(uuid[], text, double precision);
drop function if exists pgdurable.release_run(uuid, integer, text, double precision);
drop function if exists pgdurable.gc_runs(interval, integer);
