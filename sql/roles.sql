-- pgdurable roles: least privilege for the SQL API (docs/security.md).
--
-- Three NOLOGIN group roles; grant one to each login role that uses pgdurable:
--   pgdurable_client  start, cancel, emit, send, read streams; read runs, checkpoints, events,
--                     streams, the registry
--   pgdurable_worker  what a client may, and claim, checkpoint, complete, fail, sleep, wait,
--                     heartbeat, register, write and close streams
--   pgdurable_admin   what a worker may, and gc, shift the clock, resume, retry, fork; read
--                     every table
-- Each role is granted its whole set explicitly (no role is a member of another), so each
-- works alone and a function's ACL names every role that may call it.
-- No role writes a table: every write goes through a SECURITY DEFINER function with a pinned
-- search_path that checks its input. Internal functions (named _...) and PUBLIC get nothing.
--
-- `pgdurable init` applies this file after schema.sql, every time, in the same transaction.
-- It is idempotent and converges: the three roles end with exactly these privileges on the
-- schema's objects (grant anything extra to your own roles, not to these). Roles are
-- cluster-wide: a role that may not create roles (neither superuser nor CREATEROLE) gets a
-- NOTICE with the statements an administrator must run, and the grants go to the roles that
-- exist.

do $roles$
declare
    v_saved_path text := pg_catalog.current_setting('search_path');
    -- what each role may execute (each list adds to the one before)
    v_client_calls text[] := array['pause_run', 'start_run', 'start_runs', 'cancel_run', 'emit_event',
                                   'send_message', 'read_stream', 'now', 'record_action'];
    v_worker_calls text[] := array['claim_runs', 'claim_run', 'record_checkpoint',
                                   'complete_run', 'fail_run', 'finish_cancel', 'schedule_retry',
                                   'sleep_run', 'release_run', 'heartbeat', 'wait_event',
                                   'recv_message', 'wait_run', 'record_compensation', 'tick',
                                   'tick_due', 'register_worker', 'unregister_worker',
                                   'write_stream', 'close_stream', 'configure_queue',
                                   'upsert_schedule', 'due_schedules', 'fire_schedule',
                                   'purge_expired', 'set_retention', 'park_run'];
    v_admin_calls text[] := array['gc_runs', 'shift_clock', 'resume_run', 'retry_run',
                                  'fork_run', 'pause_queue', 'resume_queue', 'reset_queue',
                                  'trigger_schedule', 'pause_schedule', 'resume_schedule',
                                  'delete_schedule'];
    -- what each role may read (absent relations are skipped: older and newer schemas)
    v_client_reads text[] := array['runs', 'checkpoints', 'timers', 'events', 'streams',
                                   'workflows', 'workers', 'settings', 'schema_version',
                                   'run_overview', 'unserved_runs', 'queues', 'queue_overview',
                                   'schedules', 'retention'];
    v_admin_reads text[] := array['messages', 'clock', 'queue_keys', 'audit_log'];
    v_roles text[] := array['pgdurable_client', 'pgdurable_worker', 'pgdurable_admin'];
    v_may_create boolean;
    v_missing text[] := '{}';
    v_unknown text[] := '{}';
    v_role text;
    v_to text;
    v_fn record;
    v_rel text;
begin
    -- Only the catalog may resolve a name here: this runs as the schema owner, often a
    -- superuser, with the caller's search_path.
    perform pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

    select r.rolsuper or r.rolcreaterole into v_may_create
      from pg_roles r where r.rolname = current_user;
    foreach v_role in array v_roles loop
        if to_regrole(v_role) is null then
            if v_may_create then
                begin
                    execute format('create role %I nologin', v_role);
                exception when duplicate_object or unique_violation then
                    -- an init in another database of the cluster created it first
                    null;
                end;
            else
                v_missing := v_missing || format('create role %I nologin;', v_role);
            end if;
        end if;
    end loop;

    -- Converge: nothing for PUBLIC, nothing for the three roles but what follows.
    revoke all on schema pgdurable from public;
    revoke all on all tables in schema pgdurable from public;
    revoke all on all sequences in schema pgdurable from public;
    revoke all on all routines in schema pgdurable from public;
    foreach v_role in array v_roles loop
        if to_regrole(v_role) is not null then
            execute format('revoke all on schema pgdurable from %I', v_role);
            execute format('revoke all on all tables in schema pgdurable from %I', v_role);
            execute format('revoke all on all sequences in schema pgdurable from %I', v_role);
            execute format('revoke all on all routines in schema pgdurable from %I', v_role);
            execute format('grant usage on schema pgdurable to %I', v_role);
        end if;
    end loop;

    -- Dynamic SQL because the set of functions (and their argument lists) is read from the
    -- catalog: a function added by a later schema version is classified by name alone.
    for v_fn in
        select p.proname::text as name,
               format('%I.%I(%s)', n.nspname, p.proname,
                      pg_get_function_identity_arguments(p.oid)) as signature
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname = 'pgdurable'
         order by 1, 2
    loop
        select string_agg(quote_ident(r), ', ') into v_to
          from unnest(case
                   when v_fn.name = any (v_client_calls) then v_roles
                   when v_fn.name = any (v_worker_calls) then v_roles[2:3]
                   when v_fn.name = any (v_admin_calls) then v_roles[3:3]
                   else '{}'::text[] end) r
         where to_regrole(r) is not null;
        if v_to is not null then
            execute format('grant execute on routine %s to %s', v_fn.signature, v_to);
        elsif left(v_fn.name, 1) <> '_'
              and not v_fn.name = any (v_client_calls || v_worker_calls || v_admin_calls) then
            v_unknown := v_unknown || v_fn.signature;
        end if;
    end loop;

    foreach v_rel in array v_client_reads || v_admin_reads loop
        if to_regclass('pgdurable.' || quote_ident(v_rel)) is not null then
            select string_agg(quote_ident(r), ', ') into v_to
              from unnest(case when v_rel = any (v_client_reads) then v_roles
                               else v_roles[3:3] end) r
             where to_regrole(r) is not null;
            if v_to is not null then
                execute format('grant select on pgdurable.%I to %s', v_rel, v_to);
            end if;
        end if;
    end loop;

    if cardinality(v_unknown) > 0 then
        raise warning 'pgdurable roles: no role may execute % (sql/roles.sql does not list it)',
            array_to_string(v_unknown, ', ')
            using hint = 'a function named without a leading _ is API: add it to a role in sql/roles.sql';
    end if;
    if cardinality(v_missing) > 0 then
        raise notice E'pgdurable roles: role % may not create roles. Have an administrator run:\n%\nthen run `pgdurable init` again to grant them their privileges.',
            quote_ident(current_user), array_to_string(v_missing, E'\n');
    end if;

    perform pg_catalog.set_config('search_path', v_saved_path, true);
end
$roles$;
