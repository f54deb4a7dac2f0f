-- 0005: operations (version 4 -> 5). Tables, columns and indexes only: `pgdurable init`
-- applies this, then re-applies sql/schema.sql, which adds record_action and the start option
-- trace_context.
--
-- runs.trace_context: new, null for every existing run. The W3C trace context
-- ({"traceparent": ..., "tracestate": ...}) of the code that started the run, so every
-- attempt's span joins the starter's trace (docs/operations.md, "Tracing").
-- audit_log: new and empty. Who did what to which run, queue or schedule, from the dashboard
-- or the CLI (record_action).

alter table pgdurable.runs add column if not exists trace_context jsonb;

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

-- the claim functions also return trace_context: their result type changes, so schema.sql
-- re-creates them
drop function if exists pgdurable.claim_runs(text, text[], integer, double precision, text[]);
drop function if exists pgdurable.claim_run(uuid, text, double precision);
drop function if exists pgdurable._take_runs(uuid[], text, double precision, timestamptz);
