-- Every statement the Python SDK sends, by name. Loaded once by pgdurable._queries.
-- Blocks start with "-- name: NAME" followed by a one-line description.

-- name: schema_present
-- Whether the schema_version table exists (else the schema is missing).
select pg_catalog.to_regclass('pgdurable.schema_version') is not null;

-- name: schema_version
-- The newest applied schema version.
select pg_catalog.max(version) from pgdurable.schema_version;

-- name: init_lock
-- Serializes concurrent `pgdurable init` runs.
select pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pgdurable.init'));

-- name: pin_search_path
-- For the rest of the transaction, names resolve in pg_catalog and pgdurable only.
select pg_catalog.set_config('search_path', %s, true);

-- name: record_version
-- Record a migration applied by `pgdurable init`.
insert into pgdurable.schema_version (version) values (%s) on conflict do nothing;

-- name: schema_functions
-- Every function of the pgdurable schema as the catalog stores it, to compare with the package.
select p.proname::text, p.prosecdef, p.proconfig, p.prosrc
  from pg_catalog.pg_proc p
 where p.pronamespace = 'pgdurable'::pg_catalog.regnamespace;

-- name: schema_owners
-- The owner of the pgdurable schema and of every function and relation in it.
select 'schema', n.nspname::text, pg_catalog.pg_get_userbyid(n.nspowner)::text
  from pg_catalog.pg_namespace n where n.nspname = 'pgdurable'
union all
select 'function', p.proname::text, pg_catalog.pg_get_userbyid(p.proowner)::text
  from pg_catalog.pg_proc p where p.pronamespace = 'pgdurable'::pg_catalog.regnamespace
union all
select 'relation', c.relname::text, pg_catalog.pg_get_userbyid(c.relowner)::text
  from pg_catalog.pg_class c where c.relnamespace = 'pgdurable'::pg_catalog.regnamespace;

-- name: schema_owner
-- The pgdurable schema's owner and the role connected.
select pg_catalog.pg_get_userbyid(n.nspowner)::text, current_user::text
  from pg_catalog.pg_namespace n where n.nspname = 'pgdurable';

-- name: schema_owner_rank
-- Whether the connected role is a superuser, its name, and whether the given owner is one.
select r.rolsuper, r.rolname::text,
       coalesce((select o.rolsuper from pg_catalog.pg_roles o where o.rolname = %s), false)
  from pg_catalog.pg_roles r where r.rolname = current_user;

-- name: schema_triggers
-- Triggers on pgdurable's tables (the engine defines none).
select t.tgname::text, c.relname::text
  from pg_catalog.pg_trigger t join pg_catalog.pg_class c on c.oid = t.tgrelid
 where c.relnamespace = 'pgdurable'::pg_catalog.regnamespace and not t.tgisinternal;

-- name: start_run
-- Start a run (idempotent on workflow_id).
select pgdurable.start_run(%s, %s, %s);

-- name: start_runs
-- Start many runs of one workflow in one statement; the inputs go in binary (no quoting of
-- each element: half the client cost of text).
select id from pgdurable.start_runs(%s, %b::jsonb[], %s, %s::text[]) as id;

-- name: claim_runs
-- Claim up to N runnable runs of the given queues and workflows; JSON as text, decoded per run.
select id, workflow_id, workflow_name, queue_name, input::text, attempt, deadline_at,
       retry_step_key, retry_step_attempts, has_history, cancel_requested, trace_context::text
  from pgdurable.claim_runs(%s, %s, %s, %s, %s);

-- name: claim_run
-- Claim one given run for in-process execution.
select id, workflow_id, workflow_name, queue_name, input::text, attempt, deadline_at,
       retry_step_key, retry_step_attempts, has_history, cancel_requested, trace_context::text
  from pgdurable.claim_run(%s, %s, %s);

-- name: load_history
-- A claimed run's checkpoints in order, one row each (no single value holds the history).
select seq, step_key, kind, step_name, output::text, error::text
  from pgdurable.checkpoints where run_id = %s order by seq;

-- name: tick_due
-- Fire due timers, expired leases and deadlines (a busy worker's stand-in for a claim).
select pgdurable.tick_due();

-- name: register_worker
-- Record what this worker serves (at start, then every few seconds).
select pgdurable.register_worker(%s, %s, %s);

-- name: configure_queue
-- Set a queue's flow control (App.queue(), applied by each worker at start; the CLI).
select pgdurable.configure_queue(%s, %s, %s, %s, %s, %s, %s, %s);

-- name: exit_timeouts
-- A stopping worker's last statements give up rather than wait (locks, a busy server). For the
-- rest of the transaction only: behind a transaction pooler a session setting would stay on a
-- server connection other clients get next.
select pg_catalog.set_config('lock_timeout', '2s', true),
       pg_catalog.set_config('statement_timeout', '5s', true);

-- name: backend_pid
-- The server's pid of this session: not the one the connection was told at start-up when a
-- pooler sits in between (the worker then warns unless told pooler='transaction').
select pg_catalog.pg_backend_pid();

-- name: unregister_worker
-- Forget a worker that stops cleanly.
select pgdurable.unregister_worker(%s);

-- name: record_checkpoint
-- Record a completed durable operation (fenced).
select pgdurable.record_checkpoint(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s);

-- name: complete_run
-- End a run with its output (fenced).
select pgdurable.complete_run(%s, %s, %s);

-- name: fail_run
-- End a run with an error (fenced).
select pgdurable.fail_run(%s, %s, %s);

-- name: finish_cancel
-- End a running run that observed its cancel request.
select pgdurable.finish_cancel(%s, %s);

-- name: schedule_retry
-- Suspend a run until a failed step's next retry (fenced).
select pgdurable.schedule_retry(%s, %s, %s, %s, %s, %s);

-- name: sleep_run
-- Record a durable sleep and suspend the run if its wake time is ahead (fenced).
select wake_at, suspended from pgdurable.sleep_run(%s, %s, %s, %s, %s, %s);

-- name: release_run
-- Hand a claimed run back so another worker can take it (lost connection: counted, backed off).
select pgdurable.release_run(%s, %s, %s, %s, %s);

-- name: heartbeat
-- Extend all the leases of one worker; returns lost, cancel- and pause-requested runs.
select run_id, lost, cancel_requested, pause_requested
  from pgdurable.heartbeat(%s, %s, %s, %s);

-- name: cancel_run
-- Cancel a run and its unfinished children.
select pgdurable.cancel_run(%s);

-- name: resume_run
-- Restart a failed or cancelled run from its last checkpoint.
select pgdurable.resume_run(%s);

-- name: run_by_workflow_id
-- A run's identity by its run id (when the key is uuid-shaped) or workflow_id; both on indexes.
select id, workflow_id, workflow_name from (
    select id, workflow_id, workflow_name, 0 as rank from pgdurable.runs where id = %(run_id)s
    union all
    select id, workflow_id, workflow_name, 1 from pgdurable.runs where workflow_id = %(key)s
) found order by rank limit 1;

-- name: run_state
-- A run's status, output and error (JSON as text, decoded with limits).
select status, output::text, error::text from pgdurable.runs where id = %s;

-- name: run_steps
-- A run's checkpoints in order (JSON as text, decoded with limits).
select seq, step_key, kind, step_name, output::text as output, error::text as error, attempts,
       run_attempt, started_at, completed_at
  from pgdurable.checkpoints where run_id = %s order by seq;

-- name: listen_wake
-- Workers wait for runnable runs on this channel.
listen pgdurable_wake;

-- name: listen_done
-- Handles waiting for a result listen on this channel.
listen pgdurable_done;

-- name: cli_list_runs
-- `pgdurable runs`: runs newest first from a keyset cursor (created_at, id) down, never OFFSET;
-- each filter applied only when given (the CLI sends it once, unprepared, so the plan is made
-- for the filters set); search is text in the workflow_id or an exact run id. A pending run
-- no live worker serves says why.
select id, workflow_id, workflow_name, queue_name, status, attempt, recoveries, worker_id,
       created_at, started_at, finished_at, checkpoints, wakes_at, wait_for, note,
       error_type, error_message,
       case when status = 'pending' then
           (select u.reason from pgdurable.unserved_runs u where u.id = o.id) end as unserved
  from pgdurable.run_overview o
 where (%(status)s::text is null or status = %(status)s::text)
   and (%(workflow)s::text is null or workflow_name = %(workflow)s::text)
   and (%(queue)s::text is null or queue_name = %(queue)s::text)
   and (%(since)s::timestamptz is null or created_at >= %(since)s::timestamptz)
   and (%(until)s::timestamptz is null or created_at < %(until)s::timestamptz)
   and (%(search)s::text is null or pg_catalog.strpos(workflow_id, %(search)s::text) > 0
        or id = %(search_id)s::uuid)
   and (%(cursor_at)s::timestamptz is null
        or (created_at, id) < (%(cursor_at)s::timestamptz, %(cursor_id)s::uuid))
 order by created_at desc, id desc
 limit %(limit)s;

-- name: cli_show_run
-- `pgdurable show`: every field of one run, with its pending wake-up if any.
select r.id, r.workflow_id, r.workflow_name, r.queue_name, r.status, r.priority, r.attempt,
       r.recoveries, r.max_recoveries, r.worker_id, r.lease_expires_at, r.available_at,
       r.parent_id, r.deadline_at, r.cancel_requested, r.wait_for, r.note, r.created_at,
       r.started_at, r.updated_at, r.finished_at, t.fire_at as wakes_at,
       t.reason as wake_reason, r.input::text as input, r.output::text as output,
       r.error::text as error
  from pgdurable.runs r
  left join pgdurable.timers t on t.run_id = r.id
 where r.id = %s;

-- name: cli_retry_run
-- `pgdurable retry`: restart a failed run from its last checkpoint.
select pgdurable.retry_run(%s);

-- name: cli_gc_runs
-- `pgdurable gc`: delete up to N runs that finished before now - interval.
select pgdurable.gc_runs(%s, %s);

-- name: emit_event
-- Record a durable event and wake its waiters.
select pgdurable.emit_event(%s, %s);

-- name: send_message
-- Put a message in a run's mailbox (by run id or workflow_id).
select pgdurable.send_message(%s, %s, %s);

-- name: wait_event
-- Receive an event inside a workflow, or suspend the run until it arrives (fenced).
select received, payload::text from pgdurable.wait_event(%s, %s, %s, %s, %s, %s);

-- name: recv_message
-- Consume a message inside a workflow, or suspend the run until one arrives (fenced).
select received, payload::text from pgdurable.recv_message(%s, %s, %s, %s, %s, %s);

-- name: wait_run
-- Record another run's outcome inside a workflow, or suspend until it ends (fenced).
select finished, status, output::text, error::text from pgdurable.wait_run(%s, %s, %s, %s, %s);

-- name: record_compensation
-- Record a compensation step of a failing or cancelled run (fenced by attempt only).
select pgdurable.record_compensation(%s, %s, %s, %s, %s, %s, %s, %s);

-- name: cli_gc_count
-- `pgdurable gc --dry-run` and its confirmation: how many runs gc would delete (none deleted).
select pgdurable.gc_runs(%s, 2147483647, true);

-- name: write_stream
-- Append a value to a run's stream from a step or transaction step (fenced; a retried write,
-- known by its origin, returns the first one's offset).
select pgdurable.write_stream(%s, %s, %s, %s, %s);

-- name: write_stream_in_workflow
-- Append a value written by workflow code and record it as the run's checkpoint, in one
-- statement (fenced; a replay finds the checkpoint and sends nothing).
-- Parameters: run id, attempt, key, value, origin, then run id, attempt, position, step key,
-- name for the checkpoint.
with w as (select pgdurable.write_stream(%s, %s, %s, %s, %s) as seq)
select w.seq, pgdurable.record_checkpoint(%s, %s, %s, %s, 'stream', %s, pg_catalog.to_jsonb(w.seq))
  from w;

-- name: close_stream
-- Close a run's stream from a step or transaction step (fenced, idempotent).
select pgdurable.close_stream(%s, %s, %s, %s);

-- name: close_stream_in_workflow
-- Close a stream from workflow code and record it as the run's checkpoint, in one statement.
-- Parameters: run id, attempt, key, origin, then run id, attempt, position, step key, name.
with c as (select pgdurable.close_stream(%s, %s, %s, %s) as seq)
select c.seq, pgdurable.record_checkpoint(%s, %s, %s, %s, 'stream', %s, pg_catalog.to_jsonb(c.seq))
  from c;

-- name: read_stream
-- Up to N rows of a stream from an offset (value as text, decoded with limits) with the run's
-- status from the same snapshot; no row at all: the run does not exist.
select r.status, s.seq, s.value::text, s.closed
  from pgdurable.runs r
  left join lateral pgdurable.read_stream(r.id, %s, %s, %s) s on true
 where r.id = %s;

-- name: listen_stream
-- Stream readers wake on this channel (payload '<run id>:<key>').
listen pgdurable_stream;

-- The pytest plugin (pgdurable.testing). {name} and {template} are identifiers, passed through
-- psycopg.sql.Identifier.

-- name: testing_create_database
-- An empty database: the session's template, before the schema is installed.
create database {name}

-- name: testing_clone_database
-- One test's database: a copy of the template, schema and settings included.
create database {name} template {template}

-- name: testing_drop_database
-- Drops a database the plugin created, ending the sessions still connected to it.
drop database if exists {name} with (force)

-- name: testing_allow_clock_shift
-- Test databases may move engine time; a production database refuses (PD008).
update pgdurable.settings set allow_clock_shift = true

-- name: testing_shift_clock
-- Moves engine time forward by an interval; returns the new engine time.
select pgdurable.shift_clock(%s)

-- name: testing_engine_now
-- Engine time: the server's clock plus the shifts of this database.
select pgdurable.now()

-- name: testing_busy_runs
-- The runs a test worker has yet to take or finish: running (whoever holds them), or pending
-- and due on a queue and workflow it serves. A few are enough to name in an error.
select id, workflow_id, workflow_name, status
  from pgdurable.runs
 where status = 'running'
    or (status = 'pending' and available_at <= pgdurable.now()
        and queue_name = any(%(queues)s) and workflow_name = any(%(workflows)s))
 order by created_at
 limit 10

-- name: cli_queues
-- `pgdurable queues`: every queue with settings or unfinished runs.
select queue_name, concurrency, key_concurrency, key_fifo, rate_count, rate_period,
       key_rate_count, key_rate_period, paused, pending, running, sleeping, waiting,
       oldest_pending_age, configured
  from pgdurable.queue_overview
 order by queue_name;

-- name: cli_queue_settings
-- `pgdurable queues configure`: the current settings, which the options given replace.
select concurrency, key_concurrency, key_fifo, rate_count, rate_period, key_rate_count,
       key_rate_period
  from pgdurable.queues where name = %s;

-- name: cli_pause_queue
-- `pgdurable queues pause` / `drain`: pause, and how many of its runs still run.
select pgdurable.pause_queue(%s);

-- name: cli_resume_queue
-- `pgdurable queues resume`.
select pgdurable.resume_queue(%s);

-- name: cli_reset_queue
-- `pgdurable queues reset`.
select pgdurable.reset_queue(%s);

-- name: cli_queue_running
-- `pgdurable queues drain`: how many runs of the queue are running.
select pg_catalog.count(*) from pgdurable.runs where queue_name = %s and status = 'running';

-- name: due_schedules
-- A worker's firing: the schedules due by engine time, locked (SKIP LOCKED) until it commits.
select * from pgdurable.due_schedules(%s);

-- name: fire_schedule
-- Start the runs of a schedule's due ticks and set its next tick (same transaction).
select pgdurable.fire_schedule(%s, %s, %s);

-- name: upsert_schedule
-- Write a schedule the App declares (each worker at start; the CLI).
select pgdurable.upsert_schedule(%s, %s, %s, %s, %s, %s);

-- name: cli_schedules
-- `pgdurable schedules`: every schedule and when it fires.
select name, workflow_name, cron, timezone, next_fire_at, last_fire_at, last_run_id, paused,
       catchup, catchup_max, overlap, queue_name, input
  from pgdurable.schedules order by name;

-- name: cli_trigger_schedule
-- `pgdurable schedules trigger`: run now.
select pgdurable.trigger_schedule(%s);

-- name: cli_pause_schedule
-- `pgdurable schedules pause`.
select pgdurable.pause_schedule(%s);

-- name: cli_resume_schedule
-- `pgdurable schedules resume`.
select pgdurable.resume_schedule(%s);

-- name: cli_delete_schedule
-- `pgdurable schedules delete`.
select pgdurable.delete_schedule(%s);

-- name: purge_expired
-- A worker's retention round: delete a batch of finished runs past their retention.
select pgdurable.purge_expired(%s);

-- name: set_retention
-- Write a retention rule the App declares (each worker at start).
select pgdurable.set_retention(%s, %s, %s);

-- name: cli_start_run
-- `pgdurable start`.
select pgdurable.start_run(%s, %s, %s);

-- name: cli_emit_event
-- `pgdurable emit`.
select pgdurable.emit_event(%s, %s);

-- name: cli_send_message
-- `pgdurable send`.
select pgdurable.send_message(%s, %s, %s);

-- name: cli_fork_run
-- `pgdurable fork`.
select pgdurable.fork_run(%s, %s, %s);

-- name: cli_step_position
-- `pgdurable fork --from-step`: the position of a run's step, by key or by position.
select seq from pgdurable.checkpoints
 where run_id = %s and (step_key = %s or seq::text = %s);

-- name: park_run
-- The worker parks a run whose pause was requested (fenced).
select pgdurable.park_run(%s, %s);

-- name: pause_run
-- handle.pause(), `pgdurable pause`: pause a run (at once, or at its next durable operation).
select pgdurable.pause_run(%s);

-- name: cli_engine_now
-- `pgdurable runs --since 2h`: engine time, which ages are counted back from.
select pgdurable.now();

-- name: cli_timeline_run
-- `pgdurable show --timeline`: the fields the timeline model reads, with engine time.
select r.id, r.workflow_id, r.workflow_name, r.queue_name, r.status, r.attempt, r.created_at,
       r.started_at, r.updated_at, r.finished_at, r.wait_for, r.retry_step_key,
       r.retry_step_attempts, t.fire_at as wakes_at, t.reason as wake_reason,
       r.error ->> 'type' as error_type, pgdurable.now() as now
  from pgdurable.runs r
  left join pgdurable.timers t on t.run_id = r.id
 where r.id = %s;

-- name: cli_timeline_checkpoints
-- `pgdurable show --timeline`: a run's operations in replay order (timings, no values), the
-- limit + 1 telling whether more were cut.
select seq, step_key, kind, step_name, attempts, run_attempt, started_at, completed_at,
       case when error is null then null else 'error' end as error,
       output ->> 'wake_at' as wake_at, output ->> 'run_id' as child_id
  from pgdurable.checkpoints
 where run_id = %s
 order by seq
 limit %s;

-- name: cli_timeline_children
-- `pgdurable show --timeline`: the direct children of a run (runs_parent_idx), for child bars.
select id, status, finished_at from pgdurable.runs where parent_id = %s limit %s;

-- name: cli_record_action
-- Every CLI action, in the action's own transaction: who did what (audit_log).
select pgdurable.record_action(%s, %s, %s, %s, %s);

-- name: cli_audit
-- `pgdurable audit`: who did what, newest first; on audit_log_run_idx for one run, else on
-- audit_log_at_idx.
select id, at, actor, action, run_id, target, detail
  from pgdurable.audit_log
 where (%(run_id)s::uuid is null or run_id = %(run_id)s::uuid)
   and (%(since)s::timestamptz is null or at >= %(since)s::timestamptz)
 order by at desc, id desc
 limit %(limit)s;

-- name: cli_workers
-- `pgdurable workers`: every registered worker, newest first, with how many runs it holds.
select w.id, w.queues, w.workflows, w.started_at, w.last_seen_at,
       pgdurable.now() - w.last_seen_at as last_seen_ago,
       (select pg_catalog.count(*) from pgdurable.runs r
         where r.status = 'running' and r.worker_id = w.id) as running
  from pgdurable.workers w
 order by w.last_seen_at desc, w.id
 limit %s;

-- name: cli_workflows
-- `pgdurable workflows`: the registry, each workflow with its queue, its live workers (seen in
-- the last minute) and its pending and running runs (partial indexes).
select f.name, f.queue_name, f.updated_at,
       (select pg_catalog.count(*) from pgdurable.workers w
         where f.name = any(w.workflows)
           and w.last_seen_at > pgdurable.now() - interval '1 minute') as live_workers,
       (select pg_catalog.count(*) from pgdurable.runs r
         where r.status = 'pending' and r.workflow_name = f.name) as pending,
       (select pg_catalog.count(*) from pgdurable.runs r
         where r.status = 'running' and r.workflow_name = f.name) as running
  from pgdurable.workflows f
 order by f.name
 limit %s;

-- name: cli_gc_estimate
-- `pgdurable gc` progress: about how many runs it will delete (runs_finished_idx; no lock, and
-- without gc_runs' check for unfinished parents, so an upper bound).
select pg_catalog.count(*) from pgdurable.runs
 where finished_at < pgdurable.now() - %s::interval
   and status in ('completed', 'failed', 'cancelled');

-- name: metrics_statement_timeout
-- Prometheus scrape: caps the queue query below for the rest of its transaction.
select pg_catalog.set_config('statement_timeout', %s, true);

-- name: metrics_queues
-- Prometheus scrape: per queue, its pending, running, sleeping and waiting runs, how long the
-- oldest pending run has been claimable (seconds), and whether it is paused. Queues of
-- registered workflows with no unfinished run are listed with zeros, so a drained queue's
-- series reads 0 instead of vanishing.
with o as (
    select queue_name, pending, running, sleeping, waiting,
           pg_catalog.date_part('epoch', oldest_pending_age)::float8 as oldest, paused
      from pgdurable.queue_overview)
select queue_name, pending, running, sleeping, waiting, oldest, paused from o
union all
select distinct w.queue_name, 0, 0, 0, 0, 0::float8, false
  from pgdurable.workflows w
 where w.queue_name not in (select o.queue_name from o)
 order by 1;

-- name: rollback
-- End a transaction step whose last statement failed in the pipeline it shared with COMMIT
-- (the COMMIT was skipped and the transaction is aborted).
rollback;
