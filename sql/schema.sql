-- pgdurable schema, version 5. Durable execution on PostgreSQL alone.
--
-- Tables (schema pgdurable):
--   runs            one row per workflow run: identity, input/output/error, status, lease, timing
--   checkpoints     one row per completed durable operation of a run, keyed by (run_id, step_key)
--   timers          when a sleeping or waiting run must wake (sleep end, retry, wait timeout)
--   events          named durable events; waiters read them by name
--   messages        per-run mailbox, FIFO per topic, each message consumed exactly once
--   streams         values a run appends under a key, read live from any offset, then closed
--   workflows       the registry: each workflow name workers serve, with its default queue
--   workers         live workers: their queues and workflows, last seen (registry heartbeat)
--   queues          flow control per queue: concurrency, per-key limits, rate windows, pause
--   queue_keys      the rate window of each concurrency key of a queue with a per-key rate
--   schedules       cron workflows: cron, time zone, input, policies, next and last tick
--   retention       how long finished runs of a workflow or queue are kept
--   audit_log       who did what, from the dashboard or the CLI (record_action)
--   settings        one row: limits on JSON written through SQL, the clock-shift switch, the
--                   default retention
--   clock           one row: the offset added to now() (tests shift time instead of sleeping)
--   schema_version  the versions applied by `pgdurable init`
--
-- A run's lifecycle:
--   start_run       inserts it 'pending' (available_at = now + delay) and NOTIFYs its queue.
--   claim_runs      moves due timers' runs and expired leases back to 'pending' (tick), then takes
--                   up to N pending runs of the worker's queues AND workflows FOR UPDATE SKIP
--                   LOCKED: status 'running', attempt + 1 (the fencing token), a lease.
--   record_checkpoint  (fenced by run id + attempt) stores one completed operation.
--   sleep_run / wait_* suspend it ('sleeping' / 'waiting') with a timer; it holds no worker.
--   schedule_retry  suspends it until a step's next retry.
--   complete_run / fail_run end it; release_run hands it back ('pending').
--   heartbeat       extends every lease of a worker in one statement.
--   write_stream / close_stream (fenced) append to a run's streams; read_stream reads them.
--   cancel_run, resume_run, retry_run, fork_run, gc_runs operate on it from anywhere.
--   A configured queue's claims lock its row and count before taking (_limited_claim);
--   workers fire schedules (due_schedules, fire_schedule) and purge expired runs
--   (purge_expired) from their listener thread.
-- Every worker write is fenced: it locks the run row FOR SHARE (a stream write: FOR KEY SHARE)
-- and checks (id, attempt, status 'running'); a worker whose lease was taken over gets SQLSTATE
-- PD002 and rolls back.
--
-- Trust: every function pins search_path; the API functions are SECURITY DEFINER and
-- sql/roles.sql grants them to the roles pgdurable_client / _worker / _admin (docs/security.md).
-- Errors raised here use SQLSTATE class PD:
--   PD001 run not found      PD002 lease lost (fenced)   PD003 invalid input
--   PD004 invalid option     PD005 cancel requested      PD006 wrong state for this call
--   PD007 workflow_id conflict                           PD008 clock shifting is disabled
-- This file is idempotent: applying it twice changes nothing. Upgrades from an older version
-- run sql/migrations/ first (tables), then this file (functions and views).

create schema if not exists pgdurable;

create table if not exists pgdurable.schema_version (
    version    integer primary key,
    applied_at timestamptz not null default now()
);

create table if not exists pgdurable.clock (
    id     boolean primary key default true check (id),
    offset_interval interval not null default '0'
);
insert into pgdurable.clock (id) values (true) on conflict do nothing;

-- Limits on JSON values written through SQL (start_run input, event and message payloads) and
-- the switch that lets shift_clock move engine time (tests only: it would expire every lease).
create table if not exists pgdurable.settings (
    id                boolean primary key default true check (id),
    allow_clock_shift boolean not null default false,
    max_value_bytes   integer not null default 33554432,
    max_json_depth    integer not null default 100,
    max_int_digits    integer not null default 1000,
    -- finished runs are deleted this long after they finished (null: kept forever), unless a
    -- rule in pgdurable.retention says otherwise for their workflow or queue
    retention         interval default '30 days',
    constraint settings_limits_check check (max_value_bytes between 1024 and 1073741823
        and max_json_depth between 32 and 10000 and max_int_digits between 600 and 4300)
);
insert into pgdurable.settings (id) values (true) on conflict do nothing;

create table if not exists pgdurable.runs (
    id                     uuid primary key,
    workflow_id            text not null,
    workflow_name          text not null,
    queue_name             text not null default 'default',
    status                 text not null,
    priority               integer not null default 0,
    input                  jsonb not null,
    output                 jsonb,
    error                  jsonb,
    attempt                integer not null default 0,
    recoveries             integer not null default 0,
    max_recoveries         integer not null default 10,
    worker_id              text,
    lease_expires_at       timestamptz,
    available_at           timestamptz not null,
    parent_id              uuid,
    deadline_at            timestamptz,
    cancel_requested       boolean not null default false,
    wait_for               text,
    retry_step_key         text,
    retry_step_attempts    integer not null default 0,
    note                   text,
    created_at             timestamptz not null,
    started_at             timestamptz,
    updated_at             timestamptz not null,
    finished_at            timestamptz,
    -- hand-backs after a lost connection; they count toward max_recoveries with recoveries
    disconnects            integer not null default 0,
    -- server time (not engine time) of the last claim or heartbeat: a lease that lapsed while
    -- the server restarted is not the run's fault and costs it no recovery
    heartbeat_at           timestamptz,
    -- flow control (docs/flow-control.md): the key a queue's per-key limits apply to, and the
    -- key under which a second start returns the unfinished run instead of a new one
    concurrency_key        text,
    dedup_key              text,
    -- debounce: starts with this key while the run is pending collapse into it (latest input
    -- wins, its start moves back), at the latest until debounce_until
    debounce_key           text,
    debounce_until         timestamptz,
    -- pause_run on a running run: its worker parks it ('paused') at its next durable operation
    pause_requested        boolean not null default false,
    -- the W3C trace context ({"traceparent", "tracestate"}) of the code that started the run:
    -- each attempt's span continues that trace, on whichever worker, however much later
    trace_context          jsonb,
    constraint runs_workflow_id_key unique (workflow_id),
    constraint runs_status_check check (status in
        ('pending', 'running', 'sleeping', 'waiting', 'paused', 'completed', 'failed',
         'cancelled')),
    constraint runs_lease_check check ((status = 'running') = (lease_expires_at is not null))
);
-- Claims read only pending rows; finished history never enters these indexes.
-- One ordered scan per (queue, workflow) a worker serves: a worker never reads runs it cannot
-- execute, however deep another app's backlog on the same queue.
create index if not exists runs_claim_idx
    on pgdurable.runs (queue_name, workflow_name, priority desc, available_at)
    where status = 'pending';
create index if not exists runs_lease_idx
    on pgdurable.runs (lease_expires_at)
    where status = 'running';
create index if not exists runs_parent_idx
    on pgdurable.runs (parent_id)
    where parent_id is not null;
create index if not exists runs_waiting_idx
    on pgdurable.runs (wait_for)
    where status = 'waiting';
create index if not exists runs_deadline_idx
    on pgdurable.runs (deadline_at)
    where deadline_at is not null and finished_at is null;
create index if not exists runs_finished_idx
    on pgdurable.runs (finished_at)
    where finished_at is not null;
-- The runs page of the dashboard and `pgdurable runs`: newest first, keyset-paginated.
create index if not exists runs_created_idx
    on pgdurable.runs (created_at, id);
-- What a limited queue's claim counts: its running runs, per concurrency key.
create index if not exists runs_running_idx
    on pgdurable.runs (queue_name, concurrency_key)
    where status = 'running';
-- FIFO within a key: the oldest pending run of a key goes first.
create index if not exists runs_pending_key_idx
    on pgdurable.runs (queue_name, concurrency_key, created_at)
    where status = 'pending' and concurrency_key is not null;
-- One collecting run per (queue, workflow, debounce_key); its first claim clears the key.
create unique index if not exists runs_debounce_idx
    on pgdurable.runs (queue_name, workflow_name, debounce_key)
    where debounce_key is not null and status = 'pending';
-- One unfinished run per (queue, dedup_key): a second start returns it.
create unique index if not exists runs_dedup_idx
    on pgdurable.runs (queue_name, dedup_key)
    where dedup_key is not null
      and status in ('pending', 'running', 'sleeping', 'waiting', 'paused');

-- Flow control per queue (docs/flow-control.md). A queue without a row has no limits. Claims of
-- a queue with a row lock it (FOR UPDATE) before counting, so limits hold exactly across
-- workers: see "Flow control" in docs/architecture.md.
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
    -- engine times of this queue's claims within the last rate_period (the sliding window)
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

-- Per-key sliding windows of the queues with a key_rate_count.
create table if not exists pgdurable.queue_keys (
    queue_name       text not null,
    concurrency_key  text not null,
    recent           timestamptz[] not null default '{}',
    constraint queue_keys_pkey primary key (queue_name, concurrency_key)
);

create table if not exists pgdurable.checkpoints (
    run_id       uuid not null,
    step_key     text not null,
    seq          integer not null,
    kind         text not null,
    step_name    text not null,
    output       jsonb,
    error        jsonb,
    attempts     integer not null default 1,
    run_attempt  integer not null,
    started_at   timestamptz,
    completed_at timestamptz not null,
    constraint checkpoints_pkey primary key (run_id, step_key),
    constraint checkpoints_kind_check check (kind in
        ('step', 'transaction', 'sleep', 'event', 'message', 'child', 'result', 'value', 'send',
         'emit', 'patch', 'compensate', 'stream'))
);

-- The registry workers keep current: what they serve, so SQL starts find a workflow's queue
-- and runs nobody serves are visible (view unserved_runs) instead of silently pending.
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

create table if not exists pgdurable.timers (
    run_id    uuid primary key,
    fire_at   timestamptz not null,
    reason    text not null,
    -- for a wait's timeout: the checkpoint that records it when the timer fires
    step_key  text,
    seq       integer,
    kind      text,
    step_name text
);
create index if not exists timers_fire_idx on pgdurable.timers (fire_at);

create table if not exists pgdurable.events (
    id         bigint generated always as identity primary key,
    name       text not null,
    payload    jsonb not null,
    created_at timestamptz not null
);
create index if not exists events_name_idx on pgdurable.events (name, id);

create table if not exists pgdurable.messages (
    id          bigint generated always as identity primary key,
    run_id      uuid not null,
    topic       text not null default '',
    payload     jsonb not null,
    created_at  timestamptz not null,
    consumed_at timestamptz
);
create index if not exists messages_unconsumed_idx
    on pgdurable.messages (run_id, topic, id)
    where consumed_at is null;
-- A run's messages, consumed or not: what deleting a run (gc, retention) looks up.
create index if not exists messages_run_idx on pgdurable.messages (run_id);

-- Durable streams: the values a run appends under stream_key, offset seq = 0, 1, 2 ... A last
-- row with closed = true (and no value) ends the stream. origin names the durable operation
-- that wrote a value ('<checkpoint seq>:<n>' from the SDK), so a replayed or retried write is
-- recognised and skipped instead of appended twice.
create table if not exists pgdurable.streams (
    run_id      uuid not null,
    stream_key  text not null,
    seq         integer not null,
    value       jsonb,
    closed      boolean not null default false,
    origin      text,
    created_at  timestamptz not null,
    constraint streams_pkey primary key (run_id, stream_key, seq),
    constraint streams_origin_key unique (run_id, stream_key, origin),
    constraint streams_closed_check check (closed = (value is null))
);

-- Recurring workflows (docs/schedules.md). Workers fire them: each firing locks the row (SKIP
-- LOCKED), computes the due ticks from cron in the SDK (cronsim) against engine time, and calls
-- fire_schedule, which starts one run per tick under the workflow id schedule:<name>:<tick>, so
-- a tick fired twice (two workers, a retry) still makes one run.
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

-- Retention per workflow or queue: overrides settings.retention (keep null: forever).
create table if not exists pgdurable.retention (
    kind        text not null,
    name        text not null,
    keep        interval,
    updated_at  timestamptz not null,
    constraint retention_pkey primary key (kind, name),
    constraint retention_kind_check check (kind in ('workflow', 'queue')),
    constraint retention_keep_check check (keep is null or keep >= interval '0')
);

-- Who did what, from the dashboard or the CLI: one row per action taken (record_action).
-- Kept until deleted: retention and gc never touch it.
create table if not exists pgdurable.audit_log (
    id       bigint generated always as identity primary key,
    at       timestamptz not null,
    actor    text not null,
    action   text not null,
    run_id   uuid,
    target   text,
    detail   jsonb,
    constraint audit_log_actor_check check (length(actor) between 1 and 200),
    constraint audit_log_action_check check (action ~ '^[a-z_]{1,50}$')
);
create index if not exists audit_log_run_idx on pgdurable.audit_log (run_id, at)
    where run_id is not null;
create index if not exists audit_log_at_idx on pgdurable.audit_log (at);

-- Engine time. Every function below reads the clock through this, so tests can shift it.
-- PL/pgSQL on purpose: a SQL function with a sub-select is never inlined, so it was planned
-- afresh in every statement (~30 us per call on the hot path); PL/pgSQL caches the plan.
create or replace function pgdurable.now() returns timestamptz
language plpgsql stable security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
begin
    return now() + (select offset_interval from pgdurable.clock where id);
end $$;

-- Called by tests: moves engine time by p_by (cumulative) and returns the new now(). Refused
-- (PD008) unless settings.allow_clock_shift is on: in production it would expire every lease.
create or replace function pgdurable.shift_clock(p_by interval) returns timestamptz
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
begin
    if not (select allow_clock_shift from pgdurable.settings where id) then
        raise exception 'shifting the engine clock is disabled in this database'
            using errcode = 'PD008',
                  hint = 'it is a test facility; enable it with: update pgdurable.settings set allow_clock_shift = true';
    end if;
    if p_by is null then
        raise exception 'shift_clock needs an interval, got NULL' using errcode = 'PD004';
    end if;
    update pgdurable.clock set offset_interval = offset_interval + p_by where id;
    return now() + (select offset_interval from pgdurable.clock where id);
end $$;

-- Internal: raises PD003 when a JSON value written through SQL breaks the limits in settings
-- (size, nesting depth, integer digits), so no reader ever has to decode it. Values too small
-- to break any limit skip the scan.
create or replace function pgdurable._check_json(p_value jsonb, p_what text) returns void
language plpgsql stable
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_size integer := pg_column_size(p_value);
    v_limits pgdurable.settings%rowtype;
    v_problem text;
begin
    if v_size is null or v_size <= 200 then
        return;
    end if;
    select * into v_limits from pgdurable.settings where id;
    if v_size > v_limits.max_value_bytes then
        v_problem := format('is %s bytes, over the limit of %s', v_size, v_limits.max_value_bytes);
    else
        begin
            if jsonb_path_exists(p_value, format('strict $.**{%s to last}',
                                                 v_limits.max_json_depth + 1)::jsonpath) then
                v_problem := format('is nested deeper than %s levels', v_limits.max_json_depth);
            elsif jsonb_path_exists(p_value, format(
                    'strict $.** ? (@.type() == "number" && (@ >= 1e%s || @ <= -1e%s))',
                    v_limits.max_int_digits, v_limits.max_int_digits)::jsonpath) then
                v_problem := format('holds a number of more than %s digits', v_limits.max_int_digits);
            end if;
        exception when statement_too_complex or program_limit_exceeded then
            v_problem := 'is nested too deeply to inspect';
        end;
    end if;
    if v_problem is not null then
        raise exception '% %', p_what, v_problem
            using errcode = 'PD003',
                  hint = 'store large or deep data elsewhere and pass a reference; the limits are in pgdurable.settings';
    end if;
end $$;

-- Internal: raises PD004 unless p_lease is a lease length a worker can keep: (0, 1 day].
create or replace function pgdurable._check_lease(p_lease double precision) returns void
language plpgsql immutable
set search_path = pg_catalog, pgdurable, pg_temp
as $$
begin
    if not (p_lease > 0 and p_lease <= 86400) then
        raise exception 'lease must be more than 0 and at most 86400 seconds, got %', p_lease
            using errcode = 'PD004';
    end if;
end $$;

-- Internal: raises PD004 unless p_value is a number of seconds in [0, 100 years] (NaN,
-- infinities and absurd values would fail later as "interval out of range").
create or replace function pgdurable._check_seconds(p_value double precision, p_what text)
returns double precision
language plpgsql immutable
set search_path = pg_catalog, pgdurable, pg_temp
as $$
begin
    -- NaN sorts above every number in PostgreSQL, so it fails the range test too
    if p_value is not null and not (p_value between 0 and 3155760000) then
        raise exception '% must be a number of seconds between 0 and 3155760000 (100 years), got %',
            p_what, p_value
            using errcode = 'PD004';
    end if;
    return p_value;
end $$;

-- Internal: the error raised when a worker's fencing token is stale.
create or replace function pgdurable._fence(p_run_id uuid, p_attempt integer) returns void
language plpgsql
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_run pgdurable.runs%rowtype;
begin
    select * into v_run from pgdurable.runs where id = p_run_id for share;
    if not found then
        raise exception 'run % does not exist', p_run_id using errcode = 'PD001';
    end if;
    if v_run.attempt <> p_attempt or v_run.status <> 'running' then
        raise exception 'lease lost on run % (this worker holds attempt %, the run is % at attempt %)',
            p_run_id, p_attempt, v_run.status, v_run.attempt
            using errcode = 'PD002',
                  hint = 'another worker took the run over; this worker must stop executing it';
    end if;
    if v_run.cancel_requested then
        raise exception 'run % was cancelled', p_run_id using errcode = 'PD005';
    end if;
end $$;

-- Internal: makes every run waiting on p_wait_for ('event:NAME', 'message:RUN:TOPIC',
-- 'run:ID') pending again, drops its timeout timer and wakes the workers of its queue.
create or replace function pgdurable._wake_waiters(p_wait_for text) returns integer
language plpgsql
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
    v_run record;
    v_n integer := 0;
begin
    for v_run in
        update pgdurable.runs
           set status = 'pending', available_at = v_now, updated_at = v_now, wait_for = null
         where status = 'waiting' and wait_for = p_wait_for
        returning id, queue_name
    loop
        delete from pgdurable.timers where run_id = v_run.id;
        perform pg_notify('pgdurable_wake', v_run.queue_name);
        v_n := v_n + 1;
    end loop;
    return v_n;
end $$;

-- Internal: called whenever a run ends: wakes result() waiters (NOTIFY pgdurable_done) and any
-- workflow durably waiting for this run (a parent in handle.result() or gather()).
create or replace function pgdurable._run_finished(p_run_id uuid) returns void
language plpgsql
set search_path = pg_catalog, pgdurable, pg_temp
as $$
begin
    perform pg_notify('pgdurable_done', p_run_id::text);
    if exists (select 1 from pgdurable.runs where status = 'waiting' and wait_for = 'run:' || p_run_id) then
        perform pgdurable._wake_waiters('run:' || p_run_id);
    end if;
end $$;

-- Internal: suspends a running run until p_wait_for is woken by _wake_waiters, or until
-- p_timeout seconds after the wait first began, when tick() records the timeout as the
-- checkpoint (p_seq, p_key, p_kind, p_name). A replayed wait keeps its first deadline.
create or replace function pgdurable._suspend_waiting(
    p_run_id uuid, p_wait_for text, p_timeout double precision,
    p_seq integer, p_key text, p_kind text, p_name text
) returns void
language plpgsql
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
begin
    update pgdurable.runs
       set status = 'waiting', wait_for = p_wait_for, lease_expires_at = null, worker_id = null,
           updated_at = v_now, note = null
     where id = p_run_id;
    if p_timeout is not null then
        insert into pgdurable.timers (run_id, fire_at, reason, step_key, seq, kind, step_name)
        values (p_run_id, v_now + make_interval(secs => greatest(p_timeout, 0)), 'timeout',
                p_key, p_seq, p_kind, p_name)
        on conflict (run_id) do nothing;
    end if;
end $$;

-- Internal: raises PD003 unless p_input is a run's input, {"args": [...], "kwargs": {...}},
-- within the limits in settings. p_what names whose input it is (workflow X, schedule Y).
create or replace function pgdurable._check_input(p_input jsonb, p_what text) returns void
language plpgsql
set search_path = pg_catalog, pgdurable, pg_temp
as $$
begin
    if p_input is null or jsonb_typeof(p_input) <> 'object'
       or jsonb_typeof(coalesce(p_input -> 'args', '[]')) <> 'array'
       or jsonb_typeof(coalesce(p_input -> 'kwargs', '{}')) <> 'object'
       or exists (select 1 from jsonb_object_keys(p_input) k where k not in ('args', 'kwargs')) then
        raise exception 'invalid input for %: %', p_what, coalesce(p_input::text, 'NULL')
            using errcode = 'PD003',
                  hint = 'pass a JSON object {"args": [...], "kwargs": {...}}';
    end if;
    perform pgdurable._check_json(p_input, format('input of %s', p_what));
end $$;

-- Internal: checks a start's workflow name and options (PD003, PD004) and returns what every
-- run they start gets, as a runs row: queue, priority, max_recoveries, available_at (now +
-- delay or debounce), parent_id, deadline_at, note (unregistered workflow), the flow-control
-- keys and debounce_until. Identity (id, workflow_id) and input are the caller's.
create or replace function pgdurable._start_settings(
    p_workflow_name text, p_options jsonb, p_now timestamptz
) returns pgdurable.runs
language plpgsql
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v pgdurable.runs%rowtype;
    v_bad text;
    v_delay double precision;
    v_timeout double precision;
    v_max_wait double precision;
    v_parent pgdurable.runs%rowtype;
    v_registered boolean;
begin
    if p_workflow_name is null or p_workflow_name !~ '^[A-Za-z_][A-Za-z0-9_.:<>-]{0,199}$' then
        raise exception 'invalid workflow name %', coalesce(quote_literal(p_workflow_name), 'NULL')
            using errcode = 'PD003',
                  hint = 'use the registered name: letters, digits and _ . : < > -, at most 200 characters';
    end if;
    if p_options is null or jsonb_typeof(p_options) <> 'object' then
        raise exception 'options must be a JSON object, got %', coalesce(p_options::text, 'NULL')
            using errcode = 'PD004';
    end if;
    select string_agg(k, ', ') into v_bad from jsonb_object_keys(p_options) k
        where k not in ('workflow_id', 'queue', 'priority', 'delay', 'on_conflict', 'parent_id',
                        'max_recoveries', 'timeout', 'require_registered', 'concurrency_key',
                        'dedup_key', 'debounce', 'debounce_key', 'debounce_max_wait',
                        'trace_context');
    if v_bad is not null then
        raise exception 'unknown start option(s): %', v_bad
            using errcode = 'PD004',
                  hint = 'valid options: workflow_id, queue, priority, delay, on_conflict, parent_id, max_recoveries, timeout, require_registered, concurrency_key, dedup_key, debounce, debounce_key, debounce_max_wait, trace_context';
    end if;
    if (p_options ? 'debounce') <> (p_options ? 'debounce_key')
       or p_options ? 'debounce_max_wait' and not p_options ? 'debounce'
       or p_options ? 'debounce' and (p_options ? 'workflow_id' or p_options ? 'delay')
       or jsonb_typeof(p_options -> 'debounce_key') not in ('string')
       or length(p_options ->> 'debounce_key') not between 1 and 500 then
        raise exception 'invalid debounce options %', p_options
            using errcode = 'PD004',
                  hint = 'debounce (seconds) goes with a debounce_key of 1 to 500 characters, optionally debounce_max_wait (seconds), and without workflow_id or delay: the starts collapse into one run';
    end if;
    if jsonb_typeof(p_options -> 'concurrency_key') not in ('string', 'null')
       or jsonb_typeof(p_options -> 'dedup_key') not in ('string', 'null')
       or length(p_options ->> 'concurrency_key') not between 1 and 500
       or length(p_options ->> 'dedup_key') not between 1 and 500 then
        raise exception 'invalid start options %', p_options
            using errcode = 'PD004',
                  hint = 'concurrency_key and dedup_key are strings of 1 to 500 characters';
    end if;
    if p_options ? 'trace_context'
       and (jsonb_typeof(p_options -> 'trace_context') <> 'object'
            or length((p_options -> 'trace_context')::text) > 2000) then
        raise exception 'invalid trace_context %', left((p_options -> 'trace_context')::text, 200)
            using errcode = 'PD004',
                  hint = 'trace_context is a JSON object of W3C trace headers (traceparent, tracestate), at most 2000 characters';
    end if;
    v.trace_context := p_options -> 'trace_context';
    -- no queue given: the queue the workflow's workers registered, else 'default'
    v.queue_name := p_options ->> 'queue';
    if v.queue_name is null then
        select w.queue_name into v.queue_name from pgdurable.workflows w where w.name = p_workflow_name;
        v_registered := found;
        v.queue_name := coalesce(v.queue_name, 'default');
    end if;
    if v.queue_name !~ '^[A-Za-z0-9_.:-]{1,100}$' then
        raise exception 'invalid queue name %', quote_literal(v.queue_name)
            using errcode = 'PD004',
                  hint = 'queue names use letters, digits and _ . : -, 1 to 100 characters';
    end if;
    if coalesce(p_options ->> 'on_conflict', 'return') not in ('return', 'raise') then
        raise exception 'on_conflict must be ''return'' or ''raise'', got %', p_options ->> 'on_conflict'
            using errcode = 'PD004';
    end if;
    begin
        v_delay := coalesce((p_options ->> 'delay')::double precision,
                            (p_options ->> 'debounce')::double precision, 0);
        v_timeout := (p_options ->> 'timeout')::double precision;
        v_max_wait := (p_options ->> 'debounce_max_wait')::double precision;
        if not coalesce(v_max_wait between 0 and 3155760000, true)
           or p_options ? 'debounce' and not v_delay > 0 then
            raise exception using errcode = '22023';
        end if;
        -- NaN sorts above every number in PostgreSQL: the range tests reject it too
        if not (v_delay between 0 and 3155760000)
           or not coalesce(v_timeout > 0 and v_timeout <= 3155760000, true)
           or (p_options ->> 'priority')::integer is null and p_options ? 'priority'
           or (p_options ->> 'max_recoveries')::integer < 0 then
            raise exception using errcode = '22023';
        end if;
        if p_options ? 'parent_id' then
            select * into v_parent from pgdurable.runs where id = (p_options ->> 'parent_id')::uuid;
            if not found then
                raise exception using errcode = '22023';
            end if;
        end if;
        v.priority := coalesce((p_options ->> 'priority')::integer, 0);
        v.max_recoveries := coalesce((p_options ->> 'max_recoveries')::integer, 10);
    exception when others then
        raise exception 'invalid start options %', p_options
            using errcode = 'PD004',
                  hint = 'delay and timeout are seconds (0 <= delay, 0 < timeout, both at most 100 years), priority and max_recoveries integers, parent_id an existing run id';
    end;
    v.workflow_name := p_workflow_name;
    v.available_at := p_now + make_interval(secs => v_delay);
    v.parent_id := v_parent.id;
    v.deadline_at := least(p_now + make_interval(secs => v_timeout), v_parent.deadline_at);
    v.concurrency_key := p_options ->> 'concurrency_key';
    v.dedup_key := p_options ->> 'dedup_key';
    v.debounce_key := p_options ->> 'debounce_key';
    v.debounce_until := p_now + make_interval(secs => v_max_wait);
    if v_registered is null then
        v_registered := exists (select 1 from pgdurable.workflows w where w.name = p_workflow_name);
    end if;
    if not v_registered then
        if coalesce((p_options ->> 'require_registered')::boolean, false) then
            raise exception 'no worker has registered a workflow named %', quote_literal(p_workflow_name)
                using errcode = 'PD003',
                      hint = 'check the name (a typo?); to start it before any worker serving it has run, pass allow_unregistered';
        end if;
        v.note := format('no worker has registered workflow %s yet', p_workflow_name);
    end if;
    -- runs with a concurrency key are limited per key (1 at a time unless configured): their
    -- queue gets a row, which puts its claims on the limited path
    if v.concurrency_key is not null then
        insert into pgdurable.queues (name, created_at, updated_at)
        values (v.queue_name, p_now, p_now)
        on conflict do nothing;
    end if;
    return v;
end $$;

-- Internal: the run id and workflow_id of a start given workflow_id p_key (null: a fresh id,
-- whose text is the workflow_id). A workflow_id shaped like a run id IS the run id, so a lookup
-- by either can never find another run than the one meant.
create or replace function pgdurable._start_identity(p_key text, out run_id uuid, out workflow_id text)
language plpgsql
set search_path = pg_catalog, pgdurable, pg_temp
as $$
begin
    if p_key = '' or length(p_key) > 500 then
        raise exception 'workflow_id must be 1 to 500 characters' using errcode = 'PD004';
    end if;
    if p_key ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
        workflow_id := lower(p_key);
        run_id := workflow_id::uuid;
    else
        run_id := gen_random_uuid();
        workflow_id := coalesce(p_key, run_id::text);
    end if;
end $$;

-- Internal: the run a start whose insert met a unique key belongs to: the one holding its
-- workflow_id (PD007 if that is another workflow's run, or on_conflict = 'raise', or the
-- workflow_id is another run's id).
create or replace function pgdurable._existing_run(
    p_workflow_name text, p_key text, p_options jsonb
) returns uuid
language plpgsql
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_existing pgdurable.runs%rowtype;
begin
    select * into v_existing from pgdurable.runs where workflow_id = p_key;
    if not found then
        raise exception 'workflow_id % is the id of another run', quote_literal(p_key)
            using errcode = 'PD007',
                  hint = 'a workflow_id shaped like a uuid becomes the run id: pick another one';
    end if;
    if p_options ->> 'on_conflict' = 'raise' or v_existing.workflow_name <> p_workflow_name then
        raise exception 'workflow_id % is already used by run % of workflow %', quote_literal(p_key),
            v_existing.id, v_existing.workflow_name
            using errcode = 'PD007',
                  hint = 'pick another workflow_id, or start with on_conflict => ''return'' to get the existing run';
    end if;
    return v_existing.id;
end $$;

-- Called by the SDK and by SQL users to start a workflow run; usable inside the caller's
-- transaction (the run exists only if it commits). Idempotent on workflow_id. Returns the run id.
-- p_input: {"args": [...], "kwargs": {...}}. p_options keys: workflow_id, queue, priority,
-- delay (seconds), on_conflict ('return' | 'raise'), parent_id, max_recoveries, timeout (seconds),
-- require_registered, concurrency_key, dedup_key, debounce, debounce_key, debounce_max_wait,
-- trace_context (W3C headers of the starter's span, {"traceparent": ..., "tracestate": ...}).
create or replace function pgdurable.start_run(
    p_workflow_name text,
    p_input jsonb default '{"args": [], "kwargs": {}}',
    p_options jsonb default '{}'
) returns uuid
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    -- pgdurable.now(), inlined: a call of it costs more than the rest of a common start
    v_now timestamptz := now() + (select c.offset_interval from pgdurable.clock c where c.id);
    v pgdurable.runs%rowtype;
    v_id uuid;
    v_key text;
    v_existing pgdurable.runs%rowtype;
    v_queue text := p_options ->> 'queue';
    v_recoveries text := p_options ->> 'max_recoveries';
begin
    -- The common start (what the SDK sends when no option is set: the queue, perhaps the
    -- recovery cap, a workflow_id and a trace context): checks that cost no lookup, then one
    -- INSERT. Anything else, or anything these checks doubt, takes the full path below, which
    -- explains what is wrong.
    if p_options - 'queue' - 'max_recoveries' - 'workflow_id' - 'trace_context' = '{}'::jsonb
       and coalesce(jsonb_typeof(p_options -> 'trace_context') = 'object'
                    and length((p_options -> 'trace_context')::text) <= 2000, true)
       and v_queue ~ '^[A-Za-z0-9_.:-]{1,100}$'
       and (v_recoveries is null or v_recoveries ~ '^[0-9]{1,9}$')
       and p_workflow_name ~ '^[A-Za-z_][A-Za-z0-9_.:<>-]{0,199}$'
       and jsonb_typeof(p_input) = 'object' and p_input - 'args' - 'kwargs' = '{}'::jsonb
       and jsonb_typeof(coalesce(p_input -> 'args', '[]')) = 'array'
       and jsonb_typeof(coalesce(p_input -> 'kwargs', '{}')) = 'object' then
        if pg_column_size(p_input) > 200 then
            perform pgdurable._check_json(p_input, format('input of workflow %s', p_workflow_name));
        end if;
        if p_options ? 'workflow_id' then
            select i.run_id, i.workflow_id into v_id, v_key
              from pgdurable._start_identity(p_options ->> 'workflow_id') i;
        else
            v_id := gen_random_uuid();
            v_key := v_id::text;
        end if;
        insert into pgdurable.runs (id, workflow_id, workflow_name, queue_name, status, input,
                                    max_recoveries, available_at, note, created_at, updated_at,
                                    trace_context)
        values (v_id, v_key, p_workflow_name, v_queue, 'pending', p_input,
                coalesce(v_recoveries::integer, 10), v_now,
                case when not exists (select from pgdurable.workflows w
                                       where w.name = p_workflow_name)
                     then format('no worker has registered workflow %s yet', p_workflow_name) end,
                v_now, v_now, p_options -> 'trace_context')
        on conflict do nothing;
        if not found then
            return pgdurable._existing_run(p_workflow_name, v_key, p_options);
        end if;
        perform pg_notify('pgdurable_wake', v_queue);
        return v_id;
    end if;

    v := pgdurable._start_settings(p_workflow_name, p_options, v_now);
    perform pgdurable._check_input(p_input, format('workflow %s', p_workflow_name));
    select i.run_id, i.workflow_id into v_id, v_key
      from pgdurable._start_identity(p_options ->> 'workflow_id') i;

    -- debounce: a pending run collecting starts of this key takes the latest input, and its
    -- start moves to the end of the new window (never past its debounce_until)
    if v.debounce_key is not null then
        update pgdurable.runs r
           set input = p_input, updated_at = v_now,
               available_at = least(v.available_at, coalesce(r.debounce_until, 'infinity'))
         where r.queue_name = v.queue_name and r.workflow_name = p_workflow_name
           and r.debounce_key = v.debounce_key and r.status = 'pending'
        returning r.id into v_existing.id;
        if found then
            return v_existing.id;
        end if;
    end if;

    -- no conflict target: a clash on workflow_id, on id (a uuid-shaped workflow_id), on an
    -- unfinished run's dedup_key or a collecting run's debounce_key lands below
    insert into pgdurable.runs (id, workflow_id, workflow_name, queue_name, status, priority, input,
                                max_recoveries, available_at, parent_id, deadline_at, note,
                                created_at, updated_at, concurrency_key, dedup_key,
                                debounce_key, debounce_until, trace_context)
    values (v_id, v_key, p_workflow_name, v.queue_name, 'pending', v.priority, p_input,
            v.max_recoveries, v.available_at, v.parent_id, v.deadline_at, v.note, v_now, v_now,
            v.concurrency_key, v.dedup_key, v.debounce_key, v.debounce_until, v.trace_context)
    on conflict do nothing;

    if found then
        if v.available_at <= v_now then
            perform pg_notify('pgdurable_wake', v.queue_name);
        end if;
        return v_id;
    end if;

    -- a concurrent start of the same debounce key inserted first: collapse into it
    if v.debounce_key is not null then
        update pgdurable.runs r
           set input = p_input, updated_at = v_now,
               available_at = least(v.available_at, coalesce(r.debounce_until, 'infinity'))
         where r.queue_name = v.queue_name and r.workflow_name = p_workflow_name
           and r.debounce_key = v.debounce_key and r.status = 'pending'
        returning r.id into v_existing.id;
        if found then
            return v_existing.id;
        end if;
        raise exception 'the run collecting debounce_key % started while this start ran', quote_literal(v.debounce_key)
            using errcode = '40001',
                  hint = 'retry the start: it now opens a new window';
    end if;

    -- the unfinished run holding the dedup key (if it finished meanwhile, no run is returned
    -- here and the caller's retry starts a new one)
    if v.dedup_key is not null
       and not exists (select from pgdurable.runs r where r.workflow_id = v_key or r.id = v_id) then
        select * into v_existing from pgdurable.runs r
         where r.queue_name = v.queue_name and r.dedup_key = v.dedup_key
           and r.status in ('pending', 'running', 'sleeping', 'waiting', 'paused');
        if found then
            return v_existing.id;
        end if;
        raise exception 'the run holding dedup_key % finished while this start ran', quote_literal(v.dedup_key)
            using errcode = '40001',
                  hint = 'retry the start: it now starts a new run';
    end if;
    return pgdurable._existing_run(p_workflow_name, v_key, p_options);
end $$;

-- Called by the SDK's start_many: starts one run per element of p_inputs in one statement,
-- set-based (one INSERT ... SELECT FROM unnest): the options are checked once and every input
-- before anything is written. p_workflow_ids may be null (ids are generated) or have one key
-- per input; a key that exists returns its run, as start_run does. Returns the run ids in the
-- order of p_inputs. Options that act per start (dedup_key, debounce, a workflow_id for all,
-- on_conflict 'raise') take start_run's path once per input.
create or replace function pgdurable.start_runs(
    p_workflow_name text,
    p_inputs jsonb[],
    p_options jsonb default '{}',
    p_workflow_ids text[] default null
) returns setof uuid
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
    v pgdurable.runs%rowtype;
    i integer;
begin
    if p_workflow_ids is not null and cardinality(p_workflow_ids) <> cardinality(p_inputs) then
        raise exception 'start_runs got % inputs but % workflow ids', cardinality(p_inputs), cardinality(p_workflow_ids)
            using errcode = 'PD003';
    end if;
    if coalesce(cardinality(p_inputs), 0) = 0 then
        perform pgdurable._start_settings(p_workflow_name, p_options, v_now);
        return;
    end if;
    if p_options ?| array['dedup_key', 'debounce', 'workflow_id']
       or p_options ->> 'on_conflict' = 'raise' then
        for i in 1 .. cardinality(p_inputs) loop
            return next pgdurable.start_run(
                p_workflow_name, p_inputs[i],
                case when p_workflow_ids is null then p_options
                     else p_options || jsonb_build_object('workflow_id', p_workflow_ids[i]) end);
        end loop;
        return;
    end if;
    v := pgdurable._start_settings(p_workflow_name, p_options, v_now);
    -- every input checked before anything is written; only those the cheap shape test doubts
    -- or that are large enough to need the limits take _check_input (which says what is wrong)
    perform pgdurable._check_input(t.input, format('workflow %s (start %s)', p_workflow_name, t.n))
       from unnest(p_inputs) with ordinality as t(input, n)
      where not coalesce(jsonb_typeof(t.input) = 'object'
                         and t.input - 'args' - 'kwargs' = '{}'::jsonb
                         and jsonb_typeof(coalesce(t.input -> 'args', '[]')) = 'array'
                         and jsonb_typeof(coalesce(t.input -> 'kwargs', '{}')) = 'object'
                         and pg_column_size(t.input) <= 200, false);
    if p_workflow_ids is null then
        -- fresh ids: nothing to conflict with, so one INSERT and the ids in input order
        return query
            with items as materialized (
                select t.n, t.input, gen_random_uuid() as run_id
                  from unnest(p_inputs) with ordinality as t(input, n)
            ), inserted as (
                insert into pgdurable.runs (id, workflow_id, workflow_name, queue_name, status,
                                            priority, input, max_recoveries, available_at,
                                            parent_id, deadline_at, note, created_at,
                                            updated_at, concurrency_key, trace_context)
                select items.run_id, items.run_id::text, p_workflow_name, v.queue_name,
                       'pending', v.priority, items.input, v.max_recoveries, v.available_at,
                       v.parent_id, v.deadline_at, v.note, v_now, v_now, v.concurrency_key,
                       v.trace_context
                  from items order by items.n
            )
            select items.run_id from items order by items.n;
    else
        if exists (select from unnest(p_workflow_ids) k where k = '' or length(k) > 500) then
            raise exception 'workflow_id must be 1 to 500 characters' using errcode = 'PD004';
        end if;
        -- _start_identity, set-based: a uuid-shaped workflow_id is the run id
        return query
            with keyed as (
                select t.n, t.input,
                       case when t.key ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                            then lower(t.key)::uuid else gen_random_uuid() end as run_id,
                       case when t.key ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                            then lower(t.key) else t.key end as key
                  from unnest(p_inputs, p_workflow_ids) with ordinality as t(input, key, n)
            ), items as materialized (
                select keyed.n, keyed.input, keyed.run_id,
                       coalesce(keyed.key, keyed.run_id::text) as workflow_id
                  from keyed
            ), inserted as (
                insert into pgdurable.runs as r (id, workflow_id, workflow_name, queue_name,
                                                 status, priority, input, max_recoveries,
                                                 available_at, parent_id, deadline_at, note,
                                                 created_at, updated_at, concurrency_key,
                                                 trace_context)
                select items.run_id, items.workflow_id, p_workflow_name, v.queue_name, 'pending',
                       v.priority, items.input, v.max_recoveries, v.available_at, v.parent_id,
                       v.deadline_at, v.note, v_now, v_now, v.concurrency_key, v.trace_context
                  from items order by items.n
                on conflict do nothing
                returning r.id, r.workflow_id
            )
            select coalesce(mine.id, twin.id,
                            pgdurable._existing_run(p_workflow_name, items.workflow_id, p_options))
              from items
              left join inserted mine on mine.id = items.run_id
              -- the same workflow_id twice in one batch: the first start's run
              left join inserted twin on twin.workflow_id = items.workflow_id
             order by items.n;
    end if;
    if v.available_at <= v_now then
        perform pg_notify('pgdurable_wake', v.queue_name);
    end if;
end $$;

-- Internal: takes back a running run (locked by the caller) whose worker is gone: expired lease
-- (tick, claim_run) or lost connection (release_run with p_connection_lost). It counts against
-- max_recoveries (recoveries, or disconnects for a lost connection) unless the server restarted
-- since the worker last touched the run: a restart is not the run's fault. Past the cap the run
-- fails as dead-lettered; else it is pending again after a backoff for repeated disconnects.
create or replace function pgdurable._recover_run(
    p_run pgdurable.runs, p_reason text, p_connection_lost boolean default false
) returns boolean
language plpgsql
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
    v_restart boolean := p_run.heartbeat_at < pg_postmaster_start_time();
    v_recoveries integer := p_run.recoveries;
    v_disconnects integer := p_run.disconnects;
    v_dead boolean;
    v_delay double precision := 0;
begin
    if v_restart then
        p_reason := p_reason || ' (the server restarted: not counted as a recovery)';
    elsif p_connection_lost then
        v_disconnects := v_disconnects + 1;
        -- repeated disconnects of one run back off: 1 s, 2 s, 4 s ... at most a minute
        v_delay := least(60, 2 ^ (v_disconnects - 1));
    else
        v_recoveries := v_recoveries + 1;
    end if;
    v_dead := v_recoveries + v_disconnects > p_run.max_recoveries;
    update pgdurable.runs
       set status = case when v_dead then 'failed' else 'pending' end,
           recoveries = v_recoveries, disconnects = v_disconnects,
           lease_expires_at = null, worker_id = null,
           available_at = v_now + make_interval(secs => v_delay), updated_at = v_now,
           finished_at = case when v_dead then v_now end,
           error = case when v_dead then jsonb_build_object(
               'type', 'DeadLettered',
               'message', format('run exceeded its %s crash recoveries (%s lease expiries, %s lost connections); last: %s',
                                 p_run.max_recoveries, v_recoveries, v_disconnects, p_reason),
               'traceback', null) else error end,
           note = p_reason
     where id = p_run.id;
    if v_dead then
        perform pgdurable._run_finished(p_run.id);
    elsif v_delay = 0 then
        perform pg_notify('pgdurable_wake', p_run.queue_name);
    end if;
    return not v_dead;
end $$;

-- Called by claim_runs (and usable by operators): wakes runs whose timer is due (recording a
-- wait's timeout as its checkpoint), takes back runs whose lease expired (dead-lettering those
-- past max_recoveries) and fails runs past their deadline. Returns the number of runs changed.
create or replace function pgdurable.tick(p_limit integer default 100) returns integer
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
    v_n integer := 0;
    v_t pgdurable.timers%rowtype;
    v_run pgdurable.runs%rowtype;
begin
    for v_t in
        delete from pgdurable.timers t
         where t.run_id in (select run_id from pgdurable.timers where fire_at <= v_now
                            order by fire_at limit p_limit for update skip locked)
        returning t.*
    loop
        if v_t.reason = 'timeout' then
            insert into pgdurable.checkpoints (run_id, step_key, seq, kind, step_name, error,
                                               run_attempt, started_at, completed_at)
            select v_t.run_id, v_t.step_key, v_t.seq, v_t.kind, v_t.step_name,
                   jsonb_build_object(
                       'type', case v_t.kind when 'message' then 'pgdurable.MessageTimeout'
                                             else 'pgdurable.EventTimeout' end,
                       'message', format('%s %s did not arrive by %s', v_t.kind, v_t.step_name, v_t.fire_at),
                       'traceback', null),
                   r.attempt, v_now, v_now
              from pgdurable.runs r where r.id = v_t.run_id and r.status = 'waiting'
            on conflict do nothing;
        end if;
        update pgdurable.runs
           set status = 'pending', available_at = v_now, updated_at = v_now, wait_for = null,
               note = case when v_t.reason = 'timeout' then 'wait timed out' else note end
         where id = v_t.run_id and status in ('sleeping', 'waiting')
        returning * into v_run;
        if found then
            v_n := v_n + 1;
            perform pg_notify('pgdurable_wake', v_run.queue_name);
        end if;
    end loop;

    for v_run in
        select * from pgdurable.runs
         where status = 'running' and lease_expires_at < v_now
         order by lease_expires_at limit p_limit for update skip locked
    loop
        perform pgdurable._recover_run(v_run, format('lease of worker %s expired at %s',
                                                     v_run.worker_id, v_run.lease_expires_at));
        v_n := v_n + 1;
    end loop;

    for v_run in
        select * from pgdurable.runs
         where deadline_at < v_now and finished_at is null
         order by deadline_at limit p_limit for update skip locked
    loop
        update pgdurable.runs
           set status = 'failed', lease_expires_at = null, worker_id = null, wait_for = null,
               finished_at = v_now, updated_at = v_now,
               error = jsonb_build_object('type', 'pgdurable.DeadlineExceeded',
                   'message', format('run passed its deadline %s', v_run.deadline_at),
                   'traceback', null)
         where id = v_run.id;
        delete from pgdurable.timers where run_id = v_run.id;
        v_n := v_n + 1;
        perform pgdurable._run_finished(v_run.id);
    end loop;

    return v_n;
end $$;

-- Called by claim_runs, and by workers whose slots are all busy: runs tick() only when a timer,
-- a lease or a deadline is due, so timers fire even while no worker can claim.
create or replace function pgdurable.tick_due() returns integer
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
begin
    -- min() without parameters: always one step down a partial index. The former
    -- "exists (... where fire_at <= v_now)" got a generic plan that seq-scanned every timer
    -- when none was due (100k sleeping runs made each claim ~4x slower).
    if (select min(fire_at) from pgdurable.timers) <= v_now
       or (select min(r.lease_expires_at) from pgdurable.runs r where r.status = 'running') < v_now
       or (select min(r.deadline_at) from pgdurable.runs r
            where r.deadline_at is not null and r.finished_at is null) < v_now then
        return pgdurable.tick();
    end if;
    return 0;
end $$;

-- Internal: gives the runs p_ids (locked by the caller) to p_worker_id with a lease and returns
-- each with whether it has history (the worker then loads its checkpoints as rows: no single
-- value, however long the history, can make a claim fail).
create or replace function pgdurable._take_runs(
    p_ids uuid[], p_worker_id text, p_lease double precision, p_now timestamptz
) returns table (id uuid, workflow_id text, workflow_name text, queue_name text, input jsonb,
                 attempt integer, deadline_at timestamptz, retry_step_key text,
                 retry_step_attempts integer, has_history boolean, cancel_requested boolean,
                 trace_context jsonb)
language sql
set search_path = pg_catalog, pgdurable, pg_temp
as $$
    with claimed as (
        update pgdurable.runs r
           set status = 'running', attempt = r.attempt + 1, worker_id = p_worker_id,
               lease_expires_at = p_now + make_interval(secs => p_lease),
               heartbeat_at = now(),
               started_at = coalesce(r.started_at, p_now), updated_at = p_now,
               note = case when r.note like 'no worker has registered%' then null else r.note end,
               -- started: later starts of its debounce key open a new window
               debounce_key = null
         where r.id = any(p_ids)
        returning r.*
    )
    select c.id, c.workflow_id, c.workflow_name, c.queue_name, c.input, c.attempt, c.deadline_at,
           c.retry_step_key, c.retry_step_attempts,
           exists (select from pgdurable.checkpoints k where k.run_id = c.id),
           c.cancel_requested, c.trace_context
      from claimed c
$$;

-- Internal: the pending runs of the configured (limited) queue p_queue a claim may take, at
-- most p_budget, best first: of p_workflows (null: any), or just p_run (claim_run, which holds
-- that run's lock). The queue's row lock (FOR UPDATE) serializes the claims of the queue until
-- their transactions end, and every count below is a statement that starts after it: under READ
-- COMMITTED it sees every run an earlier claim took. A run leaving 'running' meanwhile is at
-- worst still counted (a slot given back one claim later), never the other way round.
create or replace function pgdurable._limited_claim(
    p_queue text, p_workflows text[], p_budget integer, p_now timestamptz, p_run uuid default null
) returns uuid[]
language plpgsql
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    q pgdurable.queues%rowtype;
    v_budget integer := p_budget;
    v_count integer;
    v_recent timestamptz[];
    v_ids uuid[] := '{}';
    v_look integer;
    v_slots jsonb := '{}';    -- key -> runs of the key this claim may still start (concurrency)
    v_window jsonb := '{}';   -- key -> starts left in the key's rate window
    v_taken jsonb := '{}';    -- key -> runs of the key this claim took
    v_key text;
    v_fast boolean;
    c record;
begin
    select * into q from pgdurable.queues where name = p_queue for update;
    if not found or q.paused or v_budget <= 0 then
        return v_ids;
    end if;
    if q.concurrency is not null then
        select count(*) into v_count from pgdurable.runs r
         where r.queue_name = p_queue and r.status = 'running';
        v_budget := least(v_budget, q.concurrency - v_count);
    end if;
    if q.rate_count is not null then
        v_recent := array(select t from unnest(q.recent) t where t > p_now - q.rate_period order by t);
        v_budget := least(v_budget, q.rate_count - cardinality(v_recent));
    end if;
    if v_budget <= 0 then
        return v_ids;
    end if;
    -- no run of the queue waits under a key (one probe of runs_pending_key_idx): the best
    -- v_budget runs, read as an unlimited claim reads them; a keyed run started meanwhile is
    -- left for the next claim. Else (keys, a direct call, an operator's claim) the loop below.
    v_fast := p_run is null and p_workflows is not null and not exists (
        select from pgdurable.runs r
         where r.status = 'pending' and r.queue_name = p_queue and r.concurrency_key is not null);
    if v_fast then
        v_ids := array(
            select h.id from (
                select l.id, l.priority, l.available_at
                  from unnest(p_workflows) as w(name)
                 cross join lateral (
                    select r.id, r.priority, r.available_at from pgdurable.runs r
                     where r.status = 'pending' and r.queue_name = p_queue
                       and r.workflow_name = w.name and r.available_at <= p_now
                       and r.concurrency_key is null
                     order by r.priority desc, r.available_at
                     limit v_budget
                       for update skip locked) l) h
             order by h.priority desc, h.available_at
             limit v_budget);
    else
        -- a bounded look-ahead: runs of keys at their limit are passed over, up to this many
        v_look := v_budget * 4 + 100;
        for c in
            select h.id, h.concurrency_key, h.created_at from (
                select r.id, r.concurrency_key, r.created_at, r.priority, r.available_at
                  from pgdurable.runs r
                 where r.id = p_run and r.status = 'pending'
                union all
                select l.id, l.concurrency_key, l.created_at, l.priority, l.available_at
                  from unnest(p_workflows) as w(name)
                 cross join lateral (
                    select r.id, r.concurrency_key, r.created_at, r.priority, r.available_at
                      from pgdurable.runs r
                     where r.status = 'pending' and r.queue_name = p_queue
                       and r.workflow_name = w.name and r.available_at <= p_now
                     order by r.priority desc, r.available_at
                     limit v_look
                       for update skip locked) l
                 where p_run is null
                union all
                select o.id, o.concurrency_key, o.created_at, o.priority, o.available_at
                  from (select r.id, r.concurrency_key, r.created_at, r.priority, r.available_at
                          from pgdurable.runs r
                         where p_run is null and p_workflows is null
                           and r.status = 'pending' and r.queue_name = p_queue
                           and r.available_at <= p_now
                         order by r.priority desc, r.available_at
                         limit v_look
                           for update skip locked) o
            ) h
            order by h.priority desc, h.available_at
        loop
            exit when cardinality(v_ids) >= v_budget;
            v_key := c.concurrency_key;
            if v_key is not null then
                if not v_slots ? v_key then
                    select q.key_concurrency - count(*) into v_count from pgdurable.runs r
                     where r.queue_name = p_queue and r.concurrency_key = v_key and r.status = 'running';
                    v_slots := v_slots || jsonb_build_object(v_key, v_count);
                    if q.key_rate_count is not null then
                        insert into pgdurable.queue_keys (queue_name, concurrency_key)
                        values (p_queue, v_key) on conflict do nothing;
                        select q.key_rate_count - count(*) into v_count
                          from pgdurable.queue_keys k, unnest(k.recent) t
                         where k.queue_name = p_queue and k.concurrency_key = v_key
                           and t > p_now - q.key_rate_period;
                        v_window := v_window || jsonb_build_object(v_key, v_count);
                    end if;
                end if;
                continue when (v_slots ->> v_key)::integer <= 0
                           or coalesce((v_window ->> v_key)::integer, 1) <= 0;
                -- FIFO within the key: no older pending run of the key may be passed over
                continue when q.key_fifo and exists (
                    select from pgdurable.runs r
                     where r.queue_name = p_queue and r.concurrency_key = v_key
                       and r.status = 'pending' and r.created_at < c.created_at
                       and r.id <> all(v_ids));
                v_slots := v_slots || jsonb_build_object(v_key, (v_slots ->> v_key)::integer - 1);
                if v_window ? v_key then
                    v_window := v_window || jsonb_build_object(v_key, (v_window ->> v_key)::integer - 1);
                end if;
                v_taken := v_taken || jsonb_build_object(v_key, coalesce((v_taken ->> v_key)::integer, 0) + 1);
            end if;
            v_ids := v_ids || c.id;
        end loop;
    end if;
    if cardinality(v_ids) > 0 and q.rate_count is not null then
        update pgdurable.queues
           set recent = v_recent || array_fill(p_now, array[cardinality(v_ids)])
         where name = p_queue;
    end if;
    if q.key_rate_count is not null then
        update pgdurable.queue_keys k
           set recent = array(select t from unnest(k.recent) t where t > p_now - q.key_rate_period)
                        || array_fill(p_now, array[(v_taken ->> k.concurrency_key)::integer])
         where k.queue_name = p_queue and v_taken ? k.concurrency_key;
    end if;
    return v_ids;
end $$;

-- Called by workers: takes up to p_limit runnable runs of p_queues and p_workflows (null: any
-- workflow, for operators) for p_worker_id with a lease of p_lease seconds, highest priority
-- first, then oldest. Configured queues (pgdurable.queues) first, in name order, each within
-- its limits (_limited_claim); then the others, whose concurrent claimers never block each
-- other (SKIP LOCKED), each (queue, workflow) pair read in the order of runs_claim_idx.
create or replace function pgdurable.claim_runs(
    p_worker_id text,
    p_queues text[],
    p_limit integer,
    p_lease double precision default 30,
    p_workflows text[] default null
) returns table (id uuid, workflow_id text, workflow_name text, queue_name text, input jsonb,
                 attempt integer, deadline_at timestamptz, retry_step_key text,
                 retry_step_attempts integer, has_history boolean, cancel_requested boolean,
                 trace_context jsonb)
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
    v_ids uuid[] := '{}';
    v_more uuid[];
    v_queues text[] := p_queues;
    v_limit integer := p_limit;
    v_limited text;
begin
    perform pgdurable._check_lease(p_lease);
    perform pgdurable.tick_due();
    if exists (select from pgdurable.queues q where q.name = any(p_queues)) then
        for v_limited in
            select q.name from pgdurable.queues q where q.name = any(p_queues) order by q.name
        loop
            exit when cardinality(v_ids) >= p_limit;
            v_ids := v_ids || pgdurable._limited_claim(
                v_limited, p_workflows, p_limit - cardinality(v_ids), v_now);
        end loop;
        v_queues := array(select x from unnest(p_queues) x
                          where not exists (select from pgdurable.queues q where q.name = x));
        v_limit := p_limit - cardinality(v_ids);
    end if;
    if v_limit > 0 and cardinality(v_queues) > 0 then
        if p_workflows is null then
            -- an operator's claim of anything: the pending runs of each queue, sorted
            select array_agg(h.id) into v_more from (
                select c.id from unnest(v_queues) as q(name)
                cross join lateral (
                    select r.id, r.priority, r.available_at from pgdurable.runs r
                     where r.status = 'pending' and r.queue_name = q.name and r.available_at <= v_now
                     order by r.priority desc, r.available_at
                     limit v_limit
                     for update skip locked) c
                order by c.priority desc, c.available_at
                limit v_limit) h;
        elsif cardinality(v_queues) = 1 and cardinality(p_workflows) = 1 then
            with picked as (
                select r.id from pgdurable.runs r
                 where r.status = 'pending' and r.queue_name = v_queues[1]
                   and r.workflow_name = p_workflows[1] and r.available_at <= v_now
                 order by r.priority desc, r.available_at
                 limit v_limit
                 for update skip locked
            )
            select array_agg(picked.id) into v_more from picked;
        else
            -- one ordered index scan per (queue, workflow), then the best v_limit of their heads
            select array_agg(h.id) into v_more from (
                select c.id from unnest(v_queues) as q(name)
                cross join unnest(p_workflows) as w(name)
                cross join lateral (
                    select r.id, r.priority, r.available_at from pgdurable.runs r
                     where r.status = 'pending' and r.queue_name = q.name
                       and r.workflow_name = w.name and r.available_at <= v_now
                     order by r.priority desc, r.available_at
                     limit v_limit
                     for update skip locked) c
                order by c.priority desc, c.available_at
                limit v_limit) h;
        end if;
        v_ids := v_ids || coalesce(v_more, '{}');
    end if;
    if cardinality(v_ids) = 0 then
        return;
    end if;
    return query select * from pgdurable._take_runs(v_ids, p_worker_id, p_lease, v_now);
end $$;

-- Called by the SDK when a workflow function is called directly: claims that one run for
-- p_worker_id if it is pending (or its lease expired). Returns no row if another worker has it.
create or replace function pgdurable.claim_run(
    p_run_id uuid,
    p_worker_id text,
    p_lease double precision default 30
) returns table (id uuid, workflow_id text, workflow_name text, queue_name text, input jsonb,
                 attempt integer, deadline_at timestamptz, retry_step_key text,
                 retry_step_attempts integer, has_history boolean, cancel_requested boolean,
                 trace_context jsonb)
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
    v_run pgdurable.runs%rowtype;
begin
    perform pgdurable._check_lease(p_lease);
    select * into v_run from pgdurable.runs r
     where r.id = p_run_id
       and (r.status = 'pending' or (r.status = 'running' and r.lease_expires_at < v_now))
       for update;
    if not found then
        return;
    end if;
    -- an expired lease taken over here costs a recovery, as in tick(): the cap is never skipped
    if v_run.status = 'running' and not pgdurable._recover_run(v_run, format(
            'lease of worker %s expired at %s', v_run.worker_id, v_run.lease_expires_at)) then
        return;
    end if;
    -- a configured queue's limits hold for a direct call too: over them, a worker takes it later
    if exists (select from pgdurable.queues q where q.name = v_run.queue_name)
       and cardinality(pgdurable._limited_claim(v_run.queue_name, null, 1, v_now, p_run_id)) = 0 then
        return;
    end if;
    return query select * from pgdurable._take_runs(array[p_run_id], p_worker_id, p_lease, v_now);
end $$;

-- Called by workers (the SDK's app.queue(...), applied at start), the CLI and operators: sets
-- the limits of queue p_name (null: no such limit), keeping whether it is paused. Limits are
-- read by each claim: a change holds from the next claim on; runs already running go on.
create or replace function pgdurable.configure_queue(
    p_name text,
    p_concurrency integer default null,
    p_key_concurrency integer default 1,
    p_key_fifo boolean default false,
    p_rate_count integer default null,
    p_rate_period interval default null,
    p_key_rate_count integer default null,
    p_key_rate_period interval default null
) returns void
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
begin
    if p_name is null or p_name !~ '^[A-Za-z0-9_.:-]{1,100}$' then
        raise exception 'invalid queue name %', coalesce(quote_literal(p_name), 'NULL')
            using errcode = 'PD004',
                  hint = 'queue names use letters, digits and _ . : -, 1 to 100 characters';
    end if;
    if not coalesce(p_concurrency between 0 and 1000000, true)
       or not coalesce(p_key_concurrency between 1 and 1000000, false)
       or p_key_fifo is null
       or not coalesce(p_rate_count between 1 and 10000, true)
       or not coalesce(p_key_rate_count between 1 and 10000, true)
       or (p_rate_count is null) <> (p_rate_period is null)
       or (p_key_rate_count is null) <> (p_key_rate_period is null)
       or not coalesce(p_rate_period > interval '0', true)
       or not coalesce(p_key_rate_period > interval '0', true) then
        raise exception 'invalid limits for queue %: concurrency %, key_concurrency %, rate % per %, key rate % per %',
            p_name, p_concurrency, p_key_concurrency, p_rate_count, p_rate_period,
            p_key_rate_count, p_key_rate_period
            using errcode = 'PD004',
                  hint = 'concurrency 0 to 1000000 or null; key_concurrency 1 to 1000000; a rate is a count from 1 to 10000 with a positive period, or both null';
    end if;
    insert into pgdurable.queues as q (name, concurrency, key_concurrency, key_fifo, rate_count,
                                       rate_period, key_rate_count, key_rate_period,
                                       created_at, updated_at)
    values (p_name, p_concurrency, p_key_concurrency, p_key_fifo, p_rate_count, p_rate_period,
            p_key_rate_count, p_key_rate_period, v_now, v_now)
    on conflict (name) do update
       set concurrency = excluded.concurrency, key_concurrency = excluded.key_concurrency,
           key_fifo = excluded.key_fifo, rate_count = excluded.rate_count,
           rate_period = excluded.rate_period, key_rate_count = excluded.key_rate_count,
           key_rate_period = excluded.key_rate_period, updated_at = v_now;
    perform pg_notify('pgdurable_wake', p_name);
end $$;

-- Called by operators: no run of queue p_name is claimed until resume_queue (running runs go
-- on; sleeping and waiting ones become pending as usual and wait). Returns the number of its
-- runs still running. A queue without a row gets one (unlimited, paused).
create or replace function pgdurable.pause_queue(p_name text) returns integer
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
begin
    if p_name is null or p_name !~ '^[A-Za-z0-9_.:-]{1,100}$' then
        raise exception 'invalid queue name %', coalesce(quote_literal(p_name), 'NULL')
            using errcode = 'PD004';
    end if;
    insert into pgdurable.queues as q (name, paused, created_at, updated_at)
    values (p_name, true, v_now, v_now)
    on conflict (name) do update set paused = true, updated_at = v_now;
    return (select count(*) from pgdurable.runs r where r.queue_name = p_name and r.status = 'running');
end $$;

-- Called by operators: claims of queue p_name resume (workers are woken at once).
create or replace function pgdurable.resume_queue(p_name text) returns void
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
begin
    update pgdurable.queues set paused = false, updated_at = pgdurable.now() where name = p_name;
    if not found then
        raise exception 'queue % has no settings (it is not paused)', coalesce(quote_literal(p_name), 'NULL')
            using errcode = 'PD006',
                  hint = 'pgdurable queues lists the queues and whether they are paused';
    end if;
    perform pg_notify('pgdurable_wake', p_name);
end $$;

-- Called by operators: forgets queue p_name's limits and pause; it is unlimited again. Refused
-- while runs of it carry a concurrency key and are unfinished (they rely on per-key limits).
create or replace function pgdurable.reset_queue(p_name text) returns boolean
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
begin
    if exists (select from pgdurable.runs r
                where r.queue_name = p_name and r.concurrency_key is not null
                  and r.status in ('pending', 'running', 'sleeping', 'waiting')) then
        raise exception 'queue % has unfinished runs with a concurrency key', quote_literal(p_name)
            using errcode = 'PD006',
                  hint = 'configure its limits instead, or reset it once those runs have finished';
    end if;
    delete from pgdurable.queue_keys where queue_name = p_name;
    delete from pgdurable.queues where name = p_name;
    if found then
        perform pg_notify('pgdurable_wake', p_name);
    end if;
    return found;
end $$;

-- Called by workers (app.schedule(...) and @app.workflow(schedule=...), applied at start), the
-- CLI and operators: creates or replaces schedule p_name. p_options: queue, catchup (skip,
-- latest, all), catchup_max, overlap (allow, skip, queue). A new schedule, or one whose cron or
-- time zone changed, fires first at its next tick from now; its history is kept.
create or replace function pgdurable.upsert_schedule(
    p_name text,
    p_workflow_name text,
    p_cron text,
    p_timezone text default 'UTC',
    p_input jsonb default '{"args": [], "kwargs": {}}',
    p_options jsonb default '{}'
) returns void
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
    v_bad text;
begin
    if p_name is null or p_name !~ '^[A-Za-z_][A-Za-z0-9_.:<>-]{0,199}$' then
        raise exception 'invalid schedule name %', coalesce(quote_literal(p_name), 'NULL')
            using errcode = 'PD004',
                  hint = 'letters, digits and _ . : < > -, not starting with a digit, at most 200 characters';
    end if;
    if p_workflow_name is null or p_workflow_name !~ '^[A-Za-z_][A-Za-z0-9_.:<>-]{0,199}$' then
        raise exception 'invalid workflow name %', coalesce(quote_literal(p_workflow_name), 'NULL')
            using errcode = 'PD004';
    end if;
    if p_cron is null or length(p_cron) > 500 or p_cron !~ '^[0-9A-Za-z*/,?#LW -]+$'
       or cardinality(regexp_split_to_array(btrim(p_cron), '\s+')) not in (5, 6) then
        raise exception 'invalid cron expression %', coalesce(quote_literal(p_cron), 'NULL')
            using errcode = 'PD004',
                  hint = '5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first, e.g. ''*/5 * * * *''';
    end if;
    if p_timezone is null or not exists (select from pg_timezone_names z where z.name = p_timezone) then
        raise exception 'unknown time zone %', coalesce(quote_literal(p_timezone), 'NULL')
            using errcode = 'PD004',
                  hint = 'use an IANA name such as ''UTC'' or ''Europe/Berlin''';
    end if;
    perform pgdurable._check_input(p_input, format('schedule %s', p_name));
    select string_agg(k, ', ') into v_bad from jsonb_object_keys(coalesce(p_options, '{}')) k
        where k not in ('queue', 'catchup', 'catchup_max', 'overlap');
    if v_bad is not null or jsonb_typeof(coalesce(p_options, '{}')) <> 'object'
       or coalesce(p_options ->> 'catchup', 'latest') not in ('skip', 'latest', 'all')
       or coalesce(p_options ->> 'overlap', 'allow') not in ('allow', 'skip', 'queue')
       or coalesce(p_options ->> 'queue', 'default') !~ '^[A-Za-z0-9_.:-]{1,100}$'
       or coalesce(p_options ->> 'catchup_max', '100') !~ '^[0-9]{1,5}$'
       or coalesce((p_options ->> 'catchup_max')::integer, 100) not between 1 and 10000 then
        raise exception 'invalid schedule options %', p_options
            using errcode = 'PD004',
                  hint = 'options: queue, catchup (skip, latest, all), catchup_max (1 to 10000), overlap (allow, skip, queue)';
    end if;
    insert into pgdurable.schedules as s (name, workflow_name, cron, timezone, input, queue_name,
                                          catchup, catchup_max, overlap, created_at, updated_at)
    values (p_name, p_workflow_name, btrim(p_cron), p_timezone, p_input, p_options ->> 'queue',
            coalesce(p_options ->> 'catchup', 'latest'),
            coalesce((p_options ->> 'catchup_max')::integer, 100),
            coalesce(p_options ->> 'overlap', 'allow'), v_now, v_now)
    on conflict (name) do update
       set workflow_name = excluded.workflow_name, cron = excluded.cron,
           timezone = excluded.timezone, input = excluded.input, queue_name = excluded.queue_name,
           catchup = excluded.catchup, catchup_max = excluded.catchup_max,
           overlap = excluded.overlap, updated_at = v_now,
           next_fire_at = case when (s.cron, s.timezone) = (excluded.cron, excluded.timezone)
                               then s.next_fire_at end;
end $$;

-- Called by workers, in a transaction they then call fire_schedule in: the schedules due by
-- engine time (or new: next_fire_at null), locked, skipping those another worker is firing.
create or replace function pgdurable.due_schedules(p_limit integer default 50)
returns table (name text, cron text, timezone text, catchup text, catchup_max integer,
               next_fire_at timestamptz, engine_now timestamptz)
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
begin
    return query
        select s.name, s.cron, s.timezone, s.catchup, s.catchup_max, s.next_fire_at, v_now
          from pgdurable.schedules s
         where not s.paused and (s.next_fire_at is null or s.next_fire_at <= v_now)
         order by s.next_fire_at nulls first
         limit greatest(p_limit, 1)
           for update skip locked;
end $$;

-- Internal: starts the run of schedule p (locked by the caller) for p_tick (null: run now),
-- under its overlap policy. Returns the run id, or null when 'skip' found the last run going.
create or replace function pgdurable._schedule_run(p pgdurable.schedules, p_tick timestamptz)
returns uuid
language plpgsql
set search_path = pg_catalog, pgdurable, pg_temp
as $$
begin
    if p.overlap = 'skip' and exists (
            select from pgdurable.runs r where r.id = p.last_run_id
               and r.status in ('pending', 'running', 'sleeping', 'waiting')) then
        return null;
    end if;
    return pgdurable.start_run(p.workflow_name, p.input,
        jsonb_build_object('workflow_id', format('schedule:%s:%s', p.name,
            coalesce(to_char(p_tick at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                     'now:' || to_char(pgdurable.now() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))))
        || jsonb_strip_nulls(jsonb_build_object(
               'queue', p.queue_name,
               'concurrency_key', case when p.overlap = 'queue' then 'schedule:' || p.name end)));
end $$;

-- Called by workers (in the transaction of due_schedules): starts one run per tick of p_ticks
-- (the workflow id schedule:<name>:<tick> makes a tick fired twice one run), then waits for
-- p_next. Returns the runs started (a tick the overlap policy skipped starts none).
create or replace function pgdurable.fire_schedule(
    p_name text, p_ticks timestamptz[], p_next timestamptz
) returns setof uuid
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_s pgdurable.schedules%rowtype;
    v_tick timestamptz;
    v_run uuid;
begin
    select * into v_s from pgdurable.schedules s where s.name = p_name for update;
    if not found or v_s.paused then
        return;
    end if;
    foreach v_tick in array coalesce(p_ticks, '{}') loop
        v_run := pgdurable._schedule_run(v_s, v_tick);
        if v_run is not null then
            v_s.last_run_id := v_run;
            return next v_run;
        end if;
        v_s.last_fire_at := v_tick;
    end loop;
    update pgdurable.schedules s
       set next_fire_at = p_next, last_fire_at = v_s.last_fire_at, last_run_id = v_s.last_run_id,
           updated_at = pgdurable.now()
     where s.name = p_name;
end $$;

-- Called by operators: "run now". Starts a run of schedule p_name at once (its overlap policy
-- applies; its next tick does not move). Returns the run id (null: skipped, the last run goes on).
create or replace function pgdurable.trigger_schedule(p_name text) returns uuid
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_s pgdurable.schedules%rowtype;
    v_run uuid;
begin
    select * into v_s from pgdurable.schedules s where s.name = p_name for update;
    if not found then
        raise exception 'no schedule named %', coalesce(quote_literal(p_name), 'NULL')
            using errcode = 'PD006',
                  hint = 'pgdurable schedules lists them';
    end if;
    v_run := pgdurable._schedule_run(v_s, null);
    if v_run is not null then
        update pgdurable.schedules s set last_run_id = v_run, updated_at = pgdurable.now()
         where s.name = p_name;
    end if;
    return v_run;
end $$;

-- Called by operators: a paused schedule starts nothing; resumed, it fires next at its next
-- tick from then (the ticks missed while paused are not caught up). delete_schedule removes it
-- (its runs stay). Each returns whether the schedule exists.
create or replace function pgdurable.pause_schedule(p_name text) returns boolean
language sql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
    with changed as (
        update pgdurable.schedules s set paused = true, updated_at = pgdurable.now()
         where s.name = p_name returning 1)
    select exists (select from changed);
$$;

create or replace function pgdurable.resume_schedule(p_name text) returns boolean
language sql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
    with changed as (
        update pgdurable.schedules s
           set paused = false, next_fire_at = null, updated_at = pgdurable.now()
         where s.name = p_name and s.paused returning 1)
    select exists (select from changed)
        or exists (select from pgdurable.schedules s where s.name = p_name);
$$;

create or replace function pgdurable.delete_schedule(p_name text) returns boolean
language sql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
    with gone as (delete from pgdurable.schedules s where s.name = p_name returning 1)
    select exists (select from gone);
$$;

-- Called by the SDK after each durable operation (step, transaction, value, child start).
-- Fenced: raises PD002 if the worker lost the run, PD005 if the run was cancelled. Inside a
-- transaction step it commits together with the application's writes.
create or replace function pgdurable.record_checkpoint(
    p_run_id uuid,
    p_attempt integer,
    p_seq integer,
    p_step_key text,
    p_kind text,
    p_step_name text,
    p_output jsonb,
    p_error jsonb default null,
    p_attempts integer default 1,
    p_started_at timestamptz default null
) returns void
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_retry_key text;
begin
    -- The fence inline (one statement on the hot path): the FOR SHARE lock on the run row makes
    -- a takeover wait for this transaction, so a zombie's write either commits before the new
    -- owner loads the checkpoints or is rejected here. _fence only names the error.
    select r.retry_step_key into v_retry_key from pgdurable.runs r
     where r.id = p_run_id and r.attempt = p_attempt and r.status = 'running'
       and not r.cancel_requested
       for share;
    if not found then
        perform pgdurable._fence(p_run_id, p_attempt);
        raise exception 'lease lost on run % (attempt %)', p_run_id, p_attempt using errcode = 'PD002';
    end if;
    insert into pgdurable.checkpoints (run_id, step_key, seq, kind, step_name, output, error,
                                       attempts, run_attempt, started_at, completed_at)
    values (p_run_id, p_step_key, p_seq, p_kind, p_step_name, p_output, p_error,
            p_attempts, p_attempt, p_started_at,
            -- pgdurable.now(), inlined: its call would cost a tenth of this function
            now() + (select c.offset_interval from pgdurable.clock c where c.id));
    if p_error is null and v_retry_key = p_step_key then
        update pgdurable.runs set retry_step_key = null, retry_step_attempts = 0 where id = p_run_id;
    end if;
end $$;

-- Internal: ends a running run (fenced) as p_status with its output or error, and wakes
-- whoever waits for it.
create or replace function pgdurable._end_run(
    p_run_id uuid, p_attempt integer, p_status text, p_output jsonb, p_error jsonb
) returns void
language plpgsql
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    -- pgdurable.now(), inlined (hot path)
    v_now timestamptz := now() + (select c.offset_interval from pgdurable.clock c where c.id);
begin
    -- the fence as the update's condition: one statement when this worker still holds the run;
    -- otherwise _fence names what happened (PD001, PD002, PD005)
    update pgdurable.runs
       set status = p_status, output = p_output, error = p_error, lease_expires_at = null,
           worker_id = null, finished_at = v_now, updated_at = v_now,
           note = case when p_status = 'completed' then null else note end
     where id = p_run_id and attempt = p_attempt and status = 'running'
       and not cancel_requested;
    if not found then
        perform pgdurable._fence(p_run_id, p_attempt);
        raise exception 'lease lost on run % (attempt %)', p_run_id, p_attempt using errcode = 'PD002';
    end if;
    perform pgdurable._run_finished(p_run_id);
end $$;

-- Called by the SDK when a workflow function returns. Fenced. Notifies 'pgdurable_done'.
create or replace function pgdurable.complete_run(p_run_id uuid, p_attempt integer, p_output jsonb)
returns void
language sql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
    select pgdurable._end_run(p_run_id, p_attempt, 'completed', p_output, null)
$$;

-- Called by the SDK when a workflow raises (or a step exhausts its retries). Fenced.
-- p_error: {"type", "message", "traceback"}.
create or replace function pgdurable.fail_run(p_run_id uuid, p_attempt integer, p_error jsonb)
returns void
language sql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
    select pgdurable._end_run(p_run_id, p_attempt, 'failed', null, p_error)
$$;

-- Called by the SDK when a step failed and its next retry is far away: the run leaves the
-- worker and a timer makes it pending again at now + p_delay. Fenced.
create or replace function pgdurable.schedule_retry(
    p_run_id uuid, p_attempt integer, p_step_key text, p_step_attempts integer,
    p_delay double precision, p_error jsonb
) returns timestamptz
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
    v_at timestamptz := v_now + make_interval(secs => pgdurable._check_seconds(p_delay, 'retry delay'));
begin
    perform pgdurable._fence(p_run_id, p_attempt);
    update pgdurable.runs
       set status = 'sleeping', lease_expires_at = null, worker_id = null, updated_at = v_now,
           retry_step_key = p_step_key, retry_step_attempts = p_step_attempts,
           note = format('step %s failed (attempt %s): %s; retry at %s', p_step_key, p_step_attempts,
                         p_error ->> 'message', v_at),
           error = p_error
     where id = p_run_id;
    insert into pgdurable.timers (run_id, fire_at, reason) values (p_run_id, v_at, 'retry')
    on conflict (run_id) do update set fire_at = excluded.fire_at, reason = excluded.reason;
    return v_at;
end $$;

-- Called by the SDK for pgdurable.sleep(): on first execution records the wake time as the
-- checkpoint (so replays keep it), then suspends the run until then. Returns the wake time and
-- whether the run must suspend (false when the wake time has already passed).
create or replace function pgdurable.sleep_run(
    p_run_id uuid, p_attempt integer, p_seq integer, p_step_key text,
    p_seconds double precision, p_until timestamptz default null
) returns table (wake_at timestamptz, suspended boolean)
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
    v_at timestamptz;
begin
    perform pgdurable._check_seconds(p_seconds, 'sleep duration');
    perform pgdurable._fence(p_run_id, p_attempt);
    select (output ->> 'wake_at')::timestamptz into v_at
      from pgdurable.checkpoints where run_id = p_run_id and step_key = p_step_key;
    if v_at is null then
        v_at := coalesce(p_until, v_now + make_interval(secs => greatest(p_seconds, 0)));
        insert into pgdurable.checkpoints (run_id, step_key, seq, kind, step_name, output,
                                           run_attempt, started_at, completed_at)
        values (p_run_id, p_step_key, p_seq, 'sleep', 'sleep',
                jsonb_build_object('wake_at', v_at), p_attempt, v_now, v_now);
    end if;
    if v_at <= v_now then
        return query select v_at, false;
        return;
    end if;
    update pgdurable.runs
       set status = 'sleeping', lease_expires_at = null, worker_id = null, updated_at = v_now,
           note = null
     where id = p_run_id;
    insert into pgdurable.timers (run_id, fire_at, reason) values (p_run_id, v_at, 'sleep')
    on conflict (run_id) do update set fire_at = excluded.fire_at, reason = excluded.reason;
    return query select v_at, true;
end $$;

-- Called by the SDK when a worker stops or cannot run a claimed run (shutdown, unknown workflow
-- on a rolling deploy): the run is pending again after p_delay seconds, with p_reason in
-- runs.note, at no cost. With p_connection_lost (the worker's connection broke mid-run) it
-- counts a disconnect toward max_recoveries and backs off (see _recover_run). Fenced by attempt.
create or replace function pgdurable.release_run(
    p_run_id uuid, p_attempt integer, p_reason text default null,
    p_delay double precision default 0, p_connection_lost boolean default false
) returns boolean
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
    v_queue text;
    v_run pgdurable.runs%rowtype;
begin
    perform pgdurable._check_seconds(p_delay, 'release delay');
    if p_connection_lost then
        select * into v_run from pgdurable.runs
         where id = p_run_id and attempt = p_attempt and status = 'running' for update;
        if not found then
            return false;
        end if;
        perform pgdurable._recover_run(v_run, coalesce(p_reason, 'connection lost'), true);
        return true;
    end if;
    update pgdurable.runs
       set status = 'pending', lease_expires_at = null, worker_id = null,
           available_at = v_now + make_interval(secs => p_delay), updated_at = v_now,
           note = p_reason
     where id = p_run_id and attempt = p_attempt and status = 'running'
    returning queue_name into v_queue;
    if not found then
        return false;
    end if;
    if p_delay = 0 then
        perform pg_notify('pgdurable_wake', v_queue);
    end if;
    return true;
end $$;

-- Called by every worker every few seconds: extends the leases of all the runs it holds in one
-- statement. Returns the runs it no longer holds (lost = true) or that were asked to cancel.
create or replace function pgdurable.heartbeat(
    p_worker_id text, p_run_ids uuid[], p_attempts integer[], p_lease double precision default 30
) returns table (run_id uuid, lost boolean, cancel_requested boolean, pause_requested boolean)
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
begin
    perform pgdurable._check_lease(p_lease);
    return query
    with held as (
        select u.id, u.att from unnest(p_run_ids, p_attempts) as u(id, att)
    ), extended as (
        update pgdurable.runs r
           set lease_expires_at = v_now + make_interval(secs => p_lease), heartbeat_at = now()
          from held
         where r.id = held.id and r.attempt = held.att and r.status = 'running'
        returning r.id, r.cancel_requested, r.pause_requested
    )
    select held.id, e.id is null, coalesce(e.cancel_requested, false),
           coalesce(e.pause_requested, false)
      from held left join extended e on e.id = held.id
     where e.id is null or e.cancel_requested or e.pause_requested;
end $$;

-- Called by users (SDK, CLI, psql, the dashboard) to pause a run: a pending, sleeping or
-- waiting run becomes 'paused' at once (it holds no worker, its timer is dropped); a running
-- one is flagged and its worker parks it at its next durable operation. resume_run goes on from
-- its last checkpoint. Returns 'paused', 'pausing', or the status of a run that has finished.
create or replace function pgdurable.pause_run(p_run_id uuid) returns text
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
    v_run pgdurable.runs%rowtype;
begin
    select * into v_run from pgdurable.runs where id = p_run_id for update;
    if not found then
        raise exception 'run % does not exist', p_run_id using errcode = 'PD001';
    end if;
    if v_run.status in ('completed', 'failed', 'cancelled', 'paused') then
        return v_run.status;
    end if;
    if v_run.status = 'running' then
        update pgdurable.runs set pause_requested = true, updated_at = v_now where id = p_run_id;
        return 'pausing';
    end if;
    update pgdurable.runs
       set status = 'paused', updated_at = v_now, note = 'paused', debounce_key = null
     where id = p_run_id;
    delete from pgdurable.timers where run_id = p_run_id;
    return 'paused';
end $$;

-- Called by the SDK when a running run observes its pause flag (fenced): parks it 'paused',
-- holding no worker, until resume_run.
create or replace function pgdurable.park_run(p_run_id uuid, p_attempt integer) returns void
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
begin
    perform pgdurable._fence(p_run_id, p_attempt);
    update pgdurable.runs
       set status = 'paused', pause_requested = false, lease_expires_at = null, worker_id = null,
           updated_at = v_now, note = 'paused'
     where id = p_run_id;
end $$;

-- Called by users (SDK, CLI, psql) to cancel a run and its unfinished children. A pending,
-- sleeping or waiting run ends 'cancelled' at once; a running one is flagged and its worker
-- stops it at its next durable operation. Returns the run's status after the call.
create or replace function pgdurable.cancel_run(p_run_id uuid) returns text
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
    v_run pgdurable.runs%rowtype;
    v_child uuid;
begin
    select * into v_run from pgdurable.runs where id = p_run_id for update;
    if not found then
        raise exception 'run % does not exist', p_run_id using errcode = 'PD001';
    end if;
    if v_run.status in ('completed', 'failed', 'cancelled') then
        return v_run.status;
    end if;
    if v_run.status = 'running' then
        update pgdurable.runs set cancel_requested = true, updated_at = v_now where id = p_run_id;
    elsif exists (select 1 from pgdurable.checkpoints where run_id = p_run_id and kind = 'compensate') then
        -- it registered compensations: a worker must replay it and run them before it ends
        update pgdurable.runs
           set status = 'pending', cancel_requested = true, available_at = v_now,
               updated_at = v_now, wait_for = null
         where id = p_run_id;
        delete from pgdurable.timers where run_id = p_run_id;
        perform pg_notify('pgdurable_wake', v_run.queue_name);
        v_run.status := 'running';
    else
        update pgdurable.runs
           set status = 'cancelled', finished_at = v_now, updated_at = v_now, wait_for = null,
               error = jsonb_build_object('type', 'Cancelled', 'message', 'run was cancelled',
                                          'traceback', null)
         where id = p_run_id;
        delete from pgdurable.timers where run_id = p_run_id;
        perform pgdurable._run_finished(p_run_id);
    end if;
    for v_child in select id from pgdurable.runs
                    where parent_id = p_run_id and status not in ('completed', 'failed', 'cancelled') loop
        perform pgdurable.cancel_run(v_child);
    end loop;
    return case when v_run.status = 'running' then 'cancelling' else 'cancelled' end;
end $$;

-- Called by the SDK when a running run observes its cancel flag: ends it 'cancelled'. Not fenced
-- by cancel (that is the point), only by attempt.
create or replace function pgdurable.finish_cancel(p_run_id uuid, p_attempt integer) returns void
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
begin
    update pgdurable.runs
       set status = 'cancelled', finished_at = v_now, updated_at = v_now,
           lease_expires_at = null, worker_id = null,
           error = jsonb_build_object('type', 'Cancelled', 'message', 'run was cancelled',
                                      'traceback', null)
     where id = p_run_id and attempt = p_attempt and status = 'running';
    perform pgdurable._run_finished(p_run_id);
end $$;

-- Called by users to restart a failed or cancelled run from its last checkpoint: completed
-- operations are replayed, the rest runs again. Returns true if the run was restarted.
create or replace function pgdurable.resume_run(p_run_id uuid) returns boolean
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
    v_run pgdurable.runs%rowtype;
begin
    select * into v_run from pgdurable.runs where id = p_run_id for update;
    if not found then
        raise exception 'run % does not exist', p_run_id using errcode = 'PD001';
    end if;
    if v_run.status not in ('failed', 'cancelled', 'paused') then
        raise exception 'run % is %; only failed, cancelled or paused runs can be resumed', p_run_id, v_run.status
            using errcode = 'PD006';
    end if;
    -- a paused run replays to where it was and sleeps or waits again from there
    delete from pgdurable.timers where run_id = p_run_id;
    -- a failed step's error checkpoint would replay the failure: drop the failed ones
    delete from pgdurable.checkpoints where run_id = p_run_id and error is not null and kind in ('step', 'transaction');
    update pgdurable.runs r
       set status = 'pending', available_at = v_now, updated_at = v_now, finished_at = null,
           error = null, output = null, cancel_requested = false, recoveries = 0, disconnects = 0,
           retry_step_key = null, retry_step_attempts = 0, note = 'resumed',
           pause_requested = false, wait_for = null,
           -- another unfinished run took the dedup key meanwhile: this one resumes without it
           dedup_key = case when exists (
               select from pgdurable.runs o
                where o.queue_name = r.queue_name and o.dedup_key = r.dedup_key and o.id <> r.id
                  and o.status in ('pending', 'running', 'sleeping', 'waiting', 'paused'))
               then null else r.dedup_key end
     where id = p_run_id;
    perform pg_notify('pgdurable_wake', v_run.queue_name);
    return true;
end $$;

-- Called by users: a retry of a failed run is a resume from its last checkpoint.
create or replace function pgdurable.retry_run(p_run_id uuid) returns boolean
language sql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
    select pgdurable.resume_run(p_run_id)
$$;

-- Called by users to start a new run that replays p_run_id's checkpoints before sequence
-- p_from_seq (with the stream values those operations wrote) and executes the rest anew.
-- Returns the new run's id.
create or replace function pgdurable.fork_run(p_run_id uuid, p_from_seq integer, p_workflow_id text default null)
returns uuid
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_run pgdurable.runs%rowtype;
    v_new uuid;
begin
    select * into v_run from pgdurable.runs where id = p_run_id;
    if not found then
        raise exception 'run % does not exist', p_run_id using errcode = 'PD001';
    end if;
    v_new := pgdurable.start_run(v_run.workflow_name, v_run.input,
        jsonb_build_object('queue', v_run.queue_name, 'priority', v_run.priority, 'on_conflict', 'raise')
        || jsonb_strip_nulls(jsonb_build_object('concurrency_key', v_run.concurrency_key))
        || case when p_workflow_id is null then '{}'::jsonb else jsonb_build_object('workflow_id', p_workflow_id) end);
    insert into pgdurable.checkpoints (run_id, step_key, seq, kind, step_name, output, error,
                                       attempts, run_attempt, started_at, completed_at)
    select v_new, step_key, seq, kind, step_name, output, error, attempts, 0, started_at, completed_at
      from pgdurable.checkpoints where run_id = p_run_id and seq < p_from_seq;
    -- the replayed operations will not write their stream values again: copy them
    insert into pgdurable.streams (run_id, stream_key, seq, value, closed, origin, created_at)
    select v_new, s.stream_key, s.seq, s.value, s.closed, s.origin, s.created_at
      from pgdurable.streams s
     where s.run_id = p_run_id
       and case when s.origin ~ '^[0-9]{1,9}:' then split_part(s.origin, ':', 1)::integer < p_from_seq
                else false end;
    return v_new;
end $$;

-- Called by operators or a schedule: deletes up to p_limit finished runs (with their
-- checkpoints, timers, messages and streams) that finished before now - p_older_than, never a child whose
-- parent is unfinished (the parent may still read its result). Returns how many it deleted;
-- with p_dry_run, how many it would delete.
create or replace function pgdurable.gc_runs(
    p_older_than interval, p_limit integer default 10000, p_dry_run boolean default false
) returns integer
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_ids uuid[];
begin
    if p_older_than is null or p_older_than < interval '0' or p_limit is null or p_limit < 1 then
        raise exception 'gc_runs needs p_older_than >= 0 and p_limit >= 1'
            using errcode = 'PD004';
    end if;
    select array_agg(s.id) into v_ids from (
        select r.id from pgdurable.runs r
         where r.finished_at < pgdurable.now() - p_older_than
           and r.status in ('completed', 'failed', 'cancelled')
           and not exists (select from pgdurable.runs p
                            where p.id = r.parent_id and p.finished_at is null)
         order by r.finished_at limit p_limit
         for update skip locked) s;
    if v_ids is null then
        return 0;
    end if;
    if p_dry_run then
        return cardinality(v_ids);
    end if;
    perform pgdurable._delete_runs(v_ids);
    -- per-key rate windows with no claim left in them
    delete from pgdurable.queue_keys k using pgdurable.queues q
     where q.name = k.queue_name
       and (q.key_rate_period is null
            or not exists (select from unnest(k.recent) t where t > pgdurable.now() - q.key_rate_period));
    return cardinality(v_ids);
end $$;

-- Internal: deletes the runs p_ids (finished, locked by the caller) with their history.
create or replace function pgdurable._delete_runs(p_ids uuid[]) returns void
language sql
set search_path = pg_catalog, pgdurable, pg_temp
as $$
    delete from pgdurable.checkpoints where run_id = any(p_ids);
    delete from pgdurable.messages where run_id = any(p_ids);
    delete from pgdurable.streams where run_id = any(p_ids);
    delete from pgdurable.timers where run_id = any(p_ids);
    delete from pgdurable.runs where id = any(p_ids);
$$;

-- Called by workers about once a minute (and by operators): deletes up to p_limit finished runs
-- older than their retention (the workflow's rule, else the queue's, else settings.retention;
-- null keeps forever), oldest first, never a child whose parent is unfinished, never a run
-- another session holds (SKIP LOCKED). One caller at a time (an advisory lock); the others
-- return 0 at once. Returns how many it deleted: p_limit means there may be more.
create or replace function pgdurable.purge_expired(p_limit integer default 1000) returns integer
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
    v_default interval;
    v_shortest interval;
    v_ids uuid[];
begin
    if p_limit is null or p_limit < 1 then
        raise exception 'purge_expired needs p_limit >= 1' using errcode = 'PD004';
    end if;
    if not pg_try_advisory_xact_lock(hashtext('pgdurable.purge_expired')) then
        return 0;
    end if;
    select s.retention into v_default from pgdurable.settings s where s.id;
    -- the shortest keep of any rule: runs that finished later are all kept, and the index on
    -- finished_at stops the scan there instead of reading the history that is kept
    v_shortest := least(v_default, (select min(r.keep) from pgdurable.retention r));
    if v_shortest is null then
        return 0;  -- every run is kept forever
    end if;
    select array_agg(x.id) into v_ids from (
        select r.id from pgdurable.runs r
          left join pgdurable.retention w on w.kind = 'workflow' and w.name = r.workflow_name
          left join pgdurable.retention q on q.kind = 'queue' and q.name = r.queue_name
         where r.finished_at < v_now - v_shortest
           and r.status in ('completed', 'failed', 'cancelled')
           and r.finished_at < v_now - case when w.name is not null then w.keep
                                            when q.name is not null then q.keep
                                            else v_default end
           and not exists (select from pgdurable.runs p
                            where p.id = r.parent_id and p.finished_at is null)
         order by r.finished_at
         limit p_limit
           for update of r skip locked) x;
    -- per-key rate windows with no claim left in them
    delete from pgdurable.queue_keys k using pgdurable.queues q
     where q.name = k.queue_name
       and (q.key_rate_period is null
            or not exists (select from unnest(k.recent) t where t > v_now - q.key_rate_period));
    if v_ids is null then
        return 0;
    end if;
    perform pgdurable._delete_runs(v_ids);
    return cardinality(v_ids);
end $$;

-- Called by operators and workers (app.retention(...)): finished runs of workflow or queue
-- p_name (p_kind 'workflow' or 'queue'; 'default' for every other run, p_name ignored) are
-- kept p_keep after they finish (null: forever).
create or replace function pgdurable.set_retention(p_kind text, p_name text, p_keep interval)
returns void
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
begin
    if p_keep < interval '0' or p_kind is null or p_kind not in ('workflow', 'queue', 'default')
       or p_kind <> 'default' and (p_name is null or p_name = '' or length(p_name) > 200) then
        raise exception 'invalid retention: % % %', p_kind, p_name, p_keep
            using errcode = 'PD004',
                  hint = 'kind workflow, queue or default; a name for workflow and queue; keep a non-negative interval, or null for forever';
    end if;
    if p_kind = 'default' then
        update pgdurable.settings set retention = p_keep where id;
    else
        insert into pgdurable.retention (kind, name, keep, updated_at)
        values (p_kind, p_name, p_keep, pgdurable.now())
        on conflict (kind, name) do update set keep = excluded.keep, updated_at = excluded.updated_at;
    end if;
end $$;

-- Called from anywhere (web handlers, psql, other services; a workflow through the SDK, which
-- checkpoints it): records the durable event p_name and wakes every run waiting for it. Inside
-- the caller's transaction the event exists only if that transaction commits. Returns its id.
create or replace function pgdurable.emit_event(p_name text, p_payload jsonb default 'null')
returns bigint
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_id bigint;
begin
    if p_name is null or p_name = '' or length(p_name) > 500 then
        raise exception 'event name must be 1 to 500 characters' using errcode = 'PD003';
    end if;
    perform pgdurable._check_json(p_payload, format('payload of event %s', p_name));
    -- wait_event takes the same lock: a wait either sees this event or is woken by it
    perform pg_advisory_xact_lock(hashtext('pgdurable.event:' || p_name));
    insert into pgdurable.events (name, payload, created_at)
    values (p_name, coalesce(p_payload, 'null'), pgdurable.now())
    returning id into v_id;
    perform pgdurable._wake_waiters('event:' || p_name);
    return v_id;
end $$;

-- Called by the SDK for pgdurable.wait_for_event(). Fenced. If an event named p_name exists (the
-- newest one, emitted before or after the wait began) it is recorded as the checkpoint and
-- returned; else the run waits (status 'waiting') with an optional timeout.
create or replace function pgdurable.wait_event(
    p_run_id uuid, p_attempt integer, p_seq integer, p_key text, p_name text,
    p_timeout double precision default null
) returns table (received boolean, payload jsonb)
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_payload jsonb;
    v_now timestamptz := pgdurable.now();
begin
    if p_name is null or p_name = '' or length(p_name) > 500 then
        raise exception 'event name must be 1 to 500 characters' using errcode = 'PD003';
    end if;
    perform pgdurable._check_seconds(p_timeout, 'wait timeout');
    perform pg_advisory_xact_lock(hashtext('pgdurable.event:' || p_name));
    perform pgdurable._fence(p_run_id, p_attempt);
    select e.payload into v_payload from pgdurable.events e where e.name = p_name
     order by e.id desc limit 1;
    if found then
        insert into pgdurable.checkpoints (run_id, step_key, seq, kind, step_name, output,
                                           run_attempt, started_at, completed_at)
        values (p_run_id, p_key, p_seq, 'event', p_name, v_payload, p_attempt, v_now, v_now);
        delete from pgdurable.timers where run_id = p_run_id;
        return query select true, v_payload;
        return;
    end if;
    perform pgdurable._suspend_waiting(p_run_id, 'event:' || p_name, p_timeout, p_seq, p_key,
                                       'event', p_name);
    return query select false, null::jsonb;
end $$;

-- Called by users and workflows: puts a message in the mailbox of a run (by run id or
-- workflow_id), FIFO per topic, and wakes it if it waits on that topic. Raises PD001 for an
-- unknown run, PD006 for a finished one. Returns the message id.
create or replace function pgdurable.send_message(p_target text, p_payload jsonb, p_topic text default null)
returns bigint
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_run pgdurable.runs%rowtype;
    v_id bigint;
    v_topic text := coalesce(p_topic, '');
begin
    if length(v_topic) > 500 then
        raise exception 'message topic must be at most 500 characters' using errcode = 'PD003';
    end if;
    perform pgdurable._check_json(p_payload, 'message payload');
    -- a uuid-shaped target is a run id first (a uuid-shaped workflow_id equals its run id)
    if p_target ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
        select * into v_run from pgdurable.runs where id = p_target::uuid for update;
    end if;
    if v_run.id is null then
        select * into v_run from pgdurable.runs where workflow_id = p_target for update;
    end if;
    if v_run.id is null then
        raise exception 'no run has workflow_id or id %', quote_literal(p_target)
            using errcode = 'PD001';
    end if;
    if v_run.status in ('completed', 'failed', 'cancelled') then
        raise exception 'run % (%) is already %; it can receive no messages', v_run.id,
            v_run.workflow_id, v_run.status
            using errcode = 'PD006';
    end if;
    insert into pgdurable.messages (run_id, topic, payload, created_at)
    values (v_run.id, v_topic, coalesce(p_payload, 'null'), pgdurable.now())
    returning id into v_id;
    if v_run.status = 'waiting' and v_run.wait_for = 'message:' || v_topic then
        update pgdurable.runs
           set status = 'pending', available_at = pgdurable.now(), updated_at = pgdurable.now(),
               wait_for = null
         where id = v_run.id;
        delete from pgdurable.timers where run_id = v_run.id;
        perform pg_notify('pgdurable_wake', v_run.queue_name);
    elsif v_run.status = 'pending' then
        -- our row lock made concurrent claims skip this run: tell the workers to look again
        perform pg_notify('pgdurable_wake', v_run.queue_name);
    end if;
    return v_id;
end $$;

-- Called by the SDK for pgdurable.recv(). Fenced. Consumes the oldest unread message of the
-- topic and records it as the checkpoint in the same transaction (exactly once), or waits.
create or replace function pgdurable.recv_message(
    p_run_id uuid, p_attempt integer, p_seq integer, p_key text, p_topic text,
    p_timeout double precision default null
) returns table (received boolean, payload jsonb)
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_msg pgdurable.messages%rowtype;
    v_now timestamptz := pgdurable.now();
    v_topic text := coalesce(p_topic, '');
begin
    if length(v_topic) > 500 then
        raise exception 'message topic must be at most 500 characters' using errcode = 'PD003';
    end if;
    perform pgdurable._check_seconds(p_timeout, 'recv timeout');
    perform pgdurable._fence(p_run_id, p_attempt);
    select * into v_msg from pgdurable.messages m
     where m.run_id = p_run_id and m.topic = v_topic and m.consumed_at is null
     order by m.id limit 1 for update;
    if found then
        update pgdurable.messages set consumed_at = v_now where id = v_msg.id;
        insert into pgdurable.checkpoints (run_id, step_key, seq, kind, step_name, output,
                                           run_attempt, started_at, completed_at)
        values (p_run_id, p_key, p_seq, 'message', 'recv:' || v_topic, v_msg.payload, p_attempt, v_now, v_now);
        delete from pgdurable.timers where run_id = p_run_id;
        return query select true, v_msg.payload;
        return;
    end if;
    perform pgdurable._suspend_waiting(p_run_id, 'message:' || v_topic, p_timeout, p_seq, p_key,
                                       'message', 'recv:' || v_topic);
    return query select false, null::jsonb;
end $$;

-- Called by the SDK when a workflow waits for another run (handle.result() of a child,
-- gather()). Fenced. If the target has finished, its outcome is recorded as the checkpoint and
-- returned; else the run waits, holding no worker, until the target ends.
create or replace function pgdurable.wait_run(
    p_run_id uuid, p_attempt integer, p_seq integer, p_key text, p_target uuid
) returns table (finished boolean, status text, output jsonb, error jsonb)
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_t pgdurable.runs%rowtype;
    v_now timestamptz := pgdurable.now();
begin
    select * into v_t from pgdurable.runs r where r.id = p_target for share;
    perform pgdurable._fence(p_run_id, p_attempt);
    if v_t.id is null then
        raise exception 'run % does not exist', p_target using errcode = 'PD001';
    end if;
    if v_t.status in ('completed', 'failed', 'cancelled') then
        insert into pgdurable.checkpoints (run_id, step_key, seq, kind, step_name, output, error,
                                           run_attempt, started_at, completed_at)
        values (p_run_id, p_key, p_seq, 'result', v_t.workflow_name,
                jsonb_build_object('run_id', v_t.id, 'status', v_t.status, 'output', v_t.output),
                case when v_t.status = 'completed' then null else v_t.error end,
                p_attempt, v_now, v_now);
        return query select true, v_t.status, v_t.output, v_t.error;
        return;
    end if;
    perform pgdurable._suspend_waiting(p_run_id, 'run:' || p_target, null, p_seq, p_key, 'result',
                                       v_t.workflow_name);
    if v_t.status = 'pending' then
        -- our share lock made concurrent claims skip the target: tell the workers to look again
        perform pg_notify('pgdurable_wake', v_t.queue_name);
    end if;
    return query select false, v_t.status, null::jsonb, null::jsonb;
end $$;

-- Called by the SDK while a failed or cancelled run executes its compensations: like
-- record_checkpoint, fenced by attempt, but allowed on a run whose cancel was requested.
create or replace function pgdurable.record_compensation(
    p_run_id uuid, p_attempt integer, p_seq integer, p_step_key text, p_step_name text,
    p_output jsonb, p_error jsonb default null, p_attempts integer default 1
) returns void
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
begin
    perform 1 from pgdurable.runs
     where id = p_run_id and attempt = p_attempt and status = 'running' for share;
    if not found then
        raise exception 'lease lost on run % (attempt %)', p_run_id, p_attempt using errcode = 'PD002';
    end if;
    insert into pgdurable.checkpoints (run_id, step_key, seq, kind, step_name, output, error,
                                       attempts, run_attempt, started_at, completed_at)
    values (p_run_id, p_step_key, p_seq, 'step', p_step_name, p_output, p_error, p_attempts,
            p_attempt, v_now, v_now);
end $$;

-- Internal: raises PD003 unless p_key is a stream key of 1 to 500 characters and p_origin, if
-- given, is 1 to 200 characters.
create or replace function pgdurable._check_stream_key(p_key text, p_origin text) returns void
language plpgsql immutable
set search_path = pg_catalog, pgdurable, pg_temp
as $$
begin
    if p_key is null or p_key = '' or length(p_key) > 500 then
        raise exception 'stream key must be 1 to 500 characters, got %',
            coalesce(quote_literal(left(p_key, 50)), 'NULL')
            using errcode = 'PD003';
    end if;
    if p_origin = '' or length(p_origin) > 200 then
        raise exception 'stream write origin must be 1 to 200 characters (or NULL)'
            using errcode = 'PD003';
    end if;
end $$;

-- Internal: the fence of stream writes (PD001 / PD002, not PD005: a step of a run being
-- cancelled may finish writing). FOR KEY SHARE: every takeover changes the attempt under FOR
-- UPDATE, which waits for it, while heartbeats (plain updates) do not: a transaction step that
-- writes early in its transaction never holds up its worker's heartbeat.
create or replace function pgdurable._fence_stream(p_run_id uuid, p_attempt integer) returns void
language plpgsql
set search_path = pg_catalog, pgdurable, pg_temp
as $$
begin
    perform from pgdurable.runs r
     where r.id = p_run_id and r.attempt = p_attempt and r.status = 'running'
       for key share;
    if not found then
        perform pgdurable._fence(p_run_id, p_attempt);
        raise exception 'lease lost on run % (attempt %)', p_run_id, p_attempt using errcode = 'PD002';
    end if;
end $$;

-- Called by the SDK for write_stream() (and by workers in any language): appends p_value to
-- stream p_key of a running run (fenced by attempt) and NOTIFYs pgdurable_stream '<run>:<key>'.
-- Idempotent on p_origin: a replayed write returns the first one's offset. PD006 once the
-- stream is closed. Returns the value's offset.
create or replace function pgdurable.write_stream(
    p_run_id uuid, p_attempt integer, p_key text, p_value jsonb, p_origin text default null
) returns integer
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_seq integer;
    v_closed boolean;
begin
    perform pgdurable._check_stream_key(p_key, p_origin);
    perform pgdurable._check_json(p_value, format('value of stream %s', p_key));
    perform pgdurable._fence_stream(p_run_id, p_attempt);
    loop
        if p_origin is not null then
            select s.seq into v_seq from pgdurable.streams s
             where s.run_id = p_run_id and s.stream_key = p_key and s.origin = p_origin;
            if found then
                return v_seq;
            end if;
        end if;
        select s.seq + 1, s.closed into v_seq, v_closed from pgdurable.streams s
         where s.run_id = p_run_id and s.stream_key = p_key
         order by s.seq desc limit 1;
        if v_closed then
            raise exception 'stream % of run % is closed', quote_literal(p_key), p_run_id
                using errcode = 'PD006',
                      hint = 'write every value before closing the stream; a closed stream takes no more';
        end if;
        v_seq := coalesce(v_seq, 0);
        insert into pgdurable.streams (run_id, stream_key, seq, value, origin, created_at)
        values (p_run_id, p_key, v_seq, coalesce(p_value, 'null'), p_origin, pgdurable.now())
        on conflict do nothing;
        -- else a concurrent writer took this offset (or this origin): look again
        exit when found;
    end loop;
    perform pg_notify('pgdurable_stream', p_run_id || ':' || p_key);
    return v_seq;
end $$;

-- Called by the SDK for close_stream(): ends stream p_key of a running run with a closing row
-- (closed, no value) and wakes its readers. Fenced by attempt; idempotent (closing a closed
-- stream returns its closing offset). p_origin as for write_stream. Returns the offset.
create or replace function pgdurable.close_stream(
    p_run_id uuid, p_attempt integer, p_key text, p_origin text default null
) returns integer
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_seq integer;
    v_closed boolean;
begin
    perform pgdurable._check_stream_key(p_key, p_origin);
    perform pgdurable._fence_stream(p_run_id, p_attempt);
    loop
        select s.seq, s.closed into v_seq, v_closed from pgdurable.streams s
         where s.run_id = p_run_id and s.stream_key = p_key
         order by s.seq desc limit 1;
        if v_closed then
            return v_seq;
        end if;
        if p_origin is not null and exists (
                select from pgdurable.streams s
                 where s.run_id = p_run_id and s.stream_key = p_key and s.origin = p_origin) then
            raise exception 'origin % already names a value of stream % of run %',
                quote_literal(p_origin), quote_literal(p_key), p_run_id
                using errcode = 'PD003',
                      hint = 'give the closing row an origin of its own';
        end if;
        v_seq := coalesce(v_seq + 1, 0);
        insert into pgdurable.streams (run_id, stream_key, seq, value, closed, origin, created_at)
        values (p_run_id, p_key, v_seq, null, true, p_origin, pgdurable.now())
        on conflict do nothing;
        exit when found;
    end loop;
    perform pg_notify('pgdurable_stream', p_run_id || ':' || p_key);
    return v_seq;
end $$;

-- Called by readers (the SDK, psql, any service): up to p_limit rows of stream p_key from
-- offset p_from_seq, the closing row included, each with the run's status as of the same
-- snapshot: no further row and a finished run_status mean the stream is complete. PD001: no run.
create or replace function pgdurable.read_stream(
    p_run_id uuid, p_key text, p_from_seq integer default 0, p_limit integer default 1000
) returns table (seq integer, value jsonb, closed boolean, run_status text)
language plpgsql stable security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_status text;
begin
    perform pgdurable._check_stream_key(p_key, null);
    if p_from_seq is null or p_from_seq < 0 or p_limit is null or p_limit not between 1 and 10000 then
        raise exception 'read_stream needs p_from_seq >= 0 and p_limit from 1 to 10000, got % and %',
            coalesce(p_from_seq::text, 'NULL'), coalesce(p_limit::text, 'NULL')
            using errcode = 'PD004';
    end if;
    select r.status into v_status from pgdurable.runs r where r.id = p_run_id;
    if not found then
        raise exception 'run % does not exist', p_run_id using errcode = 'PD001';
    end if;
    return query
    select s.seq, s.value, s.closed, v_status from pgdurable.streams s
     where s.run_id = p_run_id and s.stream_key = p_key and s.seq >= p_from_seq
     order by s.seq
     limit p_limit;
end $$;

-- Called by every worker at start and every few seconds after: records what it serves (queues,
-- and each workflow with its default queue) so SQL starts use a workflow's registered queue and
-- runs nobody serves are visible in unserved_runs. p_workflows: [{"name": ..., "queue": ...}].
create or replace function pgdurable.register_worker(
    p_worker_id text, p_queues text[], p_workflows jsonb
) returns void
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_now timestamptz := pgdurable.now();
    v_names text[];
begin
    if p_worker_id is null or length(p_worker_id) not between 1 and 200
       or p_queues is null or jsonb_typeof(p_workflows) is distinct from 'array' then
        raise exception 'register_worker needs a worker id of 1 to 200 characters, queues and a JSON array of workflows'
            using errcode = 'PD003';
    end if;
    select coalesce(array_agg(w ->> 'name' order by w ->> 'name'), '{}') into v_names
      from jsonb_array_elements(p_workflows) w;
    insert into pgdurable.workers (id, queues, workflows, started_at, last_seen_at)
    values (p_worker_id, p_queues, v_names, v_now, v_now)
    on conflict (id) do update
       set queues = excluded.queues, workflows = excluded.workflows, last_seen_at = v_now;
    insert into pgdurable.workflows (name, queue_name, updated_at)
    select w ->> 'name', w ->> 'queue', v_now from jsonb_array_elements(p_workflows) w
     where w ->> 'name' is not null and w ->> 'queue' is not null
    on conflict (name) do update
       set queue_name = excluded.queue_name, updated_at = v_now
     where workflows.queue_name is distinct from excluded.queue_name
        or workflows.updated_at < v_now - interval '1 minute';
    -- workers that vanished without unregistering: forget them after a day
    delete from pgdurable.workers where last_seen_at < v_now - interval '1 day';
end $$;

-- Called by a worker that stops cleanly: it no longer serves anything.
create or replace function pgdurable.unregister_worker(p_worker_id text) returns void
language sql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
    delete from pgdurable.workers where id = p_worker_id
$$;

-- Pending runs that no live worker (seen within the last minute) serves: a workflow no worker
-- has registered (a typo, or not deployed yet), or one whose workers do not claim its queue.
create or replace view pgdurable.unserved_runs as
select r.id, r.workflow_id, r.workflow_name, r.queue_name, r.created_at, r.available_at,
       case when w.name is null
            then format('no worker has registered workflow %s', r.workflow_name)
            else format('no live worker serves workflow %s on queue %s', r.workflow_name,
                        r.queue_name) end as reason
  from pgdurable.runs r
  left join pgdurable.workflows w on w.name = r.workflow_name
 where r.status = 'pending'
   and not exists (select from pgdurable.workers k
                    where k.last_seen_at > pgdurable.now() - interval '1 minute'
                      and r.queue_name = any (k.queues) and r.workflow_name = any (k.workflows));

-- A view of every run with its progress, for dashboards and psql.
create or replace view pgdurable.run_overview as
select r.id, r.workflow_id, r.workflow_name, r.queue_name, r.status, r.attempt, r.recoveries,
       r.worker_id, r.created_at, r.started_at, r.finished_at,
       (select count(*) from pgdurable.checkpoints k where k.run_id = r.id) as checkpoints,
       t.fire_at as wakes_at, r.wait_for, r.note, r.error ->> 'type' as error_type,
       r.error ->> 'message' as error_message, r.disconnects
  from pgdurable.runs r
  left join pgdurable.timers t on t.run_id = r.id;

-- Each queue with runs or settings: its limits, whether it is paused, its runs by status and the
-- age of its oldest runnable pending run: what `pgdurable queues` and a dashboard show.
create or replace view pgdurable.queue_overview as
    with counts as (
        select r.queue_name,
               count(*) filter (where r.status = 'pending') as pending,
               count(*) filter (where r.status = 'running') as running,
               count(*) filter (where r.status = 'sleeping') as sleeping,
               count(*) filter (where r.status = 'waiting') as waiting,
               min(r.available_at) filter (where r.status = 'pending') as oldest_pending_at
          from pgdurable.runs r
         where r.status in ('pending', 'running', 'sleeping', 'waiting')
         group by r.queue_name)
    select coalesce(q.name, c.queue_name) as queue_name,
           q.concurrency, q.key_concurrency, q.key_fifo,
           q.rate_count, q.rate_period, q.key_rate_count, q.key_rate_period,
           coalesce(q.paused, false) as paused,
           coalesce(c.pending, 0) as pending, coalesce(c.running, 0) as running,
           coalesce(c.sleeping, 0) as sleeping, coalesce(c.waiting, 0) as waiting,
           greatest(pgdurable.now() - c.oldest_pending_at, interval '0') as oldest_pending_age,
           q.queue_name is not null as configured
      from (select *, name as queue_name from pgdurable.queues) q
      full join counts c on c.queue_name = q.name;

-- Called by the dashboard and the CLI, in the transaction of the action they take: records who
-- did it. p_action is a lower-case verb (cancel, retry, pause_queue, ...); p_run_id the run it
-- acted on, p_target a queue, schedule or event name otherwise. Returns the entry's id.
create or replace function pgdurable.record_action(
    p_actor text, p_action text, p_run_id uuid default null, p_target text default null,
    p_detail jsonb default null
) returns bigint
language plpgsql security definer
set search_path = pg_catalog, pgdurable, pg_temp
as $$
declare
    v_id bigint;
begin
    if p_actor is null or length(p_actor) not between 1 and 200 then
        raise exception 'record_action: actor must be 1 to 200 characters'
            using errcode = 'PD003', hint = 'name who acted, e.g. the dashboard user or os user';
    end if;
    if p_action is null or p_action !~ '^[a-z_]{1,50}$' then
        raise exception 'record_action: invalid action %', quote_literal(p_action)
            using errcode = 'PD003', hint = 'actions are lower-case words joined by _, e.g. retry';
    end if;
    insert into pgdurable.audit_log (at, actor, action, run_id, target, detail)
    values (pgdurable.now(), p_actor, p_action, p_run_id, left(p_target, 500), p_detail)
    returning id into v_id;
    return v_id;
end $$;

insert into pgdurable.schema_version (version) values (5) on conflict do nothing;
