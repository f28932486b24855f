package tests

// Tests of deploy/: the Helm charts are rendered with several value sets,
// validated offline against the Kubernetes API's JSON schemas (kubeconform,
// schemas from tests/k8sschema) and by a real API server (kubectl apply
// --dry-run=server on tests/k8senv), and the containers' settings are run
// through kas's own --verify-config. Value sets the charts must reject are
// kept as negative cases, one per layer that catches them. The Knative
// manifest and the Dockerfile are checked structurally (neither Knative nor
// Docker runs here); the Dockerfile's build commands are run as written.

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kas-project/kas/cmd/kas/app"
	"github.com/kas-project/kas/internal/config"
	"github.com/kas-project/kas/tests/k8senv"
	"github.com/kas-project/kas/tests/k8sschema"
)

// deployCRDKinds are the kinds of custom resources in deploy/: neither the
// schemas nor the test API server know them, so they are skipped, by name,
// and checked structurally instead.
var deployCRDKinds = map[string]bool{
	"monitoring.coreos.com/v1/ServiceMonitor": true,
	"serving.knative.dev/v1/Service":          true,
}

// deployRoot is the repository root.
func deployRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// deployTool returns the path of a pinned tool (scripts/tools.sh installs
// it into .bin/), skipping the test when it is missing, or failing with
// KAS_REQUIRE_K8S=1.
func deployTool(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(deployRoot(t), ".bin", name)
	if fi, err := os.Stat(p); err == nil && fi.Mode()&0o111 != 0 {
		return p
	}
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	msg := fmt.Sprintf("%s is not installed; install the pinned tools with scripts/tools.sh", name)
	if os.Getenv("KAS_REQUIRE_K8S") == "1" {
		t.Fatalf("%s (KAS_REQUIRE_K8S=1: failing instead of skipping)", msg)
	}
	t.Skip(msg)
	return ""
}

var (
	deploySchemasOnce sync.Once
	deploySchemasDir  string
	deploySchemasErr  error
)

// deploySchemas returns the directory of the Kubernetes JSON schemas,
// building them on first use (as scripts/schemas.sh does).
func deploySchemas(t *testing.T) string {
	t.Helper()
	deploySchemasOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		deploySchemasDir = k8sschema.DefaultDir()
		deploySchemasErr = k8sschema.Ensure(ctx, deploySchemasDir)
	})
	if deploySchemasErr != nil {
		t.Fatalf("Kubernetes JSON schemas (scripts/schemas.sh): %v", deploySchemasErr)
	}
	return deploySchemasDir
}

// ---- rendering and parsing ----

// deployHelmTemplate renders chart (a directory under deploy/charts) as
// release in namespace with the values YAML. The error holds helm's output.
func deployHelmTemplate(t *testing.T, chart, release, namespace, values string) (string, error) {
	t.Helper()
	helm := deployTool(t, "helm")
	dir := t.TempDir()
	vf := filepath.Join(dir, "values.yaml")
	if err := os.WriteFile(vf, []byte(values), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(helm, "template", release, filepath.Join(deployRoot(t), "deploy", "charts", chart),
		"--namespace", namespace, "--values", vf)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+filepath.Join(dir, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(dir, "config"), "HELM_DATA_HOME="+filepath.Join(dir, "data"))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("helm template %s: %w\n%s", chart, err, stderr.String())
	}
	return stdout.String(), nil
}

// deployDoc is one YAML document of a manifest: its text and its object.
type deployDoc struct {
	text string
	obj  map[string]any
}

func (d deployDoc) gvk() string {
	return deployStr(d.obj, "apiVersion") + "/" + deployStr(d.obj, "kind")
}

func (d deployDoc) name() string { return deployStr(d.obj, "metadata", "name") }

// deploySplit splits a multi-document manifest, dropping empty documents.
func deploySplit(t *testing.T, manifest string) []deployDoc {
	t.Helper()
	var docs []deployDoc
	var cur strings.Builder
	flush := func() {
		text := cur.String()
		cur.Reset()
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(text), &obj); err != nil {
			t.Fatalf("rendered YAML does not parse: %v\n%s", err, text)
		}
		if obj != nil {
			docs = append(docs, deployDoc{text: text, obj: obj})
		}
	}
	sc := bufio.NewScanner(strings.NewReader(manifest))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.TrimRight(sc.Text(), " ") == "---" {
			flush()
			continue
		}
		cur.WriteString(sc.Text())
		cur.WriteByte('\n')
	}
	flush()
	return docs
}

// deployJoin joins documents into one manifest.
func deployJoin(docs []deployDoc) string {
	var b strings.Builder
	for _, d := range docs {
		b.WriteString("---\n")
		b.WriteString(d.text)
	}
	return b.String()
}

// deployBuiltin returns the documents of built-in kinds, and fails on a
// custom kind that is not in deployCRDKinds.
func deployBuiltin(t *testing.T, docs []deployDoc) (builtin, skipped []deployDoc) {
	t.Helper()
	for _, d := range docs {
		if deployCRDKinds[d.gvk()] {
			skipped = append(skipped, d)
			continue
		}
		if g := deployStr(d.obj, "apiVersion"); strings.Contains(g, ".") && !strings.HasSuffix(strings.Split(g, "/")[0], ".k8s.io") {
			t.Errorf("%s %s: a custom kind not listed in deployCRDKinds", d.gvk(), d.name())
		}
		builtin = append(builtin, d)
	}
	return builtin, skipped
}

// ---- navigation of decoded YAML ----

func deployGet(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

func deployStr(v any, path ...string) string {
	s, _ := deployGet(v, path...).(string)
	return s
}

func deployMap(v any, path ...string) map[string]any {
	m, _ := deployGet(v, path...).(map[string]any)
	return m
}

func deployList(v any, path ...string) []any {
	l, _ := deployGet(v, path...).([]any)
	return l
}

func deployInt(v any, path ...string) (int, bool) {
	i, ok := deployGet(v, path...).(int)
	return i, ok
}

func deployStrings(v any, path ...string) []string {
	var out []string
	for _, e := range deployList(v, path...) {
		s, _ := e.(string)
		out = append(out, s)
	}
	return out
}

// deployFind returns the documents of kind whose name ends with suffix.
func deployFind(docs []deployDoc, kind, suffix string) []deployDoc {
	var out []deployDoc
	for _, d := range docs {
		if deployStr(d.obj, "kind") == kind && strings.HasSuffix(d.name(), suffix) {
			out = append(out, d)
		}
	}
	return out
}

// deployOne returns the single document of kind whose name ends with suffix.
func deployOne(t *testing.T, docs []deployDoc, kind, suffix string) map[string]any {
	t.Helper()
	found := deployFind(docs, kind, suffix)
	if len(found) != 1 {
		t.Fatalf("%d %s objects named *%s, want 1", len(found), kind, suffix)
	}
	return found[0].obj
}

// deployPodSpec returns the pod spec of a workload.
func deployPodSpec(o map[string]any) map[string]any {
	switch deployStr(o, "kind") {
	case "CronJob":
		return deployMap(o, "spec", "jobTemplate", "spec", "template", "spec")
	default: // Deployment, Job, Knative Service
		return deployMap(o, "spec", "template", "spec")
	}
}

func deployPodLabels(o map[string]any) map[string]any {
	if deployStr(o, "kind") == "CronJob" {
		return deployMap(o, "spec", "jobTemplate", "spec", "template", "metadata", "labels")
	}
	return deployMap(o, "spec", "template", "metadata", "labels")
}

func deployContainer(t *testing.T, o map[string]any) map[string]any {
	t.Helper()
	cs := deployList(deployPodSpec(o), "containers")
	if len(cs) != 1 {
		t.Fatalf("%s %s has %d containers, want 1", deployStr(o, "kind"), deployStr(o, "metadata", "name"), len(cs))
	}
	return cs[0].(map[string]any)
}

// deployEnv returns a container's env entries by name, in order.
func deployEnv(c map[string]any) ([]string, map[string]map[string]any) {
	var names []string
	byName := map[string]map[string]any{}
	for _, e := range deployList(c, "env") {
		m := e.(map[string]any)
		n := deployStr(m, "name")
		names = append(names, n)
		byName[n] = m
	}
	return names, byName
}

// ---- validation ----

// deployKubeconform validates the built-in documents offline and returns
// kubeconform's complaint, if any. Every document must be validated, none
// skipped for want of a schema.
func deployKubeconform(t *testing.T, docs []deployDoc) error {
	t.Helper()
	kc := deployTool(t, "kubeconform")
	schemas := deploySchemas(t)
	cmd := exec.Command(kc, "-strict", "-summary", "-verbose", "-output", "json", "-kubernetes-version", strings.TrimPrefix(k8sschema.KubernetesVersion, "v"),
		"-schema-location", k8sschema.SchemaLocation(schemas), "-")
	cmd.Stdin = strings.NewReader(deployJoin(docs))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var report struct {
		Resources []struct {
			Kind, Name, Status, Msg string
		} `json:"resources"`
		Summary struct {
			Valid, Invalid, Errors, Skipped int
		} `json:"summary"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &report); err != nil {
		t.Fatalf("kubeconform output: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	if runErr != nil || report.Summary.Invalid+report.Summary.Errors > 0 {
		var msgs []string
		for _, r := range report.Resources {
			if r.Status != "statusValid" {
				msgs = append(msgs, fmt.Sprintf("%s %s: %s: %s", r.Kind, r.Name, r.Status, r.Msg))
			}
		}
		return fmt.Errorf("kubeconform: %v\n%s%s", runErr, strings.Join(msgs, "\n"), stderr.String())
	}
	if report.Summary.Valid != len(docs) || report.Summary.Skipped != 0 {
		t.Fatalf("kubeconform validated %d of %d documents (skipped %d)", report.Summary.Valid, len(docs), report.Summary.Skipped)
	}
	return nil
}

var deployNamespaces sync.Map

// deployDryRun applies the documents to the test API server with
// --dry-run=server in namespace (created first) and returns the server's
// complaint, if any.
func deployDryRun(t *testing.T, c *k8senv.Cluster, namespace string, docs []deployDoc) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, done := deployNamespaces.Load(namespace); !done {
		_, err := c.Client().CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("create namespace %s: %v", namespace, err)
		}
		deployNamespaces.Store(namespace, true)
	}
	cmd := c.Kubectl(ctx, "", "apply", "--dry-run=server", "--validate=strict", "--namespace", namespace, "-f", "-")
	cmd.Stdin = strings.NewReader(deployJoin(docs))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("kubectl apply --dry-run=server: %w\n%s", err, out)
	}
	if n := strings.Count(string(out), "(server dry run)"); n != len(docs) {
		t.Fatalf("the server dry-ran %d of %d objects:\n%s", n, len(docs), out)
	}
	return nil
}

// ---- the containers' settings, checked by kas itself ----

// deploySecrets are Secrets by name, then key.
type deploySecrets map[string]map[string][]byte

// add records the Secrets among docs.
func (s deploySecrets) add(t *testing.T, docs []deployDoc) {
	t.Helper()
	for _, d := range docs {
		if deployStr(d.obj, "kind") != "Secret" {
			continue
		}
		data := map[string][]byte{}
		for k, v := range deployMap(d.obj, "data") {
			b, err := base64.StdEncoding.DecodeString(v.(string))
			if err != nil {
				t.Fatalf("Secret %s: data.%s is not base64: %v", d.name(), k, err)
			}
			data[k] = b
		}
		for k, v := range deployMap(d.obj, "stringData") {
			data[k] = []byte(v.(string))
		}
		s[d.name()] = data
	}
}

var deployVarRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// deployResolveEnv returns a workload's container environment as the
// kubelet would set it (fieldRefs, Secret references and $(VAR)
// expansion), with the Secret volumes written under a temporary root and
// paths into them rewritten to it.
func deployResolveEnv(t *testing.T, o map[string]any, secrets deploySecrets) map[string]string {
	t.Helper()
	spec := deployPodSpec(o)
	c := deployContainer(t, o)
	root := t.TempDir()
	volumes := map[string]map[string]any{}
	for _, v := range deployList(spec, "volumes") {
		volumes[deployStr(v, "name")] = v.(map[string]any)
	}
	var mounts []string
	for _, m := range deployList(c, "volumeMounts") {
		path := deployStr(m, "mountPath")
		vol, ok := volumes[deployStr(m, "name")]
		if !ok {
			t.Fatalf("volume mount %s names no volume", deployStr(m, "name"))
		}
		sv := deployMap(vol, "secret")
		if sv == nil {
			continue
		}
		data, ok := secrets[deployStr(sv, "secretName")]
		if !ok {
			t.Fatalf("volume %s: no Secret %q", deployStr(vol, "name"), deployStr(sv, "secretName"))
		}
		dir := filepath.Join(root, path)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		files := map[string]string{}
		if items := deployList(sv, "items"); len(items) > 0 {
			for _, it := range items {
				files[deployStr(it, "key")] = deployStr(it, "path")
			}
		} else {
			for k := range data {
				files[k] = k
			}
		}
		for key, file := range files {
			b, ok := data[key]
			if !ok {
				t.Fatalf("volume %s: Secret %s has no key %q", deployStr(vol, "name"), deployStr(sv, "secretName"), key)
			}
			if err := os.WriteFile(filepath.Join(dir, file), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		mounts = append(mounts, path)
	}
	env := map[string]string{}
	names, byName := deployEnv(c)
	for _, n := range names {
		e := byName[n]
		var val string
		switch {
		case deployGet(e, "valueFrom", "fieldRef") != nil:
			switch fp := deployStr(e, "valueFrom", "fieldRef", "fieldPath"); fp {
			case "status.podIP":
				val = "10.244.3.17"
			case "metadata.name":
				val = "kas-test-pod"
			default:
				t.Fatalf("env %s: fieldRef %s not simulated", n, fp)
			}
		case deployGet(e, "valueFrom", "secretKeyRef") != nil:
			ref := deployMap(e, "valueFrom", "secretKeyRef")
			b, ok := secrets[deployStr(ref, "name")][deployStr(ref, "key")]
			if !ok {
				t.Fatalf("env %s: no Secret %s with key %s", n, deployStr(ref, "name"), deployStr(ref, "key"))
			}
			val = string(b)
		case deployGet(e, "valueFrom") != nil:
			t.Fatalf("env %s: valueFrom not simulated: %v", n, e)
		default:
			val = fmt.Sprint(deployGet(e, "value"))
			if deployGet(e, "value") == nil {
				val = ""
			}
			if _, isString := deployGet(e, "value").(string); !isString && deployGet(e, "value") != nil {
				t.Errorf("env %s: value %v is not a string", n, deployGet(e, "value"))
			}
			val = deployVarRef.ReplaceAllStringFunc(val, func(ref string) string {
				if v, ok := env[ref[2:len(ref)-1]]; ok {
					return v
				}
				return ref
			})
		}
		for _, m := range mounts {
			if val == m || strings.HasPrefix(val, m+"/") {
				val = filepath.Join(root, val)
			}
		}
		env[n] = val
	}
	return env
}

// deployVerifyKas checks a kas workload: its command is the image's kas,
// every KAS_*/OWN_PRIVATE_API_* variable is a setting kas reads, and
// `kas <args> --verify-config` accepts the environment the pod would get.
func deployVerifyKas(t *testing.T, o map[string]any, secrets deploySecrets) {
	t.Helper()
	what := deployStr(o, "kind") + " " + deployStr(o, "metadata", "name")
	c := deployContainer(t, o)
	if cmd := deployStrings(c, "command"); !slices.Equal(cmd, []string{"/usr/local/bin/kas"}) {
		t.Errorf("%s: command %v, want [/usr/local/bin/kas]", what, cmd)
	}
	known := map[string]bool{}
	for _, n := range config.EnvNames() {
		known[n] = true
	}
	names, _ := deployEnv(c)
	for _, n := range names {
		if !strings.HasPrefix(n, "KAS_") && !strings.HasPrefix(n, "OWN_PRIVATE_API_") {
			continue
		}
		if !known[n] {
			t.Errorf("%s: %s is not a setting kas reads (internal/config)", what, n)
		}
	}
	env := deployResolveEnv(t, o, secrets)
	args := append(deployStrings(c, "args"), "--verify-config")
	var stdout, stderr bytes.Buffer
	code := app.CLI{
		Stdout:    &stdout,
		Stderr:    &stderr,
		LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok },
	}.Run(context.Background(), args)
	if code != 0 || !strings.Contains(stderr.String(), "configuration is valid") {
		t.Errorf("%s: kas %s exited %d:\n%s%s\nenvironment: %v", what, strings.Join(args, " "), code, stdout.String(), stderr.String(), env)
	}
}

// deployCheckHardened checks the pod and container security settings.
func deployCheckHardened(t *testing.T, o map[string]any) {
	t.Helper()
	what := deployStr(o, "kind") + " " + deployStr(o, "metadata", "name")
	spec := deployPodSpec(o)
	c := deployContainer(t, o)
	nonRoot := deployGet(spec, "securityContext", "runAsNonRoot") == true || deployGet(c, "securityContext", "runAsNonRoot") == true
	if !nonRoot {
		t.Errorf("%s: runAsNonRoot is not set", what)
	}
	uid, ok := deployInt(spec, "securityContext", "runAsUser")
	if cu, cok := deployInt(c, "securityContext", "runAsUser"); cok {
		uid, ok = cu, true
	}
	if !ok || uid == 0 {
		t.Errorf("%s: runAsUser %d, want a non-root user", what, uid)
	}
	sc := deployMap(c, "securityContext")
	if sc["readOnlyRootFilesystem"] != true {
		t.Errorf("%s: readOnlyRootFilesystem is not true", what)
	}
	if sc["allowPrivilegeEscalation"] != false {
		t.Errorf("%s: allowPrivilegeEscalation is not false", what)
	}
	if drop := deployStrings(sc, "capabilities", "drop"); !slices.Equal(drop, []string{"ALL"}) {
		t.Errorf("%s: capabilities.drop %v, want [ALL]", what, drop)
	}
	if len(deployList(sc, "capabilities", "add")) > 0 {
		t.Errorf("%s: adds capabilities", what)
	}
}

// deployCheckProbes checks /livez and /readyz probes on the named port,
// which must be the container's port number want.
func deployCheckProbes(t *testing.T, o map[string]any, want int) {
	t.Helper()
	what := deployStr(o, "kind") + " " + deployStr(o, "metadata", "name")
	c := deployContainer(t, o)
	ports := map[string]int{}
	for _, p := range deployList(c, "ports") {
		n, _ := deployInt(p, "containerPort")
		ports[deployStr(p, "name")] = n
	}
	for probe, path := range map[string]string{"livenessProbe": "/livez", "readinessProbe": "/readyz"} {
		if got := deployStr(c, probe, "httpGet", "path"); got != path {
			t.Errorf("%s: %s path %q, want %q", what, probe, got, path)
		}
		port := deployGet(c, probe, "httpGet", "port")
		if name, ok := port.(string); ok {
			port = ports[name]
		}
		if port != want {
			t.Errorf("%s: %s port %v, want %d", what, probe, deployGet(c, probe, "httpGet", "port"), want)
		}
	}
}

// deployCheckWiring checks that every Service selects the pods of exactly
// one workload and targets ports those pods name, and that PDBs and HPAs
// point at workloads that exist.
func deployCheckWiring(t *testing.T, docs []deployDoc) {
	t.Helper()
	type workload struct {
		name   string
		labels map[string]any
		ports  map[string]bool
	}
	var workloads []workload
	deployments := map[string]map[string]any{}
	for _, d := range docs {
		if deployStr(d.obj, "kind") != "Deployment" {
			continue
		}
		deployments[d.name()] = d.obj
		w := workload{name: d.name(), labels: deployPodLabels(d.obj), ports: map[string]bool{}}
		for _, p := range deployList(deployContainer(t, d.obj), "ports") {
			w.ports[deployStr(p, "name")] = true
		}
		// The selector must select the Deployment's own pods.
		for k, v := range deployMap(d.obj, "spec", "selector", "matchLabels") {
			if w.labels[k] != v {
				t.Errorf("Deployment %s: selector %s=%v does not match its pod labels", d.name(), k, v)
			}
		}
		workloads = append(workloads, w)
	}
	selects := func(sel map[string]any, labels map[string]any) bool {
		for k, v := range sel {
			if labels[k] != v {
				return false
			}
		}
		return len(sel) > 0
	}
	for _, d := range docs {
		switch deployStr(d.obj, "kind") {
		case "Service":
			sel := deployMap(d.obj, "spec", "selector")
			var hit []workload
			for _, w := range workloads {
				if selects(sel, w.labels) {
					hit = append(hit, w)
				}
			}
			if len(hit) == 0 {
				t.Errorf("Service %s selects no pods", d.name())
			}
			for _, p := range deployList(d.obj, "spec", "ports") {
				tp := deployStr(p, "targetPort")
				for _, w := range hit {
					if !w.ports[tp] {
						t.Errorf("Service %s: targetPort %q is not a port of %s", d.name(), tp, w.name)
					}
				}
			}
		case "PodDisruptionBudget":
			sel := deployMap(d.obj, "spec", "selector", "matchLabels")
			n := 0
			for _, w := range workloads {
				if selects(sel, w.labels) {
					n++
				}
			}
			if n != 1 {
				t.Errorf("PodDisruptionBudget %s selects %d workloads, want 1", d.name(), n)
			}
		case "HorizontalPodAutoscaler":
			target := deployStr(d.obj, "spec", "scaleTargetRef", "name")
			dep, ok := deployments[target]
			if !ok || deployStr(d.obj, "spec", "scaleTargetRef", "kind") != "Deployment" {
				t.Errorf("HorizontalPodAutoscaler %s targets %q, not a Deployment here", d.name(), target)
			} else if deployGet(dep, "spec", "replicas") != nil {
				t.Errorf("Deployment %s sets replicas although %s scales it", target, d.name())
			}
		}
	}
}

// ---- the kas chart ----

type deployCase struct {
	name   string
	values string
	// existing are Secrets the cluster holds before the install.
	existing deploySecrets
	check    func(t *testing.T, docs []deployDoc, secrets deploySecrets)
}

// deployKey is a valid key file: base64 text of 32 bytes.
func deployKey(seed byte) []byte {
	return []byte(base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{seed}, 32)) + "\n")
}

func TestChartKas(t *testing.T) {
	cluster := k8senv.Start(t)
	cases := []deployCase{
		{
			name:   "defaults",
			values: "database:\n  url: postgres://kas:secret@db.example:5432/kas?sslmode=require\n",
			check: func(t *testing.T, docs []deployDoc, secrets deploySecrets) {
				cp := deployOne(t, docs, "Deployment", "-controlplane")
				dp := deployOne(t, docs, "Deployment", "-dataplane")
				if r, _ := deployInt(cp, "spec", "replicas"); r != 2 {
					t.Errorf("control plane replicas %d, want 2", r)
				}
				deployOne(t, docs, "HorizontalPodAutoscaler", "-dataplane")
				deployOne(t, docs, "PodDisruptionBudget", "-dataplane")
				if n := len(deployFind(docs, "CronJob", "")) + len(deployFind(docs, "ServiceMonitor", "")); n != 0 {
					t.Errorf("gc CronJob or ServiceMonitor rendered by default")
				}
				// Services by port.
				for suffix, port := range map[string]int{"-controlplane": 8153, "-agent": 8150, "-k8s-proxy": 8154, "-metrics": 8151} {
					svc := deployOne(t, docs, "Service", suffix)
					if p, _ := deployInt(deployList(svc, "spec", "ports")[0], "port"); p != port {
						t.Errorf("Service *%s port %d, want %d", suffix, p, port)
					}
				}
				if deployStr(deployOne(t, docs, "Service", "-metrics"), "spec", "clusterIP") != "None" {
					t.Error("the metrics Service is not headless")
				}
				if len(deployFind(docs, "Service", "-private")) != 0 {
					t.Error("a Service for the private API: nodes dial each other by pod IP")
				}
				// Migrations: a hook Job before install and upgrade; the
				// database Secret a hook that comes first.
				job := deployOne(t, docs, "Job", "-migrate")
				if h := deployStr(job, "metadata", "annotations", "helm.sh/hook"); h != "pre-install,pre-upgrade" {
					t.Errorf("migrate Job hook %q", h)
				}
				if args := deployStrings(deployContainer(t, job), "args"); !slices.Equal(args, []string{"migrate"}) {
					t.Errorf("migrate Job args %v", args)
				}
				dbs := deployOne(t, docs, "Secret", "-database")
				jw, _ := strconv.Atoi(deployStr(job, "metadata", "annotations", "helm.sh/hook-weight"))
				sw, err := strconv.Atoi(deployStr(dbs, "metadata", "annotations", "helm.sh/hook-weight"))
				if err != nil || sw >= jw || !strings.Contains(deployStr(dbs, "metadata", "annotations", "helm.sh/hook"), "pre-install") {
					t.Errorf("database Secret is not a hook created before the migrate Job: %v", deployMap(dbs, "metadata", "annotations"))
				}
				// Keys: generated, kept on uninstall, in the key file format.
				keys := deployOne(t, docs, "Secret", "-keys")
				if deployStr(keys, "metadata", "annotations", "helm.sh/resource-policy") != "keep" {
					t.Error("generated keys Secret is not kept on uninstall")
				}
				for _, k := range []string{"api_secret_key", "private_api_secret_key"} {
					raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(secrets[deployStr(keys, "metadata", "name")][k])))
					if err != nil || len(raw) != 32 {
						t.Errorf("generated %s does not decode to 32 bytes (%d, %v)", k, len(raw), err)
					}
				}
				// Dataplane: private URL from the pod IP, drain grace and
				// termination grace period in step.
				_, env := deployEnv(deployContainer(t, dp))
				if deployStr(env["POD_IP"], "valueFrom", "fieldRef", "fieldPath") != "status.podIP" {
					t.Errorf("POD_IP is not the pod IP: %v", env["POD_IP"])
				}
				if u := deployStr(env["OWN_PRIVATE_API_URL"], "value"); u != "grpc://$(POD_IP):8155" {
					t.Errorf("OWN_PRIVATE_API_URL %q", u)
				}
				if deployStr(env["KAS_DATAPLANE_NODE_ID"], "valueFrom", "fieldRef", "fieldPath") != "metadata.name" {
					t.Errorf("KAS_DATAPLANE_NODE_ID is not the pod name: %v", env["KAS_DATAPLANE_NODE_ID"])
				}
				if env["OWN_PRIVATE_API_CIDR"] != nil {
					t.Error("OWN_PRIVATE_API_CIDR set in podIP mode")
				}
				if env["KAS_DATAPLANE_KUBERNETES_API_ALLOWED_ORIGINS"] != nil {
					t.Error("KAS_DATAPLANE_KUBERNETES_API_ALLOWED_ORIGINS set without allowedOrigins")
				}
				if g := deployStr(env["KAS_DATAPLANE_DRAIN_GRACE"], "value"); g != "30s" {
					t.Errorf("KAS_DATAPLANE_DRAIN_GRACE %q, want 30s", g)
				}
				if tg, _ := deployInt(deployPodSpec(dp), "terminationGracePeriodSeconds"); tg != 45 {
					t.Errorf("terminationGracePeriodSeconds %d, want 30 + 15", tg)
				}
				if mu := deployGet(dp, "spec", "strategy", "rollingUpdate", "maxUnavailable"); mu != 0 {
					t.Errorf("dataplane rolling update maxUnavailable %v, want 0 (make before break)", mu)
				}
				// The dataplane mounts only its own key and never the database.
				if env["KAS_DATABASE_URL"] != nil || env["KAS_API_SECRET_KEY_FILE"] != nil {
					t.Error("the dataplane gets the database URL or api_secret_key")
				}
				for _, item := range deployList(deployPodSpec(dp), "volumes") {
					for _, it := range deployList(item, "secret", "items") {
						if deployStr(it, "key") == "api_secret_key" {
							t.Error("the dataplane mounts api_secret_key")
						}
					}
				}
			},
		},
		{
			name: "cidr-hpa-off",
			values: `database: {url: "host=db.example user=kas dbname=kas"}
dataplane:
  replicas: 3
  drainGraceSeconds: 120
  terminationExtraSeconds: 10
  privateAPI: {mode: cidr, cidr: "10.244.0.0/16,fd00:10:244::/56"}
  kubernetesAPI: {allowedOrigins: ["https://gitlab.example.com", "http://localhost:3000"]}
  autoscaling: {enabled: false}
  podDisruptionBudget: {maxUnavailable: 25%}
  topologySpreadConstraints:
    - maxSkew: 1
      topologyKey: topology.kubernetes.io/zone
      whenUnsatisfiable: ScheduleAnyway
      labelSelector: {matchLabels: {app.kubernetes.io/component: dataplane}}
`,
			check: func(t *testing.T, docs []deployDoc, _ deploySecrets) {
				dp := deployOne(t, docs, "Deployment", "-dataplane")
				if r, _ := deployInt(dp, "spec", "replicas"); r != 3 {
					t.Errorf("dataplane replicas %d, want 3", r)
				}
				if len(deployFind(docs, "HorizontalPodAutoscaler", "")) != 0 {
					t.Error("HPA rendered with autoscaling off")
				}
				_, env := deployEnv(deployContainer(t, dp))
				if c := deployStr(env["OWN_PRIVATE_API_CIDR"], "value"); c != "10.244.0.0/16,fd00:10:244::/56" {
					t.Errorf("OWN_PRIVATE_API_CIDR %q", c)
				}
				if env["OWN_PRIVATE_API_URL"] != nil || env["POD_IP"] != nil {
					t.Error("OWN_PRIVATE_API_URL or POD_IP set in cidr mode")
				}
				if o := deployStr(env["KAS_DATAPLANE_KUBERNETES_API_ALLOWED_ORIGINS"], "value"); o != "https://gitlab.example.com,http://localhost:3000" {
					t.Errorf("KAS_DATAPLANE_KUBERNETES_API_ALLOWED_ORIGINS %q", o)
				}
				if g := deployStr(env["KAS_DATAPLANE_DRAIN_GRACE"], "value"); g != "120s" {
					t.Errorf("KAS_DATAPLANE_DRAIN_GRACE %q, want 120s", g)
				}
				if tg, _ := deployInt(deployPodSpec(dp), "terminationGracePeriodSeconds"); tg != 130 {
					t.Errorf("terminationGracePeriodSeconds %d, want 120 + 10", tg)
				}
				if len(deployList(deployPodSpec(dp), "topologySpreadConstraints")) != 1 {
					t.Error("topologySpreadConstraints not passed through")
				}
			},
		},
		{
			name: "existing-secrets",
			values: `secrets: {existingSecret: ops-kas-keys}
database: {existingSecret: ops-kas-db, existingSecretKey: dsn}
serviceAccountName: kas-workload-identity
imagePullSecrets: [{name: regcred}]
image: {repository: registry.example/kas, tag: v9.9.9}
`,
			existing: deploySecrets{
				"ops-kas-keys": {"api_secret_key": deployKey(1), "private_api_secret_key": deployKey(2)},
				"ops-kas-db":   {"dsn": []byte("postgres://kas@db.example/kas")},
			},
			check: func(t *testing.T, docs []deployDoc, _ deploySecrets) {
				if s := deployFind(docs, "Secret", ""); len(s) != 0 {
					t.Errorf("%d Secrets rendered although both exist", len(s))
				}
				for _, d := range docs {
					spec := deployPodSpec(d.obj)
					if spec == nil {
						continue
					}
					if deployStr(spec, "serviceAccountName") != "kas-workload-identity" {
						t.Errorf("%s: serviceAccountName %q", d.name(), deployStr(spec, "serviceAccountName"))
					}
					if img := deployStr(deployContainer(t, d.obj), "image"); img != "registry.example/kas:v9.9.9" {
						t.Errorf("%s: image %q", d.name(), img)
					}
				}
				_, env := deployEnv(deployContainer(t, deployOne(t, docs, "Deployment", "-controlplane")))
				ref := deployMap(env["KAS_DATABASE_URL"], "valueFrom", "secretKeyRef")
				if deployStr(ref, "name") != "ops-kas-db" || deployStr(ref, "key") != "dsn" {
					t.Errorf("KAS_DATABASE_URL from %v", ref)
				}
			},
		},
		{
			name: "servicemonitor-gc",
			values: `database: {url: "postgres://kas@db.example/kas"}
serviceMonitor: {enabled: true, interval: 15s, labels: {release: prometheus}}
gc: {enabled: true, schedule: "0 * * * *"}
log: {level: debug, format: text}
controlplane:
  extraEnv: [{name: KAS_CONTROLPLANE_LEASE_TTL, value: 30s}]
`,
			check: func(t *testing.T, docs []deployDoc, _ deploySecrets) {
				sm := deployOne(t, docs, "ServiceMonitor", "")
				if deployStr(sm, "metadata", "labels", "release") != "prometheus" {
					t.Error("ServiceMonitor without the extra label")
				}
				ep := deployList(sm, "spec", "endpoints")
				if len(ep) != 1 || deployStr(ep[0], "port") != "observability" || deployStr(ep[0], "path") != "/metrics" || deployStr(ep[0], "interval") != "15s" {
					t.Errorf("ServiceMonitor endpoints %v", ep)
				}
				// It selects exactly the metrics Service, which has the port.
				var hit []string
				for _, d := range deployFind(docs, "Service", "") {
					ok := true
					for k, v := range deployMap(sm, "spec", "selector", "matchLabels") {
						if deployMap(d.obj, "metadata", "labels")[k] != v {
							ok = false
						}
					}
					if ok {
						hit = append(hit, d.name())
						if deployStr(deployList(d.obj, "spec", "ports")[0], "name") != "observability" {
							t.Errorf("ServiceMonitor selects %s, which has no observability port", d.name())
						}
					}
				}
				if len(hit) != 1 || !strings.HasSuffix(hit[0], "-metrics") {
					t.Errorf("ServiceMonitor selects Services %v, want the metrics one", hit)
				}
				// The metrics Service reaches both kinds of kas pods.
				sel := deployMap(deployOne(t, docs, "Service", "-metrics"), "spec", "selector")
				for _, suffix := range []string{"-controlplane", "-dataplane"} {
					labels := deployPodLabels(deployOne(t, docs, "Deployment", suffix))
					for k, v := range sel {
						if labels[k] != v {
							t.Errorf("metrics Service does not select the %s pods (%s)", suffix, k)
						}
					}
				}
				cj := deployOne(t, docs, "CronJob", "-gc")
				if deployStr(cj, "spec", "schedule") != "0 * * * *" || deployStr(cj, "spec", "concurrencyPolicy") != "Forbid" {
					t.Errorf("gc CronJob schedule %q policy %q", deployStr(cj, "spec", "schedule"), deployStr(cj, "spec", "concurrencyPolicy"))
				}
				if args := deployStrings(deployContainer(t, cj), "args"); !slices.Equal(args, []string{"controlplane", "gc"}) {
					t.Errorf("gc args %v", args)
				}
			},
		},
		{
			name: "external-controlplane",
			values: `controlplane: {enabled: false}
migrations: {enabled: false}
dataplane: {controlplaneURL: "http://kas-controlplane.kas.svc.cluster.local", autoscaling: {minReplicas: 3, maxReplicas: 30}}
`,
			check: func(t *testing.T, docs []deployDoc, _ deploySecrets) {
				if len(deployFind(docs, "Deployment", "-controlplane"))+len(deployFind(docs, "Job", ""))+len(deployFind(docs, "Secret", "-database")) != 0 {
					t.Error("control-plane objects rendered with controlplane.enabled=false")
				}
				_, env := deployEnv(deployContainer(t, deployOne(t, docs, "Deployment", "-dataplane")))
				if u := deployStr(env["KAS_DATAPLANE_CONTROLPLANE_URL"], "value"); u != "http://kas-controlplane.kas.svc.cluster.local" {
					t.Errorf("KAS_DATAPLANE_CONTROLPLANE_URL %q", u)
				}
				if n, _ := deployInt(deployOne(t, docs, "HorizontalPodAutoscaler", ""), "spec", "minReplicas"); n != 3 {
					t.Errorf("HPA minReplicas %d", n)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ns := "kas-chart-" + tc.name
			out, err := deployHelmTemplate(t, "kas", "kas", ns, tc.values)
			if err != nil {
				t.Fatal(err)
			}
			docs := deploySplit(t, out)
			secrets := deploySecrets{}
			for k, v := range tc.existing {
				secrets[k] = v
			}
			secrets.add(t, docs)
			tc.check(t, docs, secrets)
			deployCheckWiring(t, docs)
			for _, d := range docs {
				switch deployStr(d.obj, "kind") {
				case "Deployment", "Job", "CronJob":
					deployCheckHardened(t, d.obj)
					if deployGet(deployPodSpec(d.obj), "automountServiceAccountToken") != false {
						t.Errorf("%s: the service-account token is mounted; kas never calls the Kubernetes API", d.name())
					}
					deployVerifyKas(t, d.obj, secrets)
				}
				if deployStr(d.obj, "kind") == "Deployment" {
					deployCheckProbes(t, d.obj, 8151)
				}
			}
			builtin, skipped := deployBuiltin(t, docs)
			for _, d := range skipped {
				if deployStr(d.obj, "kind") != "ServiceMonitor" {
					t.Errorf("unexpected custom kind %s", d.gvk())
				}
			}
			if err := deployKubeconform(t, builtin); err != nil {
				t.Error(err)
			}
			if err := deployDryRun(t, cluster, ns, builtin); err != nil {
				t.Error(err)
			}
		})
	}

	t.Run("lint", func(t *testing.T) {
		helm := deployTool(t, "helm")
		out, err := exec.Command(helm, "lint", "--strict", filepath.Join(deployRoot(t), "deploy", "charts", "kas"),
			"--set", "database.url=postgres://kas@db/kas").CombinedOutput()
		if err != nil {
			t.Errorf("helm lint: %v\n%s", err, out)
		}
	})
}

// deployBad is a value set that one layer must reject, with a message that
// contains want.
type deployBad struct {
	name, values string
	layer        string // "helm", "kubeconform" or "server"
	want         string
}

// deployExpectRejected renders bad.values and checks that exactly the
// intended layer rejects them: the layers before it accept.
func deployExpectRejected(t *testing.T, cluster *k8senv.Cluster, chart string, bad deployBad) {
	t.Helper()
	ns := "kas-bad-" + chart
	out, err := deployHelmTemplate(t, chart, chart, ns, bad.values)
	if bad.layer == "helm" {
		if err == nil {
			t.Fatalf("helm accepted the values; want an error containing %q", bad.want)
		}
		if !strings.Contains(err.Error(), bad.want) {
			t.Fatalf("helm error does not mention %q:\n%v", bad.want, err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	builtin, _ := deployBuiltin(t, deploySplit(t, out))
	err = deployKubeconform(t, builtin)
	if bad.layer == "kubeconform" {
		if err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Fatalf("kubeconform: %v; want an error containing %q", err, bad.want)
		}
	} else if err != nil {
		t.Fatalf("kubeconform rejected what only the server should: %v", err)
	}
	// The server rejects whatever kubeconform rejects, and more.
	err = deployDryRun(t, cluster, ns, builtin)
	if err == nil {
		t.Fatalf("the API server accepted the manifests")
	}
	if bad.layer == "server" && !strings.Contains(err.Error(), bad.want) {
		t.Fatalf("server error does not mention %q: %v", bad.want, err)
	}
}

func TestChartKasRejects(t *testing.T) {
	cluster := k8senv.Start(t)
	db := "database: {url: postgres://kas@db/kas}\n"
	for _, bad := range []deployBad{
		{"no database", "{}\n", "helm", "database.url"},
		{"unknown private API mode", db + "dataplane: {privateAPI: {mode: hostname}}\n", "helm", "/dataplane/privateAPI/mode"},
		{"cidr mode without a cidr", db + "dataplane: {privateAPI: {mode: cidr}}\n", "helm", "dataplane.privateAPI.cidr"},
		{"misspelt value", db + "dataplane: {replica: 3}\n", "helm", "'replica' not allowed"},
		{"replicas as text", db + "controlplane: {replicas: two}\n", "helm", "/controlplane/replicas"},
		{"external control plane without URL", "controlplane: {enabled: false}\nmigrations: {enabled: false}\n", "helm", "dataplane.controlplaneURL"},
		{"drain grace below kas's minimum", db + "dataplane: {drainGraceSeconds: 3}\n", "helm", "/dataplane/drainGraceSeconds"},
		{"path prefix without slash", db + "dataplane: {kubernetesAPI: {pathPrefix: k8s-proxy}}\n", "helm", "/dataplane/kubernetesAPI/pathPrefix"},
		{"allowed origin with a path", db + "dataplane: {kubernetesAPI: {allowedOrigins: [\"https://gitlab.example.com/-/\"]}}\n", "helm", "/dataplane/kubernetesAPI/allowedOrigins"},
		{"allowed origins as one string", db + "dataplane: {kubernetesAPI: {allowedOrigins: https://gitlab.example.com}}\n", "helm", "/dataplane/kubernetesAPI/allowedOrigins"},
		{"annotation that is not a string", db + "controlplane: {podAnnotations: {kas/build: 42}}\n", "kubeconform", "annotations"},
		{"unparsable quantity", db + "dataplane: {resources: {limits: {cpu: lots}}}\n", "server", "quantities must match"},
	} {
		t.Run(bad.name, func(t *testing.T) { deployExpectRejected(t, cluster, "kas", bad) })
	}
}

// ---- the agentk chart ----

var (
	deployAgentkOnce sync.Once
	deployAgentkEnv  map[string]bool
	deployAgentkErr  error
)

// deployAgentkEnvNames returns the environment variables agentk reads, from
// its --help (built with the Dockerfile's flags by TestDeployDockerfile's
// helper).
func deployAgentkEnvNames(t *testing.T) map[string]bool {
	t.Helper()
	deployAgentkOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kas-deploy-agentk-")
		if err != nil {
			deployAgentkErr = err
			return
		}
		defer os.RemoveAll(dir)
		bin := filepath.Join(dir, "agentk")
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/agentk")
		cmd.Dir = deployRoot(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			deployAgentkErr = fmt.Errorf("go build cmd/agentk: %w\n%s", err, out)
			return
		}
		out, err := exec.Command(bin, "--help").Output()
		if err != nil {
			deployAgentkErr = fmt.Errorf("agentk --help: %w", err)
			return
		}
		deployAgentkEnv = map[string]bool{}
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[0] == "env" {
				deployAgentkEnv[f[1]] = true
			}
		}
		if len(deployAgentkEnv) < 5 {
			deployAgentkErr = fmt.Errorf("agentk --help lists %d environment variables:\n%s", len(deployAgentkEnv), out)
		}
	})
	if deployAgentkErr != nil {
		t.Fatal(deployAgentkErr)
	}
	return deployAgentkEnv
}

func TestChartAgentk(t *testing.T) {
	cluster := k8senv.Start(t)
	known := deployAgentkEnvNames(t)
	const pem = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUZXhhbXBsZQ==\n-----END CERTIFICATE-----\n"
	cases := []deployCase{
		{
			name:   "token-value",
			values: "kasAddress: wss://kas.example.com/agent\ntoken: {value: glagent-0123456789abcdef}\n",
			check: func(t *testing.T, docs []deployDoc, secrets deploySecrets) {
				dep := deployOne(t, docs, "Deployment", "")
				if r, _ := deployInt(dep, "spec", "replicas"); r != 2 {
					t.Errorf("replicas %d, want 2", r)
				}
				tokSecret := deployOne(t, docs, "Secret", "-token")
				if got := string(secrets[deployStr(tokSecret, "metadata", "name")]["token"]); got != "glagent-0123456789abcdef" {
					t.Errorf("token Secret holds %q", got)
				}
				_, env := deployEnv(deployContainer(t, dep))
				if deployStr(env["KAS_ADDRESS"], "value") != "wss://kas.example.com/agent" {
					t.Errorf("KAS_ADDRESS %v", env["KAS_ADDRESS"])
				}
				if env["KAS_CA_FILE"] != nil {
					t.Error("KAS_CA_FILE set without a CA")
				}
				// In-cluster configuration needs the account's token.
				spec := deployPodSpec(dep)
				sa := deployOne(t, docs, "ServiceAccount", "")
				if deployStr(spec, "serviceAccountName") != deployStr(sa, "metadata", "name") || deployGet(spec, "automountServiceAccountToken") == false {
					t.Error("the pod does not run as the chart's ServiceAccount with its token")
				}
				// RBAC: impersonation of everything an access_as can name.
				role := deployOne(t, docs, "ClusterRole", "-impersonate")
				want := map[string][]string{"": {"users", "groups", "serviceaccounts"}, "authentication.k8s.io": {"*"}}
				got := map[string][]string{}
				for _, r := range deployList(role, "rules") {
					if verbs := deployStrings(r, "verbs"); !slices.Equal(verbs, []string{"impersonate"}) {
						t.Errorf("ClusterRole grants %v, want impersonate only", verbs)
					}
					for _, g := range deployStrings(r, "apiGroups") {
						got[g] = append(got[g], deployStrings(r, "resources")...)
					}
				}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("impersonation rules %v, want %v", got, want)
				}
				binding := deployOne(t, docs, "ClusterRoleBinding", "-impersonate")
				subj := deployList(binding, "subjects")
				if deployStr(binding, "roleRef", "name") != deployStr(role, "metadata", "name") || len(subj) != 1 ||
					deployStr(subj[0], "name") != deployStr(sa, "metadata", "name") || deployStr(subj[0], "namespace") != "kas-agentk-token-value" {
					t.Errorf("binding %v does not give the role to the ServiceAccount", deployGet(binding, "subjects"))
				}
				if n := len(deployFind(docs, "ClusterRoleBinding", "")); n != 1 {
					t.Errorf("%d ClusterRoleBindings, want only the impersonation one", n)
				}
			},
		},
		{
			name: "existing-token",
			values: `kasAddress: ws://kas-agent.kas.svc:8150
token: {existingSecret: agent-token, existingSecretKey: tok}
caCertificate: |
` + "  " + strings.ReplaceAll(strings.TrimSpace(pem), "\n", "\n  ") + `
rbac: {clusterRole: view}
serviceAccount: {name: agentk-sa}
observabilityPort: 9090
tunnels: 3
replicas: 3
`,
			check: func(t *testing.T, docs []deployDoc, _ deploySecrets) {
				if len(deployFind(docs, "Secret", "")) != 0 {
					t.Error("a token Secret rendered although one exists")
				}
				dep := deployOne(t, docs, "Deployment", "")
				spec := deployPodSpec(dep)
				c := deployContainer(t, dep)
				var tokenVol, caVol map[string]any
				for _, v := range deployList(spec, "volumes") {
					switch deployStr(v, "name") {
					case "token":
						tokenVol = v.(map[string]any)
					case "ca":
						caVol = v.(map[string]any)
					}
				}
				items := deployList(tokenVol, "secret", "items")
				if deployStr(tokenVol, "secret", "secretName") != "agent-token" || len(items) != 1 || deployStr(items[0], "key") != "tok" || deployStr(items[0], "path") != "token" {
					t.Errorf("token volume %v", tokenVol)
				}
				_, env := deployEnv(c)
				if deployStr(env["KAS_TOKEN_FILE"], "value") != "/etc/agentk/token/token" {
					t.Errorf("KAS_TOKEN_FILE %v", env["KAS_TOKEN_FILE"])
				}
				if deployStr(env["KAS_CA_FILE"], "value") != "/etc/agentk/ca/ca.crt" || caVol == nil {
					t.Errorf("KAS_CA_FILE %v, CA volume %v", env["KAS_CA_FILE"], caVol)
				}
				cm := deployOne(t, docs, "ConfigMap", "-ca")
				if deployStr(cm, "data", "ca.crt") != pem {
					t.Errorf("CA ConfigMap holds %q, want %q", deployStr(cm, "data", "ca.crt"), pem)
				}
				if deployStr(env["AGENTK_OBSERVABILITY_LISTEN"], "value") != ":9090" || deployStr(env["AGENTK_TUNNELS"], "value") != "3" {
					t.Errorf("observability %v tunnels %v", env["AGENTK_OBSERVABILITY_LISTEN"], env["AGENTK_TUNNELS"])
				}
				own := deployOne(t, docs, "ClusterRoleBinding", "-view")
				if deployStr(own, "roleRef", "name") != "view" || deployStr(deployList(own, "subjects")[0], "name") != "agentk-sa" {
					t.Errorf("own-rights binding %v", own)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ns := "kas-agentk-" + tc.name
			out, err := deployHelmTemplate(t, "agentk", "agentk", ns, tc.values)
			if err != nil {
				t.Fatal(err)
			}
			docs := deploySplit(t, out)
			secrets := deploySecrets{}
			secrets.add(t, docs)
			tc.check(t, docs, secrets)
			deployCheckWiring(t, docs)
			dep := deployOne(t, docs, "Deployment", "")
			deployCheckHardened(t, dep)
			c := deployContainer(t, dep)
			port := 8080
			if tc.name == "existing-token" {
				port = 9090
			}
			deployCheckProbes(t, dep, port)
			if cmd := deployStrings(c, "command"); !slices.Equal(cmd, []string{"/usr/local/bin/agentk"}) {
				t.Errorf("command %v", cmd)
			}
			names, _ := deployEnv(c)
			for _, n := range names {
				if !known[n] {
					t.Errorf("env %s is not a variable agentk reads (agentk --help)", n)
				}
			}
			builtin, skipped := deployBuiltin(t, docs)
			if len(skipped) != 0 {
				t.Errorf("custom kinds in the agentk chart: %v", skipped)
			}
			if err := deployKubeconform(t, builtin); err != nil {
				t.Error(err)
			}
			if err := deployDryRun(t, cluster, ns, builtin); err != nil {
				t.Error(err)
			}
		})
	}
	t.Run("lint", func(t *testing.T) {
		helm := deployTool(t, "helm")
		out, err := exec.Command(helm, "lint", "--strict", filepath.Join(deployRoot(t), "deploy", "charts", "agentk"),
			"--set", "kasAddress=ws://kas:8150", "--set", "token.value=t").CombinedOutput()
		if err != nil {
			t.Errorf("helm lint: %v\n%s", err, out)
		}
	})
}

func TestChartAgentkRejects(t *testing.T) {
	cluster := k8senv.Start(t)
	ok := "kasAddress: ws://kas:8150\ntoken: {value: t}\n"
	for _, bad := range []deployBad{
		{"no address", "token: {value: t}\n", "helm", "kasAddress"},
		{"no token", "kasAddress: ws://kas:8150\n", "helm", "token.value"},
		{"http address", "kasAddress: http://kas:8150\ntoken: {value: t}\n", "helm", "/kasAddress"},
		{"port out of range", ok + "observabilityPort: 70000\n", "helm", "/observabilityPort"},
		{"invalid label value", ok + "podLabels: {team: \"not a valid label value\"}\n", "server", "a valid label must be"},
	} {
		t.Run(bad.name, func(t *testing.T) { deployExpectRejected(t, cluster, "agentk", bad) })
	}
}

// ---- values documented, declared and read ----

// deployValuePaths returns every path of a values.yaml (intermediate ones
// too) with its value, and the leaf paths: scalars, lists and empty maps.
func deployValuePaths(v any, prefix string, all map[string]any, leaves map[string]bool) {
	m, ok := v.(map[string]any)
	if !ok || len(m) == 0 {
		leaves[prefix] = true
		return
	}
	for k, sub := range m {
		p := k
		if prefix != "" {
			p = prefix + "." + k
		}
		all[p] = sub
		deployValuePaths(sub, p, all, leaves)
	}
}

// deploySchemaLeaves returns the paths a values.schema.json declares whose
// schema declares no properties of its own.
func deploySchemaLeaves(s map[string]any, prefix string, out map[string]bool) {
	props, ok := s["properties"].(map[string]any)
	if !ok {
		out[prefix] = true
		return
	}
	for k, sub := range props {
		p := k
		if prefix != "" {
			p = prefix + "." + k
		}
		deploySchemaLeaves(sub.(map[string]any), p, out)
	}
}

var deployValuesRef = regexp.MustCompile(`\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)`)

func TestChartValuesDocumented(t *testing.T) {
	for _, chart := range []string{"kas", "agentk"} {
		t.Run(chart, func(t *testing.T) {
			dir := filepath.Join(deployRoot(t), "deploy", "charts", chart)
			// values.yaml
			raw, err := os.ReadFile(filepath.Join(dir, "values.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			var values map[string]any
			if err := yaml.Unmarshal(raw, &values); err != nil {
				t.Fatal(err)
			}
			all, leaves := map[string]any{}, map[string]bool{}
			deployValuePaths(values, "", all, leaves)

			// README table: | `key` | `default` | meaning |
			readme, err := os.ReadFile(filepath.Join(dir, "README.md"))
			if err != nil {
				t.Fatal(err)
			}
			_, table, found := strings.Cut(string(readme), "\n## Values\n")
			if !found {
				t.Fatal("README.md has no ## Values section")
			}
			documented := map[string]bool{}
			row := regexp.MustCompile("^\\| `([^`]+)` \\| (.*?) \\| (.*) \\|$")
			for _, line := range strings.Split(table, "\n") {
				m := row.FindStringSubmatch(line)
				if m == nil {
					continue
				}
				key, def := m[1], m[2]
				if documented[key] {
					t.Errorf("README documents %s twice", key)
				}
				documented[key] = true
				v, ok := all[key]
				if !ok {
					t.Errorf("README documents %s, which values.yaml does not have", key)
					continue
				}
				if !strings.HasPrefix(def, "`") || !strings.HasSuffix(def, "`") {
					t.Errorf("README default of %s is %s, want the value in backticks", key, def)
					continue
				}
				var want any
				if err := yaml.Unmarshal([]byte(strings.Trim(def, "`")), &want); err != nil {
					t.Errorf("README default of %s does not parse: %v", key, err)
					continue
				}
				if !reflect.DeepEqual(want, v) && !(want == nil && reflect.DeepEqual(v, "")) {
					t.Errorf("README says %s defaults to %s, values.yaml has %#v", key, def, v)
				}
			}
			if len(documented) < 10 {
				t.Fatalf("README documents only %d values; is the table format broken?", len(documented))
			}
			covered := func(p string) bool {
				for q := p; ; {
					if documented[q] {
						return true
					}
					i := strings.LastIndex(q, ".")
					if i < 0 {
						return false
					}
					q = q[:i]
				}
			}
			for p := range leaves {
				if !covered(p) {
					t.Errorf("values.yaml has %s, which README does not document", p)
				}
			}

			// values.schema.json declares exactly the documented values.
			sraw, err := os.ReadFile(filepath.Join(dir, "values.schema.json"))
			if err != nil {
				t.Fatal(err)
			}
			var schema map[string]any
			if err := json.Unmarshal(sraw, &schema); err != nil {
				t.Fatalf("values.schema.json: %v", err)
			}
			declared := map[string]bool{}
			deploySchemaLeaves(schema, "", declared)
			delete(declared, "global") // Helm's, for use as a subchart
			for _, k := range deploySorted(declared) {
				if !documented[k] {
					t.Errorf("values.schema.json declares %s, which README does not document", k)
				}
			}
			for _, k := range deploySorted(documented) {
				if !declared[k] {
					t.Errorf("README documents %s, which values.schema.json does not declare", k)
				}
			}

			// The templates read only values that exist, and every
			// documented value (or a map holding it) is read.
			read := map[string]bool{}
			files, err := filepath.Glob(filepath.Join(dir, "templates", "*"))
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range files {
				b, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				for _, m := range deployValuesRef.FindAllStringSubmatch(string(b), -1) {
					p := strings.TrimPrefix(m[1], ".")
					read[p] = true
					if _, ok := all[p]; !ok {
						t.Errorf("%s reads .Values.%s, which values.yaml does not have", filepath.Base(f), p)
					}
				}
			}
			for key := range documented {
				ok := false
				for q := key; q != ""; {
					if read[q] {
						ok = true
						break
					}
					i := strings.LastIndex(q, ".")
					if i < 0 {
						break
					}
					q = q[:i]
				}
				if !ok {
					t.Errorf("README documents %s, which no template reads", key)
				}
			}
		})
	}
}

func deploySorted(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ---- Knative ----

// Fields Knative Serving accepts without feature flags.
var (
	deployKnativePodFields = map[string]bool{
		"containers": true, "volumes": true, "serviceAccountName": true, "imagePullSecrets": true,
		"enableServiceLinks": true, "automountServiceAccountToken": true,
		"containerConcurrency": true, "timeoutSeconds": true, "responseStartTimeoutSeconds": true, "idleTimeoutSeconds": true,
	}
	deployKnativeContainerFields = map[string]bool{
		"name": true, "args": true, "command": true, "env": true, "envFrom": true, "image": true, "imagePullPolicy": true,
		"livenessProbe": true, "readinessProbe": true, "ports": true, "resources": true, "securityContext": true,
		"terminationMessagePath": true, "terminationMessagePolicy": true, "volumeMounts": true, "workingDir": true,
	}
	deployKnativeSecurityFields = map[string]bool{
		"allowPrivilegeEscalation": true, "capabilities": true, "readOnlyRootFilesystem": true, "runAsNonRoot": true,
		"runAsUser": true, "runAsGroup": true, "seccompProfile": true,
	}
)

func TestDeployKnative(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(deployRoot(t), "deploy", "knative", "controlplane.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	docs := deploySplit(t, string(raw))
	svc := deployOne(t, docs, "Service", "kas-controlplane")
	if deployStr(svc, "apiVersion") != "serving.knative.dev/v1" {
		t.Fatalf("kas-controlplane is %s, want a Knative Service", deployStr(svc, "apiVersion"))
	}
	ann := deployMap(svc, "spec", "template", "metadata", "annotations")
	// Annotations are strings; scale to zero.
	for k, v := range ann {
		if _, ok := v.(string); !ok {
			t.Errorf("annotation %s: %v is not a string", k, v)
		}
	}
	if ann["autoscaling.knative.dev/min-scale"] != "0" {
		t.Errorf("min-scale %v, want \"0\" (scale to zero)", ann["autoscaling.knative.dev/min-scale"])
	}
	if n, err := strconv.Atoi(fmt.Sprint(ann["autoscaling.knative.dev/max-scale"])); err != nil || n < 1 {
		t.Errorf("max-scale %v, want a bound", ann["autoscaling.knative.dev/max-scale"])
	}
	spec := deployPodSpec(svc)
	for k := range spec {
		if !deployKnativePodFields[k] {
			t.Errorf("pod spec field %s is not accepted by Knative without a feature flag", k)
		}
	}
	if cc, ok := deployInt(spec, "containerConcurrency"); !ok || cc < 1 {
		t.Errorf("containerConcurrency %v, want a limit ≥ 1", deployGet(spec, "containerConcurrency"))
	}
	if ts, ok := deployInt(spec, "timeoutSeconds"); !ok || ts < 1 || ts > 600 {
		t.Errorf("timeoutSeconds %v, want a bound for unary calls", deployGet(spec, "timeoutSeconds"))
	}
	if deployGet(spec, "automountServiceAccountToken") != false {
		t.Error("the service-account token is mounted")
	}
	c := deployContainer(t, svc)
	for k := range c {
		if !deployKnativeContainerFields[k] {
			t.Errorf("container field %s is not accepted by Knative", k)
		}
	}
	for k := range deployMap(c, "securityContext") {
		if !deployKnativeSecurityFields[k] {
			t.Errorf("securityContext field %s is not accepted by Knative", k)
		}
	}
	ports := deployList(c, "ports")
	if len(ports) != 1 || deployStr(ports[0], "name") != "h2c" {
		t.Errorf("ports %v, want one named h2c (HTTP/2 cleartext end to end, for gRPC)", ports)
	} else if p, _ := deployInt(ports[0], "containerPort"); p != 8153 {
		t.Errorf("containerPort %d, want 8153 (controlplane.listen.address)", p)
	}
	for _, probe := range []string{"livenessProbe", "readinessProbe"} {
		for _, kind := range []string{"httpGet", "tcpSocket", "grpc"} {
			if port := deployGet(c, probe, kind, "port"); port != nil && port != 8153 {
				t.Errorf("%s on port %v: Knative probes only the serving port", probe, port)
			}
		}
	}
	if args := deployStrings(c, "args"); !slices.Equal(args, []string{"controlplane"}) {
		t.Errorf("args %v, want [controlplane]", args)
	}
	_, env := deployEnv(c)
	// Migrations either not at start, or at start under the advisory lock
	// (kas's own), and a Job that runs kas migrate.
	if m := deployStr(env["KAS_DATABASE_MIGRATE_ON_START"], "value"); m != "true" && m != "false" {
		t.Errorf("KAS_DATABASE_MIGRATE_ON_START %q: say it explicitly", m)
	}
	job := deployOne(t, docs, "Job", "kas-migrate")
	if args := deployStrings(deployContainer(t, job), "args"); !slices.Equal(args, []string{"migrate"}) {
		t.Errorf("migrate Job args %v", args)
	}
	cj := deployOne(t, docs, "CronJob", "kas-gc")
	if args := deployStrings(deployContainer(t, cj), "args"); !slices.Equal(args, []string{"controlplane", "gc"}) {
		t.Errorf("gc CronJob args %v", args)
	}

	// Every container's settings pass kas --verify-config, with the
	// Secrets the header comment asks for.
	secrets := deploySecrets{
		"kas-database": {"url": []byte("postgres://kas@db.example:5432/kas?sslmode=require")},
		"kas-keys":     {"api_secret_key": deployKey(3), "private_api_secret_key": deployKey(4)},
	}
	for _, o := range []map[string]any{svc, job, cj} {
		deployCheckHardened(t, o)
		deployVerifyKas(t, o, secrets)
	}

	// The built-in kinds are validated like the charts' output; the
	// Knative Service is skipped by name.
	builtin, skipped := deployBuiltin(t, docs)
	if len(skipped) != 1 || skipped[0].gvk() != "serving.knative.dev/v1/Service" {
		t.Errorf("skipped %d documents, want only the Knative Service", len(skipped))
	}
	if err := deployKubeconform(t, builtin); err != nil {
		t.Error(err)
	}
	cluster := k8senv.Start(t)
	if err := deployDryRun(t, cluster, "kas-knative", builtin); err != nil {
		t.Error(err)
	}
}

// ---- Dockerfile ----

// deployShellWords splits a shell command line into words: white space
// separates, double and single quotes group.
func deployShellWords(s string) []string {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

func TestDeployDockerfile(t *testing.T) {
	root := deployRoot(t)
	raw, err := os.ReadFile(filepath.Join(root, "deploy", "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	// Instructions, continuation lines joined, comments dropped.
	var instrs []string
	var cur strings.Builder
	for _, line := range strings.Split(string(raw), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && cur.Len() == 0) {
			continue
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		instrs = append(instrs, cur.String())
		cur.Reset()
	}
	var stages [][]string // instructions per stage
	for _, in := range instrs {
		if strings.HasPrefix(in, "FROM ") {
			stages = append(stages, nil)
		}
		if len(stages) == 0 {
			t.Fatalf("instruction before FROM: %s", in)
		}
		stages[len(stages)-1] = append(stages[len(stages)-1], in)
	}
	if len(stages) != 2 {
		t.Fatalf("%d stages, want a builder and a runtime stage", len(stages))
	}

	// Builder: golang at go.mod's Go version, static builds of both binaries.
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindStringSubmatch(string(gomod))
	if goVersion == nil {
		t.Fatal("no go directive in go.mod")
	}
	from := strings.Fields(stages[0][0])
	if len(from) != 4 || from[1] != "golang:"+goVersion[1] || !strings.EqualFold(from[2], "AS") {
		t.Errorf("builder %q, want FROM golang:%s AS <name>", stages[0][0], goVersion[1])
	}
	builder := from[len(from)-1]
	env := map[string]string{}
	var builds [][]string
	for _, in := range stages[0] {
		if rest, ok := strings.CutPrefix(in, "ENV "); ok {
			for _, kv := range deployShellWords(rest) {
				k, v, _ := strings.Cut(kv, "=")
				env[k] = v
			}
		}
		if rest, ok := strings.CutPrefix(in, "RUN "); ok {
			for _, cmd := range strings.Split(rest, "&&") {
				words := deployShellWords(cmd)
				for len(words) > 0 && strings.HasPrefix(words[0], "--mount=") {
					words = words[1:]
				}
				if len(words) > 1 && words[0] == "go" && words[1] == "build" {
					builds = append(builds, words)
				}
			}
		}
	}
	if env["CGO_ENABLED"] != "0" {
		t.Errorf("CGO_ENABLED=%q in the builder, want 0 (static binaries)", env["CGO_ENABLED"])
	}
	outputs := map[string]string{} // package → output path in the builder
	for _, b := range builds {
		pkg := b[len(b)-1]
		if i := slices.Index(b, "-o"); i > 0 {
			outputs[pkg] = b[i+1]
		}
	}
	if outputs["./cmd/kas"] == "" || outputs["./cmd/agentk"] == "" {
		t.Fatalf("go build of ./cmd/kas and ./cmd/agentk not found: %v", builds)
	}

	// Runtime: distroless static (or scratch), both binaries, a numeric
	// non-root user the charts' securityContext matches.
	run := stages[1]
	base := strings.Fields(run[0])[1]
	if base != "scratch" && !strings.HasPrefix(base, "gcr.io/distroless/static") {
		t.Errorf("runtime image %s, want distroless/static or scratch", base)
	}
	var user string
	copied := map[string]bool{}
	for _, in := range run {
		if rest, ok := strings.CutPrefix(in, "USER "); ok {
			user = strings.TrimSpace(rest)
		}
		if rest, ok := strings.CutPrefix(in, "COPY "); ok {
			words := strings.Fields(rest)
			if len(words) < 3 || words[0] != "--from="+builder {
				continue
			}
			dst := words[len(words)-1]
			for _, src := range words[1 : len(words)-1] {
				if strings.HasSuffix(dst, "/") {
					copied[dst+filepath.Base(src)] = true
				} else {
					copied[dst] = true
				}
			}
		}
	}
	if user != "65532:65532" && user != "65532" {
		t.Errorf("USER %q, want 65532 (nonroot, numeric so runAsNonRoot can check it)", user)
	}
	for _, bin := range []string{"/usr/local/bin/kas", "/usr/local/bin/agentk"} {
		if !copied[bin] {
			t.Errorf("the image has no %s (the charts run it); copied: %v", bin, copied)
		}
	}
	for pkg, out := range outputs {
		found := false
		for dst := range copied {
			found = found || filepath.Base(dst) == filepath.Base(out)
		}
		if !found {
			t.Errorf("%s is built to %s but not copied into the image", pkg, out)
		}
	}

	// Run the build commands as written (VERSION=test, outputs in a
	// temporary directory): they must build, statically, with the version.
	if testing.Short() {
		t.Skip("builds the binaries")
	}
	outDir := t.TempDir()
	for _, b := range builds {
		args := slices.Clone(b[1:])
		for i, a := range args {
			a = strings.ReplaceAll(a, "${VERSION}", "test-version")
			if i > 0 && args[i-1] == "-o" {
				a = filepath.Join(outDir, filepath.Base(a))
			}
			args[i] = a
		}
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		cmd.Env = os.Environ()
		for k, v := range env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, name := range []string{"kas", "agentk"} {
		p := filepath.Join(outDir, name)
		f, err := elf.Open(p)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP || prog.Type == elf.PT_DYNAMIC {
				t.Errorf("%s is dynamically linked", name)
				break
			}
		}
		f.Close()
		out, err := exec.Command(p, "version").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "test-version") {
			t.Errorf("%s version: %v: %q, want the build's VERSION", name, err, out)
		}
	}
}
