package provisioner

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/klog/v2"

	"github.com/toposnap/toposnap/internal/topology"
)

// Labels on the CSIStorageCapacity objects a provisioner publishes.
const (
	labelDriver  = "csi.storage.k8s.io/drivername"
	labelManager = "csi.storage.k8s.io/managed-by"
	// capacityManager is labelManager's value on toposnap's objects.
	capacityManager = "toposnap-provisioner"
)

// CapacityName is the deterministic name of the CSIStorageCapacity for a
// class in a segment, so every node of a zone writes the same zone object.
func CapacityName(class string, segment topology.Segment) string {
	sum := sha256.Sum256([]byte(class + "\x00" + segment.String()))
	return "toposnap-" + hex.EncodeToString(sum[:10])
}

// capacitySegment is the segment a class's volumes created here are
// reachable from: this node, or this node's zone.
func (c *Controller) capacitySegment(class *storagev1.StorageClass) (topology.Segment, error) {
	params, err := DriverParameters(class)
	if err != nil {
		return nil, err
	}
	scope, _ := topology.ParseScope(params["scope"])
	location := topology.Location{Node: c.nodeName, Zone: c.nodeSegment[topology.ZoneKey], Region: c.nodeSegment[topology.RegionKey]}
	if scope == topology.ScopeZone && location.Zone == "" {
		return nil, fmt.Errorf("node %s has no zone", c.nodeName)
	}
	return location.VolumeSegment(scope), nil
}

// publishCapacity refreshes CSIStorageCapacity for every class of the
// driver, from GetCapacity on this node's pools, every interval and soon
// after each volume this node creates, grows or deletes, until ctx ends.
func (c *Controller) publishCapacity(ctx context.Context, interval time.Duration) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		if err := c.refreshCapacity(ctx); err != nil {
			klog.ErrorS(err, "Publishing storage capacity failed")
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-c.capacityChanged:
		}
	}
}

// capacityMayHaveChanged asks for an early refresh; it never blocks.
func (c *Controller) capacityMayHaveChanged() {
	select {
	case c.capacityChanged <- struct{}{}:
	default:
	}
}

func (c *Controller) refreshCapacity(ctx context.Context) error {
	// A routed node writes its own objects only (GET and UPDATE); the
	// central controller, which LISTs them, removes stale ones.
	if !c.routed {
		if err := c.removeStaleCapacity(ctx); err != nil {
			klog.ErrorS(err, "Removing the storage capacity of deleted classes failed")
		}
	}
	classes, err := c.classes.List(labels.Everything())
	if err != nil {
		return err
	}
	sort.Slice(classes, func(i, j int) bool { return classes[i].Name < classes[j].Name })
	for _, class := range classes {
		if class.Provisioner != c.driverName {
			continue
		}
		segment, err := c.capacitySegment(class)
		if err != nil {
			continue // a broken class is reported when a claim uses it
		}
		params, _ := DriverParameters(class)
		callCtx, cancel := context.WithTimeout(ctx, c.timeout)
		resp, err := c.csi.GetCapacity(callCtx, &csi.GetCapacityRequest{Parameters: params, AccessibleTopology: &csi.Topology{Segments: segment}})
		cancel()
		if err != nil {
			return fmt.Errorf("GetCapacity for class %s: %w", class.Name, err)
		}
		if err := c.writeCapacity(ctx, class.Name, segment, resp); err != nil {
			return err
		}
	}
	return nil
}

// removeStaleCapacity deletes the CSIStorageCapacity objects published for
// classes that are gone or no longer the driver's: the scheduler would still
// read them, and they would pile up with every class created and deleted.
// Any node may delete them, whichever wrote them.
func (c *Controller) removeStaleCapacity(ctx context.Context) error {
	api := c.client.StorageV1().CSIStorageCapacities(c.capacityNamespace)
	selector := labels.Set{labelDriver: c.driverName, labelManager: capacityManager}.String()
	published, err := api.List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return err
	}
	for i := range published.Items {
		capacity := &published.Items[i]
		ours, err := c.driversClass(ctx, capacity.StorageClassName)
		if err != nil {
			return err
		}
		if ours {
			continue
		}
		err = api.Delete(ctx, capacity.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &capacity.UID}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return err
		}
		klog.V(2).InfoS("Removed the storage capacity of a deleted class", "capacity", capacity.Name, "storageClass", capacity.StorageClassName)
	}
	return nil
}

// driversClass says whether the class exists and is the driver's. A class
// the cache lacks is read from the API server: one created a moment ago may
// not be cached yet, and its capacity must not flap.
func (c *Controller) driversClass(ctx context.Context, name string) (bool, error) {
	if class, err := c.classes.Get(name); err == nil {
		return class.Provisioner == c.driverName, nil
	}
	class, err := c.client.StorageV1().StorageClasses().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return true, err
	}
	return class.Provisioner == c.driverName, nil
}

func (c *Controller) writeCapacity(ctx context.Context, className string, segment topology.Segment, resp *csi.GetCapacityResponse) error {
	name := CapacityName(className, segment)
	capacity := resource.NewQuantity(resp.GetAvailableCapacity(), resource.BinarySI)
	var maximum *resource.Quantity
	if resp.GetMaximumVolumeSize() != nil {
		maximum = resource.NewQuantity(resp.GetMaximumVolumeSize().GetValue(), resource.BinarySI)
	}
	api := c.client.StorageV1().CSIStorageCapacities(c.capacityNamespace)
	existing, err := api.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = api.Create(ctx, &storagev1.CSIStorageCapacity{
			ObjectMeta:        metav1.ObjectMeta{Name: name, Labels: map[string]string{labelDriver: c.driverName, labelManager: capacityManager}},
			NodeTopology:      &metav1.LabelSelector{MatchLabels: segment},
			StorageClassName:  className,
			Capacity:          capacity,
			MaximumVolumeSize: maximum,
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil // another node of the zone was first; the next round updates
		}
		return err
	}
	if err != nil {
		return err
	}
	if existing.Capacity != nil && existing.Capacity.Cmp(*capacity) == 0 {
		return nil
	}
	updated := existing.DeepCopy()
	updated.Capacity, updated.MaximumVolumeSize = capacity, maximum
	_, err = api.Update(ctx, updated, metav1.UpdateOptions{})
	if apierrors.IsConflict(err) {
		return nil
	}
	return err
}
