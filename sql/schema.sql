-- pgdurable schema, version 1. Durable execution on PostgreSQL alone.
--
-- Tables (schema pgdurable):
--   runs            one row per workflow run: identity, input/output/error, status, lease, timing
--   checkpoints     one row per completed durable operation of a run, keyed by (run_id, step_key)
--   timers          when a sleeping or waiting run must wake (sleep end, retry, wait timeout)
--   events          named durable events; waiters read them by name
--   messages        per-run mailbox, FIFO per topic, each message consumed exactly once
--   clock           one row: the offset added to now() (tests shift time instead of sleeping)
--   schema_version  the versions applied by `pgdurable init`
--
-- A run's lifecycle:
--   start_run       inserts it 'pending' (available_at = now + delay) and NOTIFYs its queue.
--   claim_runs      moves due timers' runs and expired leases back to 'pending', then takes up to
--                   N pending runs FOR UPDATE SKIP LOCKED: status 'running', attempt + 1 (the
--                   fencing token), a lease, and its checkpoints in the same result.
--   record_checkpoint  (fenced by run id + attempt) stores one completed operation.
--   sleep_run / wait_* suspend it ('sleeping' / 'waiting') with a timer; it holds no worker.
--   schedule_retry  suspends it until a step's next retry.
--   complete_run / fail_run end it; release_run hands it back ('pending') at once.
--   heartbeat       extends every lease of a worker in one statement.
--   cancel_run, resume_run, retry_run, fork_run, gc_runs operate on it from anywhere.
-- Every worker write is fenced: it locks the run row FOR SHARE and checks (id, attempt,
-- status 'running'); a worker whose lease was taken over gets SQLSTATE PD002 and rolls back.
--
-- Errors raised here use SQLSTATE class PD:
--   PD001 run not found      PD002 lease lost (fenced)   PD003 invalid input
--   PD004 invalid option     PD005 cancel requested      PD006 wrong state for this call
--   PD007 workflow_id conflict
-- This file is idempotent: applying it twice changes nothing.

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
    constraint runs_workflow_id_key unique (workflow_id),
    constraint runs_status_check check (status in
        ('pending', 'running', 'sleeping', 'waiting', 'completed', 'failed', 'cancelled')),
    constraint runs_lease_check check ((status = 'running') = (lease_expires_at is not null))
);
-- Claims read only pending rows; finished history never enters these indexes.
create index if not exists runs_claim_idx
    on pgdurable.runs (queue_name, priority desc, available_at)
    where status = 'pending';
create index if not exists runs_lease_idx
    on pgdurable.runs (lease_expires_at)
    where status = 'running';
create index if not exists runs_parent_idx
    on pgdurable.runs (parent_id)
    where parent_id is not null;
create index if not exists runs_finished_idx
    on pgdurable.runs (finished_at)
    where finished_at is not null;

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
        ('step', 'transaction', 'sleep', 'event', 'message', 'child', 'value', 'send', 'emit'))
);

create table if not exists pgdurable.timers (
    run_id  uuid primary key,
    fire_at timestamptz not null,
    reason  text not null
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

-- Engine time. Every function below reads the clock through this, so tests can shift it.
create or replace function pgdurable.now() returns timestamptz
language sql stable as $$
    select now() + (select offset_interval from pgdurable.clock where id)
$$;

-- Called by tests and operators: moves engine time by p_by (cumulative). Returns the new now().
create or replace function pgdurable.shift_clock(p_by interval) returns timestamptz
language sql as $$
    update pgdurable.clock set offset_interval = offset_interval + p_by where id;
    select now() + (select offset_interval from pgdurable.clock where id)
$$;

-- Internal: the error raised when a worker's fencing token is stale.
create or replace function pgdurable._fence(p_run_id uuid, p_attempt integer) returns void
language plpgsql as $$
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

-- Called by the SDK and by SQL users to start a workflow run; usable inside the caller's
-- transaction (the run exists only if it commits). Idempotent on workflow_id. Returns the run id.
-- p_input: {"args": [...], "kwargs": {...}}. p_options keys: workflow_id, queue, priority,
-- delay (seconds), on_conflict ('return' | 'raise'), parent_id, max_recoveries, timeout (seconds).
create or replace function pgdurable.start_run(
    p_workflow_name text,
    p_input jsonb default '{"args": [], "kwargs": {}}',
    p_options jsonb default '{}'
) returns uuid
language plpgsql as $$
declare
    v_now timestamptz := pgdurable.now();
    v_id uuid := gen_random_uuid();
    v_key text;
    v_queue text;
    v_delay double precision;
    v_timeout double precision;
    v_existing pgdurable.runs%rowtype;
    v_parent pgdurable.runs%rowtype;
    v_deadline timestamptz;
begin
    if p_workflow_name is null or p_workflow_name !~ '^[A-Za-z_][A-Za-z0-9_.:<>-]{0,199}$' then
        raise exception 'invalid workflow name %', coalesce(quote_literal(p_workflow_name), 'NULL')
            using errcode = 'PD003',
                  hint = 'use the registered name: letters, digits and _ . : < > -, at most 200 characters';
    end if;
    if p_input is null or jsonb_typeof(p_input) <> 'object'
       or jsonb_typeof(coalesce(p_input -> 'args', '[]')) <> 'array'
       or jsonb_typeof(coalesce(p_input -> 'kwargs', '{}')) <> 'object'
       or exists (select 1 from jsonb_object_keys(p_input) k where k not in ('args', 'kwargs')) then
        raise exception 'invalid input for workflow %: %', p_workflow_name, coalesce(p_input::text, 'NULL')
            using errcode = 'PD003',
                  hint = 'pass a JSON object {"args": [...], "kwargs": {...}}';
    end if;
    if p_options is null or jsonb_typeof(p_options) <> 'object' then
        raise exception 'options must be a JSON object, got %', coalesce(p_options::text, 'NULL')
            using errcode = 'PD004';
    end if;
    select string_agg(k, ', ') into v_key from jsonb_object_keys(p_options) k
        where k not in ('workflow_id', 'queue', 'priority', 'delay', 'on_conflict', 'parent_id',
                        'max_recoveries', 'timeout');
    if v_key is not null then
        raise exception 'unknown start option(s): %', v_key
            using errcode = 'PD004',
                  hint = 'valid options: workflow_id, queue, priority, delay, on_conflict, parent_id, max_recoveries, timeout';
    end if;

    v_queue := coalesce(p_options ->> 'queue', 'default');
    if v_queue !~ '^[A-Za-z0-9_.:-]{1,100}$' then
        raise exception 'invalid queue name %', quote_literal(v_queue)
            using errcode = 'PD004',
                  hint = 'queue names use letters, digits and _ . : -, 1 to 100 characters';
    end if;
    v_key := coalesce(p_options ->> 'workflow_id', v_id::text);
    if v_key = '' or length(v_key) > 500 then
        raise exception 'workflow_id must be 1 to 500 characters' using errcode = 'PD004';
    end if;
    if coalesce(p_options ->> 'on_conflict', 'return') not in ('return', 'raise') then
        raise exception 'on_conflict must be ''return'' or ''raise'', got %', p_options ->> 'on_conflict'
            using errcode = 'PD004';
    end if;
    begin
        v_delay := coalesce((p_options ->> 'delay')::double precision, 0);
        v_timeout := (p_options ->> 'timeout')::double precision;
        if v_delay < 0 or v_timeout <= 0 or (p_options ->> 'priority')::integer is null and p_options ? 'priority'
           or (p_options ->> 'max_recoveries')::integer < 0 then
            raise exception using errcode = '22023';
        end if;
        if p_options ? 'parent_id' then
            select * into v_parent from pgdurable.runs where id = (p_options ->> 'parent_id')::uuid;
            if not found then
                raise exception using errcode = '22023';
            end if;
        end if;
    exception when others then
        raise exception 'invalid start options %', p_options
            using errcode = 'PD004',
                  hint = 'delay and timeout are seconds (delay >= 0, timeout > 0), priority and max_recoveries integers, parent_id an existing run id';
    end;
    v_deadline := least(v_now + make_interval(secs => v_timeout), v_parent.deadline_at);

    insert into pgdurable.runs (id, workflow_id, workflow_name, queue_name, status, priority, input,
                                max_recoveries, available_at, parent_id, deadline_at,
                                created_at, updated_at)
    values (v_id, v_key, p_workflow_name, v_queue, 'pending',
            coalesce((p_options ->> 'priority')::integer, 0), p_input,
            coalesce((p_options ->> 'max_recoveries')::integer, 10),
            v_now + make_interval(secs => v_delay), v_parent.id, v_deadline, v_now, v_now)
    on conflict (workflow_id) do nothing;

    if found then
        if v_delay = 0 then
            perform pg_notify('pgdurable_wake', v_queue);
        end if;
        return v_id;
    end if;

    select * into v_existing from pgdurable.runs where workflow_id = v_key;
    if p_options ->> 'on_conflict' = 'raise' or v_existing.workflow_name <> p_workflow_name then
        raise exception 'workflow_id % is already used by run % of workflow %', quote_literal(v_key),
            v_existing.id, v_existing.workflow_name
            using errcode = 'PD007',
                  hint = 'pick another workflow_id, or start with on_conflict => ''return'' to get the existing run';
    end if;
    return v_existing.id;
end $$;

-- Called by the SDK's start_many: starts one run per element of p_inputs in one statement.
-- p_workflow_ids may be null (ids are generated) or have one key per input.
create or replace function pgdurable.start_runs(
    p_workflow_name text,
    p_inputs jsonb[],
    p_options jsonb default '{}',
    p_workflow_ids text[] default null
) returns setof uuid
language plpgsql as $$
declare
    i integer;
begin
    if p_workflow_ids is not null and cardinality(p_workflow_ids) <> cardinality(p_inputs) then
        raise exception 'start_runs got % inputs but % workflow ids', cardinality(p_inputs), cardinality(p_workflow_ids)
            using errcode = 'PD003';
    end if;
    for i in 1 .. coalesce(cardinality(p_inputs), 0) loop
        return next pgdurable.start_run(
            p_workflow_name, p_inputs[i],
            case when p_workflow_ids is null then p_options
                 else p_options || jsonb_build_object('workflow_id', p_workflow_ids[i]) end);
    end loop;
end $$;

-- Called by claim_runs (and usable by operators): wakes runs whose timer is due, takes back
-- runs whose lease expired (dead-lettering those past max_recoveries), and fails runs past
-- their deadline. Returns the number of runs it changed.
create or replace function pgdurable.tick(p_limit integer default 100) returns integer
language plpgsql as $$
declare
    v_now timestamptz := pgdurable.now();
    v_n integer := 0;
    v_c integer;
begin
    with due as (
        delete from pgdurable.timers t
        where t.run_id in (select run_id from pgdurable.timers where fire_at <= v_now
                           order by fire_at limit p_limit for update skip locked)
        returning t.run_id, t.reason
    )
    update pgdurable.runs r
       set status = 'pending', available_at = v_now, updated_at = v_now,
           wait_for = null,
           note = case when due.reason = 'timeout' then 'wait timed out' else r.note end
      from due
     where r.id = due.run_id and r.status in ('pending', 'sleeping', 'waiting');
    get diagnostics v_c = row_count;
    v_n := v_n + v_c;

    with expired as (
        select id from pgdurable.runs
         where status = 'running' and lease_expires_at < v_now
         order by lease_expires_at limit p_limit for update skip locked
    )
    update pgdurable.runs r
       set status = case when r.recoveries >= r.max_recoveries then 'failed' else 'pending' end,
           recoveries = r.recoveries + 1,
           lease_expires_at = null,
           available_at = v_now,
           updated_at = v_now,
           finished_at = case when r.recoveries >= r.max_recoveries then v_now end,
           error = case when r.recoveries >= r.max_recoveries then jsonb_build_object(
               'type', 'DeadLettered',
               'message', format('run exceeded %s crash recoveries; worker %s lost its lease at %s',
                                 r.max_recoveries, r.worker_id, r.lease_expires_at),
               'traceback', null) else r.error end,
           note = format('lease of worker %s expired at %s', r.worker_id, r.lease_expires_at)
      from expired
     where r.id = expired.id;
    get diagnostics v_c = row_count;
    v_n := v_n + v_c;

    return v_n;
end $$;

-- Called by workers: takes up to p_limit runnable runs of p_queues for p_worker_id with a lease
-- of p_lease seconds. Each row carries the run's checkpoints (ordered by seq) so replay needs no
-- further query. Concurrent claimers never block each other (SKIP LOCKED).
create or replace function pgdurable.claim_runs(
    p_worker_id text,
    p_queues text[],
    p_limit integer,
    p_lease double precision default 30
) returns table (id uuid, workflow_id text, workflow_name text, queue_name text, input jsonb,
                 attempt integer, deadline_at timestamptz, retry_step_key text,
                 retry_step_attempts integer, checkpoints jsonb)
language plpgsql as $$
declare
    v_now timestamptz := pgdurable.now();
begin
    if exists (select 1 from pgdurable.timers where fire_at <= v_now)
       or exists (select 1 from pgdurable.runs where status = 'running' and lease_expires_at < v_now) then
        perform pgdurable.tick();
    end if;
    return query
    with picked as (
        select r.id from pgdurable.runs r
         where r.status = 'pending' and r.queue_name = any(p_queues) and r.available_at <= v_now
         order by r.priority desc, r.available_at
         limit p_limit
         for update skip locked
    ), claimed as (
        update pgdurable.runs r
           set status = 'running', attempt = r.attempt + 1, worker_id = p_worker_id,
               lease_expires_at = v_now + make_interval(secs => p_lease),
               started_at = coalesce(r.started_at, v_now), updated_at = v_now
          from picked
         where r.id = picked.id
        returning r.*
    )
    select c.id, c.workflow_id, c.workflow_name, c.queue_name, c.input, c.attempt, c.deadline_at,
           c.retry_step_key, c.retry_step_attempts,
           coalesce((select jsonb_agg(jsonb_build_object(
                        'seq', k.seq, 'key', k.step_key, 'kind', k.kind, 'name', k.step_name,
                        'output', k.output, 'error', k.error) order by k.seq)
                     from pgdurable.checkpoints k where k.run_id = c.id), '[]'::jsonb)
      from claimed c;
end $$;

-- Called by the SDK when a workflow function is called directly: claims that one run for
-- p_worker_id if it is pending (or its lease expired). Returns no row if another worker has it.
create or replace function pgdurable.claim_run(
    p_run_id uuid,
    p_worker_id text,
    p_lease double precision default 30
) returns table (id uuid, workflow_id text, workflow_name text, queue_name text, input jsonb,
                 attempt integer, deadline_at timestamptz, retry_step_key text,
                 retry_step_attempts integer, checkpoints jsonb)
language plpgsql as $$
declare
    v_now timestamptz := pgdurable.now();
begin
    return query
    with claimed as (
        update pgdurable.runs r
           set status = 'running', attempt = r.attempt + 1, worker_id = p_worker_id,
               lease_expires_at = v_now + make_interval(secs => p_lease),
               started_at = coalesce(r.started_at, v_now), updated_at = v_now
         where r.id = p_run_id
           and (r.status = 'pending' or (r.status = 'running' and r.lease_expires_at < v_now))
        returning r.*
    )
    select c.id, c.workflow_id, c.workflow_name, c.queue_name, c.input, c.attempt, c.deadline_at,
           c.retry_step_key, c.retry_step_attempts,
           coalesce((select jsonb_agg(jsonb_build_object(
                        'seq', k.seq, 'key', k.step_key, 'kind', k.kind, 'name', k.step_name,
                        'output', k.output, 'error', k.error) order by k.seq)
                     from pgdurable.checkpoints k where k.run_id = c.id), '[]'::jsonb)
      from claimed c;
end $$;

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
language plpgsql as $$
begin
    perform pgdurable._fence(p_run_id, p_attempt);
    insert into pgdurable.checkpoints (run_id, step_key, seq, kind, step_name, output, error,
                                       attempts, run_attempt, started_at, completed_at)
    values (p_run_id, p_step_key, p_seq, p_kind, p_step_name, p_output, p_error,
            p_attempts, p_attempt, p_started_at, pgdurable.now());
    if p_error is null then
        update pgdurable.runs set retry_step_key = null, retry_step_attempts = 0
         where id = p_run_id and retry_step_key = p_step_key;
    end if;
end $$;

-- Called by the SDK when a workflow function returns. Fenced. Notifies 'pgdurable_done'.
create or replace function pgdurable.complete_run(p_run_id uuid, p_attempt integer, p_output jsonb)
returns void
language plpgsql as $$
declare
    v_now timestamptz := pgdurable.now();
begin
    perform pgdurable._fence(p_run_id, p_attempt);
    update pgdurable.runs
       set status = 'completed', output = p_output, lease_expires_at = null, worker_id = null,
           finished_at = v_now, updated_at = v_now, note = null
     where id = p_run_id;
    perform pg_notify('pgdurable_done', p_run_id::text);
end $$;

-- Called by the SDK when a workflow raises (or a step exhausts its retries). Fenced.
-- p_error: {"type", "message", "traceback"}.
create or replace function pgdurable.fail_run(p_run_id uuid, p_attempt integer, p_error jsonb)
returns void
language plpgsql as $$
declare
    v_now timestamptz := pgdurable.now();
begin
    perform pgdurable._fence(p_run_id, p_attempt);
    update pgdurable.runs
       set status = 'failed', error = p_error, lease_expires_at = null, worker_id = null,
           finished_at = v_now, updated_at = v_now
     where id = p_run_id;
    perform pg_notify('pgdurable_done', p_run_id::text);
end $$;

-- Called by the SDK when a step failed and its next retry is far away: the run leaves the
-- worker and a timer makes it pending again at now + p_delay. Fenced.
create or replace function pgdurable.schedule_retry(
    p_run_id uuid, p_attempt integer, p_step_key text, p_step_attempts integer,
    p_delay double precision, p_error jsonb
) returns timestamptz
language plpgsql as $$
declare
    v_now timestamptz := pgdurable.now();
    v_at timestamptz := v_now + make_interval(secs => p_delay);
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
language plpgsql as $$
declare
    v_now timestamptz := pgdurable.now();
    v_at timestamptz;
begin
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

-- Called by the SDK when a worker stops or cannot run a claimed run (unknown workflow on a
-- rolling deploy, lost connection): the run is pending again and claimable after p_delay
-- seconds, with p_reason visible in runs.note. Does not count as a crash recovery.
create or replace function pgdurable.release_run(
    p_run_id uuid, p_attempt integer, p_reason text default null, p_delay double precision default 0
) returns boolean
language plpgsql as $$
declare
    v_now timestamptz := pgdurable.now();
    v_queue text;
begin
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
) returns table (run_id uuid, lost boolean, cancel_requested boolean)
language plpgsql as $$
declare
    v_now timestamptz := pgdurable.now();
begin
    return query
    with held as (
        select u.id, u.att from unnest(p_run_ids, p_attempts) as u(id, att)
    ), extended as (
        update pgdurable.runs r
           set lease_expires_at = v_now + make_interval(secs => p_lease)
          from held
         where r.id = held.id and r.attempt = held.att and r.status = 'running'
        returning r.id, r.cancel_requested
    )
    select held.id, e.id is null, coalesce(e.cancel_requested, false)
      from held left join extended e on e.id = held.id
     where e.id is null or e.cancel_requested;
end $$;

-- Called by users (SDK, CLI, psql) to cancel a run and its unfinished children. A pending,
-- sleeping or waiting run ends 'cancelled' at once; a running one is flagged and its worker
-- stops it at its next durable operation. Returns the run's status after the call.
create or replace function pgdurable.cancel_run(p_run_id uuid) returns text
language plpgsql as $$
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
    else
        update pgdurable.runs
           set status = 'cancelled', finished_at = v_now, updated_at = v_now, wait_for = null,
               error = jsonb_build_object('type', 'Cancelled', 'message', 'run was cancelled',
                                          'traceback', null)
         where id = p_run_id;
        delete from pgdurable.timers where run_id = p_run_id;
        perform pg_notify('pgdurable_done', p_run_id::text);
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
language plpgsql as $$
declare
    v_now timestamptz := pgdurable.now();
begin
    update pgdurable.runs
       set status = 'cancelled', finished_at = v_now, updated_at = v_now,
           lease_expires_at = null, worker_id = null,
           error = jsonb_build_object('type', 'Cancelled', 'message', 'run was cancelled',
                                      'traceback', null)
     where id = p_run_id and attempt = p_attempt and status = 'running';
    perform pg_notify('pgdurable_done', p_run_id::text);
end $$;

-- Called by users to restart a failed or cancelled run from its last checkpoint: completed
-- operations are replayed, the rest runs again. Returns true if the run was restarted.
create or replace function pgdurable.resume_run(p_run_id uuid) returns boolean
language plpgsql as $$
declare
    v_now timestamptz := pgdurable.now();
    v_run pgdurable.runs%rowtype;
begin
    select * into v_run from pgdurable.runs where id = p_run_id for update;
    if not found then
        raise exception 'run % does not exist', p_run_id using errcode = 'PD001';
    end if;
    if v_run.status not in ('failed', 'cancelled') then
        raise exception 'run % is %; only failed or cancelled runs can be resumed', p_run_id, v_run.status
            using errcode = 'PD006';
    end if;
    -- a failed step's error checkpoint would replay the failure: drop the failed ones
    delete from pgdurable.checkpoints where run_id = p_run_id and error is not null and kind in ('step', 'transaction');
    update pgdurable.runs
       set status = 'pending', available_at = v_now, updated_at = v_now, finished_at = null,
           error = null, output = null, cancel_requested = false, recoveries = 0,
           retry_step_key = null, retry_step_attempts = 0, note = 'resumed'
     where id = p_run_id;
    perform pg_notify('pgdurable_wake', v_run.queue_name);
    return true;
end $$;

-- Called by users: a retry of a failed run is a resume from its last checkpoint.
create or replace function pgdurable.retry_run(p_run_id uuid) returns boolean
language sql as $$
    select pgdurable.resume_run(p_run_id)
$$;

-- Called by users to start a new run that replays p_run_id's checkpoints before sequence
-- p_from_seq and executes the rest anew. Returns the new run's id.
create or replace function pgdurable.fork_run(p_run_id uuid, p_from_seq integer, p_workflow_id text default null)
returns uuid
language plpgsql as $$
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
        || case when p_workflow_id is null then '{}'::jsonb else jsonb_build_object('workflow_id', p_workflow_id) end);
    insert into pgdurable.checkpoints (run_id, step_key, seq, kind, step_name, output, error,
                                       attempts, run_attempt, started_at, completed_at)
    select v_new, step_key, seq, kind, step_name, output, error, attempts, 0, started_at, completed_at
      from pgdurable.checkpoints where run_id = p_run_id and seq < p_from_seq;
    return v_new;
end $$;

-- Called by operators or a schedule: deletes finished runs (with their checkpoints, timers and
-- messages) that finished before now - p_older_than. Returns how many runs it deleted.
create or replace function pgdurable.gc_runs(p_older_than interval, p_limit integer default 10000)
returns integer
language plpgsql as $$
declare
    v_ids uuid[];
begin
    select array_agg(id) into v_ids from (
        select id from pgdurable.runs
         where finished_at < pgdurable.now() - p_older_than
           and status in ('completed', 'failed', 'cancelled')
         order by finished_at limit p_limit) s;
    if v_ids is null then
        return 0;
    end if;
    delete from pgdurable.checkpoints where run_id = any(v_ids);
    delete from pgdurable.messages where run_id = any(v_ids);
    delete from pgdurable.timers where run_id = any(v_ids);
    delete from pgdurable.runs where id = any(v_ids);
    return cardinality(v_ids);
end $$;

-- A view of every run with its progress, for dashboards and psql.
create or replace view pgdurable.run_overview as
select r.id, r.workflow_id, r.workflow_name, r.queue_name, r.status, r.attempt, r.recoveries,
       r.worker_id, r.created_at, r.started_at, r.finished_at,
       (select count(*) from pgdurable.checkpoints k where k.run_id = r.id) as checkpoints,
       t.fire_at as wakes_at, r.wait_for, r.note, r.error ->> 'type' as error_type,
       r.error ->> 'message' as error_message
  from pgdurable.runs r
  left join pgdurable.timers t on t.run_id = r.id;

insert into pgdurable.schema_version (version) values (1) on conflict do nothing;
