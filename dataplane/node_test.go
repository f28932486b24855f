package dataplane

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/kas-project/kas/dataplane/discovery"
	"github.com/kas-project/kas/dataplane/tunnel"
)

func listener(t *testing.T, addr string) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestOptionsValidateReportsEveryProblem(t *testing.T) {
	o := Options{
		PrivateAPISecretKey: []byte("short"),
		ControlPlaneURL:     "ftp://cp",
		PrivateAPIListener:  listener(t, ":0"), // every interface: no URL to derive
		Tunnel:              tunnel.Config{StreamWindow: 1},
		DrainDelay:          time.Minute,
		DrainGrace:          time.Second,
		Authenticator:       discovery.AuthenticatorOptions{AllowTTL: time.Minute, RecheckInterval: time.Minute},
	}
	err := o.Validate()
	if err == nil {
		t.Fatal("Validate accepted bad options")
	}
	for _, want := range []string{
		"dataplane: node ID is required",
		"private_api_secret_key: must be 32 bytes",
		"dataplane.agent.listen: listener is required",
		"OWN_PRIVATE_API_URL: not set, and the private API listens on every interface",
		"dataplane tunnel: StreamWindow",
		"drain grace (1s) must not be shorter than the drain delay (1m0s)",
		`dataplane.controlplane_url: "ftp://cp" must use http://, https:// or unix://`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error lacks %q:\n%v", want, err)
		}
	}

	// With a key, the control-plane clients are built, and the discovery
	// parts' own checks are reported too.
	o.PrivateAPISecretKey = make([]byte, 32)
	o.ControlPlaneURL = "unix:///run/kas/cp.sock"
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "must not exceed 1m0s") {
		t.Errorf("Validate error lacks the authenticator's TTL check: %v", err)
	}
}

func TestOptionsDefaultsAndPrivateURL(t *testing.T) {
	o := Options{
		NodeID:              "n1",
		PrivateAPISecretKey: make([]byte, 32),
		ControlPlaneURL:     "http://127.0.0.1:8153",
		AgentListener:       listener(t, "127.0.0.1:0"),
		PrivateAPIListener:  listener(t, "127.0.0.1:0"),
		OwnPrivateAPI:       discovery.PrivateURLOptions{Scheme: "grpcs", Host: "kas.internal"},
	}
	n, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if want := "grpcs://" + o.PrivateAPIListener.Addr().String(); n.PrivateURL() != want {
		t.Errorf("private URL %q, want %q", n.PrivateURL(), want)
	}
	if n.opts.DrainDelay != DefaultDrainDelay || n.opts.DrainGrace != DefaultDrainGrace || n.opts.DialTimeout != DefaultDialTimeout {
		t.Errorf("defaults not applied: %+v", n.opts)
	}
	if err := n.Ready(t.Context()); err == nil || !strings.Contains(err.Error(), "not registered") {
		t.Errorf("Ready before Run: %v", err)
	}
}

func TestAgentHost(t *testing.T) {
	for _, id := range []int64{1, 42, 1 << 62} {
		got, err := agentFromAddr(agentHost(id) + ":80")
		if err != nil || got != id {
			t.Errorf("agent %d: round trip gave %d, %v", id, got, err)
		}
	}
	for _, addr := range []string{"kubernetes:80", "agent-0.kas-tunnel.invalid:80", "agent-x.kas-tunnel.invalid:80", "agent-5.example.com:80"} {
		if _, err := agentFromAddr(addr); err == nil {
			t.Errorf("%q taken for an agent address", addr)
		}
	}
}
