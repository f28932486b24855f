package app

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// fallbackDataDir is used for the default data directory when kas runs as
// root in a directory the postgres user cannot reach (a checkout in /root).
const fallbackDataDir = "/var/lib/kas/postgres"

// embeddedDataDir decides where the embedded PostgreSQL lives. PostgreSQL
// refuses to run as root, so as root pglocal runs it as the postgres user,
// which must be able to traverse every parent of the data directory. When
// it cannot, the default directory moves to fallbackDataDir (moved reports
// it) and a configured one is an error naming the setting.
func embeddedDataDir(dir string, isDefault bool) (_ string, moved bool, err error) {
	if os.Geteuid() != 0 {
		return dir, false, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return dir, false, nil // pglocal reports the missing user
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	blocked, err := unreachableParent(dir, uint32(uid), uint32(gid))
	if err != nil || blocked == "" {
		return dir, false, err
	}
	if isDefault {
		return fallbackDataDir, true, nil
	}
	return "", false, fmt.Errorf("database.data_dir: the postgres user (which runs the embedded PostgreSQL, since PostgreSQL refuses root) cannot enter %s: choose a directory outside it or run chmod o+x %s", blocked, blocked)
}

// unreachableParent returns the first existing parent of dir that user
// uid:gid cannot traverse, or "".
func unreachableParent(dir string, uid, gid uint32) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("database.data_dir: %w", err)
	}
	var parents []string
	for p := filepath.Dir(abs); ; p = filepath.Dir(p) {
		parents = append(parents, p)
		if p == filepath.Dir(p) {
			break
		}
	}
	for i := len(parents) - 1; i >= 0; i-- {
		p := parents[i]
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil // created later, world-traversable
		}
		if err != nil {
			return "", fmt.Errorf("database.data_dir: %w", err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return "", nil
		}
		perm := fi.Mode().Perm()
		switch {
		case st.Uid == uid:
			if perm&0o100 == 0 {
				return p, nil
			}
		case st.Gid == gid:
			if perm&0o010 == 0 {
				return p, nil
			}
		case perm&0o001 == 0:
			return p, nil
		}
	}
	return "", nil
}
