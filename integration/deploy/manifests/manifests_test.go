// Package manifests checks charts/outbox-relay: every manifest `helm template` renders is
// decoded strictly into its Kubernetes API type (an unknown or misspelled field fails), the
// security settings of the Deployment and the migration Job are asserted, the values schema
// rejects misspelled values, and the chart README lists every value.
//
//	HELM=$(integration/env/helm.sh) go test ./...   (from this directory; integration/deploy/chart.sh)
package manifests

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

var (
	chartDir  = filepath.Join("..", "..", "..", "charts", "outbox-relay")
	valuesAll = filepath.Join("..", "values-all.yaml")
)

// serviceMonitor: the Prometheus Operator's type has no k8s.io module; these are the fields
// the chart uses (monitoring.coreos.com/v1), decoded as strictly as the others.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Interval      string `json:"interval"`
			ScrapeTimeout string `json:"scrapeTimeout"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// newObject: the typed object for an apiVersion/kind; unknown kinds fail the test, so a new
// template must be added here.
func newObject(apiVersion, kind string) (any, error) {
	switch apiVersion + "/" + kind {
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "v1/Secret":
		return &corev1.Secret{}, nil
	case "v1/Service":
		return &corev1.Service{}, nil
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}, nil
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, nil
	case "batch/v1/Job":
		return &batchv1.Job{}, nil
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	case "networking.k8s.io/v1/NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, nil
	case "monitoring.coreos.com/v1/ServiceMonitor":
		return &serviceMonitor{}, nil
	case "monitoring.coreos.com/v1/PrometheusRule":
		return &prometheusRule{}, nil
	}
	return nil, fmt.Errorf("no type known for %s %s (add it to newObject)", apiVersion, kind)
}

// decodeStrict: YAML (duplicate keys refused) -> JSON -> the typed object, unknown fields refused.
func decodeStrict(doc []byte) (any, error) {
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, fmt.Errorf("yaml: %w", err)
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(js, &tm); err != nil {
		return nil, err
	}
	obj, err := newObject(tm.APIVersion, tm.Kind)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(obj); err != nil {
		return nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%s: trailing data after the object", tm.Kind)
	}
	return obj, nil
}

func helm(t *testing.T, args ...string) (string, error) {
	t.Helper()
	bin := os.Getenv("HELM")
	if bin == "" {
		t.Fatal("HELM is not set: HELM=$(integration/env/helm.sh) go test ./...")
	}
	cmd := exec.Command(bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String() + errb.String(), err
	}
	return out.String(), nil
}

type rendered struct {
	objects []any
	byKind  map[string][]any
}

func render(t *testing.T, args ...string) rendered {
	t.Helper()
	return renderRelease(t, "rel", args...)
}

func renderRelease(t *testing.T, release string, args ...string) rendered {
	t.Helper()
	out, err := helm(t, append([]string{"template", release, chartDir, "--namespace", "apps"}, args...)...)
	if err != nil {
		t.Fatalf("helm template %v: %v\n%s", args, err, out)
	}
	r := rendered{byKind: map[string][]any{}}
	for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(out, -1) {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^#.*$`).ReplaceAllString(doc, "")) == "" {
			continue
		}
		obj, err := decodeStrict([]byte(doc))
		if err != nil {
			t.Fatalf("document %d of helm template %v: %v\n%s", i, args, err, doc)
		}
		r.objects = append(r.objects, obj)
		kind := fmt.Sprintf("%T", obj)
		r.byKind[kind] = append(r.byKind[kind], obj)
	}
	return r
}

func (r rendered) kinds() []string {
	var ks []string
	for k, v := range r.byKind {
		ks = append(ks, fmt.Sprintf("%s x%d", k, len(v)))
	}
	sort.Strings(ks)
	return ks
}

func one[T any](t *testing.T, r rendered, match func(T) bool) T {
	t.Helper()
	var found []T
	for _, o := range r.objects {
		if v, ok := o.(T); ok && match(v) {
			found = append(found, v)
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("want exactly one %T, found %d (rendered: %v)", zero, len(found), r.kinds())
	}
	return found[0]
}

func any_[T any](T) bool { return true }

func isHook(m metav1.ObjectMeta) bool { return m.Annotations["helm.sh/hook"] != "" }

// checkPodSecurity: the settings the chart promises for every pod it runs.
func checkPodSecurity(t *testing.T, what string, spec corev1.PodSpec) {
	t.Helper()
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("%s: pod securityContext.runAsNonRoot must be true", what)
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod seccompProfile must be RuntimeDefault", what)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("%s: automountServiceAccountToken must be false (the relay never calls the API)", what)
	}
	if len(spec.Containers) == 0 {
		t.Fatalf("%s: no containers", what)
	}
	for _, c := range append(spec.InitContainers, spec.Containers...) {
		sc := c.SecurityContext
		w := what + " container " + c.Name
		switch {
		case sc == nil:
			t.Errorf("%s: no securityContext", w)
			continue
		case sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem:
			t.Errorf("%s: readOnlyRootFilesystem must be true", w)
		case sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation:
			t.Errorf("%s: allowPrivilegeEscalation must be false", w)
		case sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot:
			t.Errorf("%s: runAsNonRoot must be true", w)
		case sc.RunAsUser == nil || *sc.RunAsUser == 0:
			t.Errorf("%s: runAsUser must be a non-zero uid", w)
		case sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" || len(sc.Capabilities.Add) != 0:
			t.Errorf("%s: capabilities must drop ALL and add none", w)
		case sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
			t.Errorf("%s: seccompProfile must be RuntimeDefault", w)
		case sc.Privileged != nil && *sc.Privileged:
			t.Errorf("%s: privileged", w)
		}
		if c.Resources.Requests == nil || c.Resources.Limits.Memory().IsZero() {
			t.Errorf("%s: resources need requests and a memory limit", w)
		}
	}
}

func envNames(c corev1.Container) map[string]corev1.EnvVar {
	m := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		m[e.Name] = e
	}
	return m
}

// relayConfig: the relay YAML of a ConfigMap, parsed.
func relayConfig(t *testing.T, cm *corev1.ConfigMap) map[string]any {
	t.Helper()
	var cfg map[string]any
	if err := yaml.UnmarshalStrict([]byte(cm.Data["config.yaml"]), &cfg); err != nil {
		t.Fatalf("ConfigMap %s: config.yaml: %v", cm.Name, err)
	}
	return cfg
}

func dig(m map[string]any, path ...string) any {
	var v any = m
	for _, p := range path {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[p]
	}
	return v
}

type chartCase struct {
	name           string
	args           []string
	kinds          []string
	secret         string // Secret the relay's env reads
	hookSecret     string // Secret the migration Job's env reads
	port           int32
	replicas       int32
	extraConfig    [][2]string // path.to.key, value that must be in the relay config
	sasl           bool
	migrationHooks int
	jobAnnotations map[string]string // on the migration Job's pods
}

func TestChartRendersStrictly(t *testing.T) {
	cases := []chartCase{
		{
			name: "default values",
			kinds: []string{"*v1.ConfigMap x2", "*v1.Deployment x1", "*v1.Job x1", "*v1.PodDisruptionBudget x1",
				"*v1.Secret x2", "*v1.Service x1", "*v1.ServiceAccount x1"},
			secret: "rel-outbox-relay", hookSecret: "rel-outbox-relay-migrate", port: 8080, replicas: 2,
			extraConfig: [][2]string{{"kafka.bootstrap_servers", "kafka:9092"}, {"log.format", "json"}},
		},
		{
			name: "all options (values-all.yaml)",
			args: []string{"-f", valuesAll},
			kinds: []string{"*manifests.prometheusRule x1", "*manifests.serviceMonitor x1", "*v1.ConfigMap x3", "*v1.Deployment x1", "*v1.Job x1",
				"*v1.NetworkPolicy x2", "*v1.PodDisruptionBudget x1", "*v1.Service x1", "*v1.ServiceAccount x1"},
			secret: "orders-outbox-relay-credentials", hookSecret: "orders-outbox-relay-credentials", port: 9090, replicas: 3,
			extraConfig: [][2]string{{"source.mode", "replication"}, {"kafka.properties.compression.type", "lz4"},
				{"kafka.properties.sasl.mechanism", "SCRAM-SHA-256"}, {"log.level", "debug"}, {"log.format", "json"}},
			sasl:           true,
			jobAnnotations: map[string]string{"sidecar.istio.io/inject": "false"},
		},
		{
			name: "chart-made Secret with SASL, no migration, nothing optional",
			args: []string{"--set", "kafka.sasl.enabled=true,kafka.sasl.username=u,kafka.sasl.password=p,migration.enabled=false," +
				"service.enabled=false,podDisruptionBudget.enabled=false,serviceAccount.create=false,replicaCount=1"},
			kinds:  []string{"*v1.ConfigMap x1", "*v1.Deployment x1", "*v1.Secret x1"},
			secret: "rel-outbox-relay", port: 8080, replicas: 1,
			sasl: true,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := render(t, tc.args...)
			if got := r.kinds(); strings.Join(got, ", ") != strings.Join(tc.kinds, ", ") {
				t.Errorf("rendered %v, want %v", got, tc.kinds)
			}
			dep := one(t, r, any_[*appsv1.Deployment])
			checkPodSecurity(t, "Deployment", dep.Spec.Template.Spec)
			if dep.Spec.Replicas == nil || *dep.Spec.Replicas != tc.replicas {
				t.Errorf("replicas %v, want %d", dep.Spec.Replicas, tc.replicas)
			}
			c := dep.Spec.Template.Spec.Containers[0]
			if len(c.Ports) != 1 || c.Ports[0].Name != "http" || c.Ports[0].ContainerPort != tc.port {
				t.Errorf("container ports %+v, want one named http on %d", c.Ports, tc.port)
			}
			for _, p := range []struct {
				probe *corev1.Probe
				path  string
			}{{c.LivenessProbe, "/healthz"}, {c.ReadinessProbe, "/readyz"}} {
				if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.StrVal != "http" {
					t.Errorf("probe %+v, want GET %s on port http", p.probe, p.path)
				}
			}
			env := envNames(c)
			if _, ok := env["OUTBOX_PG_ADMIN_DSN"]; ok {
				t.Error("the relay's pods must not get the privileged migration DSN")
			}
			checkSecretEnv(t, "Deployment", env, tc.secret, tc.sasl)

			cm := one(t, r, func(cm *corev1.ConfigMap) bool { return !isHook(cm.ObjectMeta) && cm.Data["config.yaml"] != "" })
			cfg := relayConfig(t, cm)
			if got := dig(cfg, "postgres", "dsn"); got != "${OUTBOX_PG_DSN}" {
				t.Errorf("relay config postgres.dsn = %v, want ${OUTBOX_PG_DSN}", got)
			}
			if dig(cfg, "postgres", "admin_dsn") != nil {
				t.Error("relay config must not carry postgres.admin_dsn")
			}
			for _, kv := range tc.extraConfig {
				if got := fmt.Sprint(digDotted(cfg, kv[0])); got != kv[1] {
					t.Errorf("relay config %s = %q, want %q", kv[0], got, kv[1])
				}
			}
			if tc.sasl && dig(cfg, "kafka", "properties") == nil {
				t.Error("SASL enabled but no kafka.properties in the relay config")
			}
			if tc.hookSecret == "" {
				return
			}
			checkMigration(t, r, tc)
		})
	}
}

// digDotted: a.b.c where the last part may itself contain dots (librdkafka property names).
func digDotted(cfg map[string]any, key string) any {
	parts := strings.Split(key, ".")
	for i := len(parts); i > 0; i-- {
		parent := dig(cfg, parts[:i-1]...)
		if m, ok := parent.(map[string]any); ok {
			if v, ok := m[strings.Join(parts[i-1:], ".")]; ok {
				return v
			}
		}
	}
	return nil
}

func checkSecretEnv(t *testing.T, what string, env map[string]corev1.EnvVar, secret string, sasl bool) {
	t.Helper()
	want := []string{"OUTBOX_PG_DSN"}
	if sasl {
		want = append(want, "OUTBOX_KAFKA_USERNAME", "OUTBOX_KAFKA_PASSWORD")
	}
	for _, name := range want {
		e, ok := env[name]
		if !ok || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.ValueFrom.SecretKeyRef.Name != secret {
			t.Errorf("%s: env %s must come from Secret %s, got %+v", what, name, secret, e)
		}
	}
}

func checkMigration(t *testing.T, r rendered, tc chartCase) {
	t.Helper()
	job := one(t, r, any_[*batchv1.Job])
	if h := job.Annotations["helm.sh/hook"]; h != "pre-install,pre-upgrade" {
		t.Errorf("migration Job hook %q, want pre-install,pre-upgrade", h)
	}
	checkPodSecurity(t, "migration Job", job.Spec.Template.Spec)
	for k, v := range tc.jobAnnotations {
		if got, ok := job.Spec.Template.Annotations[k]; !ok || got != v {
			t.Errorf("migration Job pod annotation %s = %q, want %q (migration.podAnnotations)", k, got, v)
		}
	}
	// The Job must never run at uninstall; the hook Secret with the privileged DSN is removed
	// then (post-delete: before-hook-creation deletes what is left, hook-succeeded the new one).
	for _, o := range r.objects {
		var m metav1.ObjectMeta
		switch o := o.(type) {
		case *batchv1.Job:
			m = o.ObjectMeta
		case *corev1.Secret:
			m = o.ObjectMeta
		case *corev1.ConfigMap:
			m = o.ObjectMeta
		case *networkingv1.NetworkPolicy:
			m = o.ObjectMeta
		default:
			continue
		}
		if !isHook(m) {
			continue
		}
		events := "," + m.Annotations["helm.sh/hook"] + ","
		policy := "," + m.Annotations["helm.sh/hook-delete-policy"] + ","
		if !strings.Contains(policy, ",before-hook-creation,") || !strings.Contains(policy, ",hook-succeeded,") {
			t.Errorf("hook %T %s: delete policy %q, want before-hook-creation and hook-succeeded", o, m.Name, policy)
		}
		_, isSecret := o.(*corev1.Secret)
		if got := strings.Contains(events, ",post-delete,"); got != isSecret {
			t.Errorf("hook %T %s: events %q: post-delete must be there for the Secret only", o, m.Name, events)
		}
		if strings.Contains(events, "-delete,") && !isSecret {
			t.Errorf("hook %T %s runs at uninstall (%q)", o, m.Name, events)
		}
	}
	c := job.Spec.Template.Spec.Containers[0]
	if strings.Join(c.Args, " ") != "migrate --config /etc/outbox-relay/config.yaml" {
		t.Errorf("migration Job args %v", c.Args)
	}
	env := envNames(c)
	checkSecretEnv(t, "migration Job", env, tc.hookSecret, tc.sasl)
	admin := env["OUTBOX_PG_ADMIN_DSN"]
	if admin.ValueFrom == nil || admin.ValueFrom.SecretKeyRef == nil || admin.ValueFrom.SecretKeyRef.Name != tc.hookSecret {
		t.Errorf("migration Job: OUTBOX_PG_ADMIN_DSN must come from Secret %s, got %+v", tc.hookSecret, admin)
	}
	// Hooks run before the release's resources exist: what the Job mounts and reads must be
	// hooks created before it (lower weight).
	vol := job.Spec.Template.Spec.Volumes[0].ConfigMap.Name
	cm := one(t, r, func(cm *corev1.ConfigMap) bool { return cm.Name == vol })
	if !isHook(cm.ObjectMeta) || cm.Annotations["helm.sh/hook-weight"] >= job.Annotations["helm.sh/hook-weight"] {
		t.Errorf("the Job's ConfigMap %s must be a hook created before the Job: %v", vol, cm.Annotations)
	}
	if got := dig(relayConfig(t, cm), "postgres", "admin_dsn"); got != "${OUTBOX_PG_ADMIN_DSN}" {
		t.Errorf("migration config postgres.admin_dsn = %v, want ${OUTBOX_PG_ADMIN_DSN}", got)
	}
	for _, s := range r.byKind["*v1.Secret"] {
		s := s.(*corev1.Secret)
		if s.Name == tc.hookSecret {
			if !isHook(s.ObjectMeta) {
				t.Errorf("the Job's Secret %s must be a hook", s.Name)
			}
			if _, ok := s.Data["postgres-admin-dsn"]; !ok {
				t.Errorf("Secret %s has no postgres-admin-dsn", s.Name)
			}
		} else if _, ok := s.Data["postgres-admin-dsn"]; ok {
			t.Errorf("Secret %s (the relay's) must not hold the privileged DSN", s.Name)
		}
	}
}

// The strict decoding itself: a misspelled field must fail.
func TestStrictDecodingRefusesMisspelledFields(t *testing.T) {
	good := "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  replicas: 1\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers: [{name: c, image: i}]\n"
	if _, err := decodeStrict([]byte(good)); err != nil {
		t.Fatalf("a valid Deployment was refused: %v", err)
	}
	for _, bad := range []string{
		strings.Replace(good, "replicas:", "replica:", 1),
		strings.Replace(good, "containers:", "container:", 1),
		strings.Replace(good, "image: i", "image: i, imagePullPolicys: Always", 1),
		good + "  replicas: 2\n", // duplicate key
		strings.Replace(good, "kind: Deployment", "kind: Deploymnet", 1),
	} {
		if _, err := decodeStrict([]byte(bad)); err == nil {
			t.Errorf("accepted:\n%s", bad)
		}
	}
}

// values.schema.json: a misspelled value must fail the install, not be ignored.
func TestSchemaRefusesMisspelledValues(t *testing.T) {
	for _, set := range []string{"replicaCont=2", "probes.liveness.periodSecond=5", "kafka.sasl.mechanism=SCRAM",
		"serviceMonitor.enabeld=true", "image.pullPolicy=Sometimes"} {
		out, err := helm(t, "template", "rel", chartDir, "--set", set)
		if err == nil || !strings.Contains(out, "schema") {
			t.Errorf("--set %s: want a schema error, got err=%v\n%s", set, err, out)
		}
	}
}

// Every key of values.yaml (nested keys as a.b.c; maps that are empty by default are one key)
// has a row in the chart README's table.
func TestReadmeListsEveryValue(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.UnmarshalStrict(raw, &values); err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(chartDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			key := prefix + k
			if sub, ok := v.(map[string]any); ok && len(sub) > 0 && key != "resources" && key != "migration.resources" && key != "grafanaDashboard.labels" {
				walk(key+".", sub)
				continue
			}
			keys = append(keys, key)
		}
	}
	walk("", values)
	sort.Strings(keys)
	if len(keys) < 40 {
		t.Fatalf("only %d keys found in values.yaml: %v", len(keys), keys)
	}
	for _, k := range keys {
		if !regexp.MustCompile("(?m)^\\| `" + regexp.QuoteMeta(k) + "` \\|").Match(readme) {
			t.Errorf("charts/outbox-relay/README.md: no table row for `%s`", k)
		}
	}
}

// podTemplate: a pod that a rendered release runs, named by its owner.
type podTemplate struct {
	owner  string // "rel: Deployment rel-outbox-relay"
	labels labels.Set
}

// podTemplates: the pods the rendered workloads of one release create.
func podTemplates(release string, r rendered) (relay, other []podTemplate) {
	for _, o := range r.objects {
		switch o := o.(type) {
		case *appsv1.Deployment:
			relay = append(relay, podTemplate{release + ": Deployment " + o.Name, o.Spec.Template.Labels})
		case *batchv1.Job:
			other = append(other, podTemplate{release + ": Job " + o.Name, o.Spec.Template.Labels})
		}
	}
	return relay, other
}

func owners(pods []podTemplate) []string {
	var s []string
	for _, p := range pods {
		s = append(s, p.owner)
	}
	sort.Strings(s)
	return s
}

// podSelectors: every selector of a rendered release that picks pods, by what holds it: those
// meant for the relay's pods, and those of the migration hooks (meant for the Job's pods).
func podSelectors(t *testing.T, r rendered) (relay, migration map[string]labels.Selector) {
	t.Helper()
	relay, migration = map[string]labels.Selector{}, map[string]labels.Selector{}
	add := func(what string, ls *metav1.LabelSelector, hook bool) {
		// nil selects nothing, {} everything (a PodDisruptionBudget's or NetworkPolicy's).
		sel, err := metav1.LabelSelectorAsSelector(ls)
		if err != nil {
			t.Fatalf("%s: selector %+v: %v", what, ls, err)
		}
		if hook {
			migration[what] = sel
		} else {
			relay[what] = sel
		}
	}
	for _, o := range r.objects {
		switch o := o.(type) {
		case *appsv1.Deployment:
			add("Deployment "+o.Name+" spec.selector", o.Spec.Selector, isHook(o.ObjectMeta))
		case *corev1.Service:
			// a Service without a selector has its endpoints managed by hand: it selects nothing
			if len(o.Spec.Selector) > 0 {
				add("Service "+o.Name+" spec.selector", &metav1.LabelSelector{MatchLabels: o.Spec.Selector}, isHook(o.ObjectMeta))
			}
		case *policyv1.PodDisruptionBudget:
			add("PodDisruptionBudget "+o.Name+" spec.selector", o.Spec.Selector, isHook(o.ObjectMeta))
		case *networkingv1.NetworkPolicy:
			add("NetworkPolicy "+o.Name+" spec.podSelector", &o.Spec.PodSelector, isHook(o.ObjectMeta))
		}
	}
	return relay, migration
}

// No selector of a release may match a pod it does not own: the Service would route to the
// migration Job's pod, the PodDisruptionBudget would count it (and then block every node drain,
// since the eviction API cannot scale a Job), the NetworkPolicy would apply to it, and a
// Deployment that matches pods outside its template fights over them. Every selector of release
// "rel" is evaluated against the pod templates of "rel" and of a second release "other" in the
// same namespace with the same values, and must match exactly rel's relay pods.
func TestSelectorsMatchOnlyTheReleasesRelayPods(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"default values", nil},
		{"replicas 2 with a PodDisruptionBudget", []string{"--set", "replicaCount=2,podDisruptionBudget.enabled=true"}},
		{"networkPolicy on", []string{"--set", "networkPolicy.enabled=true"}},
		{"migration job on, one replica", []string{"--set", "migration.enabled=true,replicaCount=1"}},
		{"all options (values-all.yaml)", []string{"-f", valuesAll}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := render(t, tc.args...)
			relay, jobs := podTemplates("rel", r)
			otherRelay, otherJobs := podTemplates("other", renderRelease(t, "other", tc.args...))
			if len(relay) != 1 {
				t.Fatalf("want one Deployment, rendered %v", r.kinds())
			}
			if strings.Contains(tc.name, "migration") && len(jobs) != 1 {
				t.Fatalf("want the migration Job, rendered %v", r.kinds())
			}
			all := append(append(append(append([]podTemplate{}, relay...), jobs...), otherRelay...), otherJobs...)
			relaySels, migrationSels := podSelectors(t, r)
			if len(relaySels) == 0 {
				t.Fatal("no selector found")
			}
			check := func(sels map[string]labels.Selector, want []podTemplate) {
				for what, sel := range sels {
					var matched []podTemplate
					for _, p := range all {
						if sel.Matches(p.labels) {
							matched = append(matched, p)
						}
					}
					if got, want := owners(matched), owners(want); strings.Join(got, ", ") != strings.Join(want, ", ") {
						t.Errorf("%s (%s) matches the pods of %v, want exactly %v", what, sel, got, want)
					}
				}
			}
			check(relaySels, relay)
			check(migrationSels, jobs)
			// the Job's pods left the relay's NetworkPolicy: they must be under their own
			hasPolicy := func(sels map[string]labels.Selector) bool {
				for what := range sels {
					if strings.HasPrefix(what, "NetworkPolicy ") {
						return true
					}
				}
				return false
			}
			if len(jobs) > 0 && hasPolicy(relaySels) && !hasPolicy(migrationSels) {
				t.Error("the relay's pods have a NetworkPolicy but the migration Job's pods have none")
			}
			// a ServiceMonitor selects Services: exactly the release's own
			services := map[string]labels.Set{}
			for rel, objs := range map[string]rendered{"rel": r, "other": renderRelease(t, "other", tc.args...)} {
				for _, o := range objs.objects {
					if s, ok := o.(*corev1.Service); ok {
						services[rel+": Service "+s.Name] = s.Labels
					}
				}
			}
			for _, o := range r.objects {
				sm, ok := o.(*serviceMonitor)
				if !ok {
					continue
				}
				sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
				if err != nil {
					t.Fatalf("ServiceMonitor %s: %v", sm.Name, err)
				}
				var got []string
				for name, l := range services {
					if sel.Matches(l) {
						got = append(got, name)
					}
				}
				sort.Strings(got)
				if strings.Join(got, ", ") != "rel: Service "+sm.Name {
					t.Errorf("ServiceMonitor %s (%s) matches %v, want exactly rel's Service %s", sm.Name, sel, got, sm.Name)
				}
			}
		})
	}
}

// A relay pod that is not ready (a standby that cannot connect) must not block node drains:
// unhealthyPodEvictionPolicy AlwaysAllow by default, configurable, left out when empty.
func TestPodDisruptionBudgetEvictsUnhealthyPods(t *testing.T) {
	for _, tc := range []struct {
		set, want string
	}{
		{"", "AlwaysAllow"},
		{"podDisruptionBudget.unhealthyPodEvictionPolicy=IfHealthyBudget", "IfHealthyBudget"},
		{"podDisruptionBudget.unhealthyPodEvictionPolicy=", ""},
		{"kube 1.26", ""}, // the field is on by default from 1.27 only
	} {
		var args []string
		if tc.set == "kube 1.26" {
			args = []string{"--kube-version", "1.26.9"}
		} else if tc.set != "" {
			args = []string{"--set", tc.set}
		}
		pdb := one(t, render(t, args...), any_[*policyv1.PodDisruptionBudget])
		got := ""
		if pdb.Spec.UnhealthyPodEvictionPolicy != nil {
			got = string(*pdb.Spec.UnhealthyPodEvictionPolicy)
		}
		if got != tc.want {
			t.Errorf("--set %q: unhealthyPodEvictionPolicy %q, want %q", tc.set, got, tc.want)
		}
	}
	out, err := helm(t, "template", "rel", chartDir, "--set", "podDisruptionBudget.unhealthyPodEvictionPolicy=Always")
	if err == nil || !strings.Contains(out, "schema") {
		t.Errorf("a misspelled unhealthyPodEvictionPolicy was accepted:\n%s", out)
	}
}

// Helm gives every chart, and every subchart, the parent's `global` values: the strict schema
// must accept them, both on this chart and with it as a subchart.
func TestSchemaAcceptsGlobal(t *testing.T) {
	render(t, "--set", "global.imageRegistry=registry.example.com")

	parent := t.TempDir()
	write := func(path, text string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(parent, "Chart.yaml"), "apiVersion: v2\nname: platform\nversion: 1.0.0\n")
	write(filepath.Join(parent, "values.yaml"), "global:\n  imageRegistry: registry.example.com\n"+
		"outbox-relay:\n  replicaCount: 1\n")
	sub := filepath.Join(parent, "charts", "outbox-relay")
	if err := os.CopyFS(sub, os.DirFS(chartDir)); err != nil {
		t.Fatal(err)
	}
	out, err := helm(t, "template", "rel", parent)
	if err != nil {
		t.Fatalf("the chart as a subchart with global values: %v\n%s", err, out)
	}
	if !strings.Contains(out, "kind: Deployment") {
		t.Errorf("the subchart rendered no Deployment:\n%s", out)
	}
}

// Regression: terminationGracePeriodSeconds and relay.shutdown_timeout_ms were set apart, so a
// longer shutdown timeout (or a shorter grace period) let the kubelet SIGKILL the relay while
// it still waited for Kafka, losing the marks of what was acknowledged. The chart derives the
// timeout from the grace period (15 s less) and refuses a config that leaves less than 15 s.
func TestShutdownTimeoutStaysInsideTheGracePeriod(t *testing.T) {
	shutdownMs := func(r rendered) (int64, int64) {
		cm := one(t, r, func(c *corev1.ConfigMap) bool { return !isHook(c.ObjectMeta) })
		var cfg struct {
			Relay struct {
				ShutdownTimeoutMs *int64 `json:"shutdown_timeout_ms"`
			} `json:"relay"`
		}
		if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &cfg); err != nil {
			t.Fatal(err)
		}
		if cfg.Relay.ShutdownTimeoutMs == nil {
			t.Fatalf("the relay's config has no relay.shutdown_timeout_ms:\n%s", cm.Data["config.yaml"])
		}
		d := one(t, r, any_[*appsv1.Deployment])
		return *cfg.Relay.ShutdownTimeoutMs, *d.Spec.Template.Spec.TerminationGracePeriodSeconds
	}
	for _, c := range []struct {
		set         []string
		timeout, gp int64
	}{
		{nil, 30000, 45},
		{[]string{"--set", "terminationGracePeriodSeconds=120"}, 105000, 120},
		{[]string{"--set", "config.relay.shutdown_timeout_ms=20000"}, 20000, 45},
		{[]string{"--set", "config.relay.shutdown_timeout_ms=60000", "--set", "terminationGracePeriodSeconds=75"}, 60000, 75},
	} {
		timeout, gp := shutdownMs(render(t, c.set...))
		if timeout != c.timeout || gp != c.gp {
			t.Errorf("%v: shutdown_timeout_ms %d, terminationGracePeriodSeconds %d; want %d, %d", c.set, timeout, gp, c.timeout, c.gp)
		}
	}
	out, err := helm(t, "template", "rel", chartDir, "--set", "config.relay.shutdown_timeout_ms=60000")
	if err == nil || !strings.Contains(out, "config.relay.shutdown_timeout_ms (60000) must leave 15 s of terminationGracePeriodSeconds (45)") ||
		!strings.Contains(out, "at least 75") {
		t.Errorf("a shutdown timeout of 60 s in a 45 s grace period: want a refusal, got err=%v\n%s", err, out)
	}
}

func containerNames(cs []corev1.Container) string {
	var names []string
	for _, c := range cs {
		names = append(names, c.Name)
	}
	return strings.Join(names, ",")
}

// initContainers go to the relay's pods and to the migration Job's (a secrets agent or a
// native-sidecar proxy is needed by both); extraContainers to the relay's pods only (a plain
// sidecar would keep the Job from completing). checkPodSecurity, run on values-all.yaml, holds
// them to the same settings as the chart's own.
func TestExtraAndInitContainers(t *testing.T) {
	for _, tc := range []struct {
		name                               string
		args                               []string
		relayInit, relay, jobInit, jobMain string
	}{
		{"default values", nil, "", "relay", "", "migrate"},
		{"values-all.yaml", []string{"-f", valuesAll}, "cloud-sql-proxy", "relay,log-shipper", "cloud-sql-proxy", "migrate"},
	} {
		r := render(t, tc.args...)
		dep := one(t, r, any_[*appsv1.Deployment]).Spec.Template.Spec
		job := one(t, r, any_[*batchv1.Job]).Spec.Template.Spec
		for _, c := range []struct{ what, got, want string }{
			{"Deployment initContainers", containerNames(dep.InitContainers), tc.relayInit},
			{"Deployment containers", containerNames(dep.Containers), tc.relay},
			{"Job initContainers", containerNames(job.InitContainers), tc.jobInit},
			{"Job containers", containerNames(job.Containers), tc.jobMain},
		} {
			if c.got != c.want {
				t.Errorf("%s: %s = [%s], want [%s]", tc.name, c.what, c.got, c.want)
			}
		}
		if tc.relayInit != "" {
			if p := dep.InitContainers[0].RestartPolicy; p == nil || *p != corev1.ContainerRestartPolicyAlways {
				t.Errorf("%s: the native sidecar's restartPolicy was lost: %v", tc.name, p)
			}
		}
	}
}

// checkOpenShiftRestricted: what OpenShift's restricted-v2 SecurityContextConstraints admit
// (MustRunAsRange uid and fsGroup assigned per namespace, so none named; MustRunAs SELinux;
// no host namespaces or ports; capabilities dropped to ALL with at most NET_BIND_SERVICE
// added; no privilege escalation; seccomp RuntimeDefault; the volume types it allows).
func checkOpenShiftRestricted(t *testing.T, what string, spec corev1.PodSpec) {
	t.Helper()
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		t.Errorf("%s: host namespaces", what)
	}
	if psc := spec.SecurityContext; psc != nil {
		if psc.RunAsUser != nil || psc.RunAsGroup != nil || psc.FSGroup != nil || len(psc.SupplementalGroups) > 0 {
			t.Errorf("%s: the pod names a uid or gid (%+v): restricted-v2 assigns them from the namespace's range", what, psc)
		}
		if psc.SELinuxOptions != nil {
			t.Errorf("%s: seLinuxOptions set", what)
		}
		if psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
			t.Errorf("%s: runAsNonRoot must stay true", what)
		}
	}
	allowed := map[string]bool{"configMap": true, "downwardAPI": true, "emptyDir": true, "ephemeral": true,
		"persistentVolumeClaim": true, "projected": true, "secret": true, "csi": true}
	for _, v := range spec.Volumes {
		js, _ := json.Marshal(v.VolumeSource)
		var src map[string]any
		_ = json.Unmarshal(js, &src)
		for k := range src {
			if !allowed[k] {
				t.Errorf("%s: volume %s of type %s", what, v.Name, k)
			}
		}
	}
	for _, c := range append(spec.InitContainers, spec.Containers...) {
		w := what + " container " + c.Name
		sc := c.SecurityContext
		if sc == nil {
			t.Errorf("%s: no securityContext", w)
			continue
		}
		if sc.RunAsUser != nil || sc.RunAsGroup != nil {
			t.Errorf("%s: names uid %v gid %v", w, sc.RunAsUser, sc.RunAsGroup)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || (sc.Privileged != nil && *sc.Privileged) {
			t.Errorf("%s: privilege escalation or privileged", w)
		}
		if sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
			t.Errorf("%s: capabilities must drop ALL", w)
		}
		for _, a := range sc.Capabilities.Add {
			if a != "NET_BIND_SERVICE" {
				t.Errorf("%s: adds capability %s", w, a)
			}
		}
		if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: seccompProfile must be RuntimeDefault", w)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s: readOnlyRootFilesystem must stay true", w)
		}
		for _, p := range c.Ports {
			if p.HostPort != 0 {
				t.Errorf("%s: hostPort %d", w, p.HostPort)
			}
		}
	}
}

// On OpenShift (detected, or forced) the pods pass restricted-v2; elsewhere, or disabled, they
// keep the image's uid 10001.
func TestOpenShiftRestrictedSecurityContext(t *testing.T) {
	openshiftAPI := "--api-versions=security.openshift.io/v1"
	for _, tc := range []struct {
		name      string
		args      []string
		openshift bool
	}{
		{"default values, not OpenShift", nil, false},
		{"auto on OpenShift", []string{openshiftAPI}, true},
		{"force", []string{"--set", "openshift.adaptSecurityContext=force"}, true},
		{"disabled on OpenShift", []string{openshiftAPI, "--set", "openshift.adaptSecurityContext=disabled"}, false},
		{"auto on OpenShift, networkPolicy and values-all's options", []string{openshiftAPI, "-f", valuesAll,
			"--set", "openshift.adaptSecurityContext=auto,initContainers=null,extraContainers=null"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := render(t, tc.args...)
			specs := map[string]corev1.PodSpec{
				"Deployment":    one(t, r, any_[*appsv1.Deployment]).Spec.Template.Spec,
				"migration Job": one(t, r, any_[*batchv1.Job]).Spec.Template.Spec,
			}
			for what, spec := range specs {
				if tc.openshift {
					checkOpenShiftRestricted(t, what, spec)
				} else {
					checkPodSecurity(t, what, spec)
					if u := spec.SecurityContext.RunAsUser; u == nil || *u != 10001 {
						t.Errorf("%s: runAsUser %v, want the image's 10001", what, u)
					}
				}
			}
		})
	}
	out, err := helm(t, "template", "rel", chartDir, "--set", "openshift.adaptSecurityContext=yes")
	if err == nil || !strings.Contains(out, "schema") {
		t.Errorf("a misspelled openshift.adaptSecurityContext was accepted:\n%s", out)
	}
}

// The standby is spread from the leader across nodes by default (a node's loss must not take
// both); the term selects exactly the release's relay pods; affinity, when set, replaces it.
func TestStandbyAntiAffinity(t *testing.T) {
	for _, tc := range []struct {
		name, set string
		want      string // preferred, required, none, custom
	}{
		{"default values", "", "preferred"},
		{"hard", "podAntiAffinity=hard", "required"},
		{"off", "podAntiAffinity=", "none"},
		{"affinity set", "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].key=zone," +
			"affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].operator=Exists", "custom"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var args []string
			if tc.set != "" {
				args = []string{"--set", tc.set}
			}
			r := render(t, args...)
			aff := one(t, r, any_[*appsv1.Deployment]).Spec.Template.Spec.Affinity
			var terms []corev1.PodAffinityTerm
			switch {
			case tc.want == "none":
				if aff != nil {
					t.Fatalf("affinity %+v, want none", aff)
				}
				return
			case tc.want == "custom":
				if aff == nil || aff.NodeAffinity == nil || aff.PodAntiAffinity != nil {
					t.Fatalf("affinity %+v, want the values' nodeAffinity only", aff)
				}
				return
			case aff == nil || aff.PodAntiAffinity == nil:
				t.Fatalf("no podAntiAffinity: %+v", aff)
			case tc.want == "preferred":
				for _, w := range aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
					terms = append(terms, w.PodAffinityTerm)
				}
				if len(aff.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) > 0 {
					t.Error("soft anti-affinity must not require")
				}
			case tc.want == "required":
				terms = aff.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution
				if len(aff.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) > 0 {
					t.Error("hard anti-affinity: preferred terms too")
				}
			}
			if len(terms) != 1 || terms[0].TopologyKey != "kubernetes.io/hostname" {
				t.Fatalf("terms %+v, want one on kubernetes.io/hostname", terms)
			}
			sel, err := metav1.LabelSelectorAsSelector(terms[0].LabelSelector)
			if err != nil {
				t.Fatal(err)
			}
			relay, jobs := podTemplates("rel", r)
			otherRelay, otherJobs := podTemplates("other", renderRelease(t, "other", args...))
			var matched []podTemplate
			for _, p := range append(append(append(relay, jobs...), otherRelay...), otherJobs...) {
				if sel.Matches(p.labels) {
					matched = append(matched, p)
				}
			}
			if got, want := owners(matched), owners(relay); strings.Join(got, ", ") != strings.Join(want, ", ") {
				t.Errorf("anti-affinity selector %s matches %v, want exactly %v", sel, got, want)
			}
		})
	}
	out, err := helm(t, "template", "rel", chartDir, "--set", "podAntiAffinity=soft-ish")
	if err == nil || !strings.Contains(out, "schema") {
		t.Errorf("a misspelled podAntiAffinity was accepted:\n%s", out)
	}
}
