package config

import (
	"strings"
	"testing"
	"time"
)

func TestFailedAuthSettings(t *testing.T) {
	c, err := Load(writeFile(t, "kas.yaml", "dataplane:\n  failed_auth:\n    burst: 5\n    trusted_proxies: 10.0.0.0/8\n"),
		env(map[string]string{"KAS_DATAPLANE_FAILED_AUTH_REFILL": "2s"}))
	if err != nil {
		t.Fatal(err)
	}
	if f := c.Dataplane.FailedAuth; f.Burst != 5 || f.Refill != 2*time.Second || f.TrustedProxies != "10.0.0.0/8" {
		t.Fatalf("failed_auth = %+v", f)
	}
	if _, err := Load("", env(map[string]string{"KAS_DATAPLANE_FAILED_AUTH_BURST": "many"})); err == nil ||
		!strings.Contains(err.Error(), `KAS_DATAPLANE_FAILED_AUTH_BURST): "many" is not a whole number`) {
		t.Fatalf("bad burst: %v", err)
	}

	c = Default()
	c.PrivateAPISecretKeyFile = keyFile(t, KeySize)
	c.Dataplane.FailedAuth = FailedAuth{Burst: -1, Refill: 0, TrustedProxies: "10.0.0.0/8, proxy.example"}
	wantProblems(t, c.Validate(RoleDataplane),
		"dataplane.failed_auth.burst: -1 is negative (0 turns the limit off)",
		`dataplane.failed_auth.trusted_proxies: "proxy.example" is not an IP address or CIDR`)
	c.Dataplane.FailedAuth = FailedAuth{Burst: 3}
	wantProblems(t, c.Validate(RoleDataplane), "dataplane.failed_auth.refill: 0s is too short, must be at least 1ms while dataplane.failed_auth.burst is set")
	c.Dataplane.FailedAuth = FailedAuth{}
	wantProblems(t, c.Validate(RoleDataplane))
}
