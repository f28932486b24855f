-- Agents, their tokens and their configuration: durable state.
CREATE TABLE agents (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id  bigint NOT NULL CHECK (project_id > 0),
    name        text NOT NULL CHECK (name ~ '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$' AND length(name) <= 63),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT agents_project_name_key UNIQUE (project_id, name)
);

CREATE TABLE agent_tokens (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id     bigint NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    name         text NOT NULL,
    description  text NOT NULL DEFAULT '',
    -- SHA-256 of the secret part of the token; the secret itself is never stored.
    secret_hash  bytea NOT NULL CHECK (length(secret_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz
);
CREATE INDEX agent_tokens_agent_id_idx ON agent_tokens (agent_id);

CREATE TABLE agent_configs (
    agent_id    bigint NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    version     bigint NOT NULL CHECK (version > 0),
    yaml        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, version)
);

-- Credentials for the Kubernetes API proxy.
CREATE TABLE access_tokens (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL DEFAULT '',
    user_id     bigint NOT NULL,
    username    text NOT NULL,
    user_groups text[] NOT NULL DEFAULT '{}',
    user_extra  jsonb NOT NULL DEFAULT '{}',
    agent_ids   bigint[] NOT NULL,
    secret_hash bytea NOT NULL CHECK (length(secret_hash) = 32),
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX access_tokens_user_id_idx ON access_tokens (user_id);

CREATE TABLE ci_job_tokens (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job         jsonb NOT NULL,
    agent_ids   bigint[] NOT NULL DEFAULT '{}',
    secret_hash bytea NOT NULL CHECK (length(secret_hash) = 32),
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE sessions (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session       jsonb NOT NULL,
    agent_ids     bigint[] NOT NULL DEFAULT '{}',
    secret_hash   bytea NOT NULL CHECK (length(secret_hash) = 32),
    csrf_hash     bytea NOT NULL CHECK (length(csrf_hash) = 32),
    expires_at    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

-- Routing: ephemeral, so UNLOGGED. After a Postgres crash these tables are
-- empty; nodes then get NotFound on their next heartbeat, register again and
-- re-send their tunnels.
CREATE UNLOGGED TABLE nodes (
    node_id          text PRIMARY KEY CHECK (length(node_id) BETWEEN 1 AND 253),
    boot_id          text NOT NULL CHECK (length(boot_id) BETWEEN 1 AND 128),
    private_url      text NOT NULL CHECK (length(private_url) BETWEEN 1 AND 2048),
    version          text NOT NULL DEFAULT '',
    draining         boolean NOT NULL DEFAULT false,
    registered_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at     timestamptz NOT NULL DEFAULT now(),
    lease_expires_at timestamptz NOT NULL
);
CREATE INDEX nodes_lease_expires_at_idx ON nodes (lease_expires_at);

-- One row per tunnel. A closed tunnel stays as a tombstone (open = false)
-- holding its sequence, so a late, stale RegisterTunnels cannot resurrect it;
-- tombstones go with the node or are swept by the node's heartbeat.
CREATE UNLOGGED TABLE tunnels (
    node_id       text NOT NULL REFERENCES nodes(node_id) ON DELETE CASCADE,
    tunnel_id     text NOT NULL CHECK (length(tunnel_id) BETWEEN 1 AND 128),
    agent_id      bigint NOT NULL,
    seq           bigint NOT NULL,
    open          boolean NOT NULL,
    agent_version text NOT NULL DEFAULT '',
    connected_at  timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, tunnel_id)
);
CREATE INDEX tunnels_agent_id_idx ON tunnels (agent_id) WHERE open;
