package daemon

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"oomd.dev/oomd/internal/safefile"
	"oomd.dev/oomd/services/oomd/policy"
	"oomd.dev/oomd/services/oomd/policyfile"
)

// PolicyStore makes a policy durable before it is put in force (setPolicy returns only
// after Save did).
type PolicyStore interface {
	Save(p policy.Policy, version uint64) error
}

// FilePolicyStore keeps the policy in force in the file oomd was started with (--policy),
// and its version beside it in "<file>.version": {"version": N, "sha256": "<hex of the
// file's bytes>"}. Both are replaced atomically (temp file, fsync, rename, fsync of the
// directory), the policy first; a crash between the two leaves a file whose hash the
// version file does not match, which LoadPolicyState reads as one version later — never
// an older policy under a newer number.
type FilePolicyStore struct {
	Path   string
	Syncer safefile.Syncer // nil: fsync
}

type policyState struct {
	Version uint64 `json:"version"`
	SHA256  string `json:"sha256"`
}

func (s FilePolicyStore) syncer() safefile.Syncer {
	if s.Syncer != nil {
		return s.Syncer
	}
	return safefile.OS
}

// Save writes p (indented JSON, the same format the file is read in) and its version.
func (s FilePolicyStore) Save(p policy.Policy, version uint64) error {
	b, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	d, err := safefile.OpenDir(filepath.Dir(s.Path), false)
	if err != nil {
		return fmt.Errorf("persist policy: %w", err)
	}
	defer d.Close()
	base := filepath.Base(s.Path)
	if err := d.WriteAtomic(base, b, s.syncer()); err != nil {
		return fmt.Errorf("persist policy to %s: %w", s.Path, err)
	}
	return s.saveState(d, base, b, version)
}

func (s FilePolicyStore) saveState(d *safefile.Dir, base string, content []byte, version uint64) error {
	sum := sha256.Sum256(content)
	st, _ := json.Marshal(policyState{Version: version, SHA256: hex.EncodeToString(sum[:])})
	if err := d.WriteAtomic(base+".version", append(st, '\n'), s.syncer()); err != nil {
		return fmt.Errorf("persist policy version beside %s: %w", s.Path, err)
	}
	return nil
}

// LoadPolicyState reads the policy file and its version. A file that matches its version
// file comes back under that version; one that changed since (edited by hand, or a crash
// between the two writes) comes back as the next version, and the version file is
// brought up to date; a file without one is version 1.
func (s FilePolicyStore) LoadPolicyState() (policy.Policy, uint64, error) {
	b, err := safefile.ReadFile(s.Path)
	if err != nil {
		return policy.Policy{}, 0, fmt.Errorf("read policy: %w", err)
	}
	p, err := policyfile.Parse(b)
	if err != nil {
		return p, 0, fmt.Errorf("policy file %s: %w", s.Path, err)
	}
	var st policyState
	raw, err := safefile.ReadFile(s.Path + ".version")
	switch {
	case errors.Is(err, os.ErrNotExist):
		return p, 1, nil
	case err != nil:
		return p, 0, fmt.Errorf("read policy version: %w", err)
	}
	if err := json.Unmarshal(raw, &st); err != nil || st.Version == 0 {
		return p, 0, fmt.Errorf("policy version file %s.version is damaged (%v): remove it to start again at version 1", s.Path, err)
	}
	sum := sha256.Sum256(b)
	if hex.EncodeToString(sum[:]) == st.SHA256 {
		return p, st.Version, nil
	}
	v := st.Version + 1
	d, err := safefile.OpenDir(filepath.Dir(s.Path), false)
	if err != nil {
		return p, 0, err
	}
	defer d.Close()
	return p, v, s.saveState(d, filepath.Base(s.Path), b, v)
}

// LastVersion is the version in the version file (0 if there is none or it is damaged),
// for a start whose policy file was rejected: the defaults then come in under the next
// number, so versions never go backwards.
func (s FilePolicyStore) LastVersion() uint64 {
	var st policyState
	raw, err := safefile.ReadFile(s.Path + ".version")
	if err != nil || json.Unmarshal(raw, &st) != nil {
		return 0
	}
	return st.Version
}
