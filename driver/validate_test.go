package driver

import (
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/toposnap/toposnap/driver/store"
)

func TestVolumeSize(t *testing.T) {
	const pool = 10 << 30
	tests := []struct {
		name     string
		required int64
		limit    int64
		minimum  int64
		want     int64
		wantCode codes.Code
	}{
		{"required wins", 5 << 20, 0, 0, 5 << 20, codes.OK},
		{"nothing asked: default", 0, 0, 0, DefaultVolumeSize, codes.OK},
		{"nothing asked, small limit", 0, 1 << 20, 0, 1 << 20, codes.OK},
		{"nothing asked: source size when larger than default", 0, 0, 2 << 30, 2 << 30, codes.OK},
		{"smaller than source", 1 << 20, 0, 2 << 20, 0, codes.OutOfRange},
		{"limit below required", 2 << 20, 1 << 20, 0, 0, codes.OutOfRange},
		{"over the pool", 11 << 30, 0, 0, 0, codes.OutOfRange},
		{"negative", -1, 0, 0, 0, codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := volumeSize(&csi.CapacityRange{RequiredBytes: tt.required, LimitBytes: tt.limit}, tt.minimum, pool)
			if status.Code(err) != tt.wantCode || got != tt.want {
				t.Fatalf("volumeSize = %d, %v; want %d, %v", got, err, tt.want, tt.wantCode)
			}
		})
	}
}

func TestPage(t *testing.T) {
	tests := []struct {
		name       string
		total      int
		token      string
		max        int32
		start, end int
		next       string
		wantCode   codes.Code
	}{
		{"all", 5, "", 0, 0, 5, "", codes.OK},
		{"first page", 5, "", 2, 0, 2, "2", codes.OK},
		{"last page", 5, "4", 2, 4, 5, "", codes.OK},
		{"token past the end", 5, "6", 0, 0, 0, "", codes.Aborted},
		{"garbage token", 5, "x", 0, 0, 0, "", codes.Aborted},
		{"negative max", 5, "", -1, 0, 0, "", codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start, end, next, err := page(tt.total, tt.token, tt.max)
			if status.Code(err) != tt.wantCode || start != tt.start || end != tt.end || next != tt.next {
				t.Fatalf("page = %d, %d, %q, %v", start, end, next, err)
			}
		})
	}
}

func TestLayoutOf(t *testing.T) {
	for _, tt := range []struct {
		value string
		want  store.Layout
		code  codes.Code
	}{
		{"", store.LayoutSealed, codes.OK},
		{"deny", store.LayoutSealed, codes.OK},
		{"allow", store.LayoutRoot, codes.OK},
		{"yes", "", codes.InvalidArgument},
	} {
		got, err := layoutOf(map[string]string{"nestedSubvolumes": tt.value})
		if status.Code(err) != tt.code || got != tt.want {
			t.Errorf("nestedSubvolumes %q: %q, %v; want %q, %v", tt.value, got, err, tt.want, tt.code)
		}
	}
}
