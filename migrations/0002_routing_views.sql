-- Views for operators: read routing with plain SQL.
--
-- node_status: one row per dataplane node.
--   state: 'draining' when the node said so, 'live' while its lease holds,
--          'stale' once the lease has expired (it is deleted by the next
--          registration/heartbeat/gc statement after a grace period).
CREATE VIEW node_status AS
SELECT n.node_id,
       n.private_url,
       n.boot_id,
       n.version,
       CASE WHEN n.lease_expires_at <= now() THEN 'stale'
            WHEN n.draining THEN 'draining'
            ELSE 'live' END AS state,
       n.registered_at,
       n.heartbeat_at,
       now() - n.heartbeat_at AS heartbeat_age,
       n.lease_expires_at,
       (SELECT count(*) FROM tunnels t WHERE t.node_id = n.node_id AND t.open) AS tunnels
FROM nodes n;

COMMENT ON VIEW node_status IS 'One row per dataplane node: private URL, state (live/stale/draining), heartbeat age, open tunnels.';

-- agent_routes: one row per (agent, node) that holds at least one open tunnel.
CREATE VIEW agent_routes AS
SELECT t.agent_id,
       a.name AS agent_name,
       t.node_id,
       n.private_url,
       count(*) AS tunnels,
       min(t.connected_at) AS connected_since,
       max(t.agent_version) AS agent_version,
       now() - n.heartbeat_at AS heartbeat_age,
       CASE WHEN n.lease_expires_at <= now() THEN 'stale'
            WHEN n.draining THEN 'draining'
            ELSE 'live' END AS state
FROM tunnels t
JOIN nodes n ON n.node_id = t.node_id
LEFT JOIN agents a ON a.id = t.agent_id
WHERE t.open
GROUP BY t.agent_id, a.name, t.node_id, n.private_url, n.heartbeat_at, n.lease_expires_at, n.draining;

COMMENT ON VIEW agent_routes IS 'One row per agent and node holding its tunnels: private URL, tunnel count, connected since, heartbeat age, state (live/stale/draining).';
