package k8senv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Versions of the binaries, as scripts/build-k8s-bins.sh builds them.
const (
	KubernetesVersion = "v1.37.2"
	EtcdVersion       = "v3.7.3"
	KwokVersion       = "v0.8.0"
	// kwokBuild names kwok with the patches of scripts/k8s-patches.
	kwokBuild = KwokVersion + "-kas.1"
)

// BuildCommand is the command that builds the binaries into DefaultBinDir.
const BuildCommand = "scripts/build-k8s-bins.sh"

// stamp is the content scripts/build-k8s-bins.sh writes to binDir/.versions.
const stamp = "kubernetes=" + KubernetesVersion + " etcd=" + EtcdVersion + " kwok=" + kwokBuild

var binaries = []string{"kube-apiserver", "kubectl", "etcd", "kwok"}

// DefaultBinDir is where scripts/build-k8s-bins.sh puts the binaries and
// where Start looks for them: $KAS_K8S_BIN, else
// $XDG_CACHE_HOME/kas/k8s/<version>, else ~/.cache/kas/k8s/<version>.
func DefaultBinDir() string {
	if d := os.Getenv("KAS_K8S_BIN"); d != "" {
		return d
	}
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		cache = filepath.Join(home, ".cache")
	}
	return filepath.Join(cache, "kas", "k8s", KubernetesVersion)
}

// checkBinDir returns an error naming what is missing from dir.
func checkBinDir(dir string) error {
	var missing []string
	for _, b := range binaries {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			missing = append(missing, b)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("no %s in %s", strings.Join(missing, ", "), dir)
	}
	got, err := os.ReadFile(filepath.Join(dir, ".versions"))
	if err != nil {
		return fmt.Errorf("no version stamp in %s: %w", dir, err)
	}
	if s := strings.TrimSpace(string(got)); s != stamp {
		return fmt.Errorf("%s holds %q, want %q", dir, s, stamp)
	}
	return nil
}
