// Package k8senv runs a real Kubernetes control plane for end-to-end tests:
// etcd, kube-apiserver and kwok (fake nodes with a fake kubelet), from the
// binaries scripts/build-k8s-bins.sh builds, on free loopback ports.
//
// Start starts one cluster per test binary, on first use; every test of the
// binary shares it, so tests pick their own names (users, namespaces). The
// processes die with the test binary, however it ends (PR_SET_PDEATHSIG).
//
// The cluster has no controller manager and no scheduler. It has one node
// managed by kwok and, in namespace DemoNamespace, a Running pod DemoPod
// whose kubelet endpoints work through the API server the way a real
// kubelet's do: `kubectl exec` and `kubectl cp` run the command on the host
// in Cluster.PodDir, `kubectl logs` and `kubectl attach` read the CRI log
// file Cluster.WriteLog appends to, and `kubectl port-forward` reaches
// servers of the test binary (DemoHTTPPort, DemoEchoPort).
package k8senv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// The demo workload Start creates.
const (
	DemoNamespace = "kas-demo"
	DemoPod       = "demo"
	DemoContainer = "demo"
	Node          = "kas-node-0"
	// DemoHTTPPort is the pod port that port-forwards to an HTTP server
	// answering every request with DemoHTTPBody.
	DemoHTTPPort = 80
	DemoHTTPBody = "hello from the demo pod\n"
	// DemoEchoPort is the pod port that port-forwards to a TCP echo server.
	DemoEchoPort = 7
)

const (
	dirPrefix    = "kas-k8senv-"
	ownerFile    = "owner.pid"
	startTimeout = 3 * time.Minute
)

// Cluster is a running cluster. Its fields are read-only.
type Cluster struct {
	// URL of the API server, https://127.0.0.1:<port>.
	URL string
	// CAFile holds the PEM certificate of the CA that signed the API server's
	// serving certificate; CAData is its content.
	CAFile string
	CAData []byte
	// Kubeconfig is the path of an admin kubeconfig (a client certificate in
	// group system:masters).
	Kubeconfig string
	// KubectlPath is the kubectl built with the API server, same version.
	KubectlPath string
	// BinDir holds the binaries.
	BinDir string
	// PodDir is the host directory where commands "exec'd in" DemoPod run;
	// use absolute paths under it with `kubectl cp`.
	PodDir string
	// LogFile is the CRI-format log file of every container.
	LogFile string

	dir    string
	config *rest.Config
	client kubernetes.Interface
	procs  []*process
	logMu  sync.Mutex

	rbacMu    sync.Mutex
	agentDone bool
}

var (
	sharedOnce sync.Once
	shared     *Cluster
	sharedErr  error
)

// Start returns the test binary's cluster, starting it on first use. When
// the binaries are missing, the test is skipped with the command that
// builds them, or fails when KAS_REQUIRE_K8S=1.
func Start(t testing.TB) *Cluster {
	t.Helper()
	binDir := DefaultBinDir()
	if err := checkBinDir(binDir); err != nil {
		msg := fmt.Sprintf("Kubernetes test binaries are not built (%v); build them (~7 min once, cached) from the repository root with:\n\t%s %s", err, BuildCommand, binDir)
		if os.Getenv("KAS_REQUIRE_K8S") == "1" {
			t.Fatalf("%s\n(KAS_REQUIRE_K8S=1: failing instead of skipping)", msg)
		}
		t.Skip(msg)
	}
	sharedOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
		defer cancel()
		began := time.Now()
		shared, sharedErr = start(ctx, binDir)
		if sharedErr == nil {
			t.Logf("k8senv: Kubernetes %s up at %s in %v (work directory %s)", KubernetesVersion, shared.URL, time.Since(began).Round(time.Millisecond), shared.dir)
		}
	})
	if sharedErr != nil {
		t.Fatalf("start Kubernetes: %v", sharedErr)
	}
	return shared
}

// Shutdown stops the cluster, if one was started, and removes its files.
// Calling it is optional (TestMain, after m.Run): the processes die with the
// test binary anyway, and the next Start removes directories left behind.
func Shutdown() {
	if shared == nil {
		return
	}
	shared.stop()
	_ = os.RemoveAll(shared.dir)
}

// RESTConfig returns a copy of the admin client configuration.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.config) }

// Client returns an admin clientset.
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// Kubectl returns a command running the built kubectl with kubeconfig
// (the admin kubeconfig when empty). It has its own discovery cache and
// ignores the caller's KUBECONFIG.
func (c *Cluster) Kubectl(ctx context.Context, kubeconfig string, args ...string) *exec.Cmd {
	if kubeconfig == "" {
		kubeconfig = c.Kubeconfig
	}
	cmd := exec.CommandContext(ctx, c.KubectlPath, args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "KUBECACHEDIR="+filepath.Join(c.dir, "kubectl-cache"))
	cmd.WaitDelay = 5 * time.Second // a killed kubectl's pipes must not block Wait
	return cmd
}

// WriteLog appends line to the containers' log, where `kubectl logs` and a
// running `kubectl attach` see it.
func (c *Cluster) WriteLog(line string) error {
	c.logMu.Lock()
	defer c.logMu.Unlock()
	return appendCRILog(c.LogFile, line, time.Now())
}

func start(ctx context.Context, binDir string) (*Cluster, error) {
	sweepStaleDirs()
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("create work directory: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		return nil, fmt.Errorf("write owner file: %w", err)
	}
	c := &Cluster{
		BinDir:      binDir,
		KubectlPath: filepath.Join(binDir, "kubectl"),
		PodDir:      filepath.Join(dir, "pod"),
		LogFile:     filepath.Join(dir, "pod.log"),
		Kubeconfig:  filepath.Join(dir, "admin.kubeconfig"),
		dir:         dir,
	}
	if err := os.MkdirAll(c.PodDir, 0o755); err != nil {
		return nil, fmt.Errorf("create pod directory: %w", err)
	}
	if err := appendCRILog(c.LogFile, "demo started", time.Now()); err != nil {
		return nil, err
	}
	pki, err := newPKI(filepath.Join(dir, "pki"))
	if err != nil {
		return nil, err
	}
	c.CAFile, c.CAData = pki.caFile, pki.caPEM
	targets, err := startDemoServers()
	if err != nil {
		return nil, err
	}

	// The ports are free when picked; another process may take one before
	// our child binds it. That child then exits at once, and we retry.
	for attempt := 1; ; attempt++ {
		err = c.launch(ctx, pki, targets)
		if err == nil {
			return c, nil
		}
		c.stop()
		if !portInUse(err) || attempt == 3 {
			return nil, fmt.Errorf("%w (files in %s)", err, dir)
		}
	}
}

// launch starts etcd, kube-apiserver and kwok, and creates the demo
// workload.
func (c *Cluster) launch(ctx context.Context, pki *pki, targets demoTargets) error {
	ports, err := freePorts(4)
	if err != nil {
		return err
	}
	etcdPort, peerPort, apiPort, kubeletPort := ports[0], ports[1], ports[2], ports[3]
	env := os.Environ()

	etcdDir := filepath.Join(c.dir, "etcd")
	if err := os.RemoveAll(etcdDir); err != nil { // left by a failed attempt
		return fmt.Errorf("clear etcd data: %w", err)
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	etcd, err := startProcess(c.dir, "etcd", filepath.Join(c.BinDir, "etcd"), []string{
		"--name=k8senv",
		"--data-dir=" + etcdDir,
		"--listen-client-urls=" + etcdURL,
		"--advertise-client-urls=" + etcdURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=k8senv=" + peerURL,
		"--unsafe-no-fsync",
		"--log-level=warn",
	}, env)
	if err != nil {
		return err
	}
	c.procs = append(c.procs, etcd)
	plain := &http.Client{Timeout: 2 * time.Second}
	err = waitFor(ctx, "etcd", c.procs, func(ctx context.Context) error {
		return httpOK(ctx, plain, etcdURL+"/health")
	})
	if err != nil {
		return err
	}

	c.URL = fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	apiserver, err := startProcess(c.dir, "kube-apiserver", filepath.Join(c.BinDir, "kube-apiserver"), []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--cert-dir=" + filepath.Join(c.dir, "apiserver"),
		"--tls-cert-file=" + pki.serverCert.certFile,
		"--tls-private-key-file=" + pki.serverCert.keyFile,
		"--client-ca-file=" + pki.caFile,
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki.saPubFile,
		"--service-account-signing-key-file=" + pki.saKeyFile,
		"--service-cluster-ip-range=10.96.0.0/16",
		"--kubelet-client-certificate=" + pki.kubeletClientCert.certFile,
		"--kubelet-client-key=" + pki.kubeletClientCert.keyFile,
		"--kubelet-certificate-authority=" + pki.caFile,
		"--kubelet-preferred-address-types=InternalIP",
		"--endpoint-reconciler-type=none", // its reconciler refuses a loopback advertise address
		"--profiling=false",
		"--v=0",
	}, env)
	if err != nil {
		return err
	}
	c.procs = append(c.procs, apiserver)

	c.config = &rest.Config{
		Host: c.URL,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   pki.caPEM,
			CertData: pki.adminCert.certPEM,
			KeyData:  pki.adminCert.keyPEM,
		},
		QPS:   -1, // no client-side rate limit
		Burst: -1,
	}
	transport, err := rest.TransportFor(c.config)
	if err != nil {
		return fmt.Errorf("build admin transport: %w", err)
	}
	admin := &http.Client{Transport: transport, Timeout: 5 * time.Second}
	err = waitFor(ctx, "kube-apiserver", c.procs, func(ctx context.Context) error {
		return httpOK(ctx, admin, c.URL+"/readyz")
	})
	if err != nil {
		return err
	}
	if c.client, err = kubernetes.NewForConfig(c.RESTConfig()); err != nil {
		return fmt.Errorf("create admin client: %w", err)
	}
	if err := writeKubeconfig(c.Kubeconfig, c.URL, pki.caPEM, &clientcmdapi.AuthInfo{
		ClientCertificateData: pki.adminCert.certPEM,
		ClientKeyData:         pki.adminCert.keyPEM,
	}); err != nil {
		return err
	}

	kwokDir := filepath.Join(c.dir, "kwok")
	kwokConfig := filepath.Join(kwokDir, "kwok.yaml")
	if err := writeKwokConfig(kwokConfig, c.PodDir, c.LogFile, targets); err != nil {
		return err
	}
	// kwok also loads $KWOK_WORKDIR/kwok.yaml; point it at our directory so
	// a developer's ~/.kwok never leaks in.
	kwok, err := startProcess(c.dir, "kwok", filepath.Join(c.BinDir, "kwok"), []string{
		"--kubeconfig=" + c.Kubeconfig,
		"--config=" + kwokConfig,
		"--manage-nodes-with-annotation-selector=" + kwokNodeAnnotation + "=fake",
		"--node-ip=127.0.0.1",
		"--node-port=" + strconv.Itoa(kubeletPort),
		"--server-address=" + fmt.Sprintf("127.0.0.1:%d", kubeletPort),
		"--tls-cert-file=" + pki.kubeletServingCert.certFile,
		"--tls-private-key-file=" + pki.kubeletServingCert.keyFile,
	}, append(env, "KWOK_WORKDIR="+kwokDir))
	if err != nil {
		return err
	}
	c.procs = append(c.procs, kwok)
	return c.createDemo(ctx, kubeletPort)
}

func (c *Cluster) stop() {
	// In reverse: kwok, then the API server, then etcd.
	for i := len(c.procs) - 1; i >= 0; i-- {
		c.procs[i].stop()
	}
	c.procs = nil
}

// waitFor calls check every 50ms until it succeeds, one of procs exits, or
// ctx ends.
func waitFor(ctx context.Context, what string, procs []*process, check func(context.Context) error) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, p := range procs {
			if p.exited() {
				return p.exitError()
			}
		}
		err := check(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			var tails strings.Builder
			for _, p := range procs {
				fmt.Fprintf(&tails, "\n--- %s log ends with:\n%s", p.name, p.logTail())
			}
			return fmt.Errorf("wait for %s: %w; last check: %v%s", what, ctx.Err(), err, tails.String())
		case <-tick.C:
		}
	}
}

func httpOK(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// freePorts returns n distinct loopback ports that were free a moment ago.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pick a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

var errNotYet = errors.New("not yet")
