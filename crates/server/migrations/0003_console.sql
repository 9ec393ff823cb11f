-- The sets each host's agent has in its config (sent with every sync), so that the
-- console can offer a copy of a set that has none yet.
ALTER TABLE hosts ADD COLUMN sets text[] NOT NULL DEFAULT '{}';

-- How far a running job has got (phases, bytes), as its agent reports it.
ALTER TABLE jobs ADD COLUMN progress jsonb;

-- The web console's local accounts (argon2id PHC strings) and sessions (only the
-- SHA-256 of a session's id is kept; its CSRF token is per session).

CREATE TABLE console_users (
    name          text PRIMARY KEY,
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz
);

CREATE TABLE console_sessions (
    id_hash    bytea PRIMARY KEY,
    user_name  text NOT NULL REFERENCES console_users (name),
    csrf       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
