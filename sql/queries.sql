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
