package app

import (
	"fmt"
	"os/user"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/kas-project/kas/internal/config"
)

// Endpoints are where a running role can be reached from this machine.
// Empty fields are parts the role does not run (or, for AgentURL and
// ProxyURL, listeners on a unix socket, which agentk and kubectl cannot
// dial).
type Endpoints struct {
	// AgentURL is agentk's --kas-address: ws:// or wss://.
	AgentURL string
	// ProxyURL is the Kubernetes API proxy, path prefix included.
	ProxyURL string
	// ProxyCAFile is the self-signed certificate the all-in-one role
	// generated for the proxy; empty when the operator configured one.
	ProxyCAFile string
	// APIURL is the control plane API: http://, https:// or unix:///path.
	APIURL string
	// APIKeyFile holds api_secret_key, which kasctl signs with.
	APIKeyFile string
	// ObservabilityURL serves /metrics, /livez and /readyz.
	ObservabilityURL string
}

// Endpoints returns where the role's listeners can be reached.
func (s *Server) Endpoints() Endpoints {
	cfg := s.cfg
	e := Endpoints{APIKeyFile: cfg.APISecretKeyFile, ProxyCAFile: s.proxyCA}
	// url returns how to reach a listener, or "" for a unix socket that
	// its clients cannot dial.
	url := func(setting string, l config.Listen, plain, secure, path string, unixOK bool) string {
		a := s.Addr(setting)
		switch {
		case a == nil:
			return ""
		case a.Network() == "unix" && !unixOK:
			return ""
		case a.Network() == "unix":
			abs, _ := filepath.Abs(a.String())
			return "unix://" + abs
		}
		scheme := plain
		if l.Spec(setting).TLS() {
			scheme = secure
		}
		return scheme + "://" + dialAddress(a, l.Network) + path
	}
	d := cfg.Dataplane
	e.AgentURL = url("dataplane.agent.listen", d.Agent.Listen, "ws", "wss", "", false)
	e.ProxyURL = url("dataplane.kubernetes_api.listen", d.KubernetesAPI.Listen, "http", "https", d.KubernetesAPI.PathPrefix, false)
	e.APIURL = url("controlplane.listen", cfg.Controlplane.Listen, "http", "https", "", true)
	e.ObservabilityURL = url("observability.listen", cfg.Observability.Listen, "http", "https", "", false)
	return e
}

// Defaults kasctl uses without flags; the welcome text leaves out the
// flags that would repeat them.
const (
	kasctlDefaultServer = "http://127.0.0.1:8153"
	exampleAgentName    = "my-cluster"
	exampleUserID       = 1
)

var kasctlDefaultKeyFile = filepath.Join(config.Default().SecretsDir(), config.APIKeyFileName)

// welcome is what `kas all` prints on stdout once it serves: where things
// are, and the commands that connect a first cluster, exactly as they can
// be pasted into a shell.
type welcome struct {
	Endpoints
	NodeID  string
	DataDir string // empty with database.url
	// StateDir receives the agent token and kubeconfig files the commands
	// write (the parent of the data directory: .kas by default).
	StateDir string
	// Kasctl and Agentk are the binaries' paths, as the user would type them.
	Kasctl, Agentk string
	// Username is the GitLab user the kubeconfig's token acts for.
	Username string
}

// Text returns the welcome text.
func (w welcome) Text() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	where := "the database at database.url"
	if w.DataDir != "" {
		where = "PostgreSQL in " + w.DataDir
	}
	p("kas is running: the control plane, dataplane node %q and %s.", w.NodeID, where)
	p("")
	p("  agent URL (agentk --kas-address)   %s", w.AgentURL)
	proxyNote := ""
	if w.ProxyCAFile != "" {
		proxyNote = "   (self-signed: " + w.ProxyCAFile + ")"
	}
	p("  Kubernetes API proxy URL           %s%s", orNone(w.ProxyURL), proxyNote)
	p("  control plane API (kasctl)         %s   (api_secret_key: %s)", w.APIURL, w.APIKeyFile)
	if w.ObservabilityURL != "" {
		p("  metrics and health                 %s/metrics  /livez  /readyz", w.ObservabilityURL)
	}
	if w.AgentURL == "" || w.ProxyURL == "" || w.APIURL == "" {
		return b.String()
	}

	kasctl := shellQuote(w.Kasctl)
	if w.APIURL != kasctlDefaultServer {
		kasctl += " --server " + shellQuote(w.APIURL)
	}
	if filepath.Clean(w.APIKeyFile) != kasctlDefaultKeyFile {
		kasctl += " --api-secret-key-file " + shellQuote(w.APIKeyFile)
	}
	tokenFile := shellQuote(filepath.Join(w.StateDir, "agentk-token"))
	kubeconfig := shellQuote(filepath.Join(w.StateDir, "kubeconfig"))
	k8sUser := "gitlab:user:" + w.Username

	p("")
	p("Connect a cluster, from this directory (run steps 1 and 3 in the same shell):")
	p("")
	p("  1. Register an agent and mint its token (the secret goes to the file only):")
	p("       AGENT_ID=$(%s agents create --name %s -o id)", kasctl, exampleAgentName)
	p("       %s tokens create --agent-id \"$AGENT_ID\" --out %s", kasctl, tokenFile)
	p("")
	p("  2. In another terminal, start agentk with access to the cluster (--kubeconfig, or")
	p("     --kube-api-url with --kube-token-file and --kube-ca-file):")
	agentk := fmt.Sprintf("%s --kas-address %s --token-file %s", shellQuote(w.Agentk), shellQuote(w.AgentURL), tokenFile)
	if strings.HasPrefix(w.AgentURL, "wss://") && w.ProxyCAFile != "" && w.ProxyURL != "" {
		agentk += " --ca-file " + shellQuote(w.ProxyCAFile)
	}
	p("       %s --kubeconfig ~/.kube/config", agentk)
	p("")
	p("  3. Get a kubeconfig through kas, acting as GitLab user %q (the cluster sees %s):", w.Username, k8sUser)
	kc := fmt.Sprintf("%s kubeconfig --agent-id \"$AGENT_ID\" --proxy-url %s", kasctl, shellQuote(w.ProxyURL))
	if w.ProxyCAFile != "" {
		kc += " --certificate-authority " + shellQuote(w.ProxyCAFile)
	}
	kc += fmt.Sprintf(" --user-id %d --username %s --out %s", exampleUserID, shellQuote(w.Username), kubeconfig)
	p("       %s", kc)
	p("       kubectl --kubeconfig %s get pods -A", kubeconfig)
	p("     If kubectl says Forbidden, give %s access in the cluster, for example:", k8sUser)
	p("       kubectl create clusterrolebinding kas-%s-view --clusterrole=view --user=%s", w.Username, k8sUser)
	p("")
	p("More: %s --help. Ctrl-C stops kas; agents and tokens stay in the database.", shellQuote(w.Kasctl))
	if strings.HasPrefix(w.ProxyURL, "http://") {
		p("Note: the proxy is plain http://, and kubectl sends credentials to https:// servers only;")
		p("set dataplane.kubernetes_api.listen.certificate_file and key_file.")
	}
	return b.String()
}

func orNone(s string) string {
	if s == "" {
		return "(none: the listener is a unix socket)"
	}
	return s
}

// exampleUsername is the user the welcome text's kubeconfig acts for: the
// local user's name when it is a plain one, else "admin".
func exampleUsername() string {
	if u, err := user.Current(); err == nil && plainName.MatchString(u.Username) {
		return u.Username
	}
	return "admin"
}

var plainName = regexp.MustCompile(`^[a-z][a-z0-9._-]{0,31}$`)

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:=,@+%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// siblingBinaries returns the paths of kasctl and agentk next to the kas
// binary as it was invoked (bin/kas → bin/kasctl); bare names when kas was
// found on PATH.
func siblingBinaries(program string) (kasctl, agentk string) {
	if program == "" || !strings.ContainsRune(program, filepath.Separator) {
		return "kasctl", "agentk"
	}
	dir := filepath.Dir(program)
	if dir == "." {
		return "./kasctl", "./agentk"
	}
	return filepath.Join(dir, "kasctl"), filepath.Join(dir, "agentk")
}
