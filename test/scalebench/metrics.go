package scalebench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
)

// Sample is one line of the Prometheus text format: a series and its value.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// Samples is one scrape.
type Samples []Sample

// ParseSamples reads the Prometheus text exposition format, skipping
// comments. It is the small subset the API server and client_golang
// write (no timestamps are needed; a trailing one is ignored). prometheus/
// common's expfmt would do it too, but it is only an indirect requirement
// of this module, and go.mod is not the bench's to change.
func ParseSamples(r io.Reader) (Samples, error) {
	var samples Samples
	scanner := bufio.NewScanner(r)
	scanner.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for scanner.Scan() {
		line := strings.TrimSpace(scanner.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		sample, err := parseSample(line)
		if err != nil {
			return nil, err
		}
		samples = append(samples, sample)
	}
	return samples, scanner.Err()
}

// parseSample parses `name{k="v",...} value [timestamp]`.
func parseSample(line string) (Sample, error) {
	sample := Sample{Labels: map[string]string{}}
	rest := line
	if i := strings.IndexAny(line, "{ "); i < 0 {
		return sample, fmt.Errorf("metric line %q has no value", line)
	} else {
		sample.Name, rest = line[:i], line[i:]
	}
	if strings.HasPrefix(rest, "{") {
		var err error
		if rest, err = parseLabels(rest[1:], sample.Labels); err != nil {
			return sample, fmt.Errorf("metric line %q: %w", line, err)
		}
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return sample, fmt.Errorf("metric line %q has no value", line)
	}
	value, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return sample, fmt.Errorf("metric line %q: %w", line, err)
	}
	sample.Value = value
	return sample, nil
}

// parseLabels reads `k="v",...}` into labels and returns what follows the
// closing brace. Values may hold escaped quotes, backslashes and newlines.
func parseLabels(s string, labels map[string]string) (string, error) {
	for {
		s = strings.TrimLeft(s, " ,")
		if strings.HasPrefix(s, "}") {
			return s[1:], nil
		}
		eq := strings.Index(s, "=")
		if eq < 0 || len(s) < eq+2 || s[eq+1] != '"' {
			return "", fmt.Errorf("malformed labels at %q", s)
		}
		name := strings.TrimSpace(s[:eq])
		var value strings.Builder
		i := eq + 2
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] == '\\' && i+1 < len(s) {
				i++
				switch s[i] {
				case 'n':
					value.WriteByte('\n')
				default:
					value.WriteByte(s[i])
				}
				continue
			}
			value.WriteByte(s[i])
		}
		if i >= len(s) {
			return "", fmt.Errorf("unterminated value of label %s", name)
		}
		labels[name] = value.String()
		s = s[i+1:]
	}
}

// Sum adds the values of the series named name whose labels include every
// pair of match. found is false when no series matched: a metric that is
// missing must not read as zero.
func (s Samples) Sum(name string, match map[string]string) (sum float64, found bool) {
	for _, sample := range s {
		if sample.Name != name || !hasLabels(sample.Labels, match) {
			continue
		}
		sum += sample.Value
		found = true
	}
	return sum, found
}

// Has reports whether any series is named name.
func (s Samples) Has(name string) bool {
	_, found := s.Sum(name, nil)
	return found
}

func hasLabels(labels, match map[string]string) bool {
	for k, v := range match {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// scrapeAPIServer reads the API server's /metrics as the client's user.
func scrapeAPIServer(ctx context.Context, client kubernetes.Interface) (Samples, error) {
	body, err := client.CoreV1().RESTClient().Get().AbsPath("/metrics").Stream(ctx)
	if err != nil {
		return nil, fmt.Errorf("scrape kube-apiserver /metrics: %w", err)
	}
	defer body.Close()
	return ParseSamples(body)
}

// scrapeHTTP reads a process's /metrics at address (host:port).
func scrapeHTTP(ctx context.Context, address string) (Samples, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	request, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+address+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", address, err)
	}
	defer response.Body.Close()
	if response.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", address, response.Status)
	}
	return ParseSamples(response.Body)
}

// apiCounters are the API server's series the bench reads, each the sum
// over the labels that do not concern it.
type apiCounters struct {
	// watches is how many WATCH requests are open.
	watches float64
	// claimEvents is how many PVC watch events were sent, to all watchers.
	claimEvents float64
	// requests is every request served so far.
	requests float64
	// dispatched is, per flow schema, the requests admitted under it.
	dispatched map[string]float64
}

// Names of the API server's series (kube-apiserver v1.37).
const (
	metricLongRunning = "apiserver_longrunning_requests"
	metricWatchEvents = "apiserver_watch_events_total"
	metricRequests    = "apiserver_request_total"
	metricDispatched  = "apiserver_flowcontrol_dispatched_requests_total"
)

// readAPICounters scrapes the API server once.
func readAPICounters(ctx context.Context, client kubernetes.Interface) (apiCounters, error) {
	samples, err := scrapeAPIServer(ctx, client)
	if err != nil {
		return apiCounters{}, err
	}
	return countersOf(samples)
}

// countersOf picks the bench's counters out of a scrape, and fails if one
// is missing (renamed series must not read as zero).
func countersOf(samples Samples) (apiCounters, error) {
	var c apiCounters
	var found bool
	if c.watches, found = samples.Sum(metricLongRunning, map[string]string{"verb": "WATCH"}); !found {
		return c, fmt.Errorf("kube-apiserver serves no %s{verb=\"WATCH\"}", metricLongRunning)
	}
	if c.claimEvents, found = samples.Sum(metricWatchEvents, map[string]string{"resource": "persistentvolumeclaims"}); !found {
		// Before any PVC event was sent the series does not exist yet.
		if !samples.Has(metricWatchEvents) {
			return c, fmt.Errorf("kube-apiserver serves no %s", metricWatchEvents)
		}
	}
	if c.requests, found = samples.Sum(metricRequests, nil); !found {
		return c, fmt.Errorf("kube-apiserver serves no %s", metricRequests)
	}
	c.dispatched = map[string]float64{}
	for _, sample := range samples {
		if sample.Name == metricDispatched {
			c.dispatched[sample.Labels["flow_schema"]] += sample.Value
		}
	}
	if len(c.dispatched) == 0 {
		return c, fmt.Errorf("kube-apiserver serves no %s", metricDispatched)
	}
	return c, nil
}

// mib converts bytes to MiB for the report.
func mib(bytes float64) float64 { return math.Round(bytes/(1<<20)*10) / 10 }
