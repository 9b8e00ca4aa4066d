// Package fakeapi gives client-go's fake clientsets the parts of the API
// server's behaviour that controllers' safety rests on, so a controller's
// unit tests can fail when a contract breaks: resourceVersion conflicts on
// update, status written only through the status subresource, finalizers
// (a delete marks the object; removing the last finalizer deletes it) and
// UID preconditions on delete.
package fakeapi

import (
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	k8stesting "k8s.io/client-go/testing"
)

// Clientset is what client-go's generated fake clientsets offer.
type Clientset interface {
	PrependReactor(verb, resource string, reaction k8stesting.ReactionFunc)
	Tracker() k8stesting.ObjectTracker
}

// Install makes client behave like the API server for creates, updates and
// deletes. Call it before the clientset is used.
func Install(client Clientset) {
	tracker := client.Tracker()
	serial := 0
	client.PrependReactor("create", "*", func(action k8stesting.Action) (bool, runtime.Object, error) {
		object, err := meta.Accessor(action.(k8stesting.CreateAction).GetObject())
		if err != nil {
			return false, nil, nil
		}
		serial++
		object.SetResourceVersion("1")
		if object.GetUID() == "" {
			object.SetUID(types.UID("uid-" + strconv.Itoa(serial)))
		}
		if created := object.GetCreationTimestamp(); created.IsZero() {
			object.SetCreationTimestamp(metav1.Now())
		}
		return false, nil, nil // the default reactor stores it
	})
	client.PrependReactor("update", "*", func(action k8stesting.Action) (bool, runtime.Object, error) {
		update := action.(k8stesting.UpdateAction)
		stored, err := applyUpdate(tracker, action.GetResource(), action.GetNamespace(), action.GetSubresource(), update.GetObject())
		return true, stored, err
	})
	client.PrependReactor("delete", "*", func(action k8stesting.Action) (bool, runtime.Object, error) {
		del := action.(k8stesting.DeleteAction)
		return true, nil, applyDelete(tracker, action.GetResource(), action.GetNamespace(), del.GetName(), del.GetDeleteOptions())
	})
}

// applyUpdate stores obj over the current object like the API server would.
func applyUpdate(tracker k8stesting.ObjectTracker, gvr schema.GroupVersionResource, namespace, subresource string, obj runtime.Object) (runtime.Object, error) {
	object, err := meta.Accessor(obj)
	if err != nil {
		return nil, err
	}
	current, err := tracker.Get(gvr, namespace, object.GetName())
	if err != nil {
		return nil, err
	}
	currentMeta, _ := meta.Accessor(current)
	if rv := object.GetResourceVersion(); rv != "" && rv != currentMeta.GetResourceVersion() {
		return nil, apierrors.NewConflict(gvr.GroupResource(), object.GetName(),
			errString("the object has been modified; please apply your changes to the latest version and try again"))
	}
	stored, err := merge(current, obj, subresource == "status")
	if err != nil {
		return nil, err
	}
	storedMeta, _ := meta.Accessor(stored)
	version, _ := strconv.Atoi(currentMeta.GetResourceVersion())
	storedMeta.SetResourceVersion(strconv.Itoa(version + 1))
	storedMeta.SetDeletionTimestamp(currentMeta.GetDeletionTimestamp())
	storedMeta.SetUID(currentMeta.GetUID())
	storedMeta.SetCreationTimestamp(currentMeta.GetCreationTimestamp())
	if currentMeta.GetDeletionTimestamp() != nil && len(storedMeta.GetFinalizers()) == 0 {
		return stored, tracker.Delete(gvr, namespace, object.GetName())
	}
	return stored, tracker.Update(gvr, stored, namespace)
}

// merge keeps the current object's status on a main-resource update and
// only the new status on a status update.
func merge(current, updated runtime.Object, statusOnly bool) (runtime.Object, error) {
	currentMap, err := runtime.DefaultUnstructuredConverter.ToUnstructured(current)
	if err != nil {
		return nil, err
	}
	updatedMap, err := runtime.DefaultUnstructuredConverter.ToUnstructured(updated)
	if err != nil {
		return nil, err
	}
	result := updatedMap
	if statusOnly {
		result = currentMap
		if status, ok := updatedMap["status"]; ok {
			result["status"] = status
		} else {
			delete(result, "status")
		}
	} else if status, ok := currentMap["status"]; ok {
		result["status"] = status
	} else {
		delete(result, "status")
	}
	stored := current.DeepCopyObject()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(result, stored); err != nil {
		return nil, err
	}
	return stored, nil
}

// applyDelete deletes, or with finalizers marks, the object.
func applyDelete(tracker k8stesting.ObjectTracker, gvr schema.GroupVersionResource, namespace, name string, opts metav1.DeleteOptions) error {
	current, err := tracker.Get(gvr, namespace, name)
	if err != nil {
		return err
	}
	currentMeta, _ := meta.Accessor(current)
	if opts.Preconditions != nil && opts.Preconditions.UID != nil && *opts.Preconditions.UID != currentMeta.GetUID() {
		return apierrors.NewConflict(gvr.GroupResource(), name, errString("the UID precondition does not match"))
	}
	if len(currentMeta.GetFinalizers()) == 0 {
		return tracker.Delete(gvr, namespace, name)
	}
	if currentMeta.GetDeletionTimestamp() != nil {
		return nil
	}
	marked := current.DeepCopyObject()
	markedMeta, _ := meta.Accessor(marked)
	now := metav1.NewTime(time.Now())
	markedMeta.SetDeletionTimestamp(&now)
	version, _ := strconv.Atoi(currentMeta.GetResourceVersion())
	markedMeta.SetResourceVersion(strconv.Itoa(version + 1))
	return tracker.Update(gvr, marked, namespace)
}

type errString string

func (e errString) Error() string { return string(e) }
