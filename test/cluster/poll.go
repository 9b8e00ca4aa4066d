package cluster

import (
	"context"
	"time"
)

// Poll calls check every interval until it reports done, returns an error,
// or timeout passes: the way tests wait for the cluster, never by sleeping.
func Poll(ctx context.Context, interval, timeout time.Duration, check func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		done, err := check()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
	}
}
