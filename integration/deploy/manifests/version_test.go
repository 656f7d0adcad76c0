package manifests

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"
)

// One version, defined in the top-level CMakeLists.txt's project() line: the binary's
// --version (relay/CMakeLists.txt passes PROJECT_VERSION to the build), the image tag
// (build-image.sh and image-exec.sh take integration/deploy/version.sh's), the chart's
// appVersion and the newest CHANGELOG.md entry must all say it.
func TestOneVersion(t *testing.T) {
	read := func(path string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(repoDir, path))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	m := regexp.MustCompile(`(?m)^project\(outbox-relay VERSION ([0-9]+\.[0-9]+\.[0-9]+) `).FindStringSubmatch(read("CMakeLists.txt"))
	if m == nil {
		t.Fatal("CMakeLists.txt: no project(outbox-relay VERSION x.y.z ...) line")
	}
	version := m[1]

	out, err := exec.Command(filepath.Join(repoDir, "integration", "deploy", "version.sh")).Output()
	if err != nil || strings.TrimSpace(string(out)) != version {
		t.Errorf("integration/deploy/version.sh says %q (%v), CMakeLists.txt %s", out, err, version)
	}
	if !strings.Contains(read("relay/CMakeLists.txt"), `OUTBOX_RELAY_VERSION="${PROJECT_VERSION}"`) {
		t.Error("relay/CMakeLists.txt no longer gives the binary PROJECT_VERSION as OUTBOX_RELAY_VERSION")
	}
	if !strings.Contains(read("relay/cli/main.cc"), `set_version_flag("--version", std::string("outbox-relay ") + OUTBOX_RELAY_VERSION`) {
		t.Error("relay/cli/main.cc: --version no longer prints OUTBOX_RELAY_VERSION")
	}
	for _, script := range []string{"integration/deploy/build-image.sh", "integration/deploy/image-exec.sh"} {
		if !strings.Contains(read(script), "version.sh") {
			t.Errorf("%s does not tag the image with version.sh's version", script)
		}
	}

	var chart struct {
		Version    string `json:"version"`
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal([]byte(read("charts/outbox-relay/Chart.yaml")), &chart); err != nil {
		t.Fatal(err)
	}
	if chart.AppVersion != version {
		t.Errorf("charts/outbox-relay/Chart.yaml appVersion %q, CMakeLists.txt %s", chart.AppVersion, version)
	}
	// the image the chart runs by default is the one build-image.sh tags
	dep := one(t, render(t), any_[*appsv1.Deployment])
	if img := dep.Spec.Template.Spec.Containers[0].Image; img != "outbox-relay:"+version {
		t.Errorf("the chart runs image %s by default, build-image.sh tags outbox-relay:%s", img, version)
	}

	cl := regexp.MustCompile(`(?m)^## \[([0-9][^\]]*)\]`).FindStringSubmatch(read("CHANGELOG.md"))
	if cl == nil || cl[1] != version {
		t.Errorf("CHANGELOG.md: the newest version entry is %v, CMakeLists.txt %s", cl, version)
	}
	if !strings.Contains(read("LICENSE"), "Apache License\n                           Version 2.0, January 2004") {
		t.Error("LICENSE is not the Apache License 2.0")
	}
}
