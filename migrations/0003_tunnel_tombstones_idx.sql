-- Tombstones (closed tunnels) are swept per node by the heartbeat and
-- globally by gc. This partial index holds only tombstones, so both sweeps
-- cost what there is to sweep, not the node's open tunnels.
CREATE INDEX tunnels_tombstones_idx ON tunnels (node_id, updated_at) WHERE NOT open;
