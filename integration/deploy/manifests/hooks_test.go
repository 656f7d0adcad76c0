package manifests

// The migration hooks under Helm's own hook runner (helm.sh/helm/v3/pkg/action, the version
// integration/env/helm.sh builds), against a recording stand-in for the cluster: which objects
// exist after an install whose migration succeeds, one whose migration fails, an uninstall,
// and an uninstall after an install that was interrupted. The privileged DSN's Secret must
// be gone in every case.

import (
	"errors"
	"io"
	"sort"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/kube"
	kubefake "helm.sh/helm/v3/pkg/kube/fake"
	"helm.sh/helm/v3/pkg/storage"
	"helm.sh/helm/v3/pkg/storage/driver"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/cli-runtime/pkg/resource"
	"sigs.k8s.io/yaml"
)

// cluster: the hook objects Helm created and did not delete, by "Kind/name". A Job's watch fails
// when failJobs is set (its pod exited non-zero backoffLimit+1 times).
type cluster struct {
	kubefake.PrintingKubeClient
	objects  map[string]bool
	failJobs bool
}

func (c *cluster) Build(r io.Reader, _ bool) (kube.ResourceList, error) {
	raw, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var list kube.ResourceList
	for _, doc := range strings.Split(string(raw), "\n---") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
			return nil, err
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		// Only the hooks are tracked: the release's own objects would need a REST client
		// (Helm asks the cluster whether they exist already), and the hooks are what matter.
		if u.GetAnnotations()["helm.sh/hook"] == "" {
			continue
		}
		list = append(list, &resource.Info{Name: u.GetName(), Namespace: u.GetNamespace(), Object: u})
	}
	return list, nil
}

func key(i *resource.Info) string {
	return i.Object.(*unstructured.Unstructured).GetKind() + "/" + i.Name
}

func (c *cluster) Create(rs kube.ResourceList) (*kube.Result, error) {
	for _, r := range rs {
		if c.objects[key(r)] {
			return nil, errors.New(key(r) + " already exists")
		}
		c.objects[key(r)] = true
	}
	return &kube.Result{Created: rs}, nil
}

func (c *cluster) Delete(rs kube.ResourceList) (*kube.Result, []error) {
	for _, r := range rs {
		delete(c.objects, key(r))
	}
	return &kube.Result{Deleted: rs}, nil
}

func (c *cluster) WatchUntilReady(rs kube.ResourceList, _ time.Duration) error {
	for _, r := range rs {
		if c.failJobs && strings.HasPrefix(key(r), "Job/") {
			return errors.New("job failed: BackoffLimitExceeded")
		}
	}
	return nil
}

func (c *cluster) list() string {
	var s []string
	for k := range c.objects {
		s = append(s, k)
	}
	sort.Strings(s)
	return strings.Join(s, " ")
}

func TestMigrationSecretGoneWhateverTheOutcome(t *testing.T) {
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatal(err)
	}
	newConfig := func(c *cluster) *action.Configuration {
		return &action.Configuration{
			Releases:   storage.Init(driver.NewMemory()),
			KubeClient: c,
			Capabilities: &chartutil.Capabilities{
				KubeVersion: chartutil.KubeVersion{Version: "v1.31.0", Major: "1", Minor: "31"},
				APIVersions: chartutil.DefaultVersionSet, HelmVersion: chartutil.DefaultCapabilities.HelmVersion,
			},
			Log: func(string, ...any) {},
		}
	}
	install := func(cfg *action.Configuration) error {
		in := action.NewInstall(cfg)
		in.ReleaseName, in.Namespace = "rel", "apps"
		_, err := in.Run(chrt, map[string]any{})
		return err
	}
	const secret = "Secret/rel-outbox-relay-migrate"

	// Succeeded: every hook is deleted (hook-succeeded).
	ok := &cluster{PrintingKubeClient: kubefake.PrintingKubeClient{Out: io.Discard}, objects: map[string]bool{}}
	cfg := newConfig(ok)
	if err := install(cfg); err != nil {
		t.Fatalf("install: %v", err)
	}
	if ok.list() != "" {
		t.Errorf("after a successful migration: %s", ok.list())
	}
	un := action.NewUninstall(cfg)
	if _, err := un.Run("rel"); err != nil {
		t.Fatalf("uninstall: %v", err)
	}
	if ok.list() != "" {
		t.Errorf("after uninstall: %s left", ok.list())
	}

	// Failed: the Job stays for its logs, the Secret before it is deleted all the same.
	failed := &cluster{PrintingKubeClient: kubefake.PrintingKubeClient{Out: io.Discard}, objects: map[string]bool{}, failJobs: true}
	cfg = newConfig(failed)
	if err := install(cfg); err == nil || !strings.Contains(err.Error(), "BackoffLimitExceeded") {
		t.Fatalf("install with a failing migration: %v", err)
	}
	if failed.objects[secret] {
		t.Errorf("after a failed migration the privileged Secret is left: %s", failed.list())
	}
	if !failed.objects["Job/rel-outbox-relay-migrate"] {
		t.Errorf("after a failed migration its Job should stay for kubectl logs: %s", failed.list())
	}

	// Interrupted (helm killed while the Job ran): the Secret is left; uninstall removes it.
	failed.objects[secret] = true
	failed.failJobs = false
	if _, err := action.NewUninstall(cfg).Run("rel"); err != nil {
		t.Fatalf("uninstall of the failed release: %v", err)
	}
	if failed.objects[secret] {
		t.Errorf("uninstall left the privileged Secret: %s", failed.list())
	}
}
