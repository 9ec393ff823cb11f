-- Schedules and retention the server holds for a host's sets; each change bumps the
-- host's policy_version, which agents compare on every sync.

CREATE TABLE set_policies (
    host            text NOT NULL REFERENCES hosts (name),
    set_name        text NOT NULL,
    schedule        text,
    verify_schedule text,
    retention       jsonb,
    updated_by      text NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host, set_name)
);

ALTER TABLE hosts ADD COLUMN policy_version bigint NOT NULL DEFAULT 0;
