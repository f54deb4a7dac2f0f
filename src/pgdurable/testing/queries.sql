-- The statements of the pytest plugin (pgdurable.testing), named like those of sql/queries.sql.
-- {name} and {template} are identifiers, passed through psycopg.sql.Identifier.

-- name: create_database
-- An empty database: the session's template, before the schema is installed.
create database {name}

-- name: clone_database
-- One test's database: a copy of the template, schema and settings included.
create database {name} template {template}

-- name: drop_database
-- Drops a database the plugin created, ending the sessions still connected to it.
drop database if exists {name} with (force)

-- name: allow_clock_shift
-- Test databases may move engine time; a production database refuses (PD008).
update pgdurable.settings set allow_clock_shift = true

-- name: shift_clock
-- Moves engine time forward by an interval; returns the new engine time.
select pgdurable.shift_clock(%s)

-- name: engine_now
-- Engine time: the server's clock plus the shifts of this database.
select pgdurable.now()

-- name: busy_runs
-- The runs a test worker has yet to take or finish: running (whoever holds them), or pending
-- and due on a queue and workflow it serves. A few are enough to name in an error.
select id, workflow_id, workflow_name, status
  from pgdurable.runs
 where status = 'running'
    or (status = 'pending' and available_at <= pgdurable.now()
        and queue_name = any(%(queues)s) and workflow_name = any(%(workflows)s))
 order by created_at
 limit 10
