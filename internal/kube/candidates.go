package kube

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
)

// A zone's Leases are campaigned for by a bounded number of its nodes, not
// all of them: client-go's leader election has every candidate read the
// Lease every RetryPeriod, which at 5,000 nodes in a few zones is thousands
// of GETs a second. toposnap-controller writes CandidatesAnnotation on each
// zone Lease (ChooseCandidates); a Holder with Bounded set campaigns only
// while the Lease lists it (or names it holder), and otherwise reads the
// Lease once per FollowerPoll. Should no candidate take an expired Lease
// (their agents down, the controller too), every node campaigns again once
// it has gone unrenewed for its duration plus FallbackGrace.

// CandidatesAnnotation lists, comma-separated, the identities that may
// campaign for a Lease. A Lease without it admits everyone.
const CandidatesAnnotation = "toposnap.io/lease-candidates"

// FollowerPoll is how often a node that is not a candidate reads the Lease.
const FollowerPoll = time.Minute

// FallbackGrace is how long past its duration a Lease must go unrenewed
// before nodes that are not candidates campaign for it: longer than the
// controller takes to offer it to the next candidates (RotateAfter, a
// sync) and for them to notice (a follower poll), so that the fallback
// is for a controller that is down too.
const FallbackGrace = 3 * time.Minute

// RotateAfter is how long toposnap-controller lets a Lease go unheld
// before it offers it to the next candidates: its duration and a sync.
const RotateAfter = 40 * time.Second

// leaseTimes are the leader election's timings, for every Lease.
const (
	leaseDuration = 15 * time.Second
	renewDeadline = 10 * time.Second
	retryPeriod   = 2 * time.Second
)

// Candidates is the Lease's CandidatesAnnotation, and whether it has one.
func Candidates(lease *coordinationv1.Lease) ([]string, bool) {
	value, ok := lease.Annotations[CandidatesAnnotation]
	if !ok {
		return nil, false
	}
	if value == "" {
		return []string{}, true
	}
	return strings.Split(value, ","), true
}

// MayCampaign reports whether identity may campaign for lease at now: the
// Lease lists no candidates or lists identity, identity holds it, or it
// has gone unrenewed for longer than its duration plus grace.
func MayCampaign(lease *coordinationv1.Lease, identity string, now time.Time, grace time.Duration) bool {
	candidates, bounded := Candidates(lease)
	if !bounded || slices.Contains(candidates, identity) {
		return true
	}
	if lease.Spec.HolderIdentity != nil && *lease.Spec.HolderIdentity == identity {
		return true
	}
	return Unrenewed(lease, now, grace)
}

// Unrenewed reports whether lease has gone unrenewed (or was never held)
// for longer than its duration plus grace.
func Unrenewed(lease *coordinationv1.Lease, now time.Time, grace time.Duration) bool {
	if lease.Spec.RenewTime == nil {
		// Never held (made by the controller with its candidates).
		return now.Sub(lease.CreationTimestamp.Time) > leaseDuration+grace
	}
	// Held, or released (client-go empties the holder and renews with a
	// duration of 1 s): either way its last renewal counts.
	duration := leaseDuration
	if lease.Spec.LeaseDurationSeconds != nil {
		duration = time.Duration(*lease.Spec.LeaseDurationSeconds) * time.Second
	}
	return now.Sub(lease.Spec.RenewTime.Time) > duration+grace
}

// ChooseCandidates picks k candidates for the Lease named lease among
// eligible (the zone's nodes whose agents run): the holder, when it is
// eligible, then others in an order that is the Lease's own (rendezvous
// hashing of the Lease and node names: adding or removing a node moves few
// choices, and a zone's two Leases spread over different nodes), starting
// round*k into it, so that each round offers the next ones. The result is
// sorted.
func ChooseCandidates(eligible []string, lease, holder string, round, k int) []string {
	k = min(k, len(eligible))
	if k <= 0 {
		return []string{}
	}
	order := slices.Clone(eligible)
	score := func(node string) uint64 {
		sum := sha256.Sum256([]byte(lease + "/" + node))
		return binary.BigEndian.Uint64(sum[:8])
	}
	slices.SortFunc(order, func(a, b string) int {
		if c := cmp.Compare(score(a), score(b)); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	chosen := make([]string, 0, k)
	if holder != "" && slices.Contains(eligible, holder) {
		chosen = append(chosen, holder)
	}
	start := (round * k) % len(order)
	for i := 0; len(chosen) < k; i++ {
		if node := order[(start+i)%len(order)]; !slices.Contains(chosen, node) {
			chosen = append(chosen, node)
		}
	}
	slices.Sort(chosen)
	return chosen
}
