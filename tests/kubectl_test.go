package tests

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	corev1 "k8s.io/api/core/v1"

	"github.com/kas-project/kas/agent"
	kasctl "github.com/kas-project/kas/cmd/kasctl/app"
	"github.com/kas-project/kas/internal/cptest"
	"github.com/kas-project/kas/tests/framework"
	"github.com/kas-project/kas/tests/k8senv"
)

// kubeTimeout bounds one kubectl command.
const kubeTimeout = time.Minute

// The alice of these scenarios, as the API server sees her through kas:
// her access token's agent has no configuration, so users are
// impersonated (access_as user).
const aliceK8sUser = "gitlab:user:alice"

// kubeWorld is kas in front of a real API server: a control plane, two
// proxy nodes, agentk on node-a only (so node-b relays), authenticated to
// the API server with a service account that may only impersonate.
type kubeWorld struct {
	c       *k8senv.Cluster
	env     *cptest.Env
	nodes   []*framework.ProxyNode
	agentID int64
	// kubeconfigs, by node ID, written by kasctl kubeconfig.
	kubeconfigs map[string]string
	secret      string // alice's access token
	caFile      string // trusted by the kubeconfigs
	agentReg    *prometheus.Registry
}

func startKubeWorld(t *testing.T) *kubeWorld {
	t.Helper()
	c := k8senv.Start(t)
	w := &kubeWorld{c: c, env: framework.StartControlPlane(t), kubeconfigs: map[string]string{}}
	// kubectl sends credentials only to https:// servers.
	cert := framework.NewServerCert(t)
	w.nodes = []*framework.ProxyNode{
		framework.StartTLSProxyNode(t, w.env, "node-a", cert),
		framework.StartTLSProxyNode(t, w.env, "node-b", cert),
	}
	w.caFile = cert.CAFile
	creds := framework.CreateAgent(t, w.env, "cluster")
	w.agentID = creds.ID
	w.agentReg = w.startAgentk(t, creds, w.nodes[0])

	// kasctl mints alice's token for the first kubeconfig and reuses it
	// for the second.
	keyFile := filepath.Join(t.TempDir(), "api_secret_key")
	if err := os.WriteFile(keyFile, []byte(base64.StdEncoding.EncodeToString(w.env.APIKey)), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, n := range w.nodes {
		path := filepath.Join(t.TempDir(), "kubeconfig-"+n.ID)
		args := []string{"--server", w.env.URL, "--api-secret-key-file", keyFile, "kubeconfig",
			"--agent-id", strconv.FormatInt(w.agentID, 10), "--proxy-url", n.ProxyURL, "--certificate-authority", w.caFile, "--namespace", k8senv.DemoNamespace, "--out", path}
		if i == 0 {
			args = append(args, "--user-id", "1", "--username", "alice")
		} else {
			args = append(args, "--token", w.secret)
		}
		var stderr bytes.Buffer
		if code := (kasctl.CLI{Stdout: io.Discard, Stderr: &stderr}).Run(context.Background(), args); code != 0 {
			t.Fatalf("kasctl %q: exit %d: %s", args, code, stderr.String())
		}
		w.kubeconfigs[n.ID] = path
		if i == 0 {
			kc, err := clientcmd.LoadFromFile(path)
			if err != nil {
				t.Fatal(err)
			}
			_, w.secret, _ = strings.Cut(strings.TrimPrefix(kc.AuthInfos[kc.CurrentContext].Token, "pat:"), ":")
		}
	}
	return w
}

// startAgentk runs agentk against the API server with the agent service
// account's token, keeping one tunnel to node n; it returns agentk's
// metrics registry.
func (w *kubeWorld) startAgentk(t *testing.T, creds framework.AgentCreds, n *framework.ProxyNode) *prometheus.Registry {
	t.Helper()
	token, caFile := w.c.AgentCredentials(t)
	tokenFile := filepath.Join(t.TempDir(), "sa-token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	framework.StartAgent(t, creds, n.AgentURL, 1, func(o *agent.Options) {
		o.KubeAPIURL, o.KubeTokenFile, o.KubeCAFile = w.c.URL, tokenFile, caFile
		o.Registry = reg
	})
	framework.WaitRouted(t, w.env, creds.ID, n.ID)
	return reg
}

// kubectl runs the real kubectl with kubeconfig and extra environment;
// it returns stdout, and fails the test unless kubectl succeeds.
func (w *kubeWorld) kubectl(t *testing.T, kubeconfig string, env []string, stdin string, args ...string) string {
	t.Helper()
	out, stderr, err := w.tryKubectl(t, kubeconfig, env, stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, stderr)
	}
	return out
}

func (w *kubeWorld) tryKubectl(t *testing.T, kubeconfig string, env []string, stdin string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), kubeTimeout)
	defer cancel()
	cmd := w.c.Kubectl(ctx, kubeconfig, args...)
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// background starts kubectl until the test ends and returns a scanner of
// its stdout lines.
func (w *kubeWorld) background(t *testing.T, kubeconfig string, env []string, args ...string) (<-chan string, *syncBuffer) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), kubeTimeout)
	cmd := w.c.Kubectl(ctx, kubeconfig, args...)
	cmd.Env = append(cmd.Env, env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			lines <- s.Text()
		}
	}()
	return lines, stderr
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitLine waits for a line matching want, calling poke every 200 ms (to
// produce the event the command waits for) until it arrives.
func waitLine(t *testing.T, lines <-chan string, stderr *syncBuffer, want func(string) bool, poke func()) string {
	t.Helper()
	timeout := time.NewTimer(kubeTimeout)
	defer timeout.Stop()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	if poke != nil {
		poke()
	}
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("kubectl ended without the line; stderr: %s", stderr.String())
			}
			if want(l) {
				return l
			}
		case <-tick.C:
			if poke != nil {
				poke()
			}
		case <-timeout.C:
			t.Fatal("timed out waiting for kubectl's line")
		}
	}
}

func random(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// Real kubectl, with a kubeconfig from kasctl, does everything through kas
// against a real API server, on the node that holds the agent's tunnel and
// on one that relays; RBAC is the cluster's, applied to the impersonated
// user.
func TestKubectlThroughKas(t *testing.T) {
	w := startKubeWorld(t)
	w.c.CreateUserRBAC(t, aliceK8sUser, []string{"get", "list", "watch", "create", "update", "patch", "delete"},
		"pods", "pods/log", "pods/exec", "pods/attach", "pods/portforward", "configmaps")

	for _, n := range w.nodes {
		kc := w.kubeconfigs[n.ID]
		via := "local tunnel"
		if n != w.nodes[0] {
			via = "relayed"
		}
		t.Run(n.ID+" ("+via+")", func(t *testing.T) {
			w.kubectlScenario(t, kc)
		})
	}
	if r := w.nodes[1].Metric(t, "agent_dials_total", "result", "relay"); r < 1 {
		t.Errorf("node-b relayed %v streams, want some", r)
	}
	if l := w.nodes[0].Metric(t, "agent_dials_total", "result", "local"); l < 1 {
		t.Errorf("node-a used its tunnel for %v streams, want some", l)
	}
}

func (w *kubeWorld) kubectlScenario(t *testing.T, kc string) {
	ns := k8senv.DemoNamespace

	t.Run("whoami is the impersonated user", func(t *testing.T) {
		var review struct {
			Status struct {
				UserInfo struct {
					Username string              `json:"username"`
					Groups   []string            `json:"groups"`
					Extra    map[string][]string `json:"extra"`
				} `json:"userInfo"`
			} `json:"status"`
		}
		out := w.kubectl(t, kc, nil, "", "auth", "whoami", "-o", "json")
		if err := json.Unmarshal([]byte(out), &review); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		u := review.Status.UserInfo
		agentID := strconv.FormatInt(w.agentID, 10)
		if u.Username != aliceK8sUser || !contains(u.Groups, "gitlab:user") ||
			!equal(u.Extra["agent.gitlab.com/id"], agentID) || !equal(u.Extra["agent.gitlab.com/access_type"], "personal_access_token") {
			t.Errorf("whoami: %+v", u)
		}
	})

	t.Run("discovery", func(t *testing.T) {
		out := w.kubectl(t, kc, nil, "", "api-resources", "-o", "name")
		for _, r := range []string{"pods", "configmaps", "deployments.apps"} {
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(r) + `$`).MatchString(out) {
				t.Errorf("api-resources lacks %s", r)
			}
		}
		if out := w.kubectl(t, kc, nil, "", "version", "-o", "json"); !strings.Contains(out, `"serverVersion"`) {
			t.Errorf("version: %s", out)
		}
	})

	t.Run("get and list", func(t *testing.T) {
		if out := w.kubectl(t, kc, nil, "", "get", "pods", "-o", "name"); !strings.Contains(out, "pod/"+k8senv.DemoPod+"\n") {
			t.Errorf("get pods: %q", out)
		}
		if phase := w.kubectl(t, kc, nil, "", "get", "pod", k8senv.DemoPod, "-o", "jsonpath={.status.phase}"); phase != "Running" {
			t.Errorf("pod phase %q", phase)
		}
		// Table output goes through the server's Table conversion.
		if out := w.kubectl(t, kc, nil, "", "get", "pods"); !strings.Contains(out, "NAME") || !strings.Contains(out, k8senv.DemoPod) {
			t.Errorf("get pods (table): %q", out)
		}
	})

	t.Run("create, apply, server-side apply, patch, delete", func(t *testing.T) {
		name := "cm-" + random(t)
		w.kubectl(t, kc, nil, "", "create", "configmap", name, "--from-literal=created=yes")
		manifest := fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s\n  namespace: %s\ndata:\n  created: \"yes\"\n  applied: client\n", name, ns)
		if out := w.kubectl(t, kc, nil, manifest, "apply", "-f", "-"); !strings.Contains(out, "configmap/"+name+" configured") {
			t.Errorf("apply: %q", out)
		}
		if data := w.kubectl(t, kc, nil, "", "get", "configmap", name, "-o", "jsonpath={.data.applied}"); data != "client" {
			t.Errorf("after a client-side apply: data.applied = %q", data)
		}
		ssa := fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s\n  namespace: %s\ndata:\n  server: side\n", name, ns)
		if out := w.kubectl(t, kc, nil, ssa, "apply", "--server-side", "--field-manager=kas-e2e", "--force-conflicts", "-f", "-"); !strings.Contains(out, "serverside-applied") {
			t.Errorf("apply --server-side: %q", out)
		}
		w.kubectl(t, kc, nil, "", "patch", "configmap", name, "--type=merge", "-p", `{"data":{"patched":"true"}}`)
		data := w.kubectl(t, kc, nil, "", "get", "configmap", name, "-o", "jsonpath={.data}")
		for _, kv := range []string{`"server":"side"`, `"patched":"true"`} {
			if !strings.Contains(data, kv) {
				t.Errorf("configmap data %s lacks %s", data, kv)
			}
		}
		managers := w.kubectl(t, kc, nil, "", "get", "configmap", name, "--show-managed-fields", "-o", "jsonpath={.metadata.managedFields[*].manager}")
		if !strings.Contains(managers, "kas-e2e") {
			t.Errorf("managed fields lack the server-side apply manager: %q", managers)
		}
		if out := w.kubectl(t, kc, nil, "", "delete", "configmap", name); !strings.Contains(out, "deleted") {
			t.Errorf("delete: %q", out)
		}
		if _, stderr, err := w.tryKubectl(t, kc, nil, "", "get", "configmap", name); err == nil || !strings.Contains(stderr, "NotFound") {
			t.Errorf("get after delete: %v, %s", err, stderr)
		}
	})

	t.Run("get -w sees an event while watching", func(t *testing.T) {
		name := "watched-" + random(t)
		lines, stderr := w.background(t, kc, nil, "get", "configmaps", "-w", "--output-watch-events", "-o", "name",
			"--field-selector", "metadata.name="+name)
		created := false
		waitLine(t, lines, stderr, func(l string) bool { return strings.Contains(l, "configmap/"+name) }, func() {
			// Create once the watch is likely open; keep touching it so an
			// event arrives after the watch started, whenever that is.
			if !created {
				w.kubectl(t, kc, nil, "", "create", "configmap", name)
				created = true
				return
			}
			w.kubectl(t, kc, nil, "", "label", "configmap", name, "--overwrite", "touched="+random(t))
		})
	})

	t.Run("logs -f", func(t *testing.T) {
		lines, stderr := w.background(t, kc, nil, "logs", "-f", k8senv.DemoPod)
		line := "followed " + random(t)
		waitLine(t, lines, stderr, func(l string) bool { return strings.HasSuffix(l, line) }, func() {
			if err := w.c.WriteLog(line); err != nil {
				t.Error(err)
			}
		})
	})

	for _, ws := range []string{"true", "false"} {
		env := []string{"KUBECTL_REMOTE_COMMAND_WEBSOCKETS=" + ws}
		t.Run("exec websockets="+ws, func(t *testing.T) {
			if got := w.kubectl(t, kc, env, "", "exec", k8senv.DemoPod, "--", "echo", "hi"); got != "hi\n" {
				t.Errorf("exec echo: %q", got)
			}
			in := strings.Repeat(random(t), 20000) // 240 KB through the pipe and back
			if got := w.kubectl(t, kc, env, in, "exec", "-i", k8senv.DemoPod, "--", "cat"); got != in {
				t.Errorf("exec -i cat: %d bytes back, want %d", len(got), len(in))
			}
			_, stderr, err := w.tryKubectl(t, kc, env, "", "exec", k8senv.DemoPod, "--", "sh", "-c", "echo failing >&2; exit 3")
			var exitErr *exec.ExitError
			if !errors.As(err, &exitErr) || exitErr.ExitCode() != 3 || !strings.Contains(stderr, "failing") {
				t.Errorf("exec exit 3: %v, stderr %q", err, stderr)
			}
		})
		t.Run("attach websockets="+ws, func(t *testing.T) {
			lines, stderr := w.background(t, kc, env, "attach", k8senv.DemoPod)
			line := "attached " + random(t)
			waitLine(t, lines, stderr, func(l string) bool { return l == line }, func() {
				if err := w.c.WriteLog(line); err != nil {
					t.Error(err)
				}
			})
		})
	}

	for _, ws := range []string{"true", "false"} {
		t.Run("port-forward websockets="+ws, func(t *testing.T) {
			ports := w.portForward(t, kc, []string{"KUBECTL_PORT_FORWARD_WEBSOCKETS=" + ws}, k8senv.DemoHTTPPort, k8senv.DemoEchoPort)
			resp, err := http.Get("http://127.0.0.1:" + ports[k8senv.DemoHTTPPort] + "/")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != k8senv.DemoHTTPBody {
				t.Errorf("GET through port-forward: %q", body)
			}
			conn, err := net.Dial("tcp", "127.0.0.1:"+ports[k8senv.DemoEchoPort])
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			msg := strings.Repeat(random(t), 10000)
			go io.WriteString(conn, msg)
			conn.SetReadDeadline(time.Now().Add(kubeTimeout))
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(conn, got); err != nil || string(got) != msg {
				t.Errorf("echo through port-forward: %v", err)
			}
		})
	}

	t.Run("cp both ways", func(t *testing.T) {
		content := strings.Repeat("copied "+random(t)+"\n", 5000)
		local := filepath.Join(t.TempDir(), "in.txt")
		if err := os.WriteFile(local, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		inPod := filepath.Join(w.c.PodDir, "cp-"+random(t)+".txt")
		w.kubectl(t, kc, nil, "", "cp", local, k8senv.DemoPod+":"+inPod)
		if got, err := os.ReadFile(inPod); err != nil || string(got) != content {
			t.Fatalf("file in the pod: %d bytes, %v", len(got), err)
		}
		back := filepath.Join(t.TempDir(), "out.txt")
		w.kubectl(t, kc, nil, "", "cp", k8senv.DemoPod+":"+inPod, back)
		if got, err := os.ReadFile(back); err != nil || string(got) != content {
			t.Errorf("file copied back: %d bytes, %v", len(got), err)
		}
	})

	t.Run("RBAC is the cluster's", func(t *testing.T) {
		_, stderr, err := w.tryKubectl(t, kc, nil, "", "get", "secrets")
		if err == nil || !strings.Contains(stderr, "Forbidden") || !strings.Contains(stderr, `User "`+aliceK8sUser+`" cannot list resource "secrets"`) {
			t.Errorf("get secrets: %v, %s", err, stderr)
		}
	})
}

var forwardingLine = regexp.MustCompile(`^Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)$`)

// portForward runs kubectl port-forward to the demo pod's ports until the
// test ends, and returns the local port of each pod port.
func (w *kubeWorld) portForward(t *testing.T, kc string, env []string, podPorts ...int) map[int]string {
	t.Helper()
	args := []string{"port-forward", "--address=127.0.0.1", "pod/" + k8senv.DemoPod}
	for _, p := range podPorts {
		args = append(args, fmt.Sprintf(":%d", p))
	}
	lines, stderr := w.background(t, kc, env, args...)
	ports := map[int]string{}
	for len(ports) < len(podPorts) {
		l := waitLine(t, lines, stderr, forwardingLine.MatchString, nil)
		m := forwardingLine.FindStringSubmatch(l)
		remote, _ := strconv.Atoi(m[2])
		ports[remote] = m[1]
	}
	go func() { // keep draining, or kubectl blocks on a full pipe
		for range lines {
		}
	}()
	return ports
}

// client-go, with the kubeconfig from kasctl, lists and watches.
func TestClientGoThroughKas(t *testing.T) {
	w := startKubeWorld(t)
	w.c.CreateUserRBAC(t, aliceK8sUser, []string{"get", "list", "watch", "create", "delete"}, "pods", "configmaps")
	for _, n := range w.nodes {
		t.Run(n.ID, func(t *testing.T) {
			cfg, err := clientcmd.BuildConfigFromFlags("", w.kubeconfigs[n.ID])
			if err != nil {
				t.Fatal(err)
			}
			cs, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), kubeTimeout)
			defer cancel()
			pods, err := cs.CoreV1().Pods(k8senv.DemoNamespace).List(ctx, metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(pods.Items) == 0 {
				t.Errorf("no pods listed")
			}
			cms := cs.CoreV1().ConfigMaps(k8senv.DemoNamespace)
			list, err := cms.List(ctx, metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			wt, err := cms.Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
			if err != nil {
				t.Fatal(err)
			}
			defer wt.Stop()
			name := "client-go-" + random(t)
			if _, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			for ev := range wt.ResultChan() {
				if cm, ok := ev.Object.(*corev1.ConfigMap); ok && ev.Type == watch.Added && cm.Name == name {
					break
				}
			}
			if ctx.Err() != nil {
				t.Fatal("no ADDED event for the created configmap")
			}
			if err := cms.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				t.Error(err)
			}
			if _, err := cs.CoreV1().Secrets(k8senv.DemoNamespace).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
				t.Errorf("list secrets: %v, want the API server's Forbidden", err)
			}
		})
	}
}

// A credential for one agent never reaches another: with the same cluster
// behind two agents, alice's token for agent A is refused by kas for agent
// B, and agent B's agentk never sees the request.
func TestCredentialForOneAgentNeverReachesAnother(t *testing.T) {
	w := startKubeWorld(t)
	other := framework.CreateAgent(t, w.env, "other")
	otherReg := w.startAgentk(t, other, w.nodes[0])
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	args := []string{"kubeconfig", "--agent-id", strconv.FormatInt(other.ID, 10), "--proxy-url", w.nodes[1].ProxyURL, "--certificate-authority", w.caFile, "--token", w.secret, "--out", kc}
	if code := (kasctl.CLI{Stdout: io.Discard, Stderr: io.Discard}).Run(context.Background(), args); code != 0 {
		t.Fatalf("kasctl: exit %d", code)
	}
	_, stderr, err := w.tryKubectl(t, kc, nil, "", "get", "pods")
	if err == nil || !strings.Contains(stderr, fmt.Sprintf("kas: forbidden: credential may not access agent %d", other.ID)) {
		t.Errorf("kubectl with agent A's token for agent B: %v, %s", err, stderr)
	}
	if n := agentRequests(t, otherReg); n != 0 {
		t.Errorf("agent B's agentk served %v requests", n)
	}
	// The same token for its own agent works.
	if _, stderr, err := w.tryKubectl(t, w.kubeconfigs["node-b"], nil, "", "auth", "whoami"); err != nil {
		t.Errorf("kubectl with agent A's token for agent A: %v, %s", err, stderr)
	}
	if n := agentRequests(t, w.agentReg); n == 0 {
		t.Errorf("agent A's agentk served no request")
	}
}

// agentRequests sums agentk's kas_http_requests_total.
func agentRequests(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() == "kas_http_requests_total" {
			for _, m := range mf.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func equal(s []string, v string) bool { return len(s) == 1 && s[0] == v }
