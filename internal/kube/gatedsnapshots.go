package kube

import (
	"context"
	"fmt"
	"sync"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapshotclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapshotv1client "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned/typed/volumesnapshot/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
)

// GatedSnapshots is a snapshot clientset for informer factories of
// components whose informers are fixed at start (the node controllers):
// lists and watches of VolumeSnapshots, VolumeSnapshotContents and
// VolumeSnapshotClasses follow api. While api says the snapshot API is
// absent, a list is empty and a watch waits for that to change, then
// expires so that the informer lists again, from the API server; otherwise
// they go to the API server, and a NotFound from it asks api to look again.
// So the informers sync without the CRDs (the controller works on plain
// claims), fill when the CRDs appear and empty when they go. Everything
// else, writes included, goes to client unchanged.
func GatedSnapshots(client snapshotclient.Interface, api *APIWatch) snapshotclient.Interface {
	return &gatedClient{Interface: client, api: api}
}

type gatedClient struct {
	snapshotclient.Interface
	api *APIWatch
}

func (c *gatedClient) SnapshotV1() snapshotv1client.SnapshotV1Interface {
	return &gatedV1{SnapshotV1Interface: c.Interface.SnapshotV1(), api: c.api}
}

type gatedV1 struct {
	snapshotv1client.SnapshotV1Interface
	api *APIWatch
}

func (g *gatedV1) VolumeSnapshots(namespace string) snapshotv1client.VolumeSnapshotInterface {
	return &gatedSnapshotList{VolumeSnapshotInterface: g.SnapshotV1Interface.VolumeSnapshots(namespace), api: g.api}
}

func (g *gatedV1) VolumeSnapshotContents() snapshotv1client.VolumeSnapshotContentInterface {
	return &gatedContentList{VolumeSnapshotContentInterface: g.SnapshotV1Interface.VolumeSnapshotContents(), api: g.api}
}

func (g *gatedV1) VolumeSnapshotClasses() snapshotv1client.VolumeSnapshotClassInterface {
	return &gatedClassList{VolumeSnapshotClassInterface: g.SnapshotV1Interface.VolumeSnapshotClasses(), api: g.api}
}

type gatedSnapshotList struct {
	snapshotv1client.VolumeSnapshotInterface
	api *APIWatch
}

func (g *gatedSnapshotList) List(ctx context.Context, opts metav1.ListOptions) (*snapv1.VolumeSnapshotList, error) {
	return gatedList(ctx, g.api, opts, &snapv1.VolumeSnapshotList{}, g.VolumeSnapshotInterface.List)
}

func (g *gatedSnapshotList) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return gatedWatch(ctx, g.api, opts, g.VolumeSnapshotInterface.Watch)
}

type gatedContentList struct {
	snapshotv1client.VolumeSnapshotContentInterface
	api *APIWatch
}

func (g *gatedContentList) List(ctx context.Context, opts metav1.ListOptions) (*snapv1.VolumeSnapshotContentList, error) {
	return gatedList(ctx, g.api, opts, &snapv1.VolumeSnapshotContentList{}, g.VolumeSnapshotContentInterface.List)
}

func (g *gatedContentList) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return gatedWatch(ctx, g.api, opts, g.VolumeSnapshotContentInterface.Watch)
}

type gatedClassList struct {
	snapshotv1client.VolumeSnapshotClassInterface
	api *APIWatch
}

func (g *gatedClassList) List(ctx context.Context, opts metav1.ListOptions) (*snapv1.VolumeSnapshotClassList, error) {
	return gatedList(ctx, g.api, opts, &snapv1.VolumeSnapshotClassList{}, g.VolumeSnapshotClassInterface.List)
}

func (g *gatedClassList) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	return gatedWatch(ctx, g.api, opts, g.VolumeSnapshotClassInterface.Watch)
}

// gatedList answers empty while the API is absent, and lists otherwise.
func gatedList[L any](ctx context.Context, api *APIWatch, opts metav1.ListOptions, empty L,
	list func(context.Context, metav1.ListOptions) (L, error)) (L, error) {
	if presence, _, _ := api.State(); presence == PresenceAbsent {
		return empty, nil
	}
	result, err := list(ctx, opts)
	if apierrors.IsNotFound(err) {
		api.Recheck()
	}
	return result, err
}

// gatedWatch waits for a change while the API is absent, and watches
// otherwise.
func gatedWatch(ctx context.Context, api *APIWatch, opts metav1.ListOptions,
	watchFunc func(context.Context, metav1.ListOptions) (watch.Interface, error)) (watch.Interface, error) {
	presence, reason, changed := api.State()
	if presence != PresenceAbsent {
		w, err := watchFunc(ctx, opts)
		if apierrors.IsNotFound(err) {
			api.Recheck()
		}
		return w, err
	}
	if opts.SendInitialEvents != nil && *opts.SendInitialEvents {
		// A streaming list is not played: failing it makes the reflector
		// fall back to a plain list, which gatedList answers.
		return nil, fmt.Errorf("streaming list: %s", reason)
	}
	return newUntilChanged(changed), nil
}

// untilChanged is a watch of an absent API: no events until the API's
// presence changes, then one "expired" error, on which a reflector lists
// again.
type untilChanged struct {
	events chan watch.Event
	stop   chan struct{}
	once   sync.Once
}

func newUntilChanged(changed <-chan struct{}) *untilChanged {
	w := &untilChanged{events: make(chan watch.Event), stop: make(chan struct{})}
	go func() {
		defer close(w.events)
		select {
		case <-w.stop:
			return
		case <-changed:
		}
		expired := &metav1.Status{Status: metav1.StatusFailure, Code: 410, Reason: metav1.StatusReasonExpired,
			Message: "the snapshot API's presence changed: list again"}
		select {
		case w.events <- watch.Event{Type: watch.Error, Object: expired}:
		case <-w.stop:
		}
	}()
	return w
}

func (w *untilChanged) Stop()                          { w.once.Do(func() { close(w.stop) }) }
func (w *untilChanged) ResultChan() <-chan watch.Event { return w.events }
