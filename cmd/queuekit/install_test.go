package main

import (
	"archive/zip"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// `go install github.com/queuekit/queuekit/cmd/queuekit@latest`, as a user
// outside this repository runs it: no go.work, the modules fetched from a
// module proxy. The test serves this checkout's modules (the core,
// broker/rabbitmq, broker/kafka and this one) from a file:// proxy at the
// version cmd/queuekit/go.mod requires them, third-party modules from the
// local module cache, and installs into a temporary GOBIN.
func TestGoInstallLatest(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go install")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(goBin, "mod", "edit", "-json", "go.mod").Output()
	if err != nil {
		t.Fatal(err)
	}
	var mf struct {
		Require []struct{ Path, Version string }
	}
	if err := json.Unmarshal(out, &mf); err != nil {
		t.Fatal(err)
	}
	version := ""
	for _, r := range mf.Require {
		if r.Path == "github.com/queuekit/queuekit" {
			version = r.Version
		}
	}
	if version == "" {
		t.Fatal("cmd/queuekit/go.mod does not require github.com/queuekit/queuekit")
	}
	gomodcache, err := exec.Command(goBin, "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	proxy := filepath.Join(tmp, "proxy")
	for path, dir := range map[string]string{
		"github.com/queuekit/queuekit":                 root,
		"github.com/queuekit/queuekit/broker/rabbitmq": filepath.Join(root, "broker", "rabbitmq"),
		"github.com/queuekit/queuekit/broker/kafka":    filepath.Join(root, "broker", "kafka"),
		"github.com/queuekit/queuekit/cmd/queuekit":    filepath.Join(root, "cmd", "queuekit"),
	} {
		serveModule(t, proxy, path, version, dir)
	}
	cmd := exec.Command(goBin, "install", "github.com/queuekit/queuekit/cmd/queuekit@latest")
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(),
		"GOWORK=off", "GOFLAGS=-modcacherw", "GOTOOLCHAIN=local", "GOSUMDB=off", "GONOSUMDB=", "GOPRIVATE=",
		"GOPROXY=file://"+filepath.ToSlash(proxy)+",file://"+filepath.ToSlash(filepath.Join(strings.TrimSpace(string(gomodcache)), "cache", "download")),
		"GOMODCACHE="+filepath.Join(tmp, "modcache"), "GOBIN="+filepath.Join(tmp, "bin"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go install github.com/queuekit/queuekit/cmd/queuekit@latest: %v\n%s", err, out)
	}
	out, err = exec.Command(filepath.Join(tmp, "bin", "queuekit"), "version").CombinedOutput()
	if err != nil || !strings.Contains(string(out), version) {
		t.Fatalf("the installed queuekit version: %v: %s; want %s", err, out, version)
	}
	t.Logf("installed: %s", out)
}

// serveModule writes module path at version, from the files under dir
// (without nested modules), to the file:// module proxy at proxy.
func serveModule(t *testing.T, proxy, path, version, dir string) {
	t.Helper()
	at := filepath.Join(proxy, filepath.FromSlash(path), "@v")
	if err := os.MkdirAll(at, 0o755); err != nil {
		t.Fatal(err)
	}
	info := fmt.Sprintf(`{"Version":%q,"Time":%q}`, version, time.Now().UTC().Format(time.RFC3339))
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		filepath.Join(at, "list"):                                 []byte(version + "\n"),
		filepath.Join(at, version+".info"):                        []byte(info),
		filepath.Join(at, version+".mod"):                         gomod,
		filepath.Join(proxy, filepath.FromSlash(path), "@latest"): []byte(info),
	} {
		if err := os.WriteFile(name, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	zf, err := os.Create(filepath.Join(at, version+".zip"))
	if err != nil {
		t.Fatal(err)
	}
	defer zf.Close()
	zw := zip.NewWriter(zf)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			if rel != "." {
				if strings.HasPrefix(d.Name(), ".") || d.Name() == "vendor" {
					return filepath.SkipDir
				}
				if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
					return filepath.SkipDir // a module of its own
				}
			}
			return nil
		}
		if !d.Type().IsRegular() || strings.HasPrefix(d.Name(), ".") && rel != ".gitignore" {
			return nil
		}
		w, err := zw.Create(path + "@" + version + "/" + filepath.ToSlash(rel))
		if err != nil {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(w, f)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
}
