-- Login sessions; deleting a user deletes their sessions.
CREATE TABLE user_sessions (
    id         UUID        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    UUID        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token      TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX user_sessions_token_idx ON user_sessions (token);
CREATE INDEX user_sessions_user_id_idx ON user_sessions (user_id);
