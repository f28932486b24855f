package tests

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kas-project/kas/dataplane"
	"github.com/kas-project/kas/dataplane/relay"
	"github.com/kas-project/kas/dataplane/tunnel"
	dpv1 "github.com/kas-project/kas/gen/kas/dataplane/v1"
	mgmtv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/cptest"
	"github.com/kas-project/kas/internal/kascookie"
	"github.com/kas-project/kas/internal/pgtest"
	"github.com/kas-project/kas/tests/framework"
)

// writeKeys writes a key file as an operator does: one base64 key per
// line, the first signs.
func writeKeys(t *testing.T, path string, keys ...[]byte) {
	t.Helper()
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(base64.StdEncoding.EncodeToString(k) + "\n")
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// rotationDataplane is a Deployment of proxy nodes sharing one key file,
// with a load balancer in front of their agent listeners. Roll replaces
// the nodes one by one as `kubectl rollout restart` does: the new pod
// (a new node ID) first, then the old one drains.
type rotationDataplane struct {
	t     *testing.T
	env   *cptest.Env
	files framework.KeyFiles

	mu    sync.Mutex
	nodes []*framework.ProxyNode
	all   []*framework.ProxyNode // every node started, for their logs
	gen   int
	next  int
	// AgentURL is the balancer agents connect to.
	AgentURL string
}

func startRotationDataplane(t *testing.T, env *cptest.Env, files framework.KeyFiles, n int) *rotationDataplane {
	t.Helper()
	d := &rotationDataplane{t: t, env: env, files: files}
	lb := framework.NewProxy(t, func() []string {
		var addrs []string
		for _, n := range d.Serving() {
			addrs = append(addrs, n.AgentAddr)
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		if len(addrs) > 0 {
			s := d.next % len(addrs)
			d.next++
			addrs = append(addrs[s:], addrs[:s]...)
		}
		return addrs
	})
	d.AgentURL = "ws://" + lb.Addr()
	for range n {
		d.start()
	}
	return d
}

// start starts a node that reads the key file now.
func (d *rotationDataplane) start() *framework.ProxyNode {
	d.t.Helper()
	key, extra := framework.LoadPrivateKeys(d.t, d.files)
	d.mu.Lock()
	d.gen++
	id := fmt.Sprintf("node-%d", d.gen)
	d.mu.Unlock()
	n := framework.StartProxyNode(d.t, d.env, id, func(o *dataplane.Options) {
		o.PrivateAPISecretKey, o.ExtraPrivateAPISecretKeys = key, extra
	})
	d.mu.Lock()
	d.nodes = append(d.nodes, n)
	d.all = append(d.all, n)
	d.mu.Unlock()
	return n
}

// Serving returns the nodes a load balancer sends traffic to.
func (d *rotationDataplane) Serving() []*framework.ProxyNode {
	d.mu.Lock()
	all := append([]*framework.ProxyNode(nil), d.nodes...)
	d.mu.Unlock()
	var s []*framework.ProxyNode
	for _, n := range all {
		if n.Serving() {
			s = append(s, n)
		}
	}
	return s
}

// Roll restarts every node: a new one first, then the old one drains
// (SIGTERM) and stops.
func (d *rotationDataplane) Roll() {
	d.t.Helper()
	d.mu.Lock()
	old := append([]*framework.ProxyNode(nil), d.nodes...)
	d.mu.Unlock()
	for _, o := range old {
		d.start()
		o.Stop(d.t)
		d.mu.Lock()
		for i, x := range d.nodes {
			if x == o {
				d.nodes = append(d.nodes[:i], d.nodes[i+1:]...)
				break
			}
		}
		d.mu.Unlock()
	}
}

// rotationAgent is one agent (one agent ID) of the scenario: agentk
// instances, its tokens and the credentials callers reach it with.
type rotationAgent struct {
	id      int64
	tunnels int
	pat     string // Authorization value for the proxy
	cookie  atomic.Pointer[string]
	mu      sync.Mutex
	running []*framework.Agent
}

func (a *rotationAgent) instances() []*framework.Agent {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*framework.Agent(nil), a.running...)
}

// loadStats counts one load loop's results.
type loadStats struct {
	name     string
	ok, fail atomic.Int64
	mu       sync.Mutex
	errs     []string
}

func (s *loadStats) record(err error) {
	if err == nil {
		s.ok.Add(1)
		return
	}
	s.fail.Add(1)
	s.mu.Lock()
	if len(s.errs) < 5 {
		s.errs = append(s.errs, err.Error())
	}
	s.mu.Unlock()
}

// rotationProcedure is what the test does, in order, as docs/security.md
// words it (line breaks aside): the test fails if the documented procedure
// changes without it.
var rotationProcedure = []string{
	"Write `NEW` then `OLD` (two lines) into the control plane's `api_secret_key` file; roll the control plane.",
	"Give Rails the new key",
	"write `NEW` alone and roll the control plane again.",
	"three rolling restarts of both the control plane and the dataplane",
	"1. `OLD` then `NEW`",
	"2. `NEW` then `OLD`",
	"3. `NEW` alone",
	"1. Create a new token",
	"a rolling restart of agentk",
	"The new pod opens its tunnels before the old one stops",
	"2. Check that nothing uses the old token any more",
	"3. Revoke the old token (`RevokeAgentToken`).",
}

// TestRotationUnderLoad follows docs/security.md, "Rotating secrets
// without downtime", step by step while Rails calls the management API,
// callers reach every agent through every node (relays included) with
// access tokens and session cookies, and agents keep their tunnels: two
// control-plane replicas on one database and two proxy nodes, each rolled
// as `kubectl rollout restart` does after every edit of a key file. Not
// one request may fail, and at the end the old keys and token are
// refused.
func TestRotationUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end")
	}
	doc := readDoc(t, "security.md")
	if i := strings.Index(doc, "## Rotating secrets without downtime"); i < 0 {
		t.Fatal("docs/security.md has no rotation section")
	} else {
		doc = strings.Join(strings.Fields(doc[i:]), " ")
	}
	for _, step := range rotationProcedure {
		i := strings.Index(doc, step)
		if i < 0 {
			t.Fatalf("docs/security.md no longer says, after the previous step, %q: update this test with the procedure", step)
		}
		doc = doc[i+len(step):]
	}

	start := time.Now()
	ctx := context.Background()
	dir := t.TempDir()
	oldAPI, newAPI := cptest.Key(t), cptest.Key(t)
	oldPriv, newPriv := cptest.Key(t), cptest.Key(t)
	cpFiles := framework.KeyFiles{API: filepath.Join(dir, "cp-api_secret_key"), Private: filepath.Join(dir, "cp-private_api_secret_key")}
	dpFiles := framework.KeyFiles{Private: filepath.Join(dir, "dp-private_api_secret_key")}
	writeKeys(t, cpFiles.API, oldAPI)
	writeKeys(t, cpFiles.Private, oldPriv)
	writeKeys(t, dpFiles.Private, oldPriv)

	cp := framework.StartControlPlanes(t, pgtest.DSN(t), cpFiles, 2)
	env := cp.Env(oldAPI, oldPriv)
	dp := startRotationDataplane(t, env, dpFiles, 2)

	// Rails: its key, and clients signing with it. Rails calls kas with
	// gRPC, over HTTP/2: a replica that shuts down sends GOAWAY, and a
	// call that crossed it is refused and retried on a new connection.
	h2c := &http.Transport{Protocols: new(http.Protocols)}
	h2c.Protocols.SetUnencryptedHTTP2(true)
	railsHC := &http.Client{Timeout: 30 * time.Second, Transport: h2c}
	// A client on HTTP/1.1 with keep-alive has no such signal: a request
	// sent on an idle connection just as the replica closes it fails
	// (POST is not retried). The docs say so; its failures are counted,
	// not asserted.
	h1HC := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{}}
	railsClientsOn := func(hc *http.Client, key []byte) (managementv1connect.AgentServiceClient, managementv1connect.CredentialServiceClient) {
		opt := connect.WithInterceptors(authn.ClientInterceptor(authn.NewSigner(key, authn.IssuerRails, authn.AudienceManagement, "rails")))
		return managementv1connect.NewAgentServiceClient(hc, cp.URL, opt), managementv1connect.NewCredentialServiceClient(hc, cp.URL, opt)
	}
	railsClients := func(key []byte) (managementv1connect.AgentServiceClient, managementv1connect.CredentialServiceClient) {
		return railsClientsOn(railsHC, key)
	}
	var railsKey atomic.Pointer[[]byte]
	railsKey.Store(&oldAPI)
	rails := func() (managementv1connect.AgentServiceClient, managementv1connect.CredentialServiceClient) {
		return railsClients(*railsKey.Load())
	}

	// Three agents: two keep two tunnels (one per node), one keeps one, so
	// that the other node relays to it.
	expires := timestamppb.New(time.Now().Add(time.Hour))
	var agents []*rotationAgent
	for i, tunnels := range []int{2, 2, 1} {
		creds := framework.CreateAgent(t, env, fmt.Sprintf("agent-%d", i))
		if _, err := env.Agents.PutAgentConfig(ctx, &mgmtv1.PutAgentConfigRequest{AgentId: creds.ID,
			Yaml: "user_access:\n  access_as: {user: {}}\n  projects: [{id: g/p}]\n"}); err != nil {
			t.Fatal(err)
		}
		pat, err := env.Credentials.CreateAccessToken(ctx, &mgmtv1.CreateAccessTokenRequest{User: &mgmtv1.UserIdentity{Id: 1, Username: "alice"},
			AgentIds: []int64{creds.ID}, ExpiresAt: expires, Name: "load"})
		if err != nil {
			t.Fatal(err)
		}
		a := &rotationAgent{id: creds.ID, tunnels: tunnels, pat: "Bearer pat:" + strconv.FormatInt(creds.ID, 10) + ":" + pat.GetSecret()}
		a.running = []*framework.Agent{framework.StartAgent(t, creds, dp.AgentURL, tunnels)}
		agents = append(agents, a)
	}
	// Alice's browser session, sealed by Rails with its key.
	sess, err := env.Credentials.CreateSession(ctx, &mgmtv1.CreateSessionRequest{User: &mgmtv1.UserIdentity{Id: 1, Username: "alice"},
		ProjectPaths: []string{"g/p"}, ExpiresAt: expires})
	if err != nil {
		t.Fatal(err)
	}
	seal := func(key []byte) string {
		c, err := kascookie.Encrypt(key, sess.GetSessionId())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	oldCookie := seal(oldAPI)
	for _, a := range agents {
		a.cookie.Store(&oldCookie)
	}
	// The one-tunnel agent is on one node; the other relays to it.
	lone := agents[2]
	framework.Eventually(t, "agents routed", func() bool {
		for _, a := range agents {
			if len(framework.ResolveNodes(t, env, a.id)) != a.tunnels {
				return false
			}
		}
		return true
	})

	// The load.
	kubeHC := &http.Client{Timeout: 30 * time.Second}
	kubeGet := func(n *framework.ProxyNode, a *rotationAgent, auth, cookie string, i int) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.ProxyURL+"api/v1/namespaces/default/pods?i="+strconv.Itoa(i), nil)
		if err != nil {
			return err
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		} else {
			req.AddCookie(&http.Cookie{Name: kascookie.Name, Value: cookie})
			req.Header.Set("Gitlab-Agent-Id", strconv.FormatInt(a.id, 10))
		}
		resp, err := kubeHC.Do(req)
		if err != nil {
			return fmt.Errorf("via %s: %w", n.ID, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || resp.Header.Get(framework.AgentHeader) != strconv.FormatInt(a.id, 10) {
			return fmt.Errorf("via %s to agent %d: %s %q", n.ID, a.id, resp.Status, strings.TrimSpace(string(body)))
		}
		return nil
	}
	// Before the load: the lone agent answers through the node without
	// its tunnel (a relay).
	for _, n := range dp.Serving() {
		if err := kubeGet(n, lone, lone.pat, "", 0); err != nil {
			t.Fatalf("before the rotation: %v", err)
		}
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var stats []*loadStats
	var h1 *loadStats
	loop := func(name string, do func(i int) error) {
		s := &loadStats{name: name}
		if name == "rails-http1" {
			h1 = s
		} else {
			stats = append(stats, s)
		}
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				s.record(do(i))
			}
		})
	}
	// (a) Rails: reads and writes signed with its current key.
	for r := range 2 {
		loop(fmt.Sprintf("rails-%d", r), func(i int) error {
			ag, cr := rails()
			a := agents[i%len(agents)]
			switch i % 3 {
			case 0:
				_, err := ag.ListAgents(ctx, &mgmtv1.ListAgentsRequest{})
				return err
			case 1:
				_, err := ag.ListAgentTokens(ctx, &mgmtv1.ListAgentTokensRequest{AgentId: a.id})
				return err
			default:
				_, err := cr.CreateAccessToken(ctx, &mgmtv1.CreateAccessTokenRequest{User: &mgmtv1.UserIdentity{Id: 2, Username: "bob"},
					AgentIds: []int64{a.id}, ExpiresAt: expires, Name: "churn"})
				return err
			}
		})
	}
	loop("rails-http1", func(i int) error {
		ag, _ := railsClientsOn(h1HC, *railsKey.Load())
		_, err := ag.ListAgents(ctx, &mgmtv1.ListAgentsRequest{})
		return err
	})
	// (b) Callers: every agent through every serving node in turn, with
	// an access token and with the session cookie.
	for _, a := range agents {
		for _, kind := range []string{"pat", "cookie"} {
			loop(fmt.Sprintf("kube-%s-agent-%d", kind, a.id), func(i int) error {
				nodes := dp.Serving()
				if len(nodes) == 0 {
					return errors.New("no node serving")
				}
				n := nodes[i%len(nodes)]
				if kind == "pat" {
					return kubeGet(n, a, a.pat, "", i)
				}
				return kubeGet(n, a, "", *a.cookie.Load(), i)
			})
		}
	}
	progress := func(what string) {
		t.Helper()
		before := make([]int64, len(stats))
		for i, s := range stats {
			before[i] = s.ok.Load()
		}
		framework.Eventually(t, "every load loop succeeding "+what, func() bool {
			for i, s := range stats {
				if s.ok.Load() < before[i]+3 {
					return false
				}
			}
			return true
		})
		// (c) Tunnels: every agent keeps its tunnels.
		for _, a := range agents {
			n := 0
			for _, in := range a.instances() {
				n += in.Tunnels()
			}
			if n < a.tunnels {
				framework.Eventually(t, fmt.Sprintf("agent %d back to %d tunnels %s", a.id, a.tunnels, what), func() bool {
					n := 0
					for _, in := range a.instances() {
						n += in.Tunnels()
					}
					return n >= a.tunnels
				})
			}
		}
		t.Logf("%6.2fs %s", time.Since(start).Seconds(), what)
	}
	progress("before the rotation")

	rollAll := func(what string) {
		t.Helper()
		cp.Roll(t)
		progress("after rolling the control plane (" + what + ")")
		dp.Roll()
		progress("after rolling the dataplane (" + what + ")")
	}

	// api_secret_key, docs/security.md steps 1-3.
	writeKeys(t, cpFiles.API, newAPI, oldAPI)
	cp.Roll(t)
	progress("api_secret_key step 1: NEW, OLD")
	railsKey.Store(&newAPI)
	newCookie := seal(newAPI)
	for _, a := range agents {
		a.cookie.Store(&newCookie) // Rails re-seals the session cookie
	}
	progress("api_secret_key step 2: Rails signs with NEW")
	writeKeys(t, cpFiles.API, newAPI)
	cp.Roll(t)
	progress("api_secret_key step 3: NEW alone")

	// private_api_secret_key, steps 1-3: both roles, each step rolled out
	// everywhere before the next.
	writeKeys(t, cpFiles.Private, oldPriv, newPriv)
	writeKeys(t, dpFiles.Private, oldPriv, newPriv)
	rollAll("private_api_secret_key step 1: OLD, NEW")
	writeKeys(t, cpFiles.Private, newPriv, oldPriv)
	writeKeys(t, dpFiles.Private, newPriv, oldPriv)
	rollAll("private_api_secret_key step 2: NEW, OLD")
	writeKeys(t, cpFiles.Private, newPriv)
	writeKeys(t, dpFiles.Private, newPriv)
	rollAll("private_api_secret_key step 3: NEW alone")

	// Agent tokens, steps 1-3, for every agent.
	newEnv := cp.Env(newAPI, newPriv)
	var oldTokens []framework.AgentCreds
	for _, a := range agents {
		old := a.instances()[0]
		oldTokens = append(oldTokens, old.Creds)
		tok, err := newEnv.Agents.CreateAgentToken(ctx, &mgmtv1.CreateAgentTokenRequest{AgentId: a.id, Name: "rotated"})
		if err != nil {
			t.Fatal(err)
		}
		creds := framework.AgentCreds{ID: a.id, TokenID: tok.GetToken().GetId(), Token: tok.GetSecret()}
		// Rolling restart of agentk: the new pod is up before the old
		// one stops.
		fresh := framework.StartAgent(t, creds, dp.AgentURL, a.tunnels)
		a.mu.Lock()
		a.running = append(a.running, fresh)
		a.mu.Unlock()
		old.Stop()
		a.mu.Lock()
		a.running = a.running[1:]
		a.mu.Unlock()
		// Step 2: nothing uses the old token any more, the new one is used.
		list, err := newEnv.Agents.ListAgentTokens(ctx, &mgmtv1.ListAgentTokensRequest{AgentId: a.id})
		if err != nil {
			t.Fatal(err)
		}
		for _, tk := range list.GetTokens() {
			if tk.GetId() == creds.TokenID && tk.GetLastUsedAt() == nil {
				t.Errorf("agent %d: the new token has no last_used_at", a.id)
			}
		}
		// Step 3.
		framework.Revoke(t, newEnv, old.Creds)
	}
	progress("agent tokens rotated and the old ones revoked")

	close(stop)
	wg.Wait()
	total := int64(0)
	for _, s := range stats {
		total += s.ok.Load()
		if n := s.fail.Load(); n != 0 {
			t.Errorf("%s: %d of %d requests failed, e.g. %q", s.name, n, n+s.ok.Load(), s.errs)
		}
	}
	t.Logf("%d requests succeeded in %d loops over %v", total, len(stats), time.Since(start).Round(time.Millisecond))
	t.Logf("the HTTP/1.1 management client (not asserted): %d succeeded, %d failed %q", h1.ok.Load(), h1.fail.Load(), h1.errs)
	// Nodes call the control plane over HTTP/1.1 too: say how often one
	// of those calls met a replica closing its connection (they retry).
	cut := 0
	for _, n := range dp.all {
		cut += n.Logs.Count("unexpected EOF") + n.Logs.Count("connection reset by peer")
	}
	t.Logf("node log lines about a control-plane connection cut: %d", cut)

	// The old secrets are refused everywhere.
	oldAgents, _ := railsClients(oldAPI)
	if _, err := oldAgents.ListAgents(ctx, &mgmtv1.ListAgentsRequest{}); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("management call signed with the old api_secret_key: %v, want Unauthenticated", err)
	}
	if _, err := cp.Env(newAPI, oldPriv).Nodes.ResolveAgent(ctx, &dpv1.ResolveAgentRequest{AgentId: lone.id}); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("dataplane call signed with the old private_api_secret_key: %v, want Unauthenticated", err)
	}
	for _, n := range dp.Serving() {
		d, err := relay.NewDialer(relay.DialerOptions{NodeID: "old", Key: oldPriv})
		if err != nil {
			t.Fatal(err)
		}
		_, err = d.Dial(ctx, n.PrivateURL(), lone.id)
		d.Close()
		if !errors.Is(err, relay.ErrUnreachable) || !strings.Contains(err.Error(), "unauthenticated") {
			t.Errorf("relay to %s signed with the old private_api_secret_key: %v, want unauthenticated", n.ID, err)
		}
	}
	// A node that checked the old token before it was revoked trusts it
	// for a while (at most 60 s in all, docs/security.md); a node that
	// starts now (scale-up, or the next restart) refuses it at once.
	fresh := dp.start()
	for _, c := range oldTokens {
		n := fresh
		if s, err := tunnel.Dial(ctx, n.AgentURL+framework.TunnelPath, bearer(c.Token), tunnel.DialOptions{}); err == nil {
			s.Close()
			t.Errorf("agent %d: a tunnel opened with the revoked token", c.ID)
		} else if !strings.Contains(err.Error(), "401") {
			t.Errorf("agent %d: tunnel with the revoked token: %v, want 401", c.ID, err)
		}
	}
	framework.Eventually(t, "a cookie sealed with the old key refused", func() bool {
		err := kubeGet(dp.Serving()[0], lone, "", oldCookie, 0)
		return err != nil && strings.Contains(err.Error(), "401")
	})
	if d := time.Since(start); d > 45*time.Second {
		t.Errorf("the rotation took %v", d)
	}
}
