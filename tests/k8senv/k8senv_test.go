package k8senv_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/kas-project/kas/tests/k8senv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	k8senv.Shutdown()
	os.Exit(code)
}

const cmdTimeout = time.Minute

// kubectl runs the built kubectl with the admin kubeconfig and extra
// environment, and returns its standard output.
func kubectl(t *testing.T, c *k8senv.Cluster, env []string, stdin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), cmdTimeout)
	defer cancel()
	cmd := c.Kubectl(ctx, "", args...)
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		t.Fatalf("kubectl %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

func randomText(t *testing.T) string {
	t.Helper()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func TestKubectlAgainstAPIServer(t *testing.T) {
	c := k8senv.Start(t)
	ns := "--namespace=" + k8senv.DemoNamespace

	t.Run("get", func(t *testing.T) {
		nodes := kubectl(t, c, nil, "", "get", "nodes", "-o", "name")
		if strings.TrimSpace(nodes) != "node/"+k8senv.Node {
			t.Errorf("nodes = %q, want node/%s", nodes, k8senv.Node)
		}
		phase := kubectl(t, c, nil, "", ns, "get", "pod", k8senv.DemoPod, "-o", "jsonpath={.status.phase}")
		if phase != "Running" {
			t.Errorf("pod phase = %q, want Running", phase)
		}
		version := kubectl(t, c, nil, "", "version", "-o", "json")
		if n := strings.Count(version, `"gitVersion": "`+k8senv.KubernetesVersion+`"`); n != 2 {
			t.Errorf("kubectl version: want client and server %s, got %s", k8senv.KubernetesVersion, version)
		}
	})

	for _, ws := range []string{"true", "false"} {
		env := []string{"KUBECTL_REMOTE_COMMAND_WEBSOCKETS=" + ws}
		t.Run("exec/websockets="+ws, func(t *testing.T) {
			if got := kubectl(t, c, env, "", ns, "exec", k8senv.DemoPod, "--", "echo", "hi"); got != "hi\n" {
				t.Errorf("exec echo hi: got %q", got)
			}
			in := randomText(t)
			if got := kubectl(t, c, env, in, ns, "exec", "-i", k8senv.DemoPod, "--", "cat"); got != in {
				t.Errorf("exec -i cat: got %q, want %q", got, in)
			}
			ctx, cancel := context.WithTimeout(t.Context(), cmdTimeout)
			defer cancel()
			cmd := c.Kubectl(ctx, "", ns, "exec", k8senv.DemoPod, "--", "sh", "-c", "echo failing >&2; exit 3")
			cmd.Env = append(cmd.Env, env...)
			out, err := cmd.CombinedOutput()
			var exitErr *exec.ExitError
			if !errors.As(err, &exitErr) || exitErr.ExitCode() != 3 || !strings.Contains(string(out), "failing") {
				t.Errorf("exec exit 3: %v, output %q; want exit code 3 and the command's stderr", err, out)
			}
		})
	}

	t.Run("logs", func(t *testing.T) {
		line := "log line " + randomText(t)
		if err := c.WriteLog(line); err != nil {
			t.Fatal(err)
		}
		got := kubectl(t, c, nil, "", ns, "logs", k8senv.DemoPod)
		if !strings.Contains(got, "demo started\n") || !strings.HasSuffix(got, line+"\n") {
			t.Errorf("logs = %q, want the first line and %q at the end", got, line)
		}
	})

	t.Run("attach", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), cmdTimeout)
		defer cancel()
		cmd := c.Kubectl(ctx, "", ns, "attach", k8senv.DemoPod)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cancel(); cmd.Wait() }()
		// attach shows lines written after it attached; keep writing until
		// one arrives.
		line := "attached " + randomText(t)
		seen := make(chan error, 1)
		go func() {
			s := bufio.NewScanner(stdout)
			for s.Scan() {
				if s.Text() == line {
					seen <- nil
					return
				}
			}
			seen <- fmt.Errorf("attach output ended (%v); stderr: %s", s.Err(), stderr.String())
		}()
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			if err := c.WriteLog(line); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-seen:
				if err != nil {
					t.Fatal(err)
				}
				return
			case <-ctx.Done():
				t.Fatalf("attach did not show %q: %v", line, ctx.Err())
			case <-tick.C:
			}
		}
	})

	for _, ws := range []string{"true", "false"} {
		t.Run("port-forward/websockets="+ws, func(t *testing.T) {
			ports := portForward(t, c, []string{"KUBECTL_PORT_FORWARD_WEBSOCKETS=" + ws}, k8senv.DemoHTTPPort, k8senv.DemoEchoPort)

			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%s/", ports[k8senv.DemoHTTPPort]))
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || string(body) != k8senv.DemoHTTPBody {
				t.Errorf("GET through port-forward: %q, %v; want %q", body, err, k8senv.DemoHTTPBody)
			}

			conn, err := net.Dial("tcp", "127.0.0.1:"+ports[k8senv.DemoEchoPort])
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			msg := randomText(t)
			if _, err := io.WriteString(conn, msg); err != nil {
				t.Fatal(err)
			}
			conn.SetReadDeadline(time.Now().Add(cmdTimeout))
			got := make([]byte, len(msg))
			if _, err := io.ReadFull(conn, got); err != nil || string(got) != msg {
				t.Errorf("echo through port-forward: %q, %v; want %q", got, err, msg)
			}
		})
	}

	t.Run("cp", func(t *testing.T) {
		content := "copied " + randomText(t) + "\n"
		local := filepath.Join(t.TempDir(), "in.txt")
		if err := os.WriteFile(local, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		inPod := filepath.Join(c.PodDir, "cp-"+randomText(t)+".txt")
		kubectl(t, c, nil, "", ns, "cp", local, k8senv.DemoPod+":"+inPod)
		if got, err := os.ReadFile(inPod); err != nil || string(got) != content {
			t.Fatalf("file in the pod: %q, %v; want %q", got, err, content)
		}
		back := filepath.Join(t.TempDir(), "out.txt")
		kubectl(t, c, nil, "", ns, "cp", k8senv.DemoPod+":"+inPod, back)
		if got, err := os.ReadFile(back); err != nil || string(got) != content {
			t.Errorf("file copied back: %q, %v; want %q", got, err, content)
		}
	})
}

var forwardingRE = regexp.MustCompile(`^Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)$`)

// portForward runs `kubectl port-forward` to DemoPod's podPorts until the
// test ends, and returns the local port of each pod port.
func portForward(t *testing.T, c *k8senv.Cluster, env []string, podPorts ...int) map[int]string {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	args := []string{"--namespace=" + k8senv.DemoNamespace, "port-forward", "--address=127.0.0.1", "pod/" + k8senv.DemoPod}
	for _, p := range podPorts {
		args = append(args, fmt.Sprintf(":%d", p))
	}
	cmd := c.Kubectl(ctx, "", args...)
	cmd.Env = append(cmd.Env, env...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })

	type forward struct{ local, remote string }
	lines := make(chan forward)
	go func() {
		defer close(lines)
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			if m := forwardingRE.FindStringSubmatch(s.Text()); m != nil {
				lines <- forward{local: m[1], remote: m[2]}
			}
		}
	}()
	ports := map[int]string{}
	timeout := time.NewTimer(cmdTimeout)
	defer timeout.Stop()
	for len(ports) < len(podPorts) {
		select {
		case f, ok := <-lines:
			if !ok {
				t.Fatalf("kubectl port-forward ended; stderr: %s", stderr.String())
			}
			var remote int
			fmt.Sscan(f.remote, &remote)
			ports[remote] = f.local
		case <-timeout.C:
			t.Fatalf("kubectl port-forward did not report its ports; stderr: %s", stderr.String())
		}
	}
	go func() { // keep draining, or kubectl blocks on a full pipe
		for range lines {
		}
	}()
	return ports
}

func TestImpersonationNeedsRBAC(t *testing.T) {
	c := k8senv.Start(t)
	token, caFile := c.AgentCredentials(t)
	ctx := t.Context()
	as := func(user string) kubernetes.Interface {
		t.Helper()
		cfg := &rest.Config{
			Host:            c.URL,
			BearerToken:     token,
			TLSClientConfig: rest.TLSClientConfig{CAFile: caFile},
			Impersonate:     rest.ImpersonationConfig{UserName: user},
		}
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return cs
	}
	listPods := func(cs kubernetes.Interface) error {
		_, err := cs.CoreV1().Pods(k8senv.DemoNamespace).List(ctx, metav1.ListOptions{})
		return err
	}

	agent := as("")
	if err := listPods(agent); !apierrors.IsForbidden(err) {
		t.Errorf("the agent itself lists pods: %v, want Forbidden", err)
	}
	user := "impersonated-" + randomText(t)
	alice := as(user)
	if err := listPods(alice); !apierrors.IsForbidden(err) {
		t.Fatalf("%s without RBAC lists pods: %v, want Forbidden", user, err)
	}

	c.CreateUserRBAC(t, user, []string{"get", "list", "create"}, "pods", "pods/exec")
	if err := listPods(alice); err != nil {
		t.Fatalf("%s with RBAC lists pods: %v", user, err)
	}
	if err := listPods(as("someone-else-" + randomText(t))); !apierrors.IsForbidden(err) {
		t.Errorf("another user lists pods: %v, want Forbidden", err)
	}
	if _, err := alice.CoreV1().Secrets(k8senv.DemoNamespace).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("%s lists secrets: %v, want Forbidden", user, err)
	}

	// The same through kubectl, with the agent's token and --as: exec needs
	// the pods/exec grant.
	kubeconfig := k8senv.WriteKubeconfig(t, c.URL, c.CAData, token)
	ectx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	out, err := c.Kubectl(ectx, kubeconfig, "--as="+user, "exec", k8senv.DemoPod, "--", "echo", "as", user).CombinedOutput()
	if err != nil || string(out) != "as "+user+"\n" {
		t.Errorf("kubectl --as=%s exec: %q, %v", user, out, err)
	}
	out, err = c.Kubectl(ectx, kubeconfig, "--as="+user, "get", "secrets").CombinedOutput()
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || !strings.Contains(string(out), "Forbidden") {
		t.Errorf("kubectl --as=%s get secrets: %q, %v; want Forbidden", user, out, err)
	}
}
