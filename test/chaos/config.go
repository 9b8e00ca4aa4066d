package chaos

import (
	"fmt"
	"time"
)

// Profile sizes a campaign.
type Profile struct {
	Name string
	// Scale multiplies the workload's base counts (at least 50 claims, 20
	// snapshots, 20 restores and 23 deletes per unit).
	Scale int
	// Window is how long faults are injected; operations start during its
	// first IssueFraction.
	Window        time.Duration
	IssueFraction float64
	// FaultGapMin and FaultGapMax bound the pause between two faults.
	FaultGapMin, FaultGapMax time.Duration
	// FinalBound is how long objects get to reach their final state once
	// the faults stop; InvariantBound how long the invariants then get.
	FinalBound, InvariantBound time.Duration
}

// The profiles: Short for `make test` (a couple of minutes), Full for
// `make chaos`.
var (
	Short = Profile{Name: "short", Scale: 1, Window: 45 * time.Second, IssueFraction: 0.5,
		FaultGapMin: time.Second, FaultGapMax: 3 * time.Second, FinalBound: 3 * time.Minute, InvariantBound: 2 * time.Minute}
	Full = Profile{Name: "full", Scale: 2, Window: 4 * time.Minute, IssueFraction: 0.75,
		FaultGapMin: time.Second, FaultGapMax: 5 * time.Second, FinalBound: 5 * time.Minute, InvariantBound: 3 * time.Minute}
)

// ProfileNamed returns the profile called name.
func ProfileNamed(name string) (Profile, error) {
	for _, p := range []Profile{Short, Full} {
		if p.Name == name {
			return p, nil
		}
	}
	return Profile{}, fmt.Errorf("no chaos profile %q (want short or full)", name)
}

// Workload counts one campaign's operations.
type Workload struct {
	// Sources are written claims made before the faults: what snapshots are
	// cut of and what some deletes hit.
	Sources int
	// Claims must bind; DeletedClaims are deleted moments after creation.
	Claims, DeletedClaims int
	// Snapshots (one per source, at most) must become ready;
	// DeletedSnapshots are deleted moments after creation.
	Snapshots, DeletedSnapshots int
	// Restores restore the kept snapshots and must bind with their data.
	Restores int
	// DeletedSources are deleted once their snapshot is ready; DeletedPVs
	// have their bound PV deleted under them (the data must stay).
	DeletedSources, DeletedPVs int
}

// WorkloadFor is the workload of a profile.
func WorkloadFor(p Profile) Workload {
	s := max(p.Scale, 1)
	return Workload{Sources: 20 * s, Claims: 50 * s, DeletedClaims: 10 * s, Snapshots: 20 * s, DeletedSnapshots: 5 * s,
		Restores: 20 * s, DeletedSources: 5 * s, DeletedPVs: 3 * s}
}
