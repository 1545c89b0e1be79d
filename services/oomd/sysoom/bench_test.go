package sysoom

import (
	"testing"

	"oomd.dev/oomd/services/oomd/policy"
)

// BenchmarkLevelSample is one level-monitoring sample as the daemon takes it: read
// MemAvailable from /proc/meminfo and step the core. At the default interval (sampleMs,
// 100 ms) oomd does this 10 times a second. "kept" is how it reads (one pread of a file
// kept open), "reopen" how it read before (open, fstat, read to EOF, close).
func BenchmarkLevelSample(b *testing.B) {
	p := policy.DefaultPolicy()
	p.Levels = policy.LevelThresholds{WarningBytes: 300 << 20, ImminentOOMBytes: 200 << 20, OOMBytes: 100 << 20, HysteresisBytes: 16 << 20}
	for _, keep := range []bool{true, false} {
		name := map[bool]string{true: "kept", false: "reopen"}[keep]
		b.Run(name, func(b *testing.B) {
			c, err := policy.New(policy.Config{Policy: p})
			if err != nil {
				b.Fatal(err)
			}
			m := NewMeminfoReader("")
			m.f.keep = keep
			b.ReportAllocs()
			for b.Loop() {
				n, err := m.ReadMemAvailable()
				if err != nil {
					b.Fatal(err)
				}
				_ = c.Step(policy.Input{Kind: policy.InputMemAvailable, Bytes: n})
				if c.HasReady() {
					c.Ready()
					c.Advance()
				}
			}
		})
	}
}

// BenchmarkLevelStep is the core's part alone.
func BenchmarkLevelStep(b *testing.B) {
	p := policy.DefaultPolicy()
	p.Levels = policy.LevelThresholds{WarningBytes: 300 << 20, ImminentOOMBytes: 200 << 20, OOMBytes: 100 << 20, HysteresisBytes: 16 << 20}
	c, err := policy.New(policy.Config{Policy: p})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = c.Step(policy.Input{Kind: policy.InputMemAvailable, Bytes: 1 << 30})
	}
}
