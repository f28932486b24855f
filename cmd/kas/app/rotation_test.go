package app

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/kas-project/kas/controlplane"
	"github.com/kas-project/kas/dataplane/relay"
	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/config"
	"github.com/kas-project/kas/internal/cptest"
	"github.com/kas-project/kas/internal/pgtest"
)

// TestKeyRotation: a key file with two keys, one per line, makes the
// control plane accept JWTs signed with either, and says so in the log
// without the keys.
func TestKeyRotation(t *testing.T) {
	keys := make([][]byte, 3)
	for i := range keys {
		keys[i] = make([]byte, 32)
		rand.Read(keys[i])
	}
	current, old, stranger := keys[0], keys[1], keys[2]
	dir := t.TempDir()
	apiFile := filepath.Join(dir, "api_secret_key")
	content := base64.StdEncoding.EncodeToString(current) + "\n" + base64.StdEncoding.EncodeToString(old) + "\n"
	if err := os.WriteFile(apiFile, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Database.URL = pgtest.DSN(t)
	cfg.APISecretKeyFile = apiFile
	cfg.PrivateAPISecretKeyFile, _ = keyFile(t, dir, "private")
	cfg.Controlplane.Listen.Address = "127.0.0.1:0"
	cfg.Observability.Listen.Address = "127.0.0.1:0"
	var logs lockedLog
	s, err := New(context.Background(), Options{Role: config.RoleControlplane, Config: cfg, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; s.Close() })

	url := "http://" + s.Addr("controlplane.listen").String()
	call := func(key []byte) error {
		agents := managementv1connect.NewAgentServiceClient(http.DefaultClient, url, connect.WithInterceptors(
			authn.ClientInterceptor(authn.NewSigner(key, authn.IssuerRails, authn.AudienceManagement, "rails"))))
		_, err := agents.ListAgents(context.Background(), &managementv1.ListAgentsRequest{})
		return err
	}
	if err := call(current); err != nil {
		t.Errorf("the first key of the file: %v", err)
	}
	if err := call(old); err != nil {
		t.Errorf("the second key of the file: %v", err)
	}
	if err := call(stranger); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("a key not in the file: %v, want Unauthenticated", err)
	}
	log := logs.String()
	if !strings.Contains(log, "key rotation") || !strings.Contains(log, "setting=api_secret_key_file extra_keys=1") {
		t.Errorf("the log does not say that a rotation is under way:\n%s", log)
	}
	for _, k := range keys[:2] {
		if strings.Contains(log, base64.StdEncoding.EncodeToString(k)) {
			t.Errorf("the log holds a key:\n%s", log)
		}
	}
}

// lockedLog is a log destination shared by goroutines.
type lockedLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// TestDataplaneKeyRotation is the middle step of a private_api_secret_key
// rotation: the node's key file holds the new key, then the old one. The
// node signs with the new key (which the control plane accepts as its
// extra key) and its private API accepts both.
func TestDataplaneKeyRotation(t *testing.T) {
	next := cptest.Key(t)
	cp := cptest.Start(t, func(o *controlplane.Options) { o.ExtraPrivateAPISecretKeys = [][]byte{next} })
	keyPath := filepath.Join(t.TempDir(), "private")
	content := base64.StdEncoding.EncodeToString(next) + "\n" + base64.StdEncoding.EncodeToString(cp.PrivateKey) + "\n"
	if err := os.WriteFile(keyPath, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.PrivateAPISecretKeyFile = keyPath
	cfg.Dataplane.NodeID = "rotating"
	cfg.Dataplane.ControlplaneURL = cp.URL
	cfg.Dataplane.Agent.Listen.Address = "127.0.0.1:0"
	cfg.Dataplane.PrivateAPI.Listen.Address = "127.0.0.1:0"
	cfg.Dataplane.KubernetesAPI.Listen.Address = "127.0.0.1:0"
	cfg.Observability.Listen.Address = "127.0.0.1:0"
	var logs lockedLog
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := New(ctx, Options{Role: config.RoleDataplane, Config: cfg, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()

	// Registered: the control plane took the node's JWTs, signed with the
	// first key of the file.
	registered := func() bool {
		nodes, err := cp.Routing.ListNodes(ctx, &managementv1.ListNodesRequest{})
		return err == nil && len(nodes.Nodes) == 1 && nodes.Nodes[0].NodeId == "rotating"
	}
	guard := time.NewTimer(30 * time.Second)
	defer guard.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !registered() {
		select {
		case <-tick.C:
		case <-guard.C:
			t.Fatalf("the node never registered:\n%s", logs.String())
		}
	}

	// Its private API takes calls signed with either key of the file.
	url := "grpc://" + s.Addr("dataplane.private_api.listen").String()
	dial := func(key []byte) error {
		d, err := relay.NewDialer(relay.DialerOptions{NodeID: "other", Key: key})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		_, err = d.Dial(ctx, url, 42)
		return err
	}
	for name, key := range map[string][]byte{"new": next, "old": cp.PrivateKey} {
		if err := dial(key); !errors.Is(err, relay.ErrNoTunnel) {
			t.Errorf("relay call signed with the %s key: %v, want ErrNoTunnel (authenticated, no tunnel)", name, err)
		}
	}
	if err := dial(cptest.Key(t)); !errors.Is(err, relay.ErrUnreachable) || !strings.Contains(err.Error(), "unauthenticated") {
		t.Errorf("relay call signed with a stranger's key: %v, want unauthenticated", err)
	}
	if log := logs.String(); !strings.Contains(log, "setting=private_api_secret_key_file extra_keys=1") {
		t.Errorf("the log does not say that a rotation is under way:\n%s", log)
	}
}
