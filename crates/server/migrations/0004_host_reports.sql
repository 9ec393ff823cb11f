-- What each host's agent reports of its sets now (writers identified, provider,
-- schedule and retention it runs by, restore modes, log reach of recent copies, the
-- archive's copies), and when it was built.
ALTER TABLE hosts ADD COLUMN report jsonb;
ALTER TABLE hosts ADD COLUMN report_ms bigint;

-- Each copy's phases, newest verifications, components and largest files.
ALTER TABLE copies ADD COLUMN facts jsonb;

-- A set's copies a page at a time, newest first (the console's set page).
CREATE INDEX copies_by_set ON copies (host, set_name, copy_id);
