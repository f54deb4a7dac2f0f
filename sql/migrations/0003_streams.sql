-- 0003: durable streams (version 2 -> 3). Tables and constraints only: `pgdurable init`
-- applies this, then re-applies sql/schema.sql, which adds write_stream, close_stream and
-- read_stream and makes gc_runs and fork_run handle streams.
--
-- streams: the values runs append under a key, with the row that closes a stream.
-- checkpoints_kind_check: adds kind 'stream' (a write or close made by workflow code).
-- Re-creating the check reads every checkpoint once, under the upgrade's lock.

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

alter table pgdurable.checkpoints drop constraint if exists checkpoints_kind_check;
alter table pgdurable.checkpoints add constraint checkpoints_kind_check check (kind in
    ('step', 'transaction', 'sleep', 'event', 'message', 'child', 'result', 'value', 'send',
     'emit', 'patch', 'compensate', 'stream'));
