package main

import (
	"os"
	"sync"
)

// arena is a bounded set of chunks whose every page was written, so the bytes are
// really resident and not just reserved address space.
type arena struct {
	mu     sync.Mutex
	max    uint64
	total  uint64
	chunks [][]byte
}

func newArena(max uint64) *arena { return &arena{max: max} }

var pageSize = os.Getpagesize()

// grow adds up to n bytes (never beyond max) and returns the new total. publish, if
// not nil, is called with the new total before the lock is released, so totals are
// published in the order they were reached: a value never goes backwards because two
// grows raced (the start-up grow and an inject, say).
func (a *arena) grow(n uint64, publish func(uint64)) uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	defer func() {
		if publish != nil {
			publish(a.total)
		}
	}()
	if room := a.max - a.total; n > room {
		n = room
	}
	if n == 0 {
		return a.total
	}
	c := make([]byte, n)
	for i := 0; i < len(c); i += pageSize {
		c[i] = 1
	}
	a.chunks = append(a.chunks, c)
	a.total += n
	return a.total
}

func (a *arena) size() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.total
}
