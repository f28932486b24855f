package config

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Names of the key files the embedded mode generates in SecretsDir.
const (
	APIKeyFileName        = "api_secret_key"
	PrivateAPIKeyFileName = "private_api_secret_key"
)

// SecretsDir is where the embedded mode keeps its generated keys:
// <database.data_dir>/../secrets.
func (c *Config) SecretsDir() string {
	return filepath.Join(filepath.Dir(filepath.Clean(c.Database.DataDir)), "secrets")
}

// EnsureEmbeddedKeys points each unset key file setting at its file in
// SecretsDir and creates the files that do not exist yet (mode 0600, base64
// of 32 random bytes). Existing files are reused as they are. It returns the
// key file paths it set, for the log. It does nothing with a database URL.
func (c *Config) EnsureEmbeddedKeys() (paths []string, err error) {
	if !c.Database.Embedded() {
		return nil, nil
	}
	for _, k := range []struct {
		setting *string
		name    string
	}{
		{&c.APISecretKeyFile, APIKeyFileName},
		{&c.PrivateAPISecretKeyFile, PrivateAPIKeyFileName},
	} {
		if *k.setting != "" {
			continue
		}
		path := filepath.Join(c.SecretsDir(), k.name)
		if err := ensureKeyFile(path); err != nil {
			return nil, err
		}
		*k.setting = path
		paths = append(paths, path)
	}
	return paths, nil
}

// ensureKeyFile writes a new key to path unless a file is there. The file
// appears atomically (written aside, then linked), so two processes starting
// at once agree on one key.
func ensureKeyFile(path string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("check key file: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create secrets directory: %w", err)
	}
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("generate key: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".key-*")
	if err != nil {
		return fmt.Errorf("write key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write key file: %w", err)
	}
	if _, err := tmp.WriteString(base64.StdEncoding.EncodeToString(key) + "\n"); err != nil {
		tmp.Close()
		return fmt.Errorf("write key file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write key file: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("write key file: %w", err)
	}
	return nil
}
