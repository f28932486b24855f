package app

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"

	managementv1 "github.com/kas-project/kas/gen/kas/management/v1"
	"github.com/kas-project/kas/gen/kas/management/v1/managementv1connect"
	"github.com/kas-project/kas/internal/authn"
	"github.com/kas-project/kas/internal/config"
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
	var logs bytes.Buffer
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
