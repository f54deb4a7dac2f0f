-- Every statement the Python SDK sends, by name. Loaded once by pgdurable._queries.
-- Blocks start with "-- name: NAME" followed by a one-line description.

-- name: schema_present
-- Whether the schema_version table exists (else the schema is missing).
select to_regclass('pgdurable.schema_version') is not null;

-- name: schema_version
-- The newest applied schema version.
select max(version) from pgdurable.schema_version;

-- name: init_lock
-- Serializes concurrent `pgdurable init` runs.
select pg_advisory_xact_lock(hashtext('pgdurable.init'));

-- name: start_run
-- Start a run (idempotent on workflow_id).
select pgdurable.start_run(%s, %s, %s);

-- name: start_runs
-- Start many runs of one workflow in one statement.
select id from pgdurable.start_runs(%s, %s::jsonb[], %s, %s::text[]) as id;

-- name: claim_runs
-- Claim up to N runnable runs of the given queues with their checkpoints.
select * from pgdurable.claim_runs(%s, %s, %s, %s);

-- name: claim_run
-- Claim one given run for in-process execution.
select * from pgdurable.claim_run(%s, %s, %s);

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
-- Hand a claimed run back so another worker can take it.
select pgdurable.release_run(%s, %s, %s, %s);

-- name: heartbeat
-- Extend all the leases of one worker; returns lost and cancel-requested runs.
select run_id, lost, cancel_requested from pgdurable.heartbeat(%s, %s, %s, %s);

-- name: cancel_run
-- Cancel a run and its unfinished children.
select pgdurable.cancel_run(%s);

-- name: resume_run
-- Restart a failed or cancelled run from its last checkpoint.
select pgdurable.resume_run(%s);

-- name: run_by_workflow_id
-- A run's identity by its workflow_id or run id text.
select id, workflow_id, workflow_name from pgdurable.runs
 where workflow_id = %(key)s or id::text = %(key)s
 order by (workflow_id = %(key)s) desc limit 1;

-- name: run_state
-- A run's status, output and error.
select status, output, error from pgdurable.runs where id = %s;

-- name: run_steps
-- A run's checkpoints in order.
select seq, step_key, kind, step_name, output, error, attempts, run_attempt, started_at, completed_at
  from pgdurable.checkpoints where run_id = %s order by seq;

-- name: listen_wake
-- Workers wait for runnable runs on this channel.
listen pgdurable_wake;

-- name: listen_done
-- Handles waiting for a result listen on this channel.
listen pgdurable_done;

-- name: cli_list_runs
-- `pgdurable runs`: runs newest first, each filter applied only when given.
select id, workflow_id, workflow_name, queue_name, status, attempt, recoveries, worker_id,
       created_at, started_at, finished_at, checkpoints, wakes_at, wait_for, note,
       error_type, error_message
  from pgdurable.run_overview
 where (%(status)s::text is null or status = %(status)s::text)
   and (%(workflow)s::text is null or workflow_name = %(workflow)s::text)
   and (%(queue)s::text is null or queue_name = %(queue)s::text)
 order by created_at desc, id
 limit %(limit)s;

-- name: cli_show_run
-- `pgdurable show`: every field of one run, with its pending wake-up if any.
select r.id, r.workflow_id, r.workflow_name, r.queue_name, r.status, r.priority, r.attempt,
       r.recoveries, r.max_recoveries, r.worker_id, r.lease_expires_at, r.available_at,
       r.parent_id, r.deadline_at, r.cancel_requested, r.wait_for, r.note, r.created_at,
       r.started_at, r.updated_at, r.finished_at, t.fire_at as wakes_at,
       t.reason as wake_reason, r.input, r.output, r.error
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
select received, payload from pgdurable.wait_event(%s, %s, %s, %s, %s, %s);

-- name: recv_message
-- Consume a message inside a workflow, or suspend the run until one arrives (fenced).
select received, payload from pgdurable.recv_message(%s, %s, %s, %s, %s, %s);

-- name: wait_run
-- Record another run's outcome inside a workflow, or suspend until it ends (fenced).
select finished, status, output, error from pgdurable.wait_run(%s, %s, %s, %s, %s);

-- name: record_compensation
-- Record a compensation step of a failing or cancelled run (fenced by attempt only).
select pgdurable.record_compensation(%s, %s, %s, %s, %s, %s, %s, %s);
