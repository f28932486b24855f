package agent

import (
	"os"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"

	"github.com/kas-project/kas/dataplane/tunnel"
)

func TestValidateReportsEveryProblemNamingTheSetting(t *testing.T) {
	empty := writeFile(t, "empty", "\n")
	notPEM := writeFile(t, "not-pem", "hello")
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	err := Options{
		KASAddress:          "https://kas.example.com",
		TokenFile:           empty,
		CAFile:              notPEM,
		Tunnels:             -1,
		MaxConnectionAge:    -time.Minute,
		MinBackoff:          time.Minute,
		MaxBackoff:          time.Second,
		Tunnel:              tunnel.Config{KeepaliveInterval: time.Minute, DeadPeerTimeout: time.Second},
		KubeTokenFile:       empty,
		ObservabilityListen: "8080",
	}.Validate()
	if err == nil {
		t.Fatal("Validate accepted bad options")
	}
	for _, want := range []string{
		"--kas-address (KAS_ADDRESS): scheme must be ws or wss",
		"--token-file (KAS_TOKEN_FILE): token file " + empty + " is empty",
		"--ca-file (KAS_CA_FILE): CA file " + notPEM + " holds no PEM certificate",
		"--tunnels (AGENTK_TUNNELS): must be between 1 and 64, got -1",
		"--max-connection-age (AGENTK_MAX_CONNECTION_AGE): must not be negative",
		"--min-backoff (AGENTK_MIN_BACKOFF): 1m0s is longer than --max-backoff 1s",
		"tunnel settings (--keepalive-interval, --dead-peer-timeout): DeadPeerTimeout",
		"--kube-token-file (AGENTK_KUBE_TOKEN_FILE): only applies with --kube-api-url",
		"--observability-listen (AGENTK_OBSERVABILITY_LISTEN): not host:port",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate error lacks %q:\n%v", want, err)
		}
	}

	err = Options{}.Validate()
	for _, want := range []string{
		"--kas-address (KAS_ADDRESS): required",
		"--token-file (KAS_TOKEN_FILE): required",
		"kubernetes API: not running in a Kubernetes pod",
		"set --kubeconfig (AGENTK_KUBECONFIG) or --kube-api-url (AGENTK_KUBE_API_URL)",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate(zero) error lacks %q:\n%v", want, err)
		}
	}
}

func TestValidateKubernetesSettings(t *testing.T) {
	tok := writeFile(t, "token", testToken)
	base := Options{KASAddress: "ws://kas:8150", TokenFile: tok}
	for name, tc := range map[string]struct {
		mutate func(*Options)
		want   string // "" = valid
	}{
		"api url":            {func(o *Options) { o.KubeAPIURL = "https://10.0.0.1:6443"; o.KubeTokenFile = tok }, ""},
		"api url not http":   {func(o *Options) { o.KubeAPIURL = "ftp://x" }, "--kube-api-url (AGENTK_KUBE_API_URL): must be http:// or https://"},
		"url and kubeconfig": {func(o *Options) { o.KubeAPIURL = "https://x"; o.Kubeconfig = tok }, "--kubeconfig (AGENTK_KUBECONFIG): conflicts with --kube-api-url"},
		"ca and insecure": {func(o *Options) {
			o.KubeAPIURL = "https://x"
			o.KubeCAFile = writeFile(t, "ca", "x")
			o.KubeInsecureSkipTLSVerify = true
		}, "conflicts with --kube-insecure-skip-tls-verify"},
		"bad kubeconfig": {func(o *Options) { o.Kubeconfig = writeFile(t, "kc", "{not yaml") }, "--kubeconfig (AGENTK_KUBECONFIG):"},
		"rest config":    {func(o *Options) { o.KubeRESTConfig = &rest.Config{Host: "https://x"} }, ""},
		"address prefix": {func(o *Options) {
			o.KASAddress = "wss://gitlab.example.com/-/kubernetes-agent/"
			o.KubeAPIURL = "http://x"
		}, ""},
		"credentials url": {func(o *Options) { o.KASAddress = "wss://u:p@kas"; o.KubeAPIURL = "http://x" }, "must not carry credentials"},
	} {
		t.Run(name, func(t *testing.T) {
			o := base
			tc.mutate(&o)
			err := o.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate = %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestResolvedTunnelURLAndDefaults(t *testing.T) {
	r, err := Options{
		KASAddress: "wss://gitlab.example.com/-/kubernetes-agent/?x=1",
		TokenFile:  writeFile(t, "token", testToken),
		KubeAPIURL: "http://127.0.0.1:1",
	}.resolve()
	if err != nil {
		t.Fatal(err)
	}
	if want := "wss://gitlab.example.com/-/kubernetes-agent/api/tunnel/v1?x=1"; r.tunnelURL != want {
		t.Errorf("tunnel URL %s, want %s", r.tunnelURL, want)
	}
	if r.agentID != 42 || r.tokenShape != nil {
		t.Errorf("agent ID %d (%v), want 42", r.agentID, r.tokenShape)
	}
	if r.Tunnels != 2 || r.MaxConnectionAge != 30*time.Minute || r.MinBackoff != time.Second ||
		r.MaxBackoff != 30*time.Second || r.HealthyAfter != 30*time.Second || r.Version != "dev" {
		t.Errorf("defaults: %+v", r.Options)
	}
	if !r.kube.DisableCompression {
		t.Error("responses would be decompressed on the way")
	}
}

func TestInClusterConfiguration(t *testing.T) {
	if _, err := os.Stat("/var/run/secrets/kubernetes.io/serviceaccount/token"); err == nil {
		t.Skip("running in a pod")
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	err := Options{KASAddress: "ws://kas", TokenFile: writeFile(t, "token", testToken)}.Validate()
	if err == nil || !strings.Contains(err.Error(), "kubernetes API:") || !strings.Contains(err.Error(), "serviceaccount/token") {
		t.Errorf("in-cluster without a service account: %v", err)
	}
}
