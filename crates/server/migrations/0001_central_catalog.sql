-- The backup server's central catalog: hosts and how they enrolled, the certificates
-- the server's CA signed for them, the copies each agent holds (as its outbox sent
-- them), the job queue, operators' API tokens and the audit log.

CREATE TABLE hosts (
    name          text PRIMARY KEY,
    created_at    timestamptz NOT NULL DEFAULT now(),
    enrolled_at   timestamptz,
    revoked_at    timestamptz,
    last_seen_at  timestamptz,
    agent_version text,
    -- The highest outbox change of this host's agent applied here.
    applied_seq   bigint NOT NULL DEFAULT 0
);

-- One-time enrolment tokens; only their secret's SHA-256 is kept.
CREATE TABLE enroll_tokens (
    secret_hash bytea PRIMARY KEY,
    host        text NOT NULL REFERENCES hosts (name),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);

-- The certificates the CA signed; a caller is the host its certificate's SHA-256 names.
CREATE TABLE agent_certificates (
    fingerprint bytea PRIMARY KEY,
    host        text NOT NULL REFERENCES hosts (name),
    serial      text NOT NULL,
    issued_at   timestamptz NOT NULL DEFAULT now(),
    not_after   timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX agent_certificates_by_host ON agent_certificates (host);

CREATE TABLE copies (
    host         text NOT NULL REFERENCES hosts (name),
    copy_id      bigint NOT NULL,
    set_name     text NOT NULL,
    state        text NOT NULL,
    verify_state text NOT NULL,
    created_ms   bigint NOT NULL,
    -- The copy as the agent's `list --json` gives it.
    record       jsonb NOT NULL,
    seq          bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (host, copy_id)
);

CREATE TABLE jobs (
    id          bigserial PRIMARY KEY,
    host        text NOT NULL REFERENCES hosts (name),
    kind        text NOT NULL,
    set_name    text NOT NULL,
    request     jsonb NOT NULL,
    state       text NOT NULL DEFAULT 'queued'
                CHECK (state IN ('queued', 'claimed', 'running', 'done', 'failed', 'lost', 'cancelled')),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    claimed_at  timestamptz,
    lease_until timestamptz,
    -- When the reaper last gave it up (its agent may still report its end).
    lost_at     timestamptz,
    finished_at timestamptz,
    agent_job   bigint,
    copy_id     bigint,
    result      text
);
CREATE INDEX jobs_open ON jobs (host, id) WHERE state IN ('queued', 'claimed', 'running');
CREATE INDEX jobs_leased ON jobs (lease_until) WHERE state IN ('claimed', 'running');

-- Operators' API tokens; only their secret's SHA-256 is kept.
CREATE TABLE operator_tokens (
    secret_hash bytea PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    role        text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Every destructive or privileged action: who, when, on which host, with what.
CREATE TABLE audit (
    id     bigserial PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    actor  text NOT NULL,
    action text NOT NULL,
    host   text,
    detail jsonb NOT NULL DEFAULT '{}'
);

-- Unix milliseconds, as the agents' catalogs and the API give times.
CREATE FUNCTION ms(t timestamptz) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT (extract(epoch FROM t) * 1000)::bigint $$;
