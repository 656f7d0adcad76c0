package manifests

// The chart's alerts and dashboard against the relay's code: the PrometheusRule and the plain
// rules file (integration/deploy/alerts) are the same rules; promtool checks the file and runs
// its unit tests (every alert fires and clears); every metric an alert or a dashboard query
// names is one the relay registers (read from relay/'s sources, not from a list kept by hand);
// every alert links to its runbook section in docs/operations/alerts.md.

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

var (
	repoDir       = filepath.Join("..", "..", "..")
	rulesFile     = filepath.Join("..", "alerts", "outbox-relay.rules.yaml")
	rulesTestFile = filepath.Join("..", "alerts", "outbox-relay.rules.test.yaml")
	dashboardFile = filepath.Join(chartDir, "files", "dashboard.json")
	alertsDoc     = filepath.Join(repoDir, "docs", "operations", "alerts.md")
	// What the plain rules file is rendered with: the scrape job a Prometheus without the
	// Operator names the relay by.
	plainRulesArgs = []string{"--set", "prometheusRule.enabled=true", "--set", `prometheusRule.metricSelector=job="outbox-relay"`,
		"--show-only", "templates/prometheusrule.yaml"}
)

type rule struct {
	Alert       string            `json:"alert"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type ruleGroups struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []rule `json:"rules"`
	} `json:"groups"`
}

// prometheusRule: the Prometheus Operator's type (monitoring.coreos.com/v1), the fields the
// chart uses, decoded strictly like the rest.
type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              ruleGroups `json:"spec"`
}

// exportedMetrics: every series name the relay can expose, from the registrations in relay/'s
// sources (registry.counter/gauge/histogram("outbox_relay_...")); a histogram's series are
// _bucket, _sum and _count. Every "outbox_relay_..." literal in the sources must be one of
// the registrations found, so that a registration written another way fails here rather than
// going unseen.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	reg := regexp.MustCompile(`\.(counter|gauge|histogram)\(\s*"(outbox_relay_[a-z0-9_]+)"`)
	lit := regexp.MustCompile(`"(outbox_relay_[a-z0-9_]+)"`)
	names := map[string]bool{}
	literals := map[string]string{}
	err := filepath.WalkDir(filepath.Join(repoDir, "relay"), func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !(strings.HasSuffix(path, ".cc") || strings.HasSuffix(path, ".h")) {
			return err
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range reg.FindAllStringSubmatch(string(src), -1) {
			if m[1] == "histogram" {
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					names[m[2]+suffix] = true
				}
			} else {
				names[m[2]] = true
			}
			names[m[2]] = true // the family's name, as the README's table has it
		}
		for _, m := range lit.FindAllStringSubmatch(string(src), -1) {
			literals[m[1]] = path
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, path := range literals {
		if !names[name] {
			t.Errorf("%s names %s but no registry.counter/gauge/histogram(\"%s\" ...) was found: teach exportedMetrics this form", path, name, name)
		}
	}
	if len(names) < 20 {
		t.Fatalf("only %d metrics found in relay/: %v", len(names), names)
	}
	return names
}

var metricToken = regexp.MustCompile(`\boutbox_relay_[a-z0-9_]+\b`)

// checkQueryMetrics: the query names at least one metric, each of them exported; histogram
// families are queried only by their series (_bucket, _sum, _count).
func checkQueryMetrics(t *testing.T, what, query string, exported map[string]bool, histograms map[string]bool) []string {
	t.Helper()
	found := metricToken.FindAllString(query, -1)
	if len(found) == 0 {
		t.Errorf("%s: names no outbox_relay_ metric: %s", what, query)
	}
	for _, m := range found {
		if !exported[m] || histograms[m] {
			t.Errorf("%s: %s is not a series the relay exports: %s", what, m, query)
		}
	}
	return found
}

func histogramFamilies(exported map[string]bool) map[string]bool {
	h := map[string]bool{}
	for m := range exported {
		if base, ok := strings.CutSuffix(m, "_bucket"); ok {
			h[base] = true
		}
	}
	return h
}

// plainRules: the rules part of the chart's PrometheusRule as the plain file holds it (the
// lines under spec:, two spaces less indented), with the file's header.
func plainRules(t *testing.T) string {
	t.Helper()
	out, err := helm(t, append([]string{"template", "rel", chartDir, "--namespace", "apps"}, plainRulesArgs...)...)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	i := strings.Index(out, "\nspec:\n")
	if i < 0 {
		t.Fatalf("no spec in the PrometheusRule:\n%s", out)
	}
	var b strings.Builder
	b.WriteString("# The relay's alerts for Prometheus without the Operator (rule_files), rendered from\n" +
		"# charts/outbox-relay/templates/prometheusrule.yaml with metricSelector job=\"outbox-relay\":\n" +
		"# set that to your scrape job. Do not edit: OUTBOX_UPDATE_ALERTS=1 integration/deploy/chart.sh\n" +
		"# writes it again. Runbooks: docs/operations/alerts.md. Tests: outbox-relay.rules.test.yaml.\n")
	for _, line := range strings.Split(strings.TrimRight(out[i+len("\nspec:\n"):], "\n"), "\n") {
		b.WriteString(strings.TrimPrefix(line, "  ") + "\n")
	}
	return b.String()
}

func promtool(t *testing.T, args ...string) {
	t.Helper()
	bin := os.Getenv("PROMTOOL")
	if bin == "" {
		bin = "promtool"
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = filepath.Dir(rulesFile)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func TestAlertRules(t *testing.T) {
	want := plainRules(t)
	if os.Getenv("OUTBOX_UPDATE_ALERTS") != "" {
		if err := os.WriteFile(rulesFile, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Fatalf("%s differs from the chart's PrometheusRule: OUTBOX_UPDATE_ALERTS=1 integration/deploy/chart.sh writes it again", rulesFile)
	}
	promtool(t, "check", "rules", filepath.Base(rulesFile))
	promtool(t, "test", "rules", filepath.Base(rulesTestFile))

	var rules ruleGroups
	if err := yaml.UnmarshalStrict(got, &rules); err != nil {
		t.Fatal(err)
	}
	exported := exportedMetrics(t)
	hist := histogramFamilies(exported)
	doc, err := os.ReadFile(alertsDoc)
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, h := range regexp.MustCompile(`(?m)^#{2,3} (.+)$`).FindAllStringSubmatch(string(doc), -1) {
		anchors[githubAnchor(h[1])] = true
	}
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			checkQueryMetrics(t, "alert "+r.Alert, r.Expr, exported, hist)
			url := r.Annotations["runbook_url"]
			anchor, ok := strings.CutPrefix(url, "docs/operations/alerts.md#")
			if !ok || !anchors[anchor] {
				t.Errorf("alert %s: runbook_url %q: no such section in docs/operations/alerts.md", r.Alert, url)
			}
			if r.Labels["severity"] != "warning" && r.Labels["severity"] != "critical" {
				t.Errorf("alert %s: severity %q", r.Alert, r.Labels["severity"])
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: summary and description needed", r.Alert)
			}
		}
	}
	for _, want := range []string{"oldest_pending_age", "role{", "events_dead_lettered", "blocked_topics", "replication_slot_retained_wal", "postgres_up", "kafka_up", "loop_tick_age"} {
		found := false
		for _, g := range rules.Groups {
			for _, r := range g.Rules {
				found = found || strings.Contains(r.Expr, "outbox_relay_"+want)
			}
		}
		if !found {
			t.Errorf("no alert on outbox_relay_%s", want)
		}
	}
	checkAlertTestsFireAndClear(t, alerts)
}

// githubAnchor: the anchor GitHub gives a Markdown heading.
func githubAnchor(heading string) string {
	h := strings.ToLower(strings.TrimSpace(heading))
	h = regexp.MustCompile("[^a-z0-9 _-]").ReplaceAllString(h, "")
	return strings.ReplaceAll(h, " ", "-")
}

// checkAlertTestsFireAndClear: every alert has, in the promtool unit tests, a time where it
// fires, an earlier one where it does not yet, and a later one where it has cleared.
func checkAlertTestsFireAndClear(t *testing.T, alerts []string) {
	t.Helper()
	raw, err := os.ReadFile(rulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				EvalTime  string `json:"eval_time"`
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	if err := yaml.Unmarshal(raw, &tests); err != nil {
		t.Fatal(err)
	}
	for _, a := range alerts {
		ok := false
		for _, tc := range tests.Tests {
			state := "" // sequence of q (quiet) and f (firing) in eval order
			for _, c := range tc.AlertRuleTest {
				if c.Alertname != a {
					continue
				}
				if len(c.ExpAlerts) > 0 {
					state += "f"
				} else {
					state += "q"
				}
			}
			ok = ok || regexp.MustCompile(`q+f+q`).MatchString(state)
		}
		if !ok {
			t.Errorf("%s: no promtool test case that sees it quiet, then firing, then cleared", a)
		}
	}
}

// The chart's PrometheusRule: off by default; on, it selects the release's series (job and
// namespace, as the ServiceMonitor labels them) and carries the values' labels and thresholds.
func TestPrometheusRuleValues(t *testing.T) {
	if len(render(t).byKind["*manifests.prometheusRule"]) != 0 {
		t.Error("a PrometheusRule by default")
	}
	pr := one(t, render(t, "--set", "prometheusRule.enabled=true"), any_[*prometheusRule])
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			if !strings.Contains(r.Expr, `job="rel-outbox-relay",namespace="apps"`) {
				t.Errorf("%s: %s does not select the release's series", r.Alert, r.Expr)
			}
		}
	}
	pr = one(t, render(t, "-f", valuesAll), any_[*prometheusRule])
	if pr.Labels["release"] != "prometheus" {
		t.Errorf("labels %v: prometheusRule.labels missing", pr.Labels)
	}
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			if r.Labels["team"] != "payments" || !strings.HasPrefix(r.Annotations["runbook_url"], "https://docs.example.com/") {
				t.Errorf("%s: alertLabels or runbookUrl not applied: %v %v", r.Alert, r.Labels, r.Annotations)
			}
			switch r.Alert {
			case "OutboxRelayOldestPendingAge":
				if !strings.HasSuffix(r.Expr, "> 120") {
					t.Errorf("%s: threshold not applied: %s", r.Alert, r.Expr)
				}
			case "OutboxRelayRetainedWal":
				if !strings.HasSuffix(r.Expr, "> 5368709120") {
					t.Errorf("%s: threshold not applied: %s", r.Alert, r.Expr)
				}
			case "OutboxRelayLoopStalled":
				if !strings.HasSuffix(r.Expr, "> 20") {
					t.Errorf("%s: threshold not applied: %s", r.Alert, r.Expr)
				}
			case "OutboxRelayTopicBlocked":
				if r.For != "10m" {
					t.Errorf("%s: for %q, want 10m", r.Alert, r.For)
				}
			}
		}
	}
}

// The dashboard: valid JSON, unique panel ids, every query (panels and variables) naming only
// series the relay exports; shipped, when enabled, as a ConfigMap the Grafana sidecar loads.
func TestGrafanaDashboard(t *testing.T) {
	raw, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID    string `json:"uid"`
		Title  string `json:"title"`
		Panels []struct {
			ID      int    `json:"id"`
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	if err := dec.Decode(&dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Error("the dashboard needs a uid and a title")
	}
	exported := exportedMetrics(t)
	hist := histogramFamilies(exported)
	used := map[string]bool{}
	ids := map[int]bool{}
	queries := 0
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			queries++
			for _, m := range checkQueryMetrics(t, "panel "+p.Title, tg.Expr, exported, hist) {
				used[strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")] = true
			}
		}
	}
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(map[string]any)
		s, _ := q["query"].(string)
		checkQueryMetrics(t, "variable "+v.Name, s, exported, hist)
	}
	if queries < 10 {
		t.Errorf("only %d queries", queries)
	}
	// every metric the relay exports is on the dashboard
	var missing []string
	for m := range exported {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
		if !used[base] {
			missing = append(missing, base)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("metrics the dashboard does not show: %v", missing)
	}

	if n := len(render(t).byKind["*v1.ConfigMap"]); n != 2 {
		t.Errorf("%d ConfigMaps by default, want 2 (no dashboard)", n)
	}
	cm := one(t, render(t, "--set", "grafanaDashboard.enabled=true"), func(c *corev1.ConfigMap) bool {
		return c.Data["outbox-relay.json"] != ""
	})
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard ConfigMap labels %v: want grafana_dashboard: \"1\" (the sidecar's)", cm.Labels)
	}
	if strings.TrimSpace(cm.Data["outbox-relay.json"]) != strings.TrimSpace(string(raw)) {
		t.Error("the ConfigMap does not hold files/dashboard.json as it is")
	}
}

// TestMetricsReference: docs/reference/metrics.md names every metric family the relay
// registers, and nothing else under the relay's prefix.
func TestMetricsReference(t *testing.T) {
	exported := exportedMetrics(t)
	histograms := histogramFamilies(exported)
	doc, err := os.ReadFile(filepath.Join(repoDir, "docs", "reference", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]bool{}
	for _, m := range metricToken.FindAllString(string(doc), -1) {
		named[m] = true
		if !exported[m] {
			t.Errorf("docs/reference/metrics.md names %s, which the relay does not export", m)
		}
	}
	for m := range exported {
		family := m
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(m, suffix); ok && histograms[base] {
				family = base
			}
		}
		if !named[family] {
			t.Errorf("docs/reference/metrics.md does not describe %s", family)
		}
	}
}
