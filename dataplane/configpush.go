package dataplane

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"github.com/kas-project/kas/dataplane/agentserver"
	dataplanev1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	"github.com/kas-project/kas/gen/kas/dataplane/v1/dataplanev1connect"
	"github.com/kas-project/kas/internal/agentconfig"
)

// Configuration delivery defaults.
const (
	// DefaultConfigPollInterval is how often a node asks the control plane
	// for new configuration versions of the agents it holds.
	DefaultConfigPollInterval = 3 * time.Second
	// configBatchDelay gathers the tunnels of a burst (a reconnect storm)
	// into one control-plane call.
	configBatchDelay = 200 * time.Millisecond
	// configDeliveries bounds the deliveries in flight.
	configDeliveries = 16
	// configDeliveryTimeout bounds one delivery.
	configDeliveryTimeout = 10 * time.Second
	// configChunk is how many agents one GetAgentConfigs call names.
	configChunk = 10_000
)

// configPusher delivers each agent's configuration to every tunnel of it
// on this node (package agentconfig): when the tunnel opens and whenever
// the control plane has a new version. It asks the control plane about
// the new tunnels' agents at once and about all of its agents every poll
// interval, one call for up to configChunk agents, so the control plane's
// load grows with the number of nodes, not of agents.
//
// It stands between the agent server and the registrar to see tunnels
// open and close; those calls never block.
type configPusher struct {
	next     agentserver.Registrar
	auth     dataplanev1connect.AuthServiceClient
	open     func(ctx context.Context, agentID int64, tunnelID string) (net.Conn, error)
	interval time.Duration
	log      *slog.Logger

	mu      sync.Mutex
	agents  map[int64]*agentConfigState
	tunnels map[string]int64 // tunnel ID → agent ID
	wake    chan struct{}    // capacity 1: a new tunnel needs a delivery

	failing atomic.Bool // the last control-plane call failed (logged once)
}

// agentConfigState is what the node knows of one agent's configuration.
type agentConfigState struct {
	version int64 // -1: not known yet
	yaml    string
	sent    map[string]int64 // tunnel ID → version delivered on it, -1 none
}

func newConfigPusher(next agentserver.Registrar, auth dataplanev1connect.AuthServiceClient,
	open func(context.Context, int64, string) (net.Conn, error), interval time.Duration, log *slog.Logger) *configPusher {
	if interval <= 0 {
		interval = DefaultConfigPollInterval
	}
	return &configPusher{
		next: next, auth: auth, open: open, interval: interval, log: log,
		agents:  make(map[int64]*agentConfigState),
		tunnels: make(map[string]int64),
		wake:    make(chan struct{}, 1),
	}
}

// TunnelOpened implements agentserver.Registrar.
func (p *configPusher) TunnelOpened(agentID int64, tunnelID, agentVersion string) {
	p.next.TunnelOpened(agentID, tunnelID, agentVersion)
	p.mu.Lock()
	st := p.agents[agentID]
	if st == nil {
		st = &agentConfigState{version: -1, sent: make(map[string]int64)}
		p.agents[agentID] = st
	}
	st.sent[tunnelID] = -1
	p.tunnels[tunnelID] = agentID
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// TunnelClosed implements agentserver.Registrar.
func (p *configPusher) TunnelClosed(tunnelID string) {
	p.next.TunnelClosed(tunnelID)
	p.mu.Lock()
	defer p.mu.Unlock()
	agentID, ok := p.tunnels[tunnelID]
	if !ok {
		return
	}
	delete(p.tunnels, tunnelID)
	if st := p.agents[agentID]; st != nil {
		delete(st.sent, tunnelID)
		if len(st.sent) == 0 {
			delete(p.agents, agentID)
		}
	}
}

// run polls and delivers until ctx ends.
func (p *configPusher) run(ctx context.Context) {
	poll := time.NewTicker(p.interval)
	defer poll.Stop()
	for {
		all := false
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
			all = true
		case <-p.wake:
			t := time.NewTimer(configBatchDelay)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		p.refresh(ctx, all)
		p.deliver(ctx)
	}
}

// refresh asks the control plane for the configurations that changed: of
// every agent held when all is set, else of those not known yet.
func (p *configPusher) refresh(ctx context.Context, all bool) {
	p.mu.Lock()
	known := make([]*dataplanev1.AgentConfigVersion, 0, len(p.agents))
	for id, st := range p.agents {
		if all || st.version < 0 {
			known = append(known, &dataplanev1.AgentConfigVersion{AgentId: id, Version: st.version})
		}
	}
	p.mu.Unlock()
	for len(known) > 0 {
		chunk := known[:min(len(known), configChunk)]
		resp, err := p.auth.GetAgentConfigs(ctx, &dataplanev1.GetAgentConfigsRequest{Known: chunk})
		if err != nil {
			if ctx.Err() == nil && !p.failing.Swap(true) {
				p.log.Warn("cannot fetch agent configurations; retrying every poll", "err", err, "code", connect.CodeOf(err).String())
			}
			return
		}
		if p.failing.Swap(false) {
			p.log.Info("fetching agent configurations again")
		}
		p.mu.Lock()
		for _, c := range resp.GetConfigs() {
			if st := p.agents[c.GetAgentId()]; st != nil && c.GetVersion() != st.version {
				st.version, st.yaml = c.GetVersion(), c.GetYaml()
			}
		}
		p.mu.Unlock()
		if resp.GetTruncated() {
			// The answer named the first changed agents of the chunk;
			// ask again with what is known now.
			for _, k := range chunk {
				p.mu.Lock()
				if st := p.agents[k.AgentId]; st != nil {
					k.Version = st.version
				}
				p.mu.Unlock()
			}
			continue
		}
		known = known[len(chunk):]
	}
}

// delivery is one configuration to send on one tunnel.
type delivery struct {
	agentID  int64
	tunnelID string
	version  int64
	yaml     string
}

// deliver sends every tunnel the version it lacks, configDeliveries at a
// time; a failed delivery is tried again after the next poll.
func (p *configPusher) deliver(ctx context.Context) {
	p.mu.Lock()
	var todo []delivery
	for id, st := range p.agents {
		if st.version < 0 {
			continue
		}
		for tid, v := range st.sent {
			if v != st.version {
				todo = append(todo, delivery{id, tid, st.version, st.yaml})
			}
		}
	}
	p.mu.Unlock()
	if len(todo) == 0 {
		return
	}
	work := make(chan delivery)
	var wg sync.WaitGroup
	for range min(configDeliveries, len(todo)) {
		wg.Go(func() {
			for d := range work {
				err := p.send(ctx, d)
				switch {
				case errors.Is(err, agentconfig.ErrNotSupported):
					p.log.Info("agentk is too old to receive its configuration", "agent_id", d.agentID, "tunnel_id", d.tunnelID)
				case errors.Is(err, errConfigRefused):
					// Sending it again would not help; a new version will be sent.
					p.log.Warn("agentk refused its configuration", "agent_id", d.agentID, "tunnel_id", d.tunnelID,
						"config_version", d.version, "err", err)
				case err != nil:
					if ctx.Err() == nil {
						p.log.Debug("agent configuration not delivered; retrying after the next poll",
							"agent_id", d.agentID, "tunnel_id", d.tunnelID, "config_version", d.version, "err", err)
					}
					continue
				}
				p.mu.Lock()
				if st := p.agents[d.agentID]; st != nil {
					if _, open := st.sent[d.tunnelID]; open {
						st.sent[d.tunnelID] = d.version
					}
				}
				p.mu.Unlock()
			}
		})
	}
	for _, d := range todo {
		select {
		case work <- d:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(work)
	wg.Wait()
}

// send makes one delivery on its tunnel.
func (p *configPusher) send(ctx context.Context, d delivery) error {
	ctx, cancel := context.WithTimeout(ctx, configDeliveryTimeout)
	defer cancel()
	conn, err := p.open(ctx, d.agentID, d.tunnelID)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	req, err := agentconfig.NewRequest(ctx, d.version, d.yaml)
	if err != nil {
		return err
	}
	if err := req.Write(conn); err != nil {
		return fmt.Errorf("send configuration: %w", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return fmt.Errorf("read agentk's answer: %w", err)
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNoContent, http.StatusOK:
		return nil
	case http.StatusNotFound:
		return agentconfig.ErrNotSupported
	case http.StatusBadRequest, http.StatusUnprocessableEntity:
		return fmt.Errorf("%w: %s", errConfigRefused, resp.Status)
	}
	return fmt.Errorf("agentk answered %s", resp.Status)
}

// errConfigRefused: agentk could not apply the configuration.
var errConfigRefused = errors.New("agentk refused the configuration")
