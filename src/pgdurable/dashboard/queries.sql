-- The statements of the dashboard (pgdurable.dashboard), by name. Reads are plain SQL on the
-- pgdurable schema; every change goes through an engine function (cancel_run, pause_run,
-- resume_run, retry_run, fork_run, emit_event, send_message, pause_queue, resume_queue,
-- pause_schedule, resume_schedule, trigger_schedule), never an UPDATE of a table, and is
-- recorded with record_action in the same transaction. Optional filters
-- are written `(%(x)s is null or ...)` and sent unprepared, so each plan is made for the values
-- at hand and the planner drops the filters that are not set.

-- name: begin_read
-- Opens every page's transaction: read only, with a statement timeout, without JIT (its
-- compile time, tens of ms, costs more than these short queries run); returns engine time.
select set_config('transaction_read_only', 'on', true),
       set_config('statement_timeout', %s, true),
       set_config('jit', 'off', true),
       pgdurable.now();

-- name: begin_action
-- Opens an action's transaction: a statement timeout; returns engine time.
select set_config('statement_timeout', %s, true), pgdurable.now();

-- name: runs_older
-- The runs page, newest first, from a keyset cursor (created_at, id) down; never OFFSET.
select o.id, o.workflow_id, o.workflow_name, o.queue_name, o.status, o.attempt, o.worker_id,
       o.created_at, o.started_at, o.finished_at, o.checkpoints, o.wakes_at, o.wait_for, o.note,
       o.error_type, o.error_message
  from pgdurable.run_overview o
 where (%(status)s::text is null or o.status = %(status)s)
   and (%(workflow)s::text is null or o.workflow_name = %(workflow)s)
   and (%(queue)s::text is null or o.queue_name = %(queue)s)
   and (%(since)s::timestamptz is null or o.created_at >= %(since)s)
   and (%(until)s::timestamptz is null or o.created_at < %(until)s)
   and (%(search)s::text is null or strpos(o.workflow_id, %(search)s) > 0
        or o.id = %(search_id)s::uuid)
   and (%(cursor_at)s::timestamptz is null
        or (o.created_at, o.id) < (%(cursor_at)s, %(cursor_id)s::uuid))
 order by o.created_at desc, o.id desc
 limit %(limit)s;

-- name: runs_newer
-- The runs page going back up: the runs just above a keyset cursor, oldest first (the caller
-- reverses them). Same filters as runs_older.
select o.id, o.workflow_id, o.workflow_name, o.queue_name, o.status, o.attempt, o.worker_id,
       o.created_at, o.started_at, o.finished_at, o.checkpoints, o.wakes_at, o.wait_for, o.note,
       o.error_type, o.error_message
  from pgdurable.run_overview o
 where (%(status)s::text is null or o.status = %(status)s)
   and (%(workflow)s::text is null or o.workflow_name = %(workflow)s)
   and (%(queue)s::text is null or o.queue_name = %(queue)s)
   and (%(since)s::timestamptz is null or o.created_at >= %(since)s)
   and (%(until)s::timestamptz is null or o.created_at < %(until)s)
   and (%(search)s::text is null or strpos(o.workflow_id, %(search)s) > 0
        or o.id = %(search_id)s::uuid)
   and (o.created_at, o.id) > (%(cursor_at)s, %(cursor_id)s::uuid)
 order by o.created_at, o.id
 limit %(limit)s;

-- name: status_counts
-- Counts by status for the runs page (rows of one status add up). Active statuses are counted
-- whole, each on its partial index; sleeping runs through their timers (every sleeping run has
-- exactly one, of reason sleep or retry, deleted when it wakes), and with a workflow or queue
-- filter by one runs_pkey lookup per timer (a join would hash the whole runs table). Finished
-- ones only since %(finished_since)s, on runs_finished_idx, so the count stays cheap however
-- much history the table keeps.
select 'pending' as status, count(*) from pgdurable.runs
 where status = 'pending'
   and (%(workflow)s::text is null or workflow_name = %(workflow)s)
   and (%(queue)s::text is null or queue_name = %(queue)s)
union all
select 'running', count(*) from pgdurable.runs
 where status = 'running'
   and (%(workflow)s::text is null or workflow_name = %(workflow)s)
   and (%(queue)s::text is null or queue_name = %(queue)s)
union all
select 'sleeping', count(*) from pgdurable.timers t
 where %(workflow)s::text is null and %(queue)s::text is null and t.reason in ('sleep', 'retry')
union all
select 'sleeping', count(*) from pgdurable.timers t
 where (%(workflow)s::text is not null or %(queue)s::text is not null)
   and (select r.status = 'sleeping'
               and (%(workflow)s::text is null or r.workflow_name = %(workflow)s)
               and (%(queue)s::text is null or r.queue_name = %(queue)s)
          from pgdurable.runs r where r.id = t.run_id)
union all
select 'waiting', count(*) from pgdurable.runs
 where status = 'waiting'
   and (%(workflow)s::text is null or workflow_name = %(workflow)s)
   and (%(queue)s::text is null or queue_name = %(queue)s)
union all
(select status, count(*) from pgdurable.runs
  where finished_at >= %(finished_since)s
    and (%(workflow)s::text is null or workflow_name = %(workflow)s)
    and (%(queue)s::text is null or queue_name = %(queue)s)
  group by status);

-- name: filter_choices
-- Workflow and queue names for the runs page's filter suggestions: the registry, not a scan.
select 'workflow' as kind, name from pgdurable.workflows
union
select 'queue', queue_name from pgdurable.workflows
union
select 'queue', unnest(queues) from pgdurable.workers
order by 1, 2
limit 1000;

-- name: run
-- Every field of one run, with its timer; JSON as text (decoded with limits, or shown raw).
select r.id, r.workflow_id, r.workflow_name, r.queue_name, r.status, r.priority, r.attempt,
       r.recoveries, r.max_recoveries, r.disconnects, r.worker_id, r.lease_expires_at,
       r.heartbeat_at, r.available_at, r.parent_id, r.deadline_at, r.cancel_requested, r.pause_requested,
       r.wait_for, r.retry_step_key, r.retry_step_attempts, r.note, r.created_at, r.started_at,
       r.updated_at, r.finished_at, t.fire_at as wakes_at, t.reason as wake_reason,
       left(r.input::text, %(max_chars)s) as input, length(r.input::text) as input_chars,
       left(r.output::text, %(max_chars)s) as output, length(r.output::text) as output_chars,
       r.error ->> 'type' as error_type, left(r.error ->> 'message', %(max_chars)s) as error_message,
       left(r.error ->> 'traceback', %(max_chars)s) as error_traceback,
       p.workflow_id as parent_workflow_id
  from pgdurable.runs r
  left join pgdurable.timers t on t.run_id = r.id
  left join pgdurable.runs p on p.id = r.parent_id
 where r.id = %(id)s;

-- name: run_checkpoints
-- A run's operations in replay order, values cut to a display size.
select seq, step_key, kind, step_name, attempts, run_attempt, started_at, completed_at,
       left(output::text, %(max_chars)s) as output, left(error::text, %(max_chars)s) as error,
       output ->> 'wake_at' as wake_at, output ->> 'run_id' as child_id
  from pgdurable.checkpoints
 where run_id = %(id)s
 order by seq
 limit %(limit)s;

-- name: run_children
-- A run's descendants (children, their children...) for the tree, on runs_parent_idx.
with recursive tree as (
    select id, parent_id, workflow_id, workflow_name, status, created_at, finished_at, 1 as depth
      from pgdurable.runs where parent_id = %(id)s
    union all
    select r.id, r.parent_id, r.workflow_id, r.workflow_name, r.status, r.created_at,
           r.finished_at, t.depth + 1
      from pgdurable.runs r join tree t on r.parent_id = t.id
     where t.depth < %(max_depth)s
)
select id, parent_id, workflow_id, workflow_name, status, created_at, finished_at, depth
  from tree
 order by depth, created_at, id
 limit %(limit)s;

-- name: readable
-- Which of the tables only pgdurable_admin may read this login may read: a client-only login
-- still gets the run page, without the mailbox and the actions taken.
select has_table_privilege('pgdurable.messages', 'select') as messages,
       has_table_privilege('pgdurable.audit_log', 'select') as audit_log;

-- name: run_audit
-- The actions taken on one run, oldest first (audit_log_run_idx).
select id, at, actor, action, target, left(detail::text, %(max_chars)s) as detail
  from pgdurable.audit_log
 where run_id = %(id)s
 order by at, id
 limit %(limit)s;

-- name: audit_older
-- The audit page: entries newest first from a keyset cursor on id down (the primary key).
select a.id, a.at, a.actor, a.action, a.run_id, a.target,
       left(a.detail::text, %(max_chars)s) as detail, r.workflow_id
  from pgdurable.audit_log a
  left join pgdurable.runs r on r.id = a.run_id
 where (%(before)s::bigint is null or a.id < %(before)s)
 order by a.id desc
 limit %(limit)s;

-- name: run_mailbox
-- Messages sent to a run that it has not consumed yet (messages_unconsumed_idx).
select id, topic, left(payload::text, %(max_chars)s) as payload, created_at
  from pgdurable.messages
 where run_id = %(id)s and consumed_at is null
 order by topic, id
 limit %(limit)s;

-- name: latest_events
-- The newest events of one name (events_name_idx): what a waiting run would receive.
select id, left(payload::text, %(max_chars)s) as payload, created_at
  from pgdurable.events
 where name = %(name)s
 order by id desc
 limit %(limit)s;

-- name: queue_depths
-- Runs per queue and status: active statuses whole (partial indexes; sleeping ones through
-- their timers, one runs_pkey lookup each, made once), finished ones since %(finished_since)s;
-- with the oldest pending run that is due, and the delayed ones.
with sleeping as materialized (
    select (select r.queue_name from pgdurable.runs r
             where r.id = t.run_id and r.status = 'sleeping') as queue_name
      from pgdurable.timers t
     where t.reason in ('sleep', 'retry')
)
select queue_name, 'pending' as status, count(*) as runs,
       min(available_at) filter (where available_at <= %(now)s) as oldest_due,
       count(*) filter (where available_at > %(now)s) as delayed
  from pgdurable.runs where status = 'pending' group by queue_name
union all
select queue_name, 'running', count(*), null, 0
  from pgdurable.runs where status = 'running' group by queue_name
union all
select queue_name, 'sleeping', count(*), null, 0
  from sleeping where queue_name is not null group by queue_name
union all
select queue_name, 'waiting', count(*), null, 0
  from pgdurable.runs where status = 'waiting' group by queue_name
union all
select queue_name, status, count(*), null, 0
  from pgdurable.runs where finished_at >= %(finished_since)s group by queue_name, status;

-- name: queue_settings
-- Every queue's flow control (docs/flow-control.md), with the claims inside its rate window now.
select q.name, q.concurrency, q.key_concurrency, q.key_fifo, q.rate_count, q.rate_period,
       q.key_rate_count, q.key_rate_period, q.paused, q.updated_at,
       (select count(*) from unnest(q.recent) c where c > %(now)s - q.rate_period) as rate_used
  from pgdurable.queues q
 order by q.name
 limit 1000;

-- name: schedules
-- Every schedule with its last run's status (runs_pkey).
select s.name, s.workflow_name, s.cron, s.timezone, s.queue_name, s.catchup, s.overlap,
       s.paused, s.next_fire_at, s.last_fire_at, s.last_run_id, s.updated_at,
       r.workflow_id as last_workflow_id, r.status as last_status
  from pgdurable.schedules s
  left join pgdurable.runs r on r.id = s.last_run_id
 where (%(name)s::text is null or s.name = %(name)s)
 order by s.name
 limit 1000;

-- name: workers
-- Every registered worker, newest first.
select id, queues, workflows, started_at, last_seen_at
  from pgdurable.workers
 order by last_seen_at desc, id
 limit 1000;

-- name: held_runs
-- The running runs and who holds them (runs_lease_idx).
select id, workflow_id, workflow_name, queue_name, worker_id, attempt, started_at,
       lease_expires_at, heartbeat_at, cancel_requested
  from pgdurable.runs
 where status = 'running'
 order by worker_id, lease_expires_at
 limit %(limit)s;

-- name: registered_workflows
-- The registry: each workflow name with its default queue.
select name, queue_name, updated_at from pgdurable.workflows order by name limit 1000;

-- name: active_by_workflow
-- Pending and running runs per workflow, each on its partial index.
select workflow_name, 'pending' as status, count(*) from pgdurable.runs
 where status = 'pending' group by workflow_name
union all
select workflow_name, 'running', count(*) from pgdurable.runs
 where status = 'running' group by workflow_name;

-- name: unserved
-- Pending runs no live worker serves, grouped by why (view unserved_runs).
select workflow_name, queue_name, reason, count(*) as runs, min(created_at) as oldest
  from pgdurable.unserved_runs
 group by workflow_name, queue_name, reason
 order by workflow_name, queue_name
 limit 1000;

-- name: cancel_run
-- Action: cancel a run and its unfinished children; returns the status after the call.
select pgdurable.cancel_run(%s);

-- name: run_status
-- A run's status, read in an action's transaction before it acts (is a pause a no-op?).
select status from pgdurable.runs where id = %s;

-- name: pause_run
-- Action: pause a run (at once, or at its next durable operation); returns the outcome.
select pgdurable.pause_run(%s);

-- name: resume_run
-- Action: restart a failed, cancelled or paused run from its last checkpoint.
select pgdurable.resume_run(%s);

-- name: retry_run
-- Action: retry a failed run (a resume from its last checkpoint).
select pgdurable.retry_run(%s);

-- name: fork_run
-- Action: a new run replaying the checkpoints before sequence %s, then running anew.
select pgdurable.fork_run(%s, %s);

-- name: emit_event
-- Action: record a durable event and wake its waiters.
select pgdurable.emit_event(%s, %s);

-- name: send_message
-- Action: put a message in a run's mailbox.
select pgdurable.send_message(%s, %s, %s);

-- name: pause_queue
-- Action: claim nothing more of a queue; returns how many of its runs are still running.
select pgdurable.pause_queue(%s);

-- name: resume_queue
-- Action: claims of a paused queue resume (workers are woken).
select pgdurable.resume_queue(%s);

-- name: pause_schedule
-- Action: a schedule starts nothing until resumed; returns whether it exists.
select pgdurable.pause_schedule(%s);

-- name: resume_schedule
-- Action: a paused schedule fires again from its next tick; returns whether it exists.
select pgdurable.resume_schedule(%s);

-- name: trigger_schedule
-- Action: start a run of a schedule now; returns its id (null: its overlap policy skipped it).
select pgdurable.trigger_schedule(%s);

-- name: record_action
-- Audit: who did an action, in the action's transaction (actor, action, run id, target, detail).
select pgdurable.record_action(%s, %s, %s, %s, %s);
