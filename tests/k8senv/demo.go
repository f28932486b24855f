package k8senv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// kwokNodeAnnotation marks the nodes kwok manages.
const kwokNodeAnnotation = "kwok.x-k8s.io/node"

// demoTargets are the servers DemoPod's ports forward to.
type demoTargets struct {
	http, echo *net.TCPAddr
}

// startDemoServers starts, for the life of the test binary, an HTTP server
// answering DemoHTTPBody and a TCP echo server, on loopback.
func startDemoServers() (demoTargets, error) {
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return demoTargets{}, fmt.Errorf("listen for the demo HTTP server: %w", err)
	}
	el, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		hl.Close()
		return demoTargets{}, fmt.Errorf("listen for the demo echo server: %w", err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, DemoHTTPBody)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go srv.Serve(hl)
	go func() {
		for {
			conn, err := el.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				io.Copy(conn, conn)
			}()
		}
	}()
	return demoTargets{http: hl.Addr().(*net.TCPAddr), echo: el.Addr().(*net.TCPAddr)}, nil
}

// writeKwokConfig writes kwok's configuration: the stages that make nodes
// Ready and pods Running (there is no scheduler or kubelet: pods name their
// node), and what the fake kubelet does for exec, logs, attach and
// port-forward, for every pod.
func writeKwokConfig(path, podDir, logFile string, t demoTargets) error {
	const stages = `apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: kas-node-ready
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - key: .status.phase
      operator: NotIn
      values: [Running]
  next:
    statusTemplate: |
      {{ $now := Now }}
      phase: Running
      conditions:
      {{ range NodeConditions }}
      - type: {{ .type | Quote }}
        status: {{ .status | Quote }}
        reason: {{ .reason | Quote }}
        message: {{ .message | Quote }}
        lastHeartbeatTime: {{ $now | Quote }}
        lastTransitionTime: {{ $now | Quote }}
      {{ end }}
      addresses:
      - {type: InternalIP, address: {{ NodeIP | Quote }}}
      - {type: Hostname, address: {{ .metadata.name | Quote }}}
      daemonEndpoints:
        kubeletEndpoint:
          Port: {{ NodePort }}
      capacity: {cpu: "64", memory: 256Gi, pods: "256"}
      allocatable: {cpu: "64", memory: 256Gi, pods: "256"}
      nodeInfo:
        architecture: amd64
        operatingSystem: linux
        kubeletVersion: {{ printf "kwok-%s" Version | Quote }}
        containerRuntimeVersion: {{ printf "kwok-%s" Version | Quote }}
        kernelVersion: ""
        kubeProxyVersion: ""
        osImage: ""
        machineID: ""
        systemUUID: ""
        bootID: ""
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: kas-pod-running
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - key: .metadata.deletionTimestamp
      operator: DoesNotExist
    - key: .status.phase
      operator: In
      values: [Pending]
  next:
    statusTemplate: |
      {{ $now := Now }}
      phase: Running
      startTime: {{ $now | Quote }}
      hostIP: {{ NodeIP | Quote }}
      hostIPs: [{ip: {{ NodeIP | Quote }}}]
      {{ $podIP := PodIP }}
      podIP: {{ $podIP | Quote }}
      podIPs: [{ip: {{ $podIP | Quote }}}]
      conditions:
      - {type: PodScheduled, status: "True", lastTransitionTime: {{ $now | Quote }}}
      - {type: Initialized, status: "True", lastTransitionTime: {{ $now | Quote }}}
      - {type: ContainersReady, status: "True", lastTransitionTime: {{ $now | Quote }}}
      - {type: Ready, status: "True", lastTransitionTime: {{ $now | Quote }}}
      containerStatuses:
      {{ range .spec.containers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        imageID: ""
        containerID: {{ printf "kwok://%s" .name | Quote }}
        ready: true
        started: true
        restartCount: 0
        state:
          running:
            startedAt: {{ $now | Quote }}
      {{ end }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: kas-pod-delete
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - key: .metadata.deletionTimestamp
      operator: Exists
  next:
    delete: true
`
	kubelet := fmt.Sprintf(`---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterExec
metadata:
  name: kas-exec-on-host
spec:
  execs:
  - local:
      workDir: %[1]q
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterLogs
metadata:
  name: kas-logs
spec:
  logs:
  - logsFile: %[2]q
    follow: true
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterAttach
metadata:
  name: kas-attach
spec:
  attaches:
  - logsFile: %[2]q
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: ClusterPortForward
metadata:
  name: kas-port-forward
spec:
  forwards:
  - ports: [%[3]d]
    target: {address: %[4]q, port: %[5]d}
  - ports: [%[6]d]
    target: {address: %[7]q, port: %[8]d}
`, podDir, logFile, DemoHTTPPort, t.http.IP.String(), t.http.Port, DemoEchoPort, t.echo.IP.String(), t.echo.Port)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create kwok directory: %w", err)
	}
	if err := os.WriteFile(path, []byte(stages+kubelet), 0o600); err != nil {
		return fmt.Errorf("write kwok configuration: %w", err)
	}
	return nil
}

// createDemo creates the node and DemoPod, and waits until the pod runs
// and kwok's kubelet endpoint answers.
func (c *Cluster) createDemo(ctx context.Context, kubeletPort int) error {
	cs := c.client.CoreV1()
	create := func(what string, err error) error {
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %s: %w", what, err)
		}
		return nil
	}
	_, err := cs.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: DemoNamespace}}, metav1.CreateOptions{})
	if err := create("namespace "+DemoNamespace, err); err != nil {
		return err
	}
	// Without a controller manager nobody creates the default service
	// accounts, and admission refuses pods without theirs.
	for _, ns := range []string{metav1.NamespaceDefault, DemoNamespace} {
		_, err := cs.ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{})
		if err := create("service account "+ns+"/default", err); err != nil {
			return err
		}
	}
	_, err = cs.Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        Node,
			Annotations: map[string]string{kwokNodeAnnotation: "fake"},
			Labels: map[string]string{
				"kubernetes.io/hostname": Node,
				"kubernetes.io/os":       "linux",
				"type":                   "kwok",
			},
		},
	}, metav1.CreateOptions{})
	if err := create("node "+Node, err); err != nil {
		return err
	}
	err = waitFor(ctx, "node "+Node+" to be Ready", c.procs, func(ctx context.Context) error {
		n, err := cs.Nodes().Get(ctx, Node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if n.Status.DaemonEndpoints.KubeletEndpoint.Port != int32(kubeletPort) {
			return fmt.Errorf("kubelet port %d: %w", n.Status.DaemonEndpoints.KubeletEndpoint.Port, errNotYet)
		}
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("node conditions %v: %w", n.Status.Conditions, errNotYet)
	})
	if err != nil {
		return err
	}

	noToken := false
	_, err = cs.Pods(DemoNamespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: DemoPod, Labels: map[string]string{"app": DemoPod}},
		Spec: corev1.PodSpec{
			NodeName:                     Node,
			AutomountServiceAccountToken: &noToken,
			Containers: []corev1.Container{{
				Name:  DemoContainer,
				Image: "registry.invalid/kas/demo:latest", // kwok pulls nothing
				Ports: []corev1.ContainerPort{
					{Name: "http", ContainerPort: DemoHTTPPort},
					{Name: "echo", ContainerPort: DemoEchoPort},
				},
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceCPU: resource.MustParse("10m"),
				}},
			}},
		},
	}, metav1.CreateOptions{})
	if err := create("pod "+DemoNamespace+"/"+DemoPod, err); err != nil {
		return err
	}
	err = waitFor(ctx, "pod "+DemoPod+" to run", c.procs, func(ctx context.Context) error {
		p, err := cs.Pods(DemoNamespace).Get(ctx, DemoPod, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if p.Status.Phase != corev1.PodRunning {
			return fmt.Errorf("phase %q: %w", p.Status.Phase, errNotYet)
		}
		return nil
	})
	if err != nil {
		return err
	}
	kubelet, err := kubeletClient(c.CAData)
	if err != nil {
		return err
	}
	return waitFor(ctx, "kwok's kubelet endpoint", c.procs, func(ctx context.Context) error {
		return httpOK(ctx, kubelet, fmt.Sprintf("https://127.0.0.1:%d/healthz", kubeletPort))
	})
}

func kubeletClient(caPEM []byte) (*http.Client, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("parse the CA certificate")
	}
	return &http.Client{
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		Timeout:   2 * time.Second,
	}, nil
}

// appendCRILog appends one line to a container log file in the CRI format
// kwok serves: "<RFC3339Nano time> stdout F <text>".
func appendCRILog(path, line string, now time.Time) error {
	if strings.ContainsAny(line, "\r\n") {
		return errors.New("append log line: the line contains a line break")
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open pod log: %w", err)
	}
	_, err = fmt.Fprintf(f, "%s stdout F %s\n", now.UTC().Format(time.RFC3339Nano), line)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("append to pod log: %w", err)
	}
	return nil
}

// writeKubeconfig writes a kubeconfig with one cluster, user and context.
func writeKubeconfig(path, server string, caPEM []byte, auth *clientcmdapi.AuthInfo) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["k8senv"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos["k8senv"] = auth
	cfg.Contexts["k8senv"] = &clientcmdapi.Context{Cluster: "k8senv", AuthInfo: "k8senv", Namespace: DemoNamespace}
	cfg.CurrentContext = "k8senv"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	return nil
}

// WriteKubeconfig writes a kubeconfig for server, authenticating with a
// bearer token, into a temporary directory of t, and returns its path. The
// default namespace is DemoNamespace. Tests use it to point kubectl at the
// proxy under test.
func WriteKubeconfig(t testing.TB, server string, caPEM []byte, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := writeKubeconfig(path, server, caPEM, &clientcmdapi.AuthInfo{Token: token}); err != nil {
		t.Fatal(err)
	}
	return path
}
