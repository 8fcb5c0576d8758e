-- What the database runs now, for the function-file runner and `exchange sql check`:
-- every function, procedure, view and trigger of the exchange schema (extensions'
-- members and the triggers behind foreign keys left out), with a SHA-256 of its
-- definition as PostgreSQL prints it (pg_get_functiondef, pg_get_viewdef,
-- pg_get_triggerdef). Reads the catalogs only.
SELECT 'function' AS kind,
       p.proname AS name,
       NULL::text AS relation,
       p.oid::regprocedure::text AS identity,
       encode(sha256(convert_to(pg_get_functiondef(p.oid), 'UTF8')), 'hex') AS definition_sha
FROM pg_proc AS p
WHERE p.pronamespace = 'exchange'::regnamespace
  AND p.prokind IN ('f', 'p')
  AND NOT EXISTS (SELECT 1
                  FROM pg_depend AS d
                  WHERE d.classid = 'pg_proc'::regclass
                    AND d.objid = p.oid
                    AND d.deptype = 'e')

UNION ALL

SELECT 'view',
       c.relname,
       NULL,
       c.relname::text,
       encode(sha256(convert_to(pg_get_viewdef(c.oid), 'UTF8')), 'hex')
FROM pg_class AS c
WHERE c.relnamespace = 'exchange'::regnamespace
  AND c.relkind = 'v'
  AND NOT EXISTS (SELECT 1
                  FROM pg_depend AS d
                  WHERE d.classid = 'pg_class'::regclass
                    AND d.objid = c.oid
                    AND d.deptype = 'e')

UNION ALL

SELECT 'trigger',
       t.tgname,
       c.relname,
       format('%s ON %s', t.tgname, c.relname),
       encode(sha256(convert_to(pg_get_triggerdef(t.oid), 'UTF8')), 'hex')
FROM pg_trigger AS t
JOIN pg_class AS c ON c.oid = t.tgrelid
WHERE c.relnamespace = 'exchange'::regnamespace
  AND NOT t.tgisinternal

ORDER BY 1, 4;
