package sysoom

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParsePSIFull(t *testing.T) {
	for in, want := range map[string]uint32{
		"some avg10=1.00 avg60=0.50 avg300=0.10 total=123\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n":   0,
		"some avg10=80.00 avg60=0.50 avg300=0.10 total=123\nfull avg10=45.67 avg60=1.00 avg300=0.10 total=9\n": 4567,
		"full avg10=100.00 avg60=1.00 avg300=0.10 total=9\n":                                                   10000,
	} {
		v, err := parsePSIFull([]byte(in), "p")
		require.NoError(t, err, in)
		require.Equal(t, want, v, in)
	}
	for _, in := range []string{"", "some avg10=1.00 avg60=0 avg300=0 total=0\n", "full avg10=1.5 avg60=0\n",
		"full avg10=abc.de avg60=0\n", "full avg10=100.01 avg60=0\n", "xfull avg10=1.00 avg60=0\n", "full avg10=12.34"} {
		_, err := parsePSIFull([]byte(in), "p")
		require.Error(t, err, "%q", in)
	}
}

func TestPSIReaderReadsTheFileEachTime(t *testing.T) {
	p := filepath.Join(t.TempDir(), "memory")
	r := NewPSIReader(p)
	_, err := r.ReadFull()
	require.ErrorContains(t, err, "read memory pressure")
	require.NoError(t, os.WriteFile(p, []byte("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=12.50 avg60=0.00 avg300=0.00 total=0\n"), 0o600))
	v, err := r.ReadFull()
	require.NoError(t, err)
	require.Equal(t, uint32(1250), v)
	if _, err := os.Stat(DefaultPSI); err == nil {
		_, err := NewPSIReader("").ReadFull()
		require.NoError(t, err, "this kernel's own PSI file parses")
	}
}
