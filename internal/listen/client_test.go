package listen

import (
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

func TestClientTransport(t *testing.T) {
	for raw, want := range map[string]string{
		"":                "\"\" is not a URL",
		"http://":         "\"http://\" has no host",
		"unix://rel/sock": "\"unix://rel/sock\" must have the form unix:///absolute/path",
		"ftp://cp:21":     "\"ftp://cp:21\" must use http://, https:// or unix://",
	} {
		if _, _, err := ClientTransport(raw); err == nil || err.Error() != want {
			t.Errorf("ClientTransport(%q) = %v, want %q", raw, err, want)
		}
	}
	if _, base, err := ClientTransport("https://cp:8153"); err != nil || base != "https://cp:8153" {
		t.Errorf("https: %q, %v", base, err)
	}

	// A unix URL sends every request over the socket.
	dir, err := os.MkdirTemp("", "kas-client-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "cp.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "over the socket") })}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	defer func() {
		srv.Close()
		if err := <-served; err != http.ErrServerClosed {
			t.Errorf("Serve: %v", err)
		}
	}()
	tr, base, err := ClientTransport("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Transport: tr}).Get(base + "/x")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if b, _ := io.ReadAll(resp.Body); string(b) != "over the socket" {
		t.Fatalf("body %q", b)
	}
}
