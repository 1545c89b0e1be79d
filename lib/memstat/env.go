package memstat

import (
	"os"

	"oomd.dev/oomd/internal/rpcx"
)

func subjectFromEnv() string { return os.Getenv(rpcx.EnvSubject) }
