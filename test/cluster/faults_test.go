package cluster

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// TestRestartAPIServerKeepsState: after a SIGKILL and restart the API
// server serves again, with what was stored before the crash.
func TestRestartAPIServerKeepsState(t *testing.T) {
	c := requireCluster(t)
	ctx := t.Context()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{GenerateName: "before-restart-"}, Data: map[string]string{"k": "v"}}
	created, err := c.Client.CoreV1().ConfigMaps(metav1.NamespaceDefault).Create(ctx, cm, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before := c.process(APIServer).cmd.Process.Pid
	if err := c.Restart(ctx, APIServer); err != nil {
		t.Fatal(err)
	}
	if after := c.process(APIServer).cmd.Process.Pid; after == before {
		t.Fatalf("API server pid %d unchanged by Restart", after)
	}
	got, err := c.Client.CoreV1().ConfigMaps(metav1.NamespaceDefault).Get(ctx, created.Name, metav1.GetOptions{})
	if err != nil || got.Data["k"] != "v" {
		t.Fatalf("config map after restart: %v %v", got, err)
	}
}

// TestPausedEtcdStallsWritesUntilResumed: while etcd is frozen a write
// cannot complete; once resumed, writes succeed again.
func TestPausedEtcdStallsWritesUntilResumed(t *testing.T) {
	c := requireCluster(t)
	if err := c.Pause(Etcd); err != nil {
		t.Fatal(err)
	}
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			_ = c.Resume(Etcd)
		}
	})
	stalled, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{GenerateName: "during-pause-"}}
	if _, err := c.Client.CoreV1().ConfigMaps(metav1.NamespaceDefault).Create(stalled, cm, metav1.CreateOptions{}); err == nil {
		t.Fatal("a write completed while etcd was paused")
	}
	if err := c.Resume(Etcd); err != nil {
		t.Fatal(err)
	}
	resumed = true
	err := wait.PollUntilContextTimeout(t.Context(), 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().ConfigMaps(metav1.NamespaceDefault).Create(ctx, cm, metav1.CreateOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("writes did not resume after etcd did: %v", err)
	}
}

// TestTwoZoneNodes: TwoZoneNodes' extra worker is in SecondZone, carries
// the taints it was given, and the seed's nodes are unchanged.
func TestTwoZoneNodes(t *testing.T) {
	taint := corev1.Taint{Key: "example.com/only", Effect: corev1.TaintEffectNoSchedule}
	nodes := TwoZoneNodes(taint)
	if len(nodes) != len(SeedNodes())+1 {
		t.Fatalf("TwoZoneNodes has %d nodes, want the seed's and one more", len(nodes))
	}
	zones := map[string]string{}
	for _, node := range nodes {
		zones[node.Name] = node.Labels[corev1.LabelTopologyZone] + "/" + node.Labels[corev1.LabelFailureDomainBetaZone]
	}
	want := map[string]string{"master": SeedZone + "/" + SeedZone, "node1": SeedZone + "/" + SeedZone,
		"node2": SeedZone + "/" + SeedZone, SecondZoneWorker: SecondZone + "/" + SecondZone}
	for name, zone := range want {
		if zones[name] != zone {
			t.Errorf("node %s zone labels = %q, want %q", name, zones[name], zone)
		}
	}
	extra := nodes[len(nodes)-1]
	if len(extra.Spec.Taints) != 1 || extra.Spec.Taints[0].Key != taint.Key {
		t.Errorf("extra worker taints = %v, want %v", extra.Spec.Taints, taint)
	}
}

// TestStatState: the state is read after the last ')', so a command name
// holding parentheses or spaces cannot shift it.
func TestStatState(t *testing.T) {
	for _, tc := range []struct {
		line    string
		want    byte
		wantErr bool
	}{
		{line: "123 (etcd) T 1 123 123 0", want: 'T'},
		{line: "123 (a) R (b) S 1 2", want: 'S'},
		{line: "123 (tracing stop) t 1", want: 't'},
		{line: "123 etcd R", wantErr: true},
		{line: "123 (etcd)", wantErr: true},
	} {
		got, err := statState([]byte(tc.line))
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("statState(%q) = %q, %v; want %q, error %v", tc.line, got, err, tc.want, tc.wantErr)
		}
	}
}
