package config

import (
	"testing"
)

func TestAllowedOriginsSetting(t *testing.T) {
	c, err := Load(writeFile(t, "kas.yaml", "dataplane:\n  kubernetes_api:\n    allowed_origins: https://gitlab.example.com\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Dataplane.KubernetesAPI.AllowedOrigins; got != "https://gitlab.example.com" {
		t.Fatalf("allowed_origins = %q", got)
	}
	c, err = Load("", env(map[string]string{"KAS_DATAPLANE_KUBERNETES_API_ALLOWED_ORIGINS": "https://a.example, http://localhost:3000"}))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Dataplane.KubernetesAPI.AllowedOrigins; got != "https://a.example, http://localhost:3000" {
		t.Fatalf("allowed_origins from the environment = %q", got)
	}

	c = Default()
	c.PrivateAPISecretKeyFile = keyFile(t, KeySize)
	c.Dataplane.KubernetesAPI.AllowedOrigins = "https://gitlab.example.com/, https://gitlab.example.com/-/k8s, *, ftp://x.example"
	wantProblems(t, c.Validate(RoleDataplane),
		`dataplane.kubernetes_api.allowed_origins: "https://gitlab.example.com/-/k8s" must be an origin, scheme://host[:port], without user, path, query or fragment`,
		`dataplane.kubernetes_api.allowed_origins: "*": wildcards are not allowed (credentials are involved); list each origin`,
		`dataplane.kubernetes_api.allowed_origins: "ftp://x.example" must use http:// or https://`)
	// The control plane does not use the setting.
	c.APISecretKeyFile = keyFile(t, KeySize)
	c.Database.URL = "postgres://kas@db.example/kas"
	wantProblems(t, c.Validate(RoleControlplane))
	c.Dataplane.KubernetesAPI.AllowedOrigins = "https://gitlab.example.com, http://[::1]:8080"
	wantProblems(t, c.Validate(RoleDataplane))
}
